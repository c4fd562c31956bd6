"""fastload.Loader over several streams at once (issue 8): an hourly model-level atmosphere, a daily curvilinear
ocean with land and a 6-hourly unstructured mesh through ONE loader (one plan, one cache budget, one prefetch
ring); every batch checked against plain NumPy on the written arrays (the mapping recomputed by brute force, as in
``test_streams``), coordinates inside the sample's box and window, padding masks, per-stream I/O counters, exact
resume, bad input; a mesh store on its own through the loader."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError
from fastload.loader import Loader
from fastload.reader import IOStats
from fastload.sampling.geometry import box_to_tokens
from fastload.store import open_store
from fastload.streams import MultiStream, extract_streams

from .stores_multi import make_atmosphere, make_latlon_xr, make_mesh, make_ocean
from .test_mesh import brute_bin
from .test_streams import (
    BOXES,
    H6,
    config,
    crop,
    nearest,
    ocean_box,
    previous,
    region_of,
    sea_config,
    xarray_at,
)

STREAMS = ("era5", "ocean", "fesom")
STREAM_OF = {"t": "era5", "sp": "era5", "thetao": "ocean", "zos": "ocean", "temp": "fesom", "ssh": "fesom"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("multi_loader")
    paths = {"era5": d / "a.zarr", "ocean": d / "o.zarr", "fesom": d / "m.zarr"}
    truth = {"era5": make_atmosphere(paths["era5"]), "ocean": make_ocean(paths["ocean"]),
             "fesom": make_mesh(paths["fesom"])}
    return paths, truth


pytestmark = pytest.mark.usefixtures("nothing_left")


def reference(paths, truth, cfg: SamplingConfig, boxes: np.ndarray) -> tuple[dict, dict]:
    """Plain NumPy tokens of every field at ``boxes`` (time_step 2, box 6 x 6 x 8) and the mesh fields' slot masks."""
    mesh = open_store(paths["fesom"]).grid
    atmo_t, ocean_t, mesh_t = truth["era5"]["time"], truth["ocean"]["time"], truth["fesom"]["time"]
    out = {f.name: np.empty((len(boxes), *f.sample_shape), np.float32) for f in cfg.fields}
    valid = {}
    for s, (t0, y0, x0) in enumerate(np.asarray(boxes).tolist()):
        t = t0 + 2 * np.arange(6)
        taus = atmo_t[t]
        reg = region_of(truth, y0, x0)
        oy, ox = ocean_box(truth, reg)
        to = [previous(ocean_t, tau) for tau in taus]
        tm = [nearest(mesh_t, tau) for tau in taus]
        for f in cfg.fields:
            lev = {"t": [0, 3], "thetao": [0, 2], "temp": [0]}.get(f.name)
            if f.stream == "era5":
                out[f.name][s] = box_to_tokens(crop(truth["era5"][f.name], t, lev, y0, x0, 6, 8), f.token_size)
            elif f.stream == "ocean":
                out[f.name][s] = box_to_tokens(crop(truth["ocean"][f.name], to, lev, oy, ox, 6, 8), f.token_size)
            else:
                nt, nlat, nlon = f.num_tokens
                tt, tlat, tlon = f.token_size
                nodes, _ = brute_bin(mesh.lat, mesh.lon, reg, nlat, nlon, tlat * tlon)
                v = truth["fesom"][f.name][tm]
                v = v[:, lev] if lev else v[:, None]
                want = np.where(nodes >= 0, v[:, :, np.maximum(nodes, 0)], 0)  # (T, L, nlat, nlon, K)
                out[f.name][s] = want.reshape(nt, tt, -1, nlat, nlon, tlat, tlon).transpose(2, 0, 3, 4, 1, 5, 6)
                valid.setdefault(f.name, []).append(nodes >= 0)
    return out, {k: np.stack(v) for k, v in valid.items()}


