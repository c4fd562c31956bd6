"""Arrays of variable-length strings or bytes (object dtype: zarr v2 ``|O`` with the filter ``vlen-utf8`` /
``vlen-bytes``; zarr v3 ``data_type`` ``string`` / ``variable_length_bytes`` / ``bytes`` with the codec of that
name), e.g. ERA5's ``expver(time)`` as xarray writes it from netCDF. They made ``open_store`` refuse the whole store;
now the store opens, they are never fields (listed in ``Store.not_fields`` with why, so ``fastload inspect`` shows
them and asking for one as a field says why), and ``Store.read_array`` decodes them to object arrays of ``str`` /
``bytes``. Every value is checked against zarr-python's or xarray's reading of the same store."""

from __future__ import annotations

import contextlib
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.codecs import TransposeCodec
from zarr.core.dtype import VariableLengthBytes

import fastload
from fastload.errors import ChunkReadError, CodecError, ConfigError, SchemaError
from fastload.inspect import describe, format_summary
from fastload.inspect import main as inspect_main
from fastload.store import open_store
from tests.fastload.stores import make_atmorep, make_per_variable

STR_WHY = ("variable-length strings (dtype object, codec 'vlen-utf8'); a field must be numeric (Store.read_array "
           "reads its values)")  # fmt: skip
TEXT = np.array([["a", "", "défg", "日本語"], ["x\x00y", "😀 emoji", "z" * 300, " "],
                 ["0001", "0005", "n/a", "tab\there"], ["", "", "q", "é"], ["last", "row", "of", "five"]],
                dtype=object)  # fmt: skip
BLOBS = np.array([[s.encode("utf-8") for s in row] for row in TEXT], dtype=object)
BLOBS[0, 0], BLOBS[1, 1] = b"\x00\xff\x00", b"\xff" * 9  # not UTF-8, embedded NULs


