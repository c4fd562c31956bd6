"""Step timing that tells data wait from compute: CUDA events per phase, read a few steps late; host clock on CPU.

Why this module exists: a host timer around CUDA calls charges GPU time to whichever call next synchronises, and
``nvidia-smi`` utilisation cannot tell a starved GPU from a busy one. :class:`StepTimer` records a CUDA event
at the start and end of every phase on the current stream, so each phase's time is GPU time; for
``data_wait`` that is the time the GPU sat with nothing queued while the host waited for the batch. Events are
created once and reused from a small ring (``lag + 2`` steps); a step's times are read ``lag`` steps later,
after ``event.query()`` says they are complete, so timing adds no synchronisation to the loop. Only when the
GPU falls more than the ring behind does the timer wait for the oldest step (the one ``# sync point:``).
When the device is the CPU, phases are timed with ``time.perf_counter`` on the host, which is exact there.

How to use it (the loop reads top to bottom; ``loader`` is a :class:`fastload.Loader`, whose batches carry their
I/O counters in ``batch.stats``; ``tests/profiling/test_timers.py`` runs this example)::

    timer = StepTimer(device="cuda", warmup=2)
    it = iter(loader)
    for step in range(n):
        with timer.phase("data_wait"):
            batch = next(it)
        with timer.phase("forward"):
            loss = model(batch)
        with timer.phase("backward"):
            loss.backward()
        with timer.phase("optimizer"):
            opt.step(); opt.zero_grad()
        timer.step_end(samples=len(batch), io=batch.stats)
    print(timer.summary())          # waits for the last steps (sync point), then summarises

Per step (see :meth:`StepTimer.records`): ``<phase>_ms`` (GPU time, or host time on CPU), ``<phase>_at_ms``
(start offset within the step), ``host_<phase>_ms`` (host wall time), ``step_ms`` (this step's first event to
the next step's first event), ``idle_ms`` (the part of it between ``step_end`` and the next step's first phase:
the GPU idle gap between steps; ``idle_measured`` False, and ``idle_ms`` 0, for the last step, whose gap is
unknown: its ``step_ms`` ends at its ``step_end``), ``other_ms`` (time inside the step not in any phase), samples, bytes read
from storage and decoded, and ``stall_fraction = data_wait_ms / step_ms``. Warm-up steps are left out.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from fastload import _nvtx
from fastload.errors import ConfigError

__all__ = ["PHASES", "PEAK_BF16_DENSE", "PEAK_TF32_DENSE", "PEAK_FP32", "PEAKS", "StepTimer", "peak_flops",
           "step_peak", "mfu", "io_counters"]

PHASES = ("data_wait", "h2d", "forward", "backward", "optimizer")
"""The phases of a training step, in loop order."""

# Peaks from NVIDIA's data sheets (H100 Tensor Core GPU: the SXM and PCIe columns; H200: the SXM column; A100).
# The sheets quote tensor-core figures with 2:4 sparsity: the dense figure is half (H100 SXM: BF16 1979, TF32 989
# TFLOP/s sparse). FP32 is the CUDA cores' figure (a float32 matmul without TF32). NVL parts (H100 NVL, H200 NVL)
# run at lower clocks than the SXM parts, and the H100 NVL's sheets quoted a pair of cards and later one: they are
# not in the tables, so their MFU is None rather than a guess.
# B200: NVIDIA Blackwell datasheet 3384703, "Individual Blackwell GPU Specifications", HGX B200 column (per GPU, up
#   to 1,000 W): FP16/BF16 4.5 PFLOPS, TF32 2.2 PFLOPS ("All Tensor Core numbers except FP64 with sparsity"), FP32
#   75 TFLOPS. https://nvdam.widen.net/s/wwnsxrhm2w/blackwell-datasheet-3384703 (also
#   https://www.nvidia.com/en-us/data-center/hgx/). The GB200 column (5 / 2.5 PFLOPS, 80 TFLOPS, up to 1,200 W) is
#   another part: an "NVIDIA GB200" is not a B200 and has no row.
# L40S: NVIDIA L40S datasheet, https://www.nvidia.com/en-us/data-center/l40s/ (datasheet
#   https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413): FP32 91.6, TF32 Tensor Core "183 | 366*",
#   BFLOAT16 Tensor Core "362.05 | 733*" TFLOPS (* with sparsity: the left figure is dense, and is the one used;
#   733 is not exactly twice 362.05). The L40 (no S) has
#   other figures (BF16 181.05 dense) and no row.
# L4: NVIDIA L4 datasheet, https://www.nvidia.com/en-us/data-center/l4/: FP32 30.3, TF32 Tensor Core 120*,
#   BFLOAT16 Tensor Core 242* TFLOPS (* with sparsity; "one-half lower without sparsity").
# (B200, L40S and L4 figures were read from copies of these sheets' tables, not from nvidia.com itself.)
PEAK_BF16_DENSE = {"H100 SXM": 989e12, "H100 PCIe": 756e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12,
                   "L40S": 362.05e12, "L4": 121e12}
"""Dense bf16 tensor-core peak FLOP/s by GPU (no sparsity)."""

PEAK_TF32_DENSE = {"H100 SXM": 494.5e12, "H100 PCIe": 378e12, "H200": 494.5e12, "A100": 156e12, "B200": 1100e12,
                   "L40S": 183e12, "L4": 60e12}
"""Dense TF32 tensor-core peak FLOP/s by GPU (no sparsity): float32 matmuls with TF32 allowed."""

PEAK_FP32 = {"H100 SXM": 67e12, "H100 PCIe": 51e12, "H200": 67e12, "A100": 19.5e12, "B200": 75e12, "L40S": 91.6e12,
             "L4": 30.3e12}
"""FP32 (CUDA-core, non-tensor) peak FLOP/s by GPU: float32 matmuls without TF32."""

PEAKS = {"bf16": PEAK_BF16_DENSE, "tf32": PEAK_TF32_DENSE, "fp32": PEAK_FP32}
"""The peak tables by the precision a step's matmuls run in (:func:`step_peak` picks it)."""


