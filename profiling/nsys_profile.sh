#!/usr/bin/env bash
# Run a command under Nsight Systems, capturing only the profiled steps, then fold `nsys stats` into our report.
#
# Why: the StepTimer's CUDA events are the always-on numbers; Nsight Systems is the independent check. The
# command must call cudaProfilerStart/Stop around the steps to capture (profiling.nsys.CaptureWindow does, and
# FASTLOAD_NVTX=1, set here, turns on the fastload NVTX ranges: data_wait, h2d, forward, backward, optimizer,
# step, and the loader's plan/fetch/decode/gather).
#
# usage: profiling/nsys_profile.sh OUT_PREFIX [--samples-per-step N] -- COMMAND [ARGS...]
#   e.g. profiling/nsys_profile.sh runs/nsys/profile -- python -m profiling.loop profile --steps 30
# writes: OUT_PREFIX.nsys-rep (open in the Nsight Systems GUI), OUT_PREFIX_<report>.csv for the reports
#         nvtx_sum, nvtx_gpu_proj_sum, cuda_gpu_kern_sum, cuda_gpu_mem_time_sum, and
#         <folder of OUT_PREFIX>/nsys_summary.json (python -m profiling.nsys), whose table it prints.
# env:   NSYS (default: nsys on PATH), PYTHON (default: python), NSYS_EXTRA (more `nsys profile` options).
set -euo pipefail

usage() { sed -n '9,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1; shift
samples=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case $1 in
    --samples-per-step) [ $# -ge 2 ] || usage; samples=(--samples-per-step "$2"); shift 2 ;;
    *) echo "nsys_profile.sh: unknown option $1" >&2; usage ;;
  esac
done
[ "${1:-}" = "--" ] || usage
shift
[ $# -ge 1 ] || usage

NSYS=${NSYS:-nsys}
PYTHON=${PYTHON:-python}
if ! command -v "$NSYS" >/dev/null 2>&1; then
  echo "nsys_profile.sh: '$NSYS' not found; install Nsight Systems or set NSYS=/path/to/nsys" >&2
  exit 127
fi
mkdir -p "$(dirname "$out")"
here=$(cd "$(dirname "$0")/.." && pwd)

# shellcheck disable=SC2086  # NSYS_EXTRA is a list of options
FASTLOAD_NVTX=1 "$NSYS" profile \
  --trace=cuda,nvtx \
  --capture-range=cudaProfilerApi \
  --capture-range-end=stop \
  --sample=none --cpuctxsw=none \
  --force-overwrite=true \
  --output="$out" \
  ${NSYS_EXTRA:-} \
  "$@"

"$NSYS" stats \
  --report nvtx_sum,nvtx_gpu_proj_sum,cuda_gpu_kern_sum,cuda_gpu_mem_time_sum \
  --format csv \
  --force-export=true \
  --force-overwrite=true \
  --output "$out" \
  "$out.nsys-rep" >/dev/null

PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m profiling.nsys "$out" ${samples[@]+"${samples[@]}"}
