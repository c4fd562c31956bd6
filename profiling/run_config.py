"""The typed configuration of a ``fastload train`` / ``fastload profile`` run: :class:`RunConfig` and its sections.

Why this module exists: a training or profiling run combines settings owned by several parts (what to sample, how
to load it, the model, the optimiser, masking, the Forecaster, steps, precision). :class:`RunConfig` puts them in
one frozen, validated object that a report or checkpoint stores with ``to_dict()`` (secrets in storage options
redacted: :func:`redact`); ``from_dict`` reads TOML tables, ``override`` applies ``--set KEY=VALUE``. The presets
(functions returning a :class:`RunConfig`) and run files are :mod:`profiling.presets`, which re-exports these names.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from fastload._time_range import check_time_range_form
from fastload.config import LoaderConfig, SamplingConfig, apply_overrides
from fastload.errors import ConfigError
from fastload.sampling.masking import MaskingConfig

__all__ = ["DATA_MODES", "MODEL_KINDS", "DataConfig", "ModelConfig", "OptimConfig", "ForecastConfig",
           "ValidationConfig", "RunConfig", "redact"]

DATA_MODES = ("synthetic", "cached", "cold")
"""``synthetic``: one batch replayed from the device; ``cached``: warm page cache; ``cold``: pages dropped."""
_LOSSES = ("mse", "stats", "crps", "lat_mse")
MODEL_KINDS = ("multiformer", "forecaster")


def _int(where: str, v: Any, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}: expected an integer >= {lo}, got {v!r}")


def _num(where: str, v: Any, lo: float, hi: float = float("inf"), *, below_hi: bool = False) -> None:
    """A finite number in ``[lo, hi]`` (``[lo, hi)`` with ``below_hi``), else a ConfigError naming ``where``."""
    ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and lo <= v
          and (v < hi if below_hi else v <= hi))
    if not ok:
        span = f"[{lo}, {hi})" if below_hi else f"[{lo}, {hi}]" if math.isfinite(hi) else f">= {lo} (finite)"
        raise ConfigError(f"{where}: expected a number {'in ' if span[0] == '[' else ''}{span}, got {v!r}")


def _bool(where: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true or false, got {v!r}")


def _check_keys(cls: type, d: Mapping[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")


class _Section:
    """``to_dict`` / ``from_dict`` of a flat section."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> Any:
        _check_keys(cls, d, where or cls.__name__)
        return cls(**d)


_SECRET_WORDS = ("secret", "key", "token", "passw", "credential", "sas", "auth", "sig", "private", "cookie",
                 "connection_string")
_REDACTED = "<redacted>"


