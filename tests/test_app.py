"""The live lab's script under Streamlit's AppTest: widgets, links and refused values.

AppTest runs app.py in-process without a browser; it runs no timers and the tests press
no Start, so no training worker starts. ``.streamlit/config.toml`` hides exception details
from students (client.showErrorDetails = "none"); these tests turn them back on so that a
failure shows the real message.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import streamlit
from streamlit.testing.v1 import AppTest

from bnviz.presets import PRESETS
from ui import navigation

APP = str(Path(__file__).resolve().parents[1] / "app.py")  # from_file resolves relative to this file
DEFAULT = "quick-look"


@pytest.fixture(autouse=True)
def _full_error_details():
    old = streamlit.config.get_option("client.showErrorDetails")
    streamlit.config.set_option("client.showErrorDetails", "full")
    yield
    streamlit.config.set_option("client.showErrorDetails", old)


def run_app(page: str | None = None, **query: str) -> AppTest:
    """app.py at ``page`` (its script under pages/; the live lab by default), opened with ``query``."""
    at = AppTest.from_file(APP, default_timeout=30)
    for key, value in query.items():
        at.query_params[key] = value
    if page is not None:
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def cmp(at: AppTest):
    return at.session_state["lab.cmp"]


def variant_rows(at: AppTest) -> list[str]:
    """Variant names as the sidebar lists them (one norm selectbox per variant)."""
    return [s.key.split(".")[2] for s in at.sidebar.selectbox if s.key.endswith(".norm")]


def link_warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if w.value.startswith("Link:")]


def test_app_runs_without_exception_and_shows_the_controls():
    at = run_app()
    assert at.title[0].value == "bnviz · live lab"
    assert [b.label for b in at.button if b.key in ("lab.start", "lab.pause", "lab.step", "lab.reset")] == \
        ["Start", "Pause", "Step", "Reset"]
    assert not at.error and not link_warnings(at)
    assert cmp(at) == PRESETS[DEFAULT].comparison()
    assert any(PRESETS[DEFAULT].note in m.value for m in at.markdown)


def test_preset_selectbox_lists_every_preset():
    at = run_app()
    pick = at.sidebar.selectbox(key="lab.w.preset_pick")
    assert pick.value == DEFAULT
    names = [opt.split(":")[0] for opt in pick.options]
    assert names == list(PRESETS) + ["(custom)"]


def test_choosing_another_preset_changes_the_variants():
    at = run_app()
    assert variant_rows(at) == ["plain", "bn"]
    at.sidebar.selectbox(key="lab.w.preset_pick").set_value("noisy-bn").run()
    assert not at.exception
    assert variant_rows(at) == ["plain", "bn", "noisy"]
    assert cmp(at) == PRESETS["noisy-bn"].comparison()
    assert at.sidebar.selectbox(key="lab.w.noisy.norm").value == "noisy_batch"
    assert any(PRESETS["noisy-bn"].note in m.value for m in at.markdown)
    assert dict(at.query_params) == {"preset": "noisy-bn"}


def test_query_params_set_the_comparison():
    at = run_app(preset=DEFAULT, lr="0.1", seed="7", **{"bn.placement": "after"})
    assert at.sidebar.select_slider(key="lab.w.lr").value == 0.1
    assert at.sidebar.number_input(key="lab.w.seed").value == 7
    assert at.sidebar.selectbox(key="lab.w.bn.placement").value == "after"
    c = cmp(at)
    assert {n: (v.lr, v.seed) for n, v in c.variants.items()} == {"plain": (0.1, 7), "bn": (0.1, 7)}
    assert c.variants["bn"].placement == "after" and c.variants["plain"].placement == "before"
    assert not link_warnings(at)
    # The address bar is the share link: the same comparison, written minimally.
    assert dict(at.query_params) == {"preset": DEFAULT, "lr": "0.1", "seed": "7", "bn.placement": "after"}


@pytest.mark.parametrize("field, value", [("lr", "abc"), ("depth", "-3"), ("bogus", "1"), ("preset", "nope"),
                                          ("bn.lr", "abc"), ("bn.depth", "-3"), ("batch_size", "1")])
def test_malformed_query_param_warns_naming_the_field_and_opens_with_defaults(field, value):
    at = run_app(**{field: value})
    warnings = link_warnings(at)
    # batch_size=1 is refused by bn alone (norm=batch), so the warning names it
    named = "bn.batch_size" if field == "batch_size" else field
    assert len(warnings) == 1 and warnings[0].startswith(f"Link: {named}:"), warnings
    assert cmp(at) == PRESETS[DEFAULT].comparison()


def test_changing_depth_updates_the_comparison():
    at = run_app()
    at.sidebar.number_input(key="lab.w.depth").set_value(5).run()
    assert not at.exception and not at.error
    assert {n: v.depth for n, v in cmp(at).variants.items()} == {"plain": 5, "bn": 5}
    assert at.query_params["depth"] == "5"


def test_adding_and_removing_variants_changes_the_comparison_but_never_empties_it():
    at = run_app()
    at.sidebar.selectbox(key="lab.w.add_norm").set_value("layer").run()
    at.sidebar.button(key="lab.w.add").click().run()
    assert not at.exception and not at.error
    assert {n: v.norm for n, v in cmp(at).variants.items()} == {"plain": "none", "bn": "batch", "layer": "layer"}
    at.sidebar.selectbox(key="lab.w.remove_pick").set_value("bn").run()
    at.sidebar.button(key="lab.w.remove").click().run()
    assert list(cmp(at).variants) == ["plain", "layer"]
    assert at.query_params["variants"] == "plain,layer"
    at.sidebar.selectbox(key="lab.w.remove_pick").set_value("plain").run()
    at.sidebar.button(key="lab.w.remove").click().run()
    assert list(cmp(at).variants) == ["layer"]
    assert at.sidebar.button(key="lab.w.remove").disabled  # the last variant stays


def test_ghost_batch_size_shows_only_while_a_variant_uses_ghost_bn_and_sets_its_ghost_batches():
    at = run_app()
    assert not any(w.key == "lab.w.ghost_size" for w in at.sidebar.number_input)
    at.sidebar.selectbox(key="lab.w.bn.norm").set_value("ghost_batch").run()
    assert not at.exception and not at.error
    assert cmp(at).variants["bn"].norm == "ghost_batch"
    assert "A batch of 60 splits into 3 ghost batches of 20." in [c.value for c in at.sidebar.caption]
    at.sidebar.number_input(key="lab.w.ghost_size").set_value(12).run()
    assert not at.exception and not at.error
    assert cmp(at).variants["bn"].ghost_size == 12 and at.query_params["ghost_size"] == "12"
    assert "A batch of 60 splits into 5 ghost batches of 12." in [c.value for c in at.sidebar.caption]
    at.sidebar.number_input(key="lab.w.ghost_size").set_value(40).run()  # one ghost batch: the sidebar says so
    assert any(c.value.startswith("A batch of 60 is one ghost batch: Ghost BN is BN here") for c in at.sidebar.caption)
    at.sidebar.number_input(key="lab.w.ghost_size").set_value(16).run()
    at.sidebar.number_input(key="lab.w.batch_size").set_value(500).run()  # parts within one row, as tensor_split
    assert "A batch of 500 splits into 31 ghost batches: 4 of 17, 27 of 16." in [c.value for c in at.sidebar.caption]
    at.sidebar.selectbox(key="lab.w.bn.norm").set_value("batch").run()
    assert not any(w.key == "lab.w.ghost_size" for w in at.sidebar.number_input)


def test_refused_change_shows_the_error_and_keeps_the_comparison():
    at = run_app()
    at.sidebar.number_input(key="lab.w.width").set_value(10).run()
    before = cmp(at)
    assert before.variants["bn"].width == 10 and not at.error
    # Group norm with the default 4 groups cannot split 10 units: the engine refuses it.
    at.sidebar.selectbox(key="lab.w.bn.norm").set_value("group").run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("groups:") and "width (10)" in errors[0], errors
    assert cmp(at) == before  # untouched: bn still uses batch norm
    assert "bn.norm" not in at.query_params


def test_after_a_refused_value_the_widgets_show_the_comparison_in_force():
    """A refused value does not linger in its widget while the run uses the old one.

    Regression test: ui/lab.py once left 'group' in the bn norm selectbox (and the stale
    error 'groups: must divide width (10)') after width 12 was accepted, while bn went on
    training with batch norm.
    """
    at = run_app()
    at.sidebar.number_input(key="lab.w.width").set_value(10).run()
    at.sidebar.selectbox(key="lab.w.bn.norm").set_value("group").run()
    assert at.sidebar.selectbox(key="lab.w.bn.norm").value == "batch" == cmp(at).variants["bn"].norm
    at.sidebar.number_input(key="lab.w.width").set_value(12).run()
    assert not at.exception
    assert at.sidebar.selectbox(key="lab.w.bn.norm").value == "batch" == cmp(at).variants["bn"].norm
    assert not at.error, [e.value for e in at.error]  # the refusal was about width 10


SUB_PAGES = [(target, title) for target, title, _ in navigation.PAGES if isinstance(target, str)]


@pytest.mark.parametrize("target,title", SUB_PAGES, ids=[t for _, t in SUB_PAGES])
def test_every_page_runs_without_exception_under_its_sidebar_title(target, title):
    """AppTest starts each run as a server does before anyone opened the app's root (with
    Streamlit's pages/ handling on), so this also takes ui.navigation.through_app's reroute;
    tests/test_deep_links.py checks the layout and sidebar that result, in a browser."""
    at = run_app(target)
    assert at.title[0].value == title


FIG1 = "pages/1_Paper_Figure_1.py"


def test_paper_figure_1_link_opens_the_page_as_set_and_the_address_follows_the_widgets():
    at = run_app(FIG1, steps="50000", dataset="mnist-mini", lr="1.0")  # 1.0 names the choice 1
    assert at.sidebar.selectbox(key="fig1.steps").value.startswith("50,000")
    assert at.sidebar.selectbox(key="fig1.dataset").value == "mnist-mini"
    assert at.sidebar.select_slider(key="fig1.lr").value == 1.0
    assert not link_warnings(at)
    assert dict(at.query_params) == {"steps": "50000", "dataset": "mnist-mini", "lr": "1"}
    at.sidebar.select_slider(key="fig1.lr").set_value(0.2).run()
    assert dict(at.query_params)["lr"] == "0.2"


def test_paper_figure_1_bad_link_values_warn_naming_the_field_and_open_with_the_defaults():
    at = run_app(FIG1, steps="7", dataset="x", lr="nan")
    assert link_warnings(at) == [
        "Link: steps must be one of 5000, 20000, 50000; got '7'; opened with the default",
        "Link: dataset must be one of mnist, mnist-mini; got 'x'; opened with the default",
        "Link: lr must be one of 0.05, 0.1, 0.2, 0.5, 1, 2; got 'nan'; opened with the default"]
    assert dict(at.query_params) == {"steps": "5000", "dataset": "mnist", "lr": "0.5"}


ICS = "pages/3_Does_BN_reduce_covariate_shift.py"


def test_covariate_shift_page_link_opens_the_page_as_set_and_the_address_follows_the_widgets():
    at = run_app(ICS, steps="10000", every="50")
    assert at.sidebar.select_slider(key="ics.steps").value == 10_000
    assert at.sidebar.select_slider(key="ics.every").value == 50
    assert not link_warnings(at) and not at.exception
    assert dict(at.query_params) == {"steps": "10000", "every": "50"}
    at.sidebar.select_slider(key="ics.every").set_value(250).run()
    assert dict(at.query_params) == {"steps": "10000", "every": "250"}


def test_covariate_shift_page_bad_link_value_warns_naming_the_field_and_opens_with_the_default():
    at = run_app(ICS, every="7")
    assert link_warnings(at) == ["Link: every must be one of 25, 50, 100, 250; got '7'; opened with the default"]
    assert dict(at.query_params) == {"steps": "3000", "every": "100"}


@pytest.mark.parametrize("page,prefix", [("pages/4_Batch_size_and_alternatives.py", "bsweep"),
                                         ("pages/5_Larger_learning_rates.py", "lrsweep")])
def test_a_sweep_page_link_sets_the_steps_per_run_and_the_address_follows(page, prefix):
    at = run_app(page, steps="1000")
    assert at.sidebar.selectbox(key=f"{prefix}.steps").value.startswith("1,000 per run")
    assert not link_warnings(at) and not at.exception
    assert dict(at.query_params) == {"steps": "1000"}
    assert run_app(page, steps="12").query_params["steps"] == "300"  # with a warning, at the default


def changed_settings(at: AppTest) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith("This run differs from the note")]


def test_a_page_that_runs_a_preset_otherwise_than_its_note_says_so_under_the_note():
    """Paper Figure 1's note gives the paper's 50,000 steps with an evaluation every 500; the page
    opens at 5,000 with one every 50, and once said nothing of it."""
    at = run_app(FIG1)
    assert changed_settings(at) == ["This run differs from the note: 5,000 instead of 50,000 steps; "
                                    "test accuracy every 50 instead of 500 steps."]
    at.sidebar.select_slider(key="fig1.lr").set_value(0.2).run()
    assert "differs from the note: lr 0.2 instead of 0.5; 5,000 instead of 50,000 steps" in changed_settings(at)[0]
    assert changed_settings(run_app(FIG1, steps="50000")) == []  # the paper's run, as the note says
    assert changed_settings(run_app(ICS)) == []
    assert changed_settings(run_app(ICS, every="25")) == [
        "This run differs from the note: probes every 25 instead of 100 steps."]
    lab = run_app()  # the live lab: quick-look as its note says, then with a change of depth
    assert changed_settings(lab) == []
    lab.sidebar.number_input(key="lab.w.depth").set_value(5).run()
    assert changed_settings(lab) == ["This run differs from the note: depth 5 instead of 3."]
    sweep = "pages/5_Larger_learning_rates.py"
    assert changed_settings(run_app(sweep)) == ["This run differs from the note: 300 instead of 1,000 steps."]
    assert changed_settings(run_app(sweep, steps="1000")) == []


def _chart_ys(at: AppTest) -> list[list[np.ndarray]]:
    """Per chart of the page, in page order, each trace's y as plotly.js receives it (typed arrays)."""
    return [[np.frombuffer(base64.b64decode(t["y"]["bdata"]), dtype=t["y"]["dtype"]) if "bdata" in t["y"]
             else np.asarray(t["y"], dtype=np.float64) for t in json.loads(chart.proto.spec)["data"]]
            for chart in at.get("plotly_chart")]


