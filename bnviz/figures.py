"""Every Plotly figure bnviz draws, each a pure function of its data: a RunSnapshot (a sweep's
rows, the BN explainer's mini-batch).

No figure reads state of its own: the app, the HTML report and the tests call the same
functions on a snapshot. ``FIGURES`` lists the live-lab charts in page order with their
title and the one-line caption that tells a student what to look for.

Payload stays bounded whatever the run length: the RunLog keeps a few thousand rows and
``_thin`` draws at most ``MAX_POINTS`` of them per trace (numpy arrays travel to the
browser as compact typed arrays). Charts are built as plain dicts on cached subplot grids
(see ``_Canvas``), so a refresh of every chart takes milliseconds, not a second.
"""

from __future__ import annotations

import base64
import contextvars
import copy
import functools
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.basedatatypes import BaseFigure
from plotly.subplots import make_subplots

from bnviz import claims
from bnviz.metrics import LABELS, LANDSCAPE_METRICS
from bnviz.runlog import RunSnapshot, VariantSnapshot

# Points per line trace (the live page's curves grow one point per logged step up to this
# cap; tests/test_browser.py relies on it) and histograms (columns) per heatmap. A layer's
# subplot is 300-450 px wide, so 250 points are more than one per 2 px and 48 columns ~8 px
# each: nothing visible is lost. One refresh of every chart of a 2-variant, 3-layer run is
# then under 300 KB of JSON (400 points and 64 columns made it 417 KB; bench/, PERFORMANCE.md).
MAX_POINTS = 250
HEATMAP_COLUMNS = 48
MAX_LAYER_PANELS = 6  # layers shown side by side as small multiples (figures._panel_layers)
PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#9D755D", "#EECA3B")
LAYER_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")
SHIFT_WINDOW = 5  # histograms apart (hist_every steps each) for the shift score
FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=13)


def variant_color(snap: RunSnapshot, name: str) -> str:
    return PALETTE[list(snap.variants).index(name) % len(PALETTE)]


def _thin(n: int, max_points: int | None = None) -> np.ndarray:
    """Indices of at most max_points (default MAX_POINTS) evenly spread rows, always keeping the last."""
    max_points = MAX_POINTS if max_points is None else max_points
    if n <= max_points:
        return np.arange(n)
    idx = np.linspace(0, n - 1, max_points).round().astype(int)
    return np.unique(idx)


