"""Profiling: NVTX ranges, CUDA-event step timers, training/profiling loops, reports, benchmarks."""
