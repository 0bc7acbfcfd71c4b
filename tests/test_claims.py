"""Every preset's claim, asserted on a shortened run of that preset.

One test per preset in ``bnviz.presets.PRESETS`` trains the preset's own comparison (or
sweep), shortened: fewer steps, a smaller sweep where the sweep is long, the bundled
mnist-mini (offline), one fixed seed. It asserts the preset's ``claim`` with numbers from
``bnviz/claims.py``, the definitions the pages and docs/EXPERIMENTS.md use. The margins
were chosen from runs at several seeds of the same shortened setup; the comment at each
assertion gives the range measured ("seeds 0-4: ..."), so a margin is wide where the
effect is and a failing assertion means the effect changed, not the luck of one seed.
To re-check the margins at another seed: ``BNVIZ_CLAIMS_SEED=3 pytest tests/test_claims.py``.

A preset added to the registry without a test here fails
``test_every_preset_has_a_claim_test``.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bnviz import claims, presets
from bnviz.config import Comparison
from bnviz.runlog import RunSnapshot
from bnviz.sweep import largest_stable, run_sweep
from bnviz.trainer import Trainer

torch.set_num_threads(1)

SEED = int(os.environ.get("BNVIZ_CLAIMS_SEED", "0"))
CHANCE = 0.1  # ten digit classes
LN10 = math.log(10)  # the loss of a net that predicts every class with probability 1/10

# preset name -> the test that asserts its claim (filled by @claim_test)
CLAIM_TESTS: dict[str, str] = {}
# Presets whose claim is asserted in a test file of their own (the file must exist).
OWN_TEST_FILE = {"depth-growth": "test_depth_growth.py"}


def claim_test(preset: str):
    """Register the decorated test as the one that asserts ``preset``'s claim."""
    def register(fn):
        assert preset not in CLAIM_TESTS, f"two claim tests for {preset}"
        CLAIM_TESTS[preset] = fn.__name__
        return fn
    return register


def shortened(name: str, **changes) -> Comparison:
    """The preset's comparison on mnist-mini at the fixed seed, with ``changes`` for every variant."""
    return presets.get(name).comparison().with_all(dataset="mnist-mini", seed=SEED, **changes)


@functools.cache
def _train(config_json: str) -> RunSnapshot:
    trainer = Trainer(Comparison.from_json(config_json))
    trainer.run()
    return trainer.log.snapshot()


def train(comparison: Comparison) -> RunSnapshot:
    """Train to the end and return the record. Identical comparisons are trained once per
    session (shortened, paper-fig1 and quick-look are the same run)."""
    return _train(comparison.to_json())


# --------------------------------------------------------------------------- Ioffe & Szegedy 2015

@claim_test("paper-fig1")
def test_paper_fig1_bn_leads_early_and_without_bn_the_sigmoid_input_drifts():
    """BN trains faster; without BN the last layer's sigmoid input drifts in median and spread."""
    snap = train(shortened("paper-fig1", steps=1_000, eval_every=100))  # 50,000 steps, eval every 500
    plain, bn = snap.variants["plain"], snap.variants["bn"]
    # Faster: at step 200 BN is ahead (seeds 0-8: by 0.13-0.20; BN 0.89-0.90, plain 0.69-0.77).
    lead = claims.accuracy_at(bn, 200) - claims.accuracy_at(plain, 200)
    assert lead >= 0.05, f"BN's lead at step 200: {lead:.3f}"
    dp, db = claims.unit_drift(plain), claims.unit_drift(bn)
    # The tracked unit's median wanders further without BN (seeds 0-8: plain 1.00-2.41, BN 0.86-1.11,
    # ratio 1.15-2.27: one random unit, so only "further", no factor).
    assert dp.median_range > db.median_range, (dp, db)
    # Its 15-85 band widens many times over without BN (seeds 0-8: x9.8-x26); with BN only as far
    # as gamma grows (x1.45-x1.76). 5x and 3x BN's factor leave room on both sides.
    widen_plain, widen_bn = dp.band_end / dp.band_start, db.band_end / db.band_start
    assert widen_plain >= 5 and widen_plain >= 3 * widen_bn, (widen_plain, widen_bn)
    # Not asserted: "higher". On mnist-mini both plateau near 0.92 (EXPERIMENTS.md: 0.929 vs 0.934
    # after 50,000 steps); at 1,000 steps the plain net is often the one ahead.


