"""Synthetic, smooth weather-like data for the model tests, tokenised here with plain tensor reshapes.

Fields are sums of a few random low-wavenumber waves on a periodic lat/lon box, so they are smooth (a masked token
can be inferred from its neighbours) and have known dynamics (waves advect eastwards at a fixed speed).
"""

from __future__ import annotations

import math

import torch

from model import MultiformerConfig, TileGeometry
from model.multiformer import FieldSpec


def waves(g: torch.Generator, b: int, levels: int, t: int, ny: int, nx: int, *, shift: float = 0.0, modes: int = 3,
          params: tuple | None = None) -> tuple[torch.Tensor, tuple]:  # fmt: skip
    """(b, levels, t, ny, nx) field of ``modes`` waves; time step k is moved ``k * shift`` points east.

    Returns the field and its random parameters (to draw the same waves again at a later time).
    """
    if params is None:
        kx = torch.randint(1, 3, (b, levels, modes), generator=g).float()
        ky = torch.randint(0, 2, (b, levels, modes), generator=g).float()
        amp = torch.randn(b, levels, modes, generator=g) / math.sqrt(modes / 2)
        phase = torch.rand(b, levels, modes, generator=g) * 2 * math.pi
        params = (kx, ky, amp, phase)
    kx, ky, amp, phase = params
    y = torch.arange(ny).float().view(1, 1, 1, 1, ny, 1)
    x = torch.arange(nx).float().view(1, 1, 1, 1, 1, nx)
    k = torch.arange(t).float().view(1, 1, 1, t, 1, 1)
    arg = (2 * math.pi * kx[..., None, None, None] * (x - shift * k) / nx
           + math.pi * ky[..., None, None, None] * y / ny + phase[..., None, None, None])  # fmt: skip
    return (amp[..., None, None, None] * torch.cos(arg)).sum(2), params


def tokenise(field: torch.Tensor, spec: FieldSpec) -> torch.Tensor:
    """(B, L, T, Y, X) -> (B, L, nt, nlat, nlon, tt, tlat, tlon), the sampler's layout."""
    (nt, ny, nx), (tt, ty, tx) = spec.num_tokens, spec.token_size
    b, lv = field.shape[:2]
    return field.reshape(b, lv, nt, tt, ny, ty, nx, tx).permute(0, 1, 2, 4, 6, 3, 5, 7).contiguous()


def token_meta(
    spec: FieldSpec, b: int, lat0: torch.Tensor, lon0: torch.Tensor, dlat: float, dlon: float
) -> dict:
    """Per-token metadata (B, L, nt, nlat, nlon): token-centre lat/lon from each sample's corner (lat0, lon0)."""
    (nt, ny, nx), (tt, ty, tx) = spec.num_tokens, spec.token_size
    grid = (b, spec.num_levels, nt, ny, nx)
    iy = (torch.arange(ny).float() * ty + (ty - 1) / 2).view(1, 1, 1, ny, 1)
    ix = (torch.arange(nx).float() * tx + (tx - 1) / 2).view(1, 1, 1, 1, nx)
    lat = (lat0.view(-1, 1, 1, 1, 1) - iy * dlat).expand(grid)
    lon = torch.remainder(lon0.view(-1, 1, 1, 1, 1) + ix * dlon, 360.0).expand(grid)
    hours = (torch.arange(nt).float() * tt * 6.0).view(1, 1, nt, 1, 1)
    return {
        "time_of_day": torch.remainder(hours, 24.0).expand(grid).contiguous(),
        "day_of_year": (100.0 + hours / 24.0).expand(grid).contiguous(),
        "lat": lat.contiguous(),
        "lon": lon.contiguous(),
        "level": torch.tensor(spec.levels).view(1, -1, 1, 1, 1).expand(grid).contiguous(),
    }


def multiformer_batch(
    config: MultiformerConfig, b: int, g: torch.Generator, mask_ratio: float = 0.5, offset: float = 1.0
) -> dict:
    """A batch for every field of ``config``: smooth waves plus a random offset per sample and level (std
    ``offset``, as a local anomaly that the visible tokens reveal), random masks, metadata of random boxes."""
    batch = {}
    lat0 = torch.rand(b, generator=g) * 60.0
    lon0 = torch.rand(b, generator=g) * 360.0
    for spec in config.fields:
        shape = [n * s for n, s in zip(spec.num_tokens, spec.token_size)]
        field, _ = waves(g, b, spec.num_levels, *shape, shift=0.5)
        field = field + offset * torch.randn(b, spec.num_levels, 1, 1, 1, generator=g)
        grid = (b, spec.num_levels, *spec.num_tokens)
        batch[spec.name] = {
            "tokens": tokenise(field, spec),
            "meta": token_meta(spec, b, lat0, lon0, 1.0, 1.0),
            "mask": torch.rand(grid, generator=g) < mask_ratio,
        }
    return batch


def ring_tiling(nrows: int, ncols: int, tile_lat: float, tile_lon: float) -> TileGeometry:
    """Tiles on ``nrows`` latitude bands x ``ncols`` longitudes (wrapping); neighbours west, east, north, south."""
    r = torch.arange(nrows).repeat_interleave(ncols)
    c = torch.arange(ncols).repeat(nrows)
    west = r * ncols + (c - 1) % ncols
    east = r * ncols + (c + 1) % ncols
    north = ((r - 1).clamp(min=0)) * ncols + c
    south = ((r + 1).clamp(max=nrows - 1)) * ncols + c
    lat = 90.0 - (r.float() + 0.5) * tile_lat
    lon = c.float() * tile_lon
    return TileGeometry(lat=lat, lon=lon, neighbors=torch.stack([west, east, north, south], dim=1))


def tile_index(spec: FieldSpec, nrows: int, ncols: int, stride_lon: int, ny: int, nx: int) -> torch.Tensor:
    """Global flat point index ``(level * ny + y) * nx + x`` of every value of every tile:
    (T, L, nt, nlat, nlon, tt, tlat, tlon) for tiles of one time step (nt = tt = 1), longitude wrapping."""
    (nt, tny, tnx), (tt, ty, tx) = spec.num_tokens, spec.token_size
    assert nt == 1 and tt == 1
    hy, hx = tny * ty, tnx * tx
    r = torch.arange(nrows).repeat_interleave(ncols).view(-1, 1, 1, 1)
    c = torch.arange(ncols).repeat(nrows).view(-1, 1, 1, 1)
    lev = torch.arange(spec.num_levels).view(1, -1, 1, 1)
    y = r * hy + torch.arange(hy).view(1, 1, -1, 1)
    x = (c * stride_lon + torch.arange(hx).view(1, 1, 1, -1)) % nx
    flat = (lev * ny + y) * nx + x  # (T, L, hy, hx)
    t = flat.shape[0]
    return flat.reshape(t, spec.num_levels, 1, tny, ty, tnx, tx).permute(0, 1, 2, 3, 5, 4, 6).unsqueeze(5)


def cut_tiles(field: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, L, ny, nx) global field -> (B, T, L, nt, nlat, nlon, tt, tlat, tlon) tiles through ``index``."""
    b = field.shape[0]
    return field.reshape(b, -1)[:, index.reshape(-1)].reshape(b, *index.shape)
