"""Probes: hooks that see every hidden layer's pre-activation and reduce it to small numbers.

A ``Hook`` owns its handle (removed in ``finally`` or by ``with``; removing twice is
safe). ``LayerProbes`` hooks every hidden block's ``preact`` point and, after a forward
pass, reduces all layers AT ONCE on the device: one sort of every layer's values gives
the percentiles and, by a binary search per bin edge, the histograms. Nothing leaves the
device here; the trainer copies a block of rows to the host every few steps, so training
never waits on a sync.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from bnviz.metrics import PERCENTILES
from bnviz.row_stats import RowStats, interpolate, linear_index, linear_ranks

# Histogram bins evenly spaced on an asinh scale: fine near 0 (where BN keeps values)
# and still resolving exploding nets up to +-HIST_LIMIT. Values beyond fall in the end bins.
HIST_BINS = 96
HIST_LIMIT = 100.0
HIST_EDGES = torch.sinh(torch.linspace(-math.asinh(HIST_LIMIT), math.asinh(HIST_LIMIT), HIST_BINS + 1,
                                       dtype=torch.float64)).float()

ACT_STATS = 8  # p15, p50, p85, mean, std of the layer, then p15, p50, p85 of the tracked unit


class Hook:
    """A forward hook on ``module`` calling ``fn(module, inputs, output)``; owns its handle."""

    def __init__(self, module: nn.Module, fn):
        self.handle = module.register_forward_hook(fn)

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def __enter__(self) -> "Hook":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def on_numpy(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether sorts and percentiles of such tensors run in numpy (CPU floats) or in torch (GPU)."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64)


def sort_rows(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``x`` sorted along its last dim (values only, NaN last), on x's device.

    On the CPU this is numpy's vectorized sort, 10-20x faster than ``torch.sort`` on rows of
    a few thousand floats (torch's CPU sort also sorts an index tensor along); elsewhere
    ``torch.sort``. Both give the same values in the same order. ``inplace``: x may be
    overwritten (on the CPU it is, saving a copy).
    """
    x = x.detach()
    if on_numpy(x.device, x.dtype):
        a = x.numpy()
        if inplace and x.is_contiguous():
            a.sort(axis=-1)
            return x
        return torch.from_numpy(np.sort(a, axis=-1))
    return x.sort(dim=-1).values


_INTERP: dict[tuple, tuple] = {}


def _interp(rows: int, n: int, qs: tuple[float, ...], device: torch.device, dtype: torch.dtype):
    """Cached (index, k, frac) of numpy's 'linear' method for ``rows`` rows of n values each.

    On the CPU, ``row_stats.linear_index``: flat positions for one numpy ``take``. Elsewhere
    the lo then hi ranks along the last dim, for one ``index_select`` (on a GPU each op
    costs a launch).
    """
    key = (rows, n, tuple(qs), device, dtype)
    got = _INTERP.get(key)
    if got is None:
        if on_numpy(device, dtype):
            got = linear_index(rows, n, qs, torch.empty(0, dtype=dtype).numpy().dtype)
        else:
            lo, hi, frac = linear_ranks(n, qs)
            got = (torch.from_numpy(np.concatenate([lo, hi])).to(device), len(qs),
                   torch.from_numpy(frac).to(device, dtype))
        _INTERP[key] = got
        if len(_INTERP) > 256:  # bounded: shapes of a server's sessions, not of every call
            _INTERP.pop(next(iter(_INTERP)))
    return got