def peak_flops(device_name: str, precision: str = "bf16") -> float | None:
    """Peak FLOP/s of a GPU from its name (``torch.cuda.get_device_name()``) at ``precision`` (``bf16``, ``tf32``
    or ``fp32``: see :data:`PEAKS`); None if the GPU is not in the table.

    ``"NVIDIA H100 80GB HBM3"`` is the SXM part; ``"NVIDIA H100 PCIe"`` the PCIe one. NVL parts (``H100 NVL``,
    ``H200 NVL``) are not in the table and give None rather than a guess (an H200 NVL is not an H200 SXM).
    ``B200``, ``L40S`` and ``L4`` match only as whole words of the name (``"NVIDIA L4"``, ``"NVIDIA L40S"``,
    ``"NVIDIA B200"``): an ``L40`` or a ``GB200`` is another part and gives None.
    """
    if precision not in PEAKS:
        raise ConfigError(f"peak_flops precision: expected one of {sorted(PEAKS)}, got {precision!r}")
    table = PEAKS[precision]
    name = device_name.upper()
    if "NVL" in name:
        return None
    if "H200" in name:
        return table["H200"]
    if "H100" in name:
        return table["H100 PCIe"] if "PCIE" in name else table["H100 SXM"]
    if "A100" in name:
        return table["A100"]
    words = set(re.findall(r"[A-Z0-9]+", name))  # whole words: "L4" is a prefix of "L40S", "B200" a suffix of "GB200"
    for key in ("B200", "L40S", "L4"):
        if key in words:
            return table[key]
    return None


def _matmul_precision(torch: Any) -> str:
    """``tf32`` or ``fp32``: what float32 CUDA matmuls run in, read from PyTorch's settings.

    PyTorch >= 2.9 has ``torch.backends.cuda.matmul.fp32_precision`` (``"ieee"``, ``"tf32"``, or ``"none"``: not set,
    inherit ``torch.backends.fp32_precision``; the property reads the inherited value and reflects the legacy
    ``allow_tf32`` setter too). There, reading the legacy ``allow_tf32`` raises RuntimeError once TF32 was set through
    the new API, so the new attribute is read first and ``allow_tf32`` only on older torch. A setting that still
    cannot be read counts as ``fp32`` (PyTorch's default).
    """
    matmul = torch.backends.cuda.matmul
    try:
        new = getattr(matmul, "fp32_precision", None)
        if new is not None:
            return "tf32" if new == "tf32" else "fp32"
        return "tf32" if matmul.allow_tf32 else "fp32"
    except RuntimeError:  # a mix of the legacy and new APIs that torch refuses to resolve
        return "fp32"


