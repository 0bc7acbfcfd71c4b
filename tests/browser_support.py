"""Shared setup for the browser tests: a real Streamlit server, headless Chromium, page helpers.

tests/test_browser.py loads it as a pytest plugin (``pytest_plugins``) for its fixtures and
imports its helpers. Nothing here is collected as a test. Everything that changes on the page is awaited with Playwright's
``expect`` or a bounded poll; the few fixed waits only prove that something does NOT
change.

The server is ``python -m streamlit run app.py`` on a free port of 127.0.0.1 with a private
BNVIZ_DATA_DIR; its stdout and stderr go to one log file, which the tab-close test reads.
Chromium is Debian's (/usr/bin/chromium); ``playwright install`` is never needed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    expect,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}
SERVER_START_TIMEOUT_S = 90  # a cold start imports torch and plotly on a busy 2-core machine
LOAD_TIMEOUT_MS = 60_000  # first page load and script run
# Any other change on the page. Generous on purpose: while a lab trains, the browser redraws
# eight Plotly charts on every 0.5 s refresh; on two busy cores its main thread is nearly
# always busy (Plotly), it falls seconds behind the server, and a click is handled only
# after that backlog (5 to 40 s measured with other work on the machine).
UI_TIMEOUT_MS = 60_000
expect.set_options(timeout=UI_TIMEOUT_MS)  # expect()'s own default is 5 s

PROGRESS_RE = re.compile(r"step ([\d,]+) / ([\d,]+) · ([\d,]+) steps/s · (\w+)")

T = TypeVar("T")


# server ----------------------------------------------------------------------------------------
@dataclass
class Server:
    url: str
    log_path: Path
    proc: subprocess.Popen

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path, extra_env: dict[str, str] | None = None) -> Server:
    """Start ``streamlit run app.py`` and wait for /_stcore/health; raise with the log if it never answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    data_dir.mkdir(exist_ok=True)
    log_path = workdir / "streamlit.log"
    port = free_port()
    env = dict(os.environ)
    env.update({"BNVIZ_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true"]
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()  # the child holds its own descriptor
    server = Server(f"http://127.0.0.1:{port}", log_path, proc)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{server.log_text()}")
        try:
            with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"streamlit did not answer /_stcore/health in {SERVER_START_TIMEOUT_S} s:\n"
                               f"{server.log_text()}")
        time.sleep(0.25)


def stop_server(server: Server) -> None:
    stop_process_group(server.proc)


def stop_process_group(proc: subprocess.Popen) -> None:
    """Terminate a process started in its own group, and the group; kill it if it does not exit in 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


# fixtures (re-exported by the test modules) --------------------------------------------------
@pytest.fixture(scope="module")
def app_server(tmp_path_factory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("bnviz-server"))
    yield server
    stop_server(server)
    # Keep the server log next to the screenshots: it is what a failed run needs first.
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser-streamlit-server.log").write_text(server.log_text(), encoding="utf-8")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_context(browser: Browser, **options) -> BrowserContext:
    """A browser context as every test opens one: ``options`` (Playwright's), the tests' timeout,
    the count of script runs that ended."""
    ctx = browser.new_context(**options)
    ctx.set_default_timeout(UI_TIMEOUT_MS)
    ctx.add_init_script(COUNT_RUN_ENDS)
    return ctx


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context per test; closing it ends the Streamlit session (and its worker)."""
    ctx = new_context(browser, viewport=VIEWPORT)
    yield ctx
    ctx.close()  # a no-op if the test closed it already


@pytest.fixture
def page(context: BrowserContext, request) -> Iterator[Page]:
    pg = context.new_page()
    failed_before = request.session.testsfailed
    yield pg
    # A failed test leaves a screenshot of the page as it was: artifacts/browser-failed-<test>.png.
    if request.session.testsfailed > failed_before and not pg.is_closed():
        try:
            screenshot(pg, f"failed-{request.node.name}")
        except PlaywrightError as exc:  # the failure itself matters more than its picture
            print(f"no screenshot of the failed page: {exc}")


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    """A page on a phone held upright: PHONE_VIEWPORT and a touch screen (CSS pointer: coarse)."""
    ctx = new_context(browser, viewport=PHONE_VIEWPORT, has_touch=True, is_mobile=True)
    yield ctx.new_page()
    ctx.close()


def swipe(page: Page, locator: Locator, dx: float, dy: float) -> None:
    """A finger's swipe from the middle of ``locator`` by (dx, dy) px, as a touch screen sends it."""
    box = locator.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for i in range(1, 11):
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                              "touchPoints": [{"x": x + dx * i / 10, "y": y + dy * i / 10}]})
        time.sleep(0.03)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


