"""Larger learning rates: the high-lr sweep (plain vs BN at rates from 0.01 to 10), with the
largest rate at which each still trains; run on a worker thread per browser session."""

from __future__ import annotations

from bnviz import presets
from bnviz.claims import sweep_threshold
from bnviz.sweep import largest_stable
from ui.navigation import through_app
from ui.sweeps import preset_steps, sweep_page

through_app()  # first: a direct visit runs this file without app.py (ui/navigation.py)

PRESET = presets.get("high-lr")
STEP_CHOICES = {"300 per run (under a minute)": 300,
                f"{preset_steps(PRESET):,} per run (the preset's length)": preset_steps(PRESET)}
LABELS = PRESET.comparison().labels()


def largest_rates_text(rows: list[dict], running: bool) -> str | None:
    """The largest rate at which each variant reached 90% of the sweep's best accuracy (the
    CLI's default bar), and how many times larger BN's is."""
    if running:
        return None  # a larger rate may still train: say it once every rate is in
    bar = sweep_threshold(rows)
    largest = {name: largest_stable(rows, name, bar) for name in LABELS}
    parts = [f"{LABELS[n]} {lr:g}" if lr is not None else f"{LABELS[n]} none" for n, lr in largest.items()]
    text = f"Largest rate that trained to {bar:.1%} test accuracy (90% of the best here): " + ", ".join(parts) + "."
    plain, bn = largest.get("plain"), largest.get("bn")
    if plain and bn:
        text += f" BN's is **{bn / plain:g}x** the plain net's."
    return text


sweep_page(
    "Larger learning rates", PRESET, "lrsweep", STEP_CHOICES, "Learning-rate sweep",
    papers=[
        "**Ioffe & Szegedy 2015** (section 3.3, ImageNet in 4.2): BN makes training resilient to the scale "
        "of the parameters, so it allows higher learning rates. Their BN Inception at 5x the learning rate "
        "reached the baseline's accuracy in 14x fewer steps; the same 5x rate without BN drove the "
        "parameters to infinity.\n\n"
        "**Bjorck et al. 2018**: without BN large updates make activations explode; much of BN's benefit is "
        "the higher learning rate it allows. At a small rate BN and no BN reach similar accuracy.\n\n"
        "**Here**: a 3x100 ReLU MLP on the bundled MNIST subset, the same steps and batches at every rate.",
    ],
    caption=("Final test accuracy after each run, per learning rate (log scale); × marks a run whose loss "
             "became NaN (drawn at 0). Dashed: BN in train mode (batch statistics)."),
    summary=largest_rates_text,
)
