"""CF ``_Unsigned`` integer fields read as ``xr.open_zarr`` reads them: ``"true"`` on int8/int16 means the values
(and the fill value) are uint8/uint16, ``"false"`` on an unsigned type means signed; the read path (extract, the
Loader, stats) and ``rechunk --unpack`` give exactly xarray's values, in zarr v2 and v3, packed or not."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError
from fastload.extract import extract
from fastload.rechunk import rechunk
from fastload.stats import StatsConfig, compute_stats, missing_markers
from fastload.store import open_store

NT, NY, NX = 4, 6, 8


def _store(path, fmt, stored, flag="true", packed=False, attrs=None):
    """A (time, latitude, longitude) field ``v`` of dtype ``stored`` with ``_Unsigned: flag``, holding every bit
    pattern of the low byte (and, for 2-byte types, values past 2**15), its fill value in some places and in a whole chunk that is never written (it reads as
    the fill value). v2 masks the ``fill_value``, v3 the ``_FillValue`` attribute, as xarray does. Returns the
    stored values."""
    stored = np.dtype(stored)
    bits = np.arange(NT * NY * NX, dtype=np.int64).reshape(NT, NY, NX) * 97 % 256
    if stored.itemsize == 2:
        bits = bits * 251  # up to 64005: past 32767
    data = bits.astype(f"u{stored.itemsize}").view(stored)
    # "true": -1, the unsigned maximum; "false": 100 (xarray cannot convert a v3 _FillValue past the signed range)
    fill = np.array(-1, f"i{stored.itemsize}").view(stored)[()] if flag == "true" else stored.type(100)
    data[0:2, 0:3, 0:4] = fill  # one whole chunk: not written
    data[3, 5, 7] = data[2, 0, 1] = fill
    g = zarr.open_group(path, mode="w", zarr_format=fmt)

    def arr(name, dims, values, **kw):
        a_attrs = dict(kw.pop("attributes", {}))
        extra = {"dimension_names": dims} if fmt == 3 else {}
        if fmt == 2:
            a_attrs["_ARRAY_DIMENSIONS"] = list(dims)
        a = g.create_array(name, shape=np.shape(values), attributes=a_attrs, **extra, **kw)
        a[...] = values
        return a

    arr("time", ("time",), np.arange(NT) * 6, dtype="i8", attributes={"units": "hours since 2000-01-01"})
    arr("latitude", ("latitude",), np.linspace(60.0, 10.0, NY), dtype="f8")
    arr("longitude", ("longitude",), np.arange(NX) * 45.0, dtype="f8")
    va = {"_Unsigned": flag, **(attrs or {})}
    if fmt == 3:
        va["_FillValue"] = int(fill)
    if packed:
        va.update(scale_factor=0.5, add_offset=-3.0)
    arr("v", ("time", "latitude", "longitude"), data, dtype=stored, chunks=(2, 3, 4), fill_value=fill, attributes=va)
    if fmt == 2:
        zarr.consolidate_metadata(path)
    assert not (path / "v" / ("0.0.0" if fmt == 2 else "c/0/0/0")).exists()  # read as the fill value
    return data


def _xr(path, allow=None):
    consolidated = (path / ".zmetadata").exists() or "consolidated_metadata" in json.loads(
        (path / "zarr.json").read_text() if (path / "zarr.json").exists() else "{}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # xarray must apply _Unsigned, not ignore it with a warning
        if allow:
            warnings.filterwarnings("ignore", allow)
        return xr.open_zarr(path, consolidated=consolidated).v.values


def _cfg(nt=NT, ny=NY, nx=NX):
    return SamplingConfig(fields=(FieldConfig(name="v", num_tokens=(1, 1, 1), token_size=(nt, ny, nx),
                                              normalization="none"),), batch_size=1)  # fmt: skip


CASES = [("i1", "true"), ("i2", "true"), ("u1", "false"), ("u2", "false")]


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("stored, flag", CASES)
def test_the_read_path_gives_xarrays_values(tmp_path, fmt, stored, flag):
    """extract (kernel and reference) equals xr.open_zarr exactly: values >= 128 (32768) stay positive for
    "true" (negative for "false"), the fill value is masked in the reinterpreted view, in written and unwritten
    chunks; the store's dtype is the decoded one and stats leave out the same values xarray masks."""
    path = tmp_path / "d.zarr"
    data = _store(path, fmt, stored, flag)
    ref = _xr(path)
    want = data.view(f"{'u' if flag == 'true' else 'i'}{data.itemsize}")
    fill = data[0, 0, 0].view(want.dtype)  # the stored fill value, reinterpreted
    nmiss = int((want == fill).sum())
    assert np.array_equal(np.isnan(ref), want == fill) and nmiss >= 24 + 2  # the unwritten chunk, written fills
    assert np.nanmax(ref) == want[~np.isnan(ref)].max() and (np.nanmax(ref) > 127 if flag == "true" else np.nanmin(ref) < 0)
    store = open_store(path)
    assert store.arrays["v"].dtype == want.dtype and "_Unsigned" not in store.fields["v"].attrs
    assert missing_markers(store, "v") == (fill,)
    for jit in (True, False):
        got = extract(store, _cfg(), np.array([[0, 0, 0]]), jit=jit)["v"].data[0, 0, 0, 0, 0]  # (T, Y, X)
        np.testing.assert_array_equal(got, ref.astype(np.float32))
    out = compute_stats(str(path), tmp_path / "n.zarr", StatsConfig(progress=False, zarr_format=fmt))
    g = zarr.open_group(str(out), mode="r")["v"]
    assert g.attrs["missing_values"] == nmiss
    gm = g["global_mean"][...].ravel()  # per month: January only here
    np.testing.assert_allclose(gm[0], np.nanmean(ref.astype(np.float64)), rtol=1e-9)