@contextlib.contextmanager
def _quiet():
    """zarr-python warns that its string types and consolidated v3 metadata are not in the v3 spec."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _era5(path, zarr_format):
    """An ERA5-like dataset from netCDF: ``t2m(valid_time, latitude, longitude)`` and a string coordinate
    ``expver(valid_time)``, written by xarray."""
    vt = pd.date_range("2024-01-01", periods=6, freq="6h")
    t2m = np.random.default_rng(0).normal(280, 5, (6, 19, 36)).astype("f4")
    ds = xr.Dataset({"t2m": (("valid_time", "latitude", "longitude"), t2m)},
                    coords={"valid_time": vt, "latitude": np.linspace(90, -90, 19), "longitude": np.arange(0, 360, 10.0),
                            "expver": ("valid_time", np.array(["0001"] * 4 + ["0005"] * 2, dtype=object))})  # fmt: skip
    with _quiet():
        ds.to_zarr(path, zarr_format=zarr_format, consolidated=zarr_format == 2)


def _cfg(field):
    return fastload.SamplingConfig.from_dict(dict(batch_size=1, time_step=1, fields={
        field: dict(num_tokens=[1, 2, 2], token_size=[2, 4, 4], normalization="none")}))  # fmt: skip


def _meta_path(path, name, zarr_format):
    return os.path.join(path, name, ".zarray" if zarr_format == 2 else "zarr.json")


def _edit(path, name, zarr_format, fn):
    p = _meta_path(path, name, zarr_format)
    with open(p) as f:
        doc = json.load(f)
    fn(doc)
    with open(p, "w") as f:
        json.dump(doc, f)


# -- ERA5 through xarray -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("dtype", ["<U4", "S4"])
def test_a_fixed_width_string_coordinate_is_listed_and_named_when_asked_for(tmp_path, zarr_format, dtype):
    """``expver(valid_time)`` as xarray writes a NumPy str (``<U4``) or bytes (``S4``) array: listed in
    ``not_fields`` (and so by ``fastload inspect``) and asking for it as a field says why, as for variable-length
    strings; it was left out silently and asked for it said only 'not in store'."""
    path = tmp_path / "era5.zarr"
    vt = pd.date_range("2024-01-01", periods=4, freq="6h")
    ds = xr.Dataset({"t2m": (("valid_time", "latitude", "longitude"), np.zeros((4, 19, 36), "f4"))},
                    coords={"valid_time": vt, "latitude": np.linspace(90, -90, 19), "longitude": np.arange(0, 360, 10.0),
                            "expver": ("valid_time", np.array(["0001", "0001", "0005", "0005"], dtype=dtype))})  # fmt: skip
    with _quiet():
        ds.to_zarr(path, zarr_format=zarr_format, consolidated=False)
        want = xr.open_zarr(path, consolidated=False)["expver"].values
        s = open_store(path)
    kind = "strings" if dtype == "<U4" else "bytes"
    why = s.not_fields["expver"]
    assert why.startswith(f"fixed-width {kind} (dtype ") and "a field must be numeric" in why
    with pytest.raises(ConfigError, match=r"fields.expver: array 'expver' in store .* is not a field: fixed-width"):
        s.check(_cfg("expver"))
    assert s.read_array("expver").tolist() == want.tolist()
    assert f"  expver  not a field: {why}" in format_summary(describe(s, sizes="never")).splitlines()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_era5_with_a_string_expver_opens(tmp_path, zarr_format, capsys):
    path = tmp_path / "era5.zarr"
    _era5(path, zarr_format)
    with _quiet():
        ref = xr.open_zarr(path)
        want_t2m, want_expver = ref["t2m"].values, ref["expver"].values
        want_time = ref["valid_time"].values
    s = open_store(path)
    assert list(s.fields) == ["t2m"]
    np.testing.assert_array_equal(s.time, want_time)
    np.testing.assert_array_equal(s.read("t2m")[:, 0], want_t2m)
    assert s.not_fields == {"expver": STR_WHY}
    got = s.read_array("expver")
    assert got.dtype == object and got.shape == (6,) and {type(v) for v in got.flat} == {str}
    assert got.tolist() == want_expver.tolist() == ["0001"] * 4 + ["0005"] * 2
    # asked for as a field: why not
    with pytest.raises(ConfigError) as e:
        s.check(_cfg("expver"))
    assert str(e.value) == f"fields.expver: array 'expver' in store {path} is not a field: {STR_WHY}; the fields are ['t2m']"
    s.check(_cfg("t2m"))
    # fastload inspect lists it with the other non-fields, in the table and the JSON
    assert f"  expver  not a field: {STR_WHY}" in format_summary(describe(s, sizes="never")).splitlines()
    assert inspect_main([str(path)]) == 0
    assert f"  expver  not a field: {STR_WHY}" in capsys.readouterr().out.splitlines()
    assert inspect_main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["not_fields"] == {"expver": STR_WHY}


# -- zarr-python's string and bytes arrays -----------------------------------------------------------------------
def _add_vlen(path, zarr_format, kind, fill, **kw):
    """Add a 5 x 4 array ``s`` of variable-length ``kind`` (chunks 2 x 3, so edge chunks are partial) to the store
    at ``path``; its last chunk row and column are never written (they read as the fill value)."""
    vals = TEXT if kind == "str" else BLOBS
    with _quiet():
        root = zarr.open_group(str(path), mode="a")
        a = root.create_array("s", shape=vals.shape, chunks=(2, 3), fill_value=fill,
                              dtype=str if kind == "str" else VariableLengthBytes(),
                              **_dims(zarr_format, ("row", "col")), **kw)  # fmt: skip
        a[:4, :3] = vals[:4, :3]
    return vals


def _dims(zarr_format, dims):
    """Dimension names as xarray writes them: v3 ``dimension_names``, v2 the attribute ``_ARRAY_DIMENSIONS``."""
    return {"dimension_names": dims} if zarr_format == 3 else {"attributes": {"_ARRAY_DIMENSIONS": list(dims)}}


def _zarr_read(path, name):
    with _quiet():
        return zarr.open_array(os.path.join(path, name), mode="r")[...]


def _check_as_zarr(s, path, name="s"):
    """Every chunk and the whole array, as fastload reads them, == zarr-python's reading (values and types)."""
    ref = _zarr_read(path, name).tolist()
    got = s.read_array(name)
    assert got.dtype == object and got.tolist() == ref
    assert {type(v) for v in got.flat} == {type(ref[0][0])}
    info = s._all[name]
    for chunk in np.ndindex(*info.grid_shape):
        block = s.read_chunk(name, chunk)  # a whole chunk: edge chunks past the shape hold the fill value
        r, c = (k * n for k, n in zip(chunk, info.chunks))
        assert block.shape == info.chunks
        assert block[: len(ref) - r, : len(ref[0]) - c].tolist() == [row[c : c + 3] for row in ref[r : r + 2]]