def test_one_loader_serves_three_streams_equal_to_numpy(stores):
    paths, truth = stores
    cfg = config(paths)
    # streams given as a partial mapping (an open Store for one, the config's paths for the others)
    with Loader({"ocean": open_store(paths["ocean"])}, cfg, batch_size=3, samples_per_epoch=9, workers=2,
                cache_bytes=1 << 16, device="cpu", seed=7) as loader:
        assert loader.multi is not None and len(loader) == 3
        boxes = loader.epoch_boxes(0)
        assert np.isin(boxes[:, 0], loader.multi.valid_t0).all()
        seen = []
        for batch in loader:
            b = batch.boxes.numpy()
            seen.append(b)
            want, valid = reference(paths, truth, cfg, b)
            for name, x in batch.fields.items():
                assert x.shape == (3, *cfg.field(name).sample_shape) and x.dtype == torch.float32
                assert np.array_equal(x.numpy(), want[name], equal_nan=True), (batch.index, name)
            for name in ("temp", "ssh"):  # padding masks: the slots the brute-force binning filled
                m = batch.meta[name]
                assert m["valid"].dtype == torch.bool and np.array_equal(m["valid"].numpy(), valid[name])
                assert np.all(batch.fields[name].numpy()[np.broadcast_to(
                    ~valid[name].reshape(3, 1, 1, *valid[name].shape[1:3], 1, *cfg.field(name).token_size[1:]),
                    batch.fields[name].shape)] == 0)  # padding slots hold 0
            for name in ("thetao", "zos"):  # a box on the ocean grid: every slot holds a point
                assert batch.meta[name]["valid"].all()
            assert "valid" not in batch.meta["t"]  # the reference stream is structured
        assert np.array_equal(np.concatenate(seen), boxes)


