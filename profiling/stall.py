"""Data-stall analysis: the same run with no loading, a warm page cache and a cold one, and the stall split.

Why this module exists: a data-wait share says *that* the accelerator waited, not *why*. Following Mohan et al.
("Analyzing and Mitigating Data Stalls in DNN Training", VLDB 2021), three runs of the same loop separate the two
causes:

- ``synthetic``: one batch, fetched before the loop and kept on the device, is replayed every step
  (:class:`ReplayLoader`): the step time with no data pipeline at all, the ideal;
- ``cached``: the real loader with the store's chunk files in the page cache (:mod:`profiling.slowstore`
  warms it): whatever the loop waits on top of the ideal is *preparation* (decode, gather, normalise, copy);
- ``cold``: the real loader reading every chunk file from the device: whatever it waits on top of ``cached``
  is *fetch* (storage).

``fastload profile --data synthetic,cached,cold`` runs all three and prints :func:`format_stall_table`;
:func:`stall_split` gives the numbers (also written as ``stall.json``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from fastload.errors import ConfigError

__all__ = ["ReplayLoader", "stall_split", "format_stall_table"]


def _clone(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, Mapping):
        return {k: _clone(v) for k, v in x.items()}
    return x


class ReplayLoader:
    """Hands out the same batch every step: a training loop with no data pipeline (``--data synthetic``).

    The batch's tensors are cloned (so the source loader's buffers can be reused or freed) and stay on the
    device they were on; its I/O counters are zero apart from the sample count, since nothing is read.

    Parameters
    ----------
    batch : fastload.Batch
        The batch to replay (typically the loader's first).
    """

    def __init__(self, batch: Any):
        import dataclasses

        from fastload.reader import IOStats

        n = len(batch)
        self.batch = dataclasses.replace(
            batch, fields=_clone(batch.fields), meta=_clone(batch.meta), boxes=batch.boxes.clone(),
            masks=_clone(batch.masks), sources=_clone(batch.sources), stats=IOStats(batches=1, samples=n))

    @classmethod
    def from_loader(cls, loader: Any) -> ReplayLoader:
        """Take the next batch of ``loader`` (an iterable of batches) and replay it."""
        try:
            batch = next(iter(loader))
        except StopIteration:
            raise ConfigError("synthetic data mode: the loader produced no batch") from None
        return cls(batch)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return self.batch

    def state_dict(self) -> dict[str, Any]:
        raise ConfigError("synthetic data mode replays one batch and has no position to checkpoint; "
                          "train with data.mode = 'cached' or 'cold'")

    def close(self) -> None:
        return None


def _brief(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A mode's figures: the run's over every rank where the summary has them (``run``, written under torchrun by
    :func:`profiling.report.summarize_ranks`), else the process's own. Under DDP a rank whose data came fast waits
    for a slow rank inside the gradient all-reduce, booked as its backward: rank 0's own data wait misses the
    stall."""
    def ms(v: Any) -> float:  # None: every timed step's batch was empty (nothing trained to average)
        return math.nan if v is None else float(v)

    run = summary.get("run")
    if run is not None and run.get("mean_max_step_ms") is not None:
        return {"step_ms": float(run["mean_max_step_ms"]), "data_wait_ms": float(run["mean_max_data_wait_ms"]),
                "stall_fraction": float(run["stall_fraction"]), "samples_per_s": float(run["samples_per_s"]),
                "ranks": f"all {run['world_size']} ranks"}
    world = int(summary.get("world_size", 1))
    return {"step_ms": ms(summary["step"]["mean_ms"]),
            "data_wait_ms": ms(summary["phases"]["data_wait"]["mean_ms"]),
            "stall_fraction": float(summary["stall_fraction"]),
            "samples_per_s": float(summary["samples_per_s"]),
            "ranks": f"rank {summary.get('rank', 0)} of {world} only" if world > 1 else "one process"}


def stall_split(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Split the data stall into preparation and fetch from the summaries of runs in several data modes.

    The split is of the measured data wait (the loop's ``next(loader)`` time per step), not of step-time
    differences: compute time varies between runs (other processes, clocks) by more than a small stall, while
    each run's data wait is measured directly. Step-time differences are kept beside it (``step_delta_ms``):
    they also hold the loader's interference with compute on the host (threads sharing cores).

    Under torchrun each mode's figures are the run's, over every rank (the summary's ``run``): per step the
    longest data wait and the longest step of any rank, averaged over the steps, and the run's stall fraction and
    samples/s; a single process's are its own. ``ranks`` says which.

    Parameters
    ----------
    summaries : mapping
        Data mode (``synthetic``, ``cached``, ``cold``; at least two) -> :func:`profiling.report.summarize`
        output of a run in that mode.

    Returns
    -------
    dict
        ``modes`` {mode: {step_ms, data_wait_ms, stall_fraction, samples_per_s, ranks}}; ``ranks`` (``all N
        ranks``, ``one process``, or ``rank R of N only`` for a DDP summary without the run's figures);
        ``prep_stall_ms`` (cached minus synthetic data wait: decode, gather, normalise, mask, copy),
        ``fetch_stall_ms`` (cold minus cached:
        storage reads), ``total_stall_ms`` (the slowest mode's wait minus the fastest's), each also as a
        ``*_fraction`` of the step time of the mode it ends in; a part is None when a mode it needs was not run.
        Differences are reported as measured (a small negative one is noise), not clipped.
    """
    unknown = sorted(set(summaries) - {"synthetic", "cached", "cold"})
    if unknown or len(summaries) < 2:
        raise ConfigError(f"stall split: expected at least two of synthetic, cached, cold; got {sorted(summaries)}")
    modes = {m: _brief(summaries[m]) for m in ("synthetic", "cached", "cold") if m in summaries}
    ranks = {v["ranks"] for v in modes.values()}
    if len(ranks) > 1:
        said = ", ".join(f"{m}: {v['ranks']}" for m, v in modes.items())
        raise ConfigError(f"stall split: the modes' figures cover different ranks ({said}); give summaries of runs "
                          f"with the same ranks")
    order = list(modes)
    out: dict[str, Any] = {"modes": modes, "ranks": ranks.pop(), "step_delta_ms": {}}
    for key, lo, hi in (("prep_stall", "synthetic", "cached"), ("fetch_stall", "cached", "cold"),
                        ("total_stall", order[0], order[-1])):
        if lo in modes and hi in modes:
            v = modes[hi]["data_wait_ms"] - modes[lo]["data_wait_ms"]
            step = modes[hi]["step_ms"]
            out[f"{key}_ms"], out[f"{key}_fraction"] = v, (v / step if step > 0 else None)
            out["step_delta_ms"][f"{hi}-{lo}"] = modes[hi]["step_ms"] - modes[lo]["step_ms"]
        else:
            out[f"{key}_ms"] = out[f"{key}_fraction"] = None
    out["basis"] = "differences of mean data wait per step between data modes; fractions of that mode's step time"
    return out


def format_stall_table(split: Mapping[str, Any]) -> str:
    """Console table of :func:`stall_split`."""
    lines = [f"{'data mode':<12}{'step ms':>10}{'wait ms':>10}{'stall':>9}{'samples/s':>12}"]
    for m, v in split["modes"].items():
        lines.append(f"{m:<12}{v['step_ms']:>10.2f}{v['data_wait_ms']:>10.2f}{100 * v['stall_fraction']:>8.1f}%"
                     f"{v['samples_per_s']:>12.1f}")
    lines.append("")
    for key, what in (("prep_stall", "preparation (cached - synthetic)"), ("fetch_stall", "fetch (cold - cached)"),
                      ("total_stall", "in all")):
        ms, frac = split[f"{key}_ms"], split[f"{key}_fraction"]
        if ms is not None:
            share = "" if frac is None else f"  ({100 * frac:.1f}% of the step)"
            lines.append(f"data stall, {what}: {ms:.2f} ms per step{share}")
    ranks = split.get("ranks")
    if ranks and ranks.startswith("all "):
        lines.append(f"(figures of {ranks}: per step, the longest data wait and the longest step of any rank; "
                     f"samples/s of all ranks)")
    elif ranks and ranks != "one process":
        lines.append(f"(figures of {ranks}: a stall on another rank shows here as forward/backward time)")
    deltas = split.get("step_delta_ms") or {}
    if deltas:
        lines.append("step time differences (also loader/compute interference): "
                     + ", ".join(f"{k} {v:+.2f} ms" for k, v in deltas.items()))
    return "\n".join(lines)
