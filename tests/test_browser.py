"""The live lab in a real browser: a Streamlit server on 127.0.0.1 and headless Chromium.

Each test opens its own browser context (its own Streamlit session and Lab) on a short run
and proves one thing. Closing the context at the end of a test ends the session, which
stops its training worker. Screenshots go to artifacts/browser-*.png, the server's log to
artifacts/browser-streamlit-server.log.

While a lab trains, a two-core machine's browser lags the server by seconds (eight Plotly
charts redrawn on every refresh, each click handled after the backlog): waits are generous,
and values that show only briefly are caught by a MutationObserver
(browser_support.record_progress).

A change made while the lab trains must stick: the widget, the run and the share link all
take it (expect_change_in_link).
"""

from __future__ import annotations

import math
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

# Before the import below, so that loading the same module as a plugin raises no
# PytestAssertRewriteWarning.
pytest.register_assert_rewrite("tests.browser_support")

from bnviz.figures import FIGURES, MAX_POINTS
from bnviz.presets import PRESETS
from tests.browser_support import (
    PHONE_VIEWPORT,
    UI_TIMEOUT_MS,
    alerts,
    assert_labels_fit,
    assert_labels_fit_narrow,
    button,
    chart_annotations,
    chart_points,
    chart_trace,
    chart_y_spans,
    exceptions,
    heatmap_images,
    open_app,
    open_url,
    pause_and_settle,
    plotly_plot_count,
    poll,
    press_slider,
    progress,
    record_progress,
    recorded_alerts,
    recorded_progress,
    rerun,
    screenshot,
    select_in,
    set_speed,
    swipe,
    slider_value,
    variant_norm,
    wait_idle,
    wait_progress,
)
from ui.common import CHART_BOX, CHART_MIN_WIDTH_PX

# The fixtures (app_server, browser, context, page) live in tests/browser_support.py.
pytest_plugins = ("tests.browser_support",)
pytestmark = pytest.mark.browser

# Every test opens quick-look: the lab draws its preset's figures first, then every chart of FIGURES.
CHART_KEYS = {spec.key for spec in FIGURES} | set(PRESETS["quick-look"].figures)
GROWING = ("loss_accuracy", "bands_layer", "bands_unit")  # first trace: one point per logged step
SHORT = "preset=quick-look&steps=400"
# For the tests that click while the lab trains: one hidden layer (a third of the chart
# payload per refresh: a busy browser handles clicks late) and a run that cannot end
# before the click lands (a structural change after the end only discards the run).
LIGHT_STEPS = 20_000
LIGHT = f"preset=quick-look&depth=1&steps={LIGHT_STEPS}"
# Divergence needs an unbounded activation: with the preset's sigmoid, lr=100 saturates
# every unit and the loss stays finite (checked with share.from_query + Trainer.run).
# 1,000 steps: the finished run's heatmap panels end at "1000" beside the next one's "0" (see
# crowded_labels); the bn curve is then thinned to MAX_POINTS.
DIVERGE_STEPS = 1_000
DIVERGE = f"preset=quick-look&steps={DIVERGE_STEPS}&variants=plain,bn&plain.lr=100&bn.norm=batch&activation=relu"


def start_and_wait(page, min_step: int = 1):
    """Press Start; wait for step >= min_step ('waiting' is slow motion between two refreshes)."""
    button(page, "Start").click()
    return wait_progress(page, lambda p: p.step >= min_step and p.state in ("training", "waiting"),
                         f"training past step {min_step}")


def all_charts(page) -> dict[str, int]:
    """Point counts once every chart of FIGURES is drawn (plotly draws after the element mounts)."""
    return poll(lambda: chart_points(page), lambda c: set(c) == CHART_KEYS, 60, "every chart drawn")


