"""bnviz.optimizers: torch.optim's updates, bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnviz import optimizers

REPO = Path(__file__).resolve().parent.parent

SETTINGS = [
    (torch.optim.SGD, optimizers.SGD, dict(lr=0.1)),
    (torch.optim.SGD, optimizers.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
    (torch.optim.Adam, optimizers.Adam, dict(lr=1e-3, weight_decay=1e-3)),
]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


@pytest.mark.parametrize("theirs, ours, kw", SETTINGS, ids=["sgd", "momentum-wd", "adam"])
def test_updates_equal_torch_optims_bit_for_bit(theirs, ours, kw):
    nets = [_net(), _net()]
    opts = [theirs(nets[0].parameters(), **kw), ours(nets[1].parameters(), **kw)]
    calls = []
    opts[1].register_step_post_hook(lambda *_: calls.append(1))  # torch's step hooks still run
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(16, 7, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        for net, opt in zip(nets, opts):
            opt.zero_grad(set_to_none=False)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        sa, sb = opts[0].state[a], opts[1].state[b]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert len(calls) == 6
    assert not any(p.requires_grad for p in opts[1].state.get(nets[1][0].weight, {}).values()
                   if isinstance(p, torch.Tensor))


# Every path that trains: the stacked MLPs, the per-variant path (momentum, Adam, layer norm,
# a CNN), Santurkar's landscape probes. In a fresh interpreter, as a worker or the CLI starts.
TRAIN_EVERY_PATH = """
import sys
from bnviz.config import Comparison
from bnviz.trainer import Trainer
base = ["width=8", "depth=2", "steps=6", "eval_every=3", "hist_every=2", "dataset=mnist-mini"]
for extra in (["variants=plain,bn", "bn.norm=batch"],
              ["variants=mom,ln,adam", "mom.optimizer=momentum", "ln.norm=layer", "adam.optimizer=adam"],
              ["variants=cnn", "model=cnn", "activation=relu"],
              ["variants=plain,bn", "bn.norm=batch", "landscape_every=3"]):
    t = Trainer(Comparison.from_flat(base + extra))
    t.run()
    assert t.log.state == "finished", (extra, t.log.snapshot().notices)
print("torch._dynamo" in sys.modules)
"""


def test_training_never_imports_torch_dynamo():
    """1.46 s and 74 MB saved in every process that trains (bnviz/optimizers.py)."""
    out = subprocess.run([sys.executable, "-c", TRAIN_EVERY_PATH], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
