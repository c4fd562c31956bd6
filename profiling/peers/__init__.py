"""Peer loaders fastload is compared with, one adapter per peer, all cutting the same boxes into the same tensors.

Each adapter subclasses :class:`BasePeer`: given a :class:`StoreSpec` (store, fields, geometry, resolved once with
:func:`spec_from_store`) it turns ``(B, 3)`` arrays of boxes ``(t0, y0, x0)`` into
``{field: (B, L, nt, nlat, nlon, tt, tlat, tlon) float32}`` of raw values through its own library. A peer whose
package is missing is reported, not failed: :func:`peer_status` says why.

============================  ==========================================================================
name                          what it does
============================  ==========================================================================
``zarr+DataLoader``           zarr-python slicing per sample in a torch DataLoader with process workers
``atmorep-batch``             AtmoRep's method: whole globe per time window, per-sample Python crop
``xarray+xbatcher``           xr.open_zarr (dask) + an xbatcher BatchGenerator per sample window
``tensorstore``               tensorstore, every box read in flight at once
``zarrs+DataLoader``          as zarr+DataLoader with the zarrs (Rust) codec pipeline
============================  ==========================================================================
"""

from __future__ import annotations

from ._base import BasePeer, FieldSpec, StoreSpec, as_tlyx, spec_from_store, tokenize, x_ranges
from .atmorep import AtmoRepPeer
from .tensorstore_peer import TensorstorePeer
from .xbatcher_peer import XbatcherPeer
from .zarr_dataloader import ZarrDataLoaderPeer, ZarrsDataLoaderPeer

__all__ = [
    "BasePeer",
    "FieldSpec",
    "StoreSpec",
    "PEERS",
    "spec_from_store",
    "peer_status",
    "tokenize",
    "as_tlyx",
    "x_ranges",
    "AtmoRepPeer",
    "TensorstorePeer",
    "XbatcherPeer",
    "ZarrDataLoaderPeer",
    "ZarrsDataLoaderPeer",
]

PEERS: dict[str, type[BasePeer]] = {
    p.name: p
    for p in (ZarrDataLoaderPeer, AtmoRepPeer, XbatcherPeer, TensorstorePeer, ZarrsDataLoaderPeer)
}
"""Every peer by name, in the order the table lists them."""


def peer_status(names: list[str] | None = None, latency_ms: float = 0.0) -> dict[str, str | None]:
    """``{name: None}`` for each peer that can run here, ``{name: reason}`` for each that cannot.

    Raises
    ------
    KeyError
        A name that is not a known peer (the message lists the known ones).
    """
    names = list(PEERS) if names is None else names
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise KeyError(f"unknown peer(s) {unknown}; known: {list(PEERS)}")
    return {n: PEERS[n].unavailable(latency_ms) for n in names}
