"""Sampling: where samples go, which chunks they need, and the one-pass gather into token tensors.

No I/O happens here: the store and reader hand in decoded chunks, and everything returns arrays.

- :mod:`.geometry`: box validation, random/explicit placement, global tiling and :func:`stitch`.
- :mod:`.chunks`: :class:`FieldLayout` (a field inside its array's chunks) and :func:`plan_batch` (unique
  chunks per array + per-sample slot tables).
- :mod:`.neighborhood`: the JIT/reference switch (:func:`kernels`) and :func:`gather_batch`.
- :mod:`.tokenizer`: per grid kind, the plan -> gather -> token metadata interface the reader talks to.
- :mod:`.points`, :mod:`.mesh`: point sampling (multi-stream fields, unstructured meshes); importing this
  package registers the ``"mesh"`` tokenizer (built with ``MeshTokenizer.from_store``).
- :mod:`.masking`: masks for masked-token training (torch, any device).

The gather contract is in ``fastload/DESIGN.md``.
"""

from __future__ import annotations

from . import mesh as _mesh  # noqa: F401  (registers the "mesh" tokenizer: MeshTokenizer.from_store)
from .chunks import NO_AXIS, BatchPlan, FieldLayout, field_layouts, plan_batch
from .geometry import (
    GridExtent,
    Tiling,
    box_to_tokens,
    check_boxes,
    random_boxes,
    stitch,
    tile_grid,
    tokens_to_box,
)
from .neighborhood import (
    OUT_KINDS,
    allocate_outputs,
    as_out_array,
    field_geometry,
    gather_batch,
    gather_field,
    kernels,
    month_table,
    use_jit,
)
from .tokenizer import (
    TOKENIZERS,
    BaseTokenizer,
    CurvilinearTokenizer,
    LatLonTokenizer,
    StructuredTokenizer,
    TokenMeta,
    build_tokenizer,
    register_tokenizer,
)

_LAZY = {"MaskedField", "MaskingConfig", "mask_batch", "mask_generator"}  # masking imports torch: on first use


def __getattr__(name: str):
    if name in _LAZY:
        from . import masking

        return getattr(masking, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "NO_AXIS",
    "BatchPlan",
    "FieldLayout",
    "field_layouts",
    "plan_batch",
    "GridExtent",
    "Tiling",
    "box_to_tokens",
    "check_boxes",
    "random_boxes",
    "stitch",
    "tile_grid",
    "tokens_to_box",
    "OUT_KINDS",
    "allocate_outputs",
    "as_out_array",
    "field_geometry",
    "gather_batch",
    "gather_field",
    "kernels",
    "month_table",
    "use_jit",
    "MaskedField",
    "MaskingConfig",
    "mask_batch",
    "mask_generator",
    "TOKENIZERS",
    "BaseTokenizer",
    "CurvilinearTokenizer",
    "LatLonTokenizer",
    "StructuredTokenizer",
    "TokenMeta",
    "build_tokenizer",
    "register_tokenizer",
]
