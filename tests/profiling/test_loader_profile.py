"""``fastload profile-loader``: per-batch records and summary against independent arithmetic (useful bytes from
the sampling geometry, samples from batches), the worker/prefetch sweep, files written, cold data, bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest

from fastload.cli import main as cli
from fastload.config import LoaderConfig
from fastload.errors import ConfigError
from fastload.store import open_store
from profiling.loader_profile import main, profile_loader, sweep
from profiling.report import LOADER_STAGES
from tests.profiling.loopdata import BATCH, LEVELS, NUM_TOKENS, TOKEN_SIZE, sampling, tiny_store


def useful_bytes_per_sample(store_path: str) -> int:
    """Bytes of source values one sample uses: levels x box points x itemsize, summed over the fields."""
    store = open_store(store_path)
    box = math.prod(n * s for n, s in zip(NUM_TOKENS, TOKEN_SIZE))
    return sum(nl * box * store.arrays[store.fields[f].array].dtype.itemsize
               for f, nl in (("temperature", len(LEVELS)), ("t2m", 1)))


def test_summary_against_independent_arithmetic(tmp_path_factory):
    store, norm = tiny_store(tmp_path_factory)
    summary, records = profile_loader(store, sampling(norm), LoaderConfig(workers=1, samples_per_epoch=8),
                                      batches=6, warmup=1, log=lambda m: None)
    assert len(records) == 6 and summary["batches"] == 6
    assert summary["samples"] == 6 * BATCH  # 4 batches per epoch: the profile ran on into the next epoch
    wall = summary["wall_s"]
    useful = useful_bytes_per_sample(store) * 6 * BATCH
    assert summary["bytes_useful_per_s"] * wall == pytest.approx(useful)
    decoded = sum(r["bytes_decoded"] for r in records)
    assert summary["read_amplification"] == pytest.approx(decoded / useful)
    assert summary["read_amplification"] >= 1.0  # whole chunks are decoded to cut boxes out of them
    hits = sum(r["cache_hits"] for r in records)
    misses = sum(r["cache_misses"] for r in records)
    assert summary["cache_hit_rate"] == pytest.approx(hits / (hits + misses))
    for st in LOADER_STAGES:
        assert summary["stages"][st]["total_s"] == pytest.approx(sum(r[f"{st}_ms"] for r in records) / 1e3)
    assert summary["stages"]["queue_wait"]["total_s"] <= wall
    assert summary["config"]["loader"]["device"] == "cpu"  # no GPU needed


def test_cli_sweep_writes_table_csv_json_png(tmp_path_factory, tmp_path, capsys):
    store, norm = tiny_store(tmp_path_factory)
    cfg = tmp_path / "sampling.toml"
    cfg.write_text(sampling(norm).to_toml())
    out = tmp_path / "out"
    assert cli(["profile-loader", store, "--config", str(cfg), "--batches", "3", "--warmup", "1",
                "--sweep-workers", "1,2", "--sweep-prefetch", "1,3", "--out", str(out),
                "--set", "loader.samples_per_epoch=8"]) == 0
    text = capsys.readouterr().out
    assert "samples/s" in text and "queue wait" in text and "read amplification" in text
    doc = json.loads((out / "loader_summary.json").read_text())
    settings = [r["settings"] for r in doc["runs"]]
    assert settings == [{"workers": 1, "prefetch": 1}, {"workers": 1, "prefetch": 3},
                        {"workers": 2, "prefetch": 1}, {"workers": 2, "prefetch": 3}]
    for r in doc["runs"]:
        assert r["summary"]["samples"] == 3 * BATCH
        assert r["summary"]["config"]["loader"]["workers"] == r["settings"]["workers"]
        assert r["summary"]["config"]["loader"]["samples_per_epoch"] == 8
    with open(out / "loader_batches.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 3
    assert {(r["workers"], r["prefetch"]) for r in rows} == {("1", "1"), ("1", "3"), ("2", "1"), ("2", "3")}
    assert (out / "loader.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reads_through_the_backend_asked_for(tmp_path_factory, tmp_path, capsys):
    pytest.importorskip("obstore")
    store, norm = tiny_store(tmp_path_factory)
    cfg = tmp_path / "sampling.toml"
    cfg.write_text(sampling(norm).to_toml())
    args = ["profile-loader", store, "--config", str(cfg), "--batches", "2", "--warmup", "1",
            "--set", "loader.samples_per_epoch=8", "--backend", "obstore"]
    assert cli([*args, "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "loader_summary.json").read_text())
    assert doc["runs"][0]["summary"]["config"]["backend"] == "obstore"
    assert doc["runs"][0]["summary"]["samples"] == 2 * BATCH
    capsys.readouterr()
    assert cli(["profile-loader", "--backend", "obstore", "--batches", "1"]) != 0
    assert "--backend are for a STORE given" in capsys.readouterr().err


@pytest.mark.skipif(not __import__("profiling.slowstore", fromlist=["x"]).can_drop_pages(),
                    reason="needs posix_fadvise")
def test_cold_data_reads_every_chunk_from_storage(tmp_path_factory):
    store, norm = tiny_store(tmp_path_factory)
    summary, records = profile_loader(store, sampling(norm), LoaderConfig(workers=1, cache_bytes=0),
                                      batches=3, warmup=0, data="cold", log=lambda m: None)
    # every batch decodes chunks it fetched (cache_bytes=0); their stored bytes count when their request returns,
    # which for a chunk read ahead is during an earlier batch (IOStats.bytes_stored), so a batch may count none
    assert all(r["cache_misses"] > 0 for r in records) and sum(r["bytes_stored"] for r in records) > 0
    assert summary["config"]["data"] == "cold"


def test_cold_data_with_worker_processes_is_refused_up_front(tmp_path_factory, tmp_path, capsys):
    """Review h7, item 4: ``--data cold --set loader.mode=process`` dropped the store's pages, then failed in the
    Loader ("cannot reopen ... ColdSource"): worker processes reopen the store with plain reads, so their reads
    would not be cold. It is refused, naming both settings, before a page is dropped."""
    store, norm = tiny_store(tmp_path_factory)
    logged = []
    with pytest.raises(ConfigError, match=r"--data = 'cold' with loader.mode = 'process'.*loader.mode = 'thread'"):
        profile_loader(store, sampling(norm), LoaderConfig(workers=1, mode="process"), batches=1, warmup=0,
                       data="cold", log=logged.append)
    assert logged == []  # nothing opened, no page dropped
    cfg = tmp_path / "sampling.toml"
    cfg.write_text(sampling(norm).to_toml())
    assert cli(["profile-loader", store, "--config", str(cfg), "--data", "cold", "--set", "loader.mode=process",
                "--out", str(tmp_path / "r")]) == 2
    captured = capsys.readouterr()
    assert "profile-loader --data = 'cold' with loader.mode = 'process'" in captured.err
    assert captured.out == "" and not (tmp_path / "r").exists()


def test_sweep_defaults_to_the_loader_settings(tmp_path_factory):
    store, norm = tiny_store(tmp_path_factory)
    runs = sweep(store, sampling(norm), LoaderConfig(workers=1, prefetch=2), batches=1, warmup=0,
                 log=lambda m: None)
    assert [s for s, _, _ in runs] == [{"workers": 1, "prefetch": 2}]


@pytest.mark.parametrize("args, words", [
    (["/some/store.zarr"], ["--config"]),
    (["--config", "x.toml"], ["STORE"]),
    (["/s.zarr", "--config", "x.toml", "--sweep-workers", "a,b"], ["--sweep-workers"]),
    (["/s.zarr", "--config", "x.toml", "--sweep-prefetch", "0"], ["--sweep-prefetch", ">= 1"]),
    (["/s.zarr", "--config", "x.toml", "--set", "steps=3"], ["loader.*"]),
])
def test_bad_arguments(args, words):
    with pytest.raises(ConfigError) as e:
        main(args)
    for w in words:
        assert w in str(e.value)


def test_bad_settings(tmp_path_factory):
    store, norm = tiny_store(tmp_path_factory)
    with pytest.raises(ConfigError, match="batches"):
        profile_loader(store, sampling(norm), LoaderConfig(), batches=0)
    with pytest.raises(ConfigError, match="--data"):
        profile_loader(store, sampling(norm), LoaderConfig(), data="synthetic")
    with pytest.raises(ConfigError, match="workers"):
        sweep(store, sampling(norm), LoaderConfig(), workers=[0], batches=1, log=lambda m: None)


def test_the_window_is_timed_after_the_devices_copies(tmp_path_factory, monkeypatch):
    """A GPU loader's host-to-device copies are asynchronous: the device is synchronised before the clock is read
    at the window's start (the warm-up batches' copies out) and at its end (the last batch's copy in)."""
    import torch

    import profiling.loader_profile as lp

    events: list[str] = []
    real_clock, real_sync = lp._clock, lp._sync
    monkeypatch.setattr(lp, "_clock", lambda: events.append("clock") or real_clock())
    monkeypatch.setattr(lp, "_sync", lambda device: events.append(f"sync {device}") or real_sync(device))
    store, norm = tiny_store(tmp_path_factory)
    profile_loader(store, sampling(norm), LoaderConfig(workers=1, samples_per_epoch=8), batches=2, warmup=1,
                   log=lambda m: None)
    assert events == ["sync cpu", "clock", "sync cpu", "clock"]
    synced: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", synced.append)
    real_sync("cpu")
    real_sync("cuda:1")
    assert synced == [torch.device("cuda:1")]  # what a GPU loader's device gets (no GPU needed to check it)
