"""``fastload train`` and ``fastload profile``: one training loop, top to bottom, that tells data wait from compute.

Why this module exists: it is the loop the whole project is measured by. It trains AtmoRep's Multiformer on masked
tokens from a :class:`fastload.Loader`, or (``model.kind = "forecaster"``, :mod:`profiling.forecast`) a Forecaster
with a multi-step latent rollout loss on whole-globe tiles from a :class:`fastload.rollout_data.RolloutLoader`, and
times every step in five phases (data wait = ``next(loader)``, h2d,
forward, backward, optimizer) with :class:`profiling.timers.StepTimer`: CUDA events on a GPU (read a few steps
late, no per-step synchronisation), the host clock on a CPU. ``profile`` runs a window of steps with every
instrument on and writes a report; ``train`` runs the same loop with checkpoints and exact resume.

    fastload profile                                   # built-in tiny dataset, small model, CPU or GPU: a report
    fastload profile --data synthetic,cached,cold      # split the data stall into preparation and fetch
    fastload profile --preset small_h100 --torch-profiler runs/tb --store-latency-ms 5
    profiling/nsys_profile.sh runs/nsys/p -- python -m profiling.loop profile --nsys
    fastload train --config run.toml --set optim.lr=3e-4 [--resume]
    fastload profile --config run.toml               # with [data] sampling = "multi.toml": streams, one Loader
    fastload train --preset cpu_tiny_forecaster --set forecast.multiformer_checkpoint=runs/mf/last.pt
    torchrun --standalone --nproc_per_node 2 -m profiling.loop train --preset cpu_tiny --device cpu

What each phase holds. *data_wait*: the consumer's wait in ``next(loader)`` (with a GPU loader this includes any
part of the side-stream host-to-device copy and masking, queued by the loader's workers, that the compute stream
had to wait for);
*h2d*: turning the batch into model inputs and moving whatever is not yet on the device (with a CPU loader and a
GPU model, the whole copy); *forward* (with the loss), *backward* (with DDP's gradient all-reduce), *optimizer*
(clipping, AdamW). Time outside the phases inside a step is ``other``; between steps (logging, checkpoints) it is
``idle``. Warm-up steps (``--warmup``) run but are left out of the numbers. Reading the loss is a host sync, done
only every ``log_every`` steps (and at a checkpoint): a log line's ``loss`` is the mean over the steps since the
previous line (steps A-B; the first line's, the run's first step alone), and ``summary.json``'s ``final_loss``
the last line's, over ``final_loss_steps = [A, B]`` (so a resumed run's line can differ from an uninterrupted
run's at the same step, their checkpoints identical). A loss that is not finite stops the run there (the run
diverged: the error names the steps, the value and optim.lr, grad_clip, bf16), before its checkpoint. With
``loader.on_bad_chunk = "skip"`` a batch may hold 0 samples (all skipped): alone, its step runs no model; under
DDP it runs with a zero loss so every rank joins the all-reduce, each rank's gradient weighs by its samples, and
no rank updates when every rank's batch was empty (:mod:`profiling.steps`). The report's ``skipped`` counts
samples, empty batches and steps without an update; a run that trained on none is an error. A timed step with an
empty batch is left out of the per-phase and per-step statistics, MFU and the what-if (they describe steps that
trained; a partly skipped batch counts its share of a full batch's FLOPs) and is counted in ``empty_steps``;
samples/s, read rates and the stall fraction are over all timed steps.

Under ``torchrun`` each rank trains with DistributedDataParallel (nccl on GPUs, gloo on CPUs), reads its own share
of every epoch (the loader takes rank and world size from torch.distributed) and writes its own report in
``<out>/rank<r>/``; rank 0 prints its table and a line per rank. A rank whose data comes fast waits for a slow
rank inside DDP's collectives, booked as its forward/backward, so a rank's own stall can hide the run's: at the
end every rank's timed steps are gathered once, and the run's data stall (per step, the longest data wait of any
rank over the longest step) and samples/s (every rank's samples over the slowest rank's time) are printed and
written as ``run`` in every rank's ``summary.json``. A checkpoint (``<checkpoint_dir>/last.pt``) holds the model,
optimizer, every rank's loader position, the RNG states and the step; resuming continues bit for bit. What can fail
on one rank alone before the first step (its report folder or checkpoint, its data, model or loader set-up) fails
every rank at once, the others naming that rank and its error (:func:`profiling.distributed.all_or_none`), instead
of leaving them in their next collective for ``dist_timeout_s``. A ``[validation]`` section adds the loss on a
held-out period every ``validation.every`` steps and at the end (:mod:`profiling.validation`).

Where the parts live: this module holds the loop and the command line; ``_loop_checks`` what is checked before the
work (the store, the folders and checkpoints), ``_loop_data`` the run's data (the built-in dataset) and a batch as
the Multiformer's inputs, ``_loop_model`` the Multiformer, its FLOPs and the learning rate (their public names are
re-exported here); :mod:`profiling.forecast` what differs for a Forecaster (its model, its ``RolloutLoader`` and the
step module whose forward is the rollout loss, its inputs); :mod:`profiling.distributed` the process group, the
ranks' agreement and the checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fastload.errors import ConfigError

from ._loop_checks import (
    check_loss_finite,
    check_output_dir,
    check_paths,
    check_steps_left,
    check_stop_without_checkpoint,
    check_store,
    checkpoint_step,
)
from ._loop_data import model_inputs, prepare_data
from ._loop_data import print_line as _print
from ._loop_data import url_options as _url_options
from ._loop_model import build_model, count_flops, lr_at, without_recompute
from ._loop_model import dummy_inputs as _dummy_inputs
from .distributed import (
    all_or_none,
    check_same_settings,
    collective,
    gather,
    init_distributed,
    resume_run,
    run_settings,
    save_run,
)
from .presets import DATA_MODES, PRESETS, RunConfig, load_run_config
from .steps import MultiformerStep, check_trained, replay_with_samples, sample_counter
from .validation import check_mode as check_validation_mode
from .validation import make_validator

__all__ = ["main", "run", "prepare_data", "build_model", "model_inputs", "count_flops", "without_recompute", "lr_at"]


def run(cfg: RunConfig, *, mode: str = "profile", out: str | os.PathLike[str] | None = None,
        torch_profiler: str | None = None, nsys: bool = False, resume: str | os.PathLike[str] | None = None,
        stop_at: int | None = None, wrap_loader: Callable[[Any], Any] | None = None,
        wrap_model: Callable[[Any], Any] | None = None, log: Callable[[str], None] = _print) -> dict[str, Any]:
    """Train ``cfg.steps`` steps with every phase timed; write the report; return this rank's summary.

    Parameters
    ----------
    cfg : RunConfig
    mode : {"profile", "train"}
        Labels the report; ``train`` also writes checkpoints when ``cfg.checkpoint_dir`` is set.
    out : path, optional
        Report folder (default ``cfg.report_dir`` or ``runs/<mode>-<time>``); per rank ``<out>/rank<r>`` under
        torchrun.
    torch_profiler : path, optional
        Also trace the run's last few steps with torch.profiler into this folder (TensorBoard). The traced steps
        and the one before them (whose idle holds the profiler's start) are left out of the summary (in
        ``steps.csv`` with ``torch_profiler = 1``; ``summary["torch_profiler"]`` names the folder and the steps);
        a profile needs ``steps >= warmup + 3``.
    nsys : bool
        Turn on NVTX and call cudaProfilerStart/Stop around the timed steps (for ``nsys_profile.sh``).
    resume : path, optional
        Checkpoint to continue from (model, optimizer, loader positions, RNG, step).
    stop_at : int, optional
        Stop after this step (with a checkpoint in ``train`` mode), as a preempted job would; the learning-rate
        schedule still spans ``cfg.steps``, so a resumed run continues exactly.
    wrap_loader, wrap_model : callable, optional
        Applied to the batch iterable and to the model before the loop (tests inject known delays this way).
    """
    from fastload._nvtx import enable as nvtx_enable
    from fastload._nvtx import is_enabled as nvtx_on
    from fastload.loader import Loader
    from model import apply_compile

    from . import forecast as fc
    from .nsys import CaptureWindow
    from .report import (
        format_table,
        loader_record,
        summarize,
        summarize_loader,
        summarize_ranks,
        write_report,
    )
    from .slowstore import open_run_store
    from .stall import ReplayLoader
    from .tb import TorchProfilerConfig, build_torch_profiler, record_fetch
    from .timers import StepTimer, step_peak

    if mode not in ("profile", "train"):
        raise ConfigError(f"mode: expected 'profile' or 'train', got {mode!r}")
    if mode == "profile" and cfg.warmup >= cfg.steps:  # (training without timed steps still trains)
        raise ConfigError(f"steps = {cfg.steps} with warmup = {cfg.warmup} (--steps, --warmup): the first warmup "
                          f"steps are left out of a profile, so none would be timed; give steps > warmup")
    if mode == "train" and stop_at is not None and cfg.checkpoint_dir is None:  # the CLI's check and the API's
        check_stop_without_checkpoint(stop_at, cfg.steps)
    rank, world, device = init_distributed(cfg)
    say = log if rank == 0 else (lambda msg: None)
    ddp = world > 1
    if ddp:
        import torch.distributed as dist
    out_dir = Path(out or cfg.report_dir or f"runs/{mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    if ddp:
        box = [str(out_dir)]
        with collective("sharing the report folder"):
            dist.broadcast_object_list(box, src=0)  # one folder for all ranks, whatever their clocks say
        out_dir = Path(box[0]) / f"rank{rank}"
    # every rank's settings, gathered once (every rank reaches here: nothing before can fail on one alone)
    settings = gather(run_settings(cfg, mode, stop_at, resume is not None), world, "the run settings")
    with all_or_none("the run's checks (report folder, checkpoints)", world):  # on every rank, then agreed
        check_same_settings(settings)  # before DDP's constructor meets a model of another shape
        check_paths(cfg, mode, out_dir, "--out" if out else "report_dir" if cfg.report_dir else
                     "the report folder", torch_profiler, resume)
        check_validation_mode(cfg, mode)
        # steps left to train, before the data, model and loader set-up (the checkpoint's step read alone)
        first = 0 if resume is None else checkpoint_step(resume)
        if first is not None:
            check_steps_left(first, cfg.steps, stop_at, resume)
    if nsys:
        nvtx_enable()
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        share = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(cfg.threads or max(1, share - cfg.loader.workers))

    # -- data: rank 0 synthesises / computes coefficients first, the others then find them -------------------------
    with all_or_none("the data preparation (rank 0 first)", world):  # the others wait here for rank 0
        if rank == 0:
            store_path, sampling = prepare_data(cfg, say)
    # every rank: what can fail on one alone (its store, its memory) fails all of them here, before DDP's first
    # broadcast (all_or_none; the same for the checks above and the resume and instruments below)
    with all_or_none("the model and loader set-up", world):
        if rank != 0:
            store_path, sampling = prepare_data(cfg, say)
        levelled = [f.name for f in sampling.fields if f.levels is not None]
        if mode == "train" and cfg.data.mode == "synthetic":
            raise ConfigError("data.mode = 'synthetic' replays one batch: it is for profiling, not training")

        # -- model and optimizer -----------------------------------------------------------------------------------
        forecast = cfg.model.kind == "forecaster"
        threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
        extras = f"{', bf16 autocast' if cfg.bf16 else ''}{', compiled' if cfg.compile else ''}"
        if forecast:  # the Forecaster on a Multiformer's encoder; the loop trains what requires grad
            net = fc.run_forecaster(cfg, sampling, build_model, device, say, where=f"{threads}{extras}")
        else:
            net = build_model(cfg, sampling).to(device)
            say(f"model: Multiformer, {net.num_parameters() / 1e6:.3f} M parameters, fields "
                f"{list(sampling.field_names)}, device {device}{threads}{extras}")
        # MFU's peak is the one of the precision the step's matmuls run in (bf16 autocast, else TF32 or FP32)
        peak, precision = step_peak(device, cfg.bf16)
        flops = None
        # the batch FLOPs are counted on (a step's are scaled by its samples / batch_size: a partly skipped batch, or a
        # Forecaster's short last batch of an epoch); a Forecaster's is its rollout batch, set below
        flops_batch = None if forecast else cfg.loader.batch_size or sampling.batch_size
        # FLOPs are counted once, on zeros of the batch's shapes, before compiling
        if peak is not None and not forecast:
            batch_size = flops_batch
            flops = count_flops(net, _dummy_inputs(sampling, batch_size, levelled, device), cfg.model.loss, cfg.bf16,
                                device)
        if wrap_model is not None and not forecast:
            net = wrap_model(net)
        o = cfg.optim
        # fused: one kernel for all parameters (CPU and CUDA); the per-tensor default cost as much as the forward pass
        # on the tiny CPU model, and fused ran 6.8x faster than it on 120 small tensors here
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=o.lr, betas=(o.beta1, o.beta2),
                                weight_decay=o.weight_decay, fused=True)
        kinds = {cfg.model.loss: 1.0}

        # -- data source (closed by the exit stack, whatever happens) and the module one step's forward runs -------
        if sampling.streams:  # every stream's store, opened in the run's data mode (one Loader reads them all)
            store: Any = {st.name: open_run_store(st.path, mode=cfg.data.mode, latency_ms=cfg.data.latency_ms,
                                                  fields=[f.name for f in sampling.fields if f.stream == st.name],
                                                  warm=mode == "profile", log=say, backend=cfg.data.backend,
                                                  storage_options=_url_options(cfg, st.path))
                          for st in sampling.streams}
            store_path = {name: s.path for name, s in store.items()}
        else:
            store = open_run_store(store_path, mode=cfg.data.mode, latency_ms=cfg.data.latency_ms,
                                   fields=sampling.field_names, warm=mode == "profile", log=say,
                                   storage_options=cfg.data.storage_options, backend=cfg.data.backend)
        loader_cfg = dataclasses.replace(cfg.loader, device=str(device))
        loader: Any
        stepper: torch.nn.Module
        if forecast:  # the globe's tiles at t, targets at t + k * lead; forward = the multi-step rollout loss
            with without_recompute(net):  # its FLOPs counted without activation checkpointing's recompute (MFU)
                loader, stepper, flops = fc.rollout_data_and_step(cfg, net, store, sampling, loader_cfg, device, kinds,
                                                                  count_flops=peak is not None, wrap_model=wrap_model)
            flops_batch = loader.rollout.batch_size  # the batch dummy_rollout_inputs counted the FLOPs on
        else:
            masking = None if cfg.masking.strategy == "identity" else cfg.masking
            loader = Loader(store, sampling, loader_cfg, masking=masking)
            stepper = MultiformerStep(net, kinds)
        if nvtx_on() and not cfg.compile:
            from .nvtx import apply_nvtx

            apply_nvtx(net, depth=3)
        if cfg.compile:
            apply_compile(net)
    model = torch.nn.parallel.DistributedDataParallel(stepper, device_ids=[device] if device.type == "cuda"
                                                      else None) if ddp else stepper

    def prepare(batch: Any) -> Any:  # the h2d phase: a batch as the model's inputs, on the device
        if forecast:
            return fc.rollout_inputs(batch, device)
        return model_inputs(batch, levelled, device)

    def loss_of(inputs: Any) -> torch.Tensor:  # the forward phase: forward and loss
        if forecast:
            return model(*inputs)
        return model(inputs)

    stack = contextlib.ExitStack()
    stack.callback(torch.set_num_threads, threads_before)
    stack.callback(loader.close)
    with stack:
        with all_or_none("the resume and instruments set-up", world):  # before the first step's collectives
            say(f"loader: {loader!r}" + (f"; store latency {cfg.data.latency_ms} ms per request"
                                          if cfg.data.latency_ms else ""))
            start = 0
            ckpt = Path(cfg.checkpoint_dir) / "last.pt" if cfg.checkpoint_dir else None
            if resume is not None:
                start = resume_run(Path(resume), net, opt, loader, rank, world)
                say(f"resumed from {resume} at step {start}")
            validator = make_validator(cfg, mode, store, sampling, loader_cfg, loader.time_indices, stepper,
                                       prepare, lambda x: stepper(*x) if forecast else stepper(x),
                                       torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16), device,
                                       world, say)
            if validator is not None:
                stack.callback(validator.close)
            stop = cfg.steps if stop_at is None else stop_at
            check_steps_left(start, cfg.steps, stop_at, resume)  # (again: the step the resume restored)
            data: Any = loader
            if cfg.data.mode == "synthetic":  # replay one batch already on the device
                data = ReplayLoader(next(iter(loader)).to(device)) if forecast else \
                    replay_with_samples(loader, store_path)  # not a batch whose samples were all skipped
                say("data: synthetic mode: replaying the first batch from the device (no loading)")
            if wrap_loader is not None:
                data = wrap_loader(data)

            # -- instruments ----------------------------------------------------------------------------------------
            remaining = stop - start
            if remaining <= cfg.warmup:
                say(f"note: {remaining} step(s) with warmup = {cfg.warmup}: no step is timed; lower --warmup")
            timer = StepTimer(device=device, warmup=cfg.warmup)
            stack.callback(timer.close)  # a step that raised: its NVTX ranges end (nsys traces stay balanced)
            window = CaptureWindow(start + cfg.warmup, stop) if nsys and remaining > cfg.warmup else None
            if window is not None:
                stack.callback(window.close)
            prof = None
            traced_from = stop  # the first step (this run's numbering from 0) whose timing the profiler touches
            if torch_profiler is not None:
                # The trace covers the run's last steps, so that no timed step comes after it (its export, in the
                # prof.step() after the last traced step, and the loader's queue refilled meanwhile, would land in the
                # numbers). The profiler starts tracing in the prof.step() after the step before its warm-up: that
                # step's idle holds the start, so it is left out too. Profiled steps stay in steps.csv (column
                # torch_profiler = 1), out of the summary.
                spare = remaining - cfg.warmup  # timed steps without a profiler
                active = max(1, min(5, spare - 3))
                pwarm = 1 if spare - active - 1 >= 2 else 0
                wait = max(0, remaining - active - pwarm)
                traced_from = start + max(0, wait - 1)
                if mode == "profile" and traced_from - start <= cfg.warmup:
                    raise ConfigError(f"--torch-profiler with steps = {cfg.steps}, warmup = {cfg.warmup}: the traced "
                                      f"steps and the one before them are left out of the timing, so none would be "
                                      f"timed; give steps >= warmup + 3")
                pcfg = TorchProfilerConfig(dir=str(torch_profiler), wait=wait, active=active, worker_name=f"rank{rank}",
                                           warmup=pwarm)
                prof = stack.enter_context(build_torch_profiler(pcfg))
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        loader_records: list[dict[str, Any]] = []
        loss_sum, loss_n, last_loss = torch.zeros((), device=device), 0, float("nan")
        # the steps the loss read at a log line is the mean of: those since the previous line
        mean_from, finite_to = start + 1, start  # finite_to: the last step whose loss check passed
        last_loss_steps: list[int] | None = None  # summary.json final_loss_steps: [first, last]
        skipped = {"samples": 0, "empty_batches": 0, "steps_without_update": 0}  # this rank's, over the run's steps
        counts = sample_counter(cfg, world, forecast)  # over the ranks: DDP with loader.on_bad_chunk = "skip" only

        def ddp_guard(what: str) -> Any:  # a rank that stopped answering: a CollectiveError naming dist_timeout_s
            return collective(what, among_other_work=True) if ddp else contextlib.nullcontext()
        t_start = time.perf_counter()

        # -- the loop -------------------------------------------------------------------------------------------
        it = iter(data)
        for step in range(start, stop):
            if window is not None:
                window.step(step)
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            with timer.phase("data_wait"), record_fetch():
                try:
                    batch = next(it)
                except StopIteration:  # end of an epoch: the loader goes on with the next one
                    it = iter(data)
                    batch = next(it)
            # n = 0: the loader skipped every sample of this batch for bad chunks (loader.on_bad_chunk = "skip").
            # Alone, such a step runs no model (the report leaves it out of its statistics). Under DDP it runs with
            # MultiformerStep's zero loss, so this rank joins the gradient all-reduce; `counts` weighs each rank's
            # gradient by its n; no rank updates if all had 0.
            n = len(batch)
            counts.start(n)
            skipped["samples"] += batch.stats.skipped
            skipped["empty_batches"] += n == 0
            if n or ddp:
                with timer.phase("h2d"):
                    inputs = prepare(batch)
                with timer.phase("forward"), ddp_guard("DDP's forward (its buffer broadcast)"):
                    with autocast:
                        loss = loss_of(inputs)
                with timer.phase("backward"), ddp_guard("the gradient all-reduce (backward)"):
                    counts.weigh(loss).backward()  # under DDP with skip: loss * n
            with timer.phase("optimizer"):
                # sync point (DDP with skip only): the counts' host all-reduce, done by now; grads scaled to the mean
                if counts.total() > 0:
                    counts.scale_grads(net.parameters())
                    if o.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), o.grad_clip)
                    opt.step()
                else:
                    skipped["steps_without_update"] += 1
                opt.zero_grad(set_to_none=True)
            timer.step_end(samples=n, io=batch.stats)
            if step - start >= cfg.warmup and step < traced_from:
                loader_records.append(loader_record(batch.stats))
            if prof is not None:
                prof.step()
            if n:  # (the zero loss of an empty batch is no loss of the model)
                loss_sum += loss.detach()
                loss_n += 1
            done = step + 1
            log_now = done % cfg.log_every == 0 or done == stop or done == start + 1
            ckpt_now = ckpt is not None and mode == "train" and (
                done == stop or bool(cfg.checkpoint_every and done % cfg.checkpoint_every == 0))
            if log_now or ckpt_now:  # a loss not finite (diverged) stops the run before its line and checkpoint
                mean = float(loss_sum) / loss_n if loss_n else None  # sync point: reading the loss waits for the device
                with all_or_none(f"the loss check at step {done}", world):  # a rank's own loss may be finite
                    check_loss_finite(mean, mean_from, done, cfg, ckpt if mode == "train" else None, finite_to)
                finite_to = done
            if log_now:
                if loss_n:
                    last_loss, last_loss_steps = mean, [mean_from, done]
                loss_sum.zero_()
                mean_from = done + 1
                first = " (includes start-up: JIT, pipeline fill)" if done == start + 1 else ""
                said = f"loss {last_loss:.4f}" if loss_n else "loss - (every batch since the last line was empty)"
                loss_n = 0
                say(f"step {done}/{cfg.steps}  {said}  lr {lr:.2e}  {time.perf_counter() - t_start:.1f} s{first}")
            if ckpt_now:
                # not before this run's first update (every batch so far empty: on_bad_chunk = "skip"): such a
                # checkpoint would hold an untrained model (or the resumed one) under a later step, overwriting a
                # good last.pt; a run that never updates ends in check_trained's error with none written. (The
                # counts agree on every rank, as save_run's collectives need: the skip counter sums them.)
                if skipped["steps_without_update"] < done - start:
                    save_run(ckpt, net, opt, done, loader, cfg, rank, world)
                    say(f"checkpoint: {ckpt} (step {done})")
                else:
                    say(f"checkpoint: none at step {done}: no step of this run has updated the model yet")
            if validator is not None and validator.due(done, stop, cfg.validation.every):
                validator.run(done)  # every rank (one all-reduce): the step counts agree
        check_trained(skipped, stop - start, store_path)  # every batch empty (on_bad_chunk = "skip"): an error

    # -- report -------------------------------------------------------------------------------------------------
    # the timer numbers this run's steps from 0; the console, steps.csv and steps.png say "step N" of cfg.steps from 1
    # (after a resume, N goes on from the checkpoint's step)
    records = [{**r, "step": start + int(r["step"]) + 1} for r in timer.flush()]
    if prof is not None:  # the steps torch.profiler touched (see traced_from): in steps.csv, out of the summary
        for r in records:
            r["torch_profiler"] = int(r["step"] > traced_from)
    timed = [r for r in records if not r.get("torch_profiler")]
    if not timed:
        say("no timed steps: no report written" + (" (the steps torch.profiler traced are left out)"
                                                   if prof is not None else ""))
        return {}
    summary = summarize(timed, phases=timer.phases, flops_per_step=flops, peak_flops=peak, batch_size=flops_batch,
                        peak_precision=precision, samples_counted=True, config=cfg.to_dict())
    summary.update({"mode": mode, "data_mode": cfg.data.mode, "rank": rank, "world_size": world,
                    "device": str(device), "store": store_path, "final_loss": last_loss,
                    "final_loss_steps": last_loss_steps,
                    "store_latency_ms": cfg.data.latency_ms, "skipped": skipped,
                    "validation": None if validator is None else validator.records,
                    "torch_profiler": None if prof is None else {
                        "dir": str(torch_profiler), "left_out_steps": [traced_from + 1, stop],
                        # the active steps only: the profiler's warm-up step runs its start-up, unrecorded
                        "traced_steps": [stop - pcfg.active + 1, stop]}})
    if cfg.data.mode != "synthetic" and wrap_loader is None:
        wall = sum(r["step_ms"] for r in timed) / 1e3
        summary["loader"] = summarize_loader(loader_records, wall_s=wall, machine=summary["machine"])
    # one gather at the end: each rank's timed steps (step, time, data wait, samples) for the run's own numbers
    briefs = gather({"rank": rank, "samples_per_s": summary["samples_per_s"], "skipped": skipped,
                     "stall_fraction": summary["stall_fraction"], "step_ms": summary["step"]["mean_ms"],
                     "steps": [{k: r[k] for k in ("step", "step_ms", "data_wait_ms", "samples")} for r in timed]},
                    world, "the run summaries")
    if ddp:
        summary["run"] = summarize_ranks([b["steps"] for b in briefs])
    paths = write_report(out_dir, records, summary)
    say("")
    say((f"rank 0 of {world} (every rank's line below):\n" if ddp else "") + format_table(summary))
    for b in (b for b in briefs if b["skipped"]["samples"]):  # loader.on_bad_chunk = "skip": what bad chunks cost
        say(f"rank {b['rank']}: skipped for bad chunks: {b['skipped']['samples']} sample(s), "
            f"{b['skipped']['empty_batches']} batch(es) left with none, "
            f"{b['skipped']['steps_without_update']} step(s) without an update")
    if ddp:
        rw = summary["run"]
        say("")
        say("per rank:")
        for b in briefs:
            ms = "-" if b["step_ms"] is None else f"{b['step_ms']:.2f}"
            say(f"  rank {b['rank']}: {ms} ms/step  {b['samples_per_s']:.1f} samples/s  "
                f"stall {100 * b['stall_fraction']:.1f}%")
        say(f"  all {world} ranks: {rw['samples_per_s']:.1f} samples/s ({rw['samples']} samples in the slowest "
            f"rank's {rw['seconds']:.2f} s), data stall {100 * rw['stall_fraction']:.1f}% (per step, the longest "
            f"data wait of any rank over the longest step)")
        say("  (a rank's forward and backward include its wait for the other ranks in DDP's broadcast and gradient "
            "all-reduce: a rank whose data came fast books its wait for a slow rank's data there, not as data "
            "wait; the run's data stall is the line above)")
    say(f"\nreport: {', '.join(str(p) for p in paths.values())}"
        + (f" (every rank's in {out_dir.parent}/rank<r>/)" if ddp else ""))
    if prof is not None:
        tp = summary["torch_profiler"]
        say(f"torch.profiler trace of steps {tp['traced_steps'][0]}-{tp['traced_steps'][1]}: {torch_profiler} "
            f"(tensorboard --logdir {torch_profiler}); steps {tp['left_out_steps'][0]}-{tp['left_out_steps'][1]} "
            f"(the profiler's start, trace and export) are left out of the numbers above (in steps.csv: "
            f"torch_profiler = 1)")
    return summary


# -- command line -------------------------------------------------------------------------------------------------


def _parser(mode: str) -> argparse.ArgumentParser:
    what = ("Profile a training loop: data wait vs H2D vs forward/backward/optimizer, with a report."
            if mode == "profile" else "Train a Multiformer (masked tokens) or a Forecaster (model.kind=forecaster: "
            "global latent rollouts) with checkpoints, exact resume and DDP.")
    p = argparse.ArgumentParser(prog=f"fastload {mode}", description=what,
                                epilog="presets: " + ", ".join(PRESETS) + " (python -m profiling.presets prints "
                                "them). Example: fastload profile --set loader.workers=4 --steps 40")
    p.add_argument("--preset", help="run preset (default: cpu_tiny, without --config; with it, the base preset "
                                    "when the file names none)")
    p.add_argument("--config", help="run file (TOML); 'preset = NAME' in it (or --preset) picks the base preset; "
                                    "with none, the file needs a [data] section with sampling")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. loader.batch_size=8, model.embed_dim=64 (repeatable)")
    p.add_argument("--store", help="data store (default: the built-in synthetic dataset)")
    p.add_argument("--steps", type=int, help="optimizer steps of the run")
    p.add_argument("--warmup", type=int, help="steps left out of the timing numbers")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: $FASTLOAD_DEVICE, else the GPU when there is one)")
    p.add_argument("--out", help="report folder (default: runs/<mode>-<time>)")
    p.add_argument("--store-latency-ms", type=float, help="simulated storage latency per request (ms)")
    p.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile each layer")
    p.add_argument("--torch-profiler", metavar="DIR",
                   help="trace the last steps for TensorBoard (left out of the timing numbers)")
    p.add_argument("--nsys", action="store_true",
                   help="NVTX on, cudaProfilerStart/Stop around the timed steps (run under nsys_profile.sh)")
    if mode == "profile":
        p.add_argument("--data", default=None, metavar="MODE[,MODE...]",
                       help="synthetic (replay one batch from the device), cached (warm page cache, default), "
                            "cold (pages dropped before each read); several: one run each and the stall split")
    else:
        p.add_argument("--checkpoint-dir", help="where last.pt goes")
        p.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                       help="continue from CKPT (default: <checkpoint_dir>/last.pt)")
        p.add_argument("--stop-at", type=int, metavar="STEP",
                       help="stop after STEP with a checkpoint, as if preempted (the schedule still spans --steps)")
    return p


def _config(args: argparse.Namespace) -> RunConfig:
    """The run config the arguments give (the same on every rank); :func:`_check_inputs` then checks its store."""
    sets = list(args.overrides)
    for flag, key in (("steps", "steps"), ("warmup", "warmup"), ("device", "device"), ("bf16", "bf16"),
                      ("compile", "compile"), ("store", "data.store"), ("store_latency_ms", "data.latency_ms"),
                      ("checkpoint_dir", "checkpoint_dir")):
        v = getattr(args, flag, None)
        if v is not None:
            sets.append(f"{key}={v}")
    cfg = load_run_config(args.config, preset=args.preset, overrides=sets)
    if args.store is not None and cfg.data.sampling.streams:
        raise ConfigError(f"--store {args.store}: the sampling config has streams "
                          f"{[st.name for st in cfg.data.sampling.streams]}, whose stores are their "
                          f"streams.NAME.path; leave data.store (--store) unset")
    return cfg


def _check_inputs(cfg: RunConfig, args: argparse.Namespace) -> None:
    """The run's store (``--store`` / ``data.store``) and the coefficients a ``--store`` of normalised fields needs."""
    if cfg.data.store is not None:  # before the model is built or a page is warmed: the store, then its fields
        check_store(cfg, "--store" if args.store is not None else "data.store", from_file=args.config is not None)
    if args.store is not None and cfg.data.sampling.norm_path is None and \
            any(f.normalization != "none" for f in cfg.data.sampling.fields):
        raise ConfigError(f"--store {args.store}: its fields normalise, so the sampling config needs norm_path "
                          f"(fastload stats {args.store} --out NORM; --set data.sampling.norm_path=NORM), or "
                          f"use a config whose fields have normalization = 'none'")


