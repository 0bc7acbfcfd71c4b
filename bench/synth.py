"""A RunLog filled with synthetic but realistic rows, as a long run would leave it.

Shapes follow a real comparison: every step one row per variant (train loss, then the 11
layer metrics per hidden layer), a histogram every ``hist_every`` steps, test metrics every
``eval_every`` steps. Values drift and wiggle like training curves so that thinning and
compression see realistic data (not constants, not white noise).
"""

from __future__ import annotations

import numpy as np

from bnviz.metrics import LAYER_METRICS, STEP_METRICS
from bnviz.probes import HIST_BINS, HIST_EDGES
from bnviz.runlog import RunLog

BLOCK = 25  # rows per append, as the trainer flushes


def _rows(rng: np.random.Generator, steps: np.ndarray, n_layers: int, bn: bool) -> np.ndarray:
    k = len(steps)
    t = steps.astype(np.float64)
    cols = [2.3 * np.exp(-t / 4000.0) + 0.05 + 0.03 * np.abs(rng.standard_normal(k))]  # train loss
    for j in range(n_layers):
        drift = 0.0 if bn else (j + 1) * 0.8 * (1 - np.exp(-t / 8000.0))
        spread = 1.0 if bn else 1.0 + 0.5 * j * np.tanh(t / 20000.0)
        mid = drift + 0.05 * rng.standard_normal(k)
        p15, p85 = mid - spread, mid + spread
        umid = mid + 0.3 * np.sin(t / 3000.0 + j)
        grad = np.exp(-4.0 - j - t / 50000.0 + 0.3 * rng.standard_normal(k))
        wn = 8.0 + j + t / 20000.0
        upd = np.exp(-7.0 + 0.3 * rng.standard_normal(k))
        cols += [p15, mid, p85, mid + 0.01, spread, umid - spread, umid, umid + spread, grad, wn, upd]
    return np.stack([np.broadcast_to(c, (k,)) for c in cols], axis=1).astype(np.float32)


def _hists(rng: np.random.Generator, steps: np.ndarray, n_layers: int, bn: bool) -> np.ndarray:
    edges = HIST_EDGES.numpy().astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    widths = np.diff(edges)
    out = np.empty((len(steps), n_layers, HIST_BINS), dtype=np.float32)
    for i, s in enumerate(steps):
        for j in range(n_layers):
            mu = 0.0 if bn else (j + 1) * 0.8 * (1 - np.exp(-s / 8000.0))
            sd = 1.0 if bn else 1.0 + 0.5 * j * np.tanh(s / 20000.0)
            dens = np.exp(-0.5 * ((centers - mu) / sd) ** 2) * widths * (1 + 0.05 * rng.random(HIST_BINS))
            out[i, j] = dens / dens.sum()
    return out


def fill(steps: int, variants: tuple[str, ...] = ("plain", "bn"), n_layers: int = 3, hist_every: int = 10,
         eval_every: int = 500, log: RunLog | None = None, seed: int = 0) -> RunLog:
    """A RunLog (new, or ``log``) holding ``steps`` synthetic steps of every variant."""
    rng = np.random.default_rng(seed)
    if log is None:
        log = RunLog(HIST_EDGES.numpy())
    layers = [f"hidden{i}" for i in range(1, n_layers + 1)]
    assert len(STEP_METRICS) == 1 and len(LAYER_METRICS) == 11
    for name in variants:
        log.add_variant(name, {"norm": "batch" if name == "bn" else "none"}, layers)
    log.state = "running"
    chunk = 10_000  # rows generated at once (vectorized); appended in blocks of BLOCK like the trainer
    hist_cache: dict[str, np.ndarray] = {}
    for start in range(1, steps + 1, chunk):
        step_ids = np.arange(start, min(start + chunk, steps + 1))
        for name in variants:
            bn = name == "bn"
            rows = _rows(rng, step_ids, n_layers, bn)
            for b in range(0, len(step_ids), BLOCK):
                log.append_steps(name, step_ids[b:b + BLOCK], rows[b:b + BLOCK])
            hsteps = step_ids[step_ids % hist_every == 0]
            if len(hsteps):
                # histograms are the slow part to synthesize: reuse 64 shapes per variant
                if name not in hist_cache:
                    hist_cache[name] = _hists(rng, np.linspace(1, max(steps, 2), 64).astype(int), n_layers, bn)
                pick = hist_cache[name][(hsteps * 64 // max(steps, 1)).clip(0, 63)]
                for b in range(0, len(hsteps), BLOCK):
                    log.append_hist(name, hsteps[b:b + BLOCK], pick[b:b + BLOCK])
            for s in step_ids[step_ids % eval_every == 0]:
                acc = 0.97 - 0.87 * np.exp(-s / (3000.0 if bn else 9000.0))
                log.append_eval(name, int(s), float(-np.log(acc)), float(acc))
        log.mark_progress(int(step_ids[-1]))
    return log
