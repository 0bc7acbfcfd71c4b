"""A sweep on a page: this session's SweepJob, its Start / Stop, and its results filling in
as each swept value finishes (the batch-size and learning-rate pages).

The job runs on its own thread (bnviz/sweep.py), and with BNVIZ_WORKER_MODE=process trains in a
child process driven from there: the page only reads its rows.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import streamlit as st

from bnviz import limits, presets
from bnviz.claims import accuracy_text, sweep_threshold
from bnviz.figures import field_title, sweep_figure
from bnviz.live import POOL, warm_workers
from bnviz.presets import Preset
from bnviz.sweep import SweepJob, SweepResult, alive_sweeps, preset_report
from ui.common import (changed_settings_ui, download_buttons, kept_files, link_settings_ui, once_per_click, show,
                       write_link)

log = logging.getLogger("bnviz.sweeps")


class SweepSlot:
    """This session's sweep of one preset: at most one SweepJob at a time; stopped when the tab closes."""

    def __init__(self, preset: Preset):
        self.preset = preset
        self.job: SweepJob | None = None
        self.steps: int | None = None
        self.message: str | None = None
        self._lock = threading.Lock()
        warm_workers()  # its job trains in processes on such a server: see there

    def start(self, steps: int) -> None:
        with self._lock:
            if self.job is not None and self.job.state == "running":
                return
            busy = POOL.active_count + alive_sweeps()
            cap = limits.current().max_workers
            if busy >= cap:
                self.message = (f"The server is training {busy} runs, its limit (BNVIZ_MAX_WORKERS={cap}): "
                                "try again in a minute.")
                return
            self.message = None
            self.job = SweepJob(self.preset, steps=steps, single_thread=True,
                                processes=limits.worker_mode() == "process")  # as the labs train
            self.steps = steps
            self.job.start()

    def stop(self) -> None:
        with self._lock:
            if self.job is not None:
                self.job.stop()

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.state == "running"


def _tab_closed(slot: SweepSlot) -> None:
    if slot.job is None:
        return  # the page was opened, nothing was started
    slot.stop()  # waits for the job's thread (SweepJob.stop joins it)
    # Read by the browser tests and by an operator: how many sweeps outlive their tabs.
    log.warning("bnviz: session closed; %s sweep stopped, %d sweeps alive", slot.preset.name, alive_sweeps())


@st.cache_resource(scope="session", on_release=_tab_closed, show_spinner=False)
def session_slot(preset_name: str) -> SweepSlot:
    return SweepSlot(presets.get(preset_name))


def preset_steps(preset: Preset) -> int:
    """Steps per run of the preset itself (every variant of a sweep preset has the same)."""
    return next(iter(preset.comparison().variants.values())).steps


def accuracy_table(rows: list[dict], field: str, labels: dict[str, str]) -> list[dict]:
    """One line per swept value: final test accuracy per variant (train-mode beside it where
    the norm has one), as text: one type per column, as Arrow wants for st.table."""
    table: dict = {}
    for r in rows:
        line = table.setdefault(r["value"], {field_title(field): f"{r['value']:g}"})
        name = labels.get(r["variant"], r["variant"])
        if r["status"] == "skipped":
            line[name] = "skipped"
        elif r["diverged"]:
            line[name] = f"diverged at step {r['diverged_at']}"
        else:
            line[name] = accuracy_text(r["test_acc"])
            if r["train_mode_acc"] is not None:
                line[f"{name} (train)"] = accuracy_text(r["train_mode_acc"])
    return list(table.values())


def controls_ui(slot: SweepSlot, prefix: str, step_choices: dict[str, int], header: str) -> None:
    """The sidebar's steps per run, and Start / Stop with the server's refusal under them."""
    values = slot.preset.sweep[1]
    with st.sidebar:
        st.header(header)
        steps_label = st.selectbox("Steps per run", list(step_choices), key=f"{prefix}.steps",
                                   disabled=slot.running,
                                   help=f"Every run ({len(values)} values x {len(slot.preset.variants)} "
                                        "variants) trains this many steps.")
    changed_settings_ui(slot.preset, slot.preset.comparison().with_all(steps=step_choices[steps_label]))
    row = st.container(horizontal=True)  # each button as wide as its label (ui.common.run_controls_ui)
    row.button("Start", icon=":material/play_arrow:", key=f"{prefix}.start", type="primary",
               disabled=slot.running, on_click=once_per_click(lambda: slot.start(step_choices[steps_label])))
    row.button("Stop", icon=":material/stop:", key=f"{prefix}.stop", disabled=not slot.running,
               on_click=once_per_click(slot.stop))
    if slot.message:
        st.warning(slot.message, icon=":material/hourglass_top:")


