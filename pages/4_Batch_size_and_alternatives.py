"""Batch size and the alternatives: the small-batch sweep (BN vs LayerNorm, GroupNorm and
Batch Renorm at 2 .. 256 examples per batch), run on a worker thread per browser session."""

from __future__ import annotations

from bnviz import presets
from ui.navigation import through_app
from ui.sweeps import preset_steps, sweep_page

through_app()  # first: a direct visit runs this file without app.py (ui/navigation.py)

PRESET = presets.get("small-batch")
STEP_CHOICES = {"300 per run (a minute or less)": 300, "1,000 per run": 1_000,
                f"{preset_steps(PRESET):,} per run (the preset's length, several minutes)": preset_steps(PRESET)}
LABELS = PRESET.comparison().labels()


def measured_text(rows: list[dict], running: bool) -> str | None:
    """One sentence from the rows so far: smallest vs largest batch, per norm."""
    acc = {(r["value"], r["variant"]): r["test_acc"] for r in rows if r["test_acc"] is not None}
    done = sorted({v for v, _ in acc})
    if len(done) < 2:
        return None
    lo, hi = done[0], done[-1]
    parts = [f"{label} {acc[(lo, n)]:.1%} → {acc[(hi, n)]:.1%}"
             for n, label in LABELS.items() if (lo, n) in acc and (hi, n) in acc]
    when = "Measured here so far" if running else "Measured here"
    return f"{when}, final test accuracy at batch {lo} → batch {hi}: " + "; ".join(parts) + "."


sweep_page(
    "Batch size and the alternatives", PRESET, "bsweep", STEP_CHOICES, "Batch-size sweep",
    papers=[
        "**Wu & He 2018** (GroupNorm, ResNet-50 on ImageNet): BN's validation error is 23.6 / 23.7 / 24.8 / "
        "27.3 / **34.7%** at 32 / 16 / 8 / 4 / 2 images per GPU; GroupNorm stays at about **24.1%** throughout. "
        "LayerNorm is GroupNorm with a single group.\n\n"
        "**Ioffe 2017** (Batch Renorm): with microbatches of 4, BN reaches 74.2% and Batch Renorm 76.5%.\n\n"
        "**Here** the setup is far smaller: a 3x100 ReLU MLP on 4,000 MNIST digits, the same number of "
        "steps and learning rate at every batch size (so small batches also see fewer examples). Look for "
        "the shape of the effect, not the papers' numbers.",
        "**Train vs eval mode.** Dashed lines evaluate BN with each test batch's own statistics (train mode); "
        "solid lines use the running averages (eval mode): with 2 to 4 examples per batch the two disagree, "
        "because a handful of examples estimates the mean and variance badly.",
    ],
    caption=("Final test accuracy after each run, per batch size (log scale). Dashed: BN and Batch Renorm in "
             "train mode (batch statistics); × marks a run whose loss became NaN."),
    summary=measured_text,
)
