"""``python -m fastload.store PATH_OR_URL``: print what :func:`fastload.store.open_store` sees in a store.

A quick schema dump for debugging a store (``fastload inspect`` is the full report with sizes and advice).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import FastloadError
from ._open import open_store


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastload.store", description=__doc__.splitlines()[0])
    p.add_argument("store", help="local path or fsspec URL of a zarr store")
    p.add_argument("--allow-unsafe-codecs", action="store_true", help="let numcodecs decode pickle/object codecs")
    args = p.parse_args(argv)
    try:
        s = open_store(args.store, allow_unsafe_codecs=args.allow_unsafe_codecs)
    except FastloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(repr(s))
    if s.time is not None and s.time.size:
        print(f"time: {s.time[0]} .. {s.time[-1]} ({s.time.size} steps)")
    for f in s.fields.values():
        lev = "" if f.levels is None else f" {f.level_type or 'levels'} {f.levels.tolist()}"
        print(f"  field {f.name!r} in {f.array!r}{lev}{'' if f.has_time else ' (static)'} {f.dtype} {f.units or ''}")
    for name, why in s.not_fields.items():
        print(f"  not a field {name!r}: {why}")
    for a in s.arrays.values():
        shard = f" shard {a.shard}" if a.shard else ""
        codecs = [c.get("id") or c.get("name") for c in a.codecs]
        print(f"  array {a.name!r} {a.shape} chunks {a.chunks}{shard} grid {a.grid_shape} {a.dtype} {codecs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
