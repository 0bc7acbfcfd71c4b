"""Probes: hooks that see every hidden layer's pre-activation and reduce it to small numbers.

A ``Hook`` owns its handle (removed in ``finally`` or by ``with``; removing twice is
safe). ``LayerProbes`` hooks every hidden block's ``preact`` point and, after a forward
pass, reduces all layers AT ONCE on the device: one sort for the percentiles of every
layer, one bincount for every histogram. Nothing leaves the device here; the trainer
copies a block of rows to the host every few steps, so training never waits on a sync.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bnviz.metrics import PERCENTILES

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


def percentiles(x: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Percentiles along the last dim, numpy's default ('linear') method. (..., n) -> (..., len(qs))."""
    n = x.shape[-1]
    s = x.sort(dim=-1).values
    pos = torch.tensor([q / 100 * (n - 1) for q in qs], device=x.device, dtype=torch.float64)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=n - 1)
    frac = (pos - lo).to(x.dtype)
    return s[..., lo] + (s[..., hi] - s[..., lo]) * frac


class LayerProbes:
    """Hooks on the ``preact`` point of each block; reduces what they saw on demand.

    ``units`` gives the tracked unit (MLP) or channel (CNN) of each layer.
    """

    def __init__(self, blocks: list[nn.Module], units: list[int]):
        self.units = units
        self.enabled = True
        self._seen: list[torch.Tensor | None] = [None] * len(blocks)
        self.hooks = [Hook(b.preact, self._recorder(i)) for i, b in enumerate(blocks)]
        self._edges: torch.Tensor | None = None

    def _recorder(self, i: int):
        def record(_module, _inputs, output):
            if self.enabled:
                self._seen[i] = output.detach()
        return record

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self._seen = [None] * len(self._seen)

    @property
    def active(self) -> bool:
        return any(h.handle is not None for h in self.hooks)

    def __enter__(self) -> "LayerProbes":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _flat_layers(self) -> list[torch.Tensor]:
        return [z.reshape(-1) for z in self._seen]  # each (N*C[*H*W],)

    def _unit_values(self) -> list[torch.Tensor]:
        # MLP (N, C): column u; CNN (N, C, H, W): channel u over N*H*W.
        return [z[:, u].reshape(-1) for z, u in zip(self._seen, self.units)]

    def activation_stats(self) -> torch.Tensor:
        """(L, 8): p15, p50, p85, mean, std of each layer's pre-activation, then the unit's p15..p85."""
        flat, unit = self._flat_layers(), self._unit_values()
        qs = PERCENTILES
        if len({t.numel() for t in flat}) == 1:  # MLP: all layers in one sort
            stacked = torch.stack(flat)  # (L, N*C)
            layer_q = percentiles(stacked, qs)  # (L, 3)
            std, mean = torch.std_mean(stacked, dim=1, correction=0)
        else:  # CNN: spatial sizes differ per layer
            layer_q = torch.stack([percentiles(t, qs) for t in flat])
            sm = [torch.std_mean(t, correction=0) for t in flat]
            std, mean = torch.stack([s for s, _ in sm]), torch.stack([m for _, m in sm])
        if len({t.numel() for t in unit}) == 1:
            unit_q = percentiles(torch.stack(unit), qs)  # (L, 3)
        else:
            unit_q = torch.stack([percentiles(t, qs) for t in unit])
        return torch.cat([layer_q, mean[:, None], std[:, None], unit_q], dim=1)

    def histograms(self) -> torch.Tensor:
        """(L, HIST_BINS) fraction of each layer's values per bin (rows sum to 1)."""
        flat = self._flat_layers()
        if self._edges is None or self._edges.device != flat[0].device:
            self._edges = HIST_EDGES.to(flat[0].device)
        inner = self._edges[1:-1]
        counts = []
        # One bincount over all layers: offset each layer's bin index by layer * bins.
        idx = torch.cat([torch.bucketize(t.contiguous(), inner) + i * HIST_BINS for i, t in enumerate(flat)])
        counts = torch.bincount(idx, minlength=len(flat) * HIST_BINS).view(len(flat), HIST_BINS).float()
        return counts / counts.sum(dim=1, keepdim=True)


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
