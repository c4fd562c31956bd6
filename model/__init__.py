"""Model core: the Multiformer and the latent Forecaster (torch only; knows nothing of fastload).

- :class:`Multiformer` / :class:`MultiformerConfig` (``tiny()``, ``atmorep()``): masked-token pre-training on the
  sampler's token tensors (the batch layout is documented in :mod:`model.multiformer`); :func:`model_inputs` turns
  a ``fastload.Batch`` into that layout (``net(model.model_inputs(batch))``).
- :class:`Forecaster` / :class:`ForecasterConfig`: encoder -> adapter -> global latent tail -> read-out, with
  :meth:`Forecaster.rollout` and a multi-step :meth:`Forecaster.rollout_loss`.
- :mod:`model.losses`: per-member MSE, ensemble statistics, fair CRPS, latitude-weighted MSE.
- :mod:`model.checkpoint`: per-field component checkpoints, exact resume, assembling coupled models.
- :mod:`model.compile`: ``apply_compile``, ``apply_activation_checkpointing`` (applied from outside).
- :mod:`model.stitch`: seam-free blending of overlapping tiles.
"""

from ._batch import model_inputs
from ._config import ModelConfigError
from .checkpoint import assemble_multiformer, load_checkpoint, save_checkpoint
from .compile import apply_activation_checkpointing, apply_compile
from .forecaster import Forecaster, ForecasterConfig, Rollout, TileGeometry
from .losses import (
    LOSS_KINDS,
    ensemble_statistics,
    ensemble_stats_loss,
    fair_crps,
    lat_weighted_mse,
    member_mse,
    multiformer_loss,
    token_loss,
)
from .multiformer import FieldSpec, Multiformer, MultiformerConfig
from .stitch import TileBlender, edge_taper

__all__ = [
    "ModelConfigError",
    "FieldSpec",
    "Multiformer",
    "MultiformerConfig",
    "model_inputs",
    "Forecaster",
    "ForecasterConfig",
    "TileGeometry",
    "Rollout",
    "LOSS_KINDS",
    "ensemble_statistics",
    "member_mse",
    "ensemble_stats_loss",
    "fair_crps",
    "lat_weighted_mse",
    "token_loss",
    "multiformer_loss",
    "save_checkpoint",
    "load_checkpoint",
    "assemble_multiformer",
    "apply_compile",
    "apply_activation_checkpointing",
    "TileBlender",
    "edge_taper",
]
