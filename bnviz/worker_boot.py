"""Imported only by the forkserver of bnviz's training worker processes (bnviz/remote.py).

A process that multiprocessing starts re-imports the parent's ``__main__`` first. In a
Streamlit server ``__main__`` is the page script being run (app.py), so every worker would
run the whole app in bare mode (measured: ~300 MB and seconds of CPU per worker, and its
warnings in the log). The workers need only ``bnviz.remote.serve``, importable by name.
This module runs in the forkserver before any worker is forked, and the workers inherit it.
"""

from __future__ import annotations

import gc
from multiprocessing import spawn


def _skip_main(*_args, **_kwargs) -> None:
    return None


spawn._fixup_main_from_path = _skip_main
spawn._fixup_main_from_name = _skip_main

import torch  # noqa: E402

import bnviz.trainer  # noqa: E402,F401 -- the engine loads once here; every worker shares its pages

# torch's first optimizer imports torch._dynamo (Optimizer.__init__ is wrapped to keep dynamo
# out), ~1 s: once here rather than in every worker as it builds its Trainer.
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

# What the forkserver holds now is shared with every worker: keep the collector from touching
# it in the children, or each collection would copy those pages into every worker.
gc.freeze()
