"""RunLog: the bounded, thread-safe store of what a run recorded, and its tidy export.

The trainer appends blocks of rows; readers take a ``snapshot()`` (a copy made under a
lock in microseconds), so drawing never blocks training and training never waits for a
chart. Each table keeps at most ``capacity`` rows: when full, neighbouring rows are
averaged pairwise and the bucket size doubles. A run of a million steps therefore keeps
the same few thousand points as a run of ten thousand, with the shape of every curve.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from bnviz.metrics import (DIVERGED, EVAL_METRICS, LANDSCAPE_LAYER_METRICS, LANDSCAPE_METRICS, LAYER_METRICS,
                           STEP_METRICS)

SCALAR_CAPACITY = 2048
EVAL_CAPACITY = 1024
HIST_CAPACITY = 512


class DecimatedTable:
    """Rows of floats indexed by step, at most ``capacity`` kept; buckets double when full.

    A stored row is the mean of the ``stride`` consecutive rows of its bucket, labelled by
    the bucket's last step. A copy ends with the open bucket, if it holds any rows, as a
    partial row at the last step appended: a snapshot never lags the step counter.
    """

    def __init__(self, width: int, capacity: int, dtype=np.float32):
        if capacity < 2 or capacity % 2:
            raise ValueError("capacity must be even and >= 2")
        self.capacity, self.stride, self.n = capacity, 1, 0
        self.steps = np.zeros(capacity, dtype=np.int64)
        self.values = np.zeros((capacity, width), dtype=dtype)
        self._acc = np.zeros(width, dtype=np.float64)  # sum of the open bucket
        self._acc_n = 0
        self._last_step = 0

    def append(self, steps: np.ndarray, rows: np.ndarray) -> None:
        """Append rows (k, width) recorded at ``steps`` (k,)."""
        for step, row in zip(steps, rows):
            self._acc += row
            self._acc_n += 1
            self._last_step = step
            if self._acc_n < self.stride:
                continue
            if self.n == self.capacity:
                # Full: merge stored pairs (all of equal size), double the stride, and keep
                # filling the open bucket, which now holds half of a new-size bucket.
                half = self.capacity // 2
                self.values[:half] = (self.values[0::2] + self.values[1::2]) / 2
                self.steps[:half] = self.steps[1::2]
                self.n, self.stride = half, self.stride * 2
                continue
            self.steps[self.n] = step
            self.values[self.n] = self._acc / self._acc_n
            self.n += 1
            self._acc[:] = 0
            self._acc_n = 0

    def copy(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the stored rows, then of the open bucket if it is not empty."""
        if not self._acc_n:
            return self.steps[: self.n].copy(), self.values[: self.n].copy()
        steps = np.append(self.steps[: self.n], self._last_step)
        values = np.concatenate([self.values[: self.n], (self._acc / self._acc_n)[None].astype(self.values.dtype)])
        return steps, values

    @property
    def nbytes(self) -> int:
        return self.steps.nbytes + self.values.nbytes + self._acc.nbytes


@dataclass
class VariantLog:
    name: str
    config: dict
    layers: list[str]
    scalars: DecimatedTable
    evals: DecimatedTable
    hists: DecimatedTable
    landscape: DecimatedTable
    status: str = "running"  # running | finished | diverged | failed | stopped
    step: int = 0
    diverged_at: int | None = None
    message: str | None = None


@dataclass(frozen=True)
class VariantSnapshot:
    """A copy of one variant's record. Arrays: steps (n,), per-layer metrics (n, L)."""

    name: str
    config: dict
    layers: list[str]
    status: str
    step: int
    diverged_at: int | None
    message: str | None
    steps: np.ndarray
    series: dict[str, np.ndarray]  # STEP_METRICS -> (n,), LAYER_METRICS -> (n, L)
    eval_steps: np.ndarray
    evals: dict[str, np.ndarray]  # EVAL_METRICS -> (m,)
    hist_steps: np.ndarray
    hists: np.ndarray  # (h, L, bins) fraction per bin
    hist_edges: np.ndarray  # (bins + 1,)
    landscape_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    landscape: dict[str, np.ndarray] = field(default_factory=dict)  # ics_* -> (k, L); others -> (k,)

    @property
    def ended(self) -> str:
        """Its status and the step it came to, in words: "finished at step 300", "diverged at
        step 3" (the step whose loss was not finite; ``step`` is the last finite one, and both
        together read "diverged at step 2 (diverged at step 3)")."""
        return f"{self.status} at step {self.diverged_at if self.diverged_at is not None else self.step}"