def test_bn_step_by_step_draws_each_row_through_bn_and_in_both_modes_following_the_sliders():
    at = run_app("pages/2_BN_step_by_step.py")
    rows = 5  # the page's default mini-batch
    forward, modes, _ = _chart_ys(at)
    assert len(forward) == len(modes) == 3 * rows
    x1 = np.array([1.0, 2.0, 3.0, 4.0, 6.0])  # feature 1 of the default batch
    x_hat = (x1 - x1.mean()) / np.sqrt(x1.var() + 1e-5)
    np.testing.assert_allclose([t[1] for t in forward[:rows]], x_hat, rtol=1e-12)
    np.testing.assert_allclose([t[2] for t in forward[:rows]], x_hat, rtol=1e-12)  # γ = 1, β = 0
    np.testing.assert_allclose([t[0] for t in modes[:rows]], x_hat, rtol=1e-12)  # train mode is y
    at.sidebar.slider(key="step.gamma0").set_value(2.0)
    at.sidebar.slider(key="step.beta0").set_value(-1.0)
    at.slider(key="step.momentum").set_value(1.0).run()  # the running statistics are this batch's
    forward, modes, _ = _chart_ys(at)
    np.testing.assert_allclose([t[2] for t in forward[:rows]], 2.0 * x_hat - 1.0, rtol=1e-12)
    # eval mode divides by the unbiased variance, m / (m - 1) times the batch's
    unbiased = (x1 - x1.mean()) / np.sqrt(x1.var() * rows / (rows - 1) + 1e-5)
    np.testing.assert_allclose([t[1] for t in modes[:rows]], 2.0 * unbiased - 1.0, rtol=1e-12)


