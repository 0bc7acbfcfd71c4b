"""Numbers that test a preset's claim, computed from a RunSnapshot.

The pages show them next to the paper's words, docs/EXPERIMENTS.md quotes them, and the
tests assert the claims on shortened runs: one definition of each number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnviz.runlog import RunSnapshot, VariantSnapshot


@dataclass(frozen=True)
class UnitDrift:
    """How the tracked unit's input distribution (last hidden layer) moved over training."""

    median_start: float
    median_end: float
    median_range: float  # max - min of the median over training: how far it wandered
    band_start: float  # 85th - 15th percentile width, first 1% of training
    band_end: float  # the same, last 1% of training


def _edge_mean(x: np.ndarray, first: bool) -> float:
    k = max(1, len(x) // 100)
    return float(np.mean(x[:k] if first else x[-k:]))


def unit_drift(v: VariantSnapshot, layer: int = -1) -> UnitDrift:
    p15, p50, p85 = (v.series[f"unit_p{q}"][:, layer] for q in (15, 50, 85))
    band = p85 - p15
    return UnitDrift(
        median_start=_edge_mean(p50, True), median_end=_edge_mean(p50, False),
        median_range=float(p50.max() - p50.min()) if len(p50) else 0.0,
        band_start=_edge_mean(band, True), band_end=_edge_mean(band, False),
    )


def final_accuracy(v: VariantSnapshot) -> float:
    acc = v.evals["test_acc"]
    return float(acc[-1]) if len(acc) else float("nan")


def steps_to_accuracy(v: VariantSnapshot, threshold: float) -> int | None:
    """The first evaluated step at which test accuracy reached ``threshold``, or None."""
    hit = np.nonzero(v.evals["test_acc"] >= threshold)[0]
    return int(v.eval_steps[hit[0]]) if len(hit) else None


def figure1_table(snap: RunSnapshot) -> list[dict]:
    """One row per variant: the numbers behind the paper's Figure 1 claims."""
    rows = []
    for v in snap.variants.values():
        d = unit_drift(v)
        rows.append({
            "variant": v.name,
            "final test accuracy": round(final_accuracy(v), 4),
            "steps to 90%": steps_to_accuracy(v, 0.90),
            "steps to 95%": steps_to_accuracy(v, 0.95),
            "unit median: start → end": f"{d.median_start:+.2f} → {d.median_end:+.2f}",
            "unit median range": round(d.median_range, 3),
            "unit 15–85 width: start → end": f"{d.band_start:.2f} → {d.band_end:.2f}",
        })
    return rows