@pytest.mark.parametrize("fill", ["given", None])
@pytest.mark.parametrize("kind", ["str", "bytes"])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_python_vlen_array_reads_as_zarr(tmp_path, zarr_format, kind, fill):
    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=zarr_format)
    given = "n/a" if kind == "str" else b"n\x00a"
    _add_vlen(path, zarr_format, kind, given if fill else None)
    s = open_store(path)
    assert "s" not in s.fields
    assert s.not_fields["s"].startswith(f"variable-length {'strings' if kind == 'str' else 'bytes'} (dtype object, "
                                        f"codec 'vlen-{'utf8' if kind == 'str' else 'bytes'}')")  # fmt: skip
    _check_as_zarr(s, path)
    got = s.read_array("s")
    assert got[4, 3] == (given if fill else given[:0])  # never written: the fill value
    assert got[:4, :3].tolist() == (TEXT if kind == "str" else BLOBS)[:4, :3].tolist()


def test_v3_bytes_data_type_of_zarr_3_0(tmp_path):
    """zarr-python 3.0 named variable-length bytes ``bytes`` (3.1 writes ``variable_length_bytes``)."""
    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=3)
    _add_vlen(path, 3, "bytes", b"n\x00a")
    _edit(path, "s", 3, lambda d: d.__setitem__("data_type", "bytes"))
    s = open_store(path)
    assert s._all["s"].vlen == "bytes" and s._all["s"].fill_value == b"n\x00a"
    _check_as_zarr(s, path)


def test_sharded_strings_read_as_zarr(tmp_path):
    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=3)
    _add_vlen(path, 3, "str", "fill", shards=(4, 3))
    with open(_meta_path(path, "s", 3)) as f:
        assert json.load(f)["codecs"][0]["configuration"]["codecs"][0]["name"] == "vlen-utf8"
    _check_as_zarr(open_store(path), path)


def test_string_array_on_the_grid_is_not_a_field(tmp_path):
    """An object array over (time, latitude, longitude): the layout's "dtype object" becomes what it holds."""
    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=2)
    with _quiet():
        g = zarr.open_group(str(path), mode="a")
        a = g.create_array("flag", shape=(4, 9, 16), chunks=(2, 9, 16), dtype=str, fill_value="",
                           **_dims(2, ("time", "latitude", "longitude")))  # fmt: skip
        a[:2] = np.full((2, 9, 16), "ok", dtype=object)
    s = open_store(path)
    assert s.not_fields["flag"] == STR_WHY and list(s.fields) == ["orog", "q", "sp", "t"]
    with pytest.raises(ConfigError, match=r"fields\.flag: array 'flag' .* is not a field: variable-length strings"):
        s.check(_cfg("flag"))
    assert s.read_array("flag").tolist() == _zarr_read(path, "flag").tolist()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_atmorep_store_with_a_string_array(tmp_path, zarr_format):
    path = tmp_path / "a.zarr"
    make_atmorep(path, zarr_format=zarr_format)
    _add_vlen(path, zarr_format, "str", "n/a")
    s = open_store(path)
    assert s.layout == "atmorep" and s.not_fields == {"s": STR_WHY}
    _check_as_zarr(s, path)


