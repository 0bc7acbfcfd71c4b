"""Widgets of the live lab: each ``*_ui`` draws one part of the page and returns nothing
the engine needs to know about Streamlit. State lives under ``lab.*`` session keys.

The source of truth is the session's Lab (``lab.comparison``), mirrored in
``st.session_state["lab.cmp"]`` for the widgets. Widgets show it;
their callbacks build a new comparison and hand it to the session's Lab, which applies a
learning-rate change live and restarts (same seed) on anything structural. A value the
engine refuses leaves the comparison (and the run) untouched and shows one line under
the widget that caused it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import streamlit as st

from bnviz import presets, share
from bnviz.config import (
    ACTIVATIONS,
    FIELD_BY_NAME,
    INITS,
    MODELS,
    NORM_NAMES,
    NORMS,
    OPTIMIZERS,
    PLACEMENTS,
    Comparison,
)
from bnviz.dataset_names import DATASETS
from bnviz.errors import BnvizError
from bnviz.figures import FIGURES, preset_figures
from bnviz.limits import current as current_limits
from bnviz.live import SPEEDS, Lab, session_lab
from bnviz.norms import ghost_sizes
from bnviz.trainer import resolve_device
from ui.common import changed_settings_ui, chart, downloads_ui, live_fragment, once_per_click, run_controls_ui

LR_GRID = [round(m * 10.0 ** e, 6) for e in range(-4, 2) for m in (1, 2, 5)] + [100.0]
# Short enough for a variant's row in the sidebar (normalization beside its placement).
NORM_LABELS = {**NORM_NAMES, "none": "none", "batch_renorm": "Renorm"}
VARIANT_NAMES = {"none": "plain", "batch": "bn", "layer": "layer", "group": "group",
                 "batch_renorm": "renorm", "noisy_batch": "noisy", "ghost_batch": "ghost"}
CUSTOM = "(custom)"


# state ----------------------------------------------------------------------------------------
def page() -> None:
    """The live lab, the app's first page."""
    lab = init_state()
    sidebar_ui()
    header_ui(lab)
    controls_ui(lab)
    live_ui(lab)
    share_ui(lab)


def init_state() -> Lab:
    """First run of a session: read the link; every run: the session's Lab with the comparison."""
    ss = st.session_state
    first_run = "lab.cmp" not in ss
    if first_run:
        cmp, preset, warnings = share.from_query(st.query_params.to_dict())
        ss["lab.cmp"], ss["lab.preset"], ss["lab.link_warnings"] = cmp, preset, warnings
        ss["lab.errors"] = {}
    lab = session_lab()
    if first_run or lab.comparison is None:
        lab.configure(ss["lab.cmp"])
    elif ss["lab.cmp"] != lab.comparison:
        # The Lab outlives reruns and is only changed by the callbacks below, so it is the
        # record of what was accepted. A session-state write from a callback can be lost when
        # a rerun is interrupted by the next one (Streamlit's fast reruns: off in
        # .streamlit/config.toml, but an operator may turn them on); re-configuring the Lab from
        # that stale copy would silently undo the user's change and restart the run.
        ss["lab.cmp"] = lab.comparison
        _resync_widgets()
    return lab


def _apply(field: str, make: "callable") -> None:
    """Build the next comparison with ``make(current)``; keep the old one if the engine refuses."""
    ss = st.session_state
    try:
        new = make(ss["lab.cmp"])
        session_lab().configure(new)
        ss["lab.cmp"] = new
        ss["lab.errors"].clear()  # an accepted change supersedes any refused one
    except BnvizError as exc:
        ss["lab.errors"] = {field: str(exc)}
        _resync_widgets()  # the widgets show the comparison in force, not the refused value
        lab = session_lab()
        if lab.comparison != ss["lab.cmp"]:  # refused while restarting (e.g. batch > dataset)
            lab.configure(ss["lab.cmp"])


def _field_error(field: str) -> None:
    msg = st.session_state["lab.errors"].get(field)
    if msg:
        st.error(msg, icon=":material/warning:")


def _shared_widget(kind: str, field: str, label: str, **kw: Any) -> None:
    """A widget bound to one field of every variant."""
    key = f"lab.w.{field}"
    value = getattr(next(iter(st.session_state["lab.cmp"].variants.values())), field)
    if key not in st.session_state:
        st.session_state[key] = value

    def on_change() -> None:
        _apply(field, lambda c: c.with_all(**{field: st.session_state[key]}))

    help_text = FIELD_BY_NAME[field].help
    widget = {"select": st.selectbox, "number": st.number_input, "slider": st.select_slider}[kind]
    widget(label, key=key, on_change=on_change, help=help_text, **kw)
    _field_error(field)


def _resync_widgets() -> None:
    """Forget the field widgets' values; they re-read the comparison on the next run."""
    for key in [k for k in st.session_state if str(k).startswith("lab.w.")]:
        rest = str(key)[len("lab.w."):]
        if rest in FIELD_BY_NAME or rest.rpartition(".")[2] in ("norm", "placement"):
            del st.session_state[key]


def _reset_widgets() -> None:
    for key in [k for k in st.session_state if str(k).startswith("lab.w.")]:
        del st.session_state[key]


