"""Tests for bnviz.config (validation, JSON and flat forms) and bnviz.presets."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnviz import limits, presets
from bnviz.config import BATCH_STAT_NORMS, FIELDS, Comparison, RunConfig, parse_value
from bnviz.dataset_names import IMAGE_DATASETS
from bnviz.errors import ConfigError
from bnviz.models import build_model

NUMERIC_FIELDS = [f.name for f in FIELDS if f.type in (int, float)]


def config_error(fn, *args, **kwargs) -> str:
    """Call fn, expect a ConfigError, return its message (checked to be one line)."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg, f"message must be one non-empty line: {msg!r}"
    return msg


def assert_names(msg: str, field: str, value: str, allowed: str) -> None:
    assert msg.startswith(f"{field}:"), msg
    assert value in msg, f"value {value!r} not named in {msg!r}"
    assert allowed in msg, f"allowed {allowed!r} not named in {msg!r}"


# --------------------------------------------------------------------------- bad values

@pytest.mark.parametrize("field, value, shown, allowed", [
    ("lr", 0.0, "0", "> 0"),
    ("lr", -0.1, "-0.1", "> 0"),
    ("lr", math.nan, "nan", "finite"),
    ("lr", math.inf, "inf", "finite"),
    ("lr", -math.inf, "-inf", "finite"),
    ("batch_size", 0, "0", ">= 1"),
    ("depth", 0, "0", ">= 1"),
    ("width", 0, "0", ">= 1"),
    ("steps", 0, "0", ">= 1"),
    ("dropout", 0.99, "0.99", "<= 0.95"),
    ("seed", -1, "-1", ">= 0"),
    ("dataset", "cifar10", "'cifar10'", "mnist-mini"),
    ("activation", "swish", "'swish'", "sigmoid"),
    ("norm", "weight", "'weight'", "batch_renorm"),
    ("placement", "middle", "'middle'", "before"),
])
def test_out_of_range_value_raises_one_line_config_error_naming_field_value_and_allowed(field, value, shown, allowed):
    msg = config_error(RunConfig, **{field: value})
    assert_names(msg, field, shown, allowed)


@pytest.mark.parametrize("pair, field, shown, allowed", [
    ("lr=0", "lr", "0", "> 0"),
    ("lr=-1", "lr", "-1", "> 0"),
    ("lr=nan", "lr", "nan", "finite"),
    ("lr=inf", "lr", "inf", "finite"),
    ("lr=fast", "lr", "'fast'", "a number"),
    ("batch_size=0", "batch_size", "0", ">= 1"),
    ("depth=0", "depth", "0", ">= 1"),
    ("depth=2.5", "depth", "'2.5'", "an integer"),
    ("width=0", "width", "0", ">= 1"),
    ("steps=0", "steps", "0", ">= 1"),
    ("steps=lots", "steps", "'lots'", "an integer"),
    ("dataset=imagenet", "dataset", "'imagenet'", "mnist-mini"),
    ("activation=softmax", "activation", "'softmax'", "relu"),
    ("norm=instance", "norm", "'instance'", "layer"),
])
def test_bad_flat_value_raises_config_error_naming_field_value_and_allowed(pair, field, shown, allowed):
    msg = config_error(Comparison.from_flat, [pair])
    assert_names(msg, field, shown, allowed)


def test_depth_above_server_limit_names_the_limit_variable(monkeypatch):
    monkeypatch.setenv("BNVIZ_MAX_DEPTH", "5")
    assert RunConfig(depth=5).depth == 5
    msg = config_error(RunConfig, depth=6)
    assert_names(msg, "depth", "6", "<= 5")
    assert "BNVIZ_MAX_DEPTH" in msg


def test_server_limit_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("BNVIZ_MAX_DEPTH", "2")
    config_error(RunConfig, depth=3)
    monkeypatch.setenv("BNVIZ_MAX_DEPTH", "30")
    assert RunConfig(depth=25).depth == 25


def test_unknown_key_raises_config_error_listing_known_fields():
    msg = config_error(Comparison.from_flat, ["learning_rate=0.1"])
    assert msg.startswith("learning_rate:")
    assert "unknown" in msg and "lr" in msg


def test_unknown_key_in_json_variant_raises_config_error():
    text = json.dumps({"variants": {"plain": {"lrate": 0.1}}})
    assert config_error(Comparison.from_json, text).startswith("lrate:")