@pytest.mark.parametrize(("coord", "message"), [
    ("latitude", r"coordinate 'latitude' has dtype object; expected numbers \(degrees\)"),
    ("time", r"time coordinate has dtype object; expected datetime64 or CF numbers"),
    ("level", r"level coordinate 'level' has dtype object; expected numbers"),
])  # fmt: skip
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_string_coordinate_fastload_needs_as_numbers_says_so(tmp_path, zarr_format, coord, message):
    """A string coordinate where fastload reads numbers (grid, time, levels) is decoded, then refused naming it
    (it was refused as an unsafe codec before it was ever looked at)."""
    ds = xr.Dataset({"t": (("time", "level", "latitude", "longitude"), np.zeros((3, 2, 5, 8), "f4"))},
                    coords={"time": pd.date_range("2024-01-01", periods=3, freq="6h"), "level": [500.0, 850.0],
                            "latitude": np.linspace(80, -80, 5), "longitude": np.arange(8) * 45.0})  # fmt: skip
    ds[coord] = np.array([f"v{i}" for i in range(ds.sizes[coord])], dtype=object)
    with _quiet():
        ds.to_zarr(tmp_path / "s.zarr", zarr_format=zarr_format)
    with pytest.raises(SchemaError, match=message):
        open_store(tmp_path / "s.zarr")


# -- what cannot be read, and why --------------------------------------------------------------------------------
def test_transpose_before_vlen_is_refused_when_read(tmp_path):
    """zarr-python 3.1 writes a transpose before vlen-utf8 in the wrong element order and reads it back scrambled:
    no reading is right, so fastload says it does not read it (the store opens)."""
    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=3)
    _add_vlen(path, 3, "str", "", filters=[TransposeCodec(order=(1, 0))])
    if tuple(int(v) for v in zarr.__version__.split(".")[:2]) < (3, 2):  # zarr 3.4.2 reads its own write back,
        assert _zarr_read(path, "s")[0, :3].tolist() != TEXT[0, :3].tolist()  # but not a store 3.1 wrote
    s = open_store(path)
    assert "s" in s.not_fields
    with pytest.raises(CodecError, match=r"array 's' \(.*s\.zarr/s/zarr\.json\): codec chain \['transpose', "
                                         r"'vlen-utf8', 'zstd'\]: \['transpose'\] before 'vlen-utf8' is not supported"):  # fmt: skip
        s.read_array("s")


def test_data_type_and_vlen_codec_disagree(tmp_path):
    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=3)
    _add_vlen(path, 3, "str", "")
    _edit(path, "s", 3, lambda d: d.__setitem__("data_type", "variable_length_bytes"))
    s = open_store(path)  # opens: the array is not read at open
    with pytest.raises(CodecError, match=r"array 's' .*: variable-length bytes need the codec 'vlen-bytes' \(the "
                                         r"array-to-bytes codec\); the codec chain is \['vlen-utf8', 'zstd'\]"):  # fmt: skip
        s.read_array("s")


def test_vlen_filter_on_a_numeric_field_fails_at_open(tmp_path):
    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=2)
    _edit(path, "sp", 2, lambda d: d.__setitem__("filters", [{"id": "vlen-utf8"}]))
    with pytest.raises(CodecError, match=r"array 'sp' .*: codec 'vlen-utf8' encodes variable-length values, but "
                                         r"the array's dtype is float32"):  # fmt: skip
        open_store(path)