def results_ui(slot: SweepSlot, prefix: str, caption: str,
               summary: Callable[[list[dict], bool], str | None]) -> None:
    """Progress, the chart, ``summary(rows, running)`` and the table, redrawn every second
    while the sweep runs."""
    field = slot.preset.sweep[0]
    labels = slot.preset.comparison().labels()
    live = slot.running

    @st.fragment(run_every=1.0 if live else None)
    def results() -> None:
        job = slot.job
        if job is None:
            st.info("Press **Start** to train the comparison at each value in turn; the chart fills in as "
                    "each value finishes.", icon=":material/info:")
            return
        done, total = job.progress
        state = {"running": "training"}.get(job.state, job.state)
        st.progress(job.fraction, text=f"{done} / {total} {field_title(field)}s · "
                                       f"{slot.steps:,} steps per run · {state}")
        if job.error:
            st.error(job.error, icon=":material/warning:")
        rows = job.rows
        if rows:
            show(sweep_figure(rows, field, log_x=True, labels=labels), f"{prefix}.chart")
            st.caption(caption)
            text = summary(rows, job.state == "running")
            if text:
                st.markdown(text)
            # static, its headers wrapping: as a grid, seven columns scrolled two out of sight at 1024 px
            st.table(accuracy_table(rows, field, labels), hide_index=True)
        if live and job.state != "running":
            st.rerun(scope="app")  # the sweep ended: redraw once without the timer

    results()


def downloads_ui(slot: SweepSlot, prefix: str) -> None:
    """The sweep as the CLI writes it (sweep.csv, report.html) once it has ended: finished,
    stopped (the report says so) or failed with rows in."""
    job = slot.job
    ended = job is not None and job.state != "running" and bool(rows := job.rows)
    files = _sweep_files(job, rows, slot.preset, prefix) if ended else None
    download_buttons(prefix, ("Download CSV", "bnviz-sweep.csv"), ("Download HTML report", "bnviz-sweep-report.html"),
                     files, "Stop the sweep, or let it finish, to download it." if slot.running else None)


def _sweep_files(job: SweepJob, rows: list[dict], preset: Preset, prefix: str) -> tuple[bytes, bytes]:
    def build() -> tuple[str, str]:
        result = SweepResult(job.field, job.values, job.comparison.names, rows, complete=job.state == "finished")
        return result.to_csv(), preset_report(result, preset, sweep_threshold(rows), job.comparison)
    return kept_files(f"{prefix}.dl.files", job, (len(rows), job.state), build)


def sweep_page(title: str, preset: Preset, prefix: str, step_choices: dict[str, int], sidebar_header: str,
               papers: list[str], caption: str, summary: Callable[[list[dict], bool], str | None]) -> None:
    """A whole sweep page: the preset's "predict, then run" note, Start / Stop, the results,
    then what the papers report (``papers``: markdown paragraphs). The results take the
    page's whole width, as on Paper Figure 1: beside the papers, in three quarters of it, the
    chart and its legend were cramped on a 1024 px screen with the sidebar open."""
    st.title(title)
    st.markdown(f"**{preset.title}**  \n*Predict, then run.* {preset.note}")
    slot = session_slot(preset.name)
    # e.g. /Larger_learning_rates?steps=1000: the sweep's length in the address, for a slide
    link = {"steps": (f"{prefix}.steps", {f"{n}": label for label, n in step_choices.items()})}
    link_settings_ui(prefix, link)
    controls_ui(slot, prefix, step_choices, sidebar_header)
    write_link(link)
    results_ui(slot, prefix, caption, summary)
    st.subheader("What the papers report")
    for paragraph in papers:
        st.markdown(paragraph)
    st.subheader("Download")
    downloads_ui(slot, prefix)
