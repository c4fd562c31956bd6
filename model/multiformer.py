"""The Multiformer: AtmoRep's masked-token model with per-field encoders coupled by cross-attention.

Why: this is the pre-training model the loader feeds. It is one file, config -> blocks -> model (nanoGPT style);
the reusable pieces (attention, MLP, features) live in :mod:`model.layers`. Compile and activation checkpointing
are applied from outside (:mod:`model.compile`); NVTX labels hang on the module names
(``embed.<field>``, ``encoder.layers.<i>``, ``decoder.layers.<i>``, ``tail.<field>``).

The batch (plain tensors; ``model`` knows nothing of fastload: :func:`model.model_inputs` turns a
``fastload.Batch`` into this). For each field name of the config::

    batch[field] = {
        "tokens": (B, L, nt, nlat, nlon, tt, tlat, tlon) floating point    # normalised values, as the sampler lays out
        "meta": {                                         # per-token float tensors, each (B, L, nt, nlat, nlon)
            "time_of_day": hours 0-24, "day_of_year": 0-366, "lat": degrees, "lon": degrees,
            "level": level value (optional; one of the field's FieldSpec.levels; default: position along L),
            # a NaN time_of_day/day_of_year (no time axis) or level (no level axis) means "not given"; lat and lon
            # must be finite on every real token (else ModelConfigError); a padding token (valid False) may have NaN
        },
        "mask":  (B, L, nt, nlat, nlon) bool, True = masked (to predict)     # optional: nothing masked
        "valid": (B, L, nt, nlat, nlon) bool, True = a real token           # optional: all real (no padding)
        "valid_values": bool broadcastable to tokens, True = a real value  # optional: all real
        "target": like tokens                                                # optional, for losses: default tokens
    }

Tokens and targets may be any floating dtype (cast to the model's); ``mask`` and ``valid`` may be uint8 (non-zero =
True). A ``level`` value is looked up in the field's table (relative tolerance 1e-5): a value that is none of its
entries raises :class:`ModelConfigError` naming the values and the table, so it never silently shares another
level's embedding. That check rides on the forward's one host read (below), so it is skipped where there is none
(every field gives ``valid`` and the batch is on an accelerator) and under ``torch.compile``; there a stray value
takes the nearest entry's embedding. Anything else out of layout (shapes, dtypes, missing keys) raises
:class:`ModelConfigError` before any computation (:func:`model._batch.check_batch`).

Missing values and padding. A value is *missing* where it is not finite (the loader gives NaN where a store
declares a value missing: an ocean field's land, say) or where ``valid_values`` is False (a padding slot: a field
sampled as points, an unstructured mesh or a stream of a multi-stream batch, has a variable number of points per
token, padded to ``K = tlat * tlon`` slots). The embedding reads a missing value as 0 *and* adds a learned
missing-value indicator for its position in the token (``embed.<field>.missing``), so that it is not taken for a
real 0, the normalised mean; this holds with or without masks, so a NaN never reaches the encoder. The losses give
missing targets no weight (a NaN target too, without any mask; :mod:`model.losses`). An unmasked token with no
data (none of its ``tokens`` values is finite and real: an all-land token of an ocean field, a mesh token without a
point) or one that ``valid`` marks as padding is dropped from every attention as a key
(:func:`model._batch.attention_keys`; it is still a query, so it gets a finite prediction that no loss trains); a
masked token stays a key (its input was replaced), and ``target`` never decides, so training and inference attend
alike; a sample left without a key in a field keeps all its tokens of that field as keys, so no softmax is empty.
:func:`padding_masks` turns the data path's slot mask ``(B, nlat, nlon, K)`` and the tokens' NaNs into
``valid_values`` and ``valid``. Where no token of a field is dropped and no ``valid`` is given, its attention runs
without a mask (the flash kernel on a GPU; bit-identical to a model that never drops tokens); finding that out is
one host read per forward (given ``valid`` for every field, there is none).

``Multiformer(config)(batch)`` returns ``{field: (B, E, L, nt, nlat, nlon, tt, tlat, tlon)}``: the ``E`` ensemble
members' predictions of every token (missing values included: finite numbers that no loss trains; mask them with
the inputs' NaNs or ``valid_values``); :func:`model.losses.multiformer_loss` scores the masked, valid ones. Masked
tokens' inputs are replaced by a learned mask embedding (``mask_input="learned"``) or used as given
(``"as_given"``: the data path already zeroed or noised them). Padded tokens (``valid`` False) are dropped from
every attention as keys and from every loss; unmasked tokens without data from every attention, and tokens with
missing targets from every loss.

Run a smoke test: ``python -c "import model; m = model.Multiformer(model.MultiformerConfig.tiny()); print(m)"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ._batch import META_KEYS, check_batch, encode_fields, padding_masks
from ._config import ConfigBase, ModelConfigError, check_fraction, positive_int
from .layers import (
    MLP,
    NUM_TIME_FEATURES,
    Attention,
    Checkpointable,
    EnsembleTail,
    init_linear,
    num_sphere_features,
    sphere_features,
    time_features,
)

__all__ = ["FieldSpec", "MultiformerConfig", "Multiformer", "FieldEmbedding", "Encoder", "Decoder", "padding_masks"]

MASK_INPUTS = ("learned", "as_given")


def _triple(name: str, value: Any) -> tuple[int, int, int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ModelConfigError(f"{name}: expected three integers (time, lat, lon), got {value!r}")
    return tuple(positive_int(name, v) for v in value)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FieldSpec(ConfigBase):
    """One field of the model: its token geometry, width, heads and which fields it couples to."""

    name: str
    """Field name, the key of the batch dict (no dots: it names submodules)."""
    levels: tuple[float, ...] = (0.0,)
    """Level values in batch order; the level embedding looks values up here. One entry for a surface field."""
    num_tokens: tuple[int, int, int]
    """Tokens per sample along (time, lat, lon)."""
    token_size: tuple[int, int, int]
    """Grid points per token along (time, lat, lon)."""
    embed_dim: int = 256
    """Width of this field's token stream."""
    num_heads: int = 4
    """Self-attention heads; the head width is ``embed_dim // num_heads``."""
    coupled: tuple[str, ...] = ()
    """Fields whose encoder tokens this field's encoder cross-attends to (AtmoRep's "multi" coupling)."""
    coupling_heads: int = 1
    """Cross-attention heads per coupled field (added to the self-attention heads)."""
    loss_weight: float = 1.0
    """Weight of this field in the summed loss: :meth:`model.Forecaster.rollout_loss` weighs it, and
    :func:`model.losses.multiformer_loss` given the model's ``config`` (``profiling.steps.MultiformerStep`` passes
    it; explicit ``field_weights`` win for the fields they name)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "." in self.name:
            raise ModelConfigError(f"field name: expected a non-empty string without '.', got {self.name!r}")
        w = f"fields.{self.name}"
        object.__setattr__(self, "num_tokens", _triple(f"{w}.num_tokens", self.num_tokens))
        object.__setattr__(self, "token_size", _triple(f"{w}.token_size", self.token_size))
        if isinstance(self.levels, (str, bytes)) or not isinstance(self.levels, Sequence) or not self.levels:
            raise ModelConfigError(
                f"{w}.levels: expected a non-empty list of level values, got {self.levels!r}"
            )
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in self.levels):
            raise ModelConfigError(f"{w}.levels: expected numbers, got {self.levels!r}")
        if len(set(self.levels)) != len(self.levels):
            raise ModelConfigError(f"{w}.levels: duplicate level in {list(self.levels)}")
        object.__setattr__(self, "levels", tuple(float(v) for v in self.levels))
        positive_int(f"{w}.embed_dim", self.embed_dim)
        positive_int(f"{w}.num_heads", self.num_heads)
        if self.embed_dim % self.num_heads:
            raise ModelConfigError(
                f"{w}: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if isinstance(self.coupled, str) or not isinstance(self.coupled, Sequence):
            raise ModelConfigError(f"{w}.coupled: expected a list of field names, got {self.coupled!r}")
        object.__setattr__(self, "coupled", tuple(self.coupled))
        if self.name in self.coupled or len(set(self.coupled)) != len(self.coupled):
            raise ModelConfigError(f"{w}.coupled: itself or duplicates in {list(self.coupled)}")
        positive_int(f"{w}.coupling_heads", self.coupling_heads)
        check_fraction(f"{w}.loss_weight", self.loss_weight)

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def token_dim(self) -> int:
        """Values per token, ``tt * tlat * tlon``."""
        return math.prod(self.token_size)

    @property
    def seq_len(self) -> int:
        """Tokens per sample, ``L * nt * nlat * nlon``."""
        return self.num_levels * math.prod(self.num_tokens)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(L, nt, nlat, nlon, tt, tlat, tlon)``: one sample's tokens."""
        return (self.num_levels, *self.num_tokens, *self.token_size)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MultiformerConfig(ConfigBase):
    """The whole Multiformer: its fields and the settings all fields share."""

    fields: tuple[FieldSpec, ...]
    """The fields, in batch order."""
    num_encoder_layers: int = 6
    """Encoder layers (every field's encoder runs layer by layer with the others)."""
    num_decoder_layers: int = 6
    """Decoder layers; layer j cross-attends to encoder layer ``num_encoder_layers - 1 - j`` (U-Net order)."""
    mlp_ratio: float = 4.0
    """MLP hidden width over embed width."""
    ensemble_size: int = 16
    """Members of the ensemble tail."""
    qk_norm: bool = True
    """RMS-normalise queries and keys per head."""
    mask_input: Literal["learned", "as_given"] = "learned"
    """``learned``: masked tokens' values are replaced by a learned embedding; ``as_given``: used as they come."""
    meta_frequencies: int = 6
    """Octaves of the lat/lon features of the metadata embedding."""

    def __post_init__(self) -> None:
        fields = tuple(FieldSpec(**f) if isinstance(f, Mapping) else f for f in self.fields)
        if not fields or not all(isinstance(f, FieldSpec) for f in fields):
            raise ModelConfigError(f"fields: expected a non-empty list of FieldSpec, got {self.fields!r}")
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise ModelConfigError(f"fields: duplicate field name in {names}")
        for f in fields:
            for g in f.coupled:
                if g not in names:
                    raise ModelConfigError(
                        f"fields.{f.name}.coupled: unknown field {g!r}; fields are {names}"
                    )
        object.__setattr__(self, "fields", fields)
        positive_int("num_encoder_layers", self.num_encoder_layers)
        positive_int("num_decoder_layers", self.num_decoder_layers)
        if self.num_decoder_layers > self.num_encoder_layers:
            raise ModelConfigError(
                f"num_decoder_layers: {self.num_decoder_layers} > num_encoder_layers {self.num_encoder_layers}; "
                "each decoder layer needs an encoder layer to attend to"
            )
        check_fraction("mlp_ratio", self.mlp_ratio, low=1e-3)
        positive_int("ensemble_size", self.ensemble_size)
        if not isinstance(self.qk_norm, bool):
            raise ModelConfigError(f"qk_norm: expected true or false, got {self.qk_norm!r}")
        if self.mask_input not in MASK_INPUTS:
            raise ModelConfigError(
                f"mask_input: expected one of {list(MASK_INPUTS)}, got {self.mask_input!r}"
            )
        positive_int("meta_frequencies", self.meta_frequencies, minimum=0)

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise ModelConfigError(f"no field {name!r}; fields are {[f.name for f in self.fields]}")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultiformerConfig:
        """Inverse of ``to_dict`` (unknown keys raise :class:`~model._config.ModelConfigError`)."""
        cls.check_keys(d, "multiformer")
        d = dict(d)
        fields = []
        for f in d.pop("fields", ()):
            FieldSpec.check_keys(f, f"fields.{f.get('name')}")
            f = dict(f)
            for k in ("levels", "num_tokens", "token_size", "coupled"):
                if k in f:
                    f[k] = tuple(f[k])
            fields.append(FieldSpec(**f))
        return cls(fields=tuple(fields), **d)

    @classmethod
    def tiny(cls, num_fields: int = 2, **overrides: Any) -> MultiformerConfig:
        """A CPU-sized model: ``num_fields`` coupled fields of 2 levels x (2, 3, 4) tokens of (1, 3, 3), width 32."""
        names = ["temperature", "humidity", "wind_u", "wind_v"][:num_fields]
        fields = tuple(
            FieldSpec(
                name=n,
                levels=(850.0, 500.0),
                num_tokens=(2, 3, 4),
                token_size=(1, 3, 3),
                embed_dim=32,
                num_heads=2,
                coupled=tuple(g for g in names if g != n),
            )
            for n in names
        )
        settings = dict(num_encoder_layers=2, num_decoder_layers=2, ensemble_size=4, meta_frequencies=3)
        return cls(fields=fields, **{**settings, **overrides})

    @classmethod
    def atmorep(cls, names: Sequence[str] = ("temperature",), **overrides: Any) -> MultiformerConfig:
        """AtmoRep-sized: per field 5 model levels x [12, 6, 12] tokens of [3, 9, 9], width 1024, 16 heads,
        6 + 6 layers, ensemble 16; several names are coupled all-to-all with one head per coupled field."""
        fields = tuple(
            FieldSpec(
                name=n,
                levels=(96.0, 105.0, 114.0, 123.0, 137.0),
                num_tokens=(12, 6, 12),
                token_size=(3, 9, 9),
                embed_dim=1024,
                num_heads=16,
                coupled=tuple(g for g in names if g != n),
            )
            for n in names
        )
        return cls(fields=fields, **overrides)


