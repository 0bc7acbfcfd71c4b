"""Opening and closing the live lab 50 times leaks neither training workers nor memory.

Each cycle is what a student does: open the page in a new tab (a new Streamlit session),
press Start, see the first steps, close the tab. The server must end every session's
worker (the session-scoped Lab's release callback) and give back what the session held.

Streamlit keeps a disconnected session's state for ``server.disconnectedSessionTTL``
seconds (120 by default) so that a tab that lost its connection can resume; this test sets
it to 2 s, so that 50 quick cycles measure leaks rather than that grace period. The Lab
drops its trainer as soon as the tab closes, whatever the TTL.

Memory is the server's resident set (VmRSS of its process), read after a few warm-up
cycles: the first session imports torch and plotly and fills caches (the subplot grids,
the bundled dataset), which is a one-off cost and not a leak. Python's allocator keeps
some freed memory, so the bound is the issue's 10 % over that baseline, not equality. So
does glibc, across the malloc arenas of the server's many short-lived threads: before app.py
capped them at two (bnviz/malloc_arenas.py) the server crept +8 % to +11 % over the 50
cycles on an Intel Xeon, with no Python object left behind; with the cap, +3.5 %.
"""

from __future__ import annotations

import re

import pytest

from bench.proc import kib
from tests.browser_support import (
    ARTIFACTS,
    VIEWPORT,
    button,
    open_app,
    poll,
    start_server,
    stop_server,
    wait_progress,
)

# The browser fixture lives in tests/browser_support.py; app_server is overridden below.
pytest_plugins = ("tests.browser_support",)
pytestmark = [pytest.mark.browser, pytest.mark.slow]

CYCLES = 50
WARMUP = 3
MAX_GROWTH = 0.10
# One hidden layer and a run far too long to end by itself: every cycle's worker must be
# stopped by the tab closing, not by finishing.
QUERY = "preset=quick-look&depth=1&steps=20000"
CLOSED_RE = re.compile(r"bnviz: session closed; (\d+) labs open, (\d+) training workers alive")
SESSION_TTL_S = 2


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("bnviz-leak"),
                          {"STREAMLIT_SERVER_DISCONNECTED_SESSION_TTL": str(SESSION_TTL_S)})
    yield server
    stop_server(server)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "leak-streamlit-server.log").write_text(server.log_text(), encoding="utf-8")


def rss_bytes(pid: int) -> int:
    kb = kib(pid, "status", "VmRSS")
    assert "VmRSS" in kb, f"no VmRSS for process {pid}"
    return kb["VmRSS"] * 1024


def open_train_close(chromium, server) -> None:
    ctx = chromium.new_context(viewport=VIEWPORT)
    try:
        page = ctx.new_page()
        open_app(page, server, QUERY)
        button(page, "Start").click()
        wait_progress(page, lambda p: p.step >= 1, "the first training steps")
    finally:
        ctx.close()


def settled_counts(server, offset: int, closes: int) -> tuple[int, int]:
    """(labs open, workers alive) from the last of ``closes`` 'session closed' lines since ``offset``."""
    lines = poll(lambda: CLOSED_RE.findall(server.log_since(offset)), lambda ls: len(ls) >= closes, 60,
                 f"{closes} 'session closed' lines in the server log")
    labs, workers = (int(n) for n in lines[-1])
    return labs, workers


def test_fifty_open_and_close_cycles_leave_no_worker_and_bounded_memory(app_server, browser):
    pid = app_server.proc.pid
    offset = app_server.log_size()
    for _ in range(WARMUP):
        open_train_close(browser, app_server)
    settled_counts(app_server, offset, WARMUP)  # the warm-up sessions are released
    baseline = rss_bytes(pid)
    offset = app_server.log_size()

    peak = baseline
    series = []  # RSS every 10 cycles: a plateau is the allocator, a steady climb a leak
    for i in range(CYCLES):
        open_train_close(browser, app_server)
        peak = max(peak, rss_bytes(pid))
        if i % 10 == 9:
            series.append(round(rss_bytes(pid) / 2**20))

    labs, workers = settled_counts(app_server, offset, CYCLES)
    end = rss_bytes(pid)
    mb = 1 / 2**20
    print(f"server RSS: baseline {baseline * mb:.0f} MB, peak {peak * mb:.0f} MB, after {CYCLES} cycles "
          f"{end * mb:.0f} MB ({end / baseline - 1:+.1%}); every 10 cycles: {series} MB")
    assert workers == 0, f"{workers} training workers alive after {CYCLES} tabs closed"
    assert labs == 0, f"{labs} labs still open after {CYCLES} tabs closed"
    assert end <= baseline * (1 + MAX_GROWTH), (
        f"server memory grew {end / baseline - 1:+.1%} over {CYCLES} open/close cycles "
        f"({baseline * mb:.0f} MB -> {end * mb:.0f} MB; every 10 cycles: {series} MB)")