def step_peak(device: Any, bf16: bool) -> tuple[float | None, str]:
    """``(peak FLOP/s, precision)`` of a training step on ``device``: the peak of the precision its matmuls run in.

    ``bf16`` under bfloat16 autocast; otherwise, on a CUDA device, ``tf32`` when PyTorch lets float32 matmuls use TF32
    tensor cores (``torch.backends.cuda.matmul.fp32_precision = "tf32"``, ``torch.backends.fp32_precision = "tf32"``,
    ``torch.set_float32_matmul_precision("high")`` or the legacy ``allow_tf32 = True``), else ``fp32`` (PyTorch's
    default: CUDA cores, a peak about 15x below bf16's on an H100); ``fp32`` on a CPU (the CUDA settings are not
    read there). The peak is None on a CPU or an unknown GPU.
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None, "bf16" if bf16 else "fp32"
    precision = "bf16" if bf16 else _matmul_precision(torch)
    return peak_flops(torch.cuda.get_device_name(device), precision), precision


def mfu(flops_per_step: float, step_time_s: float, peak: float) -> float:
    """Model FLOP utilisation: achieved FLOP/s (``flops_per_step / step_time_s``) as a fraction of ``peak``."""
    if step_time_s <= 0 or peak <= 0:
        raise ConfigError(f"mfu: step time and peak must be > 0, got step_time_s={step_time_s}, peak={peak}")
    return flops_per_step / step_time_s / peak


def io_counters(io: Any) -> dict[str, int]:
    """Byte counters of a batch's I/O record: a mapping or an object with ``bytes_read`` (or ``bytes_stored``),
    ``bytes_decoded`` and ``bytes_useful``; absent counters are 0."""
    out = {"bytes_read": 0, "bytes_decoded": 0, "bytes_useful": 0}
    if io is None:
        return out
    get = io.get if isinstance(io, Mapping) else (lambda k, d=None: getattr(io, k, d))
    for key, aliases in (("bytes_read", ("bytes_read", "bytes_stored")), ("bytes_decoded", ("bytes_decoded",)),
                         ("bytes_useful", ("bytes_useful",))):
        for a in aliases:
            v = get(a, None)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise ConfigError(f"step_end io.{a}: expected a byte count >= 0, got {v!r}")
                out[key] = int(v)
                break
    return out


class _HostClock:
    """Events are one-element lists holding a ``perf_counter`` reading; always complete."""

    cuda = False

    def new(self) -> list[float]:
        return [0.0]

    def record(self, ev: list[float]) -> None:
        ev[0] = time.perf_counter()

    def done(self, ev: list[float]) -> bool:
        return True

    def wait(self, ev: list[float]) -> None:
        return None

    def elapsed_ms(self, a: list[float], b: list[float]) -> float:
        return (b[0] - a[0]) * 1e3


class _CudaClock:
    """CUDA events with timing, recorded on the device's current stream."""

    cuda = True

    def __init__(self, device: Any):
        import torch

        self._torch = torch
        self._device = device

    def new(self) -> Any:
        return self._torch.cuda.Event(enable_timing=True)

    def record(self, ev: Any) -> None:
        ev.record(self._torch.cuda.current_stream(self._device))

    def done(self, ev: Any) -> bool:
        return bool(ev.query())

    def wait(self, ev: Any) -> None:
        ev.synchronize()  # sync point: only when the GPU is more than the ring of steps behind, or at flush()

    def elapsed_ms(self, a: Any, b: Any) -> float:
        return float(a.elapsed_time(b))


