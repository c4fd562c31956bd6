"""The physics of the synthetic ERA5-like fields: climatology, cycles, and spectrally filtered AR(1) anomalies.

Why this exists: loaders and compressors behave on white noise nothing like they do on weather. Real fields are
smooth at large scales, correlated at small scales, vary with latitude, level, time of day and season, and change
slowly from hour to hour; float32 weather data compresses about 1.5x with blosc-lz4+shuffle while noise does not
compress. This module makes fields with those properties, cheaply and deterministically, for :mod:`fastload.synth`.

Each field is ``climatology(time, level, lat, lon) + amplitude(level, lat) * anomaly``. The anomaly is a random
field whose Fourier coefficients follow an AR(1) process in time: each step they decay by ``exp(-dt / tau(k))``
(small scales forget faster), drift eastward by a phase rotation (advection, exact on a periodic longitude axis),
and receive fresh noise shaped by the spectrum ``A(k) = 1 / (1 + (k L)^2)`` (``k`` in radians per degree, ``L``
a correlation length of a few degrees), which gives the ``k^-3`` energy spectrum of synoptic-scale weather. Levels share a common component (vertical coherence, correlation 0.64 between
levels). Values are then quantised as GRIB's 16-bit packing does (:func:`grib_pack`). The noise of step ``t`` comes from a generator keyed by ``(seed, field, t)``, so the values do not depend
on how time is split into blocks: the same seed gives the same store whatever the chunking.

Memory: the state is ``(levels + 1, ny, nx // 2 + 1)`` complex numbers per field, about 50 MB at 0.25 deg.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

__all__ = ["grib_pack", "FIELDS", "LEVEL_FIELDS", "SURFACE_FIELDS", "STATIC_FIELDS", "SpectralAR", "FieldModel", "pressure_hpa"]

# name -> (units, long_name)
LEVEL_FIELDS: dict[str, tuple[str, str]] = {
    "temperature": ("K", "air temperature"),
    "specific_humidity": ("kg kg-1", "specific humidity"),
    "velocity_u": ("m s-1", "eastward wind"),
    "velocity_v": ("m s-1", "northward wind"),
    "vorticity": ("s-1", "relative vorticity"),
    "divergence": ("s-1", "divergence of wind"),
}
SURFACE_FIELDS: dict[str, tuple[str, str]] = {
    "t2m": ("K", "2 metre temperature"),
    "msl": ("Pa", "mean sea level pressure"),
    "total_precip": ("mm", "total precipitation, hourly accumulation (>= 0, skewed: log1p suits it)"),
}
STATIC_FIELDS: dict[str, tuple[str, str]] = {
    "orography": ("m", "surface height above sea level"),
    "land_sea_mask": ("1", "land-sea mask (1 = land, 0 = sea)"),
}
FIELDS = {**LEVEL_FIELDS, **SURFACE_FIELDS, **STATIC_FIELDS}

# name -> (correlation length L in degrees, decorrelation time tau in hours at k = 0, eastward drift in deg/hour)
_SPECTRA: dict[str, tuple[float, float, float]] = {
    "temperature": (10.0, 96.0, 0.3),
    "specific_humidity": (6.0, 48.0, 0.3),
    "velocity_u": (7.0, 48.0, 0.3),
    "velocity_v": (7.0, 48.0, 0.3),
    "vorticity": (3.0, 24.0, 0.3),
    "divergence": (2.0, 12.0, 0.3),
    "t2m": (8.0, 72.0, 0.2),
    "msl": (12.0, 120.0, 0.3),
    "total_precip": (3.0, 12.0, 0.4),
    "orography": (3.0, 1.0, 0.0),
    "land_sea_mask": (12.0, 1.0, 0.0),
}
_P0 = 1013.25  # hPa


def pressure_hpa(levels: np.ndarray, level_type: str) -> np.ndarray:
    """Approximate pressure (hPa) of each level: ERA5's L137 model levels (137 = surface, 96 ~ 530 hPa) or as is."""
    lv = np.asarray(levels, dtype=np.float64)
    if level_type == "pressure":
        return lv
    return _P0 * np.clip(lv / 137.0, 1e-3, 1.0) ** 1.8


def _key(*parts: int | str) -> list[int]:
    return [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]


