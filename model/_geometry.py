"""The Forecaster's rollout inputs besides the batch: the tile geometry and the lead time, checked against a state.

Why a module of its own: :meth:`~model.forecaster.Forecaster.step`, ``rollout``, ``rollout_loss`` and ``decode``
all take a state ``(B, W, T, Q, C)``, a :class:`TileGeometry` and (but ``decode``) a lead time, and a geometry or
lead time that does not fit the state used to fail deep in torch: a raw broadcast error for a wrong tile count, an
``IndexError`` (on a GPU, a device-side assert that poisons the CUDA context) for a neighbour index ``>= T``, a raw
``expand`` error for a lead time of another batch size. :class:`RolloutCheck` checks them once per call, before the
first step, and names the argument, what it expected and what it got.

Host syncs: shapes, dtypes and devices are host metadata. The neighbour *values* and whether the tile centres are
finite are not: on an accelerator, reading them is a host sync. On an accelerator :class:`RolloutCheck` reads them
once per geometry (it remembers the last three tensors it checked, their version counters, which in-place changes
bump, and their data pointers), so a geometry used for every step of every rollout, as a training loop does, costs
one read in all, not one per step; a write through ``.data`` does not bump the version and is not seen there. A
geometry on the CPU is read at every call (no sync; its copy to the state's device, if any, is the caller's), and
so are inference tensors, which have no version counter. (One geometry is remembered: a caller alternating between
two on an accelerator pays a read per call.)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import torch

from ._config import ModelConfigError

__all__ = ["TileGeometry", "RolloutCheck", "lead_hours"]

_NO_LEAD = object()  # RolloutCheck(...) without a lead time (decode)


class TileGeometry(NamedTuple):
    """Where the tiles of the global tiling sit: centres ``lat``, ``lon`` (T,) degrees; ``neighbors`` (T, K).

    ``lat`` and ``lon`` are floating-point tensors on the model's device; ``neighbors`` an integer tensor of tile
    indices in ``[0, T)``, best on the model's device too (elsewhere, each decode copies it there). Its values are
    checked with one host read the first time a tensor is used, none while the same tensor is used again.
    """

    lat: torch.Tensor
    lon: torch.Tensor
    neighbors: torch.Tensor


def _got(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {str(x.dtype).removeprefix('torch.')} tensor of shape {tuple(x.shape)} on {x.device}"
    return f"a {type(x).__name__}"


def lead_hours(lead_time: float | torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float32 lead times in hours on the state's device, from a number or a ``()``, ``(1,)`` or ``(B,)``
    tensor (checked by :meth:`RolloutCheck.lead`)."""
    if isinstance(lead_time, torch.Tensor):
        return lead_time.to(state.device).float().expand(state.shape[0])
    return torch.full((state.shape[0],), float(lead_time), device=state.device)


