"""What to train: one validated ``RunConfig`` per variant, and a ``Comparison`` of variants.

One declared field table (``FIELDS``) drives validation, JSON, the flat ``key=value`` form
that the CLI's ``--set`` and the app's shareable URL use, and the help text: each fact once.

A comparison is a set of named variants that share data order, seed and the initial
weights of their shared layers (see models.py), so the only difference between two
variants is the fields in which their configs differ.

    >>> cmp = Comparison.from_flat(["variants=plain,bn", "bn.norm=batch", "lr=0.1"])
    >>> cmp.variants["bn"].norm, cmp.variants["plain"].lr
    ('batch', 0.1)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from bnviz import limits
from bnviz.dataset_names import DATASETS, IMAGE_DATASETS
from bnviz.errors import ConfigError

MODELS = ("mlp", "cnn")
ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu")
NORMS = ("none", "batch", "layer", "group", "batch_renorm", "noisy_batch", "ghost_batch")
# What a legend or a table header calls a variant of each norm (the lab's sidebar shortens some).
NORM_NAMES = {"none": "plain", "batch": "BatchNorm", "layer": "LayerNorm", "group": "GroupNorm",
              "batch_renorm": "Batch Renorm", "noisy_batch": "noisy BN", "ghost_batch": "Ghost BN"}
# Norms that use batch statistics: they need more than one value per channel.
BATCH_STAT_NORMS = frozenset({"batch", "batch_renorm", "noisy_batch", "ghost_batch"})
PLACEMENTS = ("before", "after")
OPTIMIZERS = ("sgd", "momentum", "adam")
INITS = ("default", "normal", "xavier", "kaiming")
DEVICES = ("auto", "cpu", "cuda", "mps")

_VARIANT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,23}$")


@dataclass(frozen=True)
class Field:
    """One configurable field: its type, bounds and one line of help."""

    name: str
    type: type
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None  # inclusive unless low_open
    high: float | None = None  # inclusive; None = no bound (or a server limit, see _check)
    low_open: bool = False


# The order here is the order in JSON, in help and in the app's sidebar.
FIELDS: tuple[Field, ...] = (
    Field("dataset", str, "training data", choices=DATASETS),
    Field("model", str, "network family", choices=MODELS),
    Field("depth", int, "number of hidden layers", low=1),
    Field("width", int, "units per hidden layer (MLP) or channels (CNN)", low=1),
    Field("activation", str, "nonlinearity of every hidden layer", choices=ACTIVATIONS),
    Field("norm", str, "normalization of every hidden layer", choices=NORMS),
    Field("placement", str, "normalization before or after the nonlinearity", choices=PLACEMENTS),
    Field("groups", int, "groups for norm=group (must divide width)", low=1),
    Field("optimizer", str, "sgd, sgd with momentum 0.9, or adam", choices=OPTIMIZERS),
    Field("lr", float, "learning rate", low=0.0, low_open=True),
    Field("batch_size", int, "examples per mini-batch", low=1),
    Field("steps", int, "training steps", low=1),
    Field("init", str, "weight init: torch default, normal(0, init_scale), or xavier/kaiming with gain init_scale", choices=INITS),
    Field("init_scale", float, "std (normal) or gain (xavier, kaiming) of the initial weights", low=0.0, low_open=True),
    Field("weight_decay", float, "L2 weight decay", low=0.0),
    Field("dropout", float, "dropout probability after each hidden layer", low=0.0, high=0.95),
    Field("bn_momentum", float, "running-statistics momentum of batch norms (torch convention)", low=0.0, high=1.0, low_open=True),
    Field("bn_eps", float, "epsilon added to the variance", low=0.0, low_open=True),
    Field("ghost_size", int, "Ghost BN: examples per ghost batch, each normalized by its own mean and variance "
          "(the batch splits into batch_size // ghost_size near-equal parts)", low=2),
    Field("renorm_warmup", int, "batch renorm: steps with r=1, d=0 before relaxing (paper: 5000)", low=0),
    Field("seed", int, "seed of data order, initial weights and noise", low=0, high=2**31 - 1),
    Field("device", str, "where to train; auto picks cuda, then mps, then cpu", choices=DEVICES),
    Field("eval_every", int, "test loss and accuracy every k steps", low=1),
    Field("hist_every", int, "layer histograms every k steps", low=1),
    Field("landscape_every", int, "ICS measure and smoothness probes every k steps (extra passes); 0: off", low=0),
    Field("tracked_unit", int, "the unit whose percentiles are tracked; -1 picks one by seed", low=-1),
)
FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}

# Server limits (env variables) that bound some fields from above.
_LIMITED = {"depth": "max_depth", "width": "max_width", "batch_size": "max_batch", "steps": "max_steps"}


@dataclass(frozen=True)
class RunConfig:
    """One variant. Defaults give a quick, instructive MNIST run of the paper's network."""

    dataset: str = "mnist-mini"
    model: str = "mlp"
    depth: int = 3
    width: int = 100
    activation: str = "sigmoid"
    norm: str = "none"
    placement: str = "before"  # the paper puts BN between Wu and the nonlinearity
    groups: int = 4
    optimizer: str = "sgd"
    lr: float = 0.5
    batch_size: int = 60
    steps: int = 5_000
    init: str = "normal"
    init_scale: float = 0.1  # "small random Gaussian values" (Ioffe & Szegedy give no std)
    weight_decay: float = 0.0
    dropout: float = 0.0
    bn_momentum: float = 0.1  # torch's default: new = 0.9 * old + 0.1 * batch
    bn_eps: float = 1e-5
    ghost_size: int = 16  # with batch 60: three ghost batches of 20
    renorm_warmup: int = 500  # scaled down from the paper's 5000 for runs of a few thousand steps
    seed: int = 0
    device: str = "auto"
    eval_every: int = 100
    hist_every: int = 10
    landscape_every: int = 0  # Santurkar et al.'s probes cost ~depth + 6 extra passes: off unless asked
    tracked_unit: int = -1

    def __post_init__(self) -> None:
        for f in FIELDS:
            _check(f, getattr(self, f.name))
        if self.norm == "group" and self.width % self.groups:
            raise ConfigError(f"groups: must divide width ({self.width}), got {self.groups}")
        if self.norm in BATCH_STAT_NORMS and self.batch_size < 2:
            raise ConfigError(
                f"batch_size: norm={self.norm} needs at least 2 (batch statistics need more "
                f"than one value per channel), got {self.batch_size}"
            )
        if self.model == "cnn" and self.dataset not in IMAGE_DATASETS:
            raise ConfigError(
                f"model: cnn needs an image dataset ({', '.join(sorted(IMAGE_DATASETS))}), "
                f"got dataset={self.dataset}"
            )
        if self.tracked_unit >= self.width:
            raise ConfigError(f"tracked_unit: must be -1 or below width ({self.width}), got {self.tracked_unit}")

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: "RunConfig | None" = None) -> "RunConfig":
        """Build from a mapping of field -> value (strings are parsed); unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"variant: expected an object of field: value, got {type(data).__name__}")
        values = (base or cls()).to_dict()
        for key, raw in data.items():
            values[key] = parse_value(key, raw)
        return cls(**values)


def parse_value(key: str, raw: Any) -> Any:
    """Turn a JSON value or a string from a URL / CLI into the field's type, or say why not."""
    field = FIELD_BY_NAME.get(key)
    if field is None:
        raise ConfigError(f"{key}: unknown field; known fields: {', '.join(FIELD_BY_NAME)}")
    if isinstance(raw, str):
        raw = raw.strip()
        shown = raw if len(raw) <= 40 else raw[:37] + "..."  # messages stay one short line
        if field.type is int:
            # 30 digits is far beyond every bound; longer strings would only exhaust int().
            if not re.fullmatch(r"[+-]?\d{1,30}", raw):
                raise ConfigError(f"{key}: expected an integer, got {shown!r}")
            return int(raw)
        if field.type is float:
            try:
                return float(raw)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {shown!r}") from None
        return raw
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ConfigError(f"{key}: expected {_type_word(field)}, got {raw!r}")
    if field.type is int:
        if isinstance(raw, float) and not raw.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {raw!r}")
        return int(raw)
    if field.type is float:
        try:
            return float(raw)
        except OverflowError:
            raise ConfigError(f"{key}: expected a finite number, got an integer of {len(str(raw))} digits") from None
    raise ConfigError(f"{key}: expected {_type_word(field)}, got {raw!r}")


