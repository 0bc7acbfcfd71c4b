"""The CPU probes' percentiles by selection equal those of a full sort, and numpy's, bit for bit."""

import numpy as np
import pytest
import torch

from bnviz.metrics import PERCENTILES
from bnviz.probes import LayerProbes
from bnviz.row_stats import RowStats, _partition_plan


def _rows(kind: str, rows: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((rows, n)) * rng.uniform(0.01, 30, (rows, 1))).astype(np.float32)
    if kind == "ties":  # saturated sigmoids, ReLU-like zeros: many equal values
        a = np.round(a, 0)
    elif kind == "nonfinite":
        a[0, rng.integers(0, n, max(1, n // 7))] = np.nan
        a[1 % rows, : max(1, n // 3)] = np.inf
        a[-1, :] = np.nan
        if n > 2:
            a[-1, 1] = -np.inf
    return a


@pytest.mark.parametrize("kind", ["normal", "ties", "nonfinite"])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 60, 6000])
def test_selected_percentiles_equal_sorted_ones_and_numpy_bit_for_bit(kind, n):
    a = _rows(kind, 6, n)
    plan = RowStats(6, n, PERCENTILES, a.dtype)
    selected = plan.percentiles(a.copy(), sort=False)
    np.testing.assert_array_equal(selected, plan.percentiles(a.copy(), sort=True))
    # what the probes always recorded: numpy's 'linear' ranks on the sorted row, NaN last, in float32
    s = np.sort(a, axis=1)
    pos = np.array(PERCENTILES) / 100 * (n - 1)
    lo, frac = np.floor(pos).astype(int), (pos - np.floor(pos)).astype(np.float32)
    x, y = s[:, lo], s[:, np.minimum(lo + 1, n - 1)]
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(selected, x + (y - x) * frac)
    finite = np.isfinite(a).all(axis=1)  # and numpy's own percentile (float64 interpolation) where it is defined
    want = np.percentile(a[finite], PERCENTILES, axis=1).T
    np.testing.assert_allclose(selected[finite], want, rtol=1e-5, atol=1e-6)


def test_sort_leaves_the_rows_sorted_for_the_histograms():
    a = _rows("normal", 3, 500)
    b = a.copy()
    RowStats(3, 500, PERCENTILES, a.dtype).percentiles(b, sort=True)
    np.testing.assert_array_equal(b, np.sort(a, axis=1))


def test_partition_plan_places_every_pivot_within_its_parent_slice():
    plan = _partition_plan([899, 2999, 5099], 0, 6000)
    assert plan[0] == (0, 6000, 2999)
    assert sorted(plan[1:]) == [(0, 2999, 899), (3000, 6000, 2099)]
    a = _rows("normal", 2, 6000)
    for start, stop, kth in plan:
        a[:, start:stop].partition(kth, axis=1)
    s = np.sort(a, axis=1)
    np.testing.assert_array_equal(a[:, [899, 2999, 5099]], s[:, [899, 2999, 5099]])


def test_moments_equal_numpy_and_ignore_the_row_order():
    a = _rows("normal", 4, 6000)
    plan = RowStats(4, 6000, PERCENTILES, a.dtype)
    mean, std = plan.moments(a)
    np.testing.assert_allclose(mean, a.astype(np.float64).mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(std, a.astype(np.float64).std(axis=1), rtol=1e-5)


def test_activation_stats_are_the_same_whether_the_probes_sort_or_select():
    z = torch.from_numpy(_rows("ties", 6, 60 * 100, seed=3)).view(6, 60, 100)
    probes = LayerProbes([], [5, 7, 9, 5, 7, 9])
    got = {}
    for sort in (False, True):
        probes.observe(z.clone(), consumable=True)
        got[sort] = probes.activation_stats(sort=sort)
    assert torch.equal(got[False], got[True])
    # histograms after a selection (rows only partitioned) equal those after a sort
    probes.observe(z.clone(), consumable=True)
    probes.activation_stats(sort=False)
    after_select = probes.histograms()
    probes.observe(z.clone(), consumable=True)
    probes.activation_stats(sort=True)
    assert torch.equal(after_select, probes.histograms())
