"""Ioffe & Szegedy 2015, Figure 1, reproduced live: test accuracy with and without BN, and
the 15/50/85th percentiles of one last-layer sigmoid's input over training."""

import streamlit as st

from bnviz import presets
from bnviz.claims import figure1_table
from bnviz.figures import paper_figure1
from bnviz.live import session_lab
from ui.common import (changed_settings_ui, chart, downloads_ui, link_settings_ui, live_fragment, run_controls_ui,
                       write_link)
from ui.navigation import through_app

through_app()  # first: a direct visit runs this file without app.py (ui/navigation.py)

PRESET = presets.get("paper-fig1")
STEP_CHOICES = {"5,000 (a minute or two)": 5_000, "20,000": 20_000, "50,000 (the paper's length)": 50_000}
DATASETS = ["mnist", "mnist-mini"]
LRS = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
# e.g. /Paper_Figure_1?steps=50000&dataset=mnist&lr=0.5: the paper's whole run, for a slide
LINK = {"steps": ("fig1.steps", {str(n): label for label, n in STEP_CHOICES.items()}),
        "dataset": ("fig1.dataset", {d: d for d in DATASETS}),
        "lr": ("fig1.lr", {f"{lr:g}": lr for lr in LRS})}

st.title("Paper Figure 1")
st.markdown(f"**{PRESET.title}**  \n*Predict, then run.* {PRESET.note}")

link_settings_ui("fig1", LINK, defaults={"fig1.lr": 0.5})  # 0.5: bnviz's choice
with st.sidebar:
    st.header("Figure 1 run")
    steps_label = st.selectbox("Steps", list(STEP_CHOICES), key="fig1.steps")
    dataset = st.selectbox("Dataset", DATASETS, key="fig1.dataset",
                           help="mnist is downloaded once (falls back to the bundled 5,000-digit subset offline)")
    lr = st.select_slider("Learning rate", LRS, key="fig1.lr",
                          help="The paper gives none; 0.5 is bnviz's choice (docs/EXPERIMENTS.md)")
write_link(LINK)  # the address bar is a link to this page as set

lab = session_lab("fig1")
eval_every = max(STEP_CHOICES[steps_label] // 100, 50)
chosen = PRESET.comparison().with_all(steps=STEP_CHOICES[steps_label], dataset=dataset, lr=lr, eval_every=eval_every)
lab.configure(chosen)
changed_settings_ui(PRESET, chosen)
run_controls_ui(lab, "fig1")


def draw(snap) -> None:  # in the live fragment
    chart(paper_figure1, snap, "fig1.chart")
    st.caption("(a) test accuracy every evaluation; (b, c) the 15th, 50th and 85th percentile of the input "
               "to one tracked sigmoid of the last hidden layer, over the batch, at every step.")
    st.subheader("Measured")
    st.dataframe(figure1_table(snap), hide_index=True, width="stretch")
    st.caption("Start/end values average the first and last 1% of training. The range is max − min of the "
               "unit's median over the whole run: how far its distribution wandered.")


# The chart takes the page's whole width and the claims follow the measurements: beside the
# chart, in a quarter of the width, they left its three panels ~420 px on a 1024 px screen with
# the sidebar open (a classroom projector), their titles and ticks running together.
live_fragment(lab, draw)
st.subheader("What the paper claims")
st.markdown(
    "- (a) With BN the network trains faster and reaches higher test accuracy.\n"
    "- (b) Without BN the distribution of a last-layer sigmoid's input changes a lot over training, "
    "in mean and in spread.\n"
    "- (c) With BN it stays much more stable.\n\n"
    "Later work (see *Does BN really reduce covariate shift?*) asks whether (b, c) is *why* (a) happens."
)
st.subheader("Download")
downloads_ui(lab, "fig1", PRESET)