# 1 ---------------------------------------------------------------------------------------------
def test_page_loads_without_exception_and_shows_start_and_preset_note(app_server, page):
    open_app(page, app_server, SHORT)
    assert exceptions(page) == 0
    expect(button(page, "Start")).to_be_enabled()
    expect(button(page, "Pause")).to_be_disabled()
    main = page.get_by_test_id("stMain")
    expect(main).to_contain_text(PRESETS["quick-look"].title)
    expect(main).to_contain_text(PRESETS["quick-look"].note)
    assert not [a for a in alerts(page) if "Link:" in a]
    screenshot(page, "01-loaded")


# 2 ---------------------------------------------------------------------------------------------
def test_start_streams_data_into_every_chart(app_server, page):
    open_app(page, app_server, LIGHT)
    # Slow motion (25 steps per refresh), so that two reads fall before the charts' MAX_POINTS cap.
    set_speed(page, 2)
    assert slider_value(page, "Steps per refresh") == "25 steps"
    first_progress = start_and_wait(page)
    # The shift chart needs more than SHIFT_WINDOW histograms: every chart has data a bit later.
    first = poll(lambda: chart_points(page), lambda c: set(c) == CHART_KEYS and all(c.values()),
                 60, "every chart to have data")
    assert all(first[k] < MAX_POINTS for k in GROWING), f"first read came too late to see growth: {first}"
    later = poll(lambda: chart_points(page), lambda c: set(c) == CHART_KEYS and all(c[k] > first[k] for k in GROWING),
                 60, f"loss and band charts to grow beyond {first}")
    assert all(later.values()), later
    last_progress = wait_progress(page, lambda p: p.step > first_progress.step, "the step to increase")
    assert last_progress.total == LIGHT_STEPS
    assert exceptions(page) == 0
    screenshot(page, "02-training-charts")


def test_the_heatmaps_colorbar_title_clears_its_top_tick_label(app_server, page):
    """At 1,600 steps of quick-look with one layer the density scale ends at 0.1005, a tick at the
    bar's top whose label rose into the title set above the bar (found when CI paused a run
    there). The title runs up the bar's side now."""
    open_app(page, app_server, "preset=quick-look&depth=1&steps=1600")
    button(page, "Start").click()
    wait_progress(page, lambda p: p.state == "finished", "the 1,600-step run to finish", timeout=120)
    assert_labels_fit(page)


# 3 ---------------------------------------------------------------------------------------------
def test_pause_stops_growth_and_start_resumes(app_server, page):
    open_app(page, app_server, LIGHT)
    start_and_wait(page, min_step=25)
    paused = pause_and_settle(page)
    points = all_charts(page)
    time.sleep(2.0)  # nothing may happen here: that is the claim
    assert progress(page).step == paused.step
    rerun(page)  # a fresh read of the server's state, not just the frozen page
    again = progress(page)
    assert (again.step, again.state) == (paused.step, "paused"), again.text
    assert all_charts(page)["loss_accuracy"] == points["loss_accuracy"]
    # Settled: every chart exactly once, no stale leftovers of earlier refreshes.
    poll(lambda: plotly_plot_count(page), lambda n: n == len(CHART_KEYS), 30, f"{len(CHART_KEYS)} live charts")
    assert_labels_fit(page)
    assert_labels_fit_narrow(page)
    images = heatmap_images(page)
    assert images and all(images), f"heatmap panels drawn one pixel per cell: {images}"  # figures._every_kth
    screenshot(page, "03-paused")
    button(page, "Start").click()
    resumed = wait_progress(page, lambda p: p.step > paused.step and p.state == "training", "training to resume")
    assert resumed.total == LIGHT_STEPS
    expect(button(page, "Pause")).to_be_enabled()


# 4 ---------------------------------------------------------------------------------------------
def test_step_while_paused_advances_by_exactly_one(app_server, page):
    open_app(page, app_server, LIGHT)
    start_and_wait(page, min_step=25)
    current = pause_and_settle(page).step
    for _ in range(2):
        button(page, "Step").click()
        # Shown without any other interaction: the page keeps refreshing until the worker
        # has taken the step (it once drew only the moment of the click, before the step).
        shown = wait_progress(page, lambda p, now=current: p.step != now and p.state == "paused",
                              f"the step after {current}")
        assert shown.step == current + 1, shown.text
        current = shown.step
    time.sleep(1.0)  # and no second step follows
    rerun(page)
    assert progress(page).step == current
    screenshot(page, "04-stepped")