def redact(value: Any, name: str = "") -> Any:
    """``value`` as reports and checkpoints may keep it: options whose name (at any depth) says secret, key, token,
    password, credential, sas, auth(orization), sig(nature), private, cookie or connection string are
    ``"<redacted>"``, and so are the user info and the query of any URL (``s3://KEY:SECRET@bucket``, a SAS URL's
    ``?sv=...&sig=...``)."""
    if name and any(w in name.lower() for w in _SECRET_WORDS):
        return _REDACTED
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str) and "://" in value:
        from urllib.parse import urlsplit, urlunsplit

        try:
            p = urlsplit(value)
        except ValueError:
            return value
        netloc = p.netloc if "@" not in p.netloc else f"{_REDACTED}@{p.netloc.rsplit('@', 1)[1]}"
        return urlunsplit((p.scheme, netloc, p.path, _REDACTED if p.query else "", p.fragment))
    return value


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DataConfig(_Section):
    """Where the samples come from."""

    sampling: SamplingConfig
    """What a sample is (fields, levels, token geometry, normalisation); the model's geometry follows it."""
    store: str | None = None
    """Path or URL of the data store; None: the built-in synthetic dataset (written once into ``cache_dir``)."""
    synth_preset: str = "tiny"
    """Preset of the built-in dataset (:data:`fastload.synth.PRESETS`) when ``store`` is None."""
    cache_dir: str | None = None
    """Folder of the built-in dataset and its coefficients; None: ``$FASTLOAD_CACHE`` or ``~/.cache/fastload``."""
    storage_options: dict[str, Any] | None = None
    """Options of a URL store's client: fsspec's filesystem, or obstore's ``from_url`` with ``backend = "obstore"``
    (credentials, region, endpoint, anonymous access). Multi-stream configs: for every stream's store given as a
    URL (local stream paths take none)."""
    backend: str = "auto"
    """How the store's bytes are read (:func:`fastload.store.open_store`): ``auto`` (plain file reads for a path,
    fsspec for a URL), ``fsspec`` or ``obstore``."""
    latency_ms: float = 0.0
    """Simulated storage latency: every storage request sleeps this long (``--store-latency-ms``)."""
    mode: Literal["synthetic", "cached", "cold"] = "cached"
    """``synthetic``: replay one batch already on the device (no loading); ``cached``: the page cache is warmed
    first (profile runs; training leaves it as it is); ``cold``: the store's pages are dropped before every read
    (posix_fadvise), local stores only."""

    def __post_init__(self) -> None:
        if not isinstance(self.sampling, SamplingConfig):
            raise ConfigError(f"data.sampling: expected a sampling config, got {type(self.sampling).__name__}")
        if self.store is not None and (not isinstance(self.store, str) or not self.store):
            raise ConfigError(f"data.store: expected a path or URL, got {self.store!r}")
        from fastload.synth import PRESETS as SYNTH

        if self.synth_preset not in SYNTH:
            raise ConfigError(f"data.synth_preset: expected one of {list(SYNTH)}, got {self.synth_preset!r}")
        lat = self.latency_ms  # inf passed [0, inf] and slept forever in LatencySource, after the model was built
        if isinstance(lat, bool) or not isinstance(lat, (int, float)) or not (math.isfinite(lat) and lat >= 0):
            raise ConfigError(f"data.latency_ms (--store-latency-ms): expected a finite number of milliseconds "
                              f">= 0, got {lat!r}")
        from fastload.store import BACKENDS

        if self.backend not in BACKENDS:
            raise ConfigError(f"data.backend: expected one of {list(BACKENDS)}, got {self.backend!r}")
        so = self.storage_options
        if so is not None and not (isinstance(so, Mapping) and all(isinstance(k, str) for k in so)):
            raise ConfigError(f"data.storage_options: expected a table of option names to values, got {so!r}")
        if so and self.store is None and not self.sampling.streams:
            raise ConfigError("data.storage_options: set for a remote data.store; the built-in dataset is local")
        if self.mode not in DATA_MODES:
            raise ConfigError(f"data.mode: expected one of {list(DATA_MODES)}, got {self.mode!r}")
        if self.mode == "cold" and self.store is not None and "://" in self.store:
            raise ConfigError(f"data.mode = 'cold' drops local page-cache pages; {self.store!r} is a URL")

    def to_dict(self) -> dict[str, Any]:
        """As a table, with secrets out (:func:`redact`: in ``storage_options`` at any depth, and the user info
        and query of the store's URL and of every stream's): reports and checkpoints keep this table; give those
        options again, or through the environment, where a run reopens the store."""
        d = _Section.to_dict(self)
        d["sampling"] = self.sampling.to_dict()
        if self.storage_options:
            d["storage_options"] = redact(self.storage_options)
        d["store"] = redact(self.store)
        streams = d["sampling"].get("streams")
        if isinstance(streams, Mapping):
            d["sampling"]["streams"] = {n: {**st, "path": redact(st.get("path"))} if isinstance(st, Mapping) else st
                                        for n, st in streams.items()}
        elif isinstance(streams, list):
            d["sampling"]["streams"] = [{**st, "path": redact(st.get("path"))} if isinstance(st, Mapping) else st
                                        for st in streams]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "data", base: Path | None = None) -> DataConfig:
        _check_keys(cls, d, where)
        kw = dict(d)
        s = kw.get("sampling")
        if isinstance(s, (str, os.PathLike)):
            p = Path(s) if base is None or os.path.isabs(s) else base / s
            kw["sampling"] = SamplingConfig.from_file(p)
        elif isinstance(s, Mapping):
            try:
                # relative local paths from the run file's folder; built once, so its warnings come once
                kw["sampling"] = SamplingConfig.from_dict(s, base=base)
            except ConfigError as e:
                raise ConfigError(f"{where}.sampling: {e}") from None
        elif not isinstance(s, SamplingConfig):
            raise ConfigError(f"{where}.sampling: expected a table of sampling settings or the path of a file")
        if base is not None and isinstance(kw.get("store"), str) and "://" not in kw["store"]:
            kw["store"] = str((base / kw["store"]).resolve())
        return cls(**kw)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig(_Section):
    """Sizes of the Multiformer (masked-token pre-training); its fields, levels and token geometry come from
    ``data.sampling``. With ``kind = "forecaster"`` these size the Multiformer whose encoder the Forecaster uses
    when ``forecast.multiformer_checkpoint`` is not given."""

    kind: Literal["multiformer", "forecaster"] = "multiformer"
    """What the run trains: the Multiformer on masked tokens, or a Forecaster (``[forecast]``) on global rollouts."""
    embed_dim: int = 32
    """Width of every field's token stream."""
    num_heads: int = 2
    """Self-attention heads per field."""
    encoder_layers: int = 2
    decoder_layers: int = 2
    ensemble_size: int = 4
    """Members of the ensemble tail."""
    mlp_ratio: float = 4.0
    coupled: bool = True
    """Couple every field to every other one with cross-attention heads (AtmoRep's multi-field coupling)."""
    mask_input: Literal["learned", "as_given"] = "as_given"
    """``as_given``: masked tokens enter as the loader altered them (zeroed/noised); ``learned``: replaced by a
    learned embedding."""
    loss: Literal["mse", "stats", "crps", "lat_mse"] = "mse"
    """Loss on the masked tokens (:mod:`model.losses`)."""
    activation_checkpointing: bool = False
    """Recompute every layer in the backward pass (less memory, more compute)."""

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ConfigError(f"model.kind: expected one of {list(MODEL_KINDS)}, got {self.kind!r}")
        for key, lo in (("embed_dim", 1), ("num_heads", 1), ("encoder_layers", 1), ("decoder_layers", 1),
                        ("ensemble_size", 1)):
            _int(f"model.{key}", getattr(self, key), lo)
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"model.embed_dim {self.embed_dim} is not divisible by model.num_heads {self.num_heads}")
        if self.decoder_layers > self.encoder_layers:
            raise ConfigError(f"model.decoder_layers {self.decoder_layers} > model.encoder_layers "
                              f"{self.encoder_layers}: each decoder layer attends to an encoder layer")
        _num("model.mlp_ratio", self.mlp_ratio, 1e-3)
        _bool("model.coupled", self.coupled)
        _bool("model.activation_checkpointing", self.activation_checkpointing)
        if self.mask_input not in ("learned", "as_given"):
            raise ConfigError(f"model.mask_input: expected 'learned' or 'as_given', got {self.mask_input!r}")
        if self.loss not in _LOSSES:
            raise ConfigError(f"model.loss: expected one of {list(_LOSSES)}, got {self.loss!r}")
        if self.loss in ("stats", "crps") and self.ensemble_size < 2:
            raise ConfigError(f"model.loss = {self.loss!r} needs model.ensemble_size >= 2")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class OptimConfig(_Section):
    """AdamW with linear warm-up and cosine decay of the learning rate (computed from the step: resumable)."""

    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay (``schedule = "cosine"``)."""
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps (not the timer's warm-up, which is ``RunConfig.warmup``)."""
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""

    def __post_init__(self) -> None:
        _num("optim.lr", self.lr, 0.0)
        _num("optim.min_lr", self.min_lr, 0.0, self.lr)
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule: expected 'constant' or 'cosine', got {self.schedule!r}")
        _int("optim.warmup_steps", self.warmup_steps, 0)
        _num("optim.weight_decay", self.weight_decay, 0.0)
        _num("optim.beta1", self.beta1, 0.0, 1.0, below_hi=True)  # AdamW refuses 1.0 (its own traceback)
        _num("optim.beta2", self.beta2, 0.0, 1.0, below_hi=True)
        _num("optim.grad_clip", self.grad_clip, 0.0)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ForecastConfig(_Section):
    """The Forecaster and its rollout training data (used when ``model.kind = "forecaster"``).

    The Forecaster's sizes map to :class:`model.ForecasterConfig`; the rollout settings to
    :class:`fastload.rollout_data.RolloutConfig`. Its loss is ``model.loss``, scored on every rollout step.
    """

    multiformer_checkpoint: str | None = None
    """A ``fastload train`` Multiformer checkpoint whose embedding and encoder the Forecaster uses; None: a freshly
    initialised Multiformer sized by ``[model]`` (an untrained encoder; the run says so)."""
    freeze_encoder: bool = True
    """Keep the Multiformer's embedding and encoder fixed."""
    latent_dim: int = 32
    """Width of a tile's latent."""
    latent_queries: int = 4
    """Latent vectors per tile."""
    num_heads: int = 2
    adapter_layers: int = 1
    tail_layers: int = 2
    """Transformer blocks of the latent tail (one rollout step)."""
    readout_layers: int = 1
    ensemble_size: int = 4
    mlp_ratio: float = 4.0
    rollout_steps: int = 2
    """Steps of the multi-step rollout loss (targets per sample)."""
    lead: int | None = None
    """Store time steps per rollout step; None: ``box_t * time_step``, the inputs' cadence (recorded in the
    checkpoint as run: :attr:`fastload.rollout_data.RolloutConfig.lead`)."""
    input_window: int = 1
    """Latent states (input windows, ``lead`` apart) the tail sees."""
    readout_time_tokens: int = 1
    """Time tokens decoded per tile and step."""
    overlap: tuple[int, int] = (1, 1)
    """Least overlap of neighbouring tiles in tokens (rows, columns)."""
    neighbors: int = 4
    """Neighbouring tiles each tile's read-out attends to."""
    batch_size: int = 1
    """Initial times per batch (each a whole globe of tiles)."""
    tiles_per_chunk: int | None = None
    """Tiles encoded at once (bounds the encoder's memory); None: all."""

    def __post_init__(self) -> None:
        if self.multiformer_checkpoint is not None and (not isinstance(self.multiformer_checkpoint, str)
                                                        or not self.multiformer_checkpoint):
            raise ConfigError(f"forecast.multiformer_checkpoint: expected a path, got {self.multiformer_checkpoint!r}")
        _bool("forecast.freeze_encoder", self.freeze_encoder)
        for key, lo in (("latent_dim", 2), ("latent_queries", 1), ("num_heads", 1), ("adapter_layers", 1),
                        ("tail_layers", 0), ("readout_layers", 1), ("ensemble_size", 1), ("rollout_steps", 1),
                        ("input_window", 1), ("readout_time_tokens", 1), ("neighbors", 0), ("batch_size", 1)):
            _int(f"forecast.{key}", getattr(self, key), lo)
        for key in ("lead", "tiles_per_chunk"):
            if getattr(self, key) is not None:
                _int(f"forecast.{key}", getattr(self, key), 1)
        _num("forecast.mlp_ratio", self.mlp_ratio, 1e-3)
        ov = self.overlap
        if isinstance(ov, (str, bytes)) or not isinstance(ov, Sequence) or len(ov) != 2:
            raise ConfigError(f"forecast.overlap: expected two integers (rows, columns), got {ov!r}")
        for v in ov:
            _int("forecast.overlap", v, 0)
        object.__setattr__(self, "overlap", tuple(ov))
        if self.latent_dim % self.num_heads or (self.latent_dim // self.num_heads) % 2:
            raise ConfigError(f"forecast.latent_dim {self.latent_dim} must split into forecast.num_heads "
                              f"{self.num_heads} heads of even width")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ValidationConfig(_Section):
    """A validation loss on a held-out part of the time axis during ``fastload train`` (:mod:`profiling.validation`):
    the same samples every time, the model in eval mode without gradients, averaged over every rank's samples."""

    time_range: tuple[str, str] | tuple[int, int] | None = None
    """The held-out period, as ``loader.time_range`` takes it (dates ``["2016-01-01", "2018-01-01"]``, start
    included, stop excluded, or store time indices); None: no validation."""
    every: int = 0
    """Validate every this many steps and at the end of the run; 0: only at the end."""
    samples: int = 64
    """Samples of one validation (a Forecaster's: initial times), over all ranks, dealt as the training loader deals
    them: every rank reads the same number of batches, so a multiple of ``world_size x batch_size`` reads them all
    (else the surplus is left out, with the loader's warning; the record's ``samples`` is the count read)."""
    seed: int = 1
    """Seed of the validation samples' placement and masks (epoch 0 of their own loader, every time). That loader
    reads on threads (``loader.mode`` is for training's) and keeps a decoded-chunk cache of its own, of up to
    ``loader.cache_bytes``, for the whole run."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "time_range", check_time_range_form(self.time_range, "validation.time_range"))
        _int("validation.every", self.every, 0)
        _int("validation.samples", self.samples, 1)
        _int("validation.seed", self.seed, 0)

    def check_used(self) -> None:
        """A ConfigError when settings are given without ``time_range`` (they would do nothing, silently). Checked
        by the run (:func:`profiling.validation.check_mode`), not here: a run file's ``[validation] every = 5``
        may get its ``time_range`` from ``--set``, applied after the file's sections are built."""
        if self.time_range is None:
            given = [f"{k} = {getattr(self, k)!r}" for k, d in (("every", 0), ("samples", 64), ("seed", 1))
                     if getattr(self, k) != d]
            if given:
                raise ConfigError(f"validation: {', '.join(given)} given without validation.time_range, so no "
                                  "validation would run; give the held-out period validation.time_range")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    """Everything one training or profiling run needs; reports and checkpoints store its ``to_dict()``."""

    name: str = "custom"
    """Label of the run (the preset's name by default)."""
    data: DataConfig
    loader: LoaderConfig = dataclasses.field(default_factory=LoaderConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    masking: MaskingConfig = dataclasses.field(default_factory=MaskingConfig)
    """Token masking done by the loader on the device (``strategy = "identity"``: none)."""
    forecast: ForecastConfig = dataclasses.field(default_factory=ForecastConfig)
    """The Forecaster and its rollout data (``model.kind = "forecaster"``)."""
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    """A validation loss on a held-out period (``fastload train``)."""
    steps: int = 20
    """Optimizer steps of the whole run (a resumed run continues up to this step)."""
    warmup: int = 3
    """Steps at the start of a process that run but are left out of the timing numbers."""
    bf16: bool = False
    """Run forward and loss under bfloat16 autocast."""
    compile: bool = False
    """``torch.compile`` each layer (:func:`model.apply_compile`)."""
    seed: int = 0
    """Seed of the model's initialisation (the loader's sampling seed is ``loader.seed``)."""
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:N``; None: the GPU when there is one (under torchrun: ``cuda:LOCAL_RANK``)."""
    threads: int | None = None
    """Torch intra-op threads when the model runs on the CPU; None: this process's share of the cores minus the
    loader's workers (at least 1). Oversubscribed OpenMP threads spin and can slow a step tenfold."""
    dist_timeout_s: float = 600.0
    """Under torchrun: seconds a rank waits in a collective (DDP's gradient all-reduce, a barrier, a gather) for the
    others before it fails, so a frozen or dead rank ends the run (torch's defaults: 30 min gloo, 10 min nccl; see
    :mod:`profiling.distributed`). Rank 0 synthesising the built-in dataset on a first run counts against it."""
    checkpoint_dir: str | None = None
    """Where ``last.pt`` is written (model, optimizer, loader positions, RNG states, step); None: no checkpoints."""
    checkpoint_every: int = 0
    """Write a checkpoint every this many steps (0: only at the end of the run)."""
    report_dir: str | None = None
    """Folder of the report files; None: ``runs/<train|profile>-<time>``."""
    log_every: int = 10
    """Print the loss every this many steps (reading it is a host sync, so not every step)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name: expected a non-empty string, got {self.name!r}")
        for key, cls in (("data", DataConfig), ("loader", LoaderConfig), ("model", ModelConfig),
                         ("optim", OptimConfig), ("masking", MaskingConfig), ("forecast", ForecastConfig),
                         ("validation", ValidationConfig)):
            if not isinstance(getattr(self, key), cls):
                raise ConfigError(f"{key}: expected a {cls.__name__}, got {type(getattr(self, key)).__name__}")
        _int("steps", self.steps, 1)
        _int("warmup", self.warmup, 0)
        _int("seed", self.seed, 0)
        _int("checkpoint_every", self.checkpoint_every, 0)
        _int("log_every", self.log_every, 1)
        _num("dist_timeout_s", self.dist_timeout_s, 1.0, 7 * 86400.0)
        if self.threads is not None:
            _int("threads", self.threads, 1)
        _bool("bf16", self.bf16)
        _bool("compile", self.compile)
        if self.device is not None and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.model.kind == "multiformer":  # (the Forecaster's RolloutLoader reads on threads)
            from .slowstore import check_cold_workers

            check_cold_workers(self.data.mode, self.loader.mode, "data.mode (--data)")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if hasattr(v, "to_dict") else v
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base: Path | None = None) -> RunConfig:
        """Build from nested mappings (TOML tables); unknown keys raise naming the section."""
        _check_keys(cls, d, "run config")
        kw = dict(d)
        if "data" not in kw:  # (a run file's preset, or --preset, is merged in before: its data would be here)
            from .presets import PRESETS

            raise ConfigError("run config: missing the [data] section (with data.sampling); a run file that names "
                              "no preset starts from none (the default preset cpu_tiny is for runs without "
                              "--config): give a [data] section with sampling (and store), or a base preset, "
                              f"preset = \"cpu_tiny\" at the top of the file or --preset cpu_tiny (one of "
                              f"{list(PRESETS)})")
        for key in ("data", "loader", "model", "optim", "masking", "forecast", "validation"):
            if key in kw and not isinstance(kw[key], Mapping):  # `model = 3`: a TypeError deeper down before
                raise ConfigError(f"run config: [{key}] must be a table of settings ([{key}] followed by "
                                  f"key = value lines), got {key} = {kw[key]!r}")
        kw["data"] = DataConfig.from_dict(kw["data"], base=base)
        if "loader" in kw:
            kw["loader"] = LoaderConfig.from_dict(kw["loader"])
        for key, sec in (("model", ModelConfig), ("optim", OptimConfig), ("forecast", ForecastConfig),
                         ("validation", ValidationConfig)):
            if key in kw:
                kw[key] = sec.from_dict(kw[key], key)
        if "masking" in kw:
            _check_keys(MaskingConfig, kw["masking"], "masking")
            kw["masking"] = MaskingConfig(**kw["masking"])
        for key in ("checkpoint_dir", "report_dir"):
            if base is not None and isinstance(kw.get(key), str):
                kw[key] = str(base / kw[key])
        ck = kw["forecast"].multiformer_checkpoint if "forecast" in kw else None
        if base is not None and ck is not None and not os.path.isabs(ck):
            kw["forecast"] = dataclasses.replace(kw["forecast"], multiformer_checkpoint=str(base / ck))
        return cls(**kw)

    def override(self, overrides: Sequence[str]) -> RunConfig:
        """A copy with dotted ``key=value`` overrides applied (``loader.batch_size=8``, ``data.sampling.
        batch_size=8``, ``steps=50``); unknown keys and wrong types raise :class:`ConfigError`."""
        return apply_overrides(self, list(overrides))