def test_the_loader_reads_unsigned_values(tmp_path):
    """A Loader batch of an int16 ``_Unsigned`` field holds xarray's values (values past 32767, NaN at the fill)."""
    from fastload.loader import Loader

    path = tmp_path / "d.zarr"
    _store(path, 2, "i2")
    ref = _xr(path).astype(np.float32)
    with Loader(str(path), _cfg(), samples_per_epoch=2) as ld:
        batch = next(iter(ld))
    got = batch.fields["v"].cpu().numpy()[0, 0, 0, 0, 0]
    t0, y0, x0 = (int(i) for i in np.asarray(batch.boxes)[0])  # the grid is global: any first column
    np.testing.assert_array_equal(got, ref[t0:, y0:, (x0 + np.arange(NX)) % NX])


@pytest.mark.parametrize("out_fmt", [2, 3])
@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("stored, flag", CASES)
def test_rechunk_unpack_equals_xarray(tmp_path, fmt, out_fmt, stored, flag):
    """A packed ``_Unsigned`` field is refused for sampling; ``rechunk --unpack`` copies it as float32 equal to
    xarray's decoding (scale and offset applied to the reinterpreted values, NaN at the fill), without
    ``_Unsigned``; extract of the copy gives the same values."""
    src = tmp_path / "p.zarr"
    _store(src, fmt, stored, flag, packed=True)
    ref = _xr(src)
    with pytest.raises(ConfigError, match=r"fields\.v: stored packed"):
        open_store(src).check(_cfg())
    out = rechunk(str(src), tmp_path / "u.zarr", unpack=True, zarr_format=out_fmt, progress=False)
    raw = zarr.open_array(out / "v", mode="r")
    assert raw.dtype == np.float32 and "_Unsigned" not in raw.attrs
    got = _xr(out)
    np.testing.assert_array_equal(got, ref.astype(np.float32))
    x = extract(open_store(out), _cfg(), np.array([[0, 0, 0]]))["v"].data[0, 0, 0, 0, 0]
    np.testing.assert_array_equal(x, ref.astype(np.float32))


@pytest.mark.parametrize("fmt", [2, 3])
def test_rechunk_copies_an_unpacked_unsigned_field_in_the_decoded_type(tmp_path, fmt):
    """Without packing, the copy is stored as the unsigned type with the unsigned fill value and no ``_Unsigned``:
    xarray reads it as it reads the source."""
    src = tmp_path / "s.zarr"
    _store(src, fmt, "i1")
    ref = _xr(src)
    out = rechunk(str(src), tmp_path / "c.zarr", progress=False)
    raw = zarr.open_array(out / "v", mode="r")
    assert raw.dtype == np.uint8 and "_Unsigned" not in raw.attrs
    np.testing.assert_array_equal(_xr(out), ref)


def test_missing_value_is_compared_as_written_with_the_reinterpreted_values(tmp_path):
    """xarray reinterprets the _FillValue but not ``missing_value``: on int8 with ``_Unsigned: "true"`` a
    missing_value of 132 masks the stored -124 (unsigned 132); one of -124 masks nothing. fastload agrees."""
    path = tmp_path / "d.zarr"
    data = _store(path, 2, "i1", attrs={"missing_value": [132, -124]})
    ref = _xr(path, allow=".*multiple fill values")
    assert np.array_equal(np.isnan(ref), (data == -1) | (data == -124)) and (data == -124).any()
    store = open_store(path)
    assert missing_markers(store, "v") == (255, 132)
    got = extract(store, _cfg(), np.array([[0, 0, 0]]))["v"].data[0, 0, 0, 0, 0]
    np.testing.assert_array_equal(got, ref.astype(np.float32))


@pytest.mark.parametrize("flag", [True, "True", "yes"])
def test_other_unsigned_values_change_nothing_as_in_xarray(tmp_path, flag):
    """xarray applies only the strings "true" and "false"; any other value leaves the signed values as stored."""
    path = tmp_path / "d.zarr"
    _store(path, 2, "i1", flag=flag)
    ref = xr.open_zarr(path, consolidated=True).v.values
    assert np.nanmin(ref) < 0
    store = open_store(path)
    assert store.arrays["v"].dtype == np.int8
    got = extract(store, _cfg(), np.array([[0, 0, 0]]))["v"].data[0, 0, 0, 0, 0]
    np.testing.assert_array_equal(got, ref.astype(np.float32))