class RolloutCheck:
    """Checks a rollout's state, geometry and lead time (host metadata; see the module notes for the one read)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        # last checked, per part (neighbours; the centres lat, lon): (tensors, key), or None
        self._seen: tuple[tuple | None, tuple | None] = (None, None)

    def __call__(self, where: str, config: Any, state: Any, geometry: Any, lead_time: Any = _NO_LEAD) -> None:
        """:class:`ModelConfigError` naming ``where`` and the argument unless ``state`` fits ``config`` and
        ``geometry`` and ``lead_time`` (where given: ``decode`` takes none) fit ``state``."""
        self.state(state, config, where)
        if lead_time is not _NO_LEAD:
            self.lead(lead_time, state.shape[0], where)
        self.geometry(geometry, state, where)

    def state(self, state: Any, config: Any, where: str) -> None:
        """``state`` is ``(B, W, T, Q, C)`` with the config's ``input_window``, ``latent_queries``, ``latent_dim``."""
        want = (config.input_window, config.latent_queries, config.latent_dim)
        if not isinstance(state, torch.Tensor) or state.dim() != 5 or (state.shape[1], *state.shape[3:]) != want:
            raise ModelConfigError(
                f"{where}: state: expected a tensor (B, W, T, Q, C) with W, Q, C = {want} (input_window, "
                f"latent_queries, latent_dim; Forecaster.initial_state makes one), got {_got(state)}"
            )

    def lead(self, lead_time: Any, batch: int, where: str) -> None:
        """``lead_time`` is a finite number, or a real tensor of shape ``()``, ``(1,)`` or ``(batch,)``."""
        if isinstance(lead_time, torch.Tensor):
            ok = lead_time.dim() <= 1 and lead_time.numel() in (1, batch) and lead_time.dtype != torch.bool \
                and not lead_time.is_complex()
        else:
            ok = isinstance(lead_time, numbers.Real) and not isinstance(lead_time, bool) \
                and math.isfinite(float(lead_time))
        if not ok:
            got = repr(lead_time) if isinstance(lead_time, numbers.Real) else _got(lead_time)
            raise ModelConfigError(
                f"{where}: lead_time: expected hours per step, a finite number or a real tensor of shape (), (1,) or "
                f"(B,) = ({batch},) (the state's batch size), got {got}"
            )

    def geometry(self, geometry: Any, state: torch.Tensor, where: str) -> None:
        """``geometry`` is a :class:`TileGeometry` of the state's ``T`` tiles: ``lat``, ``lon`` ``(T,)`` finite, on
        the state's device, ``neighbors`` ``(T, K)`` integer indices in ``[0, T)``."""
        t = state.shape[2]
        if not isinstance(geometry, tuple) or len(geometry) != 3:
            raise ModelConfigError(f"{where}: geometry: expected a TileGeometry(lat, lon, neighbors), got "
                                   f"{_got(geometry)}")
        lat, lon, nb = geometry
        for name, x in (("lat", lat), ("lon", lon)):
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != (t,) or not x.is_floating_point():
                raise ModelConfigError(
                    f"{where}: geometry.{name}: expected a floating-point tensor of shape (T,) = ({t},), one tile "
                    f"centre per tile of the state (B, W, T, Q, C), got {_got(x)}"
                )
            if x.device != state.device:
                raise ModelConfigError(
                    f"{where}: geometry.{name}: on {x.device}, the state on {state.device}: move the geometry to the "
                    f"model's device (TileGeometry(*(x.to(device) for x in geometry)))"
                )
        integer = isinstance(nb, torch.Tensor) and not nb.is_floating_point() and not nb.is_complex() \
            and nb.dtype != torch.bool
        if not integer or nb.dim() != 2 or nb.shape[0] != t:
            raise ModelConfigError(
                f"{where}: geometry.neighbors: expected an integer tensor of shape (T, K) with T = {t} (the state's "
                f"tiles), got {_got(nb)}"
            )
        # the cache is trusted only where a read costs a sync (an accelerator) and the version counters exist
        # (no inference tensor); data_ptr catches `x.data = other`, nothing catches writes through .data. The
        # neighbours and the tile centres are remembered apart: neighbours may live on the CPU (read at every call,
        # no sync) while the centres sit on the state's device (read once per tensor pair there)
        keys = (self._key((nb,), t), self._key((lat, lon), t))
        fresh = [k is None or s is None or s[1] != k or any(a is not b for a, b in zip(s[0], x))
                 for k, s, x in zip(keys, self._seen, ((nb,), (lat, lon)))]
        if not any(fresh) or torch.compiler.is_compiling():
            return  # these very tensors, unchanged, were checked against T tiles (or nothing can be read now)
        # sync point: on an accelerator only, once per neighbours tensor and once per pair of centres (see the
        # module notes); one read where both need one on the same device. Tile centres must be finite: a NaN one
        # turned every tile of every sample NaN a few layers on, naming nothing
        parts = []  # 1-D int64 tensors: the neighbours' range, the centres' non-finite counts
        if fresh[0]:
            parts.append(torch.stack([nb.min(), nb.max()]).long() if nb.numel()
                         else torch.zeros(2, dtype=torch.long, device=nb.device))
        if fresh[1]:
            parts.append(torch.stack([(~torch.isfinite(x)).sum() for x in (lat, lon)]).long())
        if len({x.device for x in parts}) == 1:
            got = torch.cat(parts).tolist()
        else:
            got = [v for x in parts for v in x.tolist()]
        if fresh[0]:
            lo, hi, got = got[0], got[1], got[2:]
            if nb.numel() and (lo < 0 or hi >= t):  # (no neighbours: nothing to be out of range)
                bad = ((nb < 0) | (nb >= t)).nonzero()[0].tolist()
                raise ModelConfigError(
                    f"{where}: geometry.neighbors: expected tile indices in [0, {t - 1}] (the state has T = {t} "
                    f"tiles), got values in [{lo}, {hi}] (first: neighbors[{bad[0]}, {bad[1]}] = "
                    f"{int(nb[bad[0], bad[1]])})"
                )
        if fresh[1]:
            for name, x, n in (("lat", lat, got[0]), ("lon", lon, got[1])):
                if n:
                    i = int((~torch.isfinite(x)).nonzero()[0, 0])
                    raise ModelConfigError(
                        f"{where}: geometry.{name}: expected finite tile centres in degrees, got {n} not finite "
                        f"(first: {name}[{i}] = {float(x[i])})"
                    )
        self._seen = tuple(s if not f else (None if k is None else (x, k))
                           for s, f, k, x in zip(self._seen, fresh, keys, ((nb,), (lat, lon))))

    @staticmethod
    def _key(tensors: tuple[torch.Tensor, ...], t: int) -> tuple | None:
        """What identifies ``tensors`` unchanged, or None where they are read at every call (on the CPU: no sync; an
        inference tensor: no version counter)."""
        if tensors[0].device.type == "cpu" or any(x.is_inference() for x in tensors):
            return None
        return tuple((x._version, x.data_ptr()) for x in tensors), t
