"""The gap rule at half-step ties (review s12 item 1): a spacing counts as ``n`` steps when it is less than half a
step off ``n`` steps, for every ``n`` (``time_step``) alike; exactly half a step off is a gap, as
:func:`fastload.inspect._gaps` states ("off by half a step or more"). ``np.rint`` rounds ties to even, so before the
fix a window of ``time_step`` 2 took 1.5 and 2.5 steps as on cadence while ``time_step`` 1 and 3 refused them.

The references are plain Python on exact fractions of a step, one point or window at a time."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from fastload._stream_time import align, first_irregular, regular_windows

STEP = 3600 * 10**9  # 1 h in ns
T0 = np.datetime64("2000-01-01T00", "ns")
HALF = Fraction(1, 2)
# intervals, in steps, scattered among whole steps: every half-step tie from 0.5 to 4.5 and values just beside them
ODD = [Fraction(1, 2), Fraction(3, 2), Fraction(5, 2), Fraction(7, 2), Fraction(9, 2), Fraction(4, 3),
       Fraction(2, 3), Fraction(149, 100), Fraction(151, 100), Fraction(249, 100), Fraction(251, 100)]


def on_cadence_ref(d: int, n: int) -> bool:
    """Spacing ``d`` ns is ``n`` steps: positive and less than half a step off (exact fractions, no rounding)."""
    return d > 0 and abs(Fraction(d, STEP) - n) < HALF


def axis(seed: int) -> np.ndarray:
    """An hourly axis with each ODD interval (twice, shuffled) among many whole hours (the median stays 1 h)."""
    rng = np.random.default_rng(seed)
    steps = [Fraction(1)] * 60 + ODD * 2
    rng.shuffle(steps)
    ns = [0]
    for s in steps:
        ns.append(ns[-1] + int(s * STEP))
    return T0 + np.array(ns, "timedelta64[ns]")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("time_step", [1, 2, 3, 4])
@pytest.mark.parametrize("n_points", [2, 3])
def test_regular_windows_treat_half_step_ties_alike_at_every_time_step(seed, time_step, n_points):
    t = axis(seed)
    ti = t.astype(np.int64).tolist()
    span = (n_points - 1) * time_step + 1
    want = [all(on_cadence_ref(ti[t0 + (k + 1) * time_step] - ti[t0 + k * time_step], time_step)
                for k in range(n_points - 1)) for t0 in range(len(ti) - span + 1)]
    got = regular_windows(t, n_points, time_step)
    assert got.tolist() == want, [i for i, (a, b) in enumerate(zip(got, want)) if a != b]


@pytest.mark.parametrize("seed", [0, 1])
def test_first_irregular_is_the_first_spacing_half_a_step_off_or_more(seed):
    t = axis(seed)
    ti = t.astype(np.int64).tolist()
    for start in range(0, len(ti) - 1, 7):
        bad = [i for i in range(start, len(ti) - 1) if not on_cadence_ref(ti[i + 1] - ti[i], 1)]
        assert first_irregular(t, start) == (bad[0] if bad else None)


def nearest_ref(st: list[int], tau: int) -> tuple[int, bool]:
    """``nearest`` by its stated rule: the nearest step (a tie to the earlier), served within half a step of it, or
    anywhere between two steps that are not a gap (at most one step apart, or less than half a step more)."""
    dist = [abs(s - tau) for s in st]
    i = dist.index(min(dist))
    if 2 * dist[i] <= STEP:
        return i, True
    if tau < st[0] or tau > st[-1]:
        return i, False
    j = max(k for k in range(len(st)) if st[k] <= tau)  # tau lies between st[j] and st[j + 1]
    d = st[j + 1] - st[j]
    return i, d <= STEP or on_cadence_ref(d, 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_nearest_serves_and_refuses_points_between_odd_steps_by_the_stated_rule(seed):
    t = axis(seed)
    ti = t.astype(np.int64).tolist()
    # quarter steps over the record and half a step past each end, and every interval's midpoint
    taus = list(range(ti[0] - STEP, ti[-1] + STEP, STEP // 4)) + [(a + b) // 2 for a, b in zip(ti, ti[1:])]
    idx, ok = align(t, np.array(taus, "datetime64[ns]")[:, None], "nearest", np.timedelta64(STEP, "ns"))
    want = [nearest_ref(ti, tau) for tau in taus]
    served = [w[1] for w in want]
    assert ok.tolist() == served
    assert [int(i) for i, s in zip(idx[:, 0], served) if s] == [w[0] for w in want if w[1]]
    # the tie itself: 1.5 steps between two steps is a gap (its midpoint is refused), 1.33 or 1.49 is not
    for frac, served_mid in ((Fraction(3, 2), False), (Fraction(4, 3), True), (Fraction(149, 100), True),
                             (Fraction(5, 2), False), (Fraction(1, 2), True)):
        st = T0 + np.array([0, STEP, STEP + int(frac * STEP), 2 * STEP + int(frac * STEP)], "timedelta64[ns]")
        mid = st[1] + (st[2] - st[1]) // 2
        assert bool(align(st, np.array([[mid]]), "nearest", np.timedelta64(STEP, "ns"))[1][0]) is served_mid, frac


def _rule(d: int, step: int, n: int) -> bool:
    """The cadence rule on Python's unbounded integers: positive and less than half a step off n steps."""
    return d > 0 and 2 * abs(d - n * step) < step


def test_a_span_whose_step_product_overflows_int64_gets_the_rules_answer():
    """Review s12 r2 item 4: n x step was formed in int64 (OverflowError once it passed ~292 years of ns)."""
    from fastload._stream_time import _on_cadence

    big = 2**63 - 1
    cases = [(big, 2**40, 2**23), (big - 2**39, 2**40, 2**23), (big - 2**39 - 1, 2**40, 2**23),  # n x step = 2**63
             (2**62, 86_400 * 10**9, 200_000), (big, 1, 2**63), (big, 1, 2**64), (big, 3, 2**62)]
    for d, step, n in cases:
        got = _on_cadence(np.array([d], np.int64), step, n)
        assert got.tolist() == [_rule(d, step, n)], (d, step, n)
    assert _on_cadence(np.array([big], np.int64), 2**40, 2**23).tolist() == [True]  # 1 ns short of 2**63


def test_the_cadence_rule_against_exact_integers_on_random_spacings_and_ties():
    from fastload._stream_time import _on_cadence

    rng = np.random.default_rng(7)
    for _ in range(200):
        step = int(rng.integers(1, 10**12))
        n = int(rng.integers(1, 50))
        base = np.array([n * step, (n - 1) * step, (n + 1) * step], np.int64)
        d = np.concatenate([rng.integers(-step, (n + 2) * step, 50),
                            base + step // 2, base - step // 2, base + (step + 1) // 2, base - (step + 1) // 2,
                            base + step // 2 + 1, base - step // 2 - 1]).astype(np.int64)  # fmt: skip
        got = _on_cadence(d, step, n)
        assert got.tolist() == [_rule(int(x), step, n) for x in d], (step, n)
