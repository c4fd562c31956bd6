"""The ``fastload`` command: one subcommand per module that owns the work.

Each subcommand is a thin ``main(argv=None) -> int`` in its module, so ``python -m fastload.synth ...`` works as
well as ``fastload synth ...``. Modules are imported only when their subcommand runs, so ``fastload --help`` is
instant. A :class:`~fastload.errors.FastloadError` is printed as one line (no traceback) and exits with status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from .errors import FastloadError

# subcommand -> (module owning it, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("fastload.synth", "write a synthetic ERA5-like store (deterministic by seed)"),
    "convert": ("fastload.convert", "convert NetCDF/GRIB files into a fastload/xarray zarr store"),
    "stats": ("fastload.stats", "compute normalisation coefficients into their own store"),
    "inspect": ("fastload.inspect", "summarise a store; with --config, read amplification and a better chunking"),
    "rechunk": ("fastload.rechunk", "copy a store with a chunking suited to a sampling config"),
    "bench": ("profiling.bench", "compare the fastload Loader with peer loaders on the same samples"),
    "train": ("profiling.loop", "train a Multiformer or Forecaster (checkpoints, exact resume, DDP)"),
    "profile": ("profiling.loop", "profile a training loop: data wait vs H2D vs compute, with a report"),
    "profile-loader": ("profiling.loader_profile", "profile the loader alone: per-stage times, sweep workers"),
    "rollout": ("profiling.rollout", "roll a trained Forecaster out over the globe; write the stitched fields"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [
        "usage: fastload <command> [options]",
        "",
        "Fast, honest data loading and profiling for AtmoRep-style weather transformers on zarr stores.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'fastload <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"fastload {version('fastload')}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fastload: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    entry = module.main
    try:
        if name in ("train", "profile"):  # one module, two entry points
            return int(entry([name, *rest]) or 0)
        return int(entry(rest) or 0)
    except FastloadError as e:
        print(f"fastload {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastload {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