class SpectralAR:
    """Unit-variance random fields on a regular lat-lon grid, AR(1) in time in spectral space.

    Parameters
    ----------
    ny, nx : int
        Grid size (latitude, longitude).
    dlat, dlon : float
        Grid spacing in degrees.
    layers : int
        Independent fields advanced together.
    scale_deg, tau_hours, drift_deg_per_hour : float
        Spectrum length scale, decorrelation time at the largest scale, eastward drift.
    dt_hours : float
        Time step.
    key : sequence of int
        Seed material: the noise of step ``t`` is drawn from ``SeedSequence([*key, t])``.
    """

    def __init__(
        self,
        ny: int,
        nx: int,
        dlat: float,
        dlon: float,
        *,
        layers: int,
        scale_deg: float,
        tau_hours: float,
        drift_deg_per_hour: float,
        dt_hours: float,
        key: list[int],
    ):
        self.shape = (ny, nx)
        self.layers = layers
        self.key = list(key)
        ky = np.fft.fftfreq(ny, d=abs(dlat))[:, None]  # cycles per degree
        kx = np.fft.rfftfreq(nx, d=abs(dlon))[None, :]
        k = 2.0 * np.pi * np.sqrt(ky**2 + kx**2)  # radians per degree: L is a correlation length
        amp = 1.0 / (1.0 + (k * scale_deg) ** 2)
        amp[0, 0] = 0.0  # the mean is the climatology's job
        # variance of irfft2(amp * Z), Z complex normal: interior columns count twice, the kx=0 and Nyquist
        # columns half (irfft keeps their Hermitian part only)
        w = np.full(kx.shape, 2.0)
        w[0, 0] = 0.5
        if nx % 2 == 0:
            w[0, -1] = 0.5
        var = float((amp**2 * w).sum()) / float(ny * nx) ** 2
        # single precision throughout: half the memory traffic of float64, and plenty for weather-like noise
        self._amp = (amp * np.sqrt(0.5 / var)).astype(np.float32)  # sqrt(0.5): unit complex variance
        phi = np.exp(-dt_hours * (1.0 + 0.5 * k * scale_deg) / tau_hours)  # small scales forget faster
        shift = np.exp(-2j * np.pi * kx * drift_deg_per_hour * dt_hours)
        self._decay = (phi * shift).astype(np.complex64)
        self._innov = np.sqrt(1.0 - phi**2).astype(np.float32)
        self._state = self._noise(self.key + [1 << 30])  # the stationary distribution, before step 0
        self.t = 0

    def _noise(self, key: list[int]) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence(key))
        ny, nk = self._amp.shape
        z = rng.standard_normal((self.layers, ny, nk, 2), dtype=np.float32)
        c = z.view(np.complex64)[..., 0]  # (layers, ny, nk): real and imaginary parts from one draw
        c *= self._amp
        return c

    def step(self) -> np.ndarray:
        """Advance one time step and return the fields, ``(layers, ny, nx)`` float32 with unit variance."""
        noise = self._noise(self.key + [self.t])
        noise *= self._innov
        self._state *= self._decay
        self._state += noise
        self.t += 1
        return np.fft.irfft2(self._state, s=self.shape)

    def sample(self) -> np.ndarray:
        """The current fields without advancing (for static fields)."""
        return np.fft.irfft2(self._state, s=self.shape)


