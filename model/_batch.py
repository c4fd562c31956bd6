"""The batch side of the models: checking a batch against the config, padding masks, and which tokens attend.

Why a module of its own: :class:`~model.multiformer.Multiformer` and :class:`~model.forecaster.Forecaster` read
batches the same way (the layout is documented in :mod:`model.multiformer`), and the rules for missing values and
padding live here once. Nothing here has parameters; everything runs on the batch's device without host syncs
unless marked ``# sync point:``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._config import ModelConfigError

if TYPE_CHECKING:
    from .multiformer import Encoder, MultiformerConfig

__all__ = [
    "META_KEYS",
    "model_inputs",
    "check_batch",
    "padding_masks",
    "attention_keys",
    "encode_fields",
    "static_mask",
    "flatten_item",
    "slice_item",
]

META_KEYS = ("time_of_day", "day_of_year", "lat", "lon")


MASK_DTYPES = (torch.bool, torch.uint8)  # mask / valid: bool, or uint8 read as bool (non-zero = True)
_LAYOUT = "{field: {'tokens': tensor, 'meta': {...}, ...}} (the layout of model.multiformer)"
_HINTS = {1: "; model.model_inputs(batch) makes it from a fastload Batch",
          2: "; a fastload RolloutBatch gives it with batch.model_inputs()"}


def _got(x: Any) -> str:
    """What ``x`` is, for an error message: a tensor's dtype and shape, else its type."""
    if isinstance(x, torch.Tensor):
        return f"a {str(x.dtype).removeprefix('torch.')} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def check_batch(config: MultiformerConfig, batch: Mapping[str, Any], lead: int = 1) -> None:
    """Raise :class:`ModelConfigError` naming the field and entry unless ``batch`` matches the config's layout,
    shapes and dtypes (host metadata only: no tensor values are read).

    ``lead`` is the number of leading batch axes (1 for the Multiformer, 2 for tiles ``(B, T)``); every field's
    are the same (the encoders couple the fields sample by sample, tile by tile). Dtypes: ``tokens``
    and ``target`` floating point (float16/bfloat16/float32/float64: NaN marks a missing value, and the embedding
    casts them to its own dtype; integer values cannot mark one and are not normalised data); ``mask`` and
    ``valid`` bool, or uint8 read as bool (non-zero = True); ``valid_values`` bool. A fastload ``Batch``, or its
    ``fields`` (tensors, not the per-field mappings), is named as such, with the function that converts it.
    """
    hint = _HINTS.get(lead, "")
    if not isinstance(batch, Mapping):
        if hasattr(batch, "fields") and hasattr(batch, "meta"):
            raise ModelConfigError(
                f"batch: expected a mapping {_LAYOUT}, got a loader batch ({type(batch).__name__}){hint}"
            )
        raise ModelConfigError(f"batch: expected a mapping {_LAYOUT}, got {_got(batch)}{hint}")
    first: tuple[str, tuple[int, ...]] | None = None  # the first field's name and tokens' shape
    for spec in config.fields:
        if spec.name not in batch:
            raise ModelConfigError(f"batch: no field {spec.name!r}; has {sorted(batch)}")
        item = batch[spec.name]
        if not isinstance(item, Mapping) or "tokens" not in item or not isinstance(item.get("meta"), Mapping):
            what = _got(item) if not isinstance(item, Mapping) else f"a mapping with keys {sorted(item)}"
            raise ModelConfigError(
                f"batch[{spec.name!r}]: expected a mapping with 'tokens' (a tensor) and 'meta' (a mapping of "
                f"per-token tensors), got {what}{hint}"
            )
        tokens = item["tokens"]
        if not isinstance(tokens, torch.Tensor) or not tokens.is_floating_point():
            raise ModelConfigError(
                f"batch[{spec.name!r}]['tokens']: expected a floating-point tensor (normalised values, NaN where "
                f"missing), got {_got(tokens)}"
            )
        if tuple(tokens.shape[lead:]) != spec.sample_shape or tokens.dim() != lead + 7:
            raise ModelConfigError(
                f"batch[{spec.name!r}]['tokens']: expected shape (batch..., {', '.join(map(str, spec.sample_shape))})"
                f" with {lead} batch axes, got {tuple(tokens.shape)}"
            )
        if first is None:
            first = (spec.name, tuple(tokens.shape))
        elif tuple(tokens.shape[:lead]) != first[1][:lead]:
            axes = "(B,)" if lead == 1 else "(B, T)"
            raise ModelConfigError(
                f"batch[{spec.name!r}]['tokens']: leading batch axes {axes} = {tuple(tokens.shape[:lead])} (shape "
                f"{tuple(tokens.shape)}) differ from batch[{first[0]!r}]['tokens']'s {first[1][:lead]} (shape "
                f"{first[1]}): every field must hold the same samples{' and tiles' if lead == 2 else ''}"
            )
        grid = tuple(tokens.shape[: lead + 4])
        for key in META_KEYS:
            if key not in item["meta"]:
                raise ModelConfigError(f"batch[{spec.name!r}]['meta']: missing {key!r}")
        entries = [(f"['meta'][{k!r}]", t) for k, t in item["meta"].items()]
        entries += [(f"[{k!r}]", item[k]) for k in ("mask", "valid") if item.get(k) is not None]
        for name, t in entries:
            if not isinstance(t, torch.Tensor):
                raise ModelConfigError(f"batch[{spec.name!r}]{name}: expected a tensor of shape {grid}, got {_got(t)}")
            if tuple(t.shape) != grid:
                raise ModelConfigError(
                    f"batch[{spec.name!r}]{name}: expected shape {grid}, got {tuple(t.shape)}"
                )
        for key, means in (("mask", "True = masked, to predict"), ("valid", "True = a real token, not padding")):
            t = item.get(key)
            if t is not None and t.dtype not in MASK_DTYPES:
                raise ModelConfigError(
                    f"batch[{spec.name!r}][{key!r}]: expected a bool tensor ({means}; uint8 is read as bool), got "
                    f"{str(t.dtype).removeprefix('torch.')} (convert it, e.g. {key}.bool() or {key} > 0.5)"
                )
        target = item.get("target")
        if target is not None and (not isinstance(target, torch.Tensor) or not target.is_floating_point()
                                   or tuple(target.shape) != tuple(tokens.shape)):
            raise ModelConfigError(
                f"batch[{spec.name!r}]['target']: expected a floating-point tensor of the tokens' shape "
                f"{tuple(tokens.shape)}, got {_got(target)}"
            )
        vv = item.get("valid_values")
        if vv is not None:
            ok = isinstance(vv, torch.Tensor)
            if ok:
                try:
                    torch.broadcast_shapes(tuple(vv.shape), tuple(tokens.shape))
                except RuntimeError:
                    ok = False
                else:
                    ok = vv.dim() == tokens.dim() and vv.dtype == torch.bool
            if not ok:
                raise ModelConfigError(
                    f"batch[{spec.name!r}]['valid_values']: expected a bool tensor broadcastable to the tokens' "
                    f"shape {tuple(tokens.shape)} with as many axes, got {_got(vv)}"
                )


