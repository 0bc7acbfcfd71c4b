"""Ghost BN's cost against BN's: ``python -m bench.ghost_bn``.

Times, forward and backward on one thread, torch's BatchNorm1d, bnviz.norms.GhostBatchNorm
(one batch_norm call per ghost size: ghost j's channel c as feature j * C + c) and the
straightforward Ghost BN (BatchNorm's forward on each ghost batch in turn, then torch.cat),
interleaved, on a (batch, features) input, and checks the two Ghost BNs agree (output,
input gradient, running statistics).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from bnviz.norms import GhostBatchNorm, ghost_sizes


class GhostByParts(nn.BatchNorm1d):
    """Ghost BN the straightforward way: BatchNorm's forward on each ghost batch in turn."""

    def __init__(self, features: int, ghost_size: int):
        super().__init__(features)
        self.ghost_size = ghost_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.split(ghost_sizes(x.shape[0], self.ghost_size))
        return torch.cat([super(GhostByParts, self).forward(p) for p in parts])


def _step(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_()
    y = layer(x)
    y.backward(torch.ones_like(y).mul_(torch.arange(y.shape[1], dtype=y.dtype)))  # not a constant: x.grad != 0
    return y.detach(), x.grad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ghost_bn", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--features", type=int, default=100)
    p.add_argument("--ghosts", type=int, nargs="+", default=[25, 10, 16], help="ghost sizes (default 25 10 16)")
    p.add_argument("--calls", type=int, default=200, help="forward and backward passes per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.randn(args.batch, args.features, generator=torch.Generator().manual_seed(0)) * 2 + 1
    print(f"(batch {args.batch}, features {args.features}), forward and backward, 1 thread, {args.rounds} rounds "
          f"of {args.calls} calls, interleaved; median us per call")
    agree = True
    for g in args.ghosts:
        layers = {"BatchNorm1d": nn.BatchNorm1d(args.features), "GhostBatchNorm": GhostBatchNorm(args.features, g),
                  "by parts": GhostByParts(args.features, g)}
        (y1, g1), (y2, g2) = _step(layers["GhostBatchNorm"], x), _step(layers["by parts"], x)
        ok = (torch.allclose(y1, y2, atol=1e-5) and torch.allclose(g1, g2, atol=1e-4)
              and torch.allclose(layers["GhostBatchNorm"].running_var, layers["by parts"].running_var, atol=1e-5))
        agree &= ok
        times: dict[str, list[float]] = {name: [] for name in layers}
        for _ in range(args.rounds):
            for name, layer in layers.items():
                t = time.perf_counter()
                for _ in range(args.calls):
                    _step(layer, x)
                times[name].append((time.perf_counter() - t) / args.calls)
        med = {name: statistics.median(v) * 1e6 for name, v in times.items()}
        ghosts = len(ghost_sizes(args.batch, g))
        print(f"  ghost size {g} ({ghosts} ghost batches): BatchNorm1d {med['BatchNorm1d']:.0f}, "
              f"GhostBatchNorm {med['GhostBatchNorm']:.0f} ({med['GhostBatchNorm'] / med['BatchNorm1d']:.1f}x BN), "
              f"by parts {med['by parts']:.0f} ({med['by parts'] / med['BatchNorm1d']:.1f}x BN); "
              f"the two Ghost BNs agree: {ok}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