# page helpers ----------------------------------------------------------------------------------
def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"browser-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def app(page: Page) -> Locator:
    return page.locator("[data-testid='stApp']")


def button(page: Page, name: str) -> Locator:
    """A main-area button by its visible name (Start, Pause, Step, Reset): the icon is not part of it."""
    return page.get_by_test_id("stMain").get_by_role("button", name=name, exact=True)


def wait_idle(page: Page, timeout: int = UI_TIMEOUT_MS) -> None:
    expect(app(page)).to_have_attribute("data-test-script-state", "notRunning", timeout=timeout)


def open_app(page: Page, server: Server, query: str = "") -> None:
    """Open the app (``query`` without the '?') and wait until its first run drew the controls."""
    open_url(page, f"{server.url}/{'?' + query if query else ''}")


def open_url(page: Page, url: str) -> None:
    page.goto(url)
    # The script state reads notRunning before the first run too, so wait for its output first.
    expect(button(page, "Start")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    wait_idle(page, LOAD_TIMEOUT_MS)


def poll(read: Callable[[], T], ok: Callable[[T], bool], timeout: float, what: str,
         interval: float = 0.2) -> T:
    """Call ``read`` until ``ok(value)``; fail with the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    value = read()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {value!r}")
        time.sleep(interval)
        value = read()
    return value


# While the lab trains, the page is nearly always inside a fragment run: elements the
# current run has not redrawn yet are marked data-stale="true" (they still show the
# previous run's data), and an element may briefly exist twice (stale and fresh). Readers
# prefer fresh elements and fall back to stale ones.
_FRESH_FIRST = """(sel) => {
    const all = Array.from(document.querySelectorAll(sel));
    const stale = (e) => { const c = e.closest('[data-stale]'); return !!c && c.getAttribute('data-stale') === 'true'; };
    return all.filter(e => !stale(e)).concat(all.filter(stale).reverse()); }"""
_LIVE = """(sel) => Array.from(document.querySelectorAll(sel)).filter(e => {
    const c = e.closest('[data-stale]'); return !c || c.getAttribute('data-stale') !== 'true'; })"""


def progress_text(page: Page) -> str | None:
    """The text of the progress bar (the fresh one if any), or None before there is one."""
    return page.evaluate(f"""() => {{ const els = ({_FRESH_FIRST})("[data-testid='stProgress']");
        return els.length ? els[0].innerText : null; }}""")


def record_progress(page: Page) -> None:
    """Record every progress text and every alert the page renders from now on.

    A MutationObserver sees each redraw, however long Playwright's own reads wait for a
    browser busy drawing charts: short-lived values (a restart's first steps, a message
    that a later run removes) are not missed. Read with recorded_progress / recorded_alerts.
    """
    page.evaluate(f"""() => {{
        const read = () => {{ const els = ({_FRESH_FIRST})("[data-testid='stProgress']");
                              return els.length ? els[0].innerText : null; }};
        window.__bnvizProgress = [];
        window.__bnvizAlerts = [];
        const push = () => {{
            const t = read(); const log = window.__bnvizProgress;
            if (t !== null && log[log.length - 1] !== t) log.push(t);
            for (const e of document.querySelectorAll("[data-testid='stAlert']")) {{
                const a = e.innerText;
                if (!window.__bnvizAlerts.includes(a)) window.__bnvizAlerts.push(a);
            }}
        }};
        push();
        if (window.__bnvizProgressObserver) window.__bnvizProgressObserver.disconnect();
        window.__bnvizProgressObserver = new MutationObserver(push);
        window.__bnvizProgressObserver.observe(document.body, {{subtree: true, childList: true, characterData: true}});
    }}""")


def recorded_alerts(page: Page) -> list[str]:
    return page.evaluate("() => window.__bnvizAlerts || []")


def recorded_progress(page: Page) -> list[Progress]:
    texts = page.evaluate("() => window.__bnvizProgress || []")
    return [p for p in (parse_progress(t) for t in texts) if p is not None]


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    rate: int
    state: str
    text: str


def progress(page: Page) -> Progress | None:
    return parse_progress(progress_text(page))


def parse_progress(text: str | None) -> Progress | None:
    m = PROGRESS_RE.search(text or "")
    if m is None:
        return None
    step, total, rate = (int(g.replace(",", "")) for g in m.groups()[:3])
    return Progress(step, total, rate, m.group(4), text)


def wait_progress(page: Page, ok: Callable[[Progress], bool], what: str, timeout: float = 60) -> Progress:
    return poll(lambda: progress(page), lambda p: p is not None and ok(p), timeout, what)


def pause_and_settle(page: Page) -> Progress:
    """Press Pause; the page must come to show 'paused' by itself (no other interaction)."""
    button(page, "Pause").click()
    expect(button(page, "Start")).to_be_enabled()
    return wait_progress(page, lambda p: p.state == "paused", "the progress bar to say paused")


def exceptions(page: Page) -> int:
    """Streamlit exception boxes on the page (a traceback a user would see)."""
    return page.locator("[data-testid='stException']").count()


# Plotly data as it arrived in the browser. Numpy arrays travel as {dtype, bdata} objects
# (plotly.js decodes them and keeps the typed array as _inputArray); lists stay lists.
_DECODE = """
const toArray = (v) => {
  if (v === undefined || v === null) return [];
  if (Array.isArray(v) || ArrayBuffer.isView(v)) return Array.from(v);
  if (v._inputArray) return Array.from(v._inputArray);
  if (typeof v.bdata === 'string') {
    const types = {i1: Int8Array, u1: Uint8Array, i2: Int16Array, u2: Uint16Array, i4: Int32Array,
                   u4: Uint32Array, f4: Float32Array, f8: Float64Array};
    const T = types[String(v.dtype).replace(/[<>|=]/g, '')];
    const bin = atob(v.bdata); const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return Array.from(new T(bytes.buffer));
  }
  return [];
};
"""

def _charts_js(prefix: str) -> str:
    """JS that fills ``out``: chart key (after ``prefix``, in Streamlit's st-key-* class
    spelling) -> its plotly divs, fresh first."""
    return _DECODE + """
const out = {};
for (const el of (""" + _FRESH_FIRST + """)("[data-testid='stElementContainer'][class*='st-key-PREFIX']")) {
  const cls = Array.from(el.classList).find(c => c.startsWith('st-key-PREFIX'));
  const g = el.querySelector('.js-plotly-plot');
  if (!cls || !g || !g.data) continue;
  const key = cls.slice('st-key-PREFIX'.length);
  (out[key] = out[key] || []).push(g);
}
""".replace("PREFIX", prefix)


_CHARTS = _charts_js("lab-chart-")  # the live lab's charts, by FIGURES key


def chart_points(page: Page, prefix: str = "lab-chart-") -> dict[str, int]:
    """Points in the first trace of each drawn chart, by FIGURES key (0 for a chart without traces);
    with ``prefix`` (e.g. "fig1-"), the charts of another page whose keys start with it.

    Where a chart exists twice (fresh and stale), the larger count: data only grows.
    """
    return page.evaluate("() => {" + _charts_js(prefix) + """
        const counts = {};
        for (const [k, gs] of Object.entries(out))
            counts[k] = Math.max(...gs.map(g => g.data.length ? toArray(g.data[0].x).length : 0));
        return counts; }""")


def plotly_plot_count(page: Page) -> int:
    """All .js-plotly-plot elements that are not stale leftovers of an earlier run."""
    return page.evaluate(f"() => ({_LIVE})('.js-plotly-plot').length")


def grown_margins(page: Page) -> list[tuple[str, dict, dict]]:
    """(title, margins given, margins drawn) of each live chart whose margins plotly's automargin
    had to grow: such a chart is drawn twice at every refresh (bnviz.figures.MARGIN)."""
    return [tuple(c) for c in page.evaluate(f"""() => ({_LIVE})('.js-plotly-plot').map(d => {{
        const s = d._fullLayout._size, m = d.layout.margin;
        return [d.layout.title.text, m, {{l: s.l, r: s.r, t: s.t, b: s.b}}]; }})
        .filter(([, m, s]) => m.l !== s.l || m.r !== s.r || m.t !== s.t || m.b !== s.b)""")]


LABEL_GAP_PX = 8  # closer than this, two subplots' end ticks read as one number ("3000" "0": "30000")


def crowded_labels(page: Page) -> list[tuple[str, str]]:
    """(chart title, label) of each axis title or tick label of a live chart that the chart's
    margins do not hold: past the chart's edge (cut off; the chart's own title too), an axis
    title over tick labels (plotly keeps a title inside the chart when the margin is too small
    for it), or a tick label within LABEL_GAP_PX of another on the same line (neighbouring
    subplots' axes)."""
    return [tuple(c) for c in page.evaluate(f"""(gap) => ({_LIVE})('.js-plotly-plot').flatMap(d => {{
        const box = d.querySelector('.main-svg').getBoundingClientRect();
        const rect = (els) => Array.from(els).map(t => [t.textContent, t.getBoundingClientRect()])
                                             .filter(([, r]) => r.width);
        // every subplot's axes: plotly names their groups xtick, x2tick, ..., ytitle, y2title, ...
        const axes = (kind) => `[class^="x"][class$="${{kind}}"], [class^="y"][class$="${{kind}}"]`;
        const titles = rect(d.querySelectorAll(axes('title')));
        const ticks = rect(d.querySelectorAll(axes('tick') + ' > text'));
        const meet = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
        const out = ([, r]) => r.left < box.left - 0.5 || r.right > box.right + 0.5 ||
                               r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5;
        const near = (a, b) => a !== b && meet({{left: a.left - gap, right: a.right + gap,
                                                  top: a.top, bottom: a.bottom}}, b);
        const heads = rect(d.querySelectorAll('.gtitle'));  // the chart's own title: cut off at a narrow width
        return [...titles, ...ticks, ...heads].filter(out)
          .concat(titles.filter(([, r]) => ticks.some(([, q]) => meet(r, q))))
          .concat(ticks.filter(([, r]) => ticks.some(([, q]) => near(r, q))))
          .map(([text]) => [d.layout.title.text, text]); }})""", LABEL_GAP_PX)]


def overlapping_headers(page: Page) -> list[tuple[str, str]]:
    """(chart title, text) of each live chart's title or subplot title that its legend runs into."""
    return [tuple(c) for c in page.evaluate(f"""() => ({_LIVE})('.js-plotly-plot').flatMap(d => {{
        const bg = d.querySelector('.legend .bg');
        if (!bg) return [];
        const l = bg.getBoundingClientRect();
        const meet = (r) => l.left < r.right && r.left < l.right && l.top < r.bottom && r.top < l.bottom;
        return Array.from(d.querySelectorAll('.gtitle, .annotation-text'))
          .filter(t => t.getBoundingClientRect().width && meet(t.getBoundingClientRect()))
          .map(t => [d.layout.title.text, t.textContent]); }})""")]


def overlapping_notes(page: Page) -> list[tuple[str, str, str]]:
    """(chart title, text, text) of each two annotations of a live chart that run into each
    other: subplot titles, row titles and notes ("plain diverged" over the title "hidden1")."""
    return [tuple(c) for c in page.evaluate(f"""() => ({_LIVE})('.js-plotly-plot').flatMap(d => {{
        const notes = Array.from(d.querySelectorAll('.annotation-text'))
          .map(t => [t.textContent, t.getBoundingClientRect()]).filter(([, r]) => r.width);
        const meet = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
        return notes.flatMap(([s, a], i) => notes.slice(i + 1).filter(([, b]) => meet(a, b))
          .map(([t]) => [d.layout.title.text, s, t])); }})""")]


def truncated_buttons(page: Page) -> list[str]:
    """Labels of the main area's buttons that are cut short (an ellipsis where the word should be)."""
    # Streamlit cuts a label in its markdown container (overflow hidden, an ellipsis)
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        "[data-testid='stMain'] button [data-testid='stMarkdownContainer']"))
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)""")


def scrolled_tables(page: Page) -> list[str]:
    """The start of the text of each table in the main area wider than its place (its right-hand
    columns scrolled out of sight): a st.dataframe's grid (its accessible copy's text), or a st.table."""
    return page.evaluate(f"""() => ({_LIVE})("[data-testid='stMain'] [data-testid='stDataFrame'], "
        + "[data-testid='stMain'] [data-testid='stTable']")
        .filter(t => [t, ...t.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1
                                                            && getComputedStyle(e).overflowX !== 'visible'))
        .map(t => (t.querySelector('table') || t).textContent.slice(0, 80))""")


# What the page's layout at its width comes to: the window's width, each live chart's width as
# plotly drew it beside its container's, each table's width beside its content's.
_LAYOUT = f"""() => [window.innerWidth,
    ({_LIVE})('.js-plotly-plot').map(d => [Math.round((d._fullLayout || {{}}).width || 0), d.clientWidth]),
    ({_LIVE})("[data-testid='stMain'] [data-testid='stDataFrame'] .dvn-scroller")
        .map(e => [e.clientWidth, e.scrollWidth])]"""


def settle_layout(page: Page) -> None:
    """Wait until the page is laid out at its viewport's width: every chart drawn at its
    container's width, and no width changing over 0.3 s. Checked at once, a new viewport's checks
    saw the old layout (plotly redraws a chart at its new width a moment later) and passed. At
    least one chart must be drawn: right after a run ends plotly may not have drawn any yet (seen
    at a phone's width), and every check passed on an empty page."""
    last: list = [None]

    def read() -> tuple[list, bool]:
        now = page.evaluate(_LAYOUT)
        steady, last[0] = now == last[0], now
        return now, steady
    poll(read, lambda v: v[1] and v[0][0] == page.viewport_size["width"] and len(v[0][1]) > 0
         and all(abs(a - b) <= 1 for a, b in v[0][1]),
         20, "a chart drawn, every chart drawn at its container's width and no width changing", interval=0.3)


def assert_labels_fit(page: Page) -> None:
    """Every live chart's labels fit its margins as Streamlit's theme draws them: none cut off or
    crowded, no legend over a title, no two titles or notes over each other, no chart drawn twice
    per refresh for plotly to grow a margin; no button's label cut short, no table's columns
    scrolled out of sight."""
    settle_layout(page)
    poll(lambda: (crowded_labels(page), grown_margins(page), overlapping_headers(page), overlapping_notes(page),
                  truncated_buttons(page), scrolled_tables(page)),
         lambda v: v == ([], [], [], [], [], []), 20,
         "every chart's labels to fit its margins, every button's label its button and every table its place: "
         "(crowded labels, grown margins, legends over titles, notes over each other, cut buttons, "
         "scrolled tables)")


NARROW_VIEWPORT = {"width": 1024, "height": 768}  # a classroom projector (XGA), with the sidebar open
PHONE_VIEWPORT = {"width": 390, "height": 844}  # a phone held upright: Streamlit hides the sidebar, stacks columns


def assert_labels_fit_narrow(page: Page) -> None:
    """assert_labels_fit on NARROW_VIEWPORT, then back to VIEWPORT."""
    page.set_viewport_size(NARROW_VIEWPORT)
    try:
        assert_labels_fit(page)
    finally:
        page.set_viewport_size(VIEWPORT)


def heatmap_images(page: Page) -> list[bool]:
    """One entry per heatmap panel of the live charts: True where plotly.js drew it as one pixel
    per cell that the browser scales up (it marks that image "image-rendering: pixelated"),
    False where it painted every cell at full size, as it does unless x and y are evenly spaced."""
    return page.evaluate(f"""() => ({_LIVE})('.js-plotly-plot').flatMap(d =>
        Array.from(d.querySelectorAll('.hm image')).map(i => (i.getAttribute('style') || '').includes('pixelated')))""")


def chart_trace(page: Page, key: str, index: int = 0) -> tuple[list[float], list[float]] | None:
    """(x, y) of one trace of the chart ``key`` (fresh if drawn), or None if not drawn."""
    return page.evaluate("(args) => {" + _CHARTS + """
        const g = (out[args.key] || [])[0];
        if (!g || g.data.length <= args.index) return null;
        const t = g.data[args.index];
        return [toArray(t.x), toArray(t.y)]; }""", {"key": key, "index": index})


def chart_y_spans(page: Page, key: str) -> list[float]:
    """The height, in data units, of every y axis of chart ``key`` as drawn (fresh if drawn)."""
    return page.evaluate("(key) => {" + _CHARTS + r"""
        const g = (out[key] || [])[0];
        if (!g) return [];
        return Object.keys(g._fullLayout).filter(k => /^yaxis\d*$/.test(k))
          .map(k => Math.abs(g._fullLayout[k].range[1] - g._fullLayout[k].range[0])); }""", key)


def chart_annotations(page: Page, key: str) -> list[dict]:
    """Annotations in the layout of chart ``key`` (subplot titles included): [{text, x}]."""
    return page.evaluate("(key) => {" + _CHARTS + """
        const g = (out[key] || [])[0];
        if (!g) return [];
        return (g.layout.annotations || []).map(a => ({text: String(a.text), x: a.x === undefined ? null : a.x})); }""",
                         key)


def alerts(page: Page) -> list[str]:
    """Texts of the st.info / st.warning / st.error boxes on the page (stale ones included)."""
    return page.evaluate("() => Array.from(document.querySelectorAll(\"[data-testid='stAlert']\")).map(e => e.innerText)")


def select_option(page: Page, label: str, option: str) -> None:
    """Pick ``option`` (its displayed text) in the selectbox whose accessible name is ``label``."""
    select_in(page, page.get_by_role("combobox", name=label, exact=True), option)


def widget(page: Page, key: str) -> Locator:
    """The element of the widget with Streamlit key ``key`` (Streamlit tags it st-key-<key>)."""
    return page.locator(f".st-key-{re.sub(r'[^A-Za-z0-9_-]', '-', key)}")


def variant_norm(page: Page, variant: str) -> Locator:
    """A variant's normalization selectbox. Found by its key: its label is the variant's name
    in markdown bold, which the accessible name repeats with the asterisks."""
    return widget(page, f"lab.w.{variant}.norm").get_by_role("combobox")


def select_in(page: Page, combo: Locator, option: str) -> None:
    """Pick ``option`` (its displayed text) in the selectbox ``combo``."""
    combo.click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(combo).to_have_value(option)


def slider(page: Page, label: str) -> Locator:
    return page.get_by_test_id("stSlider").filter(has_text=label)


def press_slider(page: Page, label: str, key: str) -> None:
    """Move a (select_)slider one notch with the keyboard, as a keyboard user would."""
    thumb = slider(page, label).get_by_role("slider")
    thumb.focus()
    thumb.press(key)


def set_speed(page: Page, presses_left: int) -> None:
    """Slow motion: move "Steps per refresh" left from max (1: 100 steps, 2: 25 steps, ...).

    Each press must move the thumb (a press that lands while a run redraws the slider can be
    lost: press again). The value travels with every later rerun request, so it reaches the
    server with the run it causes or, at the latest, with the next click (Start).
    """
    thumb_value = slider(page, "Steps per refresh").get_by_test_id("stSliderThumbValue")
    for _ in range(presses_left):
        before = slider_value(page, "Steps per refresh")
        for _attempt in range(5):
            press_slider(page, "Steps per refresh", "ArrowLeft")
            try:
                expect(thumb_value).not_to_have_text(before, timeout=5_000)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError(f"'Steps per refresh' stayed at {before} after 5 presses")
        wait_idle(page)


def slider_value(page: Page, label: str) -> str:
    return slider(page, label).get_by_test_id("stSliderThumbValue").inner_text().strip()


# Script runs the page received the end of, counted from Streamlit's websocket as each message
# is handed to the page, by how they ended: window.__bnvizRunEnds[status]. The stApp element's
# data-test-script-state cannot count them: React batches its updates, and a run whose messages
# all arrive while the browser is busy (CI's two cores) goes running -> notRunning without the
# attribute ever changing (seen: the server sent the run's end, the attribute stayed
# 'notRunning'). A ForwardMsg's top-level field 6, script_finished, is the status.
FULL_RUN, FRAGMENT_RUN = 0, 3  # FINISHED_SUCCESSFULLY, FINISHED_FRAGMENT_RUN_SUCCESSFULLY
COUNT_RUN_ENDS = """(() => {
  window.__bnvizRunEnds = {};
  const runEnd = (buf) => {  // the script_finished status, or undefined
    if (!(buf instanceof ArrayBuffer) || buf.byteLength > 512) return undefined;
    const b = new Uint8Array(buf);
    let i = 0;
    const varint = () => { let v = 0, s = 0, x; do { x = b[i++]; v += (x & 0x7f) * 2 ** s; s += 7; }
                           while (x & 0x80); return v; };
    while (i < b.length) {
      const key = varint(), field = Math.floor(key / 8), wire = key % 8;
      if (wire === 0) { const v = varint(); if (field === 6) return v; }
      else if (wire === 2) { const n = varint(); i += n; }  // not i += varint(): i is read first
      else if (wire === 1) i += 8;
      else if (wire === 5) i += 4;
      else return undefined;
    }
    return undefined;
  };
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      // Added before Streamlit's own listener, so it runs first, in the same task.
      this.addEventListener('message', (e) => {
        const status = runEnd(e.data);
        if (status !== undefined) window.__bnvizRunEnds[status] = (window.__bnvizRunEnds[status] || 0) + 1; });
    }
  };
})();"""

# Resolves once the page has handled what it received: Streamlit handles a message in the task
# that delivers it (and its microtasks); React commits in a later task, before the next frames.
_SETTLED = "() => new Promise(r => setTimeout(() => requestAnimationFrame(() => requestAnimationFrame(r)), 0))"


def run_ends(page: Page, status: int = FULL_RUN) -> int:
    """Script runs this page received the end of with ``status`` (COUNT_RUN_ENDS)."""
    return page.evaluate(f"() => window.__bnvizRunEnds[{status}] || 0")


_NUDGE_OPTIONS = ("LayerNorm", "none")


def rerun(page: Page) -> None:
    """A full rerun that changes nothing in the lab, so the page shows the server's state now.

    Picks another option in "Add a variant" (a selectbox without a callback: changing it
    only reruns the script) and waits until the page received that run's end and drew it.
    """
    combo = page.get_by_role("combobox", name="Add a variant", exact=True)
    current = combo.input_value()
    target = _NUDGE_OPTIONS[0] if current != _NUDGE_OPTIONS[0] else _NUDGE_OPTIONS[1]
    wait_idle(page)  # a run still ending before the nudge must not count as its run
    page.evaluate(_SETTLED)
    before = run_ends(page)
    combo.click()
    page.get_by_role("option", name=target, exact=True).click()
    try:
        page.wait_for_function(f"() => (window.__bnvizRunEnds[{FULL_RUN}] || 0) > {before}",
                               timeout=UI_TIMEOUT_MS)
    except PlaywrightError:
        raise AssertionError(f"the server finished no full run after choosing {target!r} in 'Add a variant' "
                             f"(now {combo.input_value()!r})") from None
    wait_idle(page)
    page.evaluate(_SETTLED)