def _on_preset() -> None:
    ss = st.session_state
    name = ss["lab.w.preset_pick"]
    if name == CUSTOM:
        return
    ss["lab.preset"] = name
    _reset_widgets()
    ss["lab.w.preset_pick"] = name
    _apply("preset", lambda _: presets.get(name).comparison())


# sidebar ---------------------------------------------------------------------------------------
def sidebar_ui() -> None:
    ss = st.session_state
    lim = current_limits()
    with st.sidebar:
        st.header("Experiment")
        names = list(presets.PRESETS)
        if "lab.w.preset_pick" not in ss:
            ss["lab.w.preset_pick"] = ss["lab.preset"] if ss["lab.preset"] in names else CUSTOM
        st.selectbox("Preset", names + [CUSTOM], key="lab.w.preset_pick", on_change=_on_preset,
                     format_func=lambda n: n if n == CUSTOM else f"{n}: {presets.PRESETS[n].title.split(':')[0]}",
                     help="Published setups; changing any control below keeps the preset as the starting point.")
        _field_error("preset")
        variants_ui()
        st.header("Network")
        _shared_widget("select", "dataset", "Dataset", options=DATASETS)
        _shared_widget("select", "model", "Model", options=MODELS)
        c1, c2 = st.columns(2)
        with c1:
            _shared_widget("number", "depth", "Hidden layers", min_value=1, max_value=lim.max_depth, step=1)
        with c2:
            _shared_widget("number", "width", "Width", min_value=1, max_value=lim.max_width, step=1)
        _shared_widget("select", "activation", "Activation", options=ACTIVATIONS)
        st.header("Training")
        _shared_widget("slider", "lr", "Learning rate (log scale)", options=_lr_options(),
                       format_func=lambda v: f"{v:g}")
        _shared_widget("select", "optimizer", "Optimizer", options=OPTIMIZERS)
        c1, c2 = st.columns(2)
        with c1:
            _shared_widget("number", "batch_size", "Batch size", min_value=1, max_value=lim.max_batch, step=1)
        with c2:
            _shared_widget("number", "steps", "Steps", min_value=1, max_value=lim.max_steps, step=500)
        c1, c2 = st.columns(2)
        with c1:
            _shared_widget("select", "init", "Init", options=INITS)
        with c2:
            _shared_widget("number", "init_scale", "Init scale", min_value=1e-4, max_value=10.0, step=0.05,
                           format="%.3g")
        c1, c2 = st.columns(2)
        with c1:
            _shared_widget("number", "seed", "Seed", min_value=0, max_value=2**31 - 1, step=1)
        with c2:
            _shared_widget("select", "device", "Device", options=_device_options())
        st.select_slider("Steps per refresh", options=list(SPEEDS), key="lab.w.speed_pick",
                         value=st.session_state.get("lab.w.speed_pick", "max"),
                         help="Slow motion for a lecture: how many steps run between two chart refreshes "
                              "(twice a second); max trains as fast as the server allows.")


def _lr_options() -> list[float]:
    lr = next(iter(st.session_state["lab.cmp"].variants.values())).lr
    return sorted(set(LR_GRID) | {lr})


def _device_options() -> list[str]:
    opts = ["auto", "cpu"]
    for dev in ("cuda", "mps"):
        if resolve_device(dev)[1] is None:
            opts.append(dev)
    current = next(iter(st.session_state["lab.cmp"].variants.values())).device
    return opts if current in opts else opts + [current]


def variants_ui() -> None:
    """One row per variant: its normalization and placement; add or remove variants."""
    ss = st.session_state
    cmp: Comparison = ss["lab.cmp"]
    st.subheader("Variants", help="Each variant's normalization, and where it sits: before or after the "
                                  "nonlinearity. Every variant trains on the same batches from the same seed.")
    for name, cfg in cmp.variants.items():
        c1, c2 = st.columns([5.5, 4.5])
        with c1:
            key = f"lab.w.{name}.norm"
            if key not in ss:
                ss[key] = cfg.norm
            st.selectbox(f"**{name}**", NORMS, key=key, format_func=NORM_LABELS.get,
                         on_change=_variant_change, args=(name, "norm", key))
        with c2:
            key = f"lab.w.{name}.placement"
            if key not in ss:
                ss[key] = cfg.placement
            st.selectbox("placement", PLACEMENTS, key=key, disabled=cfg.norm == "none",
                         on_change=_variant_change, args=(name, "placement", key))
        _field_error(f"{name}.norm")
    ghost = next((cfg for cfg in cmp.variants.values() if cfg.norm == "ghost_batch"), None)
    if ghost is not None:  # its one setting, shown when used
        _shared_widget("number", "ghost_size", "Ghost batch size", min_value=2, max_value=current_limits().max_batch,
                       step=1)
        st.caption(_ghost_split(ghost.batch_size, ghost.ghost_size))
    # Adding and removing get a row each (not a button per variant): a 300 px sidebar has no
    # room for a third column beside the normalization and its placement.
    c1, c2 = st.columns([5.5, 4.5], vertical_alignment="bottom")
    with c1:
        st.selectbox("Add a variant", NORMS, key="lab.w.add_norm", format_func=NORM_LABELS.get)
    with c2:
        st.button("Add", key="lab.w.add", on_click=once_per_click(_add_variant),
                  disabled=len(cmp.variants) >= 8, width="stretch")
    c1, c2 = st.columns([5.5, 4.5], vertical_alignment="bottom")
    with c1:
        st.selectbox("Remove a variant", list(cmp.variants), index=len(cmp.variants) - 1, key="lab.w.remove_pick",
                     disabled=len(cmp.variants) <= 1)
    with c2:
        st.button("Remove", key="lab.w.remove", on_click=once_per_click(_remove_picked),
                  disabled=len(cmp.variants) <= 1, width="stretch")
    _field_error("variants")


