"""The browser's share of a live refresh: Plotly.react of the lab's charts, in headless Chromium.

The server builds a refresh in ~10 ms (`python -m bench --only page`); the browser then redraws
every chart. This times that redraw for the eight FIGURES charts of a 100,000-step run
(bench.synth), alternating two snapshots 500 steps apart so that each react has new data, for
the figures as bnviz sends them and either as commit REV's bnviz sends them (``--against REV``,
loaded beside it as bench.ab does) or as they were before plotly's automargin and tick-label
overflow checks were left to the left-edge y axes (bnviz.figures._fixed_margins), interleaved
round by round in one page, so the ratio holds on a noisy machine.

It runs plotly.py's own plotly.js (Streamlit bundles its own build of the same major version)
without Streamlit's theme, which draws labels larger; the live page's own cost is in
docs/PERFORMANCE.md (client), taken from Chromium's performance metrics during training.

    python -m bench.client [--rounds 10] [--steps 100000] [--against REV]
    python -m bench.client --live [--seconds 20]   # the app itself, while it trains
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import plotly
from playwright.sync_api import sync_playwright
from plotly.offline import get_plotlyjs_version

from bench import ab, synth
from bnviz import figures
from tests.browser_support import (CHROMIUM, CHROMIUM_ARGS, COUNT_RUN_ENDS, FRAGMENT_RUN, VIEWPORT, run_ends,
                                   start_server, stop_server)

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
WIDTH_PX = 870  # a chart's width in the app's wide layout at a 1400-pixel window


def page_figures(snap, figs=figures) -> list[dict]:
    """The FIGURES charts of a run's snapshot as the page sends them (JSON, read back), built by
    ``figs``: this tree's bnviz.figures, or another commit's."""
    return [json.loads(figs.for_page(spec.build, snap).to_json()) for spec in figs.FIGURES]


def automargin_everywhere(fig: dict) -> dict:
    """The figure as bnviz sent it before: every axis left to the theme (automargin on all of
    them, plotly's default tick-label overflow check)."""
    fig = copy.deepcopy(fig)
    for key, axis in fig["layout"].items():
        if key.startswith(("xaxis", "yaxis")):
            axis.pop("automargin", None)
            axis.pop("ticklabeloverflow", None)
    return fig


_DRAW = """async ([sets, rounds, width]) => {
  const names = Object.keys(sets), config = {displaylogo: false};
  const divs = {}, per = {};
  for (const n of names) {
    per[n] = sets[n][0].map(() => []);
    divs[n] = sets[n][0].map(() => { const d = document.createElement('div');
                                     d.style.width = width + 'px'; document.body.appendChild(d); return d; });
    for (let i = 0; i < divs[n].length; i++)
      await Plotly.newPlot(divs[n][i], sets[n][0][i].data, sets[n][0][i].layout, config);
  }
  for (let r = 0; r < rounds; r++) for (const n of names) {
    const figs = sets[n][(r + 1) % 2];
    for (let i = 0; i < figs.length; i++) {
      const f = JSON.parse(JSON.stringify(figs[i]));  // a fresh spec, as each refresh brings
      const t = performance.now();
      await Plotly.react(divs[n][i], f.data, f.layout, config);
      per[n][i].push(performance.now() - t);
    }
  }
  return per;
}"""


def measure(rounds: int = 10, steps: int = 100_000, against: str | None = None) -> dict:
    """Per variant: ms of Plotly.react per refresh (median over rounds) and per chart. The last
    variant is the baseline: REV's figures, or these with automargin everywhere."""
    snaps = [synth.fill(n).snapshot() for n in (steps, steps + 500)]
    a, b = (page_figures(snap) for snap in snaps)
    sets = {"bnviz": [a, b]}
    if against:
        with ab.base_package(against) as base:
            base_figures = importlib.import_module(f"{base.__name__}.figures")
            sets[against] = [page_figures(snap, base_figures) for snap in snaps]
    else:
        sets["automargin everywhere"] = [[automargin_everywhere(f) for f in s] for s in (a, b)]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_content("<html><body></body></html>")
            page.add_script_tag(path=str(PLOTLY_JS))
            per = page.evaluate(_DRAW, [sets, rounds, WIDTH_PX])
        finally:
            browser.close()
    out = {}
    for name, charts in per.items():
        refresh = [sum(c[r] for c in charts) for r in range(rounds)]
        out[name] = {"refresh_ms": statistics.median(refresh),
                     "chart_ms": {spec.key: statistics.median(c) for spec, c in zip(figures.FIGURES, charts)}}
    return out


def measure_live(seconds: float = 20, query: str = "preset=quick-look&steps=20000") -> dict:
    """The lab in a real server and headless Chromium while it trains: the browser main thread's
    busy time (Chromium's TaskDuration) per refresh that reached the page."""
    with tempfile.TemporaryDirectory() as work:
        server = start_server(Path(work))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    context = browser.new_context(viewport=VIEWPORT)
                    context.add_init_script(COUNT_RUN_ENDS)  # a refresh is a fragment run
                    page = context.new_page()
                    page.goto(f"{server.url}/?{query}")
                    start = page.get_by_role("button", name="Start", exact=True)
                    start.wait_for(timeout=90_000)
                    cdp = context.new_cdp_session(page)
                    cdp.send("Performance.enable")
                    start.click()
                    time.sleep(8)  # past the first refreshes, the charts all drawn

                    def read() -> tuple[float, int, float]:
                        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
                        return metrics["TaskDuration"], run_ends(page, FRAGMENT_RUN), time.monotonic()

                    t0, n0, w0 = read()
                    time.sleep(seconds)
                    t1, n1, w1 = read()
                finally:
                    browser.close()
        finally:
            stop_server(server)
    n = max(n1 - n0, 1)
    return {"refreshes": n1 - n0, "seconds": w1 - w0, "busy": (t1 - t0) / (w1 - w0), "task_ms": (t1 - t0) / n * 1e3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10, help="refreshes per variant, interleaved (default 10)")
    p.add_argument("--steps", type=int, default=100_000, help="steps of the synthetic run (default 100000)")
    p.add_argument("--live", action="store_true", help="time the app itself while the lab trains instead")
    p.add_argument("--seconds", type=float, default=20, help="--live: seconds measured (default 20)")
    p.add_argument("--against", metavar="REV", help="compare with commit REV's figures instead")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.seconds <= 0:
        p.error("--rounds and --steps: whole numbers >= 1; --seconds: a number > 0")
    if args.live:
        r = measure_live(args.seconds)
        print(f"live lab (quick-look), {r['seconds']:.1f} s of training: {r['refreshes']} refreshes reached the page; "
              f"browser main thread busy {r['busy']:.0%}, {r['task_ms']:.0f} ms per refresh")
        return 0
    try:
        res = measure(args.rounds, args.steps, args.against)
    except subprocess.CalledProcessError as exc:
        return ab.unreadable("bench.client", args.against, exc)
    base = list(res.values())[-1]["refresh_ms"]
    print(f"Plotly.react of the {len(figures.FIGURES)} live charts, {args.steps:,}-step run, median of "
          f"{args.rounds} refreshes (headless Chromium, plotly.js {get_plotlyjs_version()}):")
    for name, r in res.items():
        print(f"  {name:22s} {r['refresh_ms']:7.1f} ms per refresh ({base / r['refresh_ms']:.2f}x)")
        print("    " + ", ".join(f"{k} {ms:.0f}" for k, ms in r["chart_ms"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
