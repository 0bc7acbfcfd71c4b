"""Presets: published setups as data, one registry (``PRESETS``) for the CLI and the app.

Each preset has a title, a "predict, then run" note (ask yourself what will happen
before pressing Start), its source, and the claim it lets you check. Where a source gives
no number, the preset chooses one and its note says so. See ../docs/EXPERIMENTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterable

from bnviz.config import Comparison, RunConfig
from bnviz.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    note: str  # predict, then run
    source: str
    claim: str
    base: dict[str, Any]  # fields every variant shares
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # what each variant changes
    # A sweep preset runs its comparison once per value of one field (bnviz/sweep.py):
    # (field name, values). ``comparison()`` is still the base, so the live lab can open it.
    sweep: tuple[str, tuple] | None = None
    figures: tuple[str, ...] = ()  # extra figure functions of bnviz.figures its reports show first

    def comparison(self) -> Comparison:
        base = RunConfig.from_dict(self.base)
        return Comparison({n: RunConfig.from_dict(ch, base=base) for n, ch in self.variants.items()})


_FIG1 = dict(dataset="mnist", model="mlp", depth=3, width=100, activation="sigmoid", optimizer="sgd",
             batch_size=60, init="normal")

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        name="paper-fig1",
        title="Ioffe & Szegedy 2015, Figure 1: MNIST, 3x100 sigmoid, with and without BN",
        note=("Predict: which net reaches 95% test accuracy first, and does the input to a last-layer "
              "sigmoid keep its median and spread without BN? The paper gives neither learning rate nor "
              "init std; bnviz uses SGD at lr 0.5 and N(0, 0.1) weights, values at which both nets train "
              "(see docs/EXPERIMENTS.md). 50,000 steps of batch 60, test accuracy every 500 steps."),
        source="Ioffe & Szegedy 2015, arXiv 1502.03167, Figure 1",
        claim="BN trains faster and higher; without BN the sigmoid input drifts in mean and variance.",
        base=dict(_FIG1, lr=0.5, init_scale=0.1, steps=50_000, eval_every=500),
        variants={"plain": {"norm": "none"}, "bn": {"norm": "batch", "placement": "before"}},
        figures=("paper_figure1",),
    ),
    Preset(
        name="quick-look",
        title="A one-minute look: the paper's network on the bundled MNIST subset",
        note=("Predict: in 3,000 steps, whose loss falls first, and whose layer distributions stay centred? "
              "The same net as paper-fig1 on 4,000 bundled digits, so it starts instantly and offline."),
        source="Ioffe & Szegedy 2015 (shortened)",
        claim="BN's test accuracy leads early; its pre-activations stay near zero mean, unit spread.",
        base=dict(_FIG1, dataset="mnist-mini", lr=0.5, init_scale=0.1, steps=3_000, eval_every=100),
        variants={"plain": {"norm": "none"}, "bn": {"norm": "batch"}},
        figures=("paper_figure1",),
    ),
    Preset(
        name="deep-sigmoid",
        title="Ten sigmoid layers: vanishing gradients without BN",
        note=("Predict: with 10 sigmoid layers, how do the gradient norms of hidden1 and hidden10 compare "
              "without BN? Does the plain net learn at all in 3,000 steps?"),
        source="Ioffe & Szegedy 2015, section 4.2 (sigmoid nets train only with BN); depth chosen by bnviz",
        claim="Without BN the first layers' gradients are orders of magnitude smaller and the loss stalls; BN trains.",
        base=dict(_FIG1, dataset="mnist-mini", depth=10, lr=0.5, init="xavier", init_scale=1.0, steps=3_000),
        variants={"plain": {"norm": "none"}, "bn": {"norm": "batch"}},
    ),
    Preset(
        name="high-lr",
        title="Learning-rate sweep: plain degrades, then diverges; BN keeps training",
        note=("Predict: over learning rates from 0.01 to 10, where does each net stop learning? A sweep: "
              "the comparison runs once per rate (0.01, 0.03, 0.1, 0.3, 1, 3, 10), 1,000 SGD steps of "
              "batch 60 each, on a 3x100 ReLU MLP with Kaiming init on the bundled MNIST subset (bnviz's "
              "choice: a ReLU net diverges outright where a sigmoid one only stalls). The live lab opens it "
              "at lr 1: watch the plain net's update-to-weight ratio before its loss turns NaN."),
        source="Ioffe & Szegedy 2015, section 3.3; Bjorck et al. 2018, arXiv 1806.02375",
        claim=("BN allows far larger learning rates; without BN large updates blow the activations up. "
               "At small rates both reach similar accuracy."),
        base=dict(_FIG1, dataset="mnist-mini", activation="relu", init="kaiming", init_scale=1.0, lr=1.0,
                  steps=1_000),
        variants={"plain": {"norm": "none"}, "bn": {"norm": "batch"}},
        sweep=("lr", (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)),
    ),
    Preset(
        name="placement",
        title="BN before vs after the nonlinearity",
        note=("Predict: the paper puts BN before the nonlinearity; practice reports both work. Which of the "
              "two trains faster here, and how do their pre-activation distributions differ?"),
        source="Ioffe & Szegedy 2015, section 3.2; common practice",
        claim="Both placements train; before keeps the nonlinearity's input normalized, after normalizes its output.",
        base=dict(_FIG1, dataset="mnist-mini", activation="relu", init="kaiming", init_scale=1.0, lr=0.1,
                  steps=3_000),
        variants={"plain": {"norm": "none"}, "before": {"norm": "batch", "placement": "before"},
                  "after": {"norm": "batch", "placement": "after"}},
    ),
    Preset(
        name="noisy-bn",
        title="Santurkar et al. 2018: BN with injected noise still trains",
        note=("Predict: noisy BN shifts and scales every unit by random amounts each step, so its layer "
              "distributions are LESS stable than the plain net's. Will it train like plain, or like BN?"),
        source="Santurkar, Tsipras, Ilyas, Madry 2018, arXiv 1805.11604, section 2",
        claim="Noisy BN trains about as well as BN despite more distribution shift: stability is not the reason.",
        base=dict(_FIG1, dataset="mnist-mini", lr=0.5, init_scale=0.1, steps=3_000),
        variants={"plain": {"norm": "none"}, "bn": {"norm": "batch"}, "noisy": {"norm": "noisy_batch"}},
    ),
    Preset(
        name="ics-measure",
        title="Santurkar et al. 2018: measure internal covariate shift directly",
        note=("Predict: BN was introduced to reduce internal covariate shift. Measured as Santurkar et al. do "
              "(how much a layer's gradient changes when the layers before it take their step), does the BN "
              "net show LESS shift than the plain one? And how smooth is each net's loss along its gradient? "
              "The probes cost extra passes, so they run every 100 steps, on a batch of their own."),
        source="Santurkar, Tsipras, Ilyas, Madry 2018, arXiv 1805.11604, sections 2.2 and 3",
        claim=("BN nets show similar or larger ICS by this measure, yet train better; their loss changes less "
               "along the gradient and their gradients are more predictive."),
        base=dict(_FIG1, dataset="mnist-mini", lr=0.5, init_scale=0.1, steps=3_000, eval_every=100,
                  landscape_every=100),
        variants={"plain": {"norm": "none"}, "bn": {"norm": "batch"}, "noisy": {"norm": "noisy_batch"}},
        figures=("ics_figure", "smoothness_figure"),
    ),
    Preset(
        name="small-batch",
        title="Batch-size sweep: BN vs LayerNorm, GroupNorm and Batch Renorm",
        note=("Predict: from 256 down to 2 examples per batch, batch statistics get noisy. Which "
              "normalization suffers, and does Batch Renorm recover the gap? A sweep: the comparison runs "
              "once per batch size (2, 4, ..., 256), 2,000 SGD steps at lr 0.05 each (the same steps and rate "
              "at every size, so small batches also see fewer examples), on a 3x100 ReLU MLP on the bundled "
              "MNIST subset; Batch Renorm relaxes after 200 steps (the paper: 5,000 of a much longer run). "
              "The live lab opens it at batch 4."),
        source="Wu & He 2018, arXiv 1803.08494; Ioffe 2017, arXiv 1702.03275",
        claim="BN degrades at small batch; LayerNorm, GroupNorm and Batch Renorm hold up better.",
        base=dict(_FIG1, dataset="mnist-mini", activation="relu", init="kaiming", init_scale=1.0, lr=0.05,
                  batch_size=4, steps=2_000, renorm_warmup=200),
        variants={"bn": {"norm": "batch"}, "layer": {"norm": "layer"}, "group": {"norm": "group"},
                  "renorm": {"norm": "batch_renorm"}},
        sweep=("batch_size", (2, 4, 8, 16, 32, 64, 128, 256)),
    ),
    Preset(
        name="ghost-bn",
        title="Hoffer et al. 2017: Ghost BN, small-batch statistics inside a large batch",
        note=("Predict: with 500 examples per batch, BN's mean and variance are nearly exact, so its noise is "
              "gone. Ghost BN normalizes each slice of 25 examples by that slice's own statistics, as a batch of "
              "25 would be. Which net fits the training set more tightly, and which does better on the test set? "
              "2,000 SGD steps at lr 1.0 on the paper's network and the bundled MNIST subset (250 passes over it); "
              "the paper trains ResNets on CIFAR and ImageNet with batches of thousands and ghost batches of 128."),
        source=("Hoffer, Hubara, Soudry 2017, arXiv 1705.08741, section 4 (Ghost Batch Normalization); batch, ghost "
                "size and learning rate chosen by bnviz"),
        claim=("At a large batch, Ghost BN fits the training set less tightly than BN (a higher training loss) yet "
               "does better on the test set (a lower test loss, accuracy as high or higher): the noise of "
               "small-batch statistics regularizes."),
        base=dict(_FIG1, dataset="mnist-mini", batch_size=500, lr=1.0, steps=2_000, eval_every=100, ghost_size=25),
        variants={"bn": {"norm": "batch"}, "ghost": {"norm": "ghost_batch"}},
        figures=("generalization",),
    ),
    Preset(
        name="conv",
        title="A small CNN with BatchNorm2d (per channel over N x H x W) vs none",
        note=("Predict: in a 4-layer CNN, BN normalizes each channel over the batch and all positions. "
              "How do the channel distributions and the test accuracy of the two nets differ?"),
        source="Ioffe & Szegedy 2015, section 3.2",
        claim="The BN CNN trains faster and its channel pre-activations stay normalized.",
        base=dict(dataset="mnist-mini", model="cnn", depth=4, width=16, activation="relu", init="kaiming",
                  init_scale=1.0, optimizer="sgd", lr=0.05, batch_size=32, steps=1_500, eval_every=100),
        variants={"plain": {"norm": "none"}, "bn": {"norm": "batch"}},
    ),
    Preset(
        name="depth-growth",
        title="Bjorck et al. 2018: without BN activations grow with depth and every image gets the same gradient",
        note=("Predict: in a 20-layer ReLU net at initialization, how do the activations' mean and variance change "
              "from the first hidden layer to the last, with and without BN? Does the plain net's output gradient "
              "depend on the image? And which net survives SGD at lr 0.1? Bjorck et al. measured a 110-layer "
              "ResNet, whose residual additions grow the variance; a plain MLP with variance-preserving (Kaiming) "
              "weights keeps its scale by design, so bnviz scales Kaiming weights by 1.25 (the variance x1.56 per "
              "layer in expectation) to stand in for that growth. 20 hidden layers of 100 (the server's default "
              "depth limit), batch 60, 2,000 steps. Then run it again with lr=0.001: now the plain net trains "
              "and BN is the slow one."),
        source=("Bjorck, Gomes, Selman, Weinberger 2018, arXiv 1806.02375, sections 3-4 (Figures 4 and 6); "
                "MLP, init scale and learning rate chosen by bnviz"),
        claim=("Without BN the activations' mean and variance grow exponentially with depth and the output-layer "
               "gradient is nearly the same for every image (one class predicted whatever the input); with BN "
               "they stay bounded and the gradient varies by image. BN trains at a rate at which the plain net "
               "explodes; at a small rate BN's advantage goes."),
        base=dict(_FIG1, dataset="mnist-mini", depth=20, activation="relu", init="kaiming", init_scale=1.25,
                  lr=0.1, steps=2_000),
        variants={"plain": {"norm": "none"}, "bn": {"norm": "batch"}},
        figures=("depth_growth",),
    ),
)}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve(pairs: Iterable[str | tuple[str, str]], default: str | None = None) -> Comparison:
    """A comparison from flat pairs that may name a ``preset`` (the base) and override fields."""
    preset, named, rest = default, False, []
    for p in pairs:
        key, value = p if isinstance(p, tuple) else (p.partition("=")[0], p.partition("=")[2])
        if key.strip() != "preset":
            rest.append(p)
        elif named:
            raise ConfigError("preset: given more than once")
        else:
            preset, named = value.strip(), True
    base = get(preset).comparison() if preset else None
    return Comparison.from_flat(rest, base=base)


# How a preset's note words a setting ({} its value, in the format after it); others by name.
_SETTING_WORDS = {"steps": ("{} steps", ","), "eval_every": ("test accuracy every {} steps", ","), "lr": ("lr {}", "g"),
                  "landscape_every": ("probes every {} steps", ","), "dataset": ("dataset {}", "")}


def changed_settings(preset: Preset, comparison: Comparison) -> str | None:
    """One sentence naming what ``comparison`` changes from ``preset``, whose note gives the
    preset's own settings ("50,000 steps"): "This run differs from the note: 5,000 instead of
    50,000 steps; bn: lr 0.1 instead of 0.5." None when it changes nothing. A page that ran
    Figure 1 at 5,000 steps, and a report of `--steps 300`, quoted the note's 50,000 without
    a word."""
    def words(name: str, now: Any, was: Any) -> str:
        text, fmt = _SETTING_WORDS.get(name, (name + " {}", ""))
        return text.format(f"{format(now, fmt)} instead of {format(was, fmt)}")

    noted, run = preset.comparison().variants, comparison.variants
    changes = [] if list(run) == list(noted) else [f"variants {', '.join(run)} instead of {', '.join(noted)}"]
    shared = [n for n in run if n in noted]
    for f in fields(RunConfig):
        was, now = ({getattr(v[n], f.name) for n in shared} for v in (noted, run))
        if len(was) == len(now) == 1 and was != now:  # the same change in every variant
            changes.append(words(f.name, *now, *was))
        else:  # per variant (none where nothing changed)
            changes += [f"{n}: {words(f.name, getattr(run[n], f.name), getattr(noted[n], f.name))}" for n in shared
                        if getattr(run[n], f.name) != getattr(noted[n], f.name)]
    return "This run differs from the note: " + "; ".join(changes) + "." if changes else None


def note_for(preset: Preset, comparison: Comparison) -> str:
    """A report's note on a run of ``comparison``: the preset's note, then what the run changed from it."""
    return " ".join(filter(None, (preset.note, changed_settings(preset, comparison))))