def test_figure1_table_has_a_row_per_measure_a_column_per_variant_and_converts_to_arrow():
    snap = train(shortened("paper-fig1", steps=1_000, eval_every=100))  # the run above, trained once
    rows = {r["measure"]: r for r in claims.figure1_table(snap)}
    assert list(rows) == ["final test accuracy", "steps to 90%", "steps to 95%", "unit median: start → end",
                          "unit median range", "unit 15–85 width: start → end"]
    assert all(list(r) == ["measure", "plain", "bn"] for r in rows.values())
    for name, v in snap.variants.items():
        assert rows["final test accuracy"][name] == f"{claims.final_accuracy(v):.3f}"
        d = claims.unit_drift(v)
        assert rows["unit median range"][name] == f"{d.median_range:.3f}"
        assert rows["unit 15–85 width: start → end"][name] == f"{d.band_start:.2f} → {d.band_end:.2f}"
        for threshold, measure in ((0.90, "steps to 90%"), (0.95, "steps to 95%")):
            steps = claims.steps_to_accuracy(v, threshold)
            assert rows[measure][name] == ("not reached" if steps is None else f"{steps:,}")
    # mnist-mini plateaus near 0.92: 95% is never reached in 1,000 steps (EXPERIMENTS.md).
    assert set(rows["steps to 95%"].values()) == {"steps to 95%", "not reached"}
    pa = pytest.importorskip("pyarrow")
    pa.Table.from_pylist(list(rows.values()))  # what st.dataframe does with the rows; mixed types would raise


@claim_test("quick-look")
def test_quick_look_bn_leads_early_and_its_pre_activations_stay_centred_with_unit_spread():
    snap = train(shortened("quick-look", steps=1_000))
    plain, bn = snap.variants["plain"], snap.variants["bn"]
    lead = claims.accuracy_at(bn, 200) - claims.accuracy_at(plain, 200)
    assert lead >= 0.05, f"BN's lead at step 200: {lead:.3f}"  # seeds 0-8: 0.13-0.20
    # BN's pre-activations at the end: mean ~0 (seeds 0-4: |mean| <= 0.052) and std 1.10-1.50 (gamma
    # grows from 1). The plain net fails the same test: its hidden1 std is ~5 (EXPERIMENTS.md: 5.55
    # at 3,000 steps), so the bounds tell the two apart.
    def centred_unit_spread(v) -> bool:
        mean, std = claims.layer_end(v, "act_mean"), claims.layer_end(v, "act_std")
        return bool(np.all(np.abs(mean) <= 0.2) and np.all((std >= 0.67) & (std <= 2.0)))
    assert centred_unit_spread(bn), (claims.layer_end(bn, "act_mean"), claims.layer_end(bn, "act_std"))
    assert not centred_unit_spread(plain), claims.layer_end(plain, "act_std")


# --------------------------------------------------------------------------- vanishing gradients