def test_object_array_without_an_object_codec_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=2)
    _add_vlen(path, 2, "str", "")
    _edit(path, "s", 2, lambda d: d.__setitem__("filters", None))
    with pytest.raises(CodecError, match=r"array 's' .*object dtype \(v2 dtype '\|O'\) with no object codec"):
        open_store(path)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_truncated_string_chunk_names_array_and_chunk(tmp_path, zarr_format, monkeypatch):
    import numcodecs

    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=zarr_format)
    _add_vlen(path, zarr_format, "str", "", compressors=None)  # the chunk's bytes are the vlen stream itself
    f = path / "s" / ("1.0" if zarr_format == 2 else "c/1/0")
    f.write_bytes(f.read_bytes()[:-3])  # cut short: the header still counts 6 items
    s = open_store(path)
    with pytest.raises(ChunkReadError, match=r"array 's'.*chunk \(1, 0\)"):
        s.read_array("s")
    np.testing.assert_array_equal(s.read_chunk("s", (0, 0)), TEXT[:2, :3])
    # numcodecs allocates a slot per item its header claims before reading any: it must not be reached by these
    for cls in (numcodecs.vlen.VLenUTF8, numcodecs.vlen.VLenBytes):
        monkeypatch.setattr(cls, "decode", lambda self, buf, out=None: pytest.fail("numcodecs reached"))
    # a header claiming 2**31 items (16 GB of object slots)
    f.write_bytes(b"\x00\x00\x00\x80")
    with pytest.raises(ChunkReadError, match=r"array 's'.*chunk \(1, 0\).*variable-length stream holds 2147483648 "
                                             r"items, expected 6"):  # fmt: skip
        s.read_chunk("s", (1, 0))
    # the header agrees with the chunk (metadata may claim a huge chunk) but the stream cannot hold that many items
    f.write_bytes(b"\x06\x00\x00\x00" + bytes(16))
    with pytest.raises(ChunkReadError, match=r"array 's'.*chunk \(1, 0\).*stream of 20 bytes is too short for its 6 "
                                             r"items"):  # fmt: skip
        s.read_chunk("s", (1, 0))


@pytest.mark.parametrize(("kind", "fill", "expected"), [("str", [1], "a string \\(or a number\\)"),
                                                        ("bytes", "x", "a base64 string"),
                                                        ("bytes", 0, "a base64 string")])  # fmt: skip
def test_bad_fill_value_is_a_schema_error(tmp_path, kind, fill, expected):
    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=3)
    _add_vlen(path, 3, kind, None)
    _edit(path, "s", 3, lambda d: d.__setitem__("fill_value", fill))
    with pytest.raises(SchemaError, match=rf"s\.zarr/s/zarr\.json: fill_value .* is not a value of variable-length "
                                          rf"{'strings' if kind == 'str' else 'bytes'}; expected {expected} or null"):  # fmt: skip
        open_store(path)


def test_numeric_fill_value_of_strings_reads_as_zarr(tmp_path):
    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=2)
    _add_vlen(path, 2, "str", None)
    _edit(path, "s", 2, lambda d: d.__setitem__("fill_value", 1.5))
    _check_as_zarr(open_store(path), path)


def test_decode_into_a_buffer_says_why_not(tmp_path):
    path = tmp_path / "era5.zarr"
    _era5(path, 3)
    s = open_store(path)
    raw = s.chunk_bytes("expver", (0,))
    with pytest.raises(ValueError, match=r"out: array 'expver' holds variable-length values \(dtype object\)"):
        s.decode("expver", raw, (0,), out=np.empty(64, np.uint8))
    assert s.decode("expver", raw, (0,)).tolist() == ["0001"] * 4 + ["0005"] * 2


def test_read_array_of_an_unknown_name(tmp_path):
    path = tmp_path / "era5.zarr"
    _era5(path, 3)
    with pytest.raises(KeyError, match=r"no array 'expvers'; arrays: \['expver', 'latitude', 'longitude', 't2m', "
                                       r"'valid_time'\]"):  # fmt: skip
        open_store(path).read_array("expvers")


