"""fastload.codec_choice: measured ratios and rates, the cost model's pick, and rechunk/inspect wiring."""

from __future__ import annotations

import json
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from fastload.cli import main as cli
from fastload.codec_choice import format_codecs, measure_codecs
from fastload.errors import ConfigError, SchemaError
from fastload.rechunk import rechunk
from fastload.store import open_store
from fastload.synth import synthesize
from fastload.write import CODECS


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = synthesize(tmp_path_factory.mktemp("codecs") / "s.zarr", "tiny", hours=12, progress=False)
    return open_store(path)


ARRAY = "temperature"
CHUNKS = [(0, 0, 0, 0), (1, 4, 1, 1), (1, 2, 0, 1)]


def _independent_ratio(store, codec: str) -> float:
    """Decoded / stored bytes of the CHUNKS of ARRAY, encoded with numcodecs directly; the chunks are the stored
    (full, edge-padded) chunk files decoded with the compressor named in the v2 metadata."""
    root = Path(store.path)
    meta = json.loads((root / ARRAY / ".zarray").read_text())
    src = numcodecs.get_codec(meta["compressor"])
    blocks = [np.frombuffer(src.decode((root / ARRAY / ".".join(map(str, c))).read_bytes()), "<f4") for c in CHUNKS]
    comp = {"blosc-lz4": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE), "blosc-zstd":
            numcodecs.Blosc("zstd", 5, numcodecs.Blosc.SHUFFLE), "zstd": numcodecs.Zstd(1),
            "lz4": numcodecs.LZ4(1), "gzip": numcodecs.GZip(1), "none": None}[codec]  # fmt: skip
    stored = sum(b.nbytes if comp is None else len(comp.encode(b)) for b in blocks)
    return sum(b.nbytes for b in blocks) / stored


def test_ratios_match_numcodecs_and_model_is_the_stated_formula(store, monkeypatch):
    import fastload.codec_choice as cc

    monkeypatch.setattr(cc, "_spread", lambda grid, n: CHUNKS)
    big = measure_codecs(store, array=ARRAY, repeats=1, memory_bytes=2**40)
    small = measure_codecs(store, array=ARRAY, repeats=1, memory_bytes=1)
    assert ARRAY in big.measured_on and big.read_given_bps is None and big.read_warm_bps > 0 < big.read_cold_bps
    assert {c.codec for c in big.costs} == set(CODECS)  # zarr v2: every codec
    for choice, warm in ((big, True), (small, False)):
        for c in choice.costs:
            assert c.ratio == pytest.approx(_independent_ratio(store, c.codec), rel=1e-12)
            assert c.fits_in_memory is warm
            assert c.read_bps == (choice.read_warm_bps if warm else choice.read_cold_bps)
            assert c.seconds_per_gb == pytest.approx(1e9 / c.decode_bps + 1e9 / (c.ratio * c.read_bps))
    by = {c.codec: c for c in choice.costs}
    assert by["none"].ratio == 1.0
    assert [c.seconds_per_gb for c in choice.costs] == sorted(c.seconds_per_gb for c in choice.costs)


def test_slow_reads_pick_the_best_ratio_fast_reads_the_fastest_decode(store):
    slow = measure_codecs(store, n_chunks=2, repeats=1, read_bps=1e3, tie=0.0)
    assert slow.codec == max(slow.costs, key=lambda c: c.ratio).codec and slow.read_given_bps == 1e3 and slow.read_cold_bps is None
    fast = measure_codecs(store, n_chunks=2, repeats=1, read_bps=1e18, tie=0.0)
    assert fast.codec == max(fast.costs, key=lambda c: c.decode_bps).codec
    tied = measure_codecs(store, n_chunks=2, repeats=1, read_bps=1e18, tie=0.99)
    best = min(c.seconds_per_gb for c in tied.costs)
    in_tie = [c for c in tied.costs if c.seconds_per_gb <= best * 1.99]
    assert tied.codec == max(in_tie, key=lambda c: c.ratio).codec  # ties go to the smallest on disk
    assert "<- recommended" in format_codecs(fast) and fast.codec in format_codecs(fast)


