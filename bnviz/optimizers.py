"""torch.optim's SGD and Adam, minus the guards that import torch.compile's machinery.

torch.optim wraps ``Optimizer.add_param_group``, ``zero_grad`` and every ``step`` so that
torch.compile (dynamo) skips them or breaks its graph there. Each wrapper imports
``torch._dynamo`` on its first call: 1.46 s and 74 MB on this machine, paid by every process
that trains (the CLI, the workers' forkserver, a thread-mode server at its first Start, while
holding the import lock). bnviz never compiles, so to it the wrappers are that import and
nothing else. These subclasses call the wrapped methods themselves (``inspect.unwrap``), so
their updates are torch's, bit for bit, and step hooks and the profiler's step records stay
(tests/test_optimizers.py).
"""

from __future__ import annotations

import inspect

import torch


def _eager(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    raw_step = inspect.unwrap(cls.step)  # below the grad-mode and graph-break wrapper

    class Eager(cls):
        add_param_group = inspect.unwrap(cls.add_param_group)
        zero_grad = inspect.unwrap(cls.zero_grad)

        def step(self, closure=None):
            # the wrapper's grad mode: torch.is_grad_enabled() == defaults["differentiable"],
            # False for the optimizers bnviz builds (differentiable=True would need the graph)
            with torch.set_grad_enabled(self.defaults["differentiable"]):
                return raw_step(self, closure)

    Eager.__name__ = Eager.__qualname__ = cls.__name__
    Eager.__module__ = __name__
    Eager.__doc__ = f"torch.optim.{cls.__name__} without its torch.compile guards (bnviz.optimizers)."
    return Eager


SGD = _eager(torch.optim.SGD)
Adam = _eager(torch.optim.Adam)