# plotly.js draws a heatmap whose x and y are both evenly spaced (within 1%) as one pixel per
# cell that the browser scales up; any other heatmap it paints cell by cell at full size and
# encodes as a PNG at every redraw, 1.9x the time for the live page's heatmap (bench.client).
def _every_kth(n: int, max_columns: int) -> np.ndarray:
    """Indices of at most max_columns rows at one fixed stride, ending at the last row (_thin's
    rounding would space them by k and k + 1)."""
    k = max(1, -(-(n - 1) // (max_columns - 1))) if max_columns > 1 else max(n, 1)  # 1 column: the last row
    return np.arange((n - 1) % k, n, k)


def _on_one_grid(steps: np.ndarray) -> int:
    """How many of ``steps`` lie on one grid: all but a last, partial bucket (runlog's open
    bucket, closer to the row before it than the rows before are to each other)."""
    n = len(steps)
    return n - 1 if n >= 3 and steps[-1] - steps[-2] < steps[-2] - steps[-3] else n


def _even_rows(edges: np.ndarray, lo: float, hi: float, rows: int) -> np.ndarray:
    """(bins, rows): the share of each histogram bin's mass that falls in each of ``rows`` equal
    rows over [lo, hi], spread evenly across the bin as its density is."""
    r = np.linspace(lo, hi, rows + 1)
    overlap = np.minimum(edges[1:, None], r[None, 1:]) - np.maximum(edges[:-1, None], r[None, :-1])
    return np.clip(overlap, 0, None) / np.diff(edges)[:, None]


# Margins that hold the page's axis labels and titles as Streamlit's theme draws them (larger
# than plotly's own: the live page's charts needed l=68-85, b=66, and r=124 beside a colorbar
# whose title runs up its side).
# With room enough, a chart's y axes at the left edge are the only ones left to plotly's
# automargin (_fixed_margins): it measures every tick label of every axis it is on at each
# redraw, and draws a chart twice whenever a margin must grow.
MARGIN = dict(l=90, r=20, t=100, b=66)
COLORBAR_MARGIN_R = 124
SWEEP_LEGEND_MARGIN_R = 140  # the sweep chart's legend column at least, for its "× = diverged" note
# Step axes tick in SI units ("2k", "50k"): "10002000" ran together in a narrow column (Paper
# Figure 1 when it stood beside its claims) and the heatmap's "3000" met the next panel's "0". Hover keeps
# the exact step, written as the progress line writes it ("3,000").
STEP_TICKS = dict(tickformat="~s", hoverformat=",")
# From this many columns on, a grid's panels are narrow (~70 px on a projector): smaller titles
# over them (_Canvas), the x axis of the current distribution labelled sparingly.
NARROW_PANEL_COLS, NARROW_TITLE_SIZE = 5, 13
# Between the panels of a grid of step axes: a finished run's last tick label ("1.5k", "300")
# ends at its panel's edge, beside the next panel's "0": 8 px or more away on a projector
# (1024 px, sidebar open; checked at run lengths 7 to 2,000), "100k" included.
STEP_GRID_SPACING = 0.06
# Most step ticks per panel by the grid's columns (plotly's nticks; from the last entry's on, its
# entry). Plotly ticks at least ~5 times whatever an axis's length, so on a projector (1024 px,
# sidebar open) labels ran together: 100 150 200 250 300 under a 150 px panel. About 40 px per
# tick there. Six ~55 px panels hold one label ("100 200" ran together): a round step near the end
# (_step_ticks; plotly's nticks 1 may tick past the range, 0 and 500 for a 300-step run).
STEP_NTICKS = {1: None, 2: 6, 3: 4, 4: 3, 5: 2, 6: 1}


# The title at the top left, the legend on a line of its own under it (both placed in pixels
# from the chart's top): beside the title, a legend right-aligned above the plots ran over the
# title on a 1024 px screen with the sidebar open (a classroom projector), and grew up into it
# when it wrapped. Under it, a legend that wraps grows down into the top margin, which holds
# two lines of it above the subplot titles.
TITLE_TOP_PX, LEGEND_TOP_PX = 10, 38
LEGEND_LINE_PX = 18  # a legend line's height beyond the first that MARGIN["t"] holds (measured: 13.5)


def _layout_props(title: str, height: int) -> dict:
    """The look every bnviz figure shares (plotly layout properties)."""
    return dict(
        title=dict(text=title, x=0.01, xanchor="left", y=1 - TITLE_TOP_PX / height, yanchor="top"),
        height=height, font=dict(FONT), margin=dict(MARGIN), template="plotly_white",
        legend=dict(orientation="h", xref="container", x=0.01, xanchor="left",
                    yref="container", y=1 - LEGEND_TOP_PX / height, yanchor="top"),
        uirevision="keep",  # keep zoom and legend toggles across live refreshes
        hovermode="x unified",
    )


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(**_layout_props(title, height))
    return fig


# Figures are assembled as plain dicts on a cached subplot grid and wrapped into a go.Figure
# once, without plotly re-validating every property: make_subplots and per-trace validation
# cost 20-80 ms per chart, the dicts a fraction of a millisecond. The JSON a figure sends is
# what the plotly-object version sent (tests/test_figures.py, bench/).
@functools.lru_cache(maxsize=64)
def _grid(rows: int, cols: int, shared_xaxes: bool, shared_yaxes: bool, row_titles: tuple | None,
          column_titles: tuple | None, subplot_titles: tuple | None, vertical_spacing: float | None,
          horizontal_spacing: float | None) -> tuple[dict, tuple]:
    """make_subplots' layout (axes, domains, title annotations) and grid, for every figure of this shape."""
    kw = dict(rows=rows, cols=cols, shared_xaxes=shared_xaxes, shared_yaxes=shared_yaxes)
    for key, value in (("row_titles", row_titles), ("column_titles", column_titles),
                       ("subplot_titles", subplot_titles), ("vertical_spacing", vertical_spacing),
                       ("horizontal_spacing", horizontal_spacing)):
        if value is not None:
            kw[key] = list(value) if isinstance(value, tuple) else value
    fig = make_subplots(**kw)
    layout = fig.layout.to_plotly_json()
    layout.pop("template", None)
    # Positions as fractions of the chart to 1e-4 (0.1 px on a 1,000 px chart), not 17 digits:
    # sent with every chart at every refresh, they were ~2 KB of the page's 300 KB budget.
    for key, value in layout.items():
        if re.fullmatch(r"[xy]axis\d*", key) and "domain" in value:
            value["domain"] = [round(v, 4) for v in value["domain"]]
    for note in layout.get("annotations", ()):
        note.update({k: round(note[k], 4) for k in ("x", "y") if isinstance(note.get(k), float)})
    return layout, (fig._grid_ref, fig._grid_str)


# Parts of a template that no 2-D cartesian chart of scatter and heatmap traces with explicit
# colorscales reads: leaving them out changes nothing drawn, and each figure is sent with
# its template (it was 7 KB of the JSON of every chart, and most of the time to copy it).
_UNUSED_TEMPLATE_LAYOUT = ("polar", "ternary", "scene", "geo", "mapbox", "map", "coloraxis", "colorscale")


@functools.lru_cache(maxsize=1)
def _template() -> dict:
    """plotly_white, less the defaults of trace types and subplot kinds bnviz does not draw."""
    template = pio.templates["plotly_white"].to_plotly_json()
    template["data"] = {k: v for k, v in template.get("data", {}).items() if k in ("scatter", "heatmap")}
    template["layout"] = {k: v for k, v in template.get("layout", {}).items() if k not in _UNUSED_TEMPLATE_LAYOUT}
    return template


@functools.lru_cache(maxsize=8)
def _colorscale(name: str) -> list:
    """Plotly's named colorscale as stops, at 4 decimals (0.1111, not 0.1111111111111111): each
    heatmap panel sends its own copy at every refresh."""
    return [[round(stop, 4), color] for stop, color in go.Heatmap(colorscale=name).colorscale]


class _Canvas:
    """A figure under construction as plain dicts on a make_subplots grid."""

    def __init__(self, rows: int = 1, cols: int = 1, shared_xaxes: bool = False, shared_yaxes: bool = False,
                 row_titles=None, column_titles=None, subplot_titles=None, vertical_spacing=None,
                 horizontal_spacing=None):
        t = lambda v: tuple(v) if v is not None else None  # noqa: E731
        layout, self.grid = _grid(rows, cols, shared_xaxes, shared_yaxes, t(row_titles), t(column_titles),
                                  t(subplot_titles), vertical_spacing, horizontal_spacing)
        self.layout = copy.deepcopy(layout)
        if cols >= NARROW_PANEL_COLS:  # titles over ~55 px panels (a projector): at 16 px "hidden8" met "hidden10"
            for note in self.layout.get("annotations", ()):
                if note.get("yanchor") == "bottom":
                    note["font"] = dict(note.get("font", {}), size=NARROW_TITLE_SIZE)
        self.rows, self.cols = rows, cols
        self.data: list[dict] = []
        self.used: set[tuple[int, int]] = set()  # subplots that hold a trace
        self.step_keys: set[str] = set()  # layout keys of the x axes that count steps (step_axes)
        self._notes: dict[tuple[int, int], int] = {}  # the last note's index in each panel (note)

    def add(self, trace: dict, row: int = 1, col: int = 1) -> None:
        trace.update(self.grid[0][row - 1][col - 1][0].trace_kwargs)
        self.data.append(trace)
        self.used.add((row, col))

    def update_axes(self, which: str, row: int | None = None, col: int | None = None, **props) -> None:
        """Like fig.update_xaxes / update_yaxes: every axis of the grid in that row and column."""
        for r in range(1, self.rows + 1):
            for c in range(1, self.cols + 1):
                if (row is None or r == row) and (col is None or c == col):
                    axis = self.layout.setdefault(self.grid[0][r - 1][c - 1][0].layout_keys[which == "y"], {})
                    for key, value in props.items():
                        if key == "title_text":
                            axis.setdefault("title", {})["text"] = value
                        else:
                            axis[key] = value

    def step_axes(self, title_row: int | None = None) -> None:
        """Every x axis counts steps (STEP_TICKS); titled "step" in ``title_row`` (every row when None)."""
        self.update_axes("x", **STEP_TICKS)
        nticks = STEP_NTICKS[min(self.cols, max(STEP_NTICKS))]
        if nticks:
            self.update_axes("x", nticks=nticks)
        self.update_axes("x", row=title_row, title_text="step")
        self.step_keys = {self.grid[0][r][c][0].layout_keys[0] for r in range(self.rows) for c in range(self.cols)}

    def vline(self, x, line: dict, row: int, col: int) -> None:
        """fig.add_vline(x, line=..., row=, col=): nothing on a subplot without traces, as plotly does."""
        if (row, col) in self.used:
            ref = self.grid[0][row - 1][col - 1][0].trace_kwargs
            self.layout.setdefault("shapes", []).append(
                {"line": line, "type": "line", "x0": x, "x1": x, "xref": ref["xaxis"], "y0": 0, "y1": 1,
                 "yref": f"{ref['yaxis']} domain"})

    def annotate(self, **props) -> None:
        self.layout.setdefault("annotations", []).append(props)

    def note(self, text: str, x: float, row: int, col: int, color: str) -> None:
        """``text`` at step ``x``, inside the top of panel (row, col), beside the line drawn there:
        right of it in the first half of the panel's steps, left of it in the second. Above the
        grid it ran into the column titles of narrow panels ("plain diverged" over "hidden1").
        Notes in one panel stack downwards."""
        ref = self.grid[0][row - 1][col - 1][0].trace_kwargs
        column = {self.grid[0][r][col - 1][0].trace_kwargs["xaxis"] for r in range(self.rows)}
        xs = [np.asarray(t["x"]) for t in self.data if t.get("xaxis", "x") in column and len(t.get("x", ()))]
        lo, hi = (min(float(v.min()) for v in xs), max(float(v.max()) for v in xs)) if xs else (x, x)
        left = x > (lo + hi) / 2
        self._notes[(row, col)] = nth = self._notes.get((row, col), -1) + 1
        self.annotate(text=text, font=dict(color=color, size=12), bgcolor="rgba(255,255,255,0.8)", showarrow=False,
                      x=x, xref=ref["xaxis"], xanchor="right" if left else "left", xshift=-3 if left else 3,
                      y=1, yref=f"{ref['yaxis']} domain", yanchor="top", yshift=-18 * nth)

    def figure(self, title: str, height: int, hovermode: str | None = None, legend_lines: int = 1) -> go.Figure:
        """The figure, ``height`` px tall; ``legend_lines``: the lines its legend may wrap to on a
        narrow screen beyond what MARGIN holds (one), each given room above the plots."""
        extra = LEGEND_LINE_PX * (legend_lines - 1)
        self.layout.update(_layout_props(title, height + extra))
        self.layout["margin"]["t"] += extra
        self.layout["template"] = _template()
        _fixed_margins(self.layout, colorbar=any(t.get("type") == "heatmap" and t.get("showscale", True)
                                                 for t in self.data))
        _log_ticks(self.layout, self.data)
        _step_ticks(self.layout, self.data, self.step_keys)
        if hovermode is not None:
            self.layout["hovermode"] = hovermode
        if _FOR_PAGE.get():
            spec = {"data": self.data, "layout": self.layout}
            _typed_arrays(spec)
            return PageFigure(spec)
        fig = go.Figure(data=self.data, layout=self.layout, _validate=False)
        fig._grid_ref, fig._grid_str = self.grid  # so fig.add_trace(row=, col=) / select_traces work as usual
        return fig


def _fixed_margins(layout: dict, colorbar: bool) -> None:
    """Plotly's automargin off on every axis of a grid but the y axes at its left edge, whose tick
    labels' width depends on the data (MARGIN). Set on each axis: the themes' templates
    (plotly_white's and Streamlit's) turn it on for all.

    Also ticklabeloverflow "allow": plotly's default measures every tick label at each redraw to
    hide those that reach past the chart's edge, which the margins keep them from (and the
    chart's SVG clips). Together 1.7-1.9x less browser time per live refresh (docs/PERFORMANCE.md)."""
    if colorbar:
        layout["margin"]["r"] = COLORBAR_MARGIN_R
    for key, axis in layout.items():
        if key.startswith(("xaxis", "yaxis")) and axis.get("showticklabels", True) is False \
                and "title" not in axis:
            # A shared axis inside a grid: no tick labels to let overflow, nor its step format
            # to show (hoverformat is shown). Bytes off every refresh, whose payload sits at the
            # 300 KB budget.
            axis.pop("tickformat", None)
            axis["automargin"] = False
            continue
        if key.startswith("xaxis"):
            axis.update(automargin=False, ticklabeloverflow="allow")
        elif key.startswith("yaxis"):
            anchor = layout.get("xaxis" + axis.get("anchor", "x")[1:], {})
            axis.update(automargin=anchor.get("domain", [0, 1])[0] == 0, ticklabeloverflow="allow")


def _log_ticks(layout: dict, data: list[dict]) -> None:
    """Tick labels that do not run into each other on the short log y axes of a grid's panels.

    Plotly chooses a log axis's ticks from its data's span and its length. On panels ~150 px
    tall, a span of 0.7-2 decades gets every digit ("D1": "1 9 8 7 6 5" stacked into each other):
    1, 2 and 5 of each decade ("D2") instead. Below 0.7 decades it ticks at linear steps about
    20 px apart, labels 14 px tall, closer still at the top ("0.9" on "0.8"): a third as many
    (nticks 3 for plotly's 5). Plotly writes the 2 and 5 of a decade as small digits beside it
    ("2 0.01 5 2 0.001"), which a student reads as 2 and 5: under 2 decades they are written in
    full ("0.02 0.01 0.005"), from 2 to 4 only the decades are labelled (dtick 1: "0.1 0.01
    0.001"). From 4 decades on plotly labels decades only, or every other one on a short panel.

    Below 0.001 plotly writes SI prefixes, "100μ" under "0.001" (the update-to-weight ratio,
    whose caption says "1e-3"): written "1e-4" instead (exponentformat "e")."""
    for key, axis in layout.items():
        if key.startswith(("xaxis", "yaxis")) and axis.get("type") == "log":
            axis.setdefault("exponentformat", "e")
    values: dict[str, list] = {}
    for t in data:
        y = t.get("y")
        if y is not None and t.get("type", "scatter") == "scatter":
            values.setdefault("yaxis" + t.get("yaxis", "y")[1:], []).append(np.asarray(y, dtype=np.float64).ravel())
    for key, ys in values.items():
        axis = layout.get(key, {})
        if axis.get("type") != "log" or "dtick" in axis or "nticks" in axis:
            continue
        y = np.concatenate(ys)
        y = y[np.isfinite(y) & (y > 0)]
        span = np.log10(y.max() / y.min()) if len(y) else np.inf
        if span < 0.7:
            axis["nticks"] = 3
        elif span < 2:
            axis["dtick"], axis["minorloglabels"] = "D2", "complete"  # "0.5", not a small "5" beside 1
        elif span < 4:
            axis["dtick"] = 1


def _step_ticks(layout: dict, data: list[dict], step_keys: set[str]) -> None:
    """Step ticks that depend on the data. Per axis, matched axes alike (a variant that diverged
    at step 4 spans 4 steps beside a 300-step panel).

    An axis allowed one tick (STEP_NTICKS) gets it at the largest round step drawn (1, 2 or 5
    times a power of ten: "200" at 300 steps, "2k" at 2,000). Others tick at whole steps while
    a run is a few steps long: plotly would tick at 0.5 and 1.5, and a lecture in slow motion
    starts there; from 10 steps on, plotly's own ticks are whole. (The range is left alone: a
    single evaluation at step 0 sits in the middle of -1..1, not half hidden at the edge.)"""
    def group(key: str) -> str:  # axes that match another share its range, so its ticks
        match = layout[key].get("matches")
        return "xaxis" + match[1:] if match else key

    spans: dict[str, float] = {}
    ends: dict[str, float] = {}
    for t in data:
        key = "xaxis" + t.get("xaxis", "x")[1:]
        if key in step_keys and len(t.get("x", ())):
            x = np.asarray(t["x"])
            spans[group(key)] = max(spans.get(group(key), 0.0), float(x.max() - x.min()))
            ends[group(key)] = max(ends.get(group(key), 0.0), float(x.max()))
    for key in step_keys:
        if layout[key].get("nticks") == 1:
            if ends.get(group(key), 0) >= 1 and layout[key].get("showticklabels", True):
                layout[key]["tickvals"] = [_nice_below(ends[group(key)])]
        elif group(key) in spans and spans[group(key)] < 10:
            # whole steps, no more of them than the axis may tick (STEP_NTICKS): 0..9 at every
            # step ran together on a 240 px panel
            most = layout[key].get("nticks") or 10
            layout[key]["dtick"] = next(d for d in (1, 2, 5, 10) if spans[group(key)] / d <= most)


# The live page ------------------------------------------------------------------------
# st.plotly_chart turns a figure into JSON by fig.to_dict() (a deep copy of plotly's objects,
# then every numpy array to a base64 typed array, through narwhals for each) and nothing else
# (plotly.tools.return_figure_from_figure_or_data). For the page's dozen charts per refresh
# that, and building the go.Figure first, was ~80% of the server's time per refresh. Within
# for_page() a canvas hands over its dicts as they are, arrays already typed: the same JSON
# (tests/test_figures.py), ~4x less server time (docs/PERFORMANCE.md, step 10).
_FOR_PAGE: contextvars.ContextVar[bool] = contextvars.ContextVar("bnviz_for_page", default=False)


class PageFigure(BaseFigure):
    """A finished chart as st.plotly_chart takes it: ``to_dict()`` is the dict that
    ``go.Figure(...).to_dict()`` would return, made without plotly's object model.

    Only what the page needs works (``to_dict``, ``to_json``); for anything else (traces,
    layout, ``to_html``) build the go.Figure (call the builder outside ``for_page``).
    """

    def __init__(self, spec: dict):  # not BaseFigure.__init__: that builds the object model this skips
        self._spec = spec

    def to_dict(self) -> dict:
        return self._spec

    def to_json(self, *args, **kwargs) -> str:
        return pio.to_json(self._spec, *args, validate=False, **kwargs)

    def __repr__(self) -> str:
        return f"PageFigure({len(self._spec['data'])} traces)"


def for_page(build: Callable[..., go.Figure], *args, **kwargs) -> go.Figure | PageFigure:
    """``build(*args, **kwargs)`` for st.plotly_chart: a PageFigure where the chart is drawn on a
    canvas (every live chart), else what ``build`` returns."""
    token = _FOR_PAGE.set(True)
    try:
        return build(*args, **kwargs)
    finally:
        _FOR_PAGE.reset(token)


# plotly.js typed-array codes of numpy dtypes (plotly's own table, _plotly_utils.utils)
_TYPED = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
          "float32": "f4", "float64": "f8"}
_UNTYPED_KEYS = ("geojson", "layer", "layers", "range")  # where plotly leaves arrays as they are


def _typed_arrays(obj) -> None:
    """Every numpy array in ``obj`` (nested dicts and lists) to plotly.js's typed-array spec, in
    place: what plotly's convert_to_base64 does in to_dict(), for the arrays bnviz draws."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in _UNTYPED_KEYS:
                continue
            if isinstance(value, np.ndarray):
                obj[key] = _typed_array(value)
            else:
                _typed_arrays(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _typed_arrays(value)


def _typed_array(v: np.ndarray):
    if v.size == 0:
        return v
    if v.dtype == np.int64:  # plotly.js has no 64-bit ints: the smallest that holds them, as plotly does
        lo, hi = v.min(), v.max()
        fits = [t for t in (np.int8, np.int16, np.int32) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max]
        if not fits:
            return v
        v = v.astype(fits[0])
    code = _TYPED.get(str(v.dtype))
    if code is None:
        return v
    spec = {"dtype": code, "bdata": base64.b64encode(np.ascontiguousarray(v)).decode("ascii")}
    if v.ndim > 1:
        spec["shape"] = str(v.shape)[1:-1]
    return spec


def _mark_events(canvas: _Canvas, snap: RunSnapshot, rows: int, cols: int,
                 panel: Callable[[str], tuple[int, int]] = lambda name: (1, 1)) -> None:
    """Dotted lines where a variant diverged; grey ones where the learning rate changed. Each
    is named once, in the panel ``panel(variant)`` (the first by default) or, for a change to
    every variant, the first."""
    for v in snap.variants.values():
        if v.diverged_at is not None:
            color = variant_color(snap, v.name)
            for r in range(1, rows + 1):
                for c in range(1, cols + 1):
                    canvas.vline(v.diverged_at, dict(color=color, dash="dot", width=2), r, c)
            canvas.note(f"{v.name} diverged", v.diverged_at, *panel(v.name), color)
    for e in snap.events:
        if e.text.startswith("lr"):
            for r in range(1, rows + 1):
                for c in range(1, cols + 1):
                    canvas.vline(e.step, dict(color="#888", dash="dash", width=1), r, c)
            where = panel(e.variant) if e.variant in snap.variants else (1, 1)
            canvas.note(e.text + (f" ({e.variant})" if e.variant else ""), e.step, *where, "#666")


def _layers(snap: RunSnapshot) -> list[str]:
    """Union of layer names in order (variants may differ in depth)."""
    seen: list[str] = []
    for v in snap.variants.values():
        seen.extend(n for n in v.layers if n not in seen)
    return seen


def _panel_layers(snap: RunSnapshot, skip_first: bool = False) -> tuple[list[str], str]:
    """The layers that get a panel of their own, and a title suffix saying so when not all do.

    A panel narrower than ~150 px shows nothing (a 20-layer net would get 20 unreadable
    ones): deep nets show MAX_LAYER_PANELS layers, evenly spaced, first and last included.
    """
    layers = _layers(snap)
    if skip_first and len(layers) > 1:
        layers = layers[1:]
    if len(layers) <= MAX_LAYER_PANELS:
        return layers, ""
    idx = sorted({int(round(i)) for i in np.linspace(0, len(layers) - 1, MAX_LAYER_PANELS)})
    return [layers[i] for i in idx], f" · {len(idx)} of {len(layers)} layers"


# 1. loss and accuracy -------------------------------------------------------------------
def loss_accuracy(snap: RunSnapshot) -> go.Figure:
    cv = _Canvas(rows=1, cols=2, subplot_titles=("train loss", "test accuracy"), horizontal_spacing=0.08)
    for v in snap.variants.values():
        color = variant_color(snap, v.name)
        i = _thin(len(v.steps))
        cv.add(dict(type="scatter", x=v.steps[i], y=v.series["train_loss"][i], name=v.name, legendgroup=v.name,
                    line=dict(color=color, width=2)), 1, 1)
        cv.add(dict(type="scatter", x=v.eval_steps, y=v.evals["test_acc"], name=v.name, legendgroup=v.name,
                    showlegend=False, mode="lines+markers", marker=dict(size=4), line=dict(color=color, width=2)), 1, 2)
    cv.update_axes("y", row=1, col=1, type="log", title_text="loss (log)")
    # no axis title: the panel's says it, and between the panels the title ran into the loss
    # curves on a narrow screen
    cv.update_axes("y", row=1, col=2, range=[0, 1.02])
    cv.step_axes()
    _mark_events(cv, snap, 1, 2)
    return cv.figure("Loss and accuracy", 360)


# 2. percentile bands (the paper's Figure 1 b/c) -----------------------------------------
def percentile_bands(snap: RunSnapshot, unit: bool = False) -> go.Figure:
    prefix = "unit" if unit else "act"
    layers, shown = _panel_layers(snap)
    names = list(snap.variants)
    cv = _Canvas(rows=len(names), cols=len(layers), shared_xaxes=True, shared_yaxes=True, row_titles=names,
                 column_titles=layers, vertical_spacing=0.06, horizontal_spacing=STEP_GRID_SPACING)
    for r, v in enumerate(snap.variants.values(), start=1):
        color = variant_color(snap, v.name)
        fill = _alpha(color, 0.25)
        i = _thin(len(v.steps))
        x = v.steps[i]
        for c, layer in enumerate(layers, start=1):
            if layer not in v.layers:
                continue
            j = v.layers.index(layer)
            lo, mid, hi = (v.series[f"{prefix}_p{q}"][i, j] for q in (15, 50, 85))
            first = r == 1 and c == 1
            # mode "lines": under 20 points plotly adds markers, and these edges' took the colorway's
            # pink and cyan (dots beside a short run's band, and a red dot as the band's legend)
            cv.add(dict(type="scatter", x=x, y=hi, mode="lines", line=dict(width=0), showlegend=False,
                        hoverinfo="skip"), r, c)
            cv.add(dict(type="scatter", x=x, y=lo, mode="lines", fill="tonexty", fillcolor=fill, line=dict(width=0),
                        name="15th–85th percentile", legendgroup="band", showlegend=first, hoverinfo="skip"), r, c)
            cv.add(dict(type="scatter", x=x, y=mid, line=dict(color=color, width=2), name="median",
                        legendgroup="median", showlegend=first,
                        hovertemplate=f"{v.name} {layer}<br>step %{{x}}<br>median %{{y:.3f}}<extra></extra>"), r, c)
    what = "tracked unit" if unit else "whole layer"
    # One scale for every variant: a wide band must look wide. But a variant that diverged
    # gets its own: its last percentiles, at 1e18, drew every other row as a flat line at 0.
    # (Within a row the panels share the first one's axis: make_subplots' shared_yaxes.)
    calm = [r for r, v in enumerate(snap.variants.values(), start=1) if v.diverged_at is None]
    for r in calm[1:]:
        cv.update_axes("y", row=r, matches=cv.grid[0][calm[0] - 1][0][0].trace_kwargs["yaxis"])
    for r, v in enumerate(snap.variants.values(), start=1):
        if v.diverged_at is not None:
            i = _thin(len(v.steps))
            _short_y_ticks(cv, r, [v.series[f"{prefix}_p{q}"][i, v.layers.index(ly)]
                                   for q in (15, 85) for ly in layers if ly in v.layers])
    cv.update_axes("y", col=1, title_text="input to nonlinearity")
    cv.step_axes(title_row=len(names))
    _mark_events(cv, snap, len(names), len(layers), panel=lambda name: (names.index(name) + 1, 1))
    return cv.figure(f"Pre-activation percentiles over time ({what}){shown}", 180 + 190 * len(names))


def _nice_below(x: float) -> float:
    """The largest 1, 2 or 5 times a power of ten that is at most ``x`` (> 0)."""
    e = 10.0 ** np.floor(np.log10(x))
    return float(max(m * e for m in (1, 2, 5) if m * e <= x))


def _short_y_ticks(cv: _Canvas, row: int, series: list[np.ndarray]) -> None:
    """Ticks -k, 0, k labelled "-2e18", "0", "2e18" on a diverged variant's row. Plotly's own
    ("-1.5e+18" and the like) outgrew the left margin, and plotly drew the chart twice at every
    refresh to grow it while the other variants trained on."""
    drawn = np.abs(np.concatenate(series)) if series else np.zeros(0)
    top = float(drawn[np.isfinite(drawn)].max(initial=0.0))
    if top > 0:
        k = _nice_below(0.75 * top)
        label = f"{k:g}" if 1e-3 <= k < 1e4 else re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", f"{k:.0e}")  # "2e18", "5e-5"
        cv.update_axes("y", row=row, tickvals=[-k, 0, k], ticktext=[f"−{label}", "0", label])


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
    m = float(max(abs(min(lo)), abs(max(hi)), 1.0))
    return -m, m


def histogram_heatmap(snap: RunSnapshot) -> go.Figure:
    layers, shown = _panel_layers(snap)
    names = list(snap.variants)
    lo, hi = _display_range(snap)
    # Wider gaps than the band charts': its panels are narrower (the colorbar's margin).
    cv = _Canvas(rows=len(names), cols=len(layers), shared_xaxes=True, shared_yaxes=True, row_titles=names,
                 column_titles=layers, vertical_spacing=0.06, horizontal_spacing=STEP_GRID_SPACING + 0.015)
    viridis = _colorscale("Viridis")
    for r, v in enumerate(snap.variants.values(), start=1):
        if not len(v.hist_steps):
            if v.diverged_at is not None:  # an empty row says why
                ref = cv.grid[0][r - 1][0][0].trace_kwargs
                cv.annotate(text=f"{v.name}: no histogram before it diverged", showarrow=False, x=0.5, xref="paper",
                            y=0.5, yref=f"{ref['yaxis']} domain", font=dict(color=variant_color(snap, v.name)))
            continue
        # The bins are asinh-spaced (probes.HIST_EDGES); the rows are equal (see _every_kth),
        # as many as the bins in [lo, hi], so the bytes sent stay those of the bins. A row's
        # density is its share of the mass per unit of value.
        edges = v.hist_edges.astype(np.float64)
        rows = max(int(((edges[1:] >= lo) & (edges[:-1] <= hi)).sum()), 1)
        dy = (hi - lo) / rows
        i = _every_kth(_on_one_grid(v.hist_steps), HEATMAP_COLUMNS)
        dens_all = v.hists[i] @ _even_rows(edges, lo, hi, rows) / dy  # (t, L, rows)
        for c, layer in enumerate(layers, start=1):
            if layer not in v.layers:
                continue
            dens = dens_all[:, v.layers.index(layer)]
            trace = dict(type="heatmap", x=v.hist_steps[i], y0=lo + dy / 2, dy=dy, z=dens.T.astype(np.float32),
                         colorscale=viridis, zmin=0, showscale=(r == 1 and c == len(layers)),
                         hovertemplate=f"{v.name} {layer}<br>step %{{x}}<br>value %{{y:.2f}}"
                                       "<br>density %{z:.3f}<extra></extra>")
            if trace["showscale"]:  # one colorbar for the grid; the other panels send none
                # Its title beside the bar, not on top: a top tick at the bar's end (zmax 0.1005
                # gave "0.1") raised its label into a title above the bar.
                trace["colorbar"] = dict(title=dict(text="density", side="right"), len=0.6)
            zmax = float(np.quantile(dens, 0.99))
            if zmax:
                trace["zmax"] = zmax
            cv.add(trace, r, c)
    cv.update_axes("y", range=[lo, hi])
    cv.update_axes("y", col=1, title_text="input to nonlinearity")
    cv.step_axes(title_row=len(names))
    _mark_events(cv, snap, len(names), len(layers), panel=lambda name: (names.index(name) + 1, 1))
    return cv.figure(f"Distribution of each layer over time{shown}", 180 + 190 * len(names), hovermode="closest")


# 4. current distribution ----------------------------------------------------------------
def current_distribution(snap: RunSnapshot) -> go.Figure:
    layers, shown = _panel_layers(snap)
    lo, hi = _display_range(snap)
    cv = _Canvas(rows=1, cols=len(layers), shared_yaxes=True, subplot_titles=layers, horizontal_spacing=0.03)
    for v in snap.variants.values():
        if not len(v.hist_steps):
            continue
        edges = v.hist_edges
        centers = (edges[:-1] + edges[1:]) / 2
        keep = (edges[1:] >= lo) & (edges[:-1] <= hi)
        color = variant_color(snap, v.name)
        for c, layer in enumerate(layers, start=1):
            if layer not in v.layers:
                continue
            dens = v.hists[-1, v.layers.index(layer), keep] / np.diff(edges)[keep]
            cv.add(dict(type="scatter", x=centers[keep], y=dens, name=v.name, legendgroup=v.name, showlegend=(c == 1),
                        fill="tozeroy", fillcolor=_alpha(color, 0.2), line=dict(color=color, width=2, shape="hvh")),
                   1, c)
    # Three ticks, -k, 0, k: plotly's own ran together on narrow panels ("-100 -50 0 50 100").
    k = _nice_below(0.75 * hi)
    if len(layers) < NARROW_PANEL_COLS:
        cv.update_axes("x", range=[lo, hi], tickvals=[-k, 0, k], title_text="input to nonlinearity")
    else:  # 0 unlabelled, and the axis named once, under the grid: under each panel it ran into the next one's
        cv.update_axes("x", range=[lo, hi], tickvals=[-k, 0, k], ticktext=[f"−{k:g}", "", f"{k:g}"])
        cv.annotate(text="input to nonlinearity", showarrow=False, x=0.5, xref="paper", y=0, yref="paper",
                    yanchor="top", yshift=-24, font=dict(size=14))
    cv.update_axes("y", col=1, title_text="density")
    step = max((int(v.hist_steps[-1]) for v in snap.variants.values() if len(v.hist_steps)), default=0)
    return cv.figure(f"Distribution of each layer now (step {step}){shown}", 320, hovermode="closest")


# 5, 6. gradient norms and update ratios ---------------------------------------------------
def _per_layer_lines(snap: RunSnapshot, metric: str, title: str, log: bool = True) -> go.Figure:
    names = list(snap.variants)
    # The layers of the other charts' panels: a line and a colour each for 20 layers made a
    # legend of three lines (five on a projector) over the subplot titles, and the palette's
    # 10 colours gave hidden1 and hidden11 the same one.
    layers, shown = _panel_layers(snap)
    cv = _Canvas(rows=1, cols=len(names), shared_yaxes=True, subplot_titles=names, horizontal_spacing=0.04)
    for c, v in enumerate(snap.variants.values(), start=1):
        i = _thin(len(v.steps))
        ys = v.series[metric][i]
        if log:
            ys = np.where(ys > 0, ys, np.nan)
        for k, layer in enumerate(layers):
            if layer not in v.layers:
                continue
            j = v.layers.index(layer)
            cv.add(dict(type="scatter", x=v.steps[i], y=np.ascontiguousarray(ys[:, j]), name=layer, legendgroup=layer,
                        showlegend=(c == 1), line=dict(color=LAYER_PALETTE[k % len(LAYER_PALETTE)], width=2)), 1, c)
    cv.update_axes("y", type="log" if log else "linear")
    cv.update_axes("y", col=1, title_text=LABELS[metric])
    cv.step_axes()
    _mark_events(cv, snap, 1, len(names), panel=lambda name: (1, names.index(name) + 1))
    # 5 or 6 layers wrap to a second legend line on a projector (1024 px, sidebar open), which
    # ran into the subplot titles and made plotly grow the top margin at every refresh.
    return cv.figure(title + shown, 340, legend_lines=1 + (len(layers) >= NARROW_PANEL_COLS))


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
    layers, shown = _panel_layers(snap)
    cv = _Canvas(rows=1, cols=len(layers), shared_yaxes=True, subplot_titles=layers,
                 horizontal_spacing=STEP_GRID_SPACING)
    for v in snap.variants.values():
        steps, w1 = shift_series(v)
        i = _thin(len(steps))
        color = variant_color(snap, v.name)
        for c, layer in enumerate(layers, start=1):
            if layer in v.layers and len(steps):
                cv.add(dict(type="scatter", x=steps[i], y=w1[i, v.layers.index(layer)], name=v.name,
                            legendgroup=v.name, showlegend=(c == 1), line=dict(color=color, width=2)), 1, c)
    cv.update_axes("y", col=1, type="log", title_text="W1 shift (log)")
    cv.step_axes()
    _mark_events(cv, snap, 1, len(layers))
    return cv.figure(f"Covariate shift score: how far each layer's input moved{shown}", 320)


# the paper's Figure 1 -------------------------------------------------------------------
def _figure1_pair(snap: RunSnapshot, plain: str, bn: str) -> tuple[str | None, str | None]:
    """The variants Figure 1 compares: those named, else the first without normalization and the
    first with batch norm (a link or --set may rename or drop them); None where there is none."""
    def pick(name: str, norm: str) -> str | None:
        if name in snap.variants:
            return name
        return next((n for n, v in snap.variants.items() if v.config.get("norm") == norm), None)
    return pick(plain, "none"), pick(bn, "batch")


def paper_figure1(snap: RunSnapshot, plain: str = "plain", bn: str = "bn") -> go.Figure:
    """Ioffe & Szegedy 2015, Fig. 1: (a) test accuracy; (b, c) the tracked last-layer unit's percentiles."""
    plain, bn = _figure1_pair(snap, plain, bn)
    cv = _Canvas(rows=1, cols=3, subplot_titles=("(a) test accuracy", f"(b) without BN ({plain or 'none here'})",
                                                 f"(c) with BN ({bn or 'none here'})"), horizontal_spacing=0.08)
    pair = [name for name in (plain, bn) if name is not None]
    for name in pair:
        v = snap.variants[name]
        cv.add(dict(type="scatter", x=v.eval_steps, y=v.evals["test_acc"], name=name,
                    line=dict(color=variant_color(snap, name), width=2)), 1, 1)
    diverged = False
    for col, name in ((2, plain), (3, bn)):
        ref = cv.grid[0][0][col - 1][0].trace_kwargs
        if name is None:
            missing = "without normalization" if col == 2 else "with batch norm"
            cv.annotate(text=f"this run has no variant<br>{missing}", showarrow=False, x=0.5, y=0.5,
                        xref=f"{ref['xaxis']} domain", yref=f"{ref['yaxis']} domain")
            continue
        v = snap.variants[name]
        i, last = _thin(len(v.steps)), len(v.layers) - 1
        for q, dash in ((15, "dot"), (50, "solid"), (85, "dot")):
            # "15th, 50th, 85th percentile": one line of legend on a narrow screen, five entries in all
            cv.add(dict(type="scatter", x=v.steps[i], y=v.series[f"unit_p{q}"][i, last],
                        name=f"{q}th percentile" if q == 85 else f"{q}th",
                        showlegend=(col == 2), legendgroup=f"p{q}", line=dict(color="#333", dash=dash, width=2)), 1, col)
        if v.diverged_at is not None:
            diverged = True
            color = variant_color(snap, name)
            cv.vline(v.diverged_at, dict(color=color, dash="dot", width=2), 1, col)
            cv.note(f"diverged at step {v.diverged_at}", v.diverged_at, 1, col, color)
    acts = {snap.variants[n].config.get("activation") for n in pair}
    cv.update_axes("y", col=1, title_text="test accuracy", rangemode="nonnegative")  # not -0.5 at one point
    cv.update_axes("y", col=2, title_text=f"{acts.pop()} input" if len(acts) == 1 else "input to nonlinearity")
    if not diverged and len(pair) == 2:  # one scale, as in the paper; but a net that blew up to 1e15
        cv.update_axes("y", col=3, matches="y2")  # would flatten the other
    cv.step_axes()
    return cv.figure("Ioffe & Szegedy 2015, Figure 1, as measured by bnviz", 380)


@dataclass(frozen=True)
class FigureSpec:
    key: str
    build: Callable[[RunSnapshot], go.Figure]
    caption: str
    # The numbers behind the figure, shown under it (rows of text, bnviz.claims): the preset's
    # docs quote them, and the app and the report showed only the chart.
    table: Callable[[RunSnapshot], list[dict]] | None = None


# A preset's own figures whose claim has a table of numbers.
_FIGURE_TABLES = {"depth_growth": claims.depth_growth_table}


def preset_figures(names: Sequence[str]) -> list[FigureSpec]:
    """The figures a preset names (``Preset.figures``), each captioned by its docstring's first line."""
    specs = []
    for name in names:
        fn = globals()[name]
        specs.append(FigureSpec(name, fn, (fn.__doc__ or "").strip().splitlines()[0], _FIGURE_TABLES.get(name)))
    return specs


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


# sweeps (bnviz/sweep.py) ------------------------------------------------------------------
def field_title(field: str) -> str:
    """A swept field as a chart or a page names it: lr -> learning rate, batch_size -> batch size."""
    return {"lr": "learning rate"}.get(field, field.replace("_", " "))


def sweep_figure(result_rows: list[dict], field: str, log_x: bool = True,
                 labels: dict[str, str] | None = None) -> go.Figure:
    """Final test accuracy vs the swept value, one line per variant (rows of a SweepResult),
    each named by ``labels`` (variant name -> legend text; the variant's name by default).

    A diverged point is drawn at 0 with an x marker (its weights are NaN: it has no
    accuracy); skipped values are left out. For variants whose norm uses batch statistics
    a dashed line gives the train-mode accuracy (each test chunk normalized by its own
    batch statistics), so the train/eval gap shows.
    """
    label = field_title(field)
    names: list[str] = []
    for r in result_rows:
        if r["variant"] not in names:
            names.append(r["variant"])
    fig = go.Figure()
    any_diverged = False
    for k, variant in enumerate(names):
        color = PALETTE[k % len(PALETTE)]
        name = (labels or {}).get(variant, variant)
        rows = [r for r in result_rows if r["variant"] == variant and r["status"] != "skipped"]
        x, y, symbols, hover = [], [], [], []
        for r in rows:
            x.append(r["value"])
            if r["diverged"]:
                any_diverged = True
                y.append(0.0)
                symbols.append("x")
                hover.append(f"{name}, {label} = {r['value']:g}<br>diverged at step {r['diverged_at']}"
                             if isinstance(r["value"], (int, float)) else f"{name}: diverged")
            else:
                acc = r["test_acc"]
                y.append(acc if acc is not None else np.nan)
                symbols.append("circle")
                hover.append(f"{name}, {label} = {r['value']:g}<br>test accuracy {acc:.3f}"
                             if acc is not None and isinstance(r["value"], (int, float)) else f"{name}: {acc}")
        fig.add_trace(go.Scatter(x=x, y=y, name=name, legendgroup=name, mode="lines+markers",
                                 line=dict(color=color, width=2),
                                 marker=dict(symbol=symbols, size=[14 if s == "x" else 8 for s in symbols],
                                             color=color, line=dict(width=0)),
                                 hovertext=hover, hoverinfo="text"))
        tm = [r for r in rows if r.get("train_mode_acc") is not None and not r["diverged"]]
        if tm:
            fig.add_trace(go.Scatter(
                x=[r["value"] for r in tm], y=[r["train_mode_acc"] for r in tm], name=f"{name}, train mode",
                legendgroup=name, mode="lines+markers", line=dict(color=color, width=1.5, dash="dash"),
                marker=dict(size=5, color=color),
                hovertext=[f"{name}, {label} = {r['value']}<br>train-mode accuracy {r['train_mode_acc']:.3f} "
                           f"(batch statistics)" for r in tm], hoverinfo="text"))
    fig.update_xaxes(type="log" if log_x else "linear", title_text=label)
    ticks = sorted({r["value"] for r in result_rows if isinstance(r["value"], (int, float))})
    if 0 < len(ticks) <= 12:  # label exactly the swept values
        fig.update_xaxes(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    fig.update_yaxes(range=[-0.02, 1.02], title_text="final test accuracy")
    if any_diverged:
        # Under the legend, not in the plot: diverged points lie along its bottom edge, at
        # the large rates on the right of a learning-rate sweep, the small batches on the left.
        fig.add_annotation(x=1.02, y=0, xref="paper", yref="paper", xanchor="left", yanchor="bottom", align="left",
                           showarrow=False, text="× = diverged<br>(loss became NaN,<br>drawn at 0)",
                           font=dict(color="#666", size=11))
    fig = _layout(fig, f"Final test accuracy vs {label}", 420)
    # Up to 8 entries (each norm, and its train-mode line): a column on the right, where as a
    # row under the title they would take two or three lines on a narrow screen.
    # r: room for that column (and the "diverged" note under it) given, not grown by plotly's
    # automargin, which draws a chart twice to find it: its symbols, then ~7 px per character
    # ("BatchNorm, train mode" took 194 px, "Batch Renorm, train mode" 211)
    longest = max((len(t.name) for t in fig.data), default=0)
    fig.update_layout(hovermode="closest", margin=dict(t=60, r=max(SWEEP_LEGEND_MARGIN_R, 60 + 7 * longest)),
                      legend=dict(orientation="v", xref="paper", yref="paper", yanchor="top", y=1, xanchor="left",
                                  x=1.02))
    return fig


# Hoffer et al. 2017: fitting the training set vs testing well ------------------------------
def generalization(snap: RunSnapshot) -> go.Figure:
    """Train loss beside test loss and accuracy: the net that fits its training set best may not test best.

    The test panels start at the first evaluation after step 0: the untrained net's loss
    (about ln 10) would squeeze the later differences, a few hundredths, into a flat line.
    """
    cv = _Canvas(rows=1, cols=3, subplot_titles=("train loss", "test loss", "test accuracy"), horizontal_spacing=0.07)
    for v in snap.variants.values():
        color, i, later = variant_color(snap, v.name), _thin(len(v.steps)), v.eval_steps > 0
        line = dict(name=v.name, legendgroup=v.name, line=dict(color=color, width=2))
        cv.add(dict(type="scatter", x=v.steps[i], y=v.series["train_loss"][i], **line), 1, 1)
        for col, metric in ((2, "test_loss"), (3, "test_acc")):
            cv.add(dict(type="scatter", x=v.eval_steps[later], y=v.evals[metric][later], showlegend=False,
                        mode="lines+markers", marker=dict(size=4), **line), 1, col)
    cv.update_axes("y", col=1, type="log", title_text="loss (log)")
    cv.step_axes()
    _mark_events(cv, snap, 1, 3)
    return cv.figure("Fitting the training set vs doing well on the test set", 360)


# Santurkar et al. 2018: the ICS measure and the smoothness probes ------------------------
def ics_figure(snap: RunSnapshot) -> go.Figure:
    """Their ICS measure per layer: ||G − G'|| (0 is ideal) and cos(G, G') (1 is ideal), per variant."""
    # The first hidden layer has no earlier layers to shift its input: its ||G − G'|| is 0 and
    # its cosine 1 by definition (claims.landscape_mean leaves it out too), so it gets no panel.
    layers, shown = _panel_layers(snap, skip_first=True)
    cv = _Canvas(rows=2, cols=len(layers), shared_xaxes=True, row_titles=("||G − G'||", "cos(G, G')"),
                 subplot_titles=layers, vertical_spacing=0.1, horizontal_spacing=0.04)
    for v in snap.variants.values():
        if not len(v.landscape_steps):
            continue
        color = variant_color(snap, v.name)
        for c, layer in enumerate(layers, start=1):
            if layer not in v.layers:
                continue
            j = v.layers.index(layer)
            for r, metric in ((1, "ics_l2"), (2, "ics_cos")):
                cv.add(dict(type="scatter", x=v.landscape_steps, y=np.ascontiguousarray(v.landscape[metric][:, j]),
                            name=v.name, legendgroup=v.name, showlegend=(r == 1 and c == 1),
                            mode="lines+markers", marker=dict(size=4), line=dict(color=color, width=2)), r, c)
    cv.update_axes("y", row=1, type="log")
    cv.update_axes("y", row=2, range=[-0.05, 1.05])
    cv.step_axes(title_row=2)
    return cv.figure(f"Internal covariate shift as Santurkar et al. measure it{shown}", 520)


def smoothness_figure(snap: RunSnapshot) -> go.Figure:
    """Along the gradient (log scale): loss range, gradient change ||∇L(w − ηg) − ∇L(w)||, β-smoothness."""
    cv = _Canvas(rows=1, cols=3, subplot_titles=tuple(LABELS[m] for m in LANDSCAPE_METRICS), horizontal_spacing=0.07)
    for v in snap.variants.values():
        if not len(v.landscape_steps):
            continue
        for c, metric in enumerate(LANDSCAPE_METRICS, start=1):
            y = np.asarray(v.landscape[metric], dtype=np.float64)
            cv.add(dict(type="scatter", x=v.landscape_steps, y=np.where(y > 0, y, np.nan), name=v.name,
                        legendgroup=v.name, showlegend=(c == 1), mode="lines+markers", marker=dict(size=4),
                        line=dict(color=variant_color(snap, v.name), width=2)), 1, c)
    cv.update_axes("y", type="log")
    cv.step_axes()
    return cv.figure("Loss landscape along the gradient (steps of 0.5–4 × lr)", 360)


# Bjorck et al. 2018: growth with depth, and the output gradient ---------------------------
def depth_growth(snap: RunSnapshot) -> go.Figure:
    """Without BN the activations grow with depth and every image gets nearly the same output gradient; with BN neither.

    Bjorck et al. 2018 (bnviz/depth.py), at initialization: each variant's initial network,
    rebuilt from its recorded config, on the run's first training batch. Top: per hidden
    layer, the mean over units of |batch mean| and of the batch variance (log scale).
    Bottom: dL/dz for every image (columns) and class (rows); its title gives
    ``depth.gradient_similarity``.
    """
    # Imported here: this figure builds each variant's initial network (torch) from its
    # recorded config; every other figure needs only the log.
    from bnviz.depth import snapshot_profiles

    profiles = snapshot_profiles(snap)
    names = list(profiles)
    cols = max(2, len(names))
    # Titles short enough for panels ~170 px wide (a projector, sidebar open): longer ones ran
    # into each other. The axes and the colorbar's "dL/dz" say the rest.
    titles = (["activation mean", "activation variance"] + [""] * (cols - 2)
              + [f"{n} (similarity {p.similarity:.2f})" for n, p in profiles.items()]
              + [""] * (cols - len(names)))
    cv = _Canvas(rows=2, cols=cols, subplot_titles=titles, vertical_spacing=0.2, horizontal_spacing=0.08)
    rdbu = _colorscale("RdBu")
    for c, (name, p) in enumerate(profiles.items(), start=1):
        color, depth = variant_color(snap, name), np.arange(1, len(p.layers) + 1)
        for col, (y, what) in enumerate(((p.mean, "mean |unit mean|"), (p.var, "unit variance")), start=1):
            cv.add({"type": "scatter", "x": depth, "y": np.where(y > 0, y, np.nan), "name": name,
                    "legendgroup": name, "showlegend": col == 1, "mode": "lines+markers", "marker": {"size": 5},
                    "line": {"color": color, "width": 2},
                    "hovertemplate": f"{name} hidden%{{x}}<br>{what} %{{y:.3g}}<extra></extra>"}, 1, col)
        n_classes, n_images = p.grad.shape
        cv.add({"type": "heatmap", "z": p.grad.astype(np.float32), "x": np.arange(1, n_images + 1),
                "y": np.arange(n_classes), "customdata": np.broadcast_to(p.labels, p.grad.shape),
                "colorscale": rdbu, "reversescale": True,  # red: the loss pushes that logit down
                "zmin": -1, "zmax": 1, "zmid": 0,  # p - onehot(y) lies in [-1, 1]: one scale for every variant
                "showscale": c == len(names),
                "colorbar": {"title": {"text": "dL/dz", "side": "right"}, "len": 0.4, "y": 0.2},
                "hovertemplate": f"{name}: image %{{x}}, label %{{customdata}}<br>class %{{y}}: dL/dz %{{z:.3f}}"
                                 "<extra></extra>"}, 2, c)
        cv.update_axes("x", row=2, col=c, title_text="image of the first batch")
        cv.update_axes("y", row=2, col=c, dtick=1)
    cv.update_axes("y", row=2, col=1, title_text="class")
    for col in (1, 2):
        cv.update_axes("y", row=1, col=col, type="log")
        cv.update_axes("x", row=1, col=col, title_text="hidden layer (depth)")
    cv.update_axes("y", row=1, col=1, title_text="mean |unit mean| (log)")
    cv.update_axes("y", row=1, col=2, title_text="unit variance (log)")
    for col in range(3, cols + 1):  # row 1 has two panels whatever the number of variants
        cv.update_axes("x", row=1, col=col, visible=False)
        cv.update_axes("y", row=1, col=col, visible=False)
    if not names:
        cv.annotate(text="no configuration recorded for any variant (a run read back from metrics.csv?)",
                    showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return cv.figure("Bjorck et al. 2018, at initialization: growth with depth, gradient by image", 760,
                     hovermode="closest")


# BN step by step: one mini-batch through the transform -----------------------------------
@dataclass(frozen=True)
class Stage:
    """One stage of a mini-batch on its way through BN: its tick label, what it is (hover), its values (m, features)."""
    tick: str
    what: str
    values: np.ndarray


def bn_forward_stages(x: np.ndarray, x_hat: np.ndarray, y: np.ndarray) -> list[Stage]:
    """BN's training-mode forward as stages: the batch, its normalized values, the output."""
    return [Stage("x", "x", x), Stage("x̂", "x̂ = (x − μ) / √(σ² + ε)", x_hat), Stage("y", "y = γ x̂ + β", y)]


def batch_stages(stages: Sequence[Stage], features: Sequence[str], title: str) -> go.Figure:
    """A mini-batch through the stages of a computation: a line per row across the stages,
    one panel per feature.

    Each panel keeps one axis for all stages, so the figure shows what the tables do not:
    through BN's forward (bn_forward_stages) normalizing moves every feature to 0 with spread
    1 whatever its scale, keeping each row's place among the others, and γ and β then stretch
    and move it; from train mode to eval mode, how far the running statistics are from the
    batch's."""
    values = [np.asarray(s.values, dtype=np.float64) for s in stages]
    rows = len(values[0])
    ticks = [s.tick for s in stages]
    cv = _Canvas(rows=1, cols=len(features), subplot_titles=tuple(features), horizontal_spacing=0.06)
    legend = rows <= len(PALETTE)  # past that, colours repeat and the legend would only list them
    for c in range(len(features)):
        for i in range(rows):
            cv.add({"type": "scatter", "x": ticks, "y": np.array([v[i, c] for v in values]), "mode": "lines+markers",
                    "name": f"row {i}", "legendgroup": f"row {i}", "showlegend": legend and c == 0,
                    "customdata": [s.what for s in stages],
                    "line": {"color": PALETTE[i % len(PALETTE)], "width": 1.5}, "marker": {"size": 7},
                    "hovertemplate": f"row {i}, {features[c]}<br>%{{customdata}}: %{{y:.4g}}<extra></extra>"},
                   1, c + 1)
        # half a category of room at each end: the end stages' labels ("eval mode" beside the next
        # panel's "train mode") met between the panels on a 1024 px screen
        cv.update_axes("x", col=c + 1, type="category", range=[-0.5, len(stages) - 0.5])
    cv.update_axes("y", col=1, title_text="value")
    return cv.figure(title, 380, hovermode="closest")