def padding_masks(tokens: torch.Tensor, slot_valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``valid_values`` and ``valid`` of one field (see "Padding" in the module notes); no host synchronisation.

    Parameters
    ----------
    tokens : Tensor ``(B, L, nt, nlat, nlon, tt, tlat, tlon)``
        The field's values (targets: NaN marks missing data, e.g. land in an ocean field).
    slot_valid : Tensor ``(B, nlat, nlon, K)`` bool, optional
        Whether each of a token's ``K = tlat * tlon`` point slots holds a point (a data loader's padding mask, the
        same for every level and time step); None: every slot does.

    Returns
    -------
    dict
        ``valid_values``: ``(B, L, nt, nlat, nlon, tt, tlat, tlon)`` bool, slot valid and value finite;
        ``valid``: ``(B, L, nt, nlat, nlon)`` bool, the token has a valid value. A sample none of whose tokens has
        one keeps all its tokens as keys (attention needs at least one); its values still weigh nothing.
    """
    if tokens.dim() != 8:
        raise ModelConfigError(f"padding_masks: expected tokens (B, L, nt, nlat, nlon, tt, tlat, tlon), got "
                               f"{tuple(tokens.shape)}")
    b, _, _, nlat, nlon, _, tlat, tlon = tokens.shape
    values = torch.isfinite(tokens)
    if slot_valid is not None:
        if tuple(slot_valid.shape) != (b, nlat, nlon, tlat * tlon):
            raise ModelConfigError(f"padding_masks: expected slot_valid (B, nlat, nlon, K) = "
                                   f"{(b, nlat, nlon, tlat * tlon)}, got {tuple(slot_valid.shape)}")
        slots = slot_valid.to(device=tokens.device, dtype=torch.bool).reshape(b, 1, 1, nlat, nlon, 1, tlat, tlon)
        values = values & slots
    valid = values.flatten(5).any(-1)  # (B, L, nt, nlat, nlon)
    empty = ~valid.flatten(1).any(-1)  # (B,): samples without a single valid token
    valid = valid | empty[:, None, None, None, None]
    return {"valid_values": values, "valid": valid}


def attention_keys(item: Mapping[str, Any]) -> torch.Tensor:
    """Which tokens of one field take part in attention as keys: ``(B, S)`` bool, ``S = L * nt * nlat * nlon``.

    Only what the model also has at inference decides: the ``tokens`` it is given, its ``mask`` and a caller's
    ``valid``; never ``target``, so predictions do not depend on the targets (training with a target and inference
    without one attend to the same keys). A token is a key when ``valid`` allows it (default: every token) and it
    is masked or has data: a value of its ``tokens`` that is finite and, where given, True in ``valid_values``. So a
    token all of whose values are missing (an all-land token of an ocean field, a mesh token without a point) is
    not attended to. A masked token is a key whatever its input holds: the loader replaced that input (zeroed or
    noised, land included, so at inference it is finite data) and ``mask_input="learned"`` replaces it again, so
    its values say nothing; to leave a masked token out, ``valid`` marks it (as :func:`padding_masks` marks a mesh
    token without a point). A sample left with no key in this field keeps every token of the field as a key (as
    :func:`padding_masks` does; a softmax needs at least one key): no query row is ever left without a key. No host
    synchronisation.
    """
    tokens = item["tokens"]
    present = torch.isfinite(tokens)  # (B, L, nt, nlat, nlon, tt, tlat, tlon)
    vv = item.get("valid_values")
    if vv is not None:
        present = present & vv
    keys = present.flatten(5).any(-1)  # (B, L, nt, nlat, nlon): the token has a value
    mask = item.get("mask")
    if mask is not None:
        keys = keys | mask.bool()
    keys = keys.flatten(1)  # (B, S) (flatten, not reshape(b, -1): that cannot infer S when B = 0)
    v = item.get("valid")
    if v is not None:
        keys = keys & v.flatten(1).bool()  # uint8 allowed (check_batch); a bool tensor is not copied
    return keys | ~keys.any(-1, keepdim=True)


def encode_fields(
    embed: nn.ModuleDict, encoder: Encoder, batch: Mapping[str, Any]
) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor | None]]:
    """Embed every field and run the encoder: (per-layer outputs ``{field: (B, S, d)}``, ``{field: keys (B, S)}``).

    ``keys`` are :func:`attention_keys`, or None for a field that gives no ``valid`` and none of whose tokens is
    left out: its attention then runs without a mask (the flash kernel on a GPU), exactly as it did before tokens
    without data were left out, so a batch without missing tokens gives bit-identical results.

    A real token (``valid`` True, or any token of a field without ``valid``) whose ``lat`` or ``lon`` is not finite
    raises :class:`ModelConfigError` naming the field, how many and the first (:func:`raise_unplaced_tokens`): a
    real token without a place would be embedded at "no position" (``sphere_features(non_finite="zero")``), a place
    no trained token has, and every token attending to it would read it there; such a coordinate is a caller's bug
    (fastload's stores refuse non-finite coordinates), and padding, the one reason for a token to have no place, is
    what ``valid`` False says. The check rides on the host read below, as the level check does: it is skipped where
    there is none (every field gives ``valid`` and the batch is on an accelerator) and under ``torch.compile``;
    there such a token is embedded at "no position", finite. A padding token's non-finite coordinates never reach
    another token's output or a gradient (they are replaced before the embedding's sin/cos).
    """
    xs, keys, levels = {}, {}, {}
    for f, emb in embed.items():
        item = batch[f]
        xs[f] = emb(item["tokens"], item["meta"], item.get("mask"), item.get("valid_values"))
        keys[f] = attention_keys(item)
        if item["meta"].get("level") is not None:
            levels[f] = item["meta"]["level"]
    derived = [f for f in keys if batch[f].get("valid") is None]
    # the level check rides on a host read that happens anyway (or costs none: levels on the CPU); a batch on an
    # accelerator whose every field gives valid (meshes, padded points) makes no read, so its levels go unchecked
    checked = {f: v for f, v in levels.items() if derived or v.device.type == "cpu"}
    if torch.compiler.is_compiling():
        checked = {}
    strays = {f: stray_levels(v, embed[f].spec.levels) for f, v in checked.items()}
    # the same for coordinates: a real token (valid True, or no valid given) whose lat or lon is not finite
    placed = {} if torch.compiler.is_compiling() else {
        f: unplaced_tokens(batch[f]).any() for f in keys if derived or batch[f]["meta"]["lat"].device.type == "cpu"
    }
    if derived or strays or placed:
        # sync point: one host read per call, for the fields without a given valid (is any of their tokens left
        # out?), for the fields with levels (is every level value in the field's table?) and for every field's
        # coordinates (does a real token lack a place?). The GPU has the embeddings queued meanwhile and only runs
        # dry for the launch of the first encoder kernels.
        flags = [keys[f].all() for f in derived] + list(strays.values()) + list(placed.values())
        dev = flags[0].device
        read = torch.stack([x.to(dev) for x in flags]).tolist()
        for f, bad in zip(placed, read[len(derived) + len(strays):]):
            if bad:
                raise_unplaced_tokens(f, batch[f])
        for f, bad in zip(strays, read[len(derived):]):
            if bad:
                raise_stray_levels(f, levels[f], embed[f].spec.levels)
        for f, all_keys in zip(derived, read):
            if all_keys:
                keys[f] = None
    return encoder(xs, keys), keys


def unplaced_tokens(item: Mapping[str, Any]) -> torch.Tensor:
    """``(B, L, nt, nlat, nlon)`` bool: the real tokens of one field (``valid`` True, or every token without one)
    whose ``lat`` or ``lon`` is not finite. No host synchronisation."""
    meta = item["meta"]
    bad = ~(torch.isfinite(meta["lat"]) & torch.isfinite(meta["lon"]))
    valid = item.get("valid")
    return bad if valid is None else bad & valid.bool()


def raise_unplaced_tokens(field: str, item: Mapping[str, Any]) -> None:
    """The error of :func:`unplaced_tokens` (a second host read, only on this path): how many, the first one."""
    bad = unplaced_tokens(item)
    first = tuple(bad.nonzero()[0].tolist())
    lat, lon = (float(item["meta"][k][first]) for k in ("lat", "lon"))
    raise ModelConfigError(
        f"batch[{field!r}]['meta']['lat'/'lon']: {int(bad.sum())} real token(s) without a finite place (first: "
        f"token {first} (sample, level, time, lat, lon; a Forecaster's samples are its tiles, b * T + t), lat "
        f"{lat}, lon {lon}); expected finite degrees for every token that 'valid' marks real (every token without "
        f"'valid'). A padding token may have NaN coordinates: mark it valid False"
    )


def stray_levels(level: torch.Tensor, table: Sequence[float]) -> torch.Tensor:
    """``()`` bool: some value of a field's per-token ``level`` metadata (NaN aside: a field without levels) is
    none of its table's (:attr:`FieldSpec.levels`, relative tolerance 1e-5; compared in float32 whatever dtype the
    model was cast to). The level embedding is looked up by the nearest table entry, so such a value would silently
    share another level's embedding."""
    lev = level.to(torch.float32).reshape(-1, 1)
    tab = torch.tensor(table, dtype=torch.float32).to(lev.device, non_blocking=True)
    near = (lev - tab).abs() <= 1e-5 * torch.maximum(lev.abs(), tab.abs()).clamp_min(1.0)
    return ~(near.any(-1) | torch.isnan(lev[:, 0])).all()