@claim_test("deep-sigmoid")
def test_deep_sigmoid_plain_stalls_with_vanishing_early_gradients_while_bn_trains():
    snap = train(shortened("deep-sigmoid", steps=500, eval_every=100))  # 3,000 steps
    plain, bn = snap.variants["plain"], snap.variants["bn"]
    # The plain net stays at chance (seeds 0-4: 0.100 at every evaluation; EXPERIMENTS.md: 0.100 after
    # 3,000 steps) and its loss at ln(10) = 2.30 (it learns the class prior only: 2.31 at the end);
    # BN is at 0.885-0.908 with a loss of 0.21-0.26 after 500 steps.
    assert claims.final_accuracy(plain) <= CHANCE + 0.1
    assert claims.final_accuracy(bn) >= 0.8
    _, plain_end = claims.loss_start_end(plain)
    _, bn_end = claims.loss_start_end(bn)
    assert plain_end >= LN10 - 0.1 and bn_end <= 0.5, (plain_end, bn_end)
    # hidden1's gradient over hidden10's: ~1e-5 without BN (seeds 0-4: 0.97e-5-1.09e-5), 2.3-2.4 with BN.
    # "Orders of magnitude": below 1e-3, and three orders below BN's.
    r_plain, r_bn = claims.grad_norm_ratio(plain), claims.grad_norm_ratio(bn)
    assert r_plain < 1e-3 and r_plain < 1e-3 * r_bn, (r_plain, r_bn)


# --------------------------------------------------------------------------- learning rate

@claim_test("high-lr")
@pytest.mark.slow
def test_high_lr_bn_trains_at_rates_where_plain_diverges_and_both_match_at_small_rates():
    preset = presets.get("high-lr")
    field, values = preset.sweep  # all seven rates, 300 steps each instead of 1,000
    result = run_sweep((shortened("high-lr"), field, values), steps=300)
    rows = result.rows
    # Without BN every rate >= 1 diverges (seeds 0-4: by step 5-11, as at full length); BN trains at
    # 1 and 3 (0.90-0.95; EXPERIMENTS.md: 0.953 and 0.936).
    for lr in (v for v in values if v >= 1):
        assert result.row(lr, "plain")["diverged"], f"plain did not diverge at lr {lr}"
    for lr in (1.0, 3.0):
        assert (result.row(lr, "bn")["test_acc"] or 0.0) >= 0.85, result.row(lr, "bn")
    # "Far larger": the largest stable rate (no divergence, >= 90% of the sweep's best accuracy) is
    # 0.3 without BN and 3 with BN at seeds 0-4, 10x; at 1,000 steps 0.1 vs 3 (EXPERIMENTS.md, 30x).
    # BN at 3 clears the bar (0.84-0.86) by 0.06-0.09.
    threshold = claims.sweep_threshold(rows)
    lr_plain, lr_bn = largest_stable(rows, "plain", threshold), largest_stable(rows, "bn", threshold)
    assert lr_plain is not None and lr_bn is not None and lr_bn >= 10 * lr_plain, (lr_plain, lr_bn, threshold)
    # At small rates the two are alike (seeds 0-4: |difference| <= 0.027 at 0.01 and <= 0.013 at 0.03).
    for lr in values[:2]:
        gap = abs(result.row(lr, "plain")["test_acc"] - result.row(lr, "bn")["test_acc"])
        assert gap <= 0.05, f"lr {lr}: plain and BN differ by {gap:.3f}"

    # "Large updates blow the activations up": the preset's base (lr 1, where the live lab opens it),
    # with the probes on, until the plain net diverges. Its last layer's std grows from ~1.4 to
    # 1e15 or overflows (seeds 0-4) before the loss turns NaN; BN's stays at 1.0.
    snap = train(shortened("high-lr", steps=30, eval_every=30))
    plain, bn = snap.variants["plain"], snap.variants["bn"]
    assert plain.status == "diverged" and bn.status == "finished"
    assert claims.activation_growth(plain) >= 1e3 and claims.activation_growth(bn) <= 2, (
        claims.activation_growth(plain), claims.activation_growth(bn))


# --------------------------------------------------------------------------- placement

