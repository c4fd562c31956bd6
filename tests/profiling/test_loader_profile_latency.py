"""``fastload profile-loader --store-latency-ms``: a negative, NaN or infinite latency is refused by name before
anything is opened (review s13 r2 item 6: -1 or nan was a bare ValueError from the store's LatencySource, after
the setup; inf would have slept forever)."""

from __future__ import annotations

import pytest

from fastload.cli import main as cli
from fastload.config import LoaderConfig
from fastload.errors import ConfigError
from profiling.loader_profile import profile_loader
from tests.profiling.loopdata import sampling, tiny_store


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_the_flag_is_refused_by_name_before_any_work(tmp_path_factory, tmp_path, capsys, value):
    store, norm = tiny_store(tmp_path_factory)
    cfg = tmp_path / "sampling.toml"
    cfg.write_text(sampling(norm).to_toml())
    out = tmp_path / "r"
    assert cli(["profile-loader", store, "--config", str(cfg), "--store-latency-ms", value, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "--store-latency-ms: expected a finite number of milliseconds >= 0" in captured.err
    assert value in captured.err
    assert captured.out == "" and not out.exists()


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_the_api_refuses_it_before_opening_the_store(tmp_path_factory, value):
    store, norm = tiny_store(tmp_path_factory)
    logged: list[str] = []
    with pytest.raises(ConfigError, match=r"profile-loader latency_ms: expected a finite number of milliseconds"):
        profile_loader(store, sampling(norm), LoaderConfig(workers=1), batches=1, warmup=0, latency_ms=value,
                       log=logged.append)
    assert logged == []


def test_a_latency_of_zero_or_more_still_runs(tmp_path_factory):
    store, norm = tiny_store(tmp_path_factory)
    summary, records = profile_loader(store, sampling(norm), LoaderConfig(workers=1), batches=1, warmup=0,
                                      latency_ms=1, log=lambda m: None)
    assert len(records) == 1 and summary["config"]["latency_ms"] == 1