@dataclass(frozen=True)
class Event:
    step: int
    variant: str | None  # None: all variants
    text: str


@dataclass(frozen=True)
class RunSnapshot:
    variants: dict[str, VariantSnapshot]
    events: list[Event]
    state: str
    steps_per_s: float
    notices: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        return max((v.step for v in self.variants.values()), default=0)


# A run in one of these states computes no more (a new Trainer is needed to go on).
TERMINAL_STATES = ("finished", "stopped", "failed")


class RunLog:
    """Everything one comparison recorded; written by one trainer, read by anyone."""

    def __init__(self, hist_edges: np.ndarray):
        self._lock = threading.Lock()
        self._variants: dict[str, VariantLog] = {}
        self._events: list[Event] = []
        self._notices: list[str] = []
        self.hist_edges = np.asarray(hist_edges, dtype=np.float32)
        self.state = "idle"
        self._rate = (time.perf_counter(), 0, 0.0)  # (time, step, steps/s)

    def add_variant(self, name: str, config: dict, layers: list[str]) -> None:
        width = len(STEP_METRICS) + len(layers) * len(LAYER_METRICS)
        with self._lock:
            self._variants[name] = VariantLog(
                name, config, list(layers),
                DecimatedTable(width, SCALAR_CAPACITY),
                DecimatedTable(len(EVAL_METRICS), EVAL_CAPACITY),
                DecimatedTable(len(layers) * (len(self.hist_edges) - 1), HIST_CAPACITY),
                DecimatedTable(len(layers) * len(LANDSCAPE_LAYER_METRICS) + len(LANDSCAPE_METRICS), EVAL_CAPACITY),
            )

    # writers (the trainer) -------------------------------------------------------------
    def append_steps(self, name: str, steps: np.ndarray, rows: np.ndarray) -> None:
        with self._lock:
            v = self._variants[name]
            v.scalars.append(steps, rows)
            if len(steps):
                v.step = int(steps[-1])

    def append_eval(self, name: str, step: int, loss: float, acc: float) -> None:
        with self._lock:
            self._variants[name].evals.append(np.array([step]), np.array([[loss, acc]]))

    def append_landscape(self, name: str, step: int, per_layer: np.ndarray, overall: np.ndarray) -> None:
        """per_layer (L, 2): ics_l2, ics_cos; overall (3,): loss_range, grad_change, beta_smoothness."""
        row = np.concatenate([np.asarray(per_layer, dtype=np.float64).reshape(-1), np.asarray(overall, dtype=np.float64)])
        with self._lock:
            self._variants[name].landscape.append(np.array([step]), row[None])

    def append_hist(self, name: str, steps: np.ndarray, hists: np.ndarray) -> None:
        if not len(steps):  # e.g. a variant that diverged before its first histogram
            return
        with self._lock:
            self._variants[name].hists.append(steps, hists.reshape(len(steps), -1))

    def set_status(self, name: str, status: str, message: str | None = None, diverged_at: int | None = None) -> None:
        with self._lock:
            v = self._variants[name]
            v.status, v.message = status, message
            if diverged_at is not None:
                v.diverged_at = diverged_at

    def add_event(self, step: int, text: str, variant: str | None = None) -> None:
        with self._lock:
            self._events.append(Event(step, variant, text))
            del self._events[:-200]  # bounded like everything else

    def add_notice(self, text: str) -> None:
        with self._lock:
            if text not in self._notices:
                self._notices.append(text)

    def mark_progress(self, step: int) -> None:
        """Update the steps/s estimate (exponential average, so the number is steady)."""
        now = time.perf_counter()
        with self._lock:
            t0, s0, rate = self._rate
            if step > s0 and now > t0:
                inst = (step - s0) / (now - t0)
                rate = inst if rate == 0 else 0.7 * rate + 0.3 * inst
                self._rate = (now, step, rate)

    # readers ---------------------------------------------------------------------------
    def snapshot(self) -> RunSnapshot:
        with self._lock:
            copies = {
                n: (v, v.scalars.copy(), v.evals.copy(), v.hists.copy(), v.landscape.copy(), v.status, v.step,
                    v.diverged_at, v.message)
                for n, v in self._variants.items()
            }
            events, notices, state, rate = list(self._events), list(self._notices), self.state, self._rate[2]
        variants = {}
        for n, (v, (steps, rows), (esteps, evals), (hsteps, hists), (lsteps, lrows), status, step, dv, msg) in copies.items():
            n_layers = len(v.layers)
            series = {m: rows[:, i] for i, m in enumerate(STEP_METRICS)}
            per_layer = rows[:, len(STEP_METRICS):].reshape(len(rows), n_layers, len(LAYER_METRICS))
            series.update({m: per_layer[:, :, j] for j, m in enumerate(LAYER_METRICS)})
            variants[n] = VariantSnapshot(
                name=n, config=dict(v.config), layers=list(v.layers), status=status, step=step, diverged_at=dv, message=msg,
                steps=steps, series=series, eval_steps=esteps,
                evals={m: evals[:, i] for i, m in enumerate(EVAL_METRICS)},
                hist_steps=hsteps, hists=hists.reshape(len(hsteps), n_layers, len(self.hist_edges) - 1), hist_edges=self.hist_edges.copy(),
                landscape_steps=lsteps, landscape=_split_landscape(lrows, n_layers),
            )
        return RunSnapshot(variants, events, state, rate, notices)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(t.nbytes for v in self._variants.values() for t in (v.scalars, v.evals, v.hists, v.landscape))