def main(argv: Sequence[str] | None = None) -> int:
    """``fastload train ...`` / ``fastload profile ...`` (``argv[0]`` is the subcommand)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "profile"):
        print("usage: python -m profiling.loop {train,profile} [options]  (--help after the subcommand)",
              file=sys.stderr)
        return 2
    mode = argv[0]
    args = _parser(mode).parse_args(argv[1:])
    cfg = _config(args)
    # under torchrun the process group starts here (run() keeps it), so that a store one rank alone cannot open
    # fails every rank at once, not the others after dist_timeout_s waiting for that rank to join the group
    world = init_distributed(cfg)[1] if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 1
    with all_or_none("the store check (--store, data.store)", world):
        _check_inputs(cfg, args)
    if mode == "train":
        resume = None
        if args.resume is not None:
            if args.resume == "" and cfg.checkpoint_dir is None:
                raise ConfigError("--resume without a path needs checkpoint_dir (--checkpoint-dir)")
            resume = args.resume or str(Path(cfg.checkpoint_dir) / "last.pt")
        run(cfg, mode="train", out=args.out, torch_profiler=args.torch_profiler, nsys=args.nsys, resume=resume,
            stop_at=args.stop_at)
        return 0
    modes = [m.strip() for m in (args.data or cfg.data.mode).split(",") if m.strip()]
    bad = [m for m in modes if m not in DATA_MODES]
    if bad or not modes or len(set(modes)) != len(modes):
        raise ConfigError(f"--data: expected distinct modes from {list(DATA_MODES)}, got {args.data!r}")
    for m in modes:  # every mode's config is checked (RunConfig) before the first run starts
        dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mode=m))
    if len(modes) == 1:
        run(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mode=modes[0])), mode="profile",
            out=args.out, torch_profiler=args.torch_profiler, nsys=args.nsys)
        return 0
    return _stall_runs(cfg, modes, args)


def _stall_runs(cfg: RunConfig, modes: Sequence[str], args: argparse.Namespace) -> int:
    """One profile run per data mode (``<out>/<mode>/``), then the stall split (``<out>/stall.json``)."""
    from .report import write_summary
    from .stall import format_stall_table, stall_split

    root = Path(args.out or cfg.report_dir or f"runs/profile-{time.strftime('%Y%m%d-%H%M%S')}")
    order = [m for m in DATA_MODES if m in modes]
    # every mode's folder is checked before the first run, naming the setting given (run() only sees out=root/m)
    flag = "--out" if args.out else "report_dir" if cfg.report_dir else "the report folder"
    for m in order:
        check_output_dir(root / m, flag)
    summaries = {}
    for m in order:
        print(f"\n== data mode {m} ==", flush=True)
        summaries[m] = run(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mode=m)), mode="profile",
                           out=root / m, torch_profiler=args.torch_profiler and str(Path(args.torch_profiler) / m),
                           nsys=args.nsys)
    if os.environ.get("RANK", "0") != "0" or not all(summaries.values()):
        return 0
    split = stall_split(summaries)
    path = write_summary(split, root / "stall.json")
    print(f"\n== data stall ==\n{format_stall_table(split)}\n\nstall split: {path}", flush=True)
    return 0


if __name__ == "__main__":
    from fastload.cli import main as _cli

    sys.exit(_cli(sys.argv[1:]))