@pytest.mark.parametrize("field, value", [
    ("depth", "3"),  # a string where an int belongs (constructor takes no strings)
    ("depth", 2.5),
    ("depth", True),
    ("lr", "fast"),
    ("lr", True),
    ("lr", None),
    ("dataset", 3),
    ("norm", None),
])
def test_wrong_type_in_constructor_raises_config_error(field, value):
    msg = config_error(RunConfig, **{field: value})
    assert msg.startswith(f"{field}:")
    assert repr(value) in msg


@pytest.mark.parametrize("field, value", [
    ("depth", 2.5), ("depth", True), ("depth", [3]), ("lr", None), ("lr", {"x": 1}), ("dataset", 3),
    ("norm", False),
])
def test_wrong_json_type_raises_config_error(field, value):
    msg = config_error(RunConfig.from_dict, {field: value})
    assert msg.startswith(f"{field}:")


def test_from_dict_accepts_integral_float_for_int_field_and_int_for_float_field():
    cfg = RunConfig.from_dict({"depth": 4.0, "lr": 1})
    assert cfg.depth == 4 and isinstance(cfg.depth, int)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


@pytest.mark.parametrize("norm", sorted(BATCH_STAT_NORMS))
def test_batch_statistics_norm_with_batch_size_one_is_refused_with_reason(norm):
    msg = config_error(RunConfig, norm=norm, batch_size=1)
    assert msg.startswith("batch_size:")
    assert norm in msg and "1" in msg
    assert "batch statistics" in msg


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_norms_without_batch_statistics_accept_batch_size_one(norm):
    assert RunConfig(norm=norm, batch_size=1).batch_size == 1


def test_batch_size_one_refused_for_bn_variant_of_a_comparison():
    msg = config_error(Comparison.from_flat, ["variants=plain,bn", "bn.norm=batch", "batch_size=1"])
    assert msg.startswith("bn.batch_size:") and "norm=batch" in msg


def test_an_error_in_one_variant_names_it_as_set_spells_it():
    pairs = ["variants=plain,bn", "bn.norm=batch"]
    assert config_error(Comparison.from_flat, pairs + ["bn.lr=fast"]) == "bn.lr: expected a number, got 'fast'"
    assert config_error(Comparison.from_flat, pairs + ["bn.speed=3"]).startswith("bn.speed: unknown field")
    assert config_error(Comparison.from_flat, pairs + ["bn.depth=0"]) == "bn.depth: must be >= 1, got 0"
    text = json.dumps({"variants": {"plain": {}, "bn": {"norm": "batch", "lr": "fast"}}})
    assert config_error(Comparison.from_json, text) == "bn.lr: expected a number, got 'fast'"


def test_a_shared_change_every_variant_refuses_names_no_variant():
    pairs = ["variants=plain,bn", "bn.norm=batch"]
    assert config_error(Comparison.from_flat, pairs + ["depth=0"]) == "depth: must be >= 1, got 0"
    assert config_error(Comparison.from_flat, pairs + ["lr=fast"]) == "lr: expected a number, got 'fast'"
    assert config_error(Comparison.from_flat, ["lr=fast"]) == "lr: expected a number, got 'fast'"  # one variant


def test_cross_field_checks_see_final_values_whatever_the_pair_order():
    base = Comparison({"bn": RunConfig(norm="batch")})
    a = Comparison.from_flat(["batch_size=1", "norm=layer"], base=base)
    b = Comparison.from_flat(["norm=layer", "batch_size=1"], base=base)
    assert a == b and a.variants["bn"].batch_size == 1


def test_group_norm_groups_must_divide_width():
    msg = config_error(RunConfig, norm="group", width=10, groups=4)
    assert_names(msg, "groups", "4", "divide width (10)")
    assert RunConfig(norm="group", width=12, groups=4).groups == 4
    # groups only matters for group norm
    assert RunConfig(norm="none", width=10, groups=4).groups == 4


def test_cnn_needs_an_image_dataset():
    msg = config_error(RunConfig, model="cnn", dataset="spiral")
    assert msg.startswith("model:") and "spiral" in msg and "mnist-mini" in msg
    for ds in sorted(IMAGE_DATASETS):
        assert RunConfig(model="cnn", dataset=ds).model == "cnn"


def test_tracked_unit_must_be_below_width():
    assert_names(config_error(RunConfig, width=8, tracked_unit=8), "tracked_unit", "8", "below width (8)")
    assert RunConfig(width=8, tracked_unit=7).tracked_unit == 7


# --------------------------------------------------------------------------- JSON and flat forms

