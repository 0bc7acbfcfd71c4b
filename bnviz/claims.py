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


def _steps_text(steps: int | None) -> str:
    return "not reached" if steps is None else f"{steps:,}"


def accuracy_text(acc: float | None) -> str:
    """An accuracy as the tables write it: "0.929", or "–" where there is none (no evaluation yet)."""
    return "–" if acc is None or np.isnan(acc) else f"{acc:.3f}"


def figure1_table(snap: RunSnapshot) -> list[dict]:
    """The numbers behind the paper's Figure 1 claims as shown on the page: a row per measure, a
    column per variant. (A row per variant made seven columns, and on a projector, 1024 px with
    the sidebar open, the table scrolled the tracked unit's, those of claims b and c, out of
    sight.) As text: Streamlit's Arrow conversion wants one type per column."""
    columns = {}
    for v in snap.variants.values():
        d = unit_drift(v)
        columns[v.name] = {
            "final test accuracy": accuracy_text(final_accuracy(v)),
            "steps to 90%": _steps_text(steps_to_accuracy(v, 0.90)),
            "steps to 95%": _steps_text(steps_to_accuracy(v, 0.95)),
            "unit median: start → end": f"{d.median_start:+.2f} → {d.median_end:+.2f}",
            "unit median range": f"{d.median_range:.3f}",
            "unit 15–85 width: start → end": f"{d.band_start:.2f} → {d.band_end:.2f}",
        }
    return _by_measure(columns)


def _by_measure(columns: dict[str, dict[str, str]]) -> list[dict]:
    """{variant: {measure: text}} as table rows: a row per measure, a column per variant."""
    measures = next(iter(columns.values()), {})
    return [{"measure": m, **{name: c[m] for name, c in columns.items()}} for m in measures]


def depth_growth_table(snap: RunSnapshot) -> list[dict]:
    """Bjorck et al.'s numbers at initialization (defined in bnviz/depth.py), a row per measure
    and a column per variant, as text, as figure1_table."""
    # Imported here: it builds each variant's initial network (torch); the rest of this
    # module needs only the recorded series.
    from bnviz.depth import snapshot_profiles

    columns = {}
    for name, p in snapshot_profiles(snap).items():
        columns[name] = {
            f"unit variance: {p.layers[0]} → {p.layers[-1]}": f"{p.var[0]:.3g} → {p.var[-1]:.3g}",
            "variance growth per layer": f"{p.growth:.3f}",
            f"mean |unit mean|: {p.layers[0]} → {p.layers[-1]}": f"{p.mean[0]:.3g} → {p.mean[-1]:.3g}",
            "output-gradient similarity": f"{p.similarity:.3f}",
            "share of the batch given one class": f"{p.majority:.3f}",
            "final test accuracy": accuracy_text(final_accuracy(snap.variants[name])),
        }
    return _by_measure(columns)


# Numbers behind the other presets' claims (tests/test_claims.py asserts them on shortened runs).

def accuracy_at(v: VariantSnapshot, step: int) -> float:
    """Test accuracy of the last evaluation at or before ``step``; NaN if there is none."""
    i = int(np.searchsorted(v.eval_steps, step, side="right")) - 1
    return float(v.evals["test_acc"][i]) if i >= 0 else float("nan")


def mean_accuracy(v: VariantSnapshot, until: int | None = None) -> float:
    """Mean test accuracy over the evaluations after step 0 (up to ``until``): the area under
    the accuracy curve per evaluation, so it rewards reaching a level early, not only the end."""
    keep = v.eval_steps > 0
    if until is not None:
        keep &= v.eval_steps <= until
    return float(np.mean(v.evals["test_acc"][keep])) if keep.any() else float("nan")


def loss_start_end(v: VariantSnapshot, fraction: float = 0.05) -> tuple[float, float]:
    """Mean train loss over the first and over the last ``fraction`` of the recorded steps
    (one batch's loss is noisy). A net that learns nothing stays near ln(classes)."""
    loss = v.series["train_loss"]
    if not len(loss):
        return float("nan"), float("nan")
    k = max(1, round(len(loss) * fraction))
    return float(loss[:k].mean()), float(loss[-k:].mean())


