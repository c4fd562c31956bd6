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
from fastload.errors import ConfigError
from fastload.rechunk import rechunk
from fastload.store import open_store
from fastload.synth import synthesize
from fastload.write import CODECS


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = synthesize(tmp_path_factory.mktemp("codecs") / "s.zarr", "tiny", hours=12, progress=False)
    return open_store(path)


def _independent_ratio(store, choice, codec: str) -> float:
    """Decoded / stored bytes of the measured chunks, encoded with numcodecs directly; the chunks are the stored
    (full, edge-padded) chunk files decoded with the compressor named in the v2 metadata."""
    root = Path(store.path)
    meta = json.loads((root / choice.array / ".zarray").read_text())
    src = numcodecs.get_codec(meta["compressor"])
    blocks = [np.frombuffer(src.decode((root / choice.array / ".".join(map(str, c))).read_bytes()), "<f4")
              for c in choice.chunks]
    comp = {"blosc-lz4": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE), "blosc-zstd":
            numcodecs.Blosc("zstd", 5, numcodecs.Blosc.SHUFFLE), "zstd": numcodecs.Zstd(1),
            "lz4": numcodecs.LZ4(1), "gzip": numcodecs.GZip(1), "none": None}[codec]  # fmt: skip
    stored = sum(b.nbytes if comp is None else len(comp.encode(b)) for b in blocks)
    return sum(b.nbytes for b in blocks) / stored


def test_ratios_match_numcodecs_and_model_is_the_stated_formula(store):
    choice = measure_codecs(store, n_chunks=3, repeats=1)
    assert choice.array in store.arrays and len(choice.chunks) == 3 and choice.read_measured
    assert {c.codec for c in choice.costs} == set(CODECS)
    for c in choice.costs:
        assert c.ratio == pytest.approx(_independent_ratio(store, choice, c.codec), rel=1e-12)
        assert c.seconds_per_gb == pytest.approx(1e9 / c.decode_bps + 1e9 / (c.ratio * choice.read_bps))
    by = {c.codec: c for c in choice.costs}
    assert by["none"].ratio == 1.0
    assert [c.seconds_per_gb for c in choice.costs] == sorted(c.seconds_per_gb for c in choice.costs)


def test_slow_reads_pick_the_best_ratio_fast_reads_the_fastest_decode(store):
    slow = measure_codecs(store, n_chunks=2, repeats=1, read_bps=1e3, tie=0.0)
    assert slow.codec == max(slow.costs, key=lambda c: c.ratio).codec and not slow.read_measured
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


def test_rechunk_auto_writes_the_recommended_codec_with_the_same_values(store, tmp_path):
    out = rechunk(store, tmp_path / "o.zarr", chunks=(6, 1, 8, 16), codec="auto", read_bps=1e3, progress=False)
    want = max(measure_codecs(store, n_chunks=2, repeats=1, read_bps=1e3, tie=0.0,
                              codecs=[c for c in CODECS if c != "lz4"]).costs, key=lambda c: c.ratio).codec
    g = zarr.open_group(str(out), mode="r")
    src = zarr.open_group(str(store.path), mode="r")
    for name in store.fields:
        comp = g[name].compressors
        assert comp, f"{name}: expected a compressor for slow reads"
        cfg = comp[0].to_dict() if hasattr(comp[0], "to_dict") else comp[0].get_config()
        text = json.dumps(cfg)
        assert want.split("-")[-1] in text, (want, text)
        np.testing.assert_array_equal(g[name][...], src[name][...])


def test_cli_inspect_codecs_json_and_rechunk_flag_checks(store, tmp_path, capsys):
    assert cli(["inspect", str(store.path), "--codecs", "--read-gbps", "100", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["codecs"]["codec"] in CODECS and d["codecs"]["read_bps"] == pytest.approx(100e9)
    assert cli(["inspect", str(store.path), "--read-gbps", "1"]) == 2
    assert "--codecs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["rechunk", str(store.path), str(tmp_path / "x.zarr"), "--read-gbps", "1"])