def test_bad_arguments_are_config_errors(store):
    with pytest.raises(ConfigError, match="codecs"):
        measure_codecs(store, codecs=["snappy"])
    with pytest.raises(ConfigError, match="nope"):
        measure_codecs(store, array="nope")
    with pytest.raises(ConfigError, match="read_bps"):
        measure_codecs(store, read_bps=0)
    with pytest.raises(ConfigError, match="n_chunks"):
        measure_codecs(store, n_chunks=0)
    with pytest.raises(ConfigError, match="zarr v3"):
        measure_codecs(store, codecs=["lz4"], zarr_format=3)  # plain lz4 has no v3 codec
    assert "lz4" not in {c.codec for c in measure_codecs(store, zarr_format=3, repeats=1, n_chunks=1).costs}
    with pytest.raises(ConfigError, match="read_bps"):
        rechunk(store, "/nonexistent/never.zarr", codec="none", read_bps=1e9)


def test_missing_chunks_are_not_measured(tmp_path, monkeypatch):
    import shutil

    import fastload.codec_choice as cc

    path = synthesize(tmp_path / "m.zarr", "tiny", hours=12, progress=False)
    (Path(path) / ARRAY / "0.0.0.0").unlink()  # a missing chunk reads as the fill value but stores nothing
    monkeypatch.setattr(cc, "_spread", lambda grid, n: CHUNKS)
    st = open_store(path)
    choice = measure_codecs(st, array=ARRAY, repeats=1)
    assert choice.sample_bytes == 2 * st.arrays[ARRAY].chunk_nbytes and choice.measured_on.startswith("2 stored")
    monkeypatch.setattr(cc, "_spread", lambda grid, n: CHUNKS[:1])
    with pytest.raises(SchemaError, match="no stored chunk"):
        measure_codecs(st, array=ARRAY, repeats=1)
    shutil.rmtree(path)


def test_rechunk_auto_writes_the_recommended_codec_with_the_same_values(store, tmp_path):
    out = rechunk(store, tmp_path / "o.zarr", chunks=(6, 1, 8, 16), codec="auto", read_bps=1e3, progress=False)
    sizes = {n: store.read(n, slice(0, 1)).size for n in store.fields}  # per time step: the same order by size
    big = max(sizes, key=sizes.__getitem__)
    want = max(measure_codecs(store, field=big, block=(6, 1, 8, 16), repeats=1, read_bps=1e3,
                              tie=0.0).costs, key=lambda c: c.ratio).codec  # fmt: skip
    g = zarr.open_group(str(out), mode="r")
    src = zarr.open_group(str(store.path), mode="r")
    expect = {"blosc-lz4": ("blosc", "lz4"), "blosc-zstd": ("blosc", "zstd"), "zstd": ("zstd", None),
              "gzip": ("gzip", None)}[want]  # fmt: skip
    for name in store.fields:
        comp = g[name].compressors
        assert len(comp) == 1, f"{name}: expected one compressor for slow reads"
        cfg = comp[0].get_config()
        assert (cfg["id"], cfg.get("cname")) == expect, (want, cfg)
        np.testing.assert_array_equal(g[name][...], src[name][...])


def test_cli_inspect_codecs_json_and_rechunk_flag_checks(store, tmp_path, capsys):
    assert cli(["inspect", str(store.path), "--codecs", "--read-gbps", "100", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["codecs"]["codec"] in CODECS and d["codecs"]["read_given_bps"] == pytest.approx(100e9)
    assert cli(["inspect", str(store.path), "--read-gbps", "1"]) == 2
    assert "--codecs" in capsys.readouterr().err
    assert cli(["inspect", str(store.path), "--codecs", "--read-gbps", "0.5"]) == 0
    assert "reads charged at 0.50 GB/s (given)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli(["rechunk", str(store.path), str(tmp_path / "x.zarr"), "--read-gbps", "1"])