def test_first_step_of_a_fresh_lab_is_shown_without_another_interaction(app_server, page):
    """Step on a page that has no run yet: the worker is built, evaluates, then steps once."""
    open_app(page, app_server, SHORT)
    button(page, "Step").click()
    shown = wait_progress(page, lambda p: p.step > 0 and p.state == "paused", "step 1 shown as paused")
    assert (shown.step, shown.total) == (1, 400), shown.text
    all_charts(page)


# 5 ---------------------------------------------------------------------------------------------
def message_drawn(page, text: str) -> bool:
    """Whether an alert containing ``text`` was drawn at any time since record_progress().

    (A later full rerun may legitimately replace the one-line message of a change.)
    """
    try:
        expect(page.get_by_text(text, exact=False)).to_be_visible(timeout=5_000)
        return True
    except AssertionError:
        return any(text in a for a in recorded_alerts(page))


def expect_change_in_link(page, pattern: re.Pattern, widget_shows_change) -> None:
    """The share link (address bar) takes the change, and the widget still shows it.

    A fast rerun can drop a callback's session-state write; ui/lab.py then re-reads the
    comparison from the Lab instead of undoing the change (it once did, in about one of
    four changes made while training).
    """
    expect(page).to_have_url(pattern, timeout=UI_TIMEOUT_MS)
    assert widget_shows_change(), "the widget went back to the old value"


def test_changing_bn_norm_restarts_from_the_same_seed(app_server, page):
    open_app(page, app_server, LIGHT)
    # Slow motion, 100 steps per refresh: the first refreshes after the restart show at most
    # 200, however fast the server trains and however late the browser handles the click.
    set_speed(page, 1)
    assert slider_value(page, "Steps per refresh") == "100 steps"
    start_and_wait(page, min_step=300)
    plain_before, bn_before = loss_curves(page, 100)
    before_step = progress(page).step
    record_progress(page)
    select_in(page, variant_norm(page, "bn"), "LayerNorm")
    expect_change_in_link(page, re.compile(r"[?&]bn\.norm=layer(&|$)"),
                          lambda: variant_norm(page, "bn").input_value() == "LayerNorm")
    # Every value the page drew is recorded: the counter must have gone back near 0.
    back = poll(lambda: [p for p in recorded_progress(page) if p.step <= 200], bool, 60,
                f"the step counter to go back near 0 (from {before_step})")
    assert back[0].total == LIGHT_STEPS
    wait_progress(page, lambda p: p.step > back[0].step and p.state in ("training", "waiting"), "training to go on")
    # A new run: bn's early history is replaced by layer norm's ...
    plain_after, bn_after = loss_curves(page, 100)
    assert _differ(bn_before, bn_after) >= 0.8, "bn's loss history did not change: no restart"
    # ... from the same seed: the unchanged plain variant retraces its loss step for step.
    assert _differ(plain_before, plain_after) == 0, (plain_before[1][:5], plain_after[1][:5])
    assert exceptions(page) == 0
    screenshot(page, "05-restarted-layer-norm")
    assert message_drawn(page, "Structural change"), recorded_alerts(page)


PLAIN_LOSS, BN_LOSS = 0, 2  # loss chart traces: (train loss, test accuracy) per variant


def loss_curves(page, min_points: int):
    """(plain, bn) train-loss curves as (x, y), read together once both have min_points."""
    def read():
        return chart_trace(page, "loss_accuracy", PLAIN_LOSS), chart_trace(page, "loss_accuracy", BN_LOSS)
    return poll(read, lambda c: all(t and len(t[0]) >= min_points for t in c), 60,
                f"both loss curves to have {min_points} points")


