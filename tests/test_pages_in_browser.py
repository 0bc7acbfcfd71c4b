"""The pages beside the live lab, in a real browser: each opens at its own address as part
of the app, even as a server's first visit, and each one that trains does so live.

Streamlit turns its old pages/-folder handling off only once a session has called
st.navigation (app.py does); before that, a first visit straight to /Paper_Figure_1 (a link
a teacher shared, a reload, a bookmark) ran the page's file alone: no wide layout and a
sidebar listing "app" and file names (ui/navigation.py). This module's server is its own,
so its first test is that server's first visit.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

pytest.register_assert_rewrite("tests.browser_support")

from tests.browser_support import (
    LOAD_TIMEOUT_MS,
    VIEWPORT,
    assert_labels_fit,
    assert_labels_fit_narrow,
    button,
    chart_points,
    exceptions,
    pause_and_settle,
    poll,
    progress_text,
    screenshot,
    select_option,
    wait_idle,
    wait_progress,
)
from bnviz import presets
from bnviz.runlog import from_csv
from ui.navigation import PAGES

pytest_plugins = ("tests.browser_support",)
pytestmark = pytest.mark.browser

TITLES = [title for _, title, _ in PAGES]
# Streamlit's address for a page file: its name without the number prefix and ".py".
SUB_PAGES = [(re.sub(r"^\d+_", "", Path(target).stem), title) for target, title, _ in PAGES if isinstance(target, str)]
CENTERED_MAX_PX = 736  # Streamlit's main column without layout="wide"; the tests' viewport is 1400 px


def open_address(page, url: str, title: str) -> None:
    page.goto(url)
    expect(page.get_by_role("heading", level=1)).to_have_text(title, timeout=LOAD_TIMEOUT_MS)
    wait_idle(page, LOAD_TIMEOUT_MS)


def sidebar_titles(page) -> list[str]:
    links = page.get_by_test_id("stSidebarNav").get_by_test_id("stSidebarNavLink")
    return [text.splitlines()[-1].strip() for text in links.all_inner_texts()]


def download(page, label: str) -> tuple[bytes, str]:
    """Click a download button; return the file it gives and the address it came from."""
    with page.expect_download() as info:
        page.get_by_test_id("stMain").get_by_role("button", name=label).click()
    return Path(info.value.path()).read_bytes(), info.value.url


def test_first_visit_to_a_fresh_server_straight_to_a_page_gets_the_apps_layout_and_sidebar(app_server, page):
    address, title = SUB_PAGES[0]
    open_address(page, f"{app_server.url}/{address}", title)
    assert sidebar_titles(page) == TITLES
    assert urlsplit(page.url).path == f"/{address}"
    main = page.get_by_test_id("stMainBlockContainer").bounding_box()
    screenshot(page, "deep-link-first-visit")
    assert main["width"] > CENTERED_MAX_PX + 100, main
    assert exceptions(page) == 0


@pytest.mark.parametrize("address,title", SUB_PAGES, ids=[a for a, _ in SUB_PAGES])
def test_every_page_address_opens_that_page_in_the_app(app_server, page, address, title):
    open_address(page, f"{app_server.url}/{address}", title)
    assert sidebar_titles(page) == TITLES
    assert exceptions(page) == 0


def test_bn_step_by_step_draws_the_mini_batch_through_bn_with_every_label_in_place(app_server, page):
    open_address(page, f"{app_server.url}/BN_step_by_step", "BN step by step")
    poll(lambda: page.evaluate("() => document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length"),
         lambda n: n == 45, 30, "in each of its three charts a line per row and feature: 5 rows x 3 features")
    assert_labels_fit(page)
    assert_labels_fit_narrow(page)
    screenshot(page, "pages-bn-step-by-step")
    assert exceptions(page) == 0


def test_a_paper_figure_1_link_with_settings_opens_the_page_set_that_way(app_server, page):
    open_address(page, f"{app_server.url}/Paper_Figure_1?steps=50000&dataset=mnist-mini&lr=1", "Paper Figure 1")
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_role("combobox", name="Steps")).to_have_value(re.compile(r"^50,000"))
    expect(sidebar.get_by_role("combobox", name="Dataset")).to_have_value("mnist-mini")
    expect(page).to_have_url(re.compile(r"/Paper_Figure_1\?steps=50000&dataset=mnist-mini&lr=1$"))
    assert exceptions(page) == 0


def test_paper_figure_1_trains_live_and_fills_its_chart_and_table(app_server, page, context):
    open_address(page, f"{app_server.url}/Paper_Figure_1", "Paper Figure 1")
    select_option(page, "Dataset", "mnist-mini")  # nothing to download
    button(page, "Start").click()
    wait_progress(page, lambda p: p.step >= 100 and p.total == 5_000, "the run to pass step 100 of 5,000")
    # Test accuracy every 50 steps at this length: the chart's first trace grows.
    first = poll(lambda: chart_points(page, "fig1-").get("chart", 0), lambda n: n >= 2, 60,
                 "test accuracy points in the Figure 1 chart")
    poll(lambda: chart_points(page, "fig1-").get("chart", 0), lambda n: n > first, 60, f"more than {first} points")
    expect(page.get_by_test_id("stMain").get_by_test_id("stDataFrame")).to_have_count(1)  # "Measured"
    expect(button(page, "Download CSV (tidy)")).to_be_disabled()  # a file of a moving run is stale at once
    expect(page.get_by_text("Pause the run, or let it finish, to download it.")).to_be_visible()
    paused = pause_and_settle(page)
    assert_labels_fit(page)
    assert_labels_fit_narrow(page)  # the chart once stood beside the claims, ~420 px wide there
    screenshot(page, "pages-paper-figure-1")
    # The run so far, as the CSV a teacher keeps: both nets, up to the step the page shows.
    csv, address = download(page, "Download CSV (tidy)")
    record = from_csv(csv.decode())
    assert set(record.variants) == {"plain", "bn"}
    assert all(v.steps[-1] == paused.step for v in record.variants.values()), \
        (paused.text, {n: int(v.steps[-1]) for n, v in record.variants.items()})
    # The file must outlive other sessions' script runs. A deferred download's file
    # (data=callable) went after any two runs in the process, each live page's redraw being
    # one: with other pages training, a click gave a cancelled download (CI at c85404f).
    other = context.new_page()
    for _ in range(3):  # three script runs of another session
        open_address(other, f"{app_server.url}/{SUB_PAGES[1][0]}", SUB_PAGES[1][1])
    again = page.request.get(address)
    assert again.ok and again.body() == csv
    # The report quotes the paper's note and says what this page's run changed from it.
    report = download(page, "Download HTML report")[0].decode()
    assert ("test accuracy every 500 steps. This run differs from the note: dataset mnist-mini instead of mnist; "
            "5,000 instead of 50,000 steps; test accuracy every 50 instead of 500 steps.") in report
    assert exceptions(page) == 0


def test_covariate_shift_page_trains_three_nets_and_draws_all_four_charts(app_server, page):
    open_address(page, f"{app_server.url}/Does_BN_reduce_covariate_shift", "Does BN really reduce covariate shift?")
    button(page, "Start").click()
    # The ICS and smoothness probes run every 100 steps (the page's default): after 300
    # steps every chart has points.
    wait_progress(page, lambda p: p.step >= 300, "the run to pass step 300")
    charts = poll(lambda: chart_points(page, "ics-"), lambda c: len(c) == 4 and all(c.values()), 60,
                  "all four charts to have data")
    assert set(charts) == {"loss", "shift", "ics", "smooth"}
    pause_and_settle(page)
    assert_labels_fit(page)
    assert_labels_fit_narrow(page)
    screenshot(page, "pages-covariate-shift")
    report = download(page, "Download HTML report")[0].decode()
    assert "bnviz: ics-measure" in report and "Internal covariate shift as Santurkar et al. measure it" in report
    assert exceptions(page) == 0


def test_batch_size_sweep_fills_its_chart_batch_size_by_batch_size_and_stops(app_server, page):
    open_address(page, f"{app_server.url}/Batch_size_and_alternatives", "Batch size and the alternatives")
    button(page, "Start").click()  # 300 steps per run, the shortest choice, is the default
    poll(lambda: chart_points(page, "bsweep-").get("chart", 0), lambda n: n >= 1, 120,
         "the first batch size's results in the chart")
    expect(page.get_by_test_id("stMain").get_by_test_id("stTable")).to_have_count(1)
    expect(page.get_by_text("Stop the sweep, or let it finish, to download it.")).to_be_visible()
    button(page, "Stop").click()
    text = poll(lambda: progress_text(page) or "", lambda t: "stopped" in t or "finished" in t, 60,
                "the sweep to say stopped")
    expect(button(page, "Start")).to_be_enabled()
    assert_labels_fit(page)
    assert_labels_fit_narrow(page)
    screenshot(page, "pages-batch-size-sweep")
    # The sweep as the CLI writes it: a row per batch size done and norm, the report says it stopped.
    rows = list(csv.DictReader(io.StringIO(download(page, "Download CSV")[0].decode())))
    assert rows and {r["field"] for r in rows} == {"batch_size"}
    assert {r["variant"] for r in rows} == {"bn", "layer", "group", "renorm"}
    report = download(page, "Download HTML report")[0].decode()
    assert '"name":"Batch Renorm"' in report
    assert ("Stopped before the last value" in report) == ("stopped" in text)
    assert exceptions(page) == 0


def test_learning_rate_sweep_runs_every_rate_and_names_the_largest_each_net_trains_at(app_server, page):
    open_address(page, f"{app_server.url}/Larger_learning_rates", "Larger learning rates")
    button(page, "Start").click()  # 300 steps per run, the shortest choice, is the default
    rates = presets.get("high-lr").sweep[1]
    poll(lambda: progress_text(page) or "", lambda t: "finished" in t, 180, "the sweep to finish")
    main = page.get_by_test_id("stMain")
    expect(main).to_contain_text(re.compile(
        r"Largest rate that trained to [\d.]+% test accuracy \(90% of the best here\): "
        r"plain ([\d.]+|none), BatchNorm ([\d.]+|none)\."))
    assert chart_points(page, "lrsweep-").get("chart", 0) == len(rates)  # plain: one point per rate
    expect(main.get_by_test_id("stTable")).to_have_count(1)
    assert_labels_fit(page)
    assert_labels_fit_narrow(page)  # the chart once stood beside the papers, cramped there
    screenshot(page, "pages-learning-rate-sweep")
    report = download(page, "Download HTML report")[0].decode()
    assert "Stable lr values" in report and "<b>BatchNorm</b> (bn): largest" in report
    assert "<title>bnviz: high-lr (lr sweep)</title>" in report  # as the CLI writes it
    assert "Stopped before the last value" not in report
    assert exceptions(page) == 0


SWEEP_CLOSED_RE = re.compile(r"session closed; high-lr sweep stopped, (\d+) sweeps alive")


def test_closing_the_tab_stops_its_sweep(app_server, browser):
    ctx = browser.new_context(viewport=VIEWPORT)
    pg = ctx.new_page()
    open_address(pg, f"{app_server.url}/Larger_learning_rates", "Larger learning rates")
    select_option(pg, "Steps per run", "1,000 per run (the preset's length)")  # long enough to be mid-run
    button(pg, "Start").click()
    poll(lambda: progress_text(pg) or "", lambda t: "training" in t, 60, "the sweep to be training")
    offset = app_server.log_size()
    pg.close()
    ctx.close()
    lines = poll(lambda: SWEEP_CLOSED_RE.findall(app_server.log_since(offset)), bool, 30,
                 "the 'sweep stopped' line in the server log")
    assert int(lines[-1]) == 0, f"{lines[-1]} sweeps alive after the tab closed"