def _split_landscape(rows: np.ndarray, n_layers: int) -> dict[str, np.ndarray]:
    per_layer = rows[:, : n_layers * len(LANDSCAPE_LAYER_METRICS)].reshape(len(rows), n_layers, len(LANDSCAPE_LAYER_METRICS))
    out = {m: per_layer[:, :, j] for j, m in enumerate(LANDSCAPE_LAYER_METRICS)}
    rest = rows[:, n_layers * len(LANDSCAPE_LAYER_METRICS):]
    out.update({m: rest[:, j] for j, m in enumerate(LANDSCAPE_METRICS)})
    return out


# tidy export -----------------------------------------------------------------------------
CSV_HEADER = ("variant", "step", "layer", "metric", "value")


def _tidy_blocks(snap: RunSnapshot) -> Iterator[tuple[str, np.ndarray, list[tuple[str, str, np.ndarray]]]]:
    """The tidy rows in blocks, in their order: (variant, steps, columns), each step's rows one
    per column; a column is (layer, metric, its value at each step), layer '' for
    whole-network metrics."""
    for name, v in snap.variants.items():
        yield name, v.steps, ([("", m, v.series[m]) for m in STEP_METRICS]
                              + [(layer, m, v.series[m][:, j]) for j, layer in enumerate(v.layers)
                                 for m in LAYER_METRICS])
        yield name, v.eval_steps, [("", m, v.evals[m]) for m in EVAL_METRICS]
        yield name, v.landscape_steps, ([(layer, m, v.landscape[m][:, j]) for j, layer in enumerate(v.layers)
                                         for m in LANDSCAPE_LAYER_METRICS]
                                        + [("", m, v.landscape[m]) for m in LANDSCAPE_METRICS])
        if v.diverged_at is not None:
            yield name, np.array([v.diverged_at]), [("", DIVERGED, np.ones(1))]


def tidy_rows(snap: RunSnapshot) -> Iterator[tuple[str, int, str, str, float]]:
    """(variant, step, layer, metric, value) rows; layer is '' for whole-network metrics."""
    for name, steps, columns in _tidy_blocks(snap):
        for i, step in enumerate(steps.tolist()):
            for layer, metric, values in columns:
                yield name, step, layer, metric, float(values[i])