@claim_test("placement")
def test_placement_both_train_and_bn_before_keeps_the_nonlinearity_input_normalized():
    snap = train(shortened("placement", steps=600))  # 3,000 steps
    plain, before, after = (snap.variants[n] for n in ("plain", "before", "after"))
    # Both train: 0.924-0.940 here at seeds 0-4 (EXPERIMENTS.md: before 0.937, after 0.934, plain
    # 0.943 after 3,000 steps); neither more than 0.03 behind the plain net (measured <= 0.015).
    for v in (before, after):
        acc = claims.final_accuracy(v)
        assert acc >= 0.9 and acc >= claims.final_accuracy(plain) - 0.03, (v.name, acc)
    # Before: the input of each ReLU is BN's output, std 1.00-1.09 and |mean| <= 0.06 in every layer.
    # After: BN normalizes the ReLU's output instead, so the next layer's ReLU input is unnormalized
    # (std 1.48-2.84, like plain's 2.26-3.07; seeds 0-4). What the probes see is the input of the nonlinearity, so
    # "after normalizes its output" is asserted as "its input is not normalized".
    def deviation(v) -> float:
        return float(np.max(np.abs(claims.layer_end(v, "act_std") - 1)))
    assert deviation(before) <= 0.2 and np.all(np.abs(claims.layer_end(before, "act_mean")) <= 0.15), (
        claims.layer_end(before, "act_std"), claims.layer_end(before, "act_mean"))
    assert deviation(after) >= 0.3, claims.layer_end(after, "act_std")


# --------------------------------------------------------------------------- Santurkar et al. 2018

@claim_test("noisy-bn")
@pytest.mark.slow
def test_noisy_bn_trains_like_bn_while_its_distributions_move_more_than_plain():
    snap = train(shortened("noisy-bn", steps=600, eval_every=100))  # 3,000 steps
    plain, bn, noisy = (snap.variants[n] for n in ("plain", "bn", "noisy"))
    # Trains about as well as BN: within 0.03 at the end (seeds 0-4: <= 0.010), and like BN, not
    # like plain, early (step 200: noisy 0.88-0.91, BN 0.89-0.90, plain 0.71-0.76).
    assert abs(claims.final_accuracy(noisy) - claims.final_accuracy(bn)) <= 0.03
    assert claims.accuracy_at(noisy, 200) >= claims.accuracy_at(plain, 200) + 0.05
    # More distribution shift: the last hidden layer's mean and std move 0.43-0.45 per step with the
    # injected noise, 0.028-0.034 without BN, 0.001 with BN (seeds 0-4); 5x plain's leaves ample room.
    assert claims.step_shift(noisy) >= 5 * claims.step_shift(plain) > claims.step_shift(bn), (
        claims.step_shift(noisy), claims.step_shift(plain), claims.step_shift(bn))
    # The tracked unit's median also wanders further than BN's (seeds 0-4: 1.52-2.03 vs 0.69-0.94,
    # ratio 1.9-2.4). Not reliably beyond plain's on that measure (seed 0: 1.79 vs 2.16;
    # EXPERIMENTS.md: 1.94 vs 2.18), hence step_shift above.
    assert claims.unit_drift(noisy).median_range >= 1.3 * claims.unit_drift(bn).median_range


