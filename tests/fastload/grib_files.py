"""Tiny GRIB files written with the ecCodes Python API, for the ``fastload convert`` GRIB tests.

Each message starts from an ecCodes sample (``regular_ll_pl_grib2``, ``regular_ll_sfc_grib1``, ...) and gets its
grid, date, time, step, level, parameter and values set, as ERA5's GRIB files carry them: a regular lat-lon grid
with latitudes north to south, one file per day.

    from tests.fastload.grib_files import Grid, Message, write_grib
    grid = Grid(lat0=60.0, lat1=-60.0, lon0=0.0, lon1=330.0, dlat=30.0, dlon=30.0)
    write_grib(path, [Message(130, 850, "2020-01-01T00", values)], grid, edition=2)

Values are packed to ``bits`` bits (simple packing), so what cfgrib decodes is not what was written: tests
compare with cfgrib's decoding.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

__all__ = ["Grid", "Message", "write_grib", "MISSING"]

MISSING = 9999.0
"""Values equal to this are written as missing (bitmap) points; cfgrib decodes them as NaN."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """A regular lat-lon grid as GRIB describes it (first/last point, increments), latitudes north to south."""

    lat0: float
    lat1: float
    lon0: float
    lon1: float
    dlat: float
    dlon: float

    @property
    def shape(self) -> tuple[int, int]:
        ny = int(round(abs(self.lat0 - self.lat1) / self.dlat)) + 1
        nx = int(round(((self.lon1 - self.lon0) % 360.0) / self.dlon)) + 1
        return ny, nx


@dataclasses.dataclass(frozen=True)
class Message:
    """One field: ``param`` (ECMWF paramId: 130 t, 133 q, 167 2t, 165 10u, 134 sp), ``level`` in hPa (None for
    the sample's own level type: surface, or ``type_of_level``), reference time, ``step`` in hours."""

    param: int
    level: float | None
    time: str
    values: np.ndarray  # (ny, nx)
    step: int = 0
    type_of_level: str | None = None


def write_grib(path: str | os.PathLike[str], messages: list[Message], grid: Grid, *, edition: int = 2,
               bits: int = 16) -> None:  # fmt: skip
    """Write ``messages`` on ``grid`` to ``path`` as GRIB ``edition`` (1 or 2)."""
    import eccodes as ec

    with open(path, "wb") as f:
        for m in messages:
            sample = f"regular_ll_{'pl' if m.level is not None else 'sfc'}_grib{edition}"
            h = ec.codes_grib_new_from_samples(sample)
            try:
                t = np.datetime64(m.time, "m").astype(object)
                ny, nx = grid.shape
                keys = {
                    "Ni": nx, "Nj": ny,
                    "latitudeOfFirstGridPointInDegrees": grid.lat0, "latitudeOfLastGridPointInDegrees": grid.lat1,
                    "longitudeOfFirstGridPointInDegrees": grid.lon0, "longitudeOfLastGridPointInDegrees": grid.lon1,
                    "iDirectionIncrementInDegrees": grid.dlon, "jDirectionIncrementInDegrees": grid.dlat,
                    "dataDate": int(t.strftime("%Y%m%d")), "dataTime": int(t.strftime("%H%M")),
                    "paramId": m.param,
                }  # fmt: skip
                for k, v in keys.items():
                    ec.codes_set(h, k, v)
                if m.type_of_level is not None:
                    ec.codes_set(h, "typeOfLevel", m.type_of_level)
                if m.level is not None:
                    if m.type_of_level is None:
                        ec.codes_set(h, "typeOfLevel", "isobaricInhPa")
                    ec.codes_set(h, "level", int(m.level))
                if m.step:
                    ec.codes_set(h, "stepRange", str(m.step))
                values = np.asarray(m.values, dtype=np.float64)
                assert values.shape == (ny, nx), (values.shape, grid.shape)
                ec.codes_set(h, "bitsPerValue", bits)
                if (values == MISSING).any():
                    ec.codes_set(h, "missingValue", MISSING)
                    ec.codes_set(h, "bitmapPresent", 1)
                ec.codes_set_values(h, values.ravel())
                ec.codes_write(h, f)
            finally:
                ec.codes_release(h)
