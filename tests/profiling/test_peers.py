"""Every peer loader cuts the same tensors as a plain NumPy reference built from zarr reads of the same boxes.

The reference indexes the whole array with broadcast index arrays written straight from the gather contract
(fastload/DESIGN.md), so it shares no reshape/transpose code with the peers. Stores are tiny and made per test
module with zarr-python: the per-variable layout (v3, and v3 sharded) and the AtmoRep layout (v2).
"""

from __future__ import annotations

import numpy as np
import pytest

from profiling.peers import PEERS, FieldSpec, StoreSpec, peer_status, x_ranges

NT, NL, NY, NX = 20, 4, 12, 24
TOKENS, TSIZE = (2, 2, 2), (2, 3, 4)  # box (4, 6, 8)


def _data(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def make_per_variable(path, *, zarr_format: int = 3, shards: bool = False) -> dict[str, np.ndarray]:
    """``t`` (time, level, lat, lon) and ``sp`` (time, lat, lon), tile chunks; returns the written arrays."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    data = {"t": _data(1, (NT, NL, NY, NX)), "sp": _data(2, (NT, NY, NX))}
    dims = {"t": ("time", "level", "latitude", "longitude"), "sp": ("time", "latitude", "longitude")}
    for name, arr in data.items():
        chunks = (2, 1, 4, 8) if arr.ndim == 4 else (2, 4, 8)
        kw = {}
        if shards:
            kw["shards"] = tuple(c * 2 for c in chunks)
        if zarr_format == 3:
            kw["dimension_names"] = dims[name]
        a = root.create_array(name, shape=arr.shape, chunks=chunks, dtype="f4", **kw)
        if zarr_format == 2:
            a.attrs["_ARRAY_DIMENSIONS"] = list(dims[name])
        a[...] = arr
    return data


def make_atmorep(path) -> dict[str, np.ndarray]:
    """AtmoRep layout, zarr v2: ``data`` (time, field, level, lat, lon), chunks of 4 h x all fields/levels/globe."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = _data(3, (NT, 3, NL, NY, NX))
    a = root.create_array("data", shape=data.shape, chunks=(4, 3, NL, NY, NX), dtype="f4")
    a.attrs["_ARRAY_DIMENSIONS"] = ["time", "field", "level", "lat", "lon"]
    a[...] = data
    return {"data": data}


def spec_per_variable(path, zarr_format: int, time_step: int = 1) -> StoreSpec:
    fields = (
        FieldSpec(name="t", array="t", axes=(0, None, 1, 2, 3), field_index=None, level_index=(3, 0, 2),
                  num_tokens=TOKENS, token_size=TSIZE),
        FieldSpec(name="sp", array="sp", axes=(0, None, None, 1, 2), field_index=None, level_index=None,
                  num_tokens=(2, 1, 1), token_size=(2, 6, 8)),
    )  # fmt: skip
    return StoreSpec(path=str(path), fields=fields, time_step=time_step, ny=NY, nx=NX, periodic_x=True,
                     zarr_format=zarr_format)  # fmt: skip


def spec_atmorep(path) -> StoreSpec:
    fields = tuple(
        FieldSpec(name=n, array="data", axes=(0, 1, 2, 3, 4), field_index=i, level_index=lev,
                  num_tokens=TOKENS, token_size=TSIZE)
        for n, i, lev in (("u", 0, (0, 1, 2, 3)), ("q", 2, (1, 3)))
    )  # fmt: skip
    return StoreSpec(path=str(path), fields=fields, time_step=1, ny=NY, nx=NX, periodic_x=True, zarr_format=2)


def reference(data: dict[str, np.ndarray], spec: StoreSpec, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """out[l,a,b,c,i,j,k] = D[t0+(a*tt+i)*dt, lev[l], y0+b*tlat+j, (x0+c*tlon+k) mod NX], by fancy indexing."""
    out = {}
    for f in spec.fields:
        D = data[f.array]
        if f.field_index is not None:
            D = D[:, f.field_index]
        if f.level_index is None:
            D = D[:, None]
        lev = np.arange(1) if f.level_index is None else np.asarray(f.level_index)
        (nt, nlat, nlon), (tt, tlat, tlon) = f.num_tokens, f.token_size
        samples = []
        for t0, y0, x0 in boxes:
            T = t0 + (np.arange(nt)[:, None] * tt + np.arange(tt)[None]) * spec.time_step
            Y = y0 + np.arange(nlat)[:, None] * tlat + np.arange(tlat)[None]
            X = (x0 + np.arange(nlon)[:, None] * tlon + np.arange(tlon)[None]) % spec.nx
            samples.append(D[T.reshape(1, nt, 1, 1, tt, 1, 1), lev.reshape(-1, 1, 1, 1, 1, 1, 1),
                             Y.reshape(1, 1, nlat, 1, 1, tlat, 1), X.reshape(1, 1, 1, nlon, 1, 1, tlon)])  # fmt: skip
        out[f.name] = np.stack(samples)
    return out


# one box across the 0/360 seam, one touching the last row and the end of the time axis, one at the origin
BOXES = [np.array([[3, 2, NX - 3], [0, 0, 0]]), np.array([[NT - 4, NY - 6, 5], [7, 3, 20]])]


def _available(name: str, latency_ms: float = 0.0) -> None:
    reason = peer_status([name], latency_ms)[name]
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("peer_stores")
    out = {}
    out["v3"] = (spec_per_variable(base / "v3.zarr", 3), make_per_variable(base / "v3.zarr", zarr_format=3))
    out["v3-sharded"] = (spec_per_variable(base / "sh.zarr", 3, time_step=2),
                         make_per_variable(base / "sh.zarr", zarr_format=3, shards=True))  # fmt: skip
    out["atmorep-v2"] = (spec_atmorep(base / "ar.zarr"), make_atmorep(base / "ar.zarr"))
    return out


def _run(name: str, spec: StoreSpec, workers: int, latency_ms: float = 0.0, batches=BOXES) -> list[dict]:
    peer = PEERS[name](spec, workers=workers, latency_ms=latency_ms)
    with peer:
        return list(peer.iter_batches(batches))


def _check(got: list[dict], data: dict, spec: StoreSpec, batches=BOXES) -> None:
    assert len(got) == len(batches)
    for g, boxes in zip(got, batches):
        ref = reference(data, spec, boxes)
        assert set(g) == set(ref)
        for k in ref:
            assert g[k].dtype == np.float32
            np.testing.assert_array_equal(g[k], ref[k], err_msg=k)


@pytest.mark.parametrize("name", list(PEERS))
@pytest.mark.parametrize("kind", ["v3", "v3-sharded", "atmorep-v2"])
def test_peer_matches_reference(name, kind, stores):
    _available(name)
    spec, data = stores[kind]
    if kind == "v3-sharded":  # time_step 2 halves the usable time range
        batches = [np.array([[1, 2, NX - 3], [NT - 7, 6, 11]])]
    else:
        batches = BOXES
    _check(_run(name, spec, workers=0, batches=batches), data, spec, batches)


@pytest.mark.parametrize("name", ["zarr+DataLoader", "atmorep-batch"])
def test_process_workers(name, stores):
    _available(name)
    spec, data = stores["atmorep-v2"]
    _check(_run(name, spec, workers=2), data, spec)


@pytest.mark.parametrize("name", list(PEERS))
def test_with_latency(name, stores):
    _available(name, latency_ms=2.0)
    spec, data = stores["v3"]
    _check(_run(name, spec, workers=0, latency_ms=2.0, batches=BOXES[:1]), data, spec, BOXES[:1])


def test_tensorstore_counts_its_reads(stores):
    _available("tensorstore")
    from profiling.chunkmap import batch_decodes, open_chunk_maps

    spec, _ = stores["v3"]
    peer = PEERS["tensorstore"](spec, workers=2)
    with peer:
        list(peer.iter_batches(BOXES))
    c = peer.counters()
    maps = open_chunk_maps(spec)
    reads = sum(len(batch_decodes(spec, maps, b, "per_sample")) for b in BOXES)
    unique = {t for b in BOXES for t in batch_decodes(spec, maps, b, "unique")}
    assert c["cache_hits"] + c["cache_misses"] == reads  # one chunk-cache read per chunk per box
    assert len(unique) <= c["cache_misses"] <= reads  # every chunk decoded at least once
    assert c["decoded_bytes"] == c["cache_misses"] * 2 * 4 * 8 * 4  # chunks (2, 1, 4, 8) and (2, 4, 8) float32
    assert c["stored_bytes"] > 0


def test_zarrs_peer_runs_the_zarrs_pipeline(stores):
    _available("zarrs+DataLoader")
    from profiling.peers.zarr_dataloader import ZarrsDataLoaderPeer, _SampleDataset

    spec, _ = stores["v3"]
    ds = _SampleDataset(spec, BOXES[0], 0.0, ZarrsDataLoaderPeer.pipeline)
    ds[0]
    assert {type(a._async_array.codec_pipeline).__name__ for a in ds._arrays.values()} == {"ZarrsCodecPipeline"}
    assert ZarrsDataLoaderPeer.unavailable(latency_ms=20.0) is not None  # zarrs bypasses LatencyStore


def test_tensorstore_reads_shards_over_http(stores):
    _available("tensorstore", latency_ms=1.0)
    spec, data = stores["v3-sharded"]
    batches = [np.array([[1, 2, NX - 3], [NT - 7, 6, 11]])]  # byte-range reads of inner chunks, across the seam
    _check(_run("tensorstore", spec, workers=2, latency_ms=1.0, batches=batches), data, spec, batches)


def test_missing_peer_is_reported_not_failed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorstore" else real(n, *a))
    status = peer_status()
    assert status["tensorstore"] == "not installed: tensorstore"
    assert status["zarr+DataLoader"] is None
    with pytest.raises(KeyError, match="unknown peer"):
        peer_status(["nope"])


def test_x_ranges_split_at_the_seam():
    assert x_ranges(20, 8, 24, True) == [(20, 24), (0, 4)]
    assert x_ranges(0, 8, 24, True) == [(0, 8)]
    with pytest.raises(ValueError, match="regional"):
        x_ranges(20, 8, 24, False)


def test_delaying_http_server(tmp_path):
    import time
    import urllib.error
    import urllib.request

    from profiling.peers._http import DelayingHTTPServer

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "c").write_bytes(bytes(range(100)))
    (tmp_path.parent / "secret").write_bytes(b"x")
    with DelayingHTTPServer(str(tmp_path), latency_ms=30) as srv:

        def get(path, rng=None):
            req = urllib.request.Request(srv.url + path, headers={"Range": rng} if rng else {})
            with urllib.request.urlopen(req) as r:
                return r.status, r.read()

        t = time.perf_counter()
        assert get("/a/c") == (200, bytes(range(100)))
        assert time.perf_counter() - t >= 0.03
        assert get("/a/c", "bytes=10-19") == (206, bytes(range(10, 20)))
        assert get("/a/c", "bytes=-5") == (206, bytes(range(95, 100)))
        assert get("/a/c", "bytes=90-") == (206, bytes(range(90, 100)))
        for bad in ("/a/missing", "/../secret", "/a"):
            with pytest.raises(urllib.error.HTTPError) as e:
                get(bad)
            e.value.close()
            assert e.value.code == 404