def grib_pack(values: np.ndarray, bits: int = 16) -> np.ndarray:
    """Quantise like GRIB simple packing with ``bits`` bits, per 2-D slice (one time step of one level).

    ERA5 is distributed packed this way: each value is ``R + k * 2**E`` with ``k < 2**bits``. The low mantissa
    bits of the float32 values are then redundant, which is why real float32 ERA5 compresses about 1.5x with
    blosc-lz4+shuffle while unpacked smooth fields barely do. Returns float32, same shape (a new array).
    """
    v = np.array(values, dtype=np.float32)  # a copy, worked on in place
    lo = v.min(axis=(-2, -1), keepdims=True).astype(np.float64)
    span = v.max(axis=(-2, -1), keepdims=True).astype(np.float64) - lo
    flat = span <= 0  # a constant slice (e.g. no rain anywhere) stays as it is
    step = np.where(flat, 1.0, np.exp2(np.ceil(np.log2(np.where(flat, 1.0, span) / (2**bits - 1)))))
    ref = np.where(flat, lo, np.floor(lo / step) * step)
    step32, ref32 = step.astype(np.float32), ref.astype(np.float32)
    v -= ref32
    v /= step32  # a power of two: exact
    np.round(v, out=v)
    v *= step32
    v += ref32
    return v


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class FieldModel:
    """Generates the synthetic fields of one dataset, time block by time block.

    Parameters
    ----------
    lat, lon : numpy.ndarray
        Grid coordinates in degrees (regular spacing).
    times : numpy.ndarray
        ``datetime64`` time axis, regular steps.
    levels : numpy.ndarray
        Level values; ``level_type`` says what they are ("model" or "pressure").
    seed : int
        Seed of everything random.
    """

    def __init__(self, *, lat: np.ndarray, lon: np.ndarray, times: np.ndarray, levels: np.ndarray,
                 level_type: str, seed: int):  # fmt: skip
        self.lat = np.asarray(lat, dtype=np.float64)
        self.lon = np.asarray(lon, dtype=np.float64)
        self._lat32 = self.lat.astype(np.float32)
        self.times = np.asarray(times).astype("datetime64[s]")
        self.levels = np.asarray(levels)
        self.p = pressure_hpa(self.levels, level_type).astype(np.float32)
        self.seed = int(seed)
        self.dlat = abs(float(self.lat[1] - self.lat[0])) if self.lat.size > 1 else 1.0
        self.dlon = abs(float(self.lon[1] - self.lon[0])) if self.lon.size > 1 else 1.0
        step = (self.times[1] - self.times[0]) if self.times.size > 1 else np.timedelta64(3600, "s")
        self.dt_hours = float(step / np.timedelta64(1, "h"))
        self._static: dict[str, np.ndarray] = {}

    def _ar(self, name: str, layers: int) -> SpectralAR:
        scale, tau, drift = _SPECTRA[name]
        return SpectralAR(
            self.lat.size, self.lon.size, self.dlat, self.dlon, layers=layers, scale_deg=scale, tau_hours=tau,
            drift_deg_per_hour=drift, dt_hours=self.dt_hours, key=_key(self.seed, name),
        )  # fmt: skip

    # -- static fields ----------------------------------------------------------------------------------------
    def static(self, name: str) -> np.ndarray:
        """``(ny, nx)`` float32 orography (m) or land-sea mask (0/1), cached."""
        if name not in self._static:
            lat = self.lat[:, None]
            land = (self._ar("land_sea_mask", 1).sample()[0] > 0.5) | (lat < -70.0)  # ~30% land + Antarctica
            rough = self._ar("orography", 1).sample()[0]
            antarctic = np.clip((-lat - 65.0) / 10.0, 0.0, 1.0)  # an ice sheet rising south of 65S
            height = 30.0 + 900.0 * np.clip(rough, 0.0, None) ** 1.3 + 2500.0 * antarctic
            oro = np.where(land, 7000.0 * np.tanh(height / 7000.0), 0.0)  # at most ~7 km
            self._static["land_sea_mask"] = land.astype(np.float32)
            self._static["orography"] = grib_pack(oro)
        return self._static[name]

    # -- fields with time -------------------------------------------------------------------------------------
    def generator(self, name: str) -> _Generator:
        """A sequential generator of ``name``: call ``block(t0, t1)`` with consecutive, increasing ranges."""
        if name not in LEVEL_FIELDS and name not in SURFACE_FIELDS:
            raise KeyError(name)
        return _Generator(self, name)

    def _cycles(self, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        t = self.times[t0:t1]
        hours = (t - t.astype("datetime64[D]")).astype(np.float64) / 3600.0  # UTC hour of day
        doy = (t.astype("datetime64[D]") - t.astype("datetime64[Y]")).astype(np.float64) + hours / 24.0
        season = np.cos(2.0 * np.pi * (doy - 196.0) / 365.25)[:, None, None, None]  # +1 in NH mid-July
        local = hours[:, None, None, None] + self.lon[None, None, None, :] / 15.0
        diurnal = np.cos(2.0 * np.pi * (local - 15.0) / 24.0)  # peak at 15 local solar time
        return season.astype(np.float32), diurnal.astype(np.float32)

    def _fields(self, name: str, t0: int, t1: int, anomaly: np.ndarray) -> np.ndarray:
        season, diurnal = self._cycles(t0, t1)
        latd = self._lat32[None, None, :, None]
        phi = np.deg2rad(latd)
        slat, clat = np.sin(phi), np.cos(phi)
        pr = (self.p / _P0)[None, :, None, None] if name in LEVEL_FIELDS else np.ones((1, 1, 1, 1), np.float32)
        an = anomaly
        ts = 253.0 + 47.0 * clat**2 + 12.0 * slat * season  # surface air temperature climate
        if name == "temperature":
            out = ts * pr**0.19 + 4.0 * pr**8 * clat * diurnal + (1.5 + 3.0 * np.abs(slat)) * an
        elif name == "t2m":
            lsm, oro = self.static("land_sea_mask")[None, None], self.static("orography")[None, None]
            out = (ts + 1.0 - 0.0065 * oro + (2.0 + 5.0 * lsm) * clat * diurnal
                   + (1.5 + 3.0 * np.abs(slat)) * (1.0 + 0.5 * lsm) * an)  # fmt: skip
        elif name == "specific_humidity":
            tk = ts * pr**0.19
            es = 6.112 * np.exp(17.67 * (tk - 273.15) / (tk - 29.65))  # hPa, Bolton (1980)
            qsat = 0.622 * es / (self.p[None, :, None, None] - 0.378 * es)
            out = 0.9 * qsat * _sigmoid(1.8 * an + 0.3)
        elif name == "velocity_u":
            hemi = np.sign(latd)
            jet = 35.0 * np.exp(-(((np.abs(latd) - 35.0 - 5.0 * hemi * season) / 10.0) ** 2)) * (1.15 - pr)
            trades = -7.0 * np.exp(-((latd / 15.0) ** 2)) * pr
            out = jet + trades + (5.0 + 5.0 * np.abs(slat)) * an
        elif name == "velocity_v":
            hadley = 2.0 * np.sin(np.pi * latd / 15.0) * np.exp(-((latd / 25.0) ** 2)) * (pr - 0.6)
            out = hadley + (4.0 + 4.0 * np.abs(slat)) * an
        elif name == "vorticity":
            out = 3e-5 * (0.5 + np.abs(slat)) * an
        elif name == "divergence":
            out = 1e-5 * (0.7 + 0.3 * clat) * an
        elif name == "msl":
            band = np.abs(latd)
            clim = 101325.0 + 800.0 * np.exp(-(((band - 30.0) / 10.0) ** 2)) - 1200.0 * np.exp(-(((band - 62.0) / 10.0) ** 2))
            out = clim + (200.0 + 1200.0 * np.abs(slat)) * an
        elif name == "total_precip":
            lsm = self.static("land_sea_mask")[None, None]
            rate = (0.02 + 0.8 * np.exp(-(((latd - 6.0 * season) / 8.0) ** 2))
                    + 0.35 * np.exp(-(((np.abs(latd) - 45.0) / 12.0) ** 2)))  # fmt: skip
            wet = np.clip(an - 0.4, 0.0, None) ** 1.5 if anomaly is not None else 0.0
            out = rate * 3.0 * wet * (1.0 + 0.5 * lsm * diurnal)
        else:  # pragma: no cover - generator() checked the name
            raise KeyError(name)
        shape = (t1 - t0, pr.shape[1], self.lat.size, self.lon.size)
        return np.broadcast_to(out, shape).astype(np.float32)


class _Generator:
    """Sequential time blocks of one field (the AR state lives here)."""

    def __init__(self, model: FieldModel, name: str):
        self.model = model
        self.name = name
        self.levelled = name in LEVEL_FIELDS
        self.nlev = model.levels.size if self.levelled else 1
        self.ar = model._ar(name, self.nlev + 1 if self.levelled else 1)
        self.t = 0

    def block(self, t0: int, t1: int) -> np.ndarray:
        """Values for time steps ``t0:t1``: ``(T, L, ny, nx)`` (level fields) or ``(T, ny, nx)`` float32."""
        if t0 != self.t:
            raise ValueError(f"{self.name}: blocks must be consecutive; expected t0={self.t}, got {t0}")
        m = self.model
        out = np.empty((t1 - t0, self.nlev, m.lat.size, m.lon.size), dtype=np.float32)
        for i in range(t1 - t0):  # one step at a time: temporaries stay (L, ny, nx)
            f = self.ar.step()
            # shared + own component per level: correlation 0.8^2 = 0.64 between levels
            anom = (0.8 * f[:1] + 0.6 * f[1:]) if self.levelled else f
            out[i] = grib_pack(m._fields(self.name, t0 + i, t0 + i + 1, anom[None]))[0]
        self.t = t1
        return out if self.levelled else out[:, 0]


def field_attrs(name: str) -> Mapping[str, str]:
    """``units`` and ``long_name`` of a synthetic field."""
    units, long_name = FIELDS[name]
    return {"units": units, "long_name": long_name}
