"""Every Plotly figure bnviz draws, each a pure function of a RunSnapshot.

No figure reads state of its own: the app, the HTML report and the tests call the same
functions on a snapshot. ``FIGURES`` lists the live-lab charts in page order with their
title and the one-line caption that tells a student what to look for.

Payload stays bounded whatever the run length: the RunLog keeps a few thousand rows and
``_thin`` draws at most ``MAX_POINTS`` of them per trace (numpy arrays travel to the
browser as compact typed arrays).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bnviz.metrics import LABELS
from bnviz.runlog import RunSnapshot, VariantSnapshot

MAX_POINTS = 400
PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#9D755D", "#EECA3B")
LAYER_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")
SHIFT_WINDOW = 5  # histograms apart (hist_every steps each) for the shift score
FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=13)


def variant_color(snap: RunSnapshot, name: str) -> str:
    return PALETTE[list(snap.variants).index(name) % len(PALETTE)]


def _thin(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most max_points evenly spread rows, always keeping the last."""
    if n <= max_points:
        return np.arange(n)
    idx = np.linspace(0, n - 1, max_points).round().astype(int)
    return np.unique(idx)


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left"), height=height, font=FONT,
        margin=dict(l=60, r=20, t=100, b=50), template="plotly_white",
        legend=dict(orientation="h", yanchor="bottom", y=1.1, xanchor="right", x=1),
        uirevision="keep",  # keep zoom and legend toggles across live refreshes
        hovermode="x unified",
    )
    return fig


def _mark_events(fig: go.Figure, snap: RunSnapshot, rows: int, cols: int, only: str | None = None) -> None:
    """Dotted lines where a variant diverged; grey ones where the learning rate changed."""
    for v in snap.variants.values():
        if v.diverged_at is not None and (only is None or only == v.name):
            for r in range(1, rows + 1):
                for c in range(1, cols + 1):
                    fig.add_vline(x=v.diverged_at, line=dict(color=variant_color(snap, v.name), dash="dot", width=2),
                                  row=r, col=c)
            fig.add_annotation(x=v.diverged_at, y=1, yref="paper", text=f"{v.name} diverged", showarrow=False,
                               font=dict(color=variant_color(snap, v.name)), xanchor="left", yanchor="bottom",
                               xref="x")
    for e in snap.events:
        if e.text.startswith("lr"):
            for r in range(1, rows + 1):
                for c in range(1, cols + 1):
                    fig.add_vline(x=e.step, line=dict(color="#888", dash="dash", width=1), row=r, col=c)
            fig.add_annotation(x=e.step, y=1, yref="paper", xref="x", showarrow=False, yanchor="bottom",
                               text=e.text + (f" ({e.variant})" if e.variant else ""), font=dict(color="#666", size=11))


def _layers(snap: RunSnapshot) -> list[str]:
    """Union of layer names in order (variants may differ in depth)."""
    seen: list[str] = []
    for v in snap.variants.values():
        seen.extend(n for n in v.layers if n not in seen)
    return seen


# 1. loss and accuracy -------------------------------------------------------------------
def loss_accuracy(snap: RunSnapshot) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("train loss", "test accuracy"), horizontal_spacing=0.08)
    for v in snap.variants.values():
        color = variant_color(snap, v.name)
        i = _thin(len(v.steps))
        fig.add_trace(go.Scatter(x=v.steps[i], y=v.series["train_loss"][i], name=v.name, legendgroup=v.name,
                                 line=dict(color=color, width=2)), 1, 1)
        fig.add_trace(go.Scatter(x=v.eval_steps, y=v.evals["test_acc"], name=v.name, legendgroup=v.name,
                                 showlegend=False, mode="lines+markers", marker=dict(size=4),
                                 line=dict(color=color, width=2)), 1, 2)
    fig.update_yaxes(type="log", title_text="loss (log)", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], row=1, col=2)
    fig.update_xaxes(title_text="step")
    _mark_events(fig, snap, 1, 2)
    return _layout(fig, "Loss and accuracy", 360)