class _Slot:
    """The events of one step, reused every ``ring`` steps; event objects are created once and kept."""

    __slots__ = ("step", "begin", "end", "pairs", "used", "names", "host", "host_begin", "host_end",
                 "samples", "io", "recorded", "pending")

    def __init__(self, clock: Any):
        self.begin = clock.new()
        self.end = clock.new()
        self.pairs: list[tuple[Any, Any]] = []  # (start, end) events, grown on demand, reused
        self.names: list[str] = []  # phase of each used pair
        self.host: list[float] = []  # host duration (s) of each used pair
        self.used = 0
        self.step = -1
        self.host_begin = self.host_end = 0.0
        self.samples = 0
        self.io: dict[str, int] = {}
        self.recorded = False  # timed (not a warm-up step)
        self.pending = False  # recorded but not yet read


class _Phase:
    __slots__ = ("_timer", "_name")

    def __init__(self, timer: StepTimer, name: str):
        self._timer = timer
        self._name = name

    def __enter__(self) -> None:
        self._timer._enter(self._name)

    def __exit__(self, *exc: object) -> bool:
        self._timer._exit(self._name)
        return False


class StepTimer:
    """Times the phases of each training step without synchronising the device.

    Parameters
    ----------
    device : str or torch.device, optional
        ``"cuda"``/``"cuda:N"``: CUDA events on the current stream; ``"cpu"``: host clock. None: CUDA when
        available.
    warmup : int
        Steps at the start that are run but not recorded (compilation, allocator growth, cold caches).
    lag : int
        Steps between recording a step's events and reading them (GPU); the ring holds ``lag + 2`` steps.
    phases : sequence of str
        Phase names :meth:`phase` accepts, in loop order (default :data:`PHASES`).
    nvtx : bool
        Also emit an NVTX range per phase (name = phase, payload = step) and a start/end range ``step``.
    clock : object, optional
        Replaces the clock (tests drive the GPU code path with a fake one).

    Raises
    ------
    ConfigError
        For a negative ``warmup``, ``lag < 1``, duplicate or empty phase names, or CUDA asked for but absent.
    """

    def __init__(self, *, device: Any = None, warmup: int = 2, lag: int = 2, phases: Sequence[str] = PHASES,
                 nvtx: bool = True, clock: Any = None):
        for key, v, lo in (("warmup", warmup, 0), ("lag", lag, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"StepTimer {key}: expected an integer >= {lo}, got {v!r}")
        phases = tuple(phases)
        if not phases or len(set(phases)) != len(phases) or not all(isinstance(p, str) and p for p in phases):
            raise ConfigError(f"StepTimer phases: expected distinct non-empty names, got {list(phases)!r}")
        self.warmup = warmup
        self.lag = lag
        self.phases = phases
        self.nvtx = nvtx
        if clock is None:
            self.device = _resolve_device(device)
            clock = _CudaClock(self.device) if self.device != "cpu" else _HostClock()
        else:
            self.device = str(device) if device is not None else ("cuda" if clock.cuda else "cpu")
        self._clock = clock
        self._ring = [_Slot(clock) for _ in range(lag + 2)]
        self._pending: deque[_Slot] = deque()  # recorded steps not yet read, oldest first
        self._records: list[dict[str, Any]] = []
        self._origin = clock.new()  # first recorded step's begin: timeline zero
        self._origin_set = False
        self._phase_cms = {p: _Phase(self, p) for p in phases}
        self.step = 0  # index of the current (or next) step, warm-up steps included
        self._slot: _Slot | None = None  # the open step
        self._phase: str | None = None  # the open phase
        self._phase_t0 = 0.0
        self._nvtx_step = 0
        self._nvtx_phase: Any = None

    # -- the loop's API ---------------------------------------------------------------------------------------

    def phase(self, name: str) -> _Phase:
        """Context manager timing one phase of the current step (the first phase of a step opens the step).

        A phase may occur several times in one step (gradient accumulation); its times add up.
        """
        try:
            return self._phase_cms[name]
        except KeyError:
            raise ConfigError(f"StepTimer.phase: unknown phase {name!r}; known: {list(self.phases)}") from None

    def step_end(self, *, samples: int = 0, io: Any = None, bytes_read: int | None = None,
                 bytes_decoded: int | None = None) -> None:
        """Close the current step: record its end, store its counters, read finished older steps.

        Parameters
        ----------
        samples : int
            Samples in this step's batch.
        io : mapping or object, optional
            The batch's I/O counters (see :func:`io_counters`).
        bytes_read, bytes_decoded : int, optional
            Override the counters from ``io``.
        """
        if self._phase is not None:
            raise RuntimeError(f"StepTimer.step_end inside phase {self._phase!r}; close the phase first")
        slot = self._slot if self._slot is not None else self._begin()
        if slot.recorded:
            self._clock.record(slot.end)
        slot.host_end = time.perf_counter()
        slot.samples = int(samples)
        counters = io_counters(io)
        if bytes_read is not None:
            counters["bytes_read"] = int(bytes_read)
        if bytes_decoded is not None:
            counters["bytes_decoded"] = int(bytes_decoded)
        slot.io = counters
        if self.nvtx:
            _nvtx.end(self._nvtx_step)
        if slot.recorded:
            slot.pending = True
            self._pending.append(slot)
        self._slot = None
        self.step += 1
        self._read(block=False)

    def records(self) -> list[dict[str, Any]]:
        """Per-step records read so far (without waiting); :meth:`flush` first to include the last steps."""
        self._read(block=False)
        return list(self._records)

    def flush(self) -> list[dict[str, Any]]:
        """Wait for every recorded step's events and read them (sync point); return all records.

        The last step's ``idle_ms`` is 0 when no later step has begun (its gap is unknown; ``idle_measured`` is
        False, and the report leaves it out of the idle statistics).
        """
        self._read(block=True)
        return list(self._records)

    def summary(self, **kwargs: Any) -> dict[str, Any]:
        """:func:`profiling.report.summarize` of :meth:`flush`'s records (keyword arguments passed on)."""
        from .report import summarize

        return summarize(self.flush(), phases=self.phases, **kwargs)

    # -- internals --------------------------------------------------------------------------------------------

    def _begin(self) -> _Slot:
        slot = self._ring[self.step % len(self._ring)]
        if slot.pending:  # the GPU is more than the ring behind: wait for the oldest step
            self._read(block=True, upto=slot)
        slot.step = self.step
        slot.used = 0
        slot.names.clear()
        slot.host.clear()
        slot.recorded = self.step >= self.warmup
        if slot.recorded:
            if not self._origin_set:
                self._clock.record(self._origin)
                self._origin_set = True
            self._clock.record(slot.begin)
        slot.host_begin = time.perf_counter()
        self._slot = slot
        if self.nvtx:
            _nvtx.set_step(self.step)
            self._nvtx_step = _nvtx.start("step", None, self.step)
        return slot

    def close(self) -> None:
        """End the NVTX ranges of a step left open (the loop raised inside it: no ``step_end``), so a trace's
        ranges stay balanced; the open step is dropped. Call it when the loop ends, however it ends (safe to call
        twice, and after a clean end)."""
        if self._phase is not None:
            self._pop_phase_range()
            self._phase = None
        if self._slot is not None:
            if self.nvtx:
                _nvtx.end(self._nvtx_step)
                self._nvtx_step = 0
            self._slot = None

    def _pop_phase_range(self) -> None:
        if self._nvtx_phase is not None:
            r, self._nvtx_phase = self._nvtx_phase, None
            r.__exit__(None, None, None)

    def _enter(self, name: str) -> None:
        if self._phase is not None:
            raise RuntimeError(f"StepTimer.phase({name!r}) inside phase {self._phase!r}; phases do not nest")
        slot = self._slot if self._slot is not None else self._begin()
        self._phase = name
        try:
            if self.nvtx:
                r = _nvtx.range(name, None, self.step)  # category: the phase's own (data_wait: data)
                r.__enter__()
                self._nvtx_phase = r
            if slot.recorded:
                if slot.used == len(slot.pairs):
                    slot.pairs.append((self._clock.new(), self._clock.new()))
                self._clock.record(slot.pairs[slot.used][0])
        except BaseException:  # no __exit__ follows a failed __enter__: pop the range pushed, leave no phase open
            self._pop_phase_range()
            self._phase = None
            raise
        self._phase_t0 = time.perf_counter()

    def _exit(self, name: str) -> None:
        slot = self._slot
        assert slot is not None and self._phase == name
        t1 = time.perf_counter()
        try:
            if slot.recorded:
                self._clock.record(slot.pairs[slot.used][1])
                slot.names.append(name)
                slot.host.append(t1 - self._phase_t0)
                slot.used += 1
        finally:  # the range pushed in _enter is popped, whatever recording the end did
            self._pop_phase_range()
            self._phase = None

    def _ready(self, slot: _Slot, nxt: _Slot | None) -> bool:
        c = self._clock
        if not (c.done(slot.end) and c.done(slot.begin)):
            return False
        if any(not (c.done(a) and c.done(b)) for a, b in slot.pairs[: slot.used]):
            return False
        return nxt is None or c.done(nxt.begin)

    def _next_of(self, slot: _Slot) -> _Slot | None:
        """The slot of the step after ``slot`` if that step has begun and was recorded."""
        nxt = self._ring[(slot.step + 1) % len(self._ring)]
        return nxt if nxt.step == slot.step + 1 and nxt.recorded else None

    def _read(self, *, block: bool, upto: _Slot | None = None) -> None:
        while self._pending:
            slot = self._pending[0]
            nxt = self._next_of(slot)
            if not block:
                if slot.step > self.step - 1 - self.lag or nxt is None or not self._ready(slot, nxt):
                    return
            else:
                for ev in (slot.begin, slot.end, *(e for p in slot.pairs[: slot.used] for e in p)):
                    self._clock.wait(ev)  # sync point: see _CudaClock.wait
                if nxt is not None:
                    self._clock.wait(nxt.begin)
            self._pending.popleft()
            self._records.append(self._finish(slot, nxt))
            slot.pending = False
            if slot is upto:
                return

    def _finish(self, slot: _Slot, nxt: _Slot | None) -> dict[str, Any]:
        c = self._clock
        span = c.elapsed_ms(slot.begin, slot.end)
        gap = c.elapsed_ms(slot.end, nxt.begin) if nxt is not None else 0.0
        step_ms = span + gap
        rec: dict[str, Any] = {"step": slot.step, "samples": slot.samples, **slot.io,
                               "t0_ms": c.elapsed_ms(self._origin, slot.begin), "step_ms": step_ms,
                               "idle_ms": gap, "idle_measured": nxt is not None}
        times = dict.fromkeys(self.phases, 0.0)
        host = dict.fromkeys(self.phases, 0.0)
        at: dict[str, float | None] = dict.fromkeys(self.phases)
        for i in range(slot.used):
            name = slot.names[i]
            a, b = slot.pairs[i]
            times[name] += c.elapsed_ms(a, b)
            host[name] += slot.host[i] * 1e3
            if at[name] is None:
                at[name] = c.elapsed_ms(slot.begin, a)
        rec["other_ms"] = max(0.0, span - sum(times.values()))
        for p in self.phases:
            rec[f"{p}_ms"] = times[p]
        for p in self.phases:
            rec[f"{p}_at_ms"] = at[p]
        for p in self.phases:
            rec[f"host_{p}_ms"] = host[p]
        nxt_host = nxt.host_begin if nxt is not None else slot.host_end
        rec["host_step_ms"] = (nxt_host - slot.host_begin) * 1e3
        wait = times.get("data_wait", 0.0)
        rec["stall_fraction"] = wait / step_ms if step_ms > 0 else 0.0
        return rec


def _resolve_device(device: Any) -> str:
    if device is not None and str(device) == "cpu":
        return "cpu"
    import torch

    if device is None:
        from fastload._device import default_device

        return str(default_device())  # "cpu", "cuda" or FASTLOAD_DEVICE's "cuda:N"
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"StepTimer device: expected 'cpu' or 'cuda[:N]', got {device!r} ({e})") from None
    if d.type == "cpu":
        return "cpu"
    if d.type != "cuda":
        raise ConfigError(f"StepTimer device: expected 'cpu' or 'cuda[:N]', got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"StepTimer device {device!r}: CUDA is not available on this machine")
    return str(d)