def _two_variants() -> Comparison:
    return Comparison({
        "plain": RunConfig(lr=0.1, steps=123, dataset="spiral", width=12),
        "bn": RunConfig(lr=0.3, steps=123, dataset="spiral", width=12, norm="batch", placement="after",
                        init_scale=0.05, bn_eps=1e-3),
    })


def test_json_round_trip_gives_an_equal_comparison():
    cmp = _two_variants()
    assert Comparison.from_json(cmp.to_json()) == cmp


def test_json_preserves_variant_order():
    cmp = Comparison({"zeta": RunConfig(), "alpha": RunConfig(lr=0.2)})
    assert Comparison.from_json(cmp.to_json()).names == ["zeta", "alpha"]


@pytest.mark.parametrize("text, what", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected"),
    ('{"variants": []}', "expected"),
    ('{"variants": {}, "extra": 1}', "extra"),
    ('{"variants": {}}', "at least one"),
    ('{"variants": {"plain": 3}}', "variant"),
])
def test_malformed_json_raises_config_error(text, what):
    assert what in config_error(Comparison.from_json, text)


def test_flat_round_trip_gives_an_equal_comparison():
    cmp = _two_variants()
    assert Comparison.from_flat(cmp.to_flat()) == cmp


def test_flat_form_is_minimal():
    pairs = dict(_two_variants().to_flat())
    assert pairs["variants"] == "plain,bn"
    assert pairs["steps"] == "123"  # shared: written once
    assert pairs["plain.lr"] == "0.1" and pairs["bn.lr"] == "0.3"  # differs: per variant
    assert "bn.norm" in pairs and "plain.norm" not in pairs  # plain's norm is the default
    assert "depth" not in pairs  # default everywhere


def test_flat_round_trip_through_key_value_strings():
    cmp = _two_variants()
    strings = [f"{k}={v}" for k, v in cmp.to_flat()]
    assert Comparison.from_flat(strings) == cmp


def test_per_variant_key_changes_only_that_variant():
    cmp = Comparison.from_flat(["variants=plain,bn", "bn.lr=0.1"])
    assert cmp.variants["bn"].lr == 0.1
    assert cmp.variants["plain"].lr == RunConfig().lr


def test_shared_key_changes_every_variant():
    cmp = Comparison.from_flat(["variants=plain,bn,ln", "steps=77"])
    assert [c.steps for c in cmp.variants.values()] == [77, 77, 77]


def test_variants_key_sets_names_in_order_and_new_names_copy_first_base_variant():
    base = Comparison({"first": RunConfig(lr=0.2), "second": RunConfig(lr=0.3)})
    cmp = Comparison.from_flat(["variants=second,new"], base=base)
    assert cmp.names == ["second", "new"]
    assert cmp.variants["second"].lr == 0.3
    assert cmp.variants["new"].lr == 0.2


@pytest.mark.parametrize("pairs", [["lr=0.1", "lr=0.2"], ["bn.lr=0.1", "bn.lr=0.1", "variants=plain,bn"],
                                   ["variants=a", "variants=a"]])
def test_duplicated_key_is_refused(pairs):
    assert "more than once" in config_error(Comparison.from_flat, pairs)


def test_unknown_variant_in_per_variant_key_is_refused():
    msg = config_error(Comparison.from_flat, ["variants=plain,bn", "ln.norm=layer"])
    assert "'ln'" in msg and "plain, bn" in msg


@pytest.mark.parametrize("pairs, what", [
    (["variants="], "empty"),
    (["variants=a,a"], "distinct"),
    (["variants=Bad Name"], "names"),
    (["variants=" + ",".join(f"v{i}" for i in range(9))], "at most 8"),
    (["lr"], "key=value"),
    (["=3"], "key=value"),
])
def test_bad_variants_or_pair_syntax_is_refused(pairs, what):
    assert what in config_error(Comparison.from_flat, pairs)


def test_with_all_changes_every_variant():
    cmp = _two_variants().with_all(steps=5)
    assert all(c.steps == 5 for c in cmp.variants.values())


def test_parse_value_parses_strings_to_field_types():
    assert parse_value("depth", " 7 ") == 7
    assert parse_value("lr", "1e-3") == 1e-3
    assert parse_value("norm", "batch") == "batch"


# --------------------------------------------------------------------------- property tests

def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _field_strategy(field, cap: int):
    if field.choices is not None:
        return st.sampled_from(field.choices)
    if field.type is int:
        return st.integers(int(field.low if field.low is not None else 0),
                           int(min(field.high, cap) if field.high is not None else cap))
    return st.floats(min_value=field.low, max_value=field.high if field.high is not None else 1e6,
                     exclude_min=field.low_open, allow_nan=False, allow_infinity=False)