def raise_stray_levels(field: str, level: torch.Tensor, table: Sequence[float]) -> None:
    """The error of :func:`stray_levels` (a second host read, only on this path): the values and the table."""
    values = sorted({float(v) for v in level.to(torch.float32).unique().tolist() if v == v})
    raise ModelConfigError(
        f"batch[{field!r}]['meta']['level']: level values {values} are not all in the field's table "
        f"FieldSpec.levels = {[float(v) for v in table]} (each level's embedding is looked up by its value: "
        f"give the FieldSpec the levels the data has, e.g. the sampling config's)"
    )


def static_mask(field: str, mask: Any, like: torch.Tensor) -> torch.Tensor:
    """A caller's static missing-value mask of one field (:meth:`model.Forecaster.missing_points`), checked against
    ``like`` (B, T, L, 1, nlat, nlon, 1, tlat, tlon) and moved to its device."""
    shape = like.shape
    ok = isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.dim() == len(shape)
    if ok and (mask.shape[3] != 1 or mask.shape[6] != 1):
        ok = False
    if ok:
        try:
            torch.broadcast_shapes(tuple(mask.shape), tuple(shape))
        except RuntimeError:
            ok = False
    if not ok:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ModelConfigError(
            f"missing_points: static[{field!r}]: expected a bool tensor broadcastable to {tuple(shape)} "
            f"(B, T, L, 1, nlat, nlon, 1, tlat, tlon: no time axes), got {got}"
        )
    return mask.to(like.device)