class FieldEmbedding(nn.Module):
    """Token values + metadata + place in the neighborhood -> ``(B, S, embed_dim)`` for one field."""

    def __init__(self, spec: FieldSpec, config: MultiformerConfig) -> None:
        super().__init__()
        d = spec.embed_dim
        self.spec = spec
        self.learned_mask = config.mask_input == "learned"
        self.meta_frequencies = config.meta_frequencies
        self.token = nn.Linear(spec.token_dim, d)
        self.meta = nn.Linear(NUM_TIME_FEATURES + num_sphere_features(config.meta_frequencies), d)
        self.level = nn.Embedding(spec.num_levels, d)
        # float32 whatever the model's dtype (_apply): the level lookup compares values in float32
        self.register_buffer("level_values", torch.tensor(spec.levels, dtype=torch.float32), persistent=False)
        nt, ny, nx = spec.num_tokens
        self.pos_t = nn.Parameter(torch.zeros(nt, d))
        self.pos_lat = nn.Parameter(torch.zeros(ny, d))
        self.pos_lon = nn.Parameter(torch.zeros(nx, d))
        self.mask_token = nn.Parameter(torch.zeros(d)) if self.learned_mask else None
        init_linear(self)
        # unit-scale embeddings, like the outputs of the fan-in-initialised token/meta projections: position
        # must be visible next to content from the first step on
        for p in (self.pos_t, self.pos_lat, self.pos_lon, self.level.weight):
            nn.init.trunc_normal_(p, std=1.0, a=-2.0, b=2.0)
        # the missing-value indicator: which of a token's values are missing (1) or real (0), so a missing value
        # read as 0 is not taken for a real 0 (the normalised mean). It starts at zero: until it has learned from
        # missing values, a model reads them as 0, as one from before the indicator does (its gradient is zero on
        # data without gaps, so a random start would stay an untrained offset). Made without a random draw, so the
        # other parameters of a seeded model start as they did before it existed.
        self.missing = nn.utils.skip_init(nn.Linear, spec.token_dim, d, bias=False)
        nn.init.zeros_(self.missing.weight)

    def forward(
        self,
        tokens: torch.Tensor,
        meta: Mapping[str, torch.Tensor],
        mask: torch.Tensor | None,
        valid_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``tokens`` (B, L, nt, nlat, nlon, tt, tlat, tlon), per-token ``meta`` and ``mask`` (B, L, nt, nlat, nlon),
        ``valid_values`` (bool, broadcastable to ``tokens``) -> ``(B, S, d)``.

        A value is missing where it is not finite (NaN: a store's declared missing value) or ``valid_values`` is
        False (a padding slot); it reads as 0 and its indicator is set, whatever it holds.
        """
        b = tokens.shape[0]
        grid = tokens.shape[:5]  # (B, L, nt, nlat, nlon)
        d = self.token.weight.shape[0]
        present = torch.isfinite(tokens)  # no host sync: every value is selected, NaN or not
        if valid_values is not None:
            present = present & valid_values
        tokens = torch.where(present, tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
        dtype = self.token.weight.dtype
        # sizes spelt out, not -1: a batch of 0 samples has 0 elements, from which reshape cannot infer one
        x = self.token(tokens.reshape(*grid, self.spec.token_dim).to(dtype))  # (B, L, nt, nlat, nlon, d)
        x = x + self.missing((~present).reshape(*grid, self.spec.token_dim).to(dtype))
        if self.mask_token is not None and mask is not None:
            x = torch.where(mask.bool()[..., None], self.mask_token.to(x.dtype), x)  # uint8 allowed; bool: no copy
        f32 = {k: meta[k].to(torch.float32) for k in META_KEYS}
        feats = torch.cat(
            [
                time_features(f32["time_of_day"], f32["day_of_year"]),
                # a padding token's NaN place: zero features, never NaN (a real one's is refused: encode_fields)
                sphere_features(f32["lat"], f32["lon"], self.meta_frequencies, non_finite="zero"),
            ],
            dim=-1,
        )
        x = x + self.meta(feats.to(self.meta.weight.dtype))
        if "level" in meta:
            lev = meta["level"].to(torch.float32)
            lev = torch.where(torch.isnan(lev), self.level_values[0], lev)  # NaN: a field without levels
            idx = (lev[..., None] - self.level_values).abs().argmin(-1)  # nearest table entry
            x = x + self.level(idx)
        else:
            x = x + self.level.weight[None, :, None, None, None, :]
        pos = self.pos_t[:, None, None] + self.pos_lat[None, :, None] + self.pos_lon[None, None, :]
        x = x + pos  # (nt, nlat, nlon, d) broadcast over (B, L)
        return x.reshape(b, self.spec.seq_len, d)  # (B, S, d)

    def _apply(self, fn: Any, recurse: bool = True) -> FieldEmbedding:
        # the level table stays float32 whatever the model is cast to: in float16 levels in Pa (50000, 85000,
        # 100000) became [49984, inf, inf] and in bfloat16 (1000, 1001) merged, so every level looked up the same
        # embedding. It is rebuilt from the config on the buffer's new device (the cast values are lossy).
        super()._apply(fn, recurse)
        self.level_values = torch.tensor(self.spec.levels, dtype=torch.float32).to(self.level_values.device)
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # a checkpoint from before the missing-value indicator: its model read missing values as 0 and nothing
        # more, which is the indicator at zero (loading such a checkpoint's optimizer state still fails: it has
        # one parameter fewer per field)
        key = prefix + "missing.weight"
        if prefix + "token.weight" in state_dict and key not in state_dict:
            state_dict[key] = torch.zeros_like(self.missing.weight)
        super()._load_from_state_dict(state_dict, prefix, *args)


class _Coupling(nn.Module):
    """Cross-attention heads from one field (queries) to a coupled field (keys/values), zero-initialised out."""

    def __init__(self, spec: FieldSpec, other: FieldSpec, config: MultiformerConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(other.embed_dim)
        self.attn = Attention(
            spec.embed_dim,
            spec.coupling_heads,
            spec.head_dim,
            kv_dim=other.embed_dim,
            qk_norm=config.qk_norm,
            zero_init_out=True,
        )

    def forward(self, h: torch.Tensor, other: torch.Tensor, other_valid: torch.Tensor | None) -> torch.Tensor:
        return self.attn(h, self.norm(other), other_valid)


class EncoderBlock(nn.Module):
    """One encoder layer of one field: self-attention + coupling heads, then MLP (pre-norm residuals)."""

    def __init__(self, spec: FieldSpec, config: MultiformerConfig) -> None:
        super().__init__()
        d = spec.embed_dim
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, spec.num_heads, spec.head_dim, qk_norm=config.qk_norm)
        self.cross = nn.ModuleDict({g: _Coupling(spec, config.field(g), config) for g in spec.coupled})
        self.norm2 = nn.LayerNorm(d)
        self.mlp = MLP(d, config.mlp_ratio)

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor | None,
        xs: Mapping[str, torch.Tensor],
        valids: Mapping[str, Any],
    ) -> torch.Tensor:
        h = self.norm1(x)
        a = self.attn(h, key_valid=valid)
        for g, coupling in self.cross.items():
            a = a + coupling(h, xs[g], valids[g])
        x = x + a
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """One decoder layer of one field: self-attention, cross-attention to an encoder layer, MLP."""

    def __init__(self, spec: FieldSpec, config: MultiformerConfig) -> None:
        super().__init__()
        d = spec.embed_dim
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, spec.num_heads, spec.head_dim, qk_norm=config.qk_norm)
        self.norm_q = nn.LayerNorm(d)
        self.norm_skip = nn.LayerNorm(d)
        self.cross = Attention(d, spec.num_heads, spec.head_dim, kv_dim=d, qk_norm=config.qk_norm)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = MLP(d, config.mlp_ratio)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_valid=valid)
        x = x + self.cross(self.norm_q(x), self.norm_skip(skip), valid)
        return x + self.mlp(self.norm2(x))


class _Layer(Checkpointable, nn.ModuleDict):
    """One layer of all fields: a ModuleDict of per-field blocks (``encoder.layers.<i>.<field>``)."""


class EncoderLayer(_Layer):
    def _run(self, xs: dict[str, torch.Tensor], valid: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {f: block(xs[f], valid[f], xs, valid) for f, block in self.items()}


class DecoderLayer(_Layer):
    def _run(
        self, xs: dict[str, torch.Tensor], skips: dict[str, torch.Tensor], valid: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        return {f: block(xs[f], skips[f], valid[f]) for f, block in self.items()}


class Encoder(nn.Module):
    """Per-field encoders run layer by layer together; returns every layer's output (for the decoder)."""

    def __init__(self, config: MultiformerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer({f.name: EncoderBlock(f, config) for f in config.fields})
            for _ in range(config.num_encoder_layers)
        )

    def forward(self, xs: dict[str, torch.Tensor], valid: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        hiddens = []
        for layer in self.layers:
            xs = layer(xs, valid)
            hiddens.append(xs)
        return hiddens


class Decoder(nn.Module):
    """Per-field decoders: input the last encoder output, layer j attends to encoder layer ``n - 1 - j``."""

    def __init__(self, config: MultiformerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer({f.name: DecoderBlock(f, config) for f in config.fields})
            for _ in range(config.num_decoder_layers)
        )

    def forward(
        self, hiddens: list[dict[str, torch.Tensor]], valid: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        xs = hiddens[-1]
        for j, layer in enumerate(self.layers):
            xs = layer(xs, hiddens[len(hiddens) - 1 - j], valid)
        return xs


class Multiformer(nn.Module):
    """AtmoRep's Multiformer: per-field embed -> coupled encoders -> U-Net decoders -> ensemble tails.

    Parameters
    ----------
    config : MultiformerConfig
        Fields and sizes; ``MultiformerConfig.tiny()`` for tests, ``MultiformerConfig.atmorep()`` for real runs.
    """

    def __init__(self, config: MultiformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.ModuleDict({f.name: FieldEmbedding(f, config) for f in config.fields})
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.tail = nn.ModuleDict(
            {f.name: EnsembleTail(f.embed_dim, f.token_dim, config.ensemble_size) for f in config.fields}
        )

    def encode(self, batch: Mapping[str, Any]) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
        """Every encoder layer's output per field, and the per-field attention keys ``(B, S)`` (None: all tokens)."""
        check_batch(self.config, batch)
        return encode_fields(self.embed, self.encoder, batch)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Ensemble predictions per field, ``(B, E, L, nt, nlat, nlon, tt, tlat, tlon)``."""
        hiddens, valid = self.encode(batch)
        ys = self.decoder(hiddens, valid)
        out = {}
        for spec in self.config.fields:
            ens = self.tail[spec.name](ys[spec.name])  # (B, E, S, D)
            out[spec.name] = ens.reshape(ens.shape[0], ens.shape[1], *spec.sample_shape)
        return out

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
