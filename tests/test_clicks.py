"""A click counts once: Step takes one step, even when the browser sends the click twice, and
every button's on_click goes through ui.common.once_per_click.

Chromium sends a click twice when the live fragment's timer fires in the same moment
(Streamlit 1.67): the timer's fragment-only rerun carries the click's trigger as well, then
the click's own full rerun follows, and Streamlit runs the button's on_click in both. In
the browser tests one Step click once took two steps (428 -> 430, CI at c85404f); a
60-click probe against a 0.05 s timer gave 61-62 callbacks. Here the two messages are sent
on Streamlit's websocket (bench/protocol_tab.py), so the moment is hit every time.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.browser_support")

from bench.protocol_tab import ProtocolTab
from tests.browser_support import parse_progress

pytest_plugins = ("tests.browser_support",)

QUERY = "preset=quick-look&depth=1&steps=400"
TIMEOUT_S = 60  # a bound on a hung server, never a timing claim
SETTLE_S = 4.0


def _shown(tab: ProtocolTab):
    texts = [s["p"] for s in tab.samples if s["p"]]
    return parse_progress(texts[-1]) if texts else None


async def _paused_after(tab: ProtocolTab, ok, what: str):
    """The page's progress once it shows the run paused with ``ok``, and still does when the
    page has settled (a Step's page redraws for SETTLE_S, bnviz/live.py Lab._settle)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while not ((p := _shown(tab)) and p.state == "paused" and ok(p)):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; the page shows {p}")
        await asyncio.sleep(0.1)
    await asyncio.sleep(SETTLE_S)
    return _shown(tab)


async def _step_clicks(url: str) -> tuple[int, int]:
    tab = ProtocolTab()
    await tab.open(f"{url}/?{QUERY}", TIMEOUT_S)
    try:
        await tab.click("Step", TIMEOUT_S)  # the first step builds the run; the page redraws on a timer
        first = await _paused_after(tab, lambda p: p.step > 0, "the first step")
        await tab.click_as_a_tick_fires("Step", TIMEOUT_S)
        second = await _paused_after(tab, lambda p: p.step > first.step, "the second step")
        return first.step, second.step
    finally:
        await tab.close()


def test_a_step_click_sent_with_a_timer_tick_and_on_its_own_takes_one_step(app_server):
    first, second = asyncio.run(_step_clicks(app_server.url))
    assert (first, second) == (1, 2)


REPO = Path(__file__).resolve().parents[1]


def _unguarded_on_clicks(source: str) -> list[str]:
    """The on_click= values in ``source`` that are neither "ignore" nor once_per_click(...)
    nor a function of the module decorated with it."""
    tree = ast.parse(source)
    guarded = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
               and any(ast.unparse(d) == "once_per_click" for d in f.decorator_list)}
    bad = []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        for kw in call.keywords:
            if kw.arg != "on_click":
                continue
            v = kw.value
            if isinstance(v, ast.Constant) and v.value == "ignore":
                continue
            if isinstance(v, ast.Call) and ast.unparse(v.func) == "once_per_click":
                continue
            if isinstance(v, ast.Name) and v.id in guarded:
                continue
            bad.append(f"line {kw.lineno}: on_click={ast.unparse(v)}")
    return bad


def test_the_guard_check_finds_a_bare_callback():
    assert _unguarded_on_clicks("st.button('Go', on_click=go)") == ["line 1: on_click=go"]
    assert _unguarded_on_clicks("st.button('Go', on_click=once_per_click(go))") == []


def test_every_button_of_the_app_runs_its_action_once_per_click():
    files = [REPO / "app.py", *sorted((REPO / "ui").glob("*.py")), *sorted((REPO / "pages").glob("*.py"))]
    bad = {f.name: b for f in files if (b := _unguarded_on_clicks(f.read_text(encoding="utf-8")))}
    assert bad == {}