def flatten_item(item: Mapping[str, Any], n: int) -> dict[str, Any]:
    """One field of a tiled batch with leading axes (B, T) as a batch of ``n = B * T`` neighborhoods.

    An entry given in a form that broadcasts to its full shape is broadcast first (a view; reshape copies it where
    it must): ``valid_values`` and ``target`` to the tokens' shape, ``mask``, ``valid`` and the metadata to the
    tokens' grid ``(B, T, L, nt, nlat, nlon)``.
    """
    tokens = item["tokens"]
    grid = tuple(tokens.shape[:6])
    full = {"valid_values": tuple(tokens.shape), "target": tuple(tokens.shape), "mask": grid, "valid": grid}
    out: dict[str, Any] = {}
    for k, v in item.items():
        if k == "meta":
            out[k] = {m: torch.broadcast_to(x, grid).reshape(n, *grid[2:]) for m, x in v.items()}
        elif isinstance(v, torch.Tensor):
            v = torch.broadcast_to(v, full.get(k, tuple(v.shape)))
            out[k] = v.reshape(n, *v.shape[2:])
    return out


def slice_item(item: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Samples ``start:stop`` of one field's entries (meta included)."""
    return {
        k: ({m: x[start:stop] for m, x in v.items()} if k == "meta" else v[start:stop])
        for k, v in item.items()
    }


def model_inputs(batch: Any, device: Any = None, *, levelled: Iterable[str] | None = None) -> dict[str, Any]:
    """A fastload loader batch as the Multiformer's input: ``net(model_inputs(batch))``.

    ``model`` does not import fastload, so ``batch`` is read by its attributes, those of a ``fastload.Batch``:
    ``fields`` ``{field: (B, L, nt, nlat, nlon, tt, tlat, tlon)}`` (the targets), ``meta`` (per field ``hour``,
    ``day_of_year`` ``(B, nt)``, ``lat``, ``lon`` ``(B, nlat, nlon)``, ``level`` ``(L,)`` and, for point-sampled
    fields or a store that repeats places, ``valid`` ``(B, nlat, nlon, K)`` bool), and ``masks`` and ``sources``
    (None unless the loader masks: ``Loader(..., masking=...)``).

    Each field's ``tokens`` are the loader's masked ``sources`` and its ``mask`` the loader's ``masks`` when it
    masks, else the ``fields`` themselves (nothing masked: a loss scores every token); ``target`` is always
    ``fields``. The per-token metadata are broadcast to ``(B, L, nt, nlat, nlon)`` as views (no copies). A field
    with a ``valid`` slot mask gets ``valid_values`` and ``valid`` from :func:`padding_masks` of its ``tokens``
    (never of the target, so that training and inference attend alike). The result goes to
    :class:`~model.Multiformer` and :func:`~model.losses.multiformer_loss` as is::

        inputs = model.model_inputs(batch)
        loss, per_field = model.multiformer_loss(net(inputs), inputs)

    Parameters
    ----------
    batch : fastload.Batch
        One batch of a ``fastload.Loader`` (not a ``RolloutBatch``: its ``batch.model_inputs()`` gives the
        Forecaster's layout).
    device : torch.device or str, optional
        Where the inputs go: a tensor elsewhere is copied there (non-blocking to an accelerator; a copy to the CPU
        blocks, so its values are there when it returns). None: where they are (a Loader's device).
    levelled : iterable of str, optional
        The fields that get ``meta["level"]`` (the level embedding is then looked up by value and must be in the
        field's ``FieldSpec.levels``). None: every field whose ``meta`` has ``level``; a field without levels has
        NaN there, which the model reads as "not given".

    Returns
    -------
    dict
        ``{field: {"tokens", "target", "meta", ["mask"], ["valid_values", "valid"]}}``, the layout documented in
        :mod:`model.multiformer`.
    """
    fields, meta = getattr(batch, "fields", None), getattr(batch, "meta", None)
    if not isinstance(fields, Mapping) or not isinstance(meta, Mapping):
        raise ModelConfigError(
            f"model_inputs: expected a fastload Batch (with .fields and .meta mappings), got {_got(batch)}"
        )
    masks, sources = getattr(batch, "masks", None), getattr(batch, "sources", None)
    names = list(fields) if levelled is None else list(levelled)
    unknown = sorted(set(names) - set(fields))
    if unknown:
        raise ModelConfigError(f"model_inputs: levelled names field(s) {unknown} the batch does not have; it has "
                               f"{sorted(fields)}")
    dev = None if device is None else torch.device(device)

    def to(t: Any) -> Any:
        if dev is None or not isinstance(t, torch.Tensor) or t.device == dev:
            return t
        return t.to(dev, non_blocking=dev.type != "cpu")  # to the CPU: blocking, else its values may not be there

    out: dict[str, Any] = {}
    for name, target in fields.items():
        where = f"model_inputs: batch.fields[{name!r}]"
        if not isinstance(target, torch.Tensor) or target.dim() != 8:
            raise ModelConfigError(
                f"{where}: expected a tensor (B, L, nt, nlat, nlon, tt, tlat, tlon), got {_got(target)} (a fastload "
                f"RolloutBatch has its own batch.model_inputs(), in the Forecaster's layout)"
            )
        m = meta.get(name)
        want = ("hour", "day_of_year", "lat", "lon") + (("level",) if name in names and levelled is not None else ())
        lacking = [k for k in want if not isinstance(m, Mapping) or k not in m]
        if lacking:
            raise ModelConfigError(f"model_inputs: batch.meta[{name!r}]: missing {lacking}")
        target = to(target)  # (B, L, nt, nlat, nlon, tt, tlat, tlon)
        grid = tuple(target.shape[:5])
        hour, doy = to(m["hour"]), to(m["day_of_year"])  # (B, nt)
        lat, lon = to(m["lat"]), to(m["lon"])  # (B, nlat, nlon)
        item_meta = {"time_of_day": hour[:, None, :, None, None].expand(grid),
                     "day_of_year": doy[:, None, :, None, None].expand(grid),
                     "lat": lat[:, None, None].expand(grid), "lon": lon[:, None, None].expand(grid)}
        if name in names and "level" in m:
            item_meta["level"] = to(m["level"])[None, :, None, None, None].expand(grid)  # (L,) -> grid
        item: dict[str, Any] = {"tokens": target, "target": target, "meta": item_meta}
        if masks is not None:
            if sources is None or name not in masks or name not in sources:
                raise ModelConfigError(f"model_inputs: batch.masks and batch.sources: expected both, with field "
                                       f"{name!r}")
            item["tokens"] = to(sources[name])
            item["mask"] = to(masks[name])  # (B, L, nt, nlat, nlon) bool
        if m.get("valid") is not None:  # point slots (B, nlat, nlon, K): False = padding; from the inputs
            item.update(padding_masks(item["tokens"], to(m["valid"])))
        out[name] = item
    return out
