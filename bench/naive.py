"""The plain, uninstrumented PyTorch loop the engine is compared with.

What a user writes in a notebook for the paper-fig1 comparison: an nn.Sequential of
Linear / Sigmoid (BatchNorm1d before each sigmoid for BN), F.cross_entropy,
torch.optim.SGD, zero_grad / backward / step, one model at a time, shuffled mini-batches
sliced from the training tensors. No statistics are recorded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def paper_mlp(bn: bool, d_in: int = 784, width: int = 100, depth: int = 3, n_classes: int = 10,
              init_scale: float = 0.1, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers.append(nn.Linear(d, width))
        if bn:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.Sigmoid())
        d = width
    layers.append(nn.Linear(d, n_classes))
    net = nn.Sequential(*layers)
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, init_scale)
            nn.init.zeros_(m.bias)
    return net


class NaiveLoop:
    """One model, one optimizer, its own shuffled batches: ``step()`` takes one SGD step."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bn: bool, lr: float = 0.5, batch_size: int = 60,
                 seed: int = 0, device: str | torch.device = "cpu"):
        self.x, self.y = x.flatten(1).to(device), y.to(device)
        self.model = paper_mlp(bn, d_in=self.x.shape[1], seed=seed).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(len(self.y), generator=self.gen), 0

    def step(self) -> torch.Tensor:
        if self.pos + self.batch_size > len(self.y):
            self.perm, self.pos = torch.randperm(len(self.y), generator=self.gen), 0
        idx = self.perm[self.pos: self.pos + self.batch_size].to(self.x.device)
        self.pos += self.batch_size
        xb, yb = self.x[idx], self.y[idx]
        self.opt.zero_grad()
        loss = F.cross_entropy(self.model(xb), yb)
        loss.backward()
        self.opt.step()
        return loss


class InstrumentedLoop(NaiveLoop):
    """The naive loop recording what bnviz's probes record, the way a notebook would.

    What a user who wants the paper's Figure 1 data without bnviz writes (the issue's
    "torch.quantile every step" baseline): a forward hook on each sigmoid keeps its input;
    after each step, per hidden layer, ``torch.quantile`` of the whole layer and of one
    tracked unit at the paper's percentiles, mean and std, ||dL/dW||, ||W|| and the update
    ratio, all in one row read back with one ``tolist()``; every ``hist_every`` steps a
    ``torch.histogram`` of each layer over bnviz's bins. The same statistics the engine's
    probes record at the same rates, so the two compare like for like.
    """

    def __init__(self, *args, hist_every: int = 10, unit: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        from bnviz.metrics import PERCENTILES
        from bnviz.probes import HIST_EDGES

        self.q = torch.tensor([p / 100 for p in PERCENTILES], device=self.x.device)
        self.edges, self.hist_every, self.unit, self.steps = HIST_EDGES, hist_every, unit, 0
        self.seen: list[torch.Tensor] = []
        sigmoids = [m for m in self.model if isinstance(m, nn.Sigmoid)]
        self.linears = [m for m in self.model if isinstance(m, nn.Linear)][:len(sigmoids)]
        for m in sigmoids:
            m.register_forward_hook(lambda _m, inputs, _out: self.seen.append(inputs[0].detach()))
        self.rows: list[list[float]] = []
        self.hists: list[torch.Tensor] = []

    def step(self) -> torch.Tensor:
        self.seen.clear()
        lr = self.opt.param_groups[0]["lr"]
        loss = super().step()  # the weights' norms below are after the update, as the engine's
        stats = [loss.detach()]
        for z, lin in zip(self.seen, self.linears):
            flat, g, w = z.flatten(), lin.weight.grad.norm(), lin.weight.norm()
            stats += [*torch.quantile(flat, self.q), flat.mean(), flat.std(unbiased=False),
                      *torch.quantile(z[:, self.unit], self.q), g, w, lr * g / w]
        self.rows.append(torch.stack(stats).tolist())
        self.steps += 1
        if self.steps % self.hist_every == 0:
            self.hists.append(torch.stack([torch.histogram(z.flatten().cpu(), bins=self.edges)[0] for z in self.seen]))
        return loss