# 2. percentile bands (the paper's Figure 1 b/c) -----------------------------------------
def percentile_bands(snap: RunSnapshot, unit: bool = False) -> go.Figure:
    prefix = "unit" if unit else "act"
    layers = _layers(snap)
    names = list(snap.variants)
    fig = make_subplots(rows=len(names), cols=len(layers), shared_xaxes=True, shared_yaxes=True,
                        row_titles=names, column_titles=layers, vertical_spacing=0.06, horizontal_spacing=0.02)
    for r, v in enumerate(snap.variants.values(), start=1):
        color = variant_color(snap, v.name)
        i = _thin(len(v.steps))
        x = v.steps[i]
        for c, layer in enumerate(layers, start=1):
            if layer not in v.layers:
                continue
            j = v.layers.index(layer)
            lo, mid, hi = (v.series[f"{prefix}_p{q}"][i, j] for q in (15, 50, 85))
            first = r == 1 and c == 1
            fig.add_trace(go.Scatter(x=x, y=hi, line=dict(width=0), showlegend=False, hoverinfo="skip"), r, c)
            fig.add_trace(go.Scatter(x=x, y=lo, fill="tonexty", fillcolor=_alpha(color, 0.25), line=dict(width=0),
                                     name="15th–85th percentile", legendgroup="band", showlegend=first,
                                     hoverinfo="skip"), r, c)
            fig.add_trace(go.Scatter(x=x, y=mid, line=dict(color=color, width=2), name="median",
                                     legendgroup="median", showlegend=first,
                                     hovertemplate=f"{v.name} {layer}<br>step %{{x}}<br>median %{{y:.3f}}<extra></extra>"),
                          r, c)
    what = "tracked unit" if unit else "whole layer"
    fig.update_yaxes(matches="y")  # one scale for every variant: a wide band must look wide
    fig.update_yaxes(title_text="input to nonlinearity", col=1)
    fig.update_xaxes(title_text="step", row=len(names))
    _mark_events(fig, snap, len(names), len(layers))
    return _layout(fig, f"Pre-activation percentiles over time ({what})", 180 + 190 * len(names))


def _alpha(hex_color: str, a: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{a})"


# 3. histogram heatmap -------------------------------------------------------------------
def _display_range(snap: RunSnapshot) -> tuple[float, float]:
    """A y range covering 0.5..99.5 % of all recorded histogram mass: outliers don't squash it."""
    lo, hi = [], []
    for v in snap.variants.values():
        if len(v.hists):
            mass = v.hists.sum(axis=(0, 1))
            cdf = np.cumsum(mass) / max(mass.sum(), 1e-12)
            edges = v.hist_edges
            lo.append(edges[int(np.searchsorted(cdf, 0.005))])
            hi.append(edges[min(int(np.searchsorted(cdf, 0.995)) + 1, len(edges) - 1)])
    if not lo:
        return -3.0, 3.0
    m = max(abs(min(lo)), abs(max(hi)), 1.0)
    return -m, m


def histogram_heatmap(snap: RunSnapshot) -> go.Figure:
    layers = _layers(snap)
    names = list(snap.variants)
    lo, hi = _display_range(snap)
    fig = make_subplots(rows=len(names), cols=len(layers), shared_xaxes=True, shared_yaxes=True,
                        row_titles=names, column_titles=layers, vertical_spacing=0.06, horizontal_spacing=0.02)
    for r, v in enumerate(snap.variants.values(), start=1):
        edges = v.hist_edges
        centers = (edges[:-1] + edges[1:]) / 2
        keep = (edges[1:] >= lo) & (edges[:-1] <= hi)
        i = _thin(len(v.hist_steps), 200)
        for c, layer in enumerate(layers, start=1):
            if layer not in v.layers or not len(v.hist_steps):
                continue
            j = v.layers.index(layer)
            # density per unit of value: bins are not of equal width on the value axis
            dens = v.hists[i][:, j, keep] / np.diff(edges)[keep]
            fig.add_trace(go.Heatmap(x=v.hist_steps[i], y=centers[keep], z=dens.T.astype(np.float32),
                                     colorscale="Viridis", zmin=0, zmax=float(np.quantile(dens, 0.99)) or None,
                                     showscale=(r == 1 and c == len(layers)),
                                     colorbar=dict(title="density", len=0.6),
                                     hovertemplate=f"{v.name} {layer}<br>step %{{x}}<br>value %{{y:.2f}}"
                                                   "<br>density %{z:.3f}<extra></extra>"), r, c)
    fig.update_yaxes(range=[lo, hi])
    fig.update_yaxes(title_text="input to nonlinearity", col=1)
    fig.update_xaxes(title_text="step", row=len(names))
    _mark_events(fig, snap, len(names), len(layers))
    fig = _layout(fig, "Distribution of each layer over time", 180 + 190 * len(names))
    fig.update_layout(hovermode="closest")
    return fig


