"""The Forecaster: a trained Multiformer's encoder, an adapter to a small latent, and a global latent rollout.

Why: AtmoRep's encoder sees one neighborhood; a global forecast needs every neighborhood at once and many steps.
The Forecaster encodes each tile of a global, overlapping tiling with the (frozen) Multiformer encoder, squeezes
each tile to ``latent_queries`` vectors of width ``latent_dim`` (the *adapter*), advances the latents of all tiles
together with a transformer conditioned on the lead time (the *tail*, adaLN-Zero, so it starts as the identity:
persistence), and decodes tokens from a tile's latent and its neighbours' (the *read-out*), so information crosses
tile edges. Overlapping tiles are blended by a ``stitch`` callable (e.g. :class:`model.stitch.TileBlender`).

Inputs (plain tensors; ``T`` tiles, ``K`` neighbours per tile)::

    batch      as for the Multiformer, with two leading axes (B, T): one neighborhood per tile
    geometry   TileGeometry(lat (T,), lon (T,) tile centres in degrees, neighbors (T, K) long tile indices)
    lead_time  hours per step: a float or (B,) tensor
    state      (B, W, T, Q, C): the last ``input_window`` latents, oldest first

Decoded tiles per field are ``(B, E, T, L, nt_out, nlat, nlon, tt, tlat, tlon)`` with ``nt_out =
readout_time_tokens``. Rollout of N steps is exactly N calls of :meth:`Forecaster.step`.

Missing values (NaN where a store declares a value missing, e.g. an ocean field's land; ``valid_values`` False)
are handled as by the Multiformer: the shared embedding reads them as 0 and marks them with its missing-value
indicator, so every latent is finite and a step never hands a NaN on to the next. :meth:`Forecaster.rollout_loss`
gives missing targets no weight. Tokens with no value are left out of the encoder's and the adapter's attention
(:func:`model._batch.attention_keys`). The read-out predicts every point; :meth:`Forecaster.missing_points` of the
input windows says which points are missing (missing at every input time, and marked by the caller's ``static``
mask where given: with one input time, only ``static`` tells land from a transient gap), and
:meth:`~Forecaster.decode` / :meth:`~Forecaster.rollout` given it return NaN there (before stitching, so a
stitched global field is NaN there too); :meth:`Forecaster.forward` does so by itself. Without ``missing`` a
rollout returns finite predictions at missing points, which no loss has trained.

The adapter, tail and read-out (:class:`Adapter`, :class:`LatentTail`, :class:`ReadOut`) are in
:mod:`model._forecaster_blocks`, re-exported here; this module holds the config, the model and its calls.

Smoke test: see ``tests/model/test_forecaster.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ._batch import check_batch, encode_fields, flatten_item, slice_item, static_mask
from ._config import ConfigBase, ModelConfigError, check_fraction, positive_int
from ._forecaster_blocks import Adapter, LatentTail, ReadOut, _CrossBlock, _TailBlock  # noqa: F401
from ._geometry import RolloutCheck, TileGeometry, lead_hours
from .losses import token_loss
from .multiformer import Multiformer
from .stitch import edge_taper

__all__ = ["ForecasterConfig", "Forecaster", "TileGeometry", "Rollout"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ForecasterConfig(ConfigBase):
    """Sizes of the adapter, latent tail and read-out, and the rollout hyperparameters."""

    latent_dim: int = 256
    """Width C of the latent of one tile (smaller than the encoder's width)."""
    latent_queries: int = 16
    """Learned queries Q per tile: the latent of a tile is (Q, C)."""
    num_heads: int = 8
    """Heads of every attention in the adapter, tail and read-out (head width ``latent_dim // num_heads``)."""
    adapter_layers: int = 2
    """Cross-attention blocks from the queries to the tile's encoder tokens of all fields."""
    tail_layers: int = 6
    """Transformer blocks over the global latent (adaLN-conditioned on the lead time)."""
    readout_layers: int = 2
    """Cross-attention blocks from target-token queries to the latents of the tile and its neighbours."""
    mlp_ratio: float = 4.0
    """MLP hidden width over ``latent_dim``."""
    ensemble_size: int = 8
    """Members of the read-out ensemble tail."""
    input_window: int = 1
    """Latent states (consecutive times) the tail sees to make the next one."""
    readout_time_tokens: int = 1
    """Time tokens decoded per tile (<= every field's ``num_tokens[0]``)."""
    overlap: tuple[int, int] = (0, 0)
    """Grid points (lat, lon) a tile shares with each neighbour: the width of the edge taper of the blend weights."""
    freeze_encoder: bool = True
    """Keep the Multiformer's embedding and encoder fixed (no gradients, run without autograd)."""
    qk_norm: bool = True
    """RMS-normalise queries and keys per head."""
    pos_frequencies: int = 4
    """Octaves of the tile-position features."""

    def __post_init__(self) -> None:
        for name in (
            "latent_dim",
            "latent_queries",
            "num_heads",
            "adapter_layers",
            "readout_layers",
            "ensemble_size",
            "input_window",
            "readout_time_tokens",
        ):
            positive_int(name, getattr(self, name))
        positive_int("tail_layers", self.tail_layers, minimum=0)
        positive_int("pos_frequencies", self.pos_frequencies, minimum=0)
        if self.latent_dim % self.num_heads or (self.latent_dim // self.num_heads) % 2:
            raise ModelConfigError(
                f"latent_dim: {self.latent_dim} must be divisible by num_heads {self.num_heads} into an even head width"
            )
        check_fraction("mlp_ratio", self.mlp_ratio, low=1e-3)
        ov = self.overlap
        if isinstance(ov, (str, bytes)) or not isinstance(ov, Sequence) or len(ov) != 2:
            raise ModelConfigError(f"overlap: expected two integers (lat, lon), got {ov!r}")
        object.__setattr__(self, "overlap", tuple(positive_int("overlap", v, minimum=0) for v in ov))
        for name in ("freeze_encoder", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ModelConfigError(f"{name}: expected true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ForecasterConfig:
        cls.check_keys(d, "forecaster")
        d = dict(d)
        if "overlap" in d:
            d["overlap"] = tuple(d["overlap"])
        return cls(**d)

    @classmethod
    def tiny(cls, **overrides: Any) -> ForecasterConfig:
        """CPU-test sizes."""
        base = dict(
            latent_dim=32,
            latent_queries=4,
            num_heads=2,
            adapter_layers=1,
            tail_layers=2,
            readout_layers=1,
            ensemble_size=4,
        )
        return cls(**{**base, **overrides})


class Rollout(NamedTuple):
    """Result of :meth:`Forecaster.rollout`: the final state and ``{step: {field: decoded or stitched}}``."""

    state: torch.Tensor
    outputs: dict[int, dict[str, torch.Tensor]]


def _target_item(targets: Sequence[Mapping[str, Any]], k: int, field: str, ens: torch.Tensor) -> Mapping[str, Any]:
    """``targets[k][field]``, checked against the decoded tiles ``ens`` (B, E, T, L, nt_out, nlat, nlon, tt, tlat,
    tlon): :class:`ModelConfigError` naming the step, field and entry unless every shape is as documented (a target
    of another layout with as many values, nlat and nlon swapped say, would otherwise be scored silently)."""
    where = f"rollout_loss: targets[{k}][{field!r}]"
    if not isinstance(targets[k], Mapping) or field not in targets[k]:
        have = sorted(targets[k]) if isinstance(targets[k], Mapping) else type(targets[k]).__name__
        raise ModelConfigError(f"rollout_loss: targets[{k}] (step {k + 1}) has no field {field!r}; it has {have} "
                               "(every field of the model is decoded and scored at every step)")
    item = targets[k][field]
    want = (ens.shape[0], *ens.shape[2:])  # (B, T, L, nt_out, nlat, nlon, tt, tlat, tlon)
    tokens = item.get("tokens") if isinstance(item, Mapping) else None
    if not isinstance(tokens, torch.Tensor) or tuple(tokens.shape) != want:
        got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ModelConfigError(f"{where}['tokens']: expected shape (B, T, L, nt_out, nlat, nlon, tt, tlat, tlon) = "
                               f"{want} (step {k + 1}'s decoded tiles), got {got}")
    for key in ("valid", "lat"):
        v = item.get(key)
        if v is not None and (not isinstance(v, torch.Tensor) or tuple(v.shape) != want[:6]):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ModelConfigError(f"{where}[{key!r}]: expected shape (B, T, L, nt_out, nlat, nlon) = {want[:6]}, "
                                   f"got {got}")
    vv = item.get("valid_values")
    if vv is not None:
        try:
            torch.broadcast_shapes(tuple(vv.shape), want)
        except (RuntimeError, AttributeError):
            got = tuple(vv.shape) if isinstance(vv, torch.Tensor) else type(vv).__name__
            raise ModelConfigError(f"{where}['valid_values']: expected a bool tensor broadcastable to the tokens' "
                                   f"shape {want}, got {got}") from None
    return item


class Forecaster(nn.Module):
    """Encoder (from a Multiformer) -> adapter -> global latent tail -> read-out, for latent rollouts.

    Parameters
    ----------
    config : ForecasterConfig
        Latent and rollout settings.
    multiformer : Multiformer
        A (trained) Multiformer; its ``embed`` and ``encoder`` are shared, not copied, and frozen when
        ``config.freeze_encoder``. Its decoder and tails are not used.
    """

    def __init__(self, config: ForecasterConfig, multiformer: Multiformer) -> None:
        super().__init__()
        mcfg = multiformer.config
        for f in mcfg.fields:
            if config.readout_time_tokens > f.num_tokens[0]:
                raise ModelConfigError(
                    f"readout_time_tokens: {config.readout_time_tokens} > fields.{f.name}.num_tokens[0] "
                    f"{f.num_tokens[0]}"
                )
        self.config = config
        self.multiformer_config = mcfg
        self.embed = multiformer.embed
        self.encoder = multiformer.encoder
        if config.freeze_encoder:
            for p in [*self.embed.parameters(), *self.encoder.parameters()]:
                p.requires_grad_(False)
        self.adapter = Adapter(mcfg, config)
        self.tail = LatentTail(config)
        self.readout = ReadOut(mcfg, config)
        self._check = RolloutCheck()  # state, geometry and lead time, once per call (model._geometry)

    def encode(self, batch: Mapping[str, Any], tiles_per_chunk: int | None = None) -> torch.Tensor:
        """Latent of every tile: ``batch`` with leading axes (B, T) -> (B, T, Q, C).

        ``tiles_per_chunk`` (an integer >= 1) bounds how many neighborhoods go through the encoder at once
        (memory). A batch of 0 samples (or 0 tiles) gives a latent of 0 samples (or tiles).
        """
        if tiles_per_chunk is not None:
            positive_int("encode: tiles_per_chunk", tiles_per_chunk)
        check_batch(self.multiformer_config, batch, lead=2)
        first = batch[self.multiformer_config.fields[0].name]["tokens"]
        b, t = first.shape[:2]
        n = b * t
        flat = {f: flatten_item(item, n) for f, item in batch.items() if f in self.embed}
        chunk = max(n, 1) if tiles_per_chunk is None else tiles_per_chunk
        latents = []
        for start in range(0, max(n, 1), chunk):  # once for 0 neighborhoods: an empty latent of the right shape
            part = {f: slice_item(item, start, start + chunk) for f, item in flat.items()}
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
                hiddens, valid = encode_fields(self.embed, self.encoder, part)
            latents.append(self.adapter(hiddens[-1], valid))
        lat = torch.cat(latents)
        return lat.reshape(b, t, *lat.shape[1:])

    def initial_state(self, latents: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack ``input_window`` latents (oldest first; each (B, T, Q, C)) into a state (B, W, T, Q, C)."""
        state = latents if isinstance(latents, torch.Tensor) else torch.stack(list(latents), dim=1)
        if state.dim() == 4:
            state = state.unsqueeze(1)
        if state.shape[1] != self.config.input_window:
            raise ModelConfigError(
                f"initial_state: got {state.shape[1]} latent(s), input_window is {self.config.input_window}"
            )
        return state

    def step(
        self, state: torch.Tensor, lead_time: float | torch.Tensor, geometry: TileGeometry
    ) -> torch.Tensor:
        """One step ahead: state (B, W, T, Q, C) -> the next state (window shifted by one)."""
        self._check("step", self.config, state, geometry, lead_time)
        return self._step(state, lead_time, geometry)

    def _step(self, state: torch.Tensor, lead_time: float | torch.Tensor, geometry: TileGeometry) -> torch.Tensor:
        new = self.tail(state, lead_hours(lead_time, state), geometry)
        return torch.cat([state[:, 1:], new.unsqueeze(1)], dim=1)

    def missing_points(
        self,
        windows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        static: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Where the decoded tiles have no value: points with no value at any time of the input ``windows`` (and,
        where ``static`` names the field, marked permanently missing there).

        Nothing in the inputs tells a permanent gap (land, a padding slot) from a transient one (a dropped
        observation, a hole in one file): both are NaN or ``valid_values`` False. Without ``static`` a point counts
        as missing when it has no value at every input time, so a gap is forecast only if some input time has a
        value there. Where the windows hold a single time (``input_window`` 1 and ``nt * tt == 1``), every gap is
        taken for land: its decoded values are NaN although the truth has values there. A caller that knows the
        permanent mask (a land-sea mask, the store's missing values at a reference time, a mesh's padding) passes
        it as ``static``; then a point is missing only where it has no value at any input time *and* ``static``
        marks it, and a transient gap, even at the only input time, is forecast. A point ``static`` marks that does
        have a value at some input time is forecast too: the data wins.

        Parameters
        ----------
        windows : mapping or sequence of mappings
            An input batch (leading axes (B, T), as for :meth:`encode`) or the ``input_window`` batches of a state.
            A value is missing where it is not finite or its ``valid_values`` is False.
        static : mapping, optional
            ``{field: bool tensor}``, True = permanently missing, broadcastable to the tiles' values without time,
            ``(B, T, L, 1, nlat, nlon, 1, tlat, tlon)`` (9 axes, the time axes of size 1; ``B`` may be 1: one
            mask for every sample). Fields it does not name use the rule above alone.

        Returns
        -------
        dict
            ``{field: (B, 1, T, L, 1, nlat, nlon, 1, tlat, tlon) bool}``, True = missing: it broadcasts over the
            members and time axes of decoded tiles (pass it to :meth:`decode` or :meth:`rollout`).
        """
        batches = [windows] if isinstance(windows, Mapping) else list(windows)
        static = {} if static is None else static
        names = self.multiformer_config.field_names
        unknown = sorted(set(static) - set(names))
        if unknown:
            raise ModelConfigError(f"missing_points: static names unknown field(s) {unknown}; fields are {list(names)}")
        out: dict[str, torch.Tensor] = {}
        for spec in self.multiformer_config.fields:
            missing = None
            for batch in batches:
                item = batch[spec.name]
                present = torch.isfinite(item["tokens"])  # (B, T, L, nt, nlat, nlon, tt, tlat, tlon)
                if item.get("valid_values") is not None:
                    present = present & item["valid_values"]
                never = ~present.any(6, keepdim=True).any(3, keepdim=True)  # (B, T, L, 1, nlat, nlon, 1, tlat, tlon)
                missing = never if missing is None else missing & never
            if missing is None:
                raise ModelConfigError("missing_points: no input window given")
            if spec.name in static:
                missing = missing & static_mask(spec.name, static[spec.name], missing)
            out[spec.name] = missing.unsqueeze(1)  # (B, 1, T, L, 1, nlat, nlon, 1, tlat, tlon)
        return out

    def decode(
        self, state: torch.Tensor, geometry: TileGeometry, missing: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Decode the newest latent of ``state``: ``{field: (B, E, T, L, nt_out, nlat, nlon, tt, tlat, tlon)}``,
        NaN where ``missing`` (:meth:`missing_points`) is True."""
        self._check("decode", self.config, state, geometry)
        return self._decode(state, geometry, missing)

    def _decode(self, state: torch.Tensor, geometry: TileGeometry, missing: Any = None) -> dict[str, torch.Tensor]:
        out = self.readout(state[:, -1], geometry)
        if missing is not None:
            # in place unless autograd records the decode (the decoded tiles are the rollout's largest tensor)
            fill = torch.Tensor.masked_fill if torch.is_grad_enabled() else torch.Tensor.masked_fill_
            out = {f: fill(x, missing[f], math.nan) if f in missing else x for f, x in out.items()}
        return out

    def forward(
        self,
        batch: Mapping[str, Any],
        lead_time: float | torch.Tensor,
        geometry: TileGeometry,
        static: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode one time (``input_window`` must be 1), advance one step, decode (NaN where ``batch`` has no value
        at any time and ``static``, where it names the field, marks the point: :meth:`missing_points`)."""
        state = self.initial_state(self.encode(batch))
        return self.decode(self.step(state, lead_time, geometry), geometry, self.missing_points(batch, static))

    def rollout(
        self,
        state: torch.Tensor,
        steps: int,
        *,
        lead_time: float | torch.Tensor,
        geometry: TileGeometry,
        decode_at: Iterable[int] | None = None,
        stitch: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
        missing: Mapping[str, torch.Tensor] | None = None,
    ) -> Rollout:
        """Auto-regressive rollout in latent space.

        Parameters
        ----------
        state : Tensor
            (B, W, T, Q, C), from :meth:`initial_state`.
        steps : int
            Number of steps; step k is exactly ``k`` calls of :meth:`step`.
        lead_time, geometry
            As for :meth:`step`.
        decode_at : iterable of int, optional
            Steps (1..steps) to decode; default only the last.
        stitch : callable, optional
            ``stitch(field, tiles)`` applied to each decoded ``(B, E, T, ...)`` tensor (e.g. a
            :class:`~model.stitch.TileBlender` per field) to blend overlapping tiles into global fields.
        missing : mapping, optional
            :meth:`missing_points` of the input windows: decoded values there are NaN (before ``stitch``; a
            :class:`~model.stitch.TileBlender` keeps them NaN). Without it, missing points get predictions that no
            loss has trained. The state is latent and always finite: nothing missing is carried into the next step.
        """
        positive_int("rollout steps", steps)
        want = {steps} if decode_at is None else set(decode_at)
        if not want <= set(range(1, steps + 1)):
            raise ModelConfigError(f"decode_at: steps must lie in 1..{steps}, got {sorted(want)}")
        self._check("rollout", self.config, state, geometry, lead_time)  # once, not per step
        outputs = {}
        for k in range(1, steps + 1):
            state = self._step(state, lead_time, geometry)
            if k in want:
                dec = self._decode(state, geometry, missing)
                outputs[k] = dec if stitch is None else {f: stitch(f, x) for f, x in dec.items()}
        return Rollout(state, outputs)

    def rollout_loss(
        self,
        state: torch.Tensor,
        targets: Sequence[Mapping[str, Mapping[str, torch.Tensor]]],
        *,
        lead_time: float | torch.Tensor,
        geometry: TileGeometry,
        kinds: Mapping[str, float] | None = None,
        step_weights: Sequence[float] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Multi-step training loss: roll out ``len(targets)`` steps and score every step's decoded tiles.

        ``targets[k][field]`` holds ``tokens`` (B, T, L, nt_out, nlat, nlon, tt, tlat, tlon) at step k + 1 and
        optionally ``valid`` (bool, or uint8 read as bool: non-zero = True) and ``lat`` (B, T, L, nt_out, nlat,
        nlon) and ``valid_values`` (bool, broadcastable to ``tokens``). Missing targets (NaN, or ``valid_values``
        False) weigh nothing, as in :mod:`model.losses`; a field weighs its ``FieldSpec.loss_weight``. Every field
        of the model needs a target at every step, of exactly these shapes (else :class:`ModelConfigError` naming
        the step, field and entry). ``step_weights`` are finite, >= 0 and not all 0. A batch of 0 samples scores
        0 (connected to the graph, as when nothing counts). Returns the weighted mean over steps and the per-step
        losses.
        """
        kinds = {"mse": 1.0} if kinds is None else kinds
        weights = [1.0] * len(targets) if step_weights is None else list(step_weights)
        if len(weights) != len(targets) or not targets:
            raise ModelConfigError(f"rollout_loss: {len(targets)} targets but {len(weights)} step weights")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                   for w in weights) or sum(weights) <= 0:
            raise ModelConfigError(f"rollout_loss: step_weights: expected finite numbers >= 0, not all 0 (the loss "
                                   f"is their weighted mean), got {weights}")
        self._check("rollout_loss", self.config, state, geometry, lead_time)  # once, not per step
        total, per_step = state.new_zeros((), dtype=torch.float32), []
        for k, w in enumerate(weights):
            state = self._step(state, lead_time, geometry)
            loss = state.new_zeros((), dtype=torch.float32)
            for f, ens in self._decode(state, geometry).items():
                b, e, t = ens.shape[:3]
                d = math.prod(ens.shape[-3:])
                s = math.prod(ens.shape[3:-3])
                # sizes spelt out, not -1: a batch of 0 samples has 0 elements, from which reshape cannot infer one
                flat = ens.transpose(1, 2).reshape(b * t, e, s, d)  # (B*T, E, S, D)
                item = _target_item(targets, k, f, ens)
                tgt = item["tokens"].reshape(b * t, s, d)
                valid = item.get("valid")
                weight = (
                    torch.ones(b * t, s, device=flat.device)
                    if valid is None
                    else valid.reshape(b * t, s).to(flat.device).bool().float()  # uint8: non-zero = True, not 255
                )
                vv = item.get("valid_values")
                if vv is not None:  # per value (N, S, D); NaN targets weigh nothing without it too (token_loss)
                    vv = vv.to(flat.device).expand(item["tokens"].shape).reshape(b * t, s, d)
                    weight = weight[..., None] * vv.bool().float()
                lat = item["lat"].reshape(b * t, s) if "lat" in item else None
                loss = loss + self.multiformer_config.field(f).loss_weight * token_loss(
                    flat, tgt, weight, kinds, lat=lat
                )
            per_step.append(loss.detach())
            total = total + w * loss
        return total / sum(weights), per_step

    def blend_weights(self, field: str) -> torch.Tensor:
        """Blend weights of one decoded tile ``(L, nt_out, nlat, nlon, tt, tlat, tlon)`` (float64), tapered over
        ``config.overlap`` grid points at the lat/lon edges; pass them (per tile) to :class:`~model.stitch.TileBlender`."""
        spec = self.multiformer_config.field(field)
        (_, ny, nx), (tt, ty, tx) = spec.num_tokens, spec.token_size
        wy = edge_taper(ny * ty, self.config.overlap[0]).reshape(ny, ty)
        wx = edge_taper(nx * tx, self.config.overlap[1]).reshape(nx, tx)
        w = wy[:, None, :, None] * wx[None, :, None, :]  # (ny, nx, ty, tx)
        shape = (spec.num_levels, self.config.readout_time_tokens, ny, nx, tt, ty, tx)
        return w[None, None, :, :, None].expand(shape).contiguous()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
