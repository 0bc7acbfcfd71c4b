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

# The remote datasets the presets train on (mnist: Paper Figure 1), when already on disk (the
# Docker image fetches them at build time), are read here once and every worker inherits them:
# 60,000 MNIST images are 220 MB of float32 tensors that each worker would otherwise read, verify
# and normalize again after its Start (~0.4 s), and hold a copy of. Nothing is downloaded here
# (a worker does that itself, as before), and fashion-mnist, which only a lab picks, is not held
# for every server: a worker loads it when asked.
def _preload_datasets() -> tuple[str, ...]:
    from bnviz import data, presets

    wanted = {cfg.dataset for p in presets.PRESETS.values() for cfg in p.comparison().variants.values()}
    # On one thread: a process that has run a parallel region forks children whose first
    # parallel op waits forever on the parent's (absent) OpenMP threads. Measured: a worker
    # hung in its Sampler's randperm. The count is put back for the workers (serve() sets theirs);
    # the normalized images do not depend on it (data.pixel_stats).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loaded = []
    try:
        for name in sorted(wanted & data.REMOTE.keys()):
            try:
                if data.on_disk(name):
                    data.load(name)
                    loaded.append(name)
            except Exception:  # noqa: BLE001 -- the forkserver must start anyway; the worker reports it
                pass
    finally:
        torch.set_num_threads(threads)
    return tuple(loaded)


PRELOADED = _preload_datasets()

# What the forkserver holds now is shared with every worker: keep the collector from touching
# it in the children, or each collection would copy those pages into every worker.
gc.freeze()