@claim_test("ics-measure")
@pytest.mark.slow
def test_ics_measure_bn_shows_no_less_ics_yet_its_loss_is_smoother_along_the_gradient():
    """BN's ICS (Santurkar et al.'s measure) is not smaller, yet it trains better and its loss
    changes less along the gradient. docs/EXPERIMENTS.md has no numbers for this preset yet;
    the ranges below are from this shortened run (1,000 of 3,000 steps, probes every 100 as in
    the preset) at seeds 0-4, and at seed 0 they agree with the full 3,000-step run."""
    snap = train(shortened("ics-measure", steps=1_000))
    plain, bn = snap.variants["plain"], snap.variants["bn"]
    mean = claims.landscape_mean
    # ||G - G'|| of layers 2-3: BN's is 1.4-2.9x plain's (full run, seed 0: 2.9x); cos(G, G') is
    # at most 0.06 higher with BN (full run: 0.83 vs 0.95, lower). So BN does not reduce it.
    assert mean(bn, "ics_l2") >= mean(plain, "ics_l2"), (mean(bn, "ics_l2"), mean(plain, "ics_l2"))
    assert mean(bn, "ics_cos") <= mean(plain, "ics_cos") + 0.1, (mean(bn, "ics_cos"), mean(plain, "ics_cos"))
    # ... yet it trains better (step 200: BN ahead by 0.13-0.18).
    assert claims.accuracy_at(bn, 200) >= claims.accuracy_at(plain, 200) + 0.05
    # Its loss changes less along the gradient: loss range 0.28-0.60x plain's (full run: 0.37x);
    # its gradients are more predictive: gradient change 0.44-0.86x plain's (full run: 0.68x).
    assert mean(bn, "loss_range") <= 0.8 * mean(plain, "loss_range"), (mean(bn, "loss_range"),
                                                                      mean(plain, "loss_range"))
    assert mean(bn, "grad_change") < mean(plain, "grad_change"), (mean(bn, "grad_change"),
                                                                  mean(plain, "grad_change"))
    # Not asserted: effective beta-smoothness, which the claim leaves out: BN's is 0.9-1.2x plain's
    # here (full run: 1.7x), not lower.


# --------------------------------------------------------------------------- batch size

@claim_test("small-batch")
@pytest.mark.slow
def test_small_batch_bn_degrades_at_batch_2_while_layer_group_norm_and_renorm_hold_up():
    # Batch sizes 2, 4 and 32 of the preset's 2..256, 300 steps of 2,000; Batch Renorm relaxes
    # after 30 steps instead of 200, the same tenth of the run as in the preset.
    field, values = presets.get("small-batch").sweep
    assert {2, 4, 32} <= set(values)
    result = run_sweep((shortened("small-batch", renorm_warmup=30), field, (2, 4, 32)), steps=300)

    def acc(size: int, norm: str) -> float:
        return result.row(size, norm)["test_acc"]

    # BN loses most of its accuracy at batch 2 (seeds 0-4: 0.91-0.93 at 32, 0.24-0.41 at 2, a drop of
    # 0.52-0.68; EXPERIMENTS.md at 2,000 steps: 0.937 and 0.362).
    bn_drop = acc(32, "bn") - acc(2, "bn")
    assert bn_drop >= 0.4, bn_drop
    # LayerNorm and GroupNorm do not: 0.68-0.80 at batch 2 after 300 steps (0.90 at 2,000), a drop
    # of 0.12-0.24 that is at most 0.39x BN's, and 0.32-0.56 above BN at batch 2 (seeds 0-4).
    for norm in ("layer", "group"):
        drop = acc(32, norm) - acc(2, norm)
        assert drop <= 0.5 * bn_drop and acc(2, norm) >= acc(2, "bn") + 0.2, (norm, drop, acc(2, norm))
    # Batch Renorm holds up better than BN at batch 2 (seeds 0-4: by 0.08-0.30; at 2,000 steps
    # 0.601 vs 0.362). At batch 4 its lead is small or none (-0.01-0.06 here), so not asserted there.
    assert acc(2, "renorm") >= acc(2, "bn") + 0.05, (acc(2, "renorm"), acc(2, "bn"))
    # Train vs eval mode: with 2-4 examples a test batch's own statistics are far off the running
    # ones (BN's gap 0.055-0.25 at 2, 0.17-0.20 at 4; seeds 0-4) and at 32 they agree (0.008-0.025).
    gaps = {size: claims.train_eval_gap(result.row(size, "bn")) for size in (2, 4, 32)}
    assert min(gaps[2], gaps[4]) > gaps[32] and gaps[4] >= 0.1 and gaps[4] >= 3 * gaps[32], gaps