def sorted_percentiles(s: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Percentiles of rows that are already sorted along the last dim. (..., n) -> (..., len(qs))."""
    lead, n = s.shape[:-1], s.shape[-1]
    index, k, frac = _interp(math.prod(lead), n, qs, s.device, s.dtype)
    if isinstance(index, np.ndarray):
        ab = np.ascontiguousarray(s.detach().numpy()).reshape(-1).take(index)  # (rows, 2k)
        return torch.from_numpy(interpolate(ab, k, frac).reshape(*lead, k))
    ab = s.index_select(-1, index)
    a, b = ab[..., :k], ab[..., k:]
    return a + (b - a) * frac


def percentiles(x: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Percentiles along the last dim, numpy's default ('linear') method. (..., n) -> (..., len(qs))."""
    return sorted_percentiles(sort_rows(x), qs)


def moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, population std) along the last dim, two-pass (as accurate as Welford, several times faster)."""
    mean = rows.mean(dim=-1)
    dev = rows - mean.unsqueeze(-1)
    return mean, dev.mul_(dev).mean(dim=-1).sqrt_()


def sorted_histograms(s: torch.Tensor, inner_edges: torch.Tensor) -> torch.Tensor:
    """Fraction of each sorted row's values per bin, bins split at ``inner_edges``. (R, n) -> (R, bins).

    Bin i holds the values in (edge[i-1], edge[i]] (``torch.bucketize``'s convention), values
    beyond the end edges and NaN in the end bins. On sorted rows this is one binary search
    per edge instead of one per value.
    """
    rows = s.shape[0]
    le = torch.searchsorted(s, inner_edges.expand(rows, -1).contiguous(), right=True)  # values <= edge
    counts = torch.diff(le, prepend=le.new_zeros(rows, 1), append=le.new_full((rows, 1), s.shape[1])).float()
    return counts / counts.sum(dim=1, keepdim=True)


class LayerProbes:
    """Hooks on the ``preact`` point of each block; reduces what they saw on demand.

    ``units`` gives the tracked unit (MLP) or channel (CNN) of each layer. Percentiles and
    histograms share one sort of each layer's values per forward pass.

    A trainer that computes layers without calling their modules (the stacked MLP path)
    makes one with no blocks and hands it all layers at once with ``observe``.
    """

    def __init__(self, blocks: list[nn.Module], units: list[int]):
        self.units = units
        self.enabled = True
        self._seen: list[torch.Tensor | None] = [None] * len(blocks)
        self._stacked: torch.Tensor | None = None  # (L, N, C...) from observe()
        self._consumable = False
        self._sorted: torch.Tensor | list[torch.Tensor] | None = None  # cache, reset by each new forward
        self.hooks = [Hook(b.preact, self._recorder(i)) for i, b in enumerate(blocks)]
        self._edges: torch.Tensor | None = None
        self._unit_index: tuple | None = None  # ((shape, device), flat positions of each layer's tracked unit)
        self._row_stats: dict[tuple, RowStats] = {}  # CPU plans per (rows, n, dtype): the layers', the units'

    def _recorder(self, i: int):
        def record(_module, _inputs, output):
            if self.enabled:
                self._seen[i] = output.detach()
                self._stacked = self._sorted = None
                self._consumable = False
        return record

    def observe(self, stacked: torch.Tensor, consumable: bool = False) -> None:
        """Take the pre-activations of all L layers at once: (L, N, C) or (L, N, C, H, W).

        ``consumable``: the caller no longer needs ``stacked``; the probes may sort it in place.
        """
        if self.enabled:
            self._stacked, self._sorted = stacked.detach(), None
            self._consumable = consumable

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self._seen = [None] * len(self._seen)
        self._stacked = self._sorted = None

    @property
    def active(self) -> bool:
        return any(h.handle is not None for h in self.hooks)

    def __enter__(self) -> "LayerProbes":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _flat_layers(self) -> list[torch.Tensor]:
        if self._stacked is not None:
            return list(self._stacked.flatten(1))
        return [z.reshape(-1) for z in self._seen]  # each (N*C[*H*W],)

    def _rows(self) -> torch.Tensor | None:
        """(L, n): every layer's values as one row each, when all layers have n values (MLP); else None."""
        if self._stacked is not None:
            return self._stacked.flatten(1)
        flat = self._flat_layers()
        return torch.stack(flat) if len({t.numel() for t in flat}) == 1 else None

    def _unit_values(self) -> list[torch.Tensor] | torch.Tensor:
        # MLP (N, C): column u; CNN (N, C, H, W): channel u over N*H*W.
        if self._stacked is not None:  # one gather for every layer: (L, N[*H*W])
            z = self._stacked
            # made once per shape and device: rebuilding it is five small ops and a host-to-device
            # copy, which on a GPU cost more than the gather itself and forbid graph capture
            key = (tuple(z.shape), z.device)
            if self._unit_index is None or self._unit_index[0] != key:
                rows = torch.arange(len(self.units)).view(-1, 1, 1)
                inner = torch.arange(z[0].numel()).view(z.shape[1], z.shape[2], -1)  # (N, C, H*W) flat offsets
                units = torch.tensor(self.units)
                index = (rows * z[0].numel() + inner[:, units].permute(1, 0, 2)).reshape(len(self.units), -1)
                self._unit_index = (key, index.to(z.device))
            return torch.take(z if z.is_contiguous() else z.contiguous(), self._unit_index[1])
        return [z[:, u].reshape(-1) for z, u in zip(self._seen, self.units)]

    def _layers_sorted(self, rows: torch.Tensor | None, inplace: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Each layer's values sorted: one (L, n) sort when all layers have n values (MLP), else a list."""
        if self._sorted is None:
            if rows is not None:
                self._sorted = sort_rows(rows, inplace=inplace)
            else:  # CNN: spatial sizes differ per layer
                self._sorted = [sort_rows(t) for t in self._flat_layers()]
        return self._sorted

    def activation_stats(self, sort: bool = False) -> torch.Tensor:
        """(L, 8): p15, p50, p85, mean, std of each layer's pre-activation, then the unit's p15..p85.

        ``sort``: sort each layer's values, for ``histograms()`` to reuse; otherwise the CPU
        path only selects the ranks the percentiles need (row_stats.py). The numbers are the
        same either way.
        """
        qs = PERCENTILES
        rows = self._rows()
        unit = self._unit_values()  # (before a sort in place)
        if not isinstance(unit, torch.Tensor) and len({t.numel() for t in unit}) == 1:
            unit = torch.stack(unit)
        if rows is not None and isinstance(unit, torch.Tensor) and on_numpy(rows.device, rows.dtype):
            return self._activation_stats_numpy(rows, unit, sort)
        if rows is not None:
            mean, std = moments(rows)
            # sorted even without histograms: on a GPU a sort and a gather take half the time of a
            # selection of each rank (bench/gpu_probes.py)
            layer_q = sorted_percentiles(self._layers_sorted(rows, inplace=self._consumable), qs)  # (L, 3)
        else:
            layer_q = torch.stack([sorted_percentiles(t, qs) for t in self._layers_sorted(rows)])
            ms = [moments(t) for t in self._flat_layers()]
            mean, std = torch.stack([m for m, _ in ms]), torch.stack([d for _, d in ms])
        if isinstance(unit, torch.Tensor):
            unit_q = percentiles(unit, qs)  # (L, 3)
        else:
            unit_q = torch.stack([percentiles(t, qs) for t in unit])
        return torch.cat([layer_q, mean[:, None], std[:, None], unit_q], dim=1)

    def _plan(self, rows: int, n: int, dtype: np.dtype) -> RowStats:
        key = (rows, n, dtype)
        got = self._row_stats.get(key)
        if got is None:
            if len(self._row_stats) > 8:  # a change of batch size or width: drop the old shapes
                self._row_stats.clear()
            got = self._row_stats[key] = RowStats(rows, n, PERCENTILES, dtype)
        return got

    def _activation_stats_numpy(self, rows: torch.Tensor, unit: torch.Tensor, sort: bool) -> torch.Tensor:
        """activation_stats of equal-sized layers on the CPU, in numpy with preallocated buffers.

        Everything but the selection is a few microseconds of work on small arrays, where each
        torch op's dispatch would cost as much as the work (``python -m bench.probe_kernels``).
        """
        a = rows.numpy()
        # rows made by stacking the hooked layers (self._stacked is None) are a fresh copy already
        owned = self._stacked is None or self._consumable
        if not (owned and a.flags.c_contiguous):
            a = np.array(a, order="C")
        plan = self._plan(*a.shape, a.dtype)
        mean, std = plan.moments(a)  # before the selection reorders the rows
        layer_q = plan.percentiles(a, sort)
        if sort:
            self._sorted = torch.from_numpy(a)
        u = unit.numpy()  # a gather's or a stack's fresh copy: reordered in place
        if not u.flags.c_contiguous:
            u = np.array(u, order="C")
        unit_q = self._plan(*u.shape, u.dtype).percentiles(u, sort=True)  # (a few dozen values: a sort is cheaper)
        k = plan.k
        out = np.empty((a.shape[0], ACT_STATS), dtype=a.dtype)
        out[:, :k], out[:, k], out[:, k + 1], out[:, k + 2:] = layer_q, mean, std, unit_q
        return torch.from_numpy(out)

    def histograms(self) -> torch.Tensor:
        """(L, HIST_BINS) fraction of each layer's values per bin (rows sum to 1)."""
        s = self._sorted if self._sorted is not None else self._layers_sorted(self._rows())
        device = s.device if isinstance(s, torch.Tensor) else s[0].device
        if self._edges is None or self._edges.device != device:
            self._edges = HIST_EDGES.to(device)
        inner = self._edges[1:-1]
        if isinstance(s, torch.Tensor):
            return sorted_histograms(s, inner.to(s.dtype))
        return torch.cat([sorted_histograms(t[None], inner.to(t.dtype)) for t in s])


def weight_stats(weights: list[torch.Tensor], before: list[torch.Tensor] | None) -> torch.Tensor:
    """(L, 3): ||dL/dW||, ||W|| and ||W - W_before|| / ||W_before|| per layer, all on the device."""
    grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in weights]
    g = torch.stack(torch._foreach_norm(grads))
    w = torch.stack(torch._foreach_norm(weights))
    if before is None:
        ratio = torch.zeros_like(w)
    else:
        diffs = torch._foreach_sub(weights, before)
        ratio = torch.stack(torch._foreach_norm(diffs)) / torch.stack(torch._foreach_norm(before)).clamp_min(1e-12)
    return torch.stack([g, w, ratio], dim=1)
