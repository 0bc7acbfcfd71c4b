"""Pieces every page shares: run controls, the status line, live charts and the live fragment."""

from __future__ import annotations

import time
import weakref
from typing import Callable

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from bnviz.config import Comparison
from bnviz.errors import BnvizError
from bnviz.figures import for_page
from bnviz.live import Lab
from bnviz.pacing import MIN_S, PACER
from bnviz.presets import Preset, changed_settings, note_for
from bnviz.report import to_html
from bnviz.runlog import RunSnapshot, to_csv


def link_settings_ui(prefix: str, settings: dict[str, tuple[str, dict[str, object]]],
                     defaults: dict[str, object] | None = None) -> None:
    """Page settings carried in the address, so that a link opens the page as it was set.

    ``settings``: query name -> (the widget's session key, {text in the link: widget value}).
    On the session's first run of the page the link's values go into the widgets (a value
    not allowed: one line naming it and what is allowed; the widget keeps its default);
    on every run the address is rewritten from the widgets, after they are drawn.
    ``defaults``: session key -> the widget's value where no link set it (the widgets take
    no ``value=``: Streamlit warns when one has both a default and a session value).
    """
    ss = st.session_state
    done = f"{prefix}.link_read"
    if done not in ss:
        ss[done] = []
        for name, (key, choices) in settings.items():
            raw = st.query_params.get(name)
            if raw is None:
                continue
            text = _choice(raw, choices)
            if text is not None:
                ss[key] = choices[text]
            else:
                ss[done].append(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    for key, value in (defaults or {}).items():
        ss.setdefault(key, value)
    for warning in ss[done]:
        st.warning(f"Link: {warning}; opened with the default", icon=":material/link:")


def _choice(raw: str, choices: dict[str, object]) -> str | None:
    """The choice a link's text names: as written, or the same number written otherwise (1.0 for 1)."""
    if raw in choices:
        return raw
    try:
        number = float(raw)
    except ValueError:
        return None
    return next((text for text in choices if _is_number(text) and float(text) == number), None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_link(settings: dict[str, tuple[str, dict[str, object]]]) -> None:
    """The address bar follows the widgets (``link_settings_ui``'s settings)."""
    query = {}
    for name, (key, choices) in settings.items():
        value = st.session_state.get(key)
        query.update({name: text for text, v in choices.items() if v == value})
    st.query_params.from_dict(query)


def once_per_click(action: Callable[..., None]) -> Callable[..., None]:
    """``action`` as the on_click of a button outside any fragment, run once per click.

    Chromium sends a click twice when a live fragment's timer fires in the same moment
    (Streamlit 1.67): the timer's fragment-only rerun carries the click's trigger as well,
    then the click's own full rerun follows, and Streamlit runs on_click in both (one Step
    took two steps, one Add would add two variants). The full rerun always comes, so a
    fragment-only run leaves the click to it. tests/test_clicks.py sends the two messages.
    """
    def on_click(*args, **kwargs) -> None:
        ctx = get_script_run_ctx()
        if ctx is not None and ctx.fragment_ids_this_run:
            return
        action(*args, **kwargs)
    return on_click


def changed_settings_ui(preset: Preset, comparison: Comparison) -> None:
    """Under a preset's note, what this page's run changes from it (presets.changed_settings)."""
    text = changed_settings(preset, comparison)
    if text:
        st.caption(text)


def run_controls_ui(lab: Lab, prefix: str):
    """Start / Pause / Step / Reset; returns a slot beside them for a one-line message.

    A row that wraps, each button as wide as its label: in fixed columns a 1024 px screen
    with the sidebar open (a classroom projector) cut the labels to "S", "P", "S", "R"."""
    row = st.container(horizontal=True, vertical_alignment="center")
    row.button("Start", icon=":material/play_arrow:", key=f"{prefix}.start", on_click=_guard,
               args=(lab.start, prefix), type="primary", disabled=lab.running)
    row.button("Pause", icon=":material/pause:", key=f"{prefix}.pause", on_click=_guard,
               args=(lab.pause, prefix), disabled=not lab.running)
    row.button("Step", icon=":material/skip_next:", key=f"{prefix}.step", on_click=_guard,
               args=(lab.step, prefix), help="one training step of every variant (pauses first)")
    row.button("Reset", icon=":material/restart_alt:", key=f"{prefix}.reset", on_click=_guard,
               args=(lab.reset, prefix), help="discard the run")
    slot = row.empty()  # after the buttons: a message there stands to their right
    err = st.session_state.pop(f"{prefix}.action_error", None)
    if err:
        st.error(err, icon=":material/warning:")
    return slot


@once_per_click
def _guard(action, prefix: str) -> None:
    try:
        action()
    except BnvizError as exc:
        st.session_state[f"{prefix}.action_error"] = str(exc)


# On a phone a chart's panels (three layers side by side, a row per variant) squeezed into
# ~360 px: titles ran into each other, ticks overlapped. Below 640 px of screen (where
# Streamlit stacks columns) each chart is drawn CHART_MIN_WIDTH_PX wide, as on a tablet, and
# scrolls sideways in its own box while the text around it still wraps to the screen.
# Streamlit sizes a chart to its container, so the width goes on the keyed container that
# ``show`` puts around each chart (class "st-key-" + its key).
CHART_BOX = "chart-box-"
CHART_MIN_WIDTH_PX = 680
# On a touch screen plotly's drag layer takes every swipe that starts on a plot (to zoom it),
# and charts cover most of a phone's screen: the page would not scroll under a finger on one.
# There swipes go through to the page (no drag-zoom or tap-hover on a touch screen; a mouse
# or a trackpad keeps both).
_PAGE_CSS = f"""<style>
@media (max-width: 640px) {{
  div:has(> [class*="st-key-{CHART_BOX}"]) {{ overflow-x: auto; }}
  [class*="st-key-{CHART_BOX}"] {{ min-width: {CHART_MIN_WIDTH_PX}px; }}
}}
@media (pointer: coarse) {{
  .js-plotly-plot .draglayer, .js-plotly-plot .draglayer * {{ pointer-events: none !important; }}
}}
</style>"""


def page_style() -> None:
    """The app's own CSS, once per script run (style-only HTML takes no room on the page)."""
    st.html(_PAGE_CSS)


def show(fig, key: str) -> None:
    """A chart as every page draws one: full width, no plotly logo in its toolbar."""
    with st.container(key=f"{CHART_BOX}{key}"):  # the box that scrolls on a phone (page_style)
        st.plotly_chart(fig, key=key, width="stretch", config={"displaylogo": False})


def chart(build: Callable[[RunSnapshot], object], snap: RunSnapshot, key: str) -> None:
    """One live chart, full width; built for the page (figures.for_page: the same JSON, a
    fraction of the server's time per refresh)."""
    show(for_page(build, snap), key)


def downloads_ui(lab: Lab, prefix: str, preset: Preset | None) -> None:
    """The run so far as a tidy CSV and as a self-contained HTML report (with ``preset``'s own
    figures), offered while the run stands still (paused, finished or stopped).

    The files are built here, in the page's full run, once per run and step, and stay
    referenced by this page until it next runs in full. Not on click (``data=callable``):
    Streamlit keeps a file built on click unreferenced, and any two script runs in the
    process (every live page's redraw is one) delete it, so with other pages training the
    click gave a cancelled download. While the run moves the buttons wait: a file built
    then would be stale at once (the charts redraw in a fragment; this part does not).
    """
    trainer = lab.trainer
    files = None if trainer is None or lab.live else _run_files(trainer, prefix, preset)
    download_buttons(prefix, ("Download CSV (tidy)", "bnviz-metrics.csv"),
                     ("Download HTML report", "bnviz-report.html"), files,
                     "Pause the run, or let it finish, to download it." if trainer is not None else None)


def download_buttons(prefix: str, csv: tuple[str, str], html: tuple[str, str], files: tuple[bytes, bytes] | None,
                     waiting: str | None) -> None:
    """A CSV and an HTML button side by side (``csv``, ``html``: label and file name) offering
    ``files``, built beforehand (see downloads_ui for why); None: both disabled, ``waiting``
    beneath (a disabled button shows no tooltip)."""
    data = files or (b"", b"")
    for col, (label, name), mime, body in zip(st.columns(2), (csv, html), ("text/csv", "text/html"), data):
        col.download_button(label, data=body, file_name=name, mime=mime, disabled=files is None, on_click="ignore",
                            key=f"{prefix}.dl.{name.rpartition('.')[2]}")
    if files is None and waiting:
        st.caption(waiting)


def _run_files(trainer, prefix: str, preset: Preset | None) -> tuple[bytes, bytes]:
    """(CSV, HTML report) of ``trainer``'s run as it stands."""
    snap = trainer.log.snapshot()
    title, extra = (f"bnviz: {preset.name}", preset.figures) if preset else ("bnviz run", ())

    def build() -> tuple[str, str]:  # only when the kept files are stale, not at every script run
        note = note_for(preset, trainer.comparison) if preset else None  # as the CLI's report of a preset
        return to_csv(snap), to_html(snap, title, note, extra)
    return kept_files(f"{prefix}.dl.files", trainer, (snap.step, trainer.state), build)


def kept_files(key: str, owner: object, stands: object, build: Callable[[], tuple[str, str]]) -> tuple[bytes, bytes]:
    """``build()``'s files, kept in the session under ``key`` and rebuilt only when ``owner``
    (a run, a sweep) or how it ``stands`` changed. Kept as bytes: Streamlit's file store keeps
    the very object it is given, so the session holds one copy (~6 MB for a report, plotly.js
    inline), not two."""
    kept = st.session_state.get(key)
    if kept is None or kept[0]() is not owner or kept[1] != stands:
        # A weak reference: a run replaced since (Reset, Start) is not kept alive by its files.
        kept = (weakref.ref(owner), stands, *(text.encode() for text in build()))
        st.session_state[key] = kept
    return kept[2], kept[3]


def status_ui(lab: Lab, snap: RunSnapshot | None) -> None:
    place = lab.queue_place
    if place is not None:
        st.info(f"Queued: {place} ahead of you. The server trains {lab.pool.capacity()} runs at once.",
                icon=":material/hourglass_top:")
    if lab.message:
        st.warning(lab.message, icon=":material/stop_circle:")
    if snap is None:
        return
    total = lab.trainer.total_steps if lab.trainer else 1
    state = {"running": "training", "paused": "paused" if not lab.running else "waiting"}.get(snap.state, snap.state)
    every = lab.refresh_s
    pace = f" · charts every {every:g} s (paced to the server's load)" if every and every > MIN_S and lab.active else ""
    st.progress(min(snap.step / max(total, 1), 1.0),
                text=f"step {snap.step:,} / {total:,} · {snap.steps_per_s:,.0f} steps/s · {state}{pace}")
    for v in snap.variants.values():
        if v.status == "diverged":
            st.error(f"{v.name} diverged at step {v.diverged_at} (loss became NaN or infinite); "
                     "the others keep training.", icon=":material/error:")
        elif v.status == "failed":
            st.error(v.message or "training failed", icon=":material/warning:")
    for n in snap.notices:
        st.warning(n, icon=":material/info:")


def live_fragment(lab: Lab, draw: Callable[[RunSnapshot], None], empty_hint: str | None = None) -> None:
    """Status and ``draw(snapshot)``, re-run on a timer while the lab trains or waits.

    The script itself returns at once; only this fragment re-runs, so a rerun never
    queues behind training. The timer's interval comes from the process-wide pacer
    (bnviz/pacing.py): 0.5 s for a few pages, longer when many pages redraw at once, so
    the redraws cannot starve the training. A change of interval, and the end of
    training, re-run the page once (a fragment's timer is set by the full run).
    """
    live = lab.live
    lab.refresh_s = PACER.interval(lab.refresh_s) if live else None

    @st.fragment(run_every=lab.refresh_s)
    def fragment() -> None:
        started = time.thread_time()
        snap = lab.refresh()
        status_ui(lab, snap)
        if snap is not None and snap.step > 0:
            draw(snap)
        elif lab.queue_place is None:
            st.info(empty_hint or "Press **Start** to train every variant side by side on the same batches, "
                    "or **Step** to take one step at a time.", icon=":material/info:")
        if not live:
            return
        if not lab.live:
            PACER.forget(id(lab))
            st.rerun(scope="app")  # training ended or settled: redraw once without the timer
        # What this redraw cost the server (this thread's CPU: building the charts and their
        # messages); the websocket send on the event loop is not in it.
        PACER.record(id(lab), time.thread_time() - started)
        if PACER.interval(lab.refresh_s) != lab.refresh_s:
            st.rerun(scope="app")  # the server's load moved a whole step: take the new interval

    fragment()