def _ghost_split(batch: int, ghost_size: int) -> str:
    """How Ghost BN splits a batch (bnviz.norms.GhostBatchNorm), in words for the sidebar."""
    sizes = ghost_sizes(batch, ghost_size)
    if len(sizes) == 1 and batch < 4:
        return f"A batch of {batch} is one ghost batch (two need 4 examples or more): Ghost BN is BN here."
    if len(sizes) == 1:
        return (f"A batch of {batch} is one ghost batch: Ghost BN is BN here. A ghost batch size of at most "
                f"{batch // 2} splits it.")
    big, small = sizes[0], sizes[-1]
    if big == small:
        return f"A batch of {batch} splits into {len(sizes)} ghost batches of {big}."
    bigs = sizes.count(big)
    return (f"A batch of {batch} splits into {len(sizes)} ghost batches: {bigs} of {big}, "
            f"{len(sizes) - bigs} of {small}.")


def _variant_change(name: str, field: str, key: str) -> None:
    value = st.session_state[key]
    _apply(f"{name}.norm", lambda c: Comparison({
        n: (cfg.replace(**{field: value}) if n == name else cfg) for n, cfg in c.variants.items()}))


def _remove_picked() -> None:
    name = st.session_state["lab.w.remove_pick"]
    _apply("variants", lambda c: Comparison({n: cfg for n, cfg in c.variants.items() if n != name}))


def _add_variant() -> None:
    norm = st.session_state["lab.w.add_norm"]

    def make(c: Comparison) -> Comparison:
        base = VARIANT_NAMES[norm]
        name = base if base not in c.variants else next(f"{base}{i}" for i in range(2, 99) if f"{base}{i}" not in c.variants)
        first = next(iter(c.variants.values()))
        return Comparison({**c.variants, name: first.replace(norm=norm)})

    _apply("variants", make)


# main area -------------------------------------------------------------------------------------
def header_ui(lab: Lab) -> None:
    ss = st.session_state
    st.title("bnviz · live lab")
    preset = presets.PRESETS.get(ss["lab.preset"])
    if preset is not None:
        st.markdown(f"**{preset.title}**  \n*Predict, then run.* {preset.note}  \n"
                    f"<span style='color:#666'>Source: {preset.source}. Claim: {preset.claim}</span>",
                    unsafe_allow_html=True)
        changed_settings_ui(preset, lab.comparison)
    for w in ss.get("lab.link_warnings", []):
        st.warning(f"Link: {w}", icon=":material/link:")


def controls_ui(lab: Lab) -> None:
    ss = st.session_state
    lab.set_speed(SPEEDS[ss.get("lab.w.speed_pick", "max")])
    slot = run_controls_ui(lab, "lab")
    change = lab.take_change()
    if change == "restart":
        slot.info("Structural change: the comparison restarted from the same seed.", icon=":material/restart_alt:")
    elif change == "lr":
        slot.info("Learning rate changed live; the time axis marks the step.", icon=":material/check:")


def live_ui(lab: Lab) -> None:
    """The charts, redrawn on the pacer's timer (bnviz/pacing.py) while the lab trains."""

    preset = presets.PRESETS.get(st.session_state["lab.preset"])
    specs = preset_figures(preset.figures if preset else ()) + list(FIGURES)  # the preset's own first

    def draw(snap) -> None:
        if st.session_state.get("lab.cmp") != lab.comparison:
            # A callback's session-state write was lost to an interrupted rerun (see init_state): a
            # full run re-reads the Lab, so the widgets and the share link follow it.
            st.rerun(scope="app")
        for spec in specs:
            chart(spec.build, snap, f"lab.chart.{spec.key}")
            st.caption(spec.caption)
            if spec.table is not None:
                st.dataframe(spec.table(snap), hide_index=True, width="stretch")

    live_fragment(lab, draw)


def share_ui(lab: Lab) -> None:
    ss = st.session_state
    query = share.to_query(lab.comparison, ss["lab.preset"])  # the Lab: what actually runs
    st.query_params.from_dict(query)  # the address bar is always the share link
    st.subheader("Share and download")
    base = (st.context.url or "").split("?")[0]
    st.code(f"{base}?{urlencode(query)}" if query else base, language=None)
    st.caption("This link restores the exact comparison and seed.")
    downloads_ui(lab, "lab", presets.PRESETS.get(ss["lab.preset"]))