def _differ(before, after) -> float:
    """Share of the (up to 50) first steps drawn in both curves whose loss differs beyond float noise.

    Both curves are thinned (figures.MAX_POINTS), so they share only some of their steps.
    """
    old = dict(zip(before[0], before[1]))
    common = [(x, y) for x, y in zip(*after) if x in old][:50]
    assert len(common) >= 20, f"only {len(common)} common steps: {before[0][:10]} / {after[0][:10]}"
    return sum(abs(y - old[x]) > 1e-6 * max(1.0, abs(y)) for x, y in common) / len(common)


# 6 ---------------------------------------------------------------------------------------------
def test_learning_rate_change_applies_live_without_restart(app_server, page):
    open_app(page, app_server, LIGHT)
    before = start_and_wait(page, min_step=100).step
    assert slider_value(page, "Learning rate (log scale)") == "0.5"
    record_progress(page)
    press_slider(page, "Learning rate (log scale)", "ArrowRight")
    expect_change_in_link(page, re.compile(r"[?&]lr=1\.0(&|$)"),
                          lambda: slider_value(page, "Learning rate (log scale)") == "1")
    assert slider_value(page, "Learning rate (log scale)") == "1"

    def lr_marks() -> list[dict]:
        return [a for a in chart_annotations(page, "loss_accuracy") if a["text"].startswith("lr →")]

    marks = poll(lr_marks, bool, 60, "an 'lr →' annotation on the loss chart")
    assert [m["text"] for m in marks] == ["lr → 1"], marks
    assert marks[0]["x"] >= before, marks  # applied where the run was, not at step 0 of a new run
    wait_progress(page, lambda p: p.step > marks[0]["x"] + 25, "training to go on")
    steps = [p.step for p in recorded_progress(page)]
    assert steps and min(steps) >= before and steps[-1] > before, f"the step counter went back: {before} -> {steps}"
    # (read once the chart is on the page: a full rerun redraws it)
    drawn = poll(lambda: chart_points(page), lambda c: "loss_accuracy" in c, 30, "the loss chart")
    assert drawn["loss_accuracy"] >= min(before, MAX_POINTS)  # the curve kept its history
    screenshot(page, "06-lr-changed-live")
    assert message_drawn(page, "Learning rate changed live"), recorded_alerts(page)


# 7 ---------------------------------------------------------------------------------------------
def test_share_link_restores_the_comparison_in_a_new_context(app_server, page, browser):
    open_app(page, app_server, SHORT)
    press_slider(page, "Learning rate (log scale)", "ArrowRight")
    expect(page).to_have_url(re.compile(r"[?&]lr=1\.0(&|$)"))
    wait_idle(page)
    seed = page.get_by_role("spinbutton", name="Seed", exact=True)
    seed.fill("7")
    seed.press("Enter")
    expect(page).to_have_url(re.compile(r"[?&]seed=7(&|$)"))
    wait_idle(page)
    link = page.url
    query = parse_qs(urlsplit(link).query)
    assert query == {"preset": ["quick-look"], "lr": ["1.0"], "steps": ["400"], "seed": ["7"]}, link
    expect(page.get_by_test_id("stCode")).to_contain_text(urlsplit(link).query)

    other = browser.new_context()
    try:
        fresh = other.new_page()
        open_url(fresh, link)
        assert slider_value(fresh, "Learning rate (log scale)") == "1"
        expect(fresh.get_by_role("spinbutton", name="Seed", exact=True)).to_have_value("7")
        expect(fresh.get_by_role("spinbutton", name="Steps", exact=True)).to_have_value("400")
        assert not [a for a in alerts(fresh) if "Link:" in a], alerts(fresh)
        assert exceptions(fresh) == 0
        assert parse_qs(urlsplit(fresh.url).query) == query
        screenshot(fresh, "07-share-link-reopened")
    finally:
        other.close()


def test_malformed_link_opens_with_defaults_and_warns(app_server, page):
    open_app(page, app_server, "lr=abc&depth=-3&bogus=1")
    assert exceptions(page) == 0
    warnings = [a for a in alerts(page) if "Link:" in a]
    for field in ("lr", "depth", "bogus"):
        assert any(f"Link: {field}:" in w for w in warnings), (field, warnings)
    assert len(warnings) == 3, warnings
    assert slider_value(page, "Learning rate (log scale)") == "0.5"
    expect(page.get_by_role("spinbutton", name="Hidden layers", exact=True)).to_have_value("3")
    expect(page.get_by_test_id("stMain")).to_contain_text(PRESETS["quick-look"].note)
    screenshot(page, "07-malformed-link")


