"""Replay a training step as a CUDA graph: one launch instead of ~130.

A paper-fig1 step is ~130 small kernels; on a GPU the host spends ~20 us issuing each while
the device needs ~2 us to run it, so an eager step is bound by launching (measured on an
H100: 3.2 ms per step of both variants, the device busy 0.3 ms of it; docs/PERFORMANCE.md).
A captured graph replays every kernel of the step with one call.

``StepGraphs.run(key, fn, idx)`` calls ``fn(idx)`` eagerly the first ``WARMUP`` times for
``key`` (lazy state is made then: buffers, cached index tensors, cuBLAS handles); then
captures ``fn`` on a static copy of ``idx`` and from then on copies each new ``idx`` in and
replays. ``fn`` must do device work only: no host syncs,
no host-to-device copies, the same shapes each call; its outputs are overwritten by the
next replay, so callers copy what they keep. The same kernels run in the same order on the
same data, so a replayed step records what an eager one does (tests/test_fast_path.py runs
that check where CUDA is present).

Whatever ``fn`` reads as Python values at capture (learning rates, which variants are
live) is frozen in the graph: the trainer calls ``reset()`` when such a value changes. If a
capture fails, ``run`` turns graphs off for good, says why in ``error`` and runs ``fn``
eagerly: the run goes on, slower, with the same numbers.

A capture is not safe beside GPU work on other threads of the process (seen on an H200:
three trainers on threads, one ending a capture while another stepped: a segfault). So a
process's trainers take turns on a GPU: each holds ``GPU_LOCK`` while it computes, and
graphs are created and destroyed only under it (``reset`` merely marks them stale; ``run``
and ``release`` drop them). With graphs a step holds it for about a launch's time; a
server that runs its workers as processes (BNVIZ_WORKER_MODE=process) never contends.
"""

from __future__ import annotations

import threading
from typing import Callable, Hashable

import torch

WARMUP = 2  # eager calls per key before its capture
GPU_LOCK = threading.RLock()  # held by a trainer while it computes on a GPU (see above)


class StepGraphs:
    """One trainer's captured steps, by key (with histograms or without); see the module doc."""

    def __init__(self) -> None:
        self.enabled = True
        self.error: str | None = None
        self._graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor, object]] = {}
        self._calls: dict[Hashable, int] = {}
        self._stale = False
        self.captures = 0  # made so far, dropped ones included

    def reset(self) -> None:
        """Mark every capture stale: the next ``run`` drops them, then warms up and captures again.

        Safe from any thread (no CUDA call here)."""
        self._stale = True

    def release(self) -> None:
        """Drop every capture and its memory now (call under GPU_LOCK)."""
        self._graphs.clear()
        self._calls.clear()
        self._stale = False

    @property
    def captured(self) -> int:
        return 0 if self._stale else len(self._graphs)

    def run(self, key: Hashable, fn: Callable[[torch.Tensor], object], idx: torch.Tensor) -> tuple[object, bool]:
        """``(fn(idx), replayed)``: the outputs, and whether they came from a graph's replay."""
        if not self.enabled:
            return fn(idx), False
        if self._stale:
            self.release()
        entry = self._graphs.get(key)
        if entry is not None:
            graph, static_idx, out = entry
            static_idx.copy_(idx)
            graph.replay()
            return out, True
        calls = self._calls.get(key, 0)
        if calls < WARMUP:
            self._calls[key] = calls + 1
            return fn(idx), False
        try:
            static_idx = idx.clone()
            graph = torch.cuda.CUDAGraph()
            # thread_local: only this thread's CUDA calls can void the capture (GPU_LOCK keeps other
            # trainers out; any other thread's work must not break it)
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = fn(static_idx)
        except Exception as exc:  # the step does something a graph cannot hold: go on without
            self.enabled = False
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            self.release()
            return fn(idx), False
        self._graphs[key] = (graph, static_idx, out)
        self.captures += 1
        graph.replay()  # capturing records the kernels without running them
        return out, True