@claim_test("ghost-bn")
@pytest.mark.slow
def test_ghost_bn_fits_the_training_set_less_tightly_than_bn_at_a_large_batch_yet_tests_better():
    snap = train(shortened("ghost-bn", steps=1_000))  # 2,000 steps
    bn, ghost = snap.variants["bn"], snap.variants["ghost"]
    # Less tightly: the training loss over the last 5% of steps is 2.6-3.3x BN's (seeds 0-5), so 2x.
    train_bn, train_ghost = claims.loss_start_end(bn)[1], claims.loss_start_end(ghost)[1]
    assert train_ghost >= 2 * train_bn, (train_ghost, train_bn)
    # Yet better on the test set: test loss over the last 3 evaluations lower by 0.008-0.043 (seeds
    # 0-5; by 0.016-0.068 at the preset's 2,000 steps, seeds 0-4, as BN's test loss climbs).
    assert claims.late_test_loss(ghost) < claims.late_test_loss(bn), (claims.late_test_loss(ghost),
                                                                       claims.late_test_loss(bn))
    # Accuracy as high or higher: final test accuracy ahead by 0.002-0.010 (seeds 0-5); one
    # evaluation of 1,000 images moves by ~0.005, hence the slack.
    assert claims.final_accuracy(ghost) >= claims.final_accuracy(bn) - 0.005, (claims.final_accuracy(ghost),
                                                                              claims.final_accuracy(bn))


# --------------------------------------------------------------------------- convolutions

@claim_test("conv")
@pytest.mark.slow
def test_conv_bn_cnn_trains_faster_and_its_channel_pre_activations_stay_normalized():
    snap = train(shortened("conv", steps=150, eval_every=25))  # 1,500 steps, eval every 100
    plain, bn = snap.variants["plain"], snap.variants["bn"]
    # Faster: mean test accuracy over the evaluations up to step 150 (seeds 0-5: BN ahead by
    # 0.04-0.29, BN 0.34-0.40; the smallest lead, 0.042, at seed 4). Only early: at seed 4 the plain
    # net is level by step 300, and after 1,500 steps the two end alike (EXPERIMENTS.md: 0.908 vs
    # 0.910), so the margin is small.
    lead = claims.mean_accuracy(bn) - claims.mean_accuracy(plain)
    assert lead >= 0.02, lead
    # Normalized channels: BN's std 1.00-1.06 and |mean| <= 0.03 in every layer; the plain net's
    # deviate (largest |std - 1| 0.74-2.8, largest |mean| 0.96-1.99 at seeds 0-4), so the bounds
    # separate the two.
    def normalized(v) -> bool:
        std, mean = claims.layer_end(v, "act_std"), claims.layer_end(v, "act_mean")
        return bool(np.all(np.abs(std - 1) <= 0.25) and np.all(np.abs(mean) <= 0.25))
    assert normalized(bn), (claims.layer_end(bn, "act_std"), claims.layer_end(bn, "act_mean"))
    assert not normalized(plain), (claims.layer_end(plain, "act_std"), claims.layer_end(plain, "act_mean"))


# --------------------------------------------------------------------------- coverage

def test_every_preset_has_a_claim_test():
    """A preset added to the registry without a claim test (here, or in a file of its own
    that exists) fails here; so does a claim test whose preset is gone."""
    own = {name for name, file in OWN_TEST_FILE.items() if (Path(__file__).parent / file).exists()}
    missing = set(presets.PRESETS) - set(CLAIM_TESTS) - own
    assert not missing, f"presets without a claim test in tests/test_claims.py: {sorted(missing)}"
    stale = set(CLAIM_TESTS) - set(presets.PRESETS)
    assert not stale, f"claim tests for presets that are not in the registry: {sorted(stale)}"
    for name, test in CLAIM_TESTS.items():
        assert callable(globals().get(test)) and test.startswith("test_"), (name, test)
