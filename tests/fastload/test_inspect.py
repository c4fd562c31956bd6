"""fastload.inspect: the analytic read amplification equals a Monte-Carlo count of chunks touched by random
samples; the recommended chunking beats whole-globe chunks; the summary matches zarr-python; CLI errors."""

from __future__ import annotations

import importlib.util
import itertools
import json

import numpy as np
import pandas as pd
import pytest
import zarr

from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError
from fastload.inspect import (
    describe,
    expected_chunks,
    format_summary,
    main,
    read_amplification,
    recommend_chunks,
)
from fastload.store import open_store

from .stores import make_atmorep, make_per_variable
from .test_stats import write_atmorep, write_per_variable


def _brute_expected(n, rel, c, periodic=False, weights=None):
    rel = np.asarray(rel)
    n_pos = n if periodic else n - rel.max()
    w = np.ones(n_pos) if weights is None else np.asarray(weights, float)
    counts = [len({int(i) // c for i in ((p + rel) % n if periodic else p + rel)}) for p in range(n_pos)]
    return float(np.dot(counts, w) / w.sum())


def test_expected_chunks_equals_enumeration():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(3, 120))
        dt = int(rng.integers(1, 4))
        box = int(rng.integers(1, (n - 1) // dt + 2))
        rel = np.arange(box) * dt
        if rel.max() >= n:
            continue
        c = int(rng.integers(1, n + 3))
        periodic = bool(rng.integers(2))
        w = rng.random(n if periodic else n - rel.max()) if rng.integers(2) else None
        assert expected_chunks(n, rel, c, periodic=periodic, weights=w) == pytest.approx(
            _brute_expected(n, rel, c, periodic, w), rel=1e-12
        )
    with pytest.raises(ConfigError, match="does not fit"):
        expected_chunks(5, np.arange(6), 2)


def _monte_carlo(store, config, n_samples, seed=0):
    """Decoded bytes per sample by drawing sample positions and listing every chunk their boxes touch."""
    rng = np.random.default_rng(seed)
    bt, by, bx = config.box
    span = (bt - 1) * config.time_step + 1
    grid = store.grid
    ny, nx, nt = grid.ny, grid.nx, len(store.time)
    n_y = ny - by + 1
    p_y = np.ones(n_y)
    if config.centers == "coslat":
        p_y = np.cos(np.deg2rad(np.asarray(grid.lat)[np.arange(n_y) + by // 2]))
    p_y = p_y / p_y.sum()
    useful = 0
    for f in config.fields:
        info = store.fields[f.name]
        useful += f.num_levels * (bt if info.has_time else 1) * by * bx * store.arrays[info.array].dtype.itemsize
    decoded = np.zeros(n_samples)
    per_axis_counts: dict[str, np.ndarray] = {}
    t0s = rng.integers(0, nt - span + 1, n_samples)
    y0s = rng.choice(n_y, size=n_samples, p=p_y)
    x0s = rng.integers(0, nx if grid.periodic_x else nx - bx + 1, n_samples)
    for s, (t0, y0, x0) in enumerate(zip(t0s, y0s, x0s)):
        ts, ys, xs = t0 + np.arange(bt) * config.time_step, y0 + np.arange(by), (x0 + np.arange(bx)) % nx
        touched: dict[str, set] = {}
        for f in config.fields:
            info = store.fields[f.name]
            arr = store.arrays[info.array]
            per_axis = [None] * len(arr.shape)
            t_ax, f_ax, l_ax, y_ax, x_ax = info.axes
            if t_ax is not None:
                per_axis[t_ax] = ts // arr.chunks[t_ax]
            if f_ax is not None:
                per_axis[f_ax] = [info.field_index // arr.chunks[f_ax]]
            if l_ax is not None:
                per_axis[l_ax] = store.level_indices(f.name, f.levels) // arr.chunks[l_ax]
            per_axis[y_ax], per_axis[x_ax] = ys // arr.chunks[y_ax], xs // arr.chunks[x_ax]
            sets = [set(np.ravel(a).tolist()) for a in per_axis]
            touched.setdefault(info.array, set()).update(itertools.product(*sets))
        decoded[s] = sum(len(c) * store.arrays[a].chunk_nbytes for a, c in touched.items())
        for a, c in touched.items():  # distinct chunks touched along each axis
            axes = per_axis_counts.setdefault(a, np.zeros((n_samples, len(store.arrays[a].shape))))
            axes[s] = [len({k[i] for k in c}) for i in range(axes.shape[1])]
    return decoded, useful, per_axis_counts


def _cfg(fields, box_tokens=(2, 2, 2), token=(2, 2, 3), **kw):
    """Fields as ``(name, levels)`` or ``(name, levels, normalization)`` (the normalisation changes nothing that is
    read; a static field takes "global": local normalisation of a static field is refused)."""
    out = []
    for name, levels, *norm in fields:
        extra = {"normalization": norm[0]} if norm else {}
        out.append(FieldConfig(name=name, levels=levels, num_tokens=box_tokens, token_size=token, **extra))
    return SamplingConfig(fields=tuple(out), **kw)


CASES = {
    "per_variable_global": dict(store="pv", fields=[("temperature", (96, 114)), ("precip", None)]),
    "per_variable_coslat_step2": dict(store="pv", fields=[("temperature", (105,))], time_step=2, centers="coslat"),
    "regional": dict(store="regional", fields=[("temperature", (96, 105, 114))]),
    "atmorep": dict(store="atmorep", fields=[("t", (96, 114)), ("q", (105,))]),
    "atmorep_sfc": dict(store="atmorep_sfc", fields=[("temperature", (96, 137)), ("velocity_u", (114,)), ("msl", None)]),
    "sharded": dict(store="sharded", fields=[("t", (850.0,)), ("sp", None), ("orog", None, "global")]),  # static
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_amplification_matches_monte_carlo(tmp_path, case):
    spec = dict(CASES[case])
    kind = spec.pop("store")
    if kind == "atmorep":
        write_atmorep(tmp_path / "s.zarr", nt=40, ny=9, nx=14, chunks=(5, 1, 2, 4, 5))
    elif kind == "atmorep_sfc":
        make_atmorep(tmp_path / "s.zarr", nt=20, ny=9, nx=14, chunks=(3, 2, 2, 4, 5))
    elif kind == "sharded":
        make_per_variable(tmp_path / "s.zarr", zarr_format=3, sharded=True, nt=20, nx=14)
    else:
        write_per_variable(tmp_path / "s.zarr", regional=kind == "regional", nx=14, nan_frac=0)
    store = open_store(str(tmp_path / "s.zarr"))
    config = _cfg(spec.pop("fields"), **spec)
    amp = read_amplification(store, config)
    decoded, useful, per_axis = _monte_carlo(store, config, 2000)
    assert amp.useful_bytes == useful
    se = decoded.std() / np.sqrt(decoded.size)
    assert abs(decoded.mean() - amp.decoded_bytes) < 4 * se + 1e-9 * useful, (decoded.mean(), amp.decoded_bytes, se)
    for part in amp.arrays:  # per axis, where the variance is small
        counts = per_axis[part.array]
        se_axis = counts.std(axis=0) / np.sqrt(counts.shape[0])
        np.testing.assert_array_less(np.abs(counts.mean(axis=0) - part.chunks_per_axis), 4 * se_axis + 1e-9)
    assert amp.amplification == pytest.approx(amp.decoded_bytes / useful)
    # evaluating explicit chunks gives the same numbers as the store's own chunking
    same = read_amplification(store, config, chunks={a.array: a.chunks for a in amp.arrays})
    assert same.amplification == pytest.approx(amp.amplification)


def _era5_like(path, chunks):
    """Metadata-only ERA5-like store (0.25 deg, one year hourly, 5 levels): chunks are never written."""
    nt, ny, nx = 8760, 721, 1440
    g = zarr.open_group(path, mode="w", zarr_format=3)
    g.create_array("temperature", shape=(nt, 5, ny, nx), chunks=chunks, dtype="f4", fill_value=np.nan,
                   dimension_names=("time", "level", "latitude", "longitude"))  # fmt: skip
    for name, values, attrs in (
        ("time", np.arange(nt, dtype="i8"), {"units": "hours since 2000-01-01", "calendar": "standard"}),
        ("level", np.array([96, 105, 114, 123, 137], "f8"), {"level_type": "model"}),
        ("latitude", np.linspace(90, -90, ny), {}),
        ("longitude", np.arange(nx) * 0.25, {}),
    ):
        a = g.create_array(name, shape=values.shape, dtype=values.dtype, dimension_names=(name,), attributes=attrs)
        a[...] = values


def test_recommendation_beats_whole_globe_chunks(tmp_path):
    _era5_like(tmp_path / "era5.zarr", chunks=(8, 5, 721, 1440))  # the reference setup's chunking, one field
    store = open_store(str(tmp_path / "era5.zarr"))
    config = SamplingConfig(fields=(FieldConfig(name="temperature", levels=(96, 105, 114, 123, 137),
                                                num_tokens=(12, 6, 12), token_size=(3, 9, 9)),))  # fmt: skip
    amp = read_amplification(store, config)
    assert amp.amplification > 100 and amp.warnings and "temperature" in amp.warnings[0]
    rec = recommend_chunks(store, config)["temperature"]
    assert rec.current_amplification == pytest.approx(amp.amplification)
    assert rec.amplification < amp.amplification / 20
    again = read_amplification(store, config, chunks={"temperature": rec.chunks})
    assert again.amplification == pytest.approx(rec.amplification) and not again.warnings
    assert 256 * 2**10 <= rec.chunk_nbytes <= 64 * 2**20
    # it is the cheapest of a grid of alternatives under the same cost model
    overhead = 0.4e-3 * 3.3e9

    def cost(ch):
        a = read_amplification(store, config, chunks={"temperature": ch}).arrays[0]
        return a.chunks_per_sample * (a.chunk_nbytes + overhead)

    best = cost(rec.chunks)
    for ch in itertools.product((6, 12, 36, 72), (1, 5), (45, 90, 180), (90, 180, 360)):
        if 256 * 2**10 <= np.prod(ch) * 4 <= 64 * 2**20:
            assert best <= cost(ch) * (1 + 1e-9), ch


def test_recommendation_small_store(tmp_path):
    write_per_variable(tmp_path / "s.zarr", ny=16, nx=32, chunks=(4, 3, 16, 32), nan_frac=0)  # whole-globe chunks
    store = open_store(str(tmp_path / "s.zarr"))
    config = _cfg([("temperature", (105,))], token=(1, 2, 4))
    rec = recommend_chunks(store, config, overhead_bytes=64, min_chunk_bytes=16)["temperature"]
    assert rec.amplification < rec.current_amplification
    with pytest.raises(ConfigError, match="no chunking"):
        recommend_chunks(store, config, min_chunk_bytes=8, max_chunk_bytes=4)


@pytest.mark.parametrize("periodic", [False, True])
def test_touch_probabilities_match_enumeration(periodic):
    """Per chunk, the probability a box touches it, against enumerating every offset (uniform and weighted)."""
    from fastload.inspect import expected_chunks, touch_probabilities

    rng = np.random.default_rng(5)
    for _ in range(60):
        n = int(rng.integers(3, 90))
        box, chunk = int(rng.integers(1, n + 1)), int(rng.integers(1, n + 1))
        n_pos = n if periodic else n - box + 1
        w = None if rng.integers(2) else rng.uniform(0.1, 1.0, n_pos)
        ww = np.full(n_pos, 1.0 / n_pos) if w is None else w / w.sum()
        want = np.zeros(-(-n // chunk))
        for o in range(n_pos):
            idx = o + np.arange(box)
            want[np.unique((idx % n if periodic else idx) // chunk)] += ww[o]
        got = touch_probabilities(n, box, chunk, periodic=periodic, weights=w)
        np.testing.assert_allclose(got, want, atol=1e-12)
        assert got.sum() == pytest.approx(expected_chunks(n, np.arange(box), chunk, periodic=periodic, weights=w))


def test_distinct_chunks_per_window_match_enumeration():
    """Expected distinct (y, x) chunks of k independent boxes, against enumerating every placement of k = 2."""
    from fastload.inspect import distinct_per_window, touch_probabilities

    ny, nx, by, bx, cy, cx = 7, 9, 3, 4, 2, 3
    ys, xs = range(ny - by + 1), range(nx)  # x periodic
    sets = [{(a, b) for a in np.unique(np.arange(y, y + by) // cy) for b in np.unique((x + np.arange(bx)) % nx // cx)}
            for y in ys for x in xs]
    exact = np.mean([len(s1 | s2) for s1 in sets for s2 in sets])
    py, px = touch_probabilities(ny, by, cy), touch_probabilities(nx, bx, cx, periodic=True)
    assert distinct_per_window(py, px, 2) == pytest.approx(exact)
    assert distinct_per_window(py, px, 1) == pytest.approx(np.mean([len(s) for s in sets]))


def test_recommendation_for_several_samples_per_window(tmp_path):
    """Samples sharing a time window read each chunk once for all: per sample, fewer chunks than alone, and the
    pick is the cheapest under that model; one sample per window is the independent model exactly."""
    _era5_like(tmp_path / "era5.zarr", chunks=(8, 5, 721, 1440))
    store = open_store(str(tmp_path / "era5.zarr"))
    config = SamplingConfig(fields=(FieldConfig(name="temperature", levels=(96, 105, 114, 123, 137),
                                                num_tokens=(12, 6, 12), token_size=(3, 9, 9)),))  # fmt: skip
    one = recommend_chunks(store, config)["temperature"]
    assert recommend_chunks(store, config, samples_per_window=1)["temperature"] == one
    rec = recommend_chunks(store, config, samples_per_window=16)["temperature"]
    assert rec.chunks != one.chunks
    assert rec.current_amplification < one.current_amplification  # the store's own chunks, shared by 16
    assert rec.amplification < one.amplification
    with pytest.raises(ConfigError, match="samples_per_window"):
        recommend_chunks(store, config, samples_per_window=0)


def test_window_figures_of_the_current_chunking_count_field_level_pairs(tmp_path):
    """AtmoRep layout, fields on different levels: the current chunking's figures for K samples per window count the
    distinct (field, level) chunk pairs (2 here), not field chunks x level chunks (4), and fall as K grows."""
    from fastload.inspect import distinct_per_window, expected_chunks, touch_probabilities

    write_atmorep(tmp_path / "a.zarr", nt=30, ny=6, nx=8, chunks=(5, 1, 1, 3, 4))
    store = open_store(str(tmp_path / "a.zarr"))
    cfg = SamplingConfig(fields=(FieldConfig(name="t", levels=(96.0,), num_tokens=(2, 1, 1), token_size=(2, 3, 4)),
                                 FieldConfig(name="q", levels=(114.0,), num_tokens=(2, 1, 1), token_size=(2, 3, 4))))
    kw = dict(min_chunk_bytes=1, max_chunk_bytes=1 << 30)
    one = recommend_chunks(store, cfg, **kw)["data"]
    two = recommend_chunks(store, cfg, samples_per_window=2, **kw)["data"]
    py = touch_probabilities(6, 3, 3)
    px = touch_probabilities(8, 4, 4, periodic=bool(store.grid.periodic_x))
    n = 2 * expected_chunks(30, np.arange(4), 5) * distinct_per_window(py, px, 2) / 2
    chunk_bytes = int(np.prod(store.arrays["data"].chunks)) * 4
    assert two.current_amplification == pytest.approx(n * chunk_bytes / (2 * 4 * 3 * 4 * 4))
    assert two.current_amplification < one.current_amplification


def test_describe_matches_zarr(tmp_path):
    write_per_variable(tmp_path / "s.zarr", fmt=2, regional=True)
    store = open_store(str(tmp_path / "s.zarr"))
    d = describe(store)
    z = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    arr = z["temperature"]
    meta = sum((tmp_path / "s.zarr" / "temperature" / f).stat().st_size for f in (".zarray", ".zattrs"))
    a = d["arrays"]["temperature"]
    assert a["stored_bytes"] == arr.nbytes_stored() - meta
    assert a["decoded_bytes"] == arr.nbytes and a["chunks"] == [7, 1, 4, 5] and a["shape"] == [44, 3, 9, 12]
    assert a["compression_ratio"] == pytest.approx(arr.nbytes / a["stored_bytes"])
    assert d["zarr_format"] == 2 and d["layout"] == "per_variable"
    assert d["grid"]["shape"] == [9, 12] and not d["grid"]["global"] and d["grid"]["lat_order"] == "north-to-south"
    assert d["grid"]["resolution_deg"] == [20.0, 2.0]
    end = (pd.Timestamp("2000-01-25") + pd.Timedelta(hours=6 * 43)).isoformat()
    assert d["time"] == {"start": "2000-01-25T00:00:00", "end": end, "step": "6h", "length": 44, "median_step": "6h",
                         "gaps": []}
    assert d["fields"]["temperature"]["levels"] == [96.0, 105.0, 114.0]
    assert not d["fields"]["orography"]["has_time"]
    assert describe(store, sizes="never")["arrays"]["temperature"]["stored_bytes"] is None
    text = format_summary(d)
    for s in ("per_variable", "regional", "temperature", "6h", "44 steps", "orography (static)"):
        assert s in text


def test_describe_sharded(tmp_path):
    make_per_variable(tmp_path / "s.zarr", zarr_format=3, sharded=True, nt=8)
    d = describe(open_store(str(tmp_path / "s.zarr")))
    a = d["arrays"]["t"]
    arr = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["t"]
    meta = (tmp_path / "s.zarr" / "t" / "zarr.json").stat().st_size
    assert a["shard"] == [4, 2, 8, 12] and a["chunks"] == [2, 1, 4, 6]
    assert a["stored_bytes"] == arr.nbytes_stored() - meta
    assert any(c.startswith("sharding_indexed") for c in a["codecs"])


def test_cli(tmp_path, capsys):
    write_per_variable(tmp_path / "s.zarr", ny=16, nx=32, chunks=(4, 3, 16, 32))
    cfg = _cfg([("temperature", (105,))], token=(1, 2, 4))
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    assert main(["--help"]) == 0
    assert "--config" in capsys.readouterr().out
    assert main([str(tmp_path / "s.zarr")]) == 0
    assert "temperature" in capsys.readouterr().out
    assert main([str(tmp_path / "s.zarr"), "--config", str(tmp_path / "c.toml")]) == 0
    out = capsys.readouterr().out
    assert "read amplification" in out and "recommended chunking" in out and "WARNING" in out
    assert main([str(tmp_path / "s.zarr"), "--config", str(tmp_path / "c.toml"), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["recommendation"]["temperature"]["amplification"] == pytest.approx(j["recommended_amplification"])
    assert j["amplification"]["arrays"][0]["amplification"] == pytest.approx(j["amplification"]["amplification"])
    assert j["arrays"]["temperature"]["chunks"] == [4, 3, 16, 32]
    if importlib.util.find_spec("obstore") is not None:  # the same report through obstore (listed and read)
        assert main([str(tmp_path / "s.zarr"), "--config", str(tmp_path / "c.toml"), "--json", "--backend",
                     "obstore", "--sizes", "always"]) == 0
        jo = json.loads(capsys.readouterr().out)
        assert jo["recommendation"] == j["recommendation"] and jo["arrays"] == j["arrays"]
    assert main([str(tmp_path / "s.zarr"), "--backend", "boto"]) != 0
    assert "--backend: invalid choice: 'boto'" in capsys.readouterr().err
    # bad input: message on stderr, non-zero status
    assert main([str(tmp_path / "missing.zarr")]) != 0
    assert "missing.zarr" in capsys.readouterr().err
    assert main([str(tmp_path / "s.zarr"), "--config", str(tmp_path / "none.toml")]) != 0
    assert "none.toml" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text(_cfg([("humidity", (105,))]).to_toml())
    assert main([str(tmp_path / "s.zarr"), "--config", str(tmp_path / "bad.toml")]) != 0
    assert "humidity" in capsys.readouterr().err
    assert main([]) != 0


def test_cli_multi_stream_config_shows_each_streams_chunking_warning(tmp_path, capsys):
    """``fastload inspect --config multi.toml``: every stream's store, the reference stream's amplification, and
    under each stream exactly the chunking warnings the Loader's MultiStream gives (an ocean written as one chunk
    over its whole record warns; the well-chunked streams do not)."""
    import re

    from fastload.streams import ChunkingWarning, MultiStream

    from .stores_multi import make_atmosphere, make_mesh, make_ocean
    from .test_streams import config

    paths = {"era5": tmp_path / "a.zarr", "ocean": tmp_path / "o.zarr", "fesom": tmp_path / "m.zarr"}
    make_atmosphere(paths["era5"])
    make_ocean(paths["ocean"], chunks=(5, 3, 17, 36))
    make_mesh(paths["fesom"])
    cfg = config(paths)
    (tmp_path / "multi.toml").write_text(cfg.to_toml())
    with pytest.warns(ChunkingWarning) as rec:
        MultiStream(cfg)
    loader_says = sorted(str(r.message) for r in rec)
    assert len(loader_says) == 2 and all(m.startswith("stream 'ocean':") for m in loader_says)

    assert main(["--config", str(tmp_path / "multi.toml")]) == 0
    out = capsys.readouterr().out
    sections = re.split(r"\n\n(?=== stream )", out.strip())
    assert [s.splitlines()[0] for s in sections] == ["== stream era5 (reference, time_rule inside) ==",
                                                     "== stream ocean (box, time_rule previous) ==",
                                                     "== stream fesom (mesh, time_rule nearest) =="]
    for name, sec in zip(("era5", "ocean", "fesom"), sections):
        assert f"store   {paths[name]}" in sec
        warned = sorted(line.removeprefix("WARNING: ") for line in sec.splitlines() if line.startswith("WARNING: "))
        assert warned == (loader_says if name == "ocean" else [])
        assert ("read amplification" in sec) == (name == "era5")  # the reference stream samples index boxes

    # one stream, by its store, as JSON
    assert main([str(paths["ocean"]), "--config", str(tmp_path / "multi.toml"), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert list(j["streams"]) == ["ocean"] and sorted(j["streams"]["ocean"]["chunking_warnings"]) == loader_says
    assert j["streams"]["ocean"]["arrays"]["thetao"]["chunks"] == [5, 3, 17, 36]
    assert main([str(paths["era5"]), "--config", str(tmp_path / "multi.toml"), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)["streams"]["era5"]
    assert j["chunking_warnings"] == [] and j["amplification"]["amplification"] > 1
    # a store that is none of the streams', and no store at all without streams
    assert main([str(tmp_path / "other.zarr"), "--config", str(tmp_path / "multi.toml")]) == 2
    assert "none of the config's stream stores" in capsys.readouterr().err
    assert main([]) == 2 and "give the STORE" in capsys.readouterr().err


def test_cli_samples_per_window(tmp_path, capsys):
    """``--samples-per-window K``: the recommendation and the current chunking's figures under the window model
    (checked against recommend_chunks and, for whole-grid (y, x) chunks, which every box of a window shares, an
    enumeration of the time chunks / K); K = 1 is the old report exactly; bad K is an error."""
    write_per_variable(tmp_path / "s.zarr", ny=16, nx=32, chunks=(4, 3, 16, 32))
    cfg = _cfg([("temperature", (105,))], token=(1, 2, 4))
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    base = [str(tmp_path / "s.zarr"), "--config", str(tmp_path / "c.toml")]
    assert main(base) == 0
    plain = capsys.readouterr().out
    assert main([*base, "--samples-per-window", "1"]) == 0
    assert capsys.readouterr().out == plain and "K =" not in plain
    assert main([*base, "--json"]) == 0
    plain_json = capsys.readouterr().out
    assert main([*base, "--json", "--samples-per-window", "1"]) == 0
    assert capsys.readouterr().out == plain_json and "samples_per_window" not in json.loads(plain_json)

    store = open_store(str(tmp_path / "s.zarr"))
    want = recommend_chunks(store, cfg, samples_per_window=16)["temperature"]
    amp1 = read_amplification(store, cfg)
    useful = amp1.useful_bytes
    # current chunks cover the whole grid: a window reads its time chunks once for its 16 samples
    cur_chunks = _brute_expected(44, np.arange(2), 4) / 16
    cur_bytes = cur_chunks * 4 * 3 * 16 * 32 * 4
    assert main([*base, "--json", "--samples-per-window", "16"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["samples_per_window"] == 16
    assert tuple(j["recommendation"]["temperature"]["chunks"]) == want.chunks
    assert j["recommendation"]["temperature"]["chunks_per_sample"] == pytest.approx(want.chunks_per_sample)
    assert j["recommended_amplification"] == pytest.approx(want.decoded_bytes / useful)
    assert j["current_window"]["temperature"]["chunks_per_sample"] == pytest.approx(cur_chunks)
    assert j["current_window"]["temperature"]["decoded_bytes"] == pytest.approx(cur_bytes)
    assert j["current_window_amplification"] == pytest.approx(cur_bytes / useful)
    assert j["amplification"]["amplification"] == pytest.approx(amp1.amplification)  # still one sample alone

    assert main([*base, "--samples-per-window", "16"]) == 0
    text = capsys.readouterr().out
    assert text.split("\n\nread amplification")[0] == plain.split("\n\nread amplification")[0]  # schema part
    assert "one random sample read alone: K = 1; K = 16 below" in text
    assert "recommended chunking for K = 16 samples per time window" in text
    rec_chunks = "x".join(map(str, want.chunks)) + " (4x3x16x32)"
    row = next(line for line in text.splitlines() if line.startswith("  temperature  " + rec_chunks))
    assert f"{want.chunks_per_sample:.2f} ({cur_chunks:.2f})" in row
    assert (f"total with the recommendation, K = 16: {want.decoded_bytes / useful:.2f}x "
            f"({cur_bytes / useful:.2f}x now)") in text
    warned = [line for line in text.splitlines() if line.startswith("WARNING")]
    assert warned and all(line.endswith("(one sample read alone, K = 1)") for line in warned)
    assert "total with the recommendation:" not in text  # no K = 1 total next to the K = 16 figures

    for bad in (["--samples-per-window", "0"], ["--samples-per-window", "-3"]):
        assert main([*base, *bad]) == 2
        assert "--samples-per-window takes an integer >= 1" in capsys.readouterr().err
    assert main([str(tmp_path / "s.zarr"), "--samples-per-window", "4"]) == 2
    assert "goes with --config" in capsys.readouterr().err
    assert main([*base, "--samples-per-window", "2.5"]) == 2  # argparse: not an integer
    assert "--samples-per-window" in capsys.readouterr().err


def test_cli_samples_per_window_multi_stream(tmp_path, capsys):
    """A multi-stream config passes K to its reference stream's recommendation."""
    from .stores_multi import make_atmosphere, make_mesh, make_ocean
    from .test_streams import config

    paths = {"era5": tmp_path / "a.zarr", "ocean": tmp_path / "o.zarr", "fesom": tmp_path / "m.zarr"}
    make_atmosphere(paths["era5"])
    make_ocean(paths["ocean"])
    make_mesh(paths["fesom"])
    cfg = config(paths)
    (tmp_path / "multi.toml").write_text(cfg.to_toml())
    args = [str(paths["era5"]), "--config", str(tmp_path / "multi.toml"), "--samples-per-window", "8"]
    assert main([*args, "--json"]) == 0
    j = json.loads(capsys.readouterr().out)["streams"]["era5"]
    assert j["samples_per_window"] == 8
    rec = j["recommendation"]
    assert j["recommended_amplification"] == pytest.approx(
        sum(r["decoded_bytes"] for r in rec.values()) / j["amplification"]["useful_bytes"])
    assert main(args) == 0
    assert "recommended chunking for K = 8 samples per time window" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["mesh", "curvilinear"])
def test_mesh_and_curvilinear_grids_show_min_max_and_no_latitude_order(tmp_path, kind, capsys):
    """A mesh's nodes and a curvilinear grid's rows run in no latitude order: the summary gives the coordinates'
    min .. max (computed here from the arrays written), not the first and last node labelled with an order."""
    from .stores import make_curvilinear
    from .stores_multi import make_mesh

    path = tmp_path / "s.zarr"
    truth = make_mesh(path) if kind == "mesh" else make_curvilinear(path)
    lat, lon = truth["latitude"], truth["longitude"]
    assert lat.ravel()[0] != lat.min() and lat.ravel()[-1] != lat.max()  # first/last would be wrong here
    d = describe(open_store(str(path)))
    assert d["grid"]["lat_range"] == [lat.min(), lat.max()] and d["grid"]["lon_range"] == [lon.min(), lon.max()]
    assert d["grid"]["lat_order"] is None and not d["grid"]["repeated_seam"]
    line = format_summary(d).splitlines()[1]
    assert f"latitude {lat.min():g} .. {lat.max():g}, longitude {lon.min():g} .. {lon.max():g} (min .. max)" in line
    assert "north" not in line and "south" not in line
    if kind == "mesh":  # a mesh is a set of nodes: no rows x columns, and x-wrapping says nothing about coverage
        assert line.startswith(f"grid    mesh {lat.size} nodes,") and "wrap" not in line and d["grid"]["global"] is None
    else:
        assert line.startswith("grid    curvilinear 7 x 10, global (x wraps),")
    assert main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["grid"]["lat_range"] == [lat.min(), lat.max()]


def _xr_grid(path, lon, attrs=None):
    """A small (time, latitude, longitude) store written by xarray on the given longitudes."""
    import xarray as xr

    lat = np.linspace(60.0, -60.0, 5)
    values = np.arange(3 * lat.size * lon.size, dtype=np.float32).reshape(3, lat.size, lon.size)
    ds = xr.Dataset({"t2m": (("time", "latitude", "longitude"), values)},
                    coords={"time": pd.date_range("2000-01-01", periods=3, freq="6h"), "latitude": lat,
                            "longitude": ("longitude", lon, attrs or {})})  # fmt: skip
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return ds


@pytest.mark.parametrize("lon", [np.arange(0.0, 360.1, 30.0), np.arange(-180.0, 180.1, 30.0),
                                 np.r_[np.arange(180.0, 360.0, 30.0), np.arange(0.0, 180.1, 30.0)]])  # fmt: skip
def test_a_repeated_seam_column_is_named_with_the_way_to_make_the_grid_periodic(tmp_path, lon, capsys):
    """Longitudes 0 .. 360 inclusive (the first column repeated + 360) read as a regional grid: inspect says why and
    how to fix it; the fix it names (drop the last column with xarray) gives a grid fastload reads as global."""
    ds = _xr_grid(tmp_path / "dup.zarr", lon)
    d = describe(open_store(str(tmp_path / "dup.zarr")))
    assert not d["grid"]["global"] and d["grid"]["repeated_seam"]
    text = format_summary(d)
    note = [ln for ln in text.splitlines() if ln.startswith("NOTE")]
    assert len(note) == 1 and "read as regional" in note[0] and "a box that would is refused" in note[0]
    assert f"the last longitude ({lon[-1]:g}) repeats the first ({lon[0]:g}) + 360" in note[0]
    assert "ds.isel(longitude=slice(0, -1))" in note[0]
    assert main([str(tmp_path / "dup.zarr"), "--json"]) == 0
    assert "repeats the first" in json.loads(capsys.readouterr().out)["grid"]["note"]
    ds.isel(longitude=slice(0, -1)).to_zarr(tmp_path / "fixed.zarr", zarr_format=2, consolidated=True)
    d = describe(open_store(str(tmp_path / "fixed.zarr")))
    assert d["grid"]["global"] and not d["grid"]["repeated_seam"] and d["grid"]["note"] is None
    assert "NOTE" not in format_summary(d)


def test_a_box_across_a_repeated_seam_column_is_refused_with_the_hint(tmp_path):
    """extract of a box that would wrap on such a grid names the repeated column and the fix (it said only that x0
    was out of range); a box inside the grid reads as before, and the global grid has no note."""
    from fastload.config import FieldConfig, SamplingConfig
    from fastload.extract import extract

    _xr_grid(tmp_path / "dup.zarr", np.arange(0.0, 360.1, 30.0))
    store = open_store(str(tmp_path / "dup.zarr"))
    cfg = SamplingConfig(fields=[FieldConfig(name="t2m", num_tokens=(1, 1, 2), token_size=(1, 2, 2),
                                             normalization="none")])
    with pytest.raises(ConfigError, match=r"x0 = 11 is outside \[0, 9\].*read as regional: the last longitude "
                       r"\(360\) repeats the first \(0\) \+ 360: drop the last longitude column"):
        extract(store, cfg, [[0, 0, 11]])
    assert extract(store, cfg, [[0, 1, 9]])["t2m"].data.shape[0] == 1
    assert store.grid.seam_note and not open_store(str(tmp_path / "dup.zarr")).grid.periodic_x


@pytest.mark.parametrize("lon", [np.arange(0.0, 360.0, 30.0), np.arange(0.0, 180.1, 30.0),
                                 np.arange(0.0, 300.1, 30.0), np.r_[np.arange(0.0, 330.1, 30.0), 355.0]])  # fmt: skip
def test_no_seam_note_on_other_grids(tmp_path, lon):
    """Global grids, regional ones (half the globe; one step short of the circle) and an irregular last step."""
    _xr_grid(tmp_path / "s.zarr", lon)
    d = describe(open_store(str(tmp_path / "s.zarr")))
    assert not d["grid"]["repeated_seam"] and "NOTE" not in format_summary(d)


def test_periodic_x_on_a_repeated_seam_names_the_column_to_drop(tmp_path):
    """A ``periodic_x = true`` attribute on 0 .. 360 inclusive is refused (as before), saying which column to drop."""
    from fastload.errors import SchemaError

    _xr_grid(tmp_path / "s.zarr", np.arange(0.0, 360.1, 30.0), attrs={"periodic_x": True})
    with pytest.raises(SchemaError, match=r"not a regular 360-degree circle; the last longitude \(360\) repeats the "
                                          r"first \(0\) \+ 360: drop the last longitude column"):  # fmt: skip
        open_store(str(tmp_path / "s.zarr"))


def test_a_time_axis_with_gaps_names_its_median_step_and_each_gap(tmp_path):
    """"step irregular" alone told nothing: the summary gives the median step and every step off it (pandas'
    diff of the written times is the reference), and regular axes carry no gaps."""
    import xarray as xr

    times = pd.date_range("2000-01-01", periods=30, freq="6h").delete([5, 6, 20])  # two gaps: 18 h and 12 h
    lat, lon = np.linspace(60.0, -60.0, 5), np.arange(0.0, 360.0, 30.0)
    ds = xr.Dataset({"t2m": (("time", "latitude", "longitude"), np.zeros((times.size, 5, 12), np.float32))},
                    coords={"time": times, "latitude": lat, "longitude": lon})  # fmt: skip
    ds.to_zarr(tmp_path / "g.zarr", zarr_format=2, consolidated=True)
    d = describe(open_store(str(tmp_path / "g.zarr")))
    steps = pd.Series(times).diff().dropna()
    off = [(int(i) - 1, times[int(i) - 1], times[int(i)], s) for i, s in steps.items() if s != pd.Timedelta("6h")]
    assert d["time"]["step"] == "irregular" and d["time"]["median_step"] == "6h"
    assert [(g["index"], pd.Timestamp(g["from"]), pd.Timestamp(g["to"]), pd.Timedelta(g["step"]))
            for g in d["time"]["gaps"]] == off and len(off) == 2  # fmt: skip
    text = format_summary(d)
    assert "median step 6h; steps vary within half of it; 2 gap(s)" in text and "2000-01-02T00:00:00 -> 2000-01-02T18:00:00 (18h)" in text
    json.dumps(d)
    regular = describe(open_store(str(_xr_grid(tmp_path / "r.zarr", lon) and tmp_path / "r.zarr")))
    assert regular["time"]["step"] == regular["time"]["median_step"] == "6h" and regular["time"]["gaps"] == []


def test_a_monthly_axis_names_its_median_step_without_gaps(tmp_path):
    """Calendar months are irregular (28-31 days) but have no gap: the text still gives the median step."""
    import xarray as xr

    times = pd.date_range("2001-01-01", periods=6, freq="MS")
    lat, lon = np.linspace(60.0, -60.0, 5), np.arange(0.0, 360.0, 30.0)
    ds = xr.Dataset({"t2m": (("time", "latitude", "longitude"), np.zeros((6, 5, 12), np.float32))},
                    coords={"time": times, "latitude": lat, "longitude": lon})  # fmt: skip
    ds.to_zarr(tmp_path / "m.zarr", zarr_format=2, consolidated=True)
    d = describe(open_store(str(tmp_path / "m.zarr")))
    assert d["time"]["step"] == "irregular" and d["time"]["gaps"] == [] and d["time"]["median_step"] == "31D"
    assert "median step 31D; steps vary within half of it\n" in format_summary(d) + "\n"