def to_csv(snap: RunSnapshot) -> str:
    """``tidy_rows`` as CSV, each value as the shortest text that reads back as the same float32.

    Written a block at a time (one variant's steps x its columns), the block's values formatted
    by numpy in one call: the same bytes as a csv.writer fed row by row (tests/test_runlog.py),
    2.4x faster (python -m bench.csv_export). A page builds it, holding the GIL, whenever its
    run stops, and every other page on the server waits that long.
    """
    lines = [",".join(CSV_HEADER)]
    for name, steps, columns in _tidy_blocks(snap):
        lines += _csv_block(name, steps, columns)
    return "\n".join(lines) + "\n"


def _csv_block(name: str, steps: np.ndarray, columns: list[tuple[str, str, np.ndarray]]) -> list[str]:
    """The rows (name, step, layer, metric, value) of each step, and of each column in order."""
    if not len(steps) or not columns:
        return []
    values = np.stack([np.asarray(c, dtype=np.float32) for _, _, c in columns], axis=1).astype(str).tolist()
    head = _csv_field(name) + ","
    mids = [f",{_csv_field(layer)},{_csv_field(metric)}," for layer, metric, _ in columns]
    return [f"{head}{step}{mid}{value}" for step, row in zip(steps.tolist(), values) for mid, value in zip(mids, row)]


def _csv_field(text: str) -> str:
    """``text`` as csv.writer writes it inside a row (quoted only where it must be)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow((text, ""))
    return buf.getvalue()[:-2]  # without the empty second field's "," and the line's end


def from_csv(text: str) -> RunSnapshot:
    """Rebuild a snapshot (series, evaluations, landscape, divergence; no histograms) from ``to_csv``.

    So a finished run's metrics.csv can be summarized or re-plotted without training again.
    """
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != CSV_HEADER:
        raise ValueError(f"not a bnviz metrics.csv (header must be {','.join(CSV_HEADER)})")
    data: dict[str, dict] = {}
    for variant, step, layer, metric, value in rows[1:]:
        v = data.setdefault(variant, {"layers": [], "cells": {}})
        if layer and layer not in v["layers"]:
            v["layers"].append(layer)
        v["cells"][(metric, layer, int(step))] = float(value)
    variants = {}
    for name, v in data.items():
        cells, layers = v["cells"], v["layers"]

        def steps_of(metrics) -> np.ndarray:
            return np.array(sorted({s for (m, _, s) in cells if m in metrics}), dtype=np.int64)

        def column(metric, steps, layer=""):
            return np.array([cells.get((metric, layer, int(s)), np.nan) for s in steps], dtype=np.float32)

        steps, esteps, lsteps = steps_of(STEP_METRICS), steps_of(EVAL_METRICS), steps_of(LANDSCAPE_METRICS)
        series = {m: column(m, steps) for m in STEP_METRICS}
        series.update({m: np.stack([column(m, steps, l) for l in layers], axis=1) if layers
                       else np.zeros((len(steps), 0), np.float32) for m in LAYER_METRICS})
        landscape = {m: column(m, lsteps) for m in LANDSCAPE_METRICS}
        landscape.update({m: np.stack([column(m, lsteps, l) for l in layers], axis=1) if layers
                          else np.zeros((len(lsteps), 0), np.float32) for m in LANDSCAPE_LAYER_METRICS})
        diverged = [s for (m, _, s) in cells if m == DIVERGED]
        variants[name] = VariantSnapshot(
            name=name, config={}, layers=layers, status="diverged" if diverged else "finished",
            step=int(max(steps.max(initial=0), esteps.max(initial=0))), diverged_at=diverged[0] if diverged else None,
            message=None, steps=steps, series=series, eval_steps=esteps,
            evals={m: column(m, esteps) for m in EVAL_METRICS},
            hist_steps=np.zeros(0, np.int64), hists=np.zeros((0, len(layers), 0), np.float32),
            hist_edges=np.zeros(1, np.float32), landscape_steps=lsteps, landscape=landscape,
        )
    return RunSnapshot(variants, [], "finished", 0.0)