def late_test_loss(v: VariantSnapshot, evals: int = 3) -> float:
    """Mean test loss over the last ``evals`` evaluations (one evaluation's is noisy); beside
    loss_start_end's end, how well a net that fits its training set generalizes."""
    loss = v.evals["test_loss"]
    return float(loss[-evals:].mean()) if len(loss) else float("nan")


def grad_norm_ratio(v: VariantSnapshot, first: int = 0, last: int = -1) -> float:
    """Run mean of layer ``first``'s weight-gradient norm over the run mean of layer ``last``'s:
    how much smaller the early layers' gradients are (vanishing gradients: orders of
    magnitude below 1)."""
    g = v.series["grad_norm"]
    return float(np.mean(g[:, first]) / np.mean(g[:, last])) if len(g) else float("nan")


def layer_end(v: VariantSnapshot, metric: str, rows: int = 50) -> np.ndarray:
    """Per layer, shape (L,): a per-layer metric (``act_std``, ``act_mean``, ...) averaged over
    the last ``rows`` recorded rows, i.e. where training ended."""
    return v.series[metric][-rows:].mean(axis=0)


def activation_growth(v: VariantSnapshot, layer: int = -1) -> float:
    """Largest pre-activation std of a layer over the recorded steps divided by its std at
    the first recorded step: how far the activations blew up (inf where they overflowed)."""
    std = v.series["act_std"][:, layer].astype(np.float64)
    if not len(std) or not np.isfinite(std[0]) or std[0] == 0:
        return float("nan")
    return float(np.nanmax(std) / std[0])


def step_shift(v: VariantSnapshot, layer: int = -1) -> float:
    """How much a layer's input distribution moves from one recorded step to the next: the
    mean absolute change of the layer's pre-activation mean plus that of its std between
    consecutive rows. Noisy BN (Santurkar et al.) moves it on purpose every step; a plain
    net's drifts slowly; BN holds both (up to beta and gamma). Once a run outgrows the
    RunLog its rows are averages of several steps, which smooths this: compare variants of
    one run, not runs of different lengths."""
    s = v.series
    if len(s["act_mean"]) < 2:
        return float("nan")
    return float(np.mean(np.abs(np.diff(s["act_mean"][:, layer]))) + np.mean(np.abs(np.diff(s["act_std"][:, layer]))))


def landscape_mean(v: VariantSnapshot, metric: str) -> float:
    """Mean of one of Santurkar et al.'s probes (metrics.LANDSCAPE_*) over the run's probe steps.

    The per-layer ICS metrics are also averaged over layers 2..L: layer 1 has no earlier
    layers, so its distance is 0 and its cosine 1 by definition. The mean weighs early
    training most, where the values are largest and where Santurkar et al. report BN's
    smoother landscape.
    """
    x = np.asarray(v.landscape.get(metric, np.zeros(0)), dtype=np.float64)
    if x.ndim == 2:
        x = x[:, 1:]
    return float(np.mean(x)) if x.size else float("nan")


def train_eval_gap(row: dict) -> float | None:
    """|test accuracy in eval mode (running statistics) - in train mode (each test batch's own
    statistics)| of a sweep row (bnviz/sweep.py): how much a batch of that size misestimates
    the statistics. None where the row has no train-mode accuracy."""
    if row.get("test_acc") is None or row.get("train_mode_acc") is None:
        return None
    return abs(row["test_acc"] - row["train_mode_acc"])


def sweep_threshold(rows: list[dict], fraction: float = 0.9) -> float:
    """``fraction`` of the best test accuracy in a sweep's rows, rounded to 3 decimals: the bar
    for a "stable" value that the CLI prints by default (largest_stable in bnviz/sweep.py)."""
    best = max((r["test_acc"] for r in rows if r.get("test_acc") is not None), default=0.0)
    return round(fraction * best, 3)