def _type_word(field: Field) -> str:
    if field.choices:
        return "one of " + ", ".join(field.choices)
    return {int: "an integer", float: "a number", str: "text"}[field.type]


def _check(field: Field, value: Any) -> None:
    name = field.name
    if field.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    elif field.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
    elif not isinstance(value, str):
        raise ConfigError(f"{name}: expected {_type_word(field)}, got {value!r}")
    if field.choices is not None and value not in field.choices:
        raise ConfigError(f"{name}: expected one of {', '.join(field.choices)}, got {value!r}")
    high = field.high
    limit_name = _LIMITED.get(name)
    if limit_name is not None:
        high = getattr(limits.current(), limit_name)
    if field.low is not None and (value <= field.low if field.low_open else value < field.low):
        bound = f"> {field.low:g}" if field.low_open else f">= {field.low:g}"
        raise ConfigError(f"{name}: must be {bound}, got {value!r}")
    if high is not None and value > high:
        where = f" (server limit BNVIZ_{limit_name.upper()})" if limit_name else ""
        raise ConfigError(f"{name}: must be <= {high:g}{where}, got {value!r}")


@dataclass(frozen=True)
class Comparison:
    """Named variants trained side by side on the same batches from the same seed."""

    variants: dict[str, RunConfig]

    def labels(self) -> dict[str, str]:
        """Variant name -> its norm's name (NORM_NAMES) for legends and tables, where the
        norms tell the variants apart; else the variants' own names."""
        by_norm = {name: NORM_NAMES[cfg.norm] for name, cfg in self.variants.items()}
        return by_norm if len(set(by_norm.values())) == len(by_norm) else {name: name for name in self.variants}

    def __post_init__(self) -> None:
        if not self.variants:
            raise ConfigError("variants: a comparison needs at least one variant")
        for name in self.variants:
            if not _VARIANT_NAME.match(name):
                raise ConfigError(
                    f"variants: names are lowercase letters, digits, '-' or '_' (up to 24, starting "
                    f"with a letter), got {name!r}"
                )
        if len(self.variants) > 8:
            raise ConfigError(f"variants: at most 8 in one comparison, got {len(self.variants)}")

    @property
    def names(self) -> list[str]:
        return list(self.variants)

    @property
    def steps(self) -> int:
        """Steps of the longest variant: the run's length."""
        return max(c.steps for c in self.variants.values())

    def with_all(self, **changes: Any) -> "Comparison":
        """The same comparison with ``changes`` applied to every variant."""
        return Comparison({n: c.replace(**changes) for n, c in self.variants.items()})

    # JSON ------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"variants": {n: c.to_dict() for n, c in self.variants.items()}}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Comparison":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit, bad encoding
            raise ConfigError(f"config: not valid JSON ({str(exc).splitlines()[0][:80]})") from None
        if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
            raise ConfigError('config: expected {"variants": {"NAME": {field: value, ...}, ...}}')
        extra = set(data) - {"variants"}
        if extra:
            raise ConfigError(f"config: unknown top-level key {sorted(extra)[0]!r}; expected only 'variants'")
        variants = data["variants"]
        built = {}
        for n, v in variants.items():
            with _naming_variant(n if len(variants) > 1 else None):
                built[n] = RunConfig.from_dict(v)
        return cls(built)

    # flat key=value form (CLI --set, shareable URL) -------------------------------------
    def to_flat(self, base: "Comparison | None" = None) -> list[tuple[str, str]]:
        """Minimal pairs that rebuild this comparison with ``from_flat(pairs, base)``.

        A field equal in every variant is written once (``lr=0.1``); one that differs is
        written per variant (``bn.norm=batch``). Values equal to the base's are left out
        (a variant the base lacks is compared with the base's first variant, as from_flat
        copies it).
        """
        base = base or Comparison({"plain": RunConfig()})
        first = next(iter(base.variants.values()))
        refs = {n: base.variants.get(n, first).to_dict() for n in self.variants}
        pairs = [] if list(self.variants) == list(base.variants) else [("variants", ",".join(self.variants))]
        dicts = {n: c.to_dict() for n, c in self.variants.items()}
        for f in FIELDS:
            values = {n: d[f.name] for n, d in dicts.items()}
            changed = [n for n, v in values.items() if v != refs[n][f.name]]
            if not changed:
                continue
            if len(set(values.values())) == 1:
                pairs.append((f.name, _format(values[changed[0]])))
            else:
                pairs.extend((f"{n}.{f.name}", _format(values[n])) for n in changed)
        return pairs

    @classmethod
    def from_flat(cls, pairs: Iterable[str | tuple[str, str]], base: "Comparison | None" = None) -> "Comparison":
        """Apply ``key=value`` pairs to ``base`` (default: one variant with default fields).

        ``variants=a,b`` sets the variant list (new names copy the first variant of base);
        ``key=value`` sets a field of every variant, ``NAME.key=value`` one variant's.
        Duplicated keys are refused: a mangled link should not silently pick one.
        """
        items = [_split_pair(p) for p in pairs]
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise ConfigError(f"{key}: given more than once")
            seen.add(key)
        variants = dict((base or cls({"plain": RunConfig()})).variants)
        for key, value in items:
            if key == "variants":
                names = [n.strip() for n in value.split(",") if n.strip()]
                if not names:
                    raise ConfigError("variants: expected comma-separated names, got an empty list")
                if len(set(names)) != len(names):
                    raise ConfigError(f"variants: names must be distinct, got {value!r}")
                template = next(iter(variants.values()))
                variants = {n: variants.get(n, template) for n in names}
        # Collect the changes per variant first, so that cross-field checks (e.g. norm=batch
        # with batch_size=1) see the final values, whatever the order of the pairs.
        changes: dict[str, dict[str, Any]] = {n: {} for n in variants}
        # Shared keys first, so `bn.lr=0.1` wins over `lr=0.3` whatever their order.
        for key, value in sorted(items, key=lambda kv: "." in kv[0]):
            if key == "variants":
                continue
            name, _, field = key.rpartition(".")
            targets = [name] if name else list(variants)
            if name and name not in variants:
                raise ConfigError(f"{key}: no variant named {name!r}; variants: {', '.join(variants)}")
            with _naming_variant(name or None):
                parsed = parse_value(field, value)
            for target in targets:
                changes[target][field] = parsed
        built, refused = {}, {}
        for n, c in variants.items():
            try:
                built[n] = c.replace(**changes[n])
            except ConfigError as exc:
                refused[n] = str(exc)
        if refused:  # named by variant unless every variant refused the same shared change
            name, msg = next(iter(refused.items()))
            same_for_all = len(refused) == len(variants) and len(set(refused.values())) == 1
            raise ConfigError(msg if same_for_all else f"{name}.{msg}")
        return cls(built)


@contextlib.contextmanager
def _naming_variant(name: str | None):
    """A ConfigError raised inside names the variant as --set and links spell it
    ('bn.lr: expected a number'): in a comparison, 'lr: ...' would not say whose."""
    try:
        yield
    except ConfigError as exc:
        if name is None:
            raise
        raise ConfigError(f"{name}.{exc}") from None


def _split_pair(pair: str | tuple[str, str]) -> tuple[str, str]:
    if isinstance(pair, tuple):
        return pair[0].strip(), str(pair[1])
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set: expected key=value, got {pair!r}")
    return key.strip(), value


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