def _era5_vlen_expver(path, fmt, shards, expver=None):
    """An ERA5-like store with ``expver(valid_time)`` as xarray writes Python strings: variable-length."""
    vt = pd.date_range("2024-01-01", periods=12, freq="6h")
    if expver is None:
        expver = np.array(["0001"] * 8 + ["0005"] * 4, dtype=object)
    ds = xr.Dataset({"t2m": (("valid_time", "latitude", "longitude"),
                             np.random.default_rng(0).normal(280, 5, (12, 9, 16)).astype("f4"))},
                    coords={"valid_time": vt, "latitude": np.linspace(40, 0, 9), "longitude": np.arange(0, 80, 5.0),
                            "expver": ("valid_time", expver)})  # fmt: skip
    enc = {"expver": {"chunks": (4,), "shards": (8,)}, "t2m": {"chunks": (4, 9, 16), "shards": (8, 9, 16)}} \
        if shards else {}
    with _quiet():
        ds.to_zarr(path, zarr_format=fmt, consolidated=fmt == 2, encoding=enc)
    return ds


@pytest.mark.parametrize(("fmt", "shards", "kind"), [(2, False, "str"), (3, False, "str"), (3, True, "str"),
                                                     (2, False, "bytes"), (3, False, "bytes")])  # fmt: skip
def test_rechunk_copies_a_variable_length_expver(tmp_path, fmt, shards, kind, caplog):
    """Review r3 F1/F5: rechunk of an ERA5 store whose expver xarray wrote as variable-length strings copies it
    as xarray reads it (it crashed: NumPy's StringDType, which zarr-python 3.1 reads, does not cast to str), and
    does not warn that the expver it copies is left out."""
    import logging

    from fastload.rechunk import main as rechunk_main

    src, out = tmp_path / "s.zarr", tmp_path / "o.zarr"
    want = ["0001"] * 8 + ["0005"] * 4
    _era5_vlen_expver(src, fmt, shards, np.array(want, dtype=object))
    if kind == "bytes":  # variable-length bytes (it failed with a UnicodeDecodeError): copied as fixed-length bytes
        want = [v.encode() for v in want]
        with _quiet():
            root = zarr.open_group(str(src), mode="a")
            del root["expver"]
            root.create_array("expver", shape=(12,), chunks=(4,), dtype=VariableLengthBytes(),
                              **_dims(fmt, ("valid_time",)))[...] = np.array(want, dtype=object)
            if fmt == 2:
                zarr.consolidate_metadata(str(src))
    with caplog.at_level(logging.WARNING, logger="fastload"):
        assert rechunk_main([str(src), str(out), "--chunks", "4,1,9,8", "-q"]) in (0, None)
    assert not [r for r in caplog.records if "expver" in r.getMessage()]
    with _quiet():
        a, b = xr.open_zarr(src), xr.open_zarr(out)
        assert b["expver"].values.tolist() == a["expver"].values.tolist() == want
        np.testing.assert_array_equal(b["t2m"].values, a["t2m"].values)


@pytest.mark.parametrize("first", ["chunk_bytes", "chunk_bytes_many", "decode"])
def test_a_coordinate_first_read_through_each_entry_point(tmp_path, first):
    """Review r3 F4: a string coordinate's decoder is set up on first use whichever entry point comes first (a
    sharded one read through chunk_bytes_many took the whole shard as the chunk; decode gave a bare KeyError)."""
    expver = np.array([f"{i:04d}" for i in range(12)], dtype=object)
    _era5_vlen_expver(tmp_path / "s.zarr", 3, True, expver)
    s = open_store(tmp_path / "s.zarr")  # expver not read at open
    if first == "chunk_bytes":
        raw = s.chunk_bytes("expver", (1,))
    elif first == "chunk_bytes_many":
        raw = s.chunk_bytes_many("expver", [(1,)])[0]
    else:  # bytes read through another Store: this one's first use is decode
        raw = open_store(tmp_path / "s.zarr").chunk_bytes("expver", (1,))
    assert s.decode("expver", raw, (1,)).tolist() == expver[4:8].tolist()