# 4. current distribution ----------------------------------------------------------------
def current_distribution(snap: RunSnapshot) -> go.Figure:
    layers = _layers(snap)
    lo, hi = _display_range(snap)
    fig = make_subplots(rows=1, cols=len(layers), shared_yaxes=True, subplot_titles=layers, horizontal_spacing=0.03)
    for v in snap.variants.values():
        if not len(v.hist_steps):
            continue
        edges = v.hist_edges
        centers = (edges[:-1] + edges[1:]) / 2
        keep = (edges[1:] >= lo) & (edges[:-1] <= hi)
        for c, layer in enumerate(layers, start=1):
            if layer not in v.layers:
                continue
            dens = v.hists[-1, v.layers.index(layer), keep] / np.diff(edges)[keep]
            fig.add_trace(go.Scatter(x=centers[keep], y=dens, name=v.name, legendgroup=v.name, showlegend=(c == 1),
                                     fill="tozeroy", fillcolor=_alpha(variant_color(snap, v.name), 0.2),
                                     line=dict(color=variant_color(snap, v.name), width=2, shape="hvh")), 1, c)
    fig.update_xaxes(range=[lo, hi], title_text="input to nonlinearity")
    fig.update_yaxes(title_text="density", col=1)
    step = max((int(v.hist_steps[-1]) for v in snap.variants.values() if len(v.hist_steps)), default=0)
    fig = _layout(fig, f"Distribution of each layer now (step {step})", 320)
    fig.update_layout(hovermode="closest")
    return fig


# 5, 6. gradient norms and update ratios ---------------------------------------------------
def _per_layer_lines(snap: RunSnapshot, metric: str, title: str, log: bool = True) -> go.Figure:
    names = list(snap.variants)
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=True, subplot_titles=names, horizontal_spacing=0.04)
    for c, v in enumerate(snap.variants.values(), start=1):
        i = _thin(len(v.steps))
        for j, layer in enumerate(v.layers):
            y = v.series[metric][i, j]
            fig.add_trace(go.Scatter(x=v.steps[i], y=np.where(y > 0, y, np.nan) if log else y, name=layer,
                                     legendgroup=layer, showlegend=(c == 1),
                                     line=dict(color=LAYER_PALETTE[j % len(LAYER_PALETTE)], width=2)), 1, c)
    fig.update_yaxes(type="log" if log else "linear")
    fig.update_yaxes(title_text=LABELS[metric], col=1)
    fig.update_xaxes(title_text="step")
    _mark_events(fig, snap, 1, len(names))
    return _layout(fig, title, 340)


def grad_norms(snap: RunSnapshot) -> go.Figure:
    return _per_layer_lines(snap, "grad_norm", "Weight-gradient norm per layer (log scale)")


def update_ratios(snap: RunSnapshot) -> go.Figure:
    return _per_layer_lines(snap, "update_ratio", "Update-to-weight ratio per layer (log scale)")


