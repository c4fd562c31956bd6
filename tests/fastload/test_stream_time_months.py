"""The ``previous`` time rule on a monthly record (:func:`fastload._stream_time.align`): the steps of calendar months
are 28 to 31 days, the record's median step one of them, and inside the record every point between two months is
served by the earlier month; only past the record's end or across a gap of it is a point served for one median step
at most. Expected months and refusals are worked out by hand from the calendar."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastload._stream_time import align, median_step

D = np.timedelta64(1, "D")
CAD = np.timedelta64(6, "h")


def _days(*stamps):
    return np.array(stamps, "datetime64[ns]")


def _previous(record, points):
    idx, ok = align(record, _days(*points)[:, None], "previous", CAD)
    return [str(record[i])[:10] if o else None for i, o in zip(idx[:, 0], ok)]


def test_the_31st_of_a_month_takes_its_first_day_when_the_median_step_is_30_days():
    """April to July 2000 (steps 30, 31, 30 days: median 30): May 31 is 30 days after May 1 and before June 1, so
    May 1 serves it (it was refused: 30 days is a full median step); past July 1, the record's last month, a point
    is served for less than 30 days: July 30 23:00 is, July 31 is not; March 31 precedes the record."""
    rec = _days("2000-04-01", "2000-05-01", "2000-06-01", "2000-07-01")
    assert median_step(rec) == 30 * D
    got = _previous(rec, ["2000-05-31T00", "2000-05-31T18", "2000-06-30T23", "2000-04-30T12", "2000-07-30T23",
                          "2000-07-31T00", "2000-03-31T23"])
    assert got == ["2000-05-01", "2000-05-01", "2000-06-01", "2000-04-01", "2000-07-01", None, None]


def test_across_a_gap_of_the_record_a_point_is_served_for_one_step_only():
    """April to July 2001 then October (steps 30, 31, 30, 92 days: median 30). Inside the regular months every point
    is served (May 31 12:00 by May 1); after July 1 the next step is a gap of three months, so July 30 12:00 (29.5
    days on) is served and July 31 (30 days) and September 15 are not; October 1 is a step again, and past the end
    October 30 12:00 is served, October 31 not."""
    rec = _days("2001-04-01", "2001-05-01", "2001-06-01", "2001-07-01", "2001-10-01")
    assert median_step(rec) == 30 * D
    got = _previous(rec, ["2001-05-31T12", "2001-07-30T12", "2001-07-31T00", "2001-09-15", "2001-10-01",
                          "2001-10-30T12", "2001-10-31T00"])
    assert got == ["2001-05-01", "2001-07-01", None, None, "2001-10-01", "2001-10-01", None]


def test_a_february_in_a_record_of_31_day_median_serves_every_day():
    """January to April 2000 then June (steps 31, 29, 31, 61: median 31): February 29 (a leap year) and March 31
    are served by their months' first days; May 2 is 31 days after April 1 with a gap after it: refused."""
    rec = _days("2000-01-01", "2000-02-01", "2000-03-01", "2000-04-01", "2000-06-01")
    assert median_step(rec) == 31 * D
    got = _previous(rec, ["2000-01-31T18", "2000-02-29T18", "2000-03-31T18", "2000-05-01T12", "2000-05-02"])
    assert got == ["2000-01-01", "2000-02-01", "2000-03-01", "2000-04-01", None]


@pytest.mark.filterwarnings("ignore::fastload.streams.ChunkingWarning")
def test_a_daily_reference_beside_a_monthly_previous_stream_draws_every_day_of_the_record(tmp_path):
    """A daily reference, April to July 2000, and a monthly stream (first of each month) read by ``previous``: every
    day from April 1 to July 30 is a window both serve (the day's own month is stored, or July 1 less than 30 days
    before); July 31 is the one day left out. May 31 was left out too."""
    from fastload.config import SamplingConfig, StreamConfig
    from fastload.streams import MultiStream
    from tests.fastload.test_streams_edges import GLOBAL10, fld, make_ll

    days = np.arange("2000-04-01", "2000-08-01", dtype="datetime64[D]").astype("datetime64[ns]")
    months = _days("2000-04-01", "2000-05-01", "2000-06-01", "2000-07-01")
    make_ll(tmp_path / "ref.zarr", *GLOBAL10, days, "a")
    make_ll(tmp_path / "mon.zarr", *GLOBAL10, months, "b", seed=1)
    cfg = SamplingConfig(streams=(StreamConfig(name="ref", path=os.fspath(tmp_path / "ref.zarr")),
                                  StreamConfig(name="mon", path=os.fspath(tmp_path / "mon.zarr"),
                                               time_rule="previous")),
                         fields=(fld("a", "ref"), fld("b", "mon")))
    ms = MultiStream(cfg)
    want = np.flatnonzero(days != np.datetime64("2000-07-31", "ns"))
    assert days.size == 122 and np.array_equal(ms.valid_t0, want)
    pl = ms.place(np.stack([want, np.zeros_like(want), np.zeros_like(want)], axis=1))
    month_of_day = days[want].astype("datetime64[M]").astype("datetime64[ns]")
    np.testing.assert_array_equal(months[pl.t_steps["mon"][:, 0]], month_of_day)
