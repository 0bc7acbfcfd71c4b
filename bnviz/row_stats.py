"""Percentiles and moments of float rows on the CPU, in numpy, with no full sort unless asked.

The probes need, every step, three percentiles of each layer's pre-activations: for the
paper's network six rows of 6,000 floats. numpy's percentile method 'linear' reads two
order statistics per percentile (ranks lo and lo + 1), so a row need not be sorted: a
partition at each lo rank (numpy's SIMD selection, O(n)) puts it in place, and rank lo + 1
is the smallest value between lo and the next partitioned rank. On this machine that is
cheaper than sorting the rows (``python -m bench.probe_kernels`` measures both). Steps that draw
histograms sort instead: the histograms need the sorted rows anyway.

Either way the order statistics are the same values, so the percentiles are the same bit
for bit; the moments are taken before any reordering, in the rows' own order, so they too
do not depend on which way the ranks were found.

``RowStats`` keeps what depends only on the shape (rank plans, interpolation indices, a
scratch buffer), so a step allocates almost nothing. It is not thread-safe (the scratch):
each ``LayerProbes`` keeps its own.
"""

from __future__ import annotations

import numpy as np


def linear_ranks(n: int, qs: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, frac) of numpy's 'linear' method for n values: q = x[lo] + (x[hi] - x[lo]) * frac."""
    pos = np.array([q / 100 * (n - 1) for q in qs], dtype=np.float64)
    lo = np.floor(pos).astype(np.intp)
    return lo, np.minimum(lo + 1, n - 1), pos - lo


def linear_index(rows: int, n: int, qs: tuple[float, ...], dtype) -> tuple[np.ndarray, int, np.ndarray]:
    """(index, k, frac) for ``rows`` rows of n values: every row's lo then hi ranks as flat
    positions in the (rows, n) array, so that one ``take`` reads them all (numpy's fancy
    indexing per axis costs several times more on rows this small)."""
    lo, hi, frac = linear_ranks(n, qs)
    index = (np.arange(rows)[:, None] * n + np.concatenate([lo, hi])).astype(np.intp)
    return index, len(qs), frac.astype(dtype)


def interpolate(ab: np.ndarray, k: int, frac: np.ndarray) -> np.ndarray:
    """(rows, k) percentiles from ``ab`` = each row's k lo values then its k hi values.

    inf - inf in a diverging layer gives NaN, as torch gives, silently.
    """
    lo, hi = ab[:, :k], ab[:, k:]
    with np.errstate(invalid="ignore"):
        return lo + (hi - lo) * frac


def _partition_plan(pivots: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """In-place partitions (start, stop, kth within the slice) that put every pivot rank in place.

    Bisection over the pivots: partition the slice at the middle pivot, then each side at the
    pivots that fall in it, so each partition works on a smaller slice than the last.
    """
    if not pivots:
        return []
    mid = len(pivots) // 2
    p = pivots[mid]
    return ([(start, stop, p - start)] + _partition_plan(pivots[:mid], start, p)
            + _partition_plan(pivots[mid + 1:], p + 1, stop))


class RowStats:
    """Percentiles (and, for the probes, mean and std) of ``rows`` float rows of ``n`` values.

    Non-finite values are handled as torch handles them (NaN sorts last, inf - inf is NaN),
    silently: each method enters ``np.errstate`` once (on arrays this small that costs more
    than the arithmetic, so not once per operation).
    """

    def __init__(self, rows: int, n: int, qs: tuple[float, ...], dtype: np.dtype):
        self.shape = (rows, n)
        self.index, self.k, self.frac = linear_index(rows, n, qs, dtype)
        lo, hi, _ = linear_ranks(n, qs)
        # selection: partition at each distinct lo; a hi that is not itself a pivot is the
        # smallest value after its lo, up to and including the next pivot
        pivots = sorted(set(lo.tolist()))
        self.plan = _partition_plan(pivots, 0, n)
        self.hi_segments = []  # (column of hi in the take, start, stop)
        for j, (l, h) in enumerate(zip(lo.tolist(), hi.tolist())):
            if h not in pivots:  # (h == l at the top rank, or h the next pivot: already in place)
                nxt = [p for p in pivots if p > l]
                self.hi_segments.append((self.k + j, l + 1, nxt[0] + 1 if nxt else n))
        self.scratch = np.empty((rows, n), dtype=dtype)

    def percentiles(self, a: np.ndarray, sort: bool) -> np.ndarray:
        """(rows, k) percentiles of ``a`` (rows, n), C-contiguous, which is REORDERED in place.

        ``sort``: leave ``a`` sorted (for histograms); otherwise it is only partitioned.
        """
        if sort:
            a.sort(axis=1)
        else:
            for start, stop, kth in self.plan:
                a[:, start:stop].partition(kth, axis=1)
        ab = a.reshape(-1).take(self.index)
        if not sort:
            for col, start, stop in self.hi_segments:
                # fmin skips NaN as a sort puts NaN last: NaN only if the whole segment is NaN
                ab[:, col] = np.fmin.reduce(a[:, start:stop], axis=1)
        return interpolate(ab, self.k, self.frac)

    def moments(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, population std) of each row, two-pass (as accurate as Welford, several times faster)."""
        n = a.dtype.type(a.shape[1])
        with np.errstate(all="ignore"):
            mean = np.add.reduce(a, axis=1) / n
            dev = np.subtract(a, mean[:, None], out=self.scratch)
            np.multiply(dev, dev, out=dev)
            return mean, np.sqrt(np.add.reduce(dev, axis=1) / n)