def test_bn_step_by_step_draws_ghost_batches_each_normalized_alone_and_one_ghost_as_bn():
    at = run_app("pages/2_BN_step_by_step.py")
    x1 = np.array([1.0, 2.0, 3.0, 4.0, 6.0])  # feature 1 of the default batch: ghosts of rows 0-2 and 3-4

    def normalized(v):
        return (v - v.mean()) / np.sqrt(v.var() + 1e-5)
    *_, ghost = _chart_ys(at)
    assert len(ghost) == 3 * 5  # a line per row and feature
    np.testing.assert_allclose([t[1] for t in ghost[:5]], normalized(x1), rtol=1e-12)  # BN: the whole batch
    np.testing.assert_allclose([t[2] for t in ghost[:5]], np.concatenate([normalized(x1[:3]), normalized(x1[3:])]),
                               rtol=1e-12)
    assert at.dataframe[-1].value.index[0] == "μ, ghost 1 (rows 0–2)"
    at.slider(key="step.ghost_size").set_value(3).run()  # 5 // 3 = 1: one ghost batch, which is BN
    *_, ghost = _chart_ys(at)
    np.testing.assert_allclose([t[2] for t in ghost[:5]], [t[1] for t in ghost[:5]], rtol=1e-12)
    assert not at.exception