@st.composite
def run_configs(draw):
    lim = limits.current()
    caps = {"depth": lim.max_depth, "width": min(lim.max_width, 64), "batch_size": lim.max_batch,
            "steps": lim.max_steps}
    values = {f.name: draw(_field_strategy(f, caps.get(f.name, 10_000))) for f in FIELDS}
    if values["model"] == "cnn":
        values["dataset"] = draw(st.sampled_from(sorted(IMAGE_DATASETS)))
    if values["norm"] == "group":
        values["groups"] = draw(st.sampled_from(_divisors(values["width"])))
    if values["norm"] in BATCH_STAT_NORMS:
        values["batch_size"] = max(values["batch_size"], 2)
    values["tracked_unit"] = draw(st.integers(-1, values["width"] - 1))
    return RunConfig(**values)


variant_names = st.from_regex(r"[a-z][a-z0-9_-]{0,23}", fullmatch=True)


@st.composite
def comparisons(draw):
    names = draw(st.lists(variant_names, min_size=1, max_size=4, unique=True))
    first = draw(run_configs())
    variants = {}
    for name in names:
        # Mostly small edits of the first variant (fields shared and differing), sometimes independent.
        if draw(st.booleans()):
            variants[name] = draw(run_configs())
        else:
            variants[name] = first.replace(lr=draw(st.floats(1e-6, 10.0)), seed=draw(st.integers(0, 100)))
    return Comparison(variants)


PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(cfg=run_configs())
def test_property_run_config_round_trips_through_json(cfg):
    cmp = Comparison({"v": cfg})
    assert Comparison.from_json(cmp.to_json()) == cmp


@PROPERTY
@given(cfg=run_configs())
def test_property_run_config_round_trips_through_flat_form(cfg):
    cmp = Comparison({"v": cfg})
    assert Comparison.from_flat(cmp.to_flat()) == cmp


@PROPERTY
@given(cmp=comparisons())
def test_property_comparison_round_trips_through_json_and_flat_form(cmp):
    assert Comparison.from_json(cmp.to_json()) == cmp
    assert Comparison.from_flat(cmp.to_flat()) == cmp
    assert Comparison.from_flat([f"{k}={v}" for k, v in cmp.to_flat()]) == cmp


numberish = st.from_regex(r"[ +-]?[0-9]{0,30}(\.[0-9]{0,10})?([eE][+-]?[0-9]{1,4})?[ ]?", fullmatch=True)
garbage = st.one_of(st.text(), numberish, st.sampled_from(
    ["nan", "-inf", "infinity", "1e999", "0x10", "1_000", "٣", "", " ", "1,5", "--1", "1e", ".", "None", "true"]))


@PROPERTY
@given(field=st.sampled_from(NUMERIC_FIELDS), raw=garbage)
def test_property_garbage_strings_for_numeric_fields_raise_only_config_error(field, raw):
    for attempt in (
        lambda: Comparison.from_flat([(field, raw)]),
        lambda: Comparison.from_flat([f"{field}={raw}"]),
        lambda: RunConfig.from_dict({field: raw}),
        lambda: Comparison.from_json(json.dumps({"variants": {"a": {field: raw}}})),
    ):
        try:
            attempt()
        except ConfigError as exc:
            assert str(exc) and "\n" not in str(exc)


json_garbage = st.one_of(
    st.none(), st.booleans(), st.integers(-2**62, 2**62), st.floats(), st.text(max_size=10),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@PROPERTY
@given(field=st.sampled_from([f.name for f in FIELDS]), raw=json_garbage)
def test_property_garbage_json_values_raise_only_config_error(field, raw):
    try:
        Comparison.from_json(json.dumps({"variants": {"a": {field: raw}}}))
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)


def test_int_field_string_over_4300_digits_raises_config_error():
    config_error(Comparison.from_flat, [("steps", "1" * 5000)])


def test_float_field_huge_json_integer_raises_config_error():
    config_error(Comparison.from_json, '{"variants": {"a": {"lr": 1' + "0" * 400 + "}}}")


def test_json_integer_literal_over_4300_digits_raises_config_error():
    config_error(Comparison.from_json, '{"variants": {"a": {"steps": 1' + "0" * 5000 + "}}}")


# --------------------------------------------------------------------------- presets

