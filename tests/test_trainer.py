"""Tests for bnviz.trainer: divergence, lockstep batches, reproducibility, thread control, devices."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from bnviz.config import Comparison
from bnviz.errors import ConfigError
from bnviz.metrics import LAYER_METRICS
from bnviz.runlog import to_csv
from bnviz.trainer import Sampler, Trainer, resolve_device, tracked_units

# plain: a ReLU net at lr 1e6 blows up within a few steps; bn: a normal learning rate.
DIVERGING = ["variants=plain,bn", "bn.norm=batch", "activation=relu", "init=kaiming", "init_scale=1.0",
             "plain.lr=1e6", "bn.lr=0.1", "width=16", "depth=3", "steps=60", "eval_every=20"]


def small(*pairs: str, steps: int = 40) -> Comparison:
    """A small comparison; ``pairs`` add to or override the defaults below."""
    fields = {"width": "16", "depth": "2", "steps": str(steps), "eval_every": "10", "hist_every": "5"}
    fields.update(p.split("=", 1) for p in pairs)
    return Comparison.from_flat([f"{k}={v}" for k, v in fields.items()])


def hooks_left(trainer: Trainer) -> int:
    return sum(len(m._forward_hooks) for v in trainer.variants for m in v.model.modules())


def finish(trainer: Trainer) -> None:
    """Stop a threaded trainer and wait for it (test cleanup)."""
    trainer.stop()
    assert trainer.join(timeout=60), "trainer thread did not stop"


# --------------------------------------------------------------------------- divergence

def test_diverging_variant_is_marked_and_the_other_keeps_training():
    trainer = Trainer(Comparison.from_flat(DIVERGING + ["hist_every=1"]))
    trainer.run()
    snap = trainer.log.snapshot()
    plain, bn = snap.variants["plain"], snap.variants["bn"]
    assert plain.status == "diverged"
    assert plain.diverged_at is not None and 1 < plain.diverged_at < 60
    assert "NaN or infinite" in plain.message and str(plain.diverged_at) in plain.message
    # no rows at or after the divergence; the rows before it are finite
    assert len(plain.steps) and plain.steps.max() < plain.diverged_at
    assert np.isfinite(plain.series["train_loss"]).all()
    assert (plain.eval_steps < plain.diverged_at).all()
    assert (plain.hist_steps < plain.diverged_at).all()
    # the other variant trained to its last step
    assert bn.status == "finished" and bn.diverged_at is None
    assert bn.step == 60 and bn.steps[-1] == 60 and len(bn.steps) == 60
    assert bn.eval_steps.tolist() == [0, 20, 40, 60]
    assert snap.state == "finished"
    assert any(e.text == "diverged" and e.variant == "plain" and e.step == plain.diverged_at for e in snap.events)


def test_csv_marks_the_divergence_step():
    trainer = Trainer(Comparison.from_flat(DIVERGING + ["hist_every=1"]))
    trainer.run()
    snap = trainer.log.snapshot()
    rows = list(csv.DictReader(io.StringIO(to_csv(snap))))
    marks = [r for r in rows if r["metric"] == "diverged"]
    assert [(r["variant"], int(r["step"]), r["layer"], float(r["value"])) for r in marks] == [
        ("plain", snap.variants["plain"].diverged_at, "", 1.0)]
    assert max(int(r["step"]) for r in rows if r["variant"] == "plain") == snap.variants["plain"].diverged_at


def test_early_divergence_with_default_hist_every_does_not_crash_the_run():
    trainer = Trainer(Comparison.from_flat(DIVERGING))
    trainer.run()
    snap = trainer.log.snapshot()
    assert snap.variants["plain"].status == "diverged"
    assert snap.variants["bn"].status == "finished"


# --------------------------------------------------------------------------- lockstep and reproducibility

def test_identical_variants_named_differently_record_identical_metrics():
    trainer = Trainer(small("variants=first,second", "dataset=mnist-mini", "tracked_unit=3"))
    trainer.run()
    snap = trainer.log.snapshot()
    a, b = snap.variants["first"], snap.variants["second"]
    assert a.series["train_loss"][0] == b.series["train_loss"][0]
    for metric in a.series:
        assert np.array_equal(a.series[metric], b.series[metric]), metric
    assert np.array_equal(a.evals["test_loss"], b.evals["test_loss"])
    assert np.array_equal(a.hists, b.hists)


def test_variants_differing_only_in_lr_see_the_same_first_batch():
    """Same seed and batch size: same batch and same initial weights, so the first loss agrees."""
    trainer = Trainer(small("variants=slow,fast", "slow.lr=0.01", "fast.lr=1.0", "dataset=mnist-mini"))
    trainer.run()
    snap = trainer.log.snapshot()
    slow, fast = snap.variants["slow"], snap.variants["fast"]
    assert slow.series["train_loss"][0] == fast.series["train_loss"][0]
    assert not np.array_equal(slow.series["train_loss"], fast.series["train_loss"])  # then they part


def test_variants_with_different_seeds_see_different_batches():
    trainer = Trainer(small("variants=a,b", "b.seed=1", "dataset=mnist-mini"))
    trainer.run(steps=1)
    snap = trainer.log.snapshot()
    assert snap.variants["a"].series["train_loss"][0] != snap.variants["b"].series["train_loss"][0]


def test_same_comparison_run_twice_gives_identical_csv():
    pairs = ["variants=plain,bn,noisy", "bn.norm=batch", "noisy.norm=noisy_batch", "dropout=0.2",
             "dataset=mnist-mini"]
    texts = []
    for _ in range(2):
        trainer = Trainer(small(*pairs, steps=30))
        trainer.run()
        texts.append(to_csv(trainer.log.snapshot()))
    assert texts[0] == texts[1]
    assert texts[0].count("\n") > 30 * 3


def test_run_records_one_row_per_step_and_evaluations_at_the_configured_steps():
    trainer = Trainer(small("variants=plain,bn", "bn.norm=batch", "bn.steps=25", "dataset=spiral", steps=40))
    trainer.run()
    snap = trainer.log.snapshot()
    plain, bn = snap.variants["plain"], snap.variants["bn"]
    assert plain.steps.tolist() == list(range(1, 41)) and bn.steps.tolist() == list(range(1, 26))
    assert plain.eval_steps.tolist() == [0, 10, 20, 30, 40]
    assert bn.eval_steps.tolist() == [0, 10, 20, 25]  # and at its own last step
    assert plain.hist_steps.tolist() == [5, 10, 15, 20, 25, 30, 35, 40]
    assert plain.series["act_p50"].shape == (40, 2) and plain.hists.shape[1:] == (2, 96)
    assert bn.status == plain.status == "finished"
    assert snap.state == "finished"


def test_recorded_metrics_are_consistent():
    trainer = Trainer(small("variants=plain,bn", "bn.norm=batch", "dataset=mnist-mini"))
    trainer.run()
    for v in trainer.log.snapshot().variants.values():
        s = v.series
        assert (s["act_p15"] <= s["act_p50"]).all() and (s["act_p50"] <= s["act_p85"]).all()
        assert (s["unit_p15"] <= s["unit_p50"]).all() and (s["unit_p50"] <= s["unit_p85"]).all()
        assert (s["act_std"] > 0).all() and (s["grad_norm"] > 0).all() and (s["update_ratio"] > 0).all()
        assert set(LAYER_METRICS) <= set(s)
        np.testing.assert_allclose(v.hists.sum(axis=2), 1.0, atol=1e-5)
        assert ((v.evals["test_acc"] >= 0) & (v.evals["test_acc"] <= 1)).all()


def test_weight_norm_matches_the_model_after_training():
    trainer = Trainer(small("dataset=blobs", steps=20))
    trainer.run()
    v = trainer.log.snapshot().variants["plain"]
    model = trainer.variants[0].model
    for j, block in enumerate(model.hidden):
        assert v.series["weight_norm"][-1, j] == pytest.approx(block.linear.weight.norm().item(), rel=1e-5)


def test_run_with_a_step_budget_stops_and_resumes():
    trainer = Trainer(small("dataset=blobs", steps=30))
    trainer.run(steps=12)
    snap = trainer.log.snapshot()
    assert trainer.step_count == 12 and snap.variants["plain"].step == 12
    assert snap.state == "stopped" and snap.variants["plain"].status == "stopped"
    assert hooks_left(trainer) == 0


def test_tracked_units_are_reproducible_and_in_range():
    cfg = small("depth=5").variants["plain"]
    units = tracked_units(cfg)
    assert units == tracked_units(cfg) and len(units) == 5 and all(0 <= u < 16 for u in units)
    assert tracked_units(cfg.replace(tracked_unit=3)) == [3] * 5


def test_sampler_gives_disjoint_batches_within_an_epoch_and_reshuffles():
    s = Sampler(10, 3, seed=0)
    first_epoch = [s.next() for _ in range(3)]
    seen = torch.cat(first_epoch)
    assert len(set(seen.tolist())) == 9  # no repeats; the last partial batch is dropped
    assert all(len(b) == 3 for b in first_epoch)
    again = Sampler(10, 3, seed=0)
    assert all(torch.equal(a, again.next()) for a in first_epoch)


# --------------------------------------------------------------------------- thread control

def long_run() -> Comparison:
    return Comparison.from_flat(["variants=plain,bn", "bn.norm=batch", "dataset=blobs", "width=8", "depth=2",
                                 "steps=100000", "eval_every=1000", "hist_every=50"])


def test_step_while_paused_advances_exactly_that_many_steps(wait):
    trainer = Trainer(long_run())
    try:
        trainer.start(paused=True)
        trainer.step(5)
        assert wait(lambda: trainer.step_count >= 5 and trainer.state == "paused")
        assert wait(lambda: trainer.log.snapshot().step == 5)
        trainer.join(timeout=0.3)  # give a runaway worker the chance to overshoot
        assert trainer.step_count == 5
        snap = trainer.log.snapshot()
        assert [len(v.steps) for v in snap.variants.values()] == [5, 5]
        trainer.step(2)
        assert wait(lambda: trainer.log.snapshot().step == 7)
        trainer.join(timeout=0.3)
        assert trainer.step_count == 7
    finally:
        finish(trainer)


def test_pause_stops_growth_resume_continues_and_stop_ends_with_hooks_removed(wait):
    trainer = Trainer(long_run())
    try:
        trainer.start()
        assert wait(lambda: trainer.step_count > 0)
        trainer.pause()
        assert wait(lambda: trainer.state == "paused")
        paused_at = trainer.step_count
        assert wait(lambda: trainer.log.snapshot().step == paused_at)  # a paused page is complete
        trainer.join(timeout=0.3)
        assert trainer.step_count == paused_at
        assert trainer.log.snapshot().step == paused_at
        trainer.resume()
        assert wait(lambda: trainer.step_count > paused_at)
    finally:
        finish(trainer)
    snap = trainer.log.snapshot()
    assert trainer.state == "stopped" and snap.state == "stopped"
    assert {v.status for v in snap.variants.values()} == {"stopped"}
    assert trainer.step_count < 100_000
    assert all(not v.probes.active for v in trainer.variants) and hooks_left(trainer) == 0


def test_start_twice_is_refused():
    trainer = Trainer(long_run())
    try:
        trainer.start(paused=True)
        with pytest.raises(RuntimeError):
            trainer.start()
    finally:
        finish(trainer)


def test_threaded_run_finishes_on_its_own():
    trainer = Trainer(small("variants=plain,bn", "bn.norm=batch", "dataset=blobs", steps=30))
    trainer.start()
    assert trainer.join(timeout=60)
    snap = trainer.log.snapshot()
    assert trainer.state == "finished"
    assert all(v.status == "finished" and v.step == 30 for v in snap.variants.values())
    assert hooks_left(trainer) == 0


def test_set_lr_changes_the_optimizer_lr_and_adds_an_event(wait):
    trainer = Trainer(long_run())
    try:
        trainer.start(paused=True)
        trainer.set_lr(0.0123, "bn")
        assert wait(lambda: any(e.text.startswith("lr") for e in trainer.log.snapshot().events))
        by_name = {v.name: v for v in trainer.variants}
        assert all(g["lr"] == 0.0123 for g in by_name["bn"].optimizer.param_groups)
        assert all(g["lr"] == 0.5 for g in by_name["plain"].optimizer.param_groups)
        event = next(e for e in trainer.log.snapshot().events if e.text.startswith("lr"))
        assert event.variant == "bn" and "0.0123" in event.text and event.step == trainer.step_count
        trainer.set_lr(0.2)  # every variant
        assert wait(lambda: all(g["lr"] == 0.2 for v in trainer.variants for g in v.optimizer.param_groups))
        assert wait(lambda: any(e.variant is None and "0.2" in e.text for e in trainer.log.snapshot().events))
    finally:
        finish(trainer)


@pytest.mark.parametrize("lr, variant, what", [
    (0.0, None, "lr"), (-1.0, None, "lr"), (float("nan"), None, "lr"), (float("inf"), None, "lr"),
    (0.1, "nope", "nope"),
])
def test_set_lr_rejects_bad_values(lr, variant, what):
    trainer = Trainer(small("dataset=blobs"))
    try:
        with pytest.raises(ConfigError, match=what):
            trainer.set_lr(lr, variant)
    finally:
        trainer.close()
    assert hooks_left(trainer) == 0


# --------------------------------------------------------------------------- devices and data limits

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_falls_back_to_cpu_with_a_notice():
    trainer = Trainer(small("device=cuda", "dataset=blobs"))
    try:
        assert trainer.device.type == "cpu"
        notices = trainer.log.snapshot().notices
        assert any("cuda" in n and "cpu" in n for n in notices), notices
        trainer.run(steps=3)
        assert trainer.log.snapshot().variants["plain"].step == 3
    finally:
        trainer.close()


def test_resolve_device_cpu_has_no_notice():
    assert resolve_device("cpu") == (torch.device("cpu"), None)


def test_batch_size_larger_than_the_dataset_raises_config_error(monkeypatch):
    monkeypatch.setenv("BNVIZ_MAX_BATCH", "100000")
    cmp = small("dataset=mnist-mini", "batch_size=4001")  # mnist-mini trains on 4,000 digits
    with pytest.raises(ConfigError) as info:
        Trainer(cmp)
    msg = str(info.value)
    assert msg.startswith("batch_size:") and "4001" in msg and "4,000" in msg


def test_batch_size_equal_to_the_dataset_trains(monkeypatch):
    monkeypatch.setenv("BNVIZ_MAX_BATCH", "100000")
    trainer = Trainer(small("dataset=xor", "batch_size=4000", steps=3))
    trainer.run()
    assert trainer.log.snapshot().variants["plain"].status == "finished"