# 8 ---------------------------------------------------------------------------------------------
CLOSED_RE = re.compile(r"bnviz: session closed; (\d+) labs open, (\d+) training workers alive")


def test_closing_the_tab_stops_the_worker(app_server, browser):
    ctx = browser.new_context()
    pg = ctx.new_page()
    open_app(pg, app_server, LIGHT)
    start_and_wait(pg, min_step=25)
    offset = app_server.log_size()
    closed_at = time.monotonic()
    pg.close()
    ctx.close()
    lines = poll(lambda: CLOSED_RE.findall(app_server.log_since(offset)), bool, 30,
                 "the 'session closed' line in the server log")
    waited = time.monotonic() - closed_at
    _labs, workers = (int(n) for n in lines[-1])
    assert workers == 0, f"{workers} training workers alive {waited:.1f} s after the tab closed: {lines}"


# 9 ---------------------------------------------------------------------------------------------
def test_diverged_variant_is_marked_and_the_other_trains_to_the_end(app_server, page):
    open_app(page, app_server, DIVERGE)
    assert not [a for a in alerts(page) if "Link:" in a], alerts(page)
    button(page, "Start").click()
    expect(page.get_by_text(re.compile(r"plain diverged at step \d+"))).to_be_visible(timeout=UI_TIMEOUT_MS)
    screenshot(page, "09-diverged")
    end = wait_progress(page, lambda p: p.state in ("finished", "failed", "stopped"), "the run to end")
    assert (end.step, end.total, end.state) == (DIVERGE_STEPS, DIVERGE_STEPS, "finished"), end.text
    assert not [a for a in alerts(page) if "training failed" in a], alerts(page)
    expect(page.get_by_text(re.compile(r"plain diverged at step \d+"))).to_be_visible()
    # bn's loss curve reaches the last step; plain's stops where it diverged.
    bn = poll(lambda: chart_trace(page, "loss_accuracy", BN_LOSS), lambda t: t and t[0] and t[0][-1] == DIVERGE_STEPS,
              60, f"bn's loss curve to reach step {DIVERGE_STEPS}")
    plain = chart_trace(page, "loss_accuracy", PLAIN_LOSS)
    assert len(plain[0]) < 25 and all(math.isfinite(y) for y in plain[1]), plain  # a few finite points
    assert len(bn[0]) == min(DIVERGE_STEPS, MAX_POINTS)
    # A finished run's axes span it all: the heatmap panels' last tick ("1000") ends beside the
    # next panel's "0", where they once read as one number. And plain's blown-up values (~1e18)
    # are ticked in labels that fit the given left margin.
    assert_labels_fit(page)
    screenshot(page, "09-after-divergence")


@pytest.mark.parametrize("query", ["preset=quick-look&steps=300", "preset=deep-sigmoid&steps=300",
                                   "preset=deep-sigmoid&steps=200"])
def test_a_finished_runs_charts_fit_a_projector(app_server, page, query):
    """At 300 steps plotly ticked 100 150 200 250 300 under each of three ~150 px panels at
    1024 px, labels run together; six panels (deep-sigmoid shows 6 of 10 layers) worse, and
    at 200 steps even two ticks ("100 200") ran together under each of six."""
    open_app(page, app_server, query)
    button(page, "Start").click()
    end = wait_progress(page, lambda p: p.state in ("finished", "failed", "stopped"), "the run to end", timeout=120)
    assert (end.step, end.state) == (int(query.rpartition("=")[2]), "finished"), end.text
    assert exceptions(page) == 0
    assert_labels_fit(page)
    assert_labels_fit_narrow(page)


