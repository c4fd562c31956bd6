"""sample_chunk_bound against brute force: every placement of a box on a grid whose columns wrap, including a
chunk that does not divide the number of columns (review s11 r5 M1: ERA5 0.25 deg, 1440 columns in chunks of 128,
a box wrapping across the 32-column last chunk touches three column chunks; the bound said two)."""

from __future__ import annotations

import pytest

from fastload.reader import sample_chunk_bound
from fastload.sampling.chunks import FieldLayout


def _worst_columns(nx: int, chunk: int, w: int, periodic: bool) -> int:
    """Most distinct column chunks a box of ``w`` columns touches over every start (brute force)."""
    starts = range(nx) if periodic else range(nx - w + 1)
    return max(len({(x0 + i) % nx // chunk for i in range(w)}) for x0 in starts)


def _bound(nx: int, chunk: int, w: int, periodic: bool, ny: int = 1, cy: int = 1, h: int = 1) -> int:
    lay = FieldLayout(name="t", array="t", shape=(1, ny, nx), chunks=(1, cy, chunk), axes=(0, None, None, 1, 2),
                      periodic_x=periodic)
    return sample_chunk_bound({"t": lay}, (1, h, w), 1)["t"]


@pytest.mark.parametrize("periodic", [True, False])
def test_the_bound_covers_every_placement_of_every_box(periodic):
    short = []
    for nx in range(3, 26):
        for chunk in range(1, nx + 1):
            for w in range(1, nx + 1):
                worst, bound = _worst_columns(nx, chunk, w, periodic), _bound(nx, chunk, w, periodic)
                if bound < worst:
                    short.append((nx, chunk, w, worst, bound))
                assert bound <= worst + 1 or bound == -(-nx // chunk)  # a bound, not a blanket
    assert short == []


def test_era5_quarter_degree_box_across_the_seam():
    assert _worst_columns(1440, 128, 108, True) == 3
    assert _bound(1440, 128, 108, True) == 3
    # with 721 rows in chunks of 61 and a 50 x 108 box: (worst row chunks) x 3 column chunks
    rows = max(len({(y0 + i) // 61 for i in range(50)}) for y0 in range(721 - 50 + 1))
    assert _bound(1440, 128, 108, True, ny=721, cy=61, h=50) == rows * 3
