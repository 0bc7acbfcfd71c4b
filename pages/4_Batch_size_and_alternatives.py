"""Batch size and the alternatives: the small-batch sweep (BN vs LayerNorm, GroupNorm and
Batch Renorm at 2 .. 256 examples per batch), run on a worker thread per browser session."""

from __future__ import annotations

import threading

import streamlit as st

from bnviz import limits, presets
from bnviz.figures import sweep_figure
from bnviz.live import POOL
from bnviz.sweep import SweepJob, alive_sweeps
from ui.navigation import through_app

through_app()  # first: a direct visit runs this file without app.py (ui/navigation.py)

PRESET = presets.get("small-batch")
FIELD, VALUES = PRESET.sweep
PRESET_STEPS = next(iter(PRESET.comparison().variants.values())).steps
STEP_CHOICES = {"300 per run (a minute or less)": 300, "1,000 per run": 1_000,
                f"{PRESET_STEPS:,} per run (the preset's length, several minutes)": PRESET_STEPS}
NORM_LABELS = {"bn": "BatchNorm", "layer": "LayerNorm", "group": "GroupNorm", "renorm": "Batch Renorm"}


class SweepSlot:
    """This session's sweep: at most one SweepJob at a time; stopped when the tab closes."""

    def __init__(self):
        self.job: SweepJob | None = None
        self.steps: int | None = None
        self.message: str | None = None
        self._lock = threading.Lock()

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
            self.job, self.steps = SweepJob(PRESET, steps=steps, single_thread=True), steps
            self.job.start()

    def stop(self) -> None:
        with self._lock:
            if self.job is not None:
                self.job.stop()

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.state == "running"


@st.cache_resource(scope="session", on_release=lambda slot: slot.stop(), show_spinner=False)
def session_slot() -> SweepSlot:
    return SweepSlot()


def accuracy_table(rows: list[dict]) -> list[dict]:
    """One line per batch size: final test accuracy per norm (BN's train-mode one beside it)."""
    table: dict = {}
    for r in rows:
        line = table.setdefault(r["value"], {"batch size": r["value"]})
        name = NORM_LABELS.get(r["variant"], r["variant"])
        if r["status"] == "skipped":
            line[name] = "skipped"
        elif r["diverged"]:
            line[name] = f"diverged at step {r['diverged_at']}"
        else:
            line[name] = round(r["test_acc"], 3) if r["test_acc"] is not None else None
            if r["train_mode_acc"] is not None:
                line[f"{name} (train mode)"] = round(r["train_mode_acc"], 3)
    return list(table.values())


def measured_text(rows: list[dict], running: bool) -> str | None:
    """One sentence from the rows so far: smallest vs largest batch, BN vs GroupNorm."""
    acc = {(r["value"], r["variant"]): r["test_acc"] for r in rows if r["test_acc"] is not None}
    done = sorted({v for v, _ in acc})
    if len(done) < 2:
        return None
    lo, hi = done[0], done[-1]
    parts = [f"{NORM_LABELS.get(n, n)} {acc[(lo, n)]:.1%} → {acc[(hi, n)]:.1%}"
             for n in NORM_LABELS if (lo, n) in acc and (hi, n) in acc]
    when = "Measured here so far" if running else "Measured here"
    return f"{when}, final test accuracy at batch {lo} → batch {hi}: " + "; ".join(parts) + "."


st.title("Batch size and the alternatives")
st.markdown(f"**{PRESET.title}**  \n*Predict, then run.* {PRESET.note}")

slot = session_slot()
with st.sidebar:
    st.header("Batch-size sweep")
    steps_label = st.selectbox("Steps per run", list(STEP_CHOICES), key="bsweep.steps",
                               disabled=slot.running,
                               help=f"Every run ({len(VALUES)} batch sizes x 4 norms) trains this many steps.")

c = st.columns([1, 1, 5])
c[0].button("Start", icon=":material/play_arrow:", key="bsweep.start", type="primary", disabled=slot.running,
            on_click=lambda: slot.start(STEP_CHOICES[steps_label]))
c[1].button("Stop", icon=":material/stop:", key="bsweep.stop", disabled=not slot.running, on_click=slot.stop)
if slot.message:
    st.warning(slot.message, icon=":material/hourglass_top:")

left, right = st.columns([3, 1])
with right:
    st.subheader("What the papers report")
    st.markdown(
        "**Wu & He 2018** (GroupNorm, ResNet-50 on ImageNet): BN's validation error is 23.6 / 23.7 / 24.8 / "
        "27.3 / **34.7%** at 32 / 16 / 8 / 4 / 2 images per GPU; GroupNorm stays at about **24.1%** throughout. "
        "LayerNorm is GroupNorm with a single group.\n\n"
        "**Ioffe 2017** (Batch Renorm): with microbatches of 4, BN reaches 74.2% and Batch Renorm 76.5%.\n\n"
        "**Here** the setup is far smaller: a 3x100 ReLU MLP on 4,000 MNIST digits, the same number of "
        "steps and learning rate at every batch size (so small batches also see fewer examples). Look for "
        "the shape of the effect, not the papers' numbers."
    )
    st.markdown(
        "**Train vs eval mode.** Dashed lines evaluate BN with each test batch's own statistics (train mode); "
        "solid lines use the running averages (eval mode): with 2 to 4 examples per batch the two disagree, "
        "because a handful of examples estimates the mean and variance badly."
    )


with left:
    live = slot.running

    @st.fragment(run_every=1.0 if live else None)
    def progress_fragment() -> None:
        job = slot.job
        if job is None:
            st.info("Press **Start** to train every normalization at each batch size in turn; the chart fills "
                    "in as each batch size finishes.", icon=":material/info:")
            return
        done, total = job.progress
        state = {"running": "training", "finished": "finished", "stopped": "stopped",
                 "failed": "failed"}.get(job.state, job.state)
        st.progress(job.fraction, text=f"{done} / {total} batch sizes · {slot.steps:,} steps per run · {state}")
        if job.error:
            st.error(job.error, icon=":material/warning:")
        rows = job.rows
        if rows:
            st.plotly_chart(sweep_figure(rows, FIELD, log_x=True), key="bsweep.chart", width="stretch",
                            config={"displaylogo": False})
            st.caption("Final test accuracy after each run, per batch size (log scale). Dashed: BN and Batch "
                       "Renorm in train mode (batch statistics); × marks a run whose loss became NaN.")
            text = measured_text(rows, job.state == "running")
            if text:
                st.markdown(text)
            st.dataframe(accuracy_table(rows), hide_index=True, width="stretch")
        if live and job.state != "running":
            st.rerun(scope="app")  # the sweep ended: redraw once without the timer

    progress_fragment()