def test_on_a_phone_each_chart_keeps_a_tablets_width_and_a_swipe_on_it_scrolls(app_server, phone):
    """At 390 px Figure 1's three panel titles ran into each other and every chart's ticks
    crowded ~360 px. Each chart is now CHART_MIN_WIDTH_PX wide in a box that scrolls, and the
    page itself does not scroll sideways: its text still wraps to the screen. On a touch screen
    plotly took a swipe on a chart for a zoom, and the page did not move under the finger."""
    page = phone
    open_app(page, app_server, "preset=quick-look&steps=100")
    button(page, "Start").click()
    end = wait_progress(page, lambda p: p.state in ("finished", "failed", "stopped"), "the run to end", timeout=120)
    assert (end.step, end.state) == (100, "finished"), end.text
    assert exceptions(page) == 0
    assert_labels_fit(page)
    boxes = page.evaluate("""() => Array.from(document.querySelectorAll("[class*='st-key-CHART_BOX']"))
        .filter(b => b.querySelector('.js-plotly-plot'))
        .map(b => [b.querySelector('.js-plotly-plot')._fullLayout.width, b.parentElement.clientWidth,
                   b.parentElement.scrollWidth])""".replace("CHART_BOX", CHART_BOX))
    assert len(boxes) >= len(FIGURES), boxes  # and the preset's own figure
    for drawn, seen, scrolls in boxes:
        assert drawn >= CHART_MIN_WIDTH_PX and seen < PHONE_VIEWPORT["width"] and scrolls >= CHART_MIN_WIDTH_PX
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE_VIEWPORT["width"]
    # A swipe up on a chart's plot area scrolls the page; one to the left scrolls the chart's box.
    box = page.locator(f"[class*='st-key-{CHART_BOX}lab-chart-loss_accuracy']")
    box.scroll_into_view_if_needed()
    plot = box.locator(".nsewdrag").first
    main = "document.querySelector(\"[data-testid='stMain']\")"
    top = page.evaluate(f"() => {main}.scrollTop")
    swipe(page, plot, 0, -250)
    poll(lambda: page.evaluate(f"() => {main}.scrollTop"), lambda t: t > top + 100, 5, "the page to scroll up")
    box.scroll_into_view_if_needed()
    swipe(page, plot, -200, 0)
    poll(lambda: box.evaluate("b => b.parentElement.scrollLeft"), lambda x: x > 100, 5, "the chart's box to scroll")


def test_depth_growth_draws_a_diverged_twenty_layer_net_readably(app_server, page):
    """depth-growth's plain net diverges within a few steps, as the preset means it to, and
    shows 6 of its 20 layers. Seen in a screenshot: "plain diverged" written over the column
    title "hidden1", step ticks 0, 500, 1k, 1.5k, 2k crowded into 110 px panels, and BN's
    percentile bands drawn flat on plain's scale of +-3e18, whose tick labels grew the chart's
    left margin (plotly drew it twice at every refresh while bn trained on)."""
    open_app(page, app_server, "preset=depth-growth")
    button(page, "Start").click()
    steps = PRESETS["depth-growth"].comparison().steps
    end = wait_progress(page, lambda p: p.state in ("finished", "failed", "stopped"), "the run to end", timeout=180)
    assert (end.step, end.state) == (steps, "finished"), end.text
    expect(page.get_by_text(re.compile(r"plain diverged at step \d+"))).to_be_visible()
    assert "plain diverged" in [a["text"] for a in chart_annotations(page, "bands_layer")]
    spans = poll(lambda: chart_y_spans(page, "bands_layer"), lambda s: len(s) == 12, 30, "the band chart's 12 panels")
    assert min(spans) < 100 < 1e6 < max(spans), spans  # bn's rows on their own scale, plain's on its
    # Under the Bjorck chart, its numbers (claims.depth_growth_table): a row per measure, fitting a projector
    table = page.get_by_test_id("stMain").get_by_test_id("stDataFrame")
    expect(table).to_have_count(1)
    expect(table).to_contain_text("variance growth per layer")
    assert exceptions(page) == 0
    assert_labels_fit(page)
    assert_labels_fit_narrow(page)
    screenshot(page, "09-depth-growth")