@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_builds_a_valid_comparison(name):
    p = presets.PRESETS[name]
    cmp = p.comparison()
    assert isinstance(cmp, Comparison)
    assert cmp.names == list(p.variants) and len(cmp.names) >= 2
    assert p.title and p.note and p.source and p.claim
    # each variant is a valid config and survives both serializations
    assert Comparison.from_json(cmp.to_json()) == cmp
    assert Comparison.from_flat(cmp.to_flat()) == cmp
    assert presets.get(name) is p


def test_resolve_applies_preset_then_overrides():
    cmp = presets.resolve(["preset=quick-look", "lr=0.1"])
    quick = presets.PRESETS["quick-look"].comparison()
    assert cmp.names == quick.names
    for name, cfg in cmp.variants.items():
        assert cfg.lr == 0.1
        assert cfg == quick.variants[name].replace(lr=0.1)


def test_resolve_per_variant_override_on_a_preset():
    cmp = presets.resolve(["bn.placement=after"], default="paper-fig1")
    assert cmp.variants["bn"].placement == "after"
    assert cmp.variants["plain"].placement == "before"


def test_resolve_named_preset_overrides_default():
    assert presets.resolve(["preset=conv"], default="quick-look").variants["bn"].model == "cnn"


def test_resolve_without_preset_starts_from_defaults():
    assert presets.resolve(["lr=0.2"]) == Comparison({"plain": RunConfig(lr=0.2)})


@pytest.mark.parametrize("pairs", [["preset=nope"], ["preset=quick-look", "preset=conv"]])
def test_unknown_or_repeated_preset_raises_config_error(pairs):
    assert config_error(presets.resolve, pairs).startswith("preset:")


def test_unknown_preset_message_lists_known_presets():
    msg = config_error(presets.get, "nope")
    assert "'nope'" in msg and "paper-fig1" in msg


def test_paper_fig1_matches_the_papers_setup():
    cmp = presets.PRESETS["paper-fig1"].comparison()
    assert cmp.names == ["plain", "bn"]
    for cfg in cmp.variants.values():
        assert (cfg.dataset, cfg.model, cfg.depth, cfg.width, cfg.activation) == ("mnist", "mlp", 3, 100, "sigmoid")
        assert cfg.batch_size == 60
        assert cfg.steps == 50_000
    assert cmp.variants["plain"].norm == "none"
    assert cmp.variants["bn"].norm == "batch"
    assert cmp.variants["bn"].placement == "before"
    # no bias before BN (beta replaces it); the plain net keeps its biases
    bn_net = build_model(cmp.variants["bn"], (1, 28, 28), 10)
    plain_net = build_model(cmp.variants["plain"], (1, 28, 28), 10)
    assert all(b.linear.bias is None for b in bn_net.hidden)
    assert all(b.linear.bias is not None for b in plain_net.hidden)
    assert all(isinstance(b.norm, torch.nn.BatchNorm1d) for b in bn_net.hidden)



def test_a_per_variant_key_wins_over_a_shared_key_in_any_order():
    for pairs in (["variants=plain,bn", "bn.lr=0.1", "lr=0.3"], ["variants=plain,bn", "lr=0.3", "bn.lr=0.1"]):
        cmp = Comparison.from_flat(pairs)
        assert cmp.variants["bn"].lr == 0.1 and cmp.variants["plain"].lr == 0.3


def test_changed_settings_names_what_a_run_changes_from_its_presets_note_in_the_notes_words():
    """The note says "50,000 steps of batch 60, test accuracy every 500 steps"; a run of 300 steps
    said nothing of it, on the page and in the report."""
    fig1 = presets.get("paper-fig1")
    assert presets.changed_settings(fig1, fig1.comparison()) is None
    assert presets.changed_settings(fig1, fig1.comparison().with_all(steps=300, eval_every=50, lr=0.2)) == (
        "This run differs from the note: lr 0.2 instead of 0.5; 300 instead of 50,000 steps; "
        "test accuracy every 50 instead of 500 steps.")
    one = presets.resolve(["preset=paper-fig1", "bn.lr=0.1", "plain.init_scale=0.5"])  # a variant's own
    assert presets.changed_settings(fig1, one) == (
        "This run differs from the note: bn: lr 0.1 instead of 0.5; plain: init_scale 0.5 instead of 0.1.")
    more = presets.resolve(["preset=paper-fig1", "variants=plain,bn,ln", "ln.norm=layer"])
    assert presets.changed_settings(fig1, more) == (
        "This run differs from the note: variants plain, bn, ln instead of plain, bn.")