def test_explicit_boxes_coordinates_lie_in_box_and_window(stores):
    paths, truth = stores
    cfg = config(paths)
    with Loader(None, cfg, boxes=BOXES, batch_size=2, workers=1, device="cpu") as loader:
        batches = list(loader)
        ms = loader.multi
    assert len(batches) == 2
    pl = ms.place(BOXES)
    want, valid = reference(paths, truth, cfg, BOXES)
    assert not valid["temp"][1].all()  # the south-polar box has cells with fewer nodes than slots
    for k, batch in enumerate(batches):
        for i in range(2):
            s = 2 * k + i
            lf, ll, lo0, width = region_of(truth, *BOXES[s, 1:])
            lo, hi = min(lf, ll), max(lf, ll)
            start, end = (np.int64(v) for v in pl.window[s].astype("datetime64[ns]").astype(np.int64))
            for name, x in batch.fields.items():
                assert np.array_equal(x[i].numpy(), want[name][s], equal_nan=True), (s, name)
                m = batch.meta[name]
                assert torch.all((m["lat"][i] > lo) & (m["lat"][i] < hi)), name
                assert torch.all((m["lon"][i] - lo0) % 360 < width), name
                slack = {"era5": 0, "ocean": np.timedelta64(1, "D"), "fesom": H6 // 2}[STREAM_OF[name]]
                slack = int(np.timedelta64(slack, "ns").astype(np.int64))
                assert torch.all((m["time"][i] >= start - slack) & (m["time"][i] < end)), name
            for name in ("temp", "ssh"):
                m = batch.meta[name]
                ok = m["valid"][i]
                assert np.array_equal(ok.numpy(), valid[name][s])
                assert torch.all((m["point_lat"][i][ok] >= lo) & (m["point_lat"][i][ok] <= hi))
                assert torch.all((m["point_lon"][i][ok] - lo0) % 360 < width)
                assert torch.isnan(m["point_lat"][i][~ok]).all()


def test_a_config_file_with_stream_paths(stores):
    paths, truth = stores
    cfg = config(paths)
    rel = dataclasses.replace(cfg, streams=tuple(dataclasses.replace(st, path=paths[st.name].name)
                                                 for st in cfg.streams))
    toml = paths["era5"].parent / "multi.toml"  # stream paths relative to the config file
    toml.write_text(rel.to_toml())
    with Loader(None, toml, boxes=BOXES[:2], batch_size=2, workers=1, device="cpu") as loader:
        batch = next(iter(loader))
    assert loader.multi.path == tuple(str(paths[n]) for n in STREAMS)
    want, _ = reference(paths, truth, cfg, BOXES[:2])
    for name, x in batch.fields.items():
        assert np.array_equal(x.numpy(), want[name], equal_nan=True), name


def test_per_stream_counters_add_up(stores):
    paths, _ = stores
    cfg = config(paths)
    with Loader(None, cfg, batch_size=4, samples_per_epoch=16, workers=2, cache_bytes=1 << 17, device="cpu",
                seed=3) as loader:
        ms = loader.multi
        useful = ms.useful_bytes_by_stream
        before = ms.stream_counters()
        batches = list(loader)
        after = ms.stream_counters()
        totals = loader.stats
    assert sum(useful.values()) == ms.useful_bytes_per_sample and all(v > 0 for v in useful.values())
    for batch in batches:
        s = batch.stats
        assert set(s.streams) == set(STREAMS)
        for key in ("chunks", "hits", "misses", "bytes_stored", "bytes_decoded", "bytes_useful", "retries"):
            assert sum(getattr(x, key) for x in s.streams.values()) == getattr(s, key), key
        for key in ("fetch_s", "decode_s"):
            assert np.isclose(sum(getattr(x, key) for x in s.streams.values()), getattr(s, key), rtol=1e-9), key
        assert 0 < sum(x.gather_s for x in s.streams.values()) <= s.gather_s
        for name, x in s.streams.items():
            assert x.chunks == x.hits + x.misses and x.chunks > 0
            assert x.samples == s.samples == 4 and x.bytes_useful == 4 * useful[name]
            assert x.bytes_decoded >= x.bytes_stored > 0 or x.misses == 0
    for name in STREAMS:  # the loader's totals and the streams' own counters agree
        t = totals.streams[name]
        assert t.chunks == sum(b.stats.streams[name].chunks for b in batches)
        assert t.misses == after[name]["decodes"] - before[name]["decodes"]  # every miss decoded once
        assert t.bytes_decoded == after[name]["bytes_decoded"] - before[name]["bytes_decoded"]
        assert t.bytes_stored == after[name]["bytes_stored"] - before[name]["bytes_stored"]
    assert sum(totals.streams[n].hits for n in STREAMS) > 0  # chunks shared across batches were kept decoded
    merged = IOStats().add(batches[0].stats).add(batches[1].stats)
    assert merged.streams["ocean"].chunks == batches[0].stats.streams["ocean"].chunks + \
        batches[1].stats.streams["ocean"].chunks
    assert batches[0].stats.as_dict()["streams"]["fesom"]["chunks"] == batches[0].stats.streams["fesom"].chunks


def test_multi_stream_resume_is_exact(stores):
    paths, _ = stores
    cfg = config(paths)
    kw = dict(batch_size=2, samples_per_epoch=10, samples_per_window=2, workers=2, device="cpu", seed=11)
    with Loader(None, cfg, **kw) as a:
        a.set_epoch(1)
        it = iter(a)
        head = [next(it) for _ in range(2)]
        state = a.state_dict()
        rest = list(it)
        again = list(a)  # the next epoch draws other places
    assert state["batch"] == 2 and len(rest) == 3 and again[0].epoch == 2
    assert not np.array_equal(again[0].boxes.numpy(), head[0].boxes.numpy())
    with Loader(None, cfg, **kw) as b:
        b.load_state_dict(state)
        resumed = list(b)
    assert [x.index for x in resumed] == [x.index for x in rest] == [2, 3, 4]
    for x, y in zip(rest, resumed):
        assert torch.equal(x.boxes, y.boxes)
        for name in cfg.field_names:
            assert torch.equal(x.fields[name].view(torch.int32), y.fields[name].view(torch.int32)), name
            for k, v in x.meta[name].items():
                assert torch.equal(v, y.meta[name][k]) or (v.is_floating_point() and torch.allclose(
                    v, y.meta[name][k], equal_nan=True)), (name, k)
    with pytest.raises(ConfigError, match="saved seed"):
        with Loader(None, cfg, **{**kw, "seed": 12}) as c:
            c.load_state_dict(state)


def test_normalised_streams_load_only_the_epochs_months(stores):
    paths, truth = stores

    class MonthNorm:
        """Coefficients that differ by calendar month, level and grid point; records the months asked for."""

        def __init__(self, shape):
            self.shape, self.asked = shape, []

        def check(self, store, config):
            pass

        def months_present(self, field):
            return tuple(range(12))

        def coefficients(self, field, mode, levels, months):
            self.asked.append((field, tuple(months)))
            L = 1 if levels is None else len(levels)
            sp = (1, 1) if mode == "global" else self.shape
            m = np.asarray(months, np.float64)[:, None, None, None]
            grid = np.arange(int(np.prod(sp))).reshape(1, 1, *sp) * 1e-3
            mean = 200.0 + 10.0 * m + np.arange(L)[None, :, None, None] + grid
            return mean.astype(np.float32), np.broadcast_to(3.0 + 0.5 * grid, mean.shape).astype(np.float32)

    flds = tuple(dataclasses.replace(f, normalization={"t": "global", "thetao": "local", "temp": "global"}
                                     .get(f.name, "none")) for f in config(paths).fields)
    cfg = config(paths, flds=flds)
    norms = {"era5": MonthNorm((19, 36)), "ocean": MonthNorm((17, 36)), "fesom": MonthNorm((1, 1))}
    with Loader(None, cfg, boxes=BOXES, batch_size=4, workers=1, device="cpu", normalizer=norms) as loader:
        assert all(n.asked == [] for n in norms.values())  # nothing loaded before an epoch starts
        batch = next(iter(loader))
        months = loader.coefficient_months
        ms = loader.multi
    # the ocean record starts on 31 December (months 11 and 0) but these windows map to January only
    assert {k: v.tolist() for k, v in months.items()} == {"era5": [0], "ocean": [0], "fesom": [0]}
    assert norms["ocean"].asked == [("thetao", (0,))] and norms["era5"].asked == [("t", (0,))]
    assert sorted(np.unique(ms.by_name["ocean"].store.time.astype("datetime64[M]").astype(int) % 12)) == [0, 11]
    want = extract_streams(ms, BOXES)  # all of each record's months, through the streams' own path
    for name in cfg.field_names:
        assert np.allclose(batch.fields[name].numpy(), want[name].data, equal_nan=True, rtol=1e-6), name
    raw, _ = reference(paths, truth, config(paths), BOXES)
    t_mean = 200.0 + 10.0 * 0 + np.arange(2)[None, :, None, None, None, None, None, None]
    assert np.allclose(batch.fields["t"].numpy(), (raw["t"] - t_mean) / 3.0, rtol=1e-5)


def test_each_streams_declared_missing_values_are_logged(tmp_path, caplog):
    """As for one store, a multi-stream loader logs the fields it masks, one line per stream that has any, naming
    the stream, its store and the values as stored (it masked them but said nothing)."""
    import zarr

    paths = {"era5": tmp_path / "a.zarr", "ocean": tmp_path / "o.zarr", "fesom": tmp_path / "m.zarr"}
    make_atmosphere(paths["era5"]), make_ocean(paths["ocean"]), make_mesh(paths["fesom"])
    zarr.open_group(paths["ocean"], mode="r+")["zos"].attrs["missing_value"] = -999.0
    zarr.open_group(paths["fesom"], mode="r+")["ssh"].attrs["missing_value"] = [1000.0, -1.0]
    with caplog.at_level("INFO", logger="fastload"):
        Loader(None, config(paths), batch_size=3, samples_per_epoch=3, device="cpu", seed=7).close()
    said = sorted(r.getMessage() for r in caplog.records if "declared missing values" in r.getMessage())
    assert len(said) == 2, said
    assert f"{paths['fesom']} (stream 'fesom'): {{'ssh': [1000.0, -1.0]}}" in said[0]
    assert f"{paths['ocean']} (stream 'ocean'): {{'zos': [-999.0]}}" in said[1]


def test_bad_multi_stream_loader_settings(stores, tmp_path):
    paths, _ = stores
    cfg = config(paths)
    with pytest.raises(ConfigError, match="mode = 'process': multi-stream configs are read with mode = 'thread'"):
        Loader(None, cfg, mode="process")
    with pytest.raises(ConfigError, match=r"the config has streams \['era5', 'ocean', 'fesom'\]; pass store=None"):
        Loader(str(paths["era5"]), cfg)
    with pytest.raises(ConfigError, match="unknown stream"):
        Loader({"atmos": paths["era5"]}, cfg)
    with pytest.raises(ConfigError, match="normalizer= as a mapping"):
        Loader(None, cfg, normalizer="norm.zarr")
    with pytest.raises(ConfigError, match=r"t0 = 70 is outside"):
        Loader(None, cfg, boxes=[[10, 3, 3], [70, 3, 3]])
    flds = tuple(dataclasses.replace(f, normalization="global") if f.name == "temp" else f for f in cfg.fields)
    with pytest.raises(ConfigError, match="stream 'fesom': fields \\['temp'\\] normalise but the stream has no"):
        Loader(None, config(paths, flds=flds))
    with pytest.raises(ConfigError, match="a config without streams reads one store"):
        Loader(None, SamplingConfig(fields=(FieldConfig(name="t", num_tokens=(1, 1, 1), token_size=(1, 1, 1)),)))


def test_a_mesh_store_alone_through_the_loader(stores):
    paths, truth = stores
    fields = (FieldConfig(name="temp", levels=(100.0, 5.0), num_tokens=(2, 2, 3), token_size=(2, 2, 2),
                          normalization="none"),
              FieldConfig(name="ssh", num_tokens=(1, 1, 1), token_size=(4, 4, 6), normalization="none"))
    cfg = SamplingConfig(fields=fields, time_step=3, centers="coslat")
    store = open_store(paths["fesom"])
    with Loader(store, cfg, batch_size=3, samples_per_epoch=9, workers=2, device="cpu", seed=2) as loader:
        tok = loader.tokenizer
        assert tok.kind == "mesh" and loader.extent == tok.extent and loader.extent.nx == 2 * loader.extent.ny
        batches = list(loader)
        bound = tok.sample_chunk_bound()  # the cache is sized by the mesh's own bound
        assert set(loader._backend.capacity) == set(bound)
        assert all(loader._backend.capacity[a] >= bound[a] for a in bound)
    assert len(batches) == 3
    res = tok.resolution
    for batch in batches:
        for s, (t0, y0, x0) in enumerate(batch.boxes.numpy().tolist()):
            for f in fields:
                nt, nlat, nlon = f.num_tokens
                tt, tlat, tlon = f.token_size
                lev = [1, 0] if f.name == "temp" else [0]
                data = truth["fesom"][f.name] if f.name == "temp" else truth["fesom"][f.name][:, None]
                region = (90 - res * y0, 90 - res * (y0 + nlat * tlat), res * x0, res * nlon * tlon)
                nodes, count = brute_bin(store.grid.lat, store.grid.lon, region, nlat, nlon, tlat * tlon)
                t = t0 + np.arange(nt * tt) * 3
                want = data[t][:, lev][:, :, np.maximum(nodes, 0)]
                want = np.where(nodes >= 0, want, 0).reshape(nt, tt, len(lev), nlat, nlon, tlat, tlon)
                assert np.array_equal(batch[f.name][s].numpy(), want.transpose(2, 0, 3, 4, 1, 5, 6)), (f.name, s)
                m = batch.meta[f.name]
                assert np.array_equal(m["valid"][s].numpy(), nodes >= 0)
                assert np.array_equal(m["count"][s].numpy(), count)
    assert batches[0].stats.streams is None  # one store: no per-stream breakdown


def test_an_arena_holding_its_whole_array_never_splits_a_batch(stores):
    from fastload._backend import LoadSpec, make_tokenizer
    from fastload._stream_backend import StreamBackend
    from fastload.reader import plan_cache, sample_chunk_bound

    paths, _ = stores
    cfg = config(paths)
    era5 = SamplingConfig(fields=tuple(dataclasses.replace(f, stream=None) for f in cfg.fields
                                       if f.stream == "era5"), time_step=2)
    store = open_store(paths["era5"])
    tok = make_tokenizer(store, era5)
    bound = sample_chunk_bound(tok.layouts, era5.box, 2)
    total = {a: int(np.prod(store.arrays[a].grid_shape)) for a in bound}
    whole = plan_cache(store, tok.layouts, era5.box, 2, 1 << 30, 4)
    assert whole.slots == total and whole.capacity == total  # one step may use every slot
    tight = plan_cache(store, tok.layouts, era5.box, 2, sum(4 * bound[a] * store.arrays[a].chunk_nbytes
                                                             for a in bound), 4)
    for a in bound:
        assert bound[a] <= tight.slots[a] < total[a] and tight.capacity[a] == max(bound[a], tight.slots[a] // 4)

    def steps(cache_bytes):
        ms = MultiStream(cfg)
        spec = LoadSpec(batch_size=8, drop_last=True, prefetch=1, workers=2, cache_bytes=cache_bytes,
                        fetch_concurrency=2, retries=0, on_bad_chunk="raise", months=None,
                        useful_bytes_per_sample=1, jit=None, pin=False)
        backend = StreamBackend(ms, spec, None)
        try:
            backend.start(ms.random_boxes(16, seed=1, epoch=0), 0)
            lay = ms.cache_layout(cache_bytes, 2)
            full = {a for a in lay.slots if lay.slots[a] >= int(np.prod(ms.arrays[a].grid_shape))}
            return len(backend.plan.steps(0)), full, set(lay.slots)
        finally:
            backend.close()

    n, full, arrays = steps(1 << 30)
    assert n == 1 and full == arrays  # every arena holds its array: the batch is one step
    n, full, _ = steps(1)  # the minimum cache: one sample's chunks per arena
    assert n > 1 and not full


@pytest.mark.gpu
def test_multi_stream_batches_and_padding_masks_arrive_on_the_device(stores):
    paths, truth = stores
    cfg = config(paths)
    with Loader(None, cfg, batch_size=2, samples_per_epoch=8, prefetch=1, device="cuda", seed=5) as loader:
        assert loader._pin
        for batch in loader:  # more batches than ring slots
            want, valid = reference(paths, truth, cfg, batch.boxes.numpy())
            for name, x in batch.fields.items():
                assert x.is_cuda and batch.meta[name]["lat"].is_cuda
                assert np.array_equal(x.cpu().numpy(), want[name], equal_nan=True), name
            for name in ("temp", "ssh"):
                v = batch.meta[name]["valid"]
                assert v.is_cuda and v.dtype == torch.bool and np.array_equal(v.cpu().numpy(), valid[name])


def test_a_mesh_store_normalised_with_its_fastload_stats(stores, tmp_path):
    """``fastload stats`` on the mesh store, then the Loader (the mesh alone, and as a stream) normalises its fields
    with those coefficients: local per node, global per level, against NumPy statistics of the written arrays."""
    from fastload.norm import months_of
    from fastload.stats import StatsConfig, compute_stats

    paths, truth = stores
    norm = compute_stats(str(paths["fesom"]), tmp_path / "m-norm.zarr", StatsConfig(progress=False))
    fields = (FieldConfig(name="temp", levels=(100.0, 5.0), num_tokens=(2, 2, 3), token_size=(2, 2, 2),
                          normalization="local"),
              FieldConfig(name="ssh", num_tokens=(1, 1, 1), token_size=(4, 4, 6), normalization="global"))
    cfg = SamplingConfig(fields=fields, time_step=3, norm_path=norm)
    store = open_store(paths["fesom"])
    mesh = truth["fesom"]
    months = months_of(mesh["time"])
    boxes = np.array([[0, 2, 0], [2, 9, 20], [1, 16, 40]])
    with Loader(store, cfg, boxes=boxes, batch_size=3, workers=1, device="cpu") as loader:
        res = loader.tokenizer.resolution
        batch = next(iter(loader))
    for f in fields:
        nt, nlat, nlon = f.num_tokens
        tt, tlat, tlon = f.token_size
        lev = [1, 0] if f.name == "temp" else [0]
        data = (mesh[f.name] if f.name == "temp" else mesh[f.name][:, None]).astype(np.float64)
        for s, (t0, y0, x0) in enumerate(boxes.tolist()):
            region = (90 - res * y0, 90 - res * (y0 + nlat * tlat), res * x0, res * nlon * tlon)
            nodes, _ = brute_bin(store.grid.lat, store.grid.lon, region, nlat, nlon, tlat * tlon)
            t = t0 + np.arange(nt * tt) * 3
            want = np.zeros((nt * tt, len(lev), *nodes.shape))
            for i, ti in enumerate(t):
                month = months == months[ti]
                for j, li in enumerate(lev):
                    if f.name == "temp":  # local: each node's own statistics of the month
                        mean, std = data[month, li].mean(0), data[month, li].std(0)
                        mean, std = mean[np.maximum(nodes, 0)], std[np.maximum(nodes, 0)]
                    else:  # global: over every node of the month
                        mean, std = data[month, li].mean(), data[month, li].std()
                    v = (data[ti, li][np.maximum(nodes, 0)] - mean) / std
                    want[i, j] = np.where(nodes >= 0, v, 0.0)
            want = want.reshape(nt, tt, len(lev), nlat, nlon, tlat, tlon).transpose(2, 0, 3, 4, 1, 5, 6)
            np.testing.assert_allclose(batch[f.name][s].numpy(), want, rtol=1e-4, atol=1e-4, err_msg=f.name)
    assert np.abs(batch["temp"].numpy()).max() < 10 and batch["temp"].numpy().std() > 0.3  # normalised values
    # the same coefficients serve the mesh as a stream of a multi-stream config (local per node: the slots' nodes
    # and time steps from the batch's metadata, the raw values from the NumPy reference)
    multi = config(paths)
    multi = dataclasses.replace(
        multi, streams=tuple(dataclasses.replace(st, norm_path=norm) if st.name == "fesom" else st
                             for st in multi.streams),
        fields=tuple(dataclasses.replace(f, normalization="local") if f.stream == "fesom" else f
                     for f in multi.fields))
    with Loader(None, multi, boxes=BOXES[:2], batch_size=2, workers=1, device="cpu") as loader:
        got = next(iter(loader))
    raw, _ = reference(paths, truth, config(paths), BOXES[:2])
    for f in (f for f in multi.fields if f.stream == "fesom"):
        x, r = got[f.name].numpy(), raw[f.name]  # (B, L, nt, nlat, nlon, tt, tlat, tlon)
        B, L, nt, nlat, nlon, tt, tlat, tlon = x.shape
        m = got.meta[f.name]
        nodes = m["points"].numpy().reshape(B, nlat, nlon, tlat, tlon)
        steps = m["t_steps"].numpy().reshape(B, nt, tt)
        data = (mesh[f.name] if f.levels else mesh[f.name][:, None]).astype(np.float64)
        lev = [list(mesh["nz1"]).index(v) for v in f.levels] if f.levels else [0]
        want = np.zeros(x.shape)
        for b in range(B):
            for a in range(nt):
                for i in range(tt):
                    month = months == months[steps[b, a, i]]
                    for j, li in enumerate(lev):
                        mean, std = data[month, li].mean(0), data[month, li].std(0)
                        v = (r[b, j, a, :, :, i] - mean[np.maximum(nodes[b], 0)]) / std[np.maximum(nodes[b], 0)]
                        want[b, j, a, :, :, i] = np.where(nodes[b] >= 0, v, 0.0)
        assert (nodes < 0).any() and not np.array_equal(x, r)
        np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4, err_msg=f.name)


def test_batch_and_iostats_reprs_are_short(stores):
    """``print(batch)`` shows shapes, dtypes, devices, masks, metadata keys and one line of stats, not values."""
    from fastload.sampling.masking import MaskingConfig

    paths, _ = stores
    cfg = config(paths)
    with Loader(None, cfg, boxes=BOXES[:2], batch_size=2, workers=1, device="cpu", masking=MaskingConfig()) as loader:
        batch = next(iter(loader))
    text = repr(batch)
    lines = text.splitlines()
    assert len(lines) == 1 + len(cfg.fields) + 2 and len(text) < 3000 and "tensor(" not in text, text
    assert lines[0] == f"Batch(index=0, epoch=0, samples=2, fields={len(cfg.fields)}"
    for f, line in zip(cfg.fields, lines[1:]):
        shape, mask = (2, *f.sample_shape), (2, f.num_levels, *f.num_tokens)
        assert line.split() == [f.name, *f"{shape}".split(), "float32", "cpu", "masks", *f"{mask}".split(), "bool",
                                "cpu"], line
    point = [f.name for f in cfg.fields if f.stream != "era5"]  # the streams after the first are point-sampled
    assert lines[-2].startswith("  meta: hour, day_of_year, lat, lon, level, t_index, time; ")
    assert lines[-2].endswith(f"; {', '.join(point)} + valid, points, count, t_steps, point_lat, point_lon")
    s = batch.stats
    assert lines[-1] == f"  stats: {s!r})" and str(s) == repr(s) and "\n" not in repr(s)
    want = (f"IOStats(1 batch, 2 samples, {s.chunks} chunks ({100 * s.hits / (s.hits + s.misses):.0f}% hits), "
            f"{s.bytes_stored / 1e6:.2f} MB stored / {s.bytes_decoded / 1e6:.2f} MB decoded / "
            f"{s.bytes_useful / 1e6:.2f} MB useful ({s.bytes_decoded / s.bytes_useful:.2f}x), "
            f"plan {1e3 * s.plan_s:.1f} ms, fetch {1e3 * s.fetch_s:.1f} ms, decode {1e3 * s.decode_s:.1f} ms, "
            f"gather {1e3 * s.gather_s:.1f} ms, wait {1e3 * s.wait_s:.1f} ms, copy {1e3 * s.copy_s:.1f} ms; streams: ")
    assert repr(s).startswith(want), repr(s)
    for name in STREAMS:
        x = s.streams[name]
        assert f"{name} {x.bytes_decoded / 1e6:.2f} MB decoded ({100 * x.hit_rate:.0f}% hits)" in repr(s)
    assert "skipped" not in repr(s) and "3 skipped, 2 retries" in repr(IOStats(skipped=3, retries=2))


class PlaceNorm:
    """Local coefficients that are a function of the place (latitude, longitude) only, whatever the store's order:
    a field stored either way round normalises to the same numbers."""

    def check(self, store, config):
        self.lat, self.lon = np.asarray(store.grid.lat, np.float64), np.asarray(store.grid.lon, np.float64) % 360.0

    def months_present(self, field):
        return tuple(range(12))

    @staticmethod
    def at(lat, lon):
        return 15.0 + 0.01 * lat + 0.001 * lon, 2.0 + np.cos(np.deg2rad(lat))

    def coefficients(self, field, mode, levels, months):
        assert mode == "local"
        mean, std = self.at(self.lat[:, None], self.lon[None, :])
        shape = (len(months), 1 if levels is None else len(levels), *mean.shape)
        return (np.broadcast_to(mean, shape).astype(np.float32), np.broadcast_to(std, shape).astype(np.float32))


@pytest.mark.parametrize("jit", [True, False])
def test_a_lat_lon_stream_loads_in_the_reference_row_order(stores, tmp_path, jit):
    """The Loader's multi-stream path: a sea stream stored south to north (or north to south) beside era5 (north to
    south) comes out north to south, values and local coefficients alike, as xarray reads it at the points."""
    paths, _ = stores
    sea = {"asc": tmp_path / "asc.zarr", "desc": tmp_path / "desc.zarr"}
    make_latlon_xr(sea["asc"], ascending=True, lon_start=-180.0)
    make_latlon_xr(sea["desc"], ascending=False)
    got = {}
    for k, path in sea.items():
        cfg = sea_config(paths, path)
        cfg = dataclasses.replace(cfg, fields=tuple(dataclasses.replace(f, normalization="local") if f.name == "sst"
                                                    else f for f in cfg.fields))
        with Loader(None, cfg, boxes=BOXES, batch_size=2, workers=2, device="cpu", jit=jit,
                    normalizer={"sea": PlaceNorm()}) as loader:
            batches = list(loader)
        got[k] = {n: np.concatenate([b.fields[n].numpy() for b in batches]) for n in cfg.field_names}
        meta = {n: {key: np.concatenate([b.meta[n][key].numpy() for b in batches]) for key in ("lat", "point_lat")}
                for n in ("sst", "uo")}
        raw = extract_streams(MultiStream(sea_config(paths, path)), BOXES, jit=jit)
        for name, lev in (("sst", None), ("uo", (0.0, 50.0))):
            m = raw[name].meta
            assert np.all(np.diff(meta[name]["lat"], axis=1) < 0), (k, name)  # north to south, as era5
            assert np.array_equal(meta[name]["point_lat"], m.point_lat.astype(np.float32)), (k, name)
            f = cfg.field(name)
            nt, nlat, nlon = f.num_tokens
            tt = f.token_size[0]
            for s in range(len(BOXES)):
                want = xarray_at(path, name, m, s, lev)  # (L, T, nlat, nlon, K)
                if name == "sst":
                    mean, std = PlaceNorm.at(m.point_lat[s], m.point_lon[s])
                    want = (want - mean) / std
                want = want.reshape(-1, nt, tt, nlat, nlon, want.shape[-1]).transpose(0, 1, 3, 4, 2, 5)
                np.testing.assert_allclose(got[k][name][s].reshape(want.shape), want, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{k} {name} sample {s}")
    for name in got["asc"]:  # the same field either way round: the same batches
        assert np.array_equal(got["asc"][name], got["desc"][name]), name


def test_stream_counters_agree_with_the_loader_on_whole_shard_arrays(tmp_path):
    """Review r1 S4: a stream whose arrays are whole shards (zstd after sharding_indexed) counts the bytes read from
    the store as the loader does (the shard's stored size once), not the inner chunks' decoded sizes."""
    import warnings

    import zarr
    from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

    paths = {"era5": tmp_path / "a.zarr", "ocean": tmp_path / "o.zarr", "fesom": tmp_path / "m.zarr"}
    truth = make_atmosphere(paths["era5"], zarr_format=3)
    make_ocean(paths["ocean"])
    make_mesh(paths["fesom"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr-python's notes on v3 codecs
        root = zarr.open_group(str(paths["era5"]), mode="r+", zarr_format=3)
        for name, dims, shard, inner in (("t", ("time", "level", "latitude", "longitude"), (24, 4, 16, 36),
                                          (6, 1, 8, 12)),
                                         ("sp", ("time", "latitude", "longitude"), (24, 16, 36), (6, 8, 12))):
            attrs, data = dict(root[name].attrs), truth[name]
            del root[name]
            a = root.create_array(name, shape=data.shape, dtype=data.dtype, chunks=shard, fill_value=np.nan,
                                  serializer=ShardingCodec(chunk_shape=inner, codecs=[BytesCodec()]),
                                  compressors=[ZstdCodec()], dimension_names=dims, attributes=attrs)
            a[...] = data
    with Loader(None, config(paths), batch_size=4, samples_per_epoch=16, workers=1, fetch_concurrency=1,
                cache_bytes=1 << 17, device="cpu", seed=3) as loader:
        ms = loader.multi
        assert ms.streams[0].store._shards["t"].whole
        before = ms.stream_counters()
        list(loader)
        after = ms.stream_counters()
        totals = loader.stats
    for name in STREAMS:
        assert totals.streams[name].bytes_stored == after[name]["bytes_stored"] - before[name]["bytes_stored"], name