# 7. shift score -------------------------------------------------------------------------
def shift_series(v: VariantSnapshot, window: int = SHIFT_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Wasserstein-1 distance between each layer's histogram now and ``window`` histograms ago.

    W1 = integral |CDF_now - CDF_before| dx, computed on the fixed bins: (steps,), (steps, L).
    """
    if len(v.hist_steps) <= window:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(v.layers)))
    cdf = np.cumsum(v.hists, axis=2)  # (h, L, bins)
    widths = np.diff(v.hist_edges)  # the CDF jumps at each bin's upper edge
    w1 = (np.abs(cdf[window:] - cdf[:-window])[:, :, :-1] * widths[1:]).sum(axis=2)
    return v.hist_steps[window:], w1


def shift_scores(snap: RunSnapshot) -> go.Figure:
    layers = _layers(snap)
    fig = make_subplots(rows=1, cols=len(layers), shared_yaxes=True, subplot_titles=layers, horizontal_spacing=0.03)
    for v in snap.variants.values():
        steps, w1 = shift_series(v)
        i = _thin(len(steps))
        for c, layer in enumerate(layers, start=1):
            if layer in v.layers and len(steps):
                fig.add_trace(go.Scatter(x=steps[i], y=w1[i, v.layers.index(layer)], name=v.name,
                                         legendgroup=v.name, showlegend=(c == 1),
                                         line=dict(color=variant_color(snap, v.name), width=2)), 1, c)
    fig.update_yaxes(type="log", title_text="W1 shift (log)", col=1)
    fig.update_xaxes(title_text="step")
    _mark_events(fig, snap, 1, len(layers))
    return _layout(fig, "Covariate shift score: how far each layer's input distribution moved", 320)


# the paper's Figure 1 -------------------------------------------------------------------
def paper_figure1(snap: RunSnapshot, plain: str = "plain", bn: str = "bn") -> go.Figure:
    """Ioffe & Szegedy 2015, Fig. 1: (a) test accuracy; (b, c) the tracked last-layer unit's percentiles."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("(a) test accuracy", f"(b) without BN ({plain})",
                                                        f"(c) with BN ({bn})"), horizontal_spacing=0.07)
    for name in (plain, bn):
        v = snap.variants[name]
        fig.add_trace(go.Scatter(x=v.eval_steps, y=v.evals["test_acc"], name=name,
                                 line=dict(color=variant_color(snap, name), width=2)), 1, 1)
    for col, name in ((2, plain), (3, bn)):
        v = snap.variants[name]
        i, last = _thin(len(v.steps)), len(v.layers) - 1
        for q, dash in ((15, "dot"), (50, "solid"), (85, "dot")):
            fig.add_trace(go.Scatter(x=v.steps[i], y=v.series[f"unit_p{q}"][i, last], name=f"{q}th percentile",
                                     showlegend=(col == 2), legendgroup=f"p{q}",
                                     line=dict(color="#333", dash=dash, width=2)), 1, col)
    fig.update_yaxes(title_text="test accuracy", col=1)
    fig.update_yaxes(title_text="input to one last-layer sigmoid", col=2)
    fig.update_yaxes(matches="y2", col=3)
    fig.update_xaxes(title_text="step")
    return _layout(fig, "Ioffe & Szegedy 2015, Figure 1, as measured by bnviz", 380)


@dataclass(frozen=True)
class FigureSpec:
    key: str
    build: Callable[[RunSnapshot], go.Figure]
    caption: str


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("loss_accuracy", loss_accuracy,
               "Which variant's loss falls faster, and whose test accuracy climbs first?"),
    FigureSpec("bands_layer", percentile_bands,
               "Median and 15–85% band of each layer's input to the nonlinearity: without BN watch them drift; "
               "with BN they stay put."),
    FigureSpec("bands_unit", lambda s: percentile_bands(s, unit=True),
               "The same for one tracked unit per layer, as in the paper's Figure 1 (b, c)."),
    FigureSpec("heatmap", histogram_heatmap,
               "The whole distribution over time (brighter = more values there): a drifting or widening band "
               "is covariate shift."),
    FigureSpec("current", current_distribution,
               "Each layer's distribution at the latest step: sigmoid inputs far from 0 are saturated."),
    FigureSpec("grad_norms", grad_norms,
               "Gradient size per layer: lines far apart mean early layers learn much slower (vanishing gradients)."),
    FigureSpec("update_ratios", update_ratios,
               "Step size relative to the weights: around 1e-3 is healthy; far above, training is unstable."),
    FigureSpec("shift", shift_scores,
               f"Wasserstein-1 distance between each layer's distribution now and {SHIFT_WINDOW} histograms ago: "
               "the number that makes covariate shift concrete."),
)
