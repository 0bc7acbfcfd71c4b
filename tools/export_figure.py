"""Export a figure of a finished run to PNG for the docs (a developer tool, not the app).

    python tools/export_figure.py out/paper-fig1 paper_figure1 docs/img/paper-fig1.png
    python tools/export_figure.py out/high-lr sweep_figure docs/img/high-lr.png      # a sweep

Reads the run's metrics.csv (no retraining) and config.json (figures that rebuild a
variant's initial network, like depth_growth, need its config; the CSV keeps none),
builds the figure with bnviz.figures, and renders it in headless Chromium (Debian's
chromium; Playwright drives it).
"""

import dataclasses
import inspect
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playwright.sync_api import sync_playwright  # noqa: E402

from bnviz import figures  # noqa: E402
from bnviz.config import Comparison  # noqa: E402
from bnviz.runlog import RunSnapshot, from_csv  # noqa: E402
from bnviz.sweep import rows_from_csv  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def read_run(run_dir: str) -> RunSnapshot:
    """The run's metrics.csv as a snapshot, with each variant's config from config.json where there is one."""
    snap = from_csv(Path(run_dir, "metrics.csv").read_text(encoding="utf-8"))
    config = Path(run_dir, "config.json")
    if not config.exists():
        return snap
    cmp = Comparison.from_json(config.read_text(encoding="utf-8"))
    return dataclasses.replace(snap, variants={
        n: dataclasses.replace(v, config=cmp.variants[n].to_dict()) if n in cmp.variants else v
        for n, v in snap.variants.items()})


def build(run_dir: str, name: str):
    """The figure: a sweep's (sweep.csv) for sweep_figure, else one of a run's (metrics.csv)."""
    if name == "sweep_figure":
        rows = rows_from_csv(Path(run_dir, "sweep.csv").read_text(encoding="utf-8"))
        field = rows[0]["field"] if rows else "value"
        return figures.sweep_figure(rows, field, log_x=all(isinstance(r["value"], (int, float)) for r in rows))
    return getattr(figures, name)(read_run(run_dir))


def main(run_dir: str, name: str, png: str, width: int = 1200) -> None:
    fig = build(run_dir, name)
    fig.update_layout(width=width)
    with tempfile.TemporaryDirectory() as tmp:
        page_path = Path(tmp, "fig.html")
        page_path.write_text(fig.to_html(include_plotlyjs="inline", full_html=True), encoding="utf-8")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width + 40, "height": int(fig.layout.height or 500) + 40})
            page.goto(page_path.as_uri())
            page.locator(".js-plotly-plot").wait_for()
            page.locator(".js-plotly-plot").screenshot(path=png)
            browser.close()
    print(f"wrote {png}")


def _is_figure(f) -> bool:
    """A figure function of bnviz.figures: snapshot in, go.Figure out."""
    return (inspect.isfunction(f) and f.__module__ == figures.__name__
            and inspect.signature(f).return_annotation in ("go.Figure", "Figure"))


def cli(argv: list[str]) -> int:
    """Bad input: one line naming what is wrong, exit 2 (no traceback)."""
    usage = "usage: python tools/export_figure.py RUN_DIR FIGURE OUT.png"
    if len(argv) != 3:
        print(f"{usage}\n(FIGURE: a figure function of bnviz.figures, e.g. paper_figure1)", file=sys.stderr)
        return 2
    run_dir, name, png = argv
    needs = "sweep.csv" if name == "sweep_figure" else "metrics.csv"
    if not Path(run_dir, needs).is_file():
        print(f"RUN_DIR: no {needs} in {run_dir!r} (a folder written by `python -m bnviz run --out`)",
              file=sys.stderr)
        return 2
    if name.startswith("_") or not _is_figure(getattr(figures, name, None)):
        known = sorted(n for n, f in vars(figures).items() if not n.startswith("_") and _is_figure(f))
        print(f"FIGURE: unknown figure {name!r}; allowed: {', '.join(known)}", file=sys.stderr)
        return 2
    main(run_dir, name, png)
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
