"""A URL fastload cannot open is a StoreError naming the URL and what is missing, before any work, in every entry
point (review s13 r2 item 2: ``fastload inspect foo://x/y.zarr`` was fsspec's bare ``ValueError: Protocol not
known``, ``s3://`` without s3fs an ``ImportError``, an unreachable bucket with obstore an ``OSError``); fsspec's or
obstore's own error stays as ``__cause__``. A latency that is not a finite number >= 0 is a ConfigError."""

from __future__ import annotations

import importlib.util

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import _registry, known_implementations

from fastload.cli import main as cli
from fastload.errors import ConfigError, StoreError, StoreNotFoundError
from fastload.norm import Normalizer
from fastload.store import FsspecSource, LatencySource, LocalSource, make_source, open_store

_MISSING = "fastloadtestmissing"  # a protocol fsspec knows whose package is not installed


@pytest.fixture
def missing_package_protocol(monkeypatch):
    """A protocol in fsspec's table of known implementations whose module does not exist (as s3:// without
    s3fs), with the install hint fsspec carries for it."""
    monkeypatch.setitem(known_implementations, _MISSING,
                        {"class": "fastload_no_such_package.FS", "err": "Install fastload-no-such-package"})
    return _MISSING


class _UnreachableFS(MemoryFileSystem):
    """A filesystem whose every request fails as a network one does (refused connection)."""

    protocol = "fastloadtestunreachable"

    def exists(self, path, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")


def test_an_unknown_protocol_names_the_url_and_keeps_fsspecs_error():
    with pytest.raises(StoreError, match=r"^nosuchproto://b/x\.zarr: fsspec knows no protocol 'nosuchproto'") as e:
        make_source("nosuchproto://b/x.zarr")
    assert isinstance(e.value.__cause__, ValueError) and "Protocol not known" in str(e.value.__cause__)
    with pytest.raises(StoreError, match="knows no protocol 'nosuchproto'"):
        open_store("nosuchproto://b/x.zarr")
    with pytest.raises(StoreError, match="knows no protocol 'nosuchproto'"):
        FsspecSource("nosuchproto://b/x.zarr")


def test_a_protocol_whose_package_is_missing_says_what_to_install(missing_package_protocol):
    url = f"{missing_package_protocol}://bucket/x.zarr"
    with pytest.raises(StoreError) as e:
        make_source(url)
    msg = str(e.value)
    assert msg.startswith(f"{url}: reading {missing_package_protocol}:// URLs needs a package that is not installed")
    assert "Install fastload-no-such-package" in msg
    assert isinstance(e.value.__cause__, ImportError)


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_s3_without_s3fs_says_to_install_it():
    with pytest.raises(StoreError, match=r"s3://b/x\.zarr: reading s3:// URLs needs .*Install s3fs"):
        make_source("s3://b/x.zarr")


class _StrictFS(MemoryFileSystem):
    """A filesystem that takes no options (fsspec raises the constructor's TypeError for one it does not take)."""

    protocol = "fastloadteststrict"

    def __init__(self):
        super().__init__()


def test_options_the_filesystem_does_not_take_are_named(monkeypatch):
    monkeypatch.setitem(_registry, _StrictFS.protocol, _StrictFS)
    url = f"{_StrictFS.protocol}://x.zarr"
    with pytest.raises(StoreError, match=rf"^{url}: storage_options \['no_such_option'\] do not fit") as e:
        make_source(url, {"no_such_option": 1})
    assert isinstance(e.value.__cause__, TypeError)


class _PickyFS(MemoryFileSystem):
    """A filesystem registered at runtime (in fsspec's registry, not in ``available_protocols()``) whose
    constructor refuses an option's value with ValueError."""

    protocol = "fastloadtestpicky"

    def __init__(self, access="ro", **kw):
        if access != "ro":
            raise ValueError(f"access must be 'ro', got {access!r}")
        super().__init__(**kw)


def test_source_of_a_runtime_registered_protocol_refusing_an_option_is_not_unknown(monkeypatch):
    """A protocol registered at runtime as a class whose constructor rejects an option was reported as "fsspec
    knows no protocol" (review s13 rv2 item 5): fsspec knows it; the options are what it refuses."""
    import fsspec

    monkeypatch.setitem(_registry, _PickyFS.protocol, _PickyFS)  # what fsspec.register_implementation does
    assert _PickyFS.protocol not in fsspec.available_protocols()
    url = f"{_PickyFS.protocol}://x.zarr"
    with pytest.raises(StoreError, match=rf"^{url}: fsspec cannot open this URL with storage_options \['access'\]: "
                                         r"access must be 'ro', got 'rw'$") as e:
        make_source(url, {"access": "rw"})
    assert isinstance(e.value.__cause__, ValueError)
    # a chain naming an unknown protocol after a known one names the unknown one
    with pytest.raises(StoreError, match=r"^simplecache::nosuchproto://b/x\.zarr: fsspec knows no protocol "
                                         r"'nosuchproto'"):
        make_source("simplecache::nosuchproto://b/x.zarr")


def test_an_unreachable_store_is_a_store_error_naming_the_url(monkeypatch):
    monkeypatch.setitem(_registry, _UnreachableFS.protocol, _UnreachableFS)
    url = f"{_UnreachableFS.protocol}://bucket/x.zarr"
    with pytest.raises(StoreError, match=rf"^{url}: cannot reach the store: ConnectionRefusedError") as e:
        make_source(url)
    assert isinstance(e.value.__cause__, ConnectionRefusedError)
    assert not isinstance(e.value, StoreNotFoundError)


def test_an_unreachable_bucket_with_obstore_fails_at_open_naming_it():
    pytest.importorskip("obstore")
    import datetime

    opts = {"region": "us-east-1", "skip_signature": True, "endpoint": "http://127.0.0.1:9",
            "client_options": {"allow_http": True},
            "retry_config": {"max_retries": 0, "retry_timeout": datetime.timedelta(seconds=1)}}
    with pytest.raises(StoreError, match=r"^s3://bucket/x\.zarr: cannot read the store's metadata: .*zarr\.json") as e:
        open_store("s3://bucket/x.zarr", backend="obstore", storage_options=opts)
    assert isinstance(e.value.__cause__, OSError)


def test_a_missing_url_is_still_not_found():
    with pytest.raises(StoreNotFoundError, match=r"memory://fastload-no-such-store\.zarr: no store at this URL"):
        make_source("memory://fastload-no-such-store.zarr")


@pytest.mark.parametrize("argv", [
    ["inspect", "{url}"],
    ["stats", "{url}", "--out", "{tmp}/n.zarr"],
    ["rechunk", "{url}", "{tmp}/out.zarr"],
    ["bench", "{url}", "--workdir", "{tmp}/w"],
])
def test_every_command_prints_the_error_not_a_traceback(argv, tmp_path, capsys, missing_package_protocol):
    for url, words in (("nosuchproto://x/y.zarr", "fsspec knows no protocol 'nosuchproto'"),
                       (f"{missing_package_protocol}://x/y.zarr", "Install fastload-no-such-package")):
        args = [a.format(url=url, tmp=tmp_path) for a in argv]
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert f"fastload {argv[0]}: error: " in err and url in err and words in err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_the_normalisation_store_url_goes_through_the_same_check(missing_package_protocol):
    """6260b21 turned only an unknown protocol with storage_options into a fastload error (SchemaError, naming
    the store as unreadable); without options a protocol whose package is missing was fsspec's ImportError."""
    url = f"{missing_package_protocol}://bucket/norm.zarr"
    with pytest.raises(StoreError, match=rf"^normalisation store {url}: reading .*Install fastload-no-such") as e:
        Normalizer(url)
    assert isinstance(e.value.__cause__, ImportError)
    for opts in (None, {"anon": True}):
        with pytest.raises(StoreError, match=r"normalisation store nosuchproto://b/n\.zarr: fsspec knows no protocol"):
            Normalizer("nosuchproto://b/n.zarr", storage_options=opts)


@pytest.mark.parametrize("ms", [-1, -0.5, float("nan"), float("inf"), "5", None, True])
def test_a_latency_that_is_not_a_finite_number_of_ms_is_a_config_error(tmp_path, ms):
    with pytest.raises(ConfigError, match=r"latency_ms: expected a finite number of milliseconds >= 0, got"):
        LatencySource(LocalSource(tmp_path), ms)
    if ms:  # make_source adds no LatencySource for 0 / None / False
        with pytest.raises(ConfigError, match="latency_ms"):
            make_source(tmp_path, latency_ms=ms)
    assert LatencySource(LocalSource(tmp_path), 0).ms == 0.0 and LatencySource(LocalSource(tmp_path), 2).ms == 2.0


def test_profile_loader_and_profile_print_the_error_too(tmp_path_factory, tmp_path, capsys, monkeypatch):
    from tests.profiling.loopdata import sampling, tiny_store

    _, norm = tiny_store(tmp_path_factory)
    cfg = tmp_path / "sampling.toml"
    cfg.write_text(sampling(norm).to_toml())
    monkeypatch.chdir(tmp_path)
    for argv in (["profile-loader", "nosuchproto://x/y.zarr", "--config", str(cfg), "--out", str(tmp_path / "r")],
                 ["profile", "--store", "nosuchproto://x/y.zarr", "--steps", "1", "--out", str(tmp_path / "p")]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert f"fastload {argv[0]}: error: " in err and "nosuchproto://x/y.zarr: fsspec knows no protocol" in err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampling.toml"]
