"""Local paths with '#' or '?' in them: zarr-python >= 3.2 parses a str path as a URL and cuts it there, so the
stats and rechunk outputs landed in (or were read from) another folder. The writers and readers hand zarr a Path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from fastload._zarr_location import zarr_location
from fastload.store import open_store
from tests.fastload.stores import make_per_variable


def test_local_paths_become_paths_and_urls_stay_as_they_are(tmp_path):
    assert zarr_location(f"{tmp_path}/a#b?.zarr") == Path(f"{tmp_path}/a#b?.zarr")
    assert zarr_location(tmp_path / "c#d.zarr") == tmp_path / "c#d.zarr"
    assert zarr_location("s3://bucket/x#y.zarr") == "s3://bucket/x#y.zarr"
    assert zarr_location("simplecache::s3://bucket/x#y.zarr") == "simplecache::s3://bucket/x#y.zarr"


def test_a_file_url_without_options_becomes_the_local_path_fsspec_gives_it(tmp_path, monkeypatch):
    """zarr >= 3.2 cuts a file:// URL at '#' or '?' and takes ``file://rel`` as a host (zarr 3.1 opened both
    through fsspec): without options the URL becomes the path fsspec's local filesystem reads."""
    from fsspec.implementations.local import LocalFileSystem

    monkeypatch.chdir(tmp_path)
    for url, path in [
        (f"file://{tmp_path}/a#b?.zarr", tmp_path / "a#b?.zarr"),
        (f"local://{tmp_path}/x.zarr", tmp_path / "x.zarr"),
        ("file://rel#1.zarr", tmp_path / "rel#1.zarr"),
    ]:
        got = zarr_location(url)
        assert isinstance(got, Path) and os.path.abspath(got) == str(path), url
        assert str(got) == LocalFileSystem._strip_protocol(url)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(Path(path), mode="r")
    return {name: a[...] for name, a in g.members(max_depth=None) if isinstance(a, zarr.Array)}


@pytest.mark.parametrize("name", ["n#1.zarr", "n?q=1.zarr"])
def test_stats_of_a_store_with_url_characters_land_at_the_path_given(tmp_path, name):
    """The coefficients written to ``name`` (from a source named like it) equal those written to a plain path,
    and nothing else appears in the folder."""
    from fastload.norm import Normalizer
    from fastload.stats import StatsConfig, compute_stats

    make_per_variable(tmp_path / f"s{name}", nt=4, ny=5, nx=8)
    make_per_variable(tmp_path / "plain_s.zarr", nt=4, ny=5, nx=8)
    cfg = StatsConfig(progress=False)
    got = compute_stats(open_store(tmp_path / f"s{name}"), tmp_path / name, cfg)
    compute_stats(open_store(tmp_path / "plain_s.zarr"), tmp_path / "plain_n.zarr", cfg)
    assert sorted(os.listdir(tmp_path)) == sorted([f"s{name}", name, "plain_s.zarr", "plain_n.zarr"])
    assert os.path.abspath(got) == str(tmp_path / name)
    a, b = _arrays(tmp_path / name), _arrays(tmp_path / "plain_n.zarr")
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    Normalizer(got)  # reads it back through the same path
    by_url = Normalizer(f"file://{tmp_path / name}")  # zarr >= 3.2 cut the URL at '#'/'?'
    assert by_url.fields == Normalizer(tmp_path / "plain_n.zarr").fields and by_url.fields


def test_rechunk_from_and_to_paths_with_url_characters(tmp_path):
    from fastload.rechunk import rechunk

    truth = make_per_variable(tmp_path / "s#1.zarr", nt=4, ny=5, nx=8)
    out = rechunk(open_store(tmp_path / "s#1.zarr"), tmp_path / "r?x#2.zarr", chunks=(2, 1, 5, 4), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["r?x#2.zarr", "s#1.zarr"]
    back = open_store(out)
    for v in ("t", "q", "sp"):
        np.testing.assert_array_equal(back.read(v).reshape(truth[v].shape), truth[v], err_msg=v)
    by_url = rechunk(open_store(f"file://{tmp_path / 's#1.zarr'}"), tmp_path / "u.zarr", chunks=(2, 1, 5, 4),
                     progress=False)  # fmt: skip
    back = open_store(by_url)
    for v in ("t", "q", "sp"):
        np.testing.assert_array_equal(back.read(v).reshape(truth[v].shape), truth[v], err_msg=v)


def test_a_file_url_with_storage_options_opens_through_fsspec_and_a_local_path_with_them_is_refused(tmp_path):
    """zarr >= 3.2 refuses storage_options with a file:// URL (zarr 3.1 opened it through fsspec): the normaliser
    and rechunk's source group open it through fsspec in both; options with a local path name both."""
    from fastload.errors import ConfigError

    truth = make_per_variable(tmp_path / "s.zarr", nt=2, ny=5, nx=8)
    g = zarr.open_group(zarr_location(f"file://{tmp_path / 's.zarr'}", {"auto_mkdir": False}), mode="r")
    np.testing.assert_array_equal(g["sp"][...], truth["sp"])
    with pytest.raises(ConfigError, match=r"storage_options \{'anon': True\} given for the local path .*s\.zarr"):
        zarr_location(str(tmp_path / "s.zarr"), {"anon": True})
