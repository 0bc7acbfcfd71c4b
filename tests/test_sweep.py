"""Tests for sweeps: bnviz/sweep.py, sweep presets, the CLI on a sweep preset, sweep_figure."""

from __future__ import annotations

import csv
import io
import math
import threading

import pytest
import torch

from bnviz import presets
from bnviz.config import Comparison, RunConfig
from bnviz.figures import PALETTE, sweep_figure
from bnviz.sweep import (ROW_FIELDS, SweepJob, alive_sweeps, largest_stable, run_sweep, smallest_stable,
                         train_mode_accuracy)
from bnviz.trainer import Trainer
from tests.test_cli import main

torch.set_num_threads(1)

SPIRAL = RunConfig(dataset="spiral", depth=2, width=16, activation="relu", init="kaiming", init_scale=1.0,
                   lr=0.1, batch_size=16, steps=30, eval_every=10, hist_every=10)


def spiral(**variants: dict) -> Comparison:
    variants = variants or {"plain": {"norm": "none"}, "bn": {"norm": "batch"}}
    return Comparison({n: SPIRAL.replace(**ch) for n, ch in variants.items()})


# --------------------------------------------------------------------------- presets

def test_sweep_presets_are_in_the_one_registry():
    hl, sb = presets.get("high-lr"), presets.get("small-batch")
    field, values = hl.sweep
    assert field == "lr" and len(values) >= 5 and max(values) / min(values) >= 1000
    assert list(hl.variants) == ["plain", "bn"]
    assert sb.sweep == ("batch_size", (2, 4, 8, 16, 32, 64, 128, 256))
    assert {c.norm for c in sb.comparison().variants.values()} == {"batch", "layer", "group", "batch_renorm"}
    # comparison() is still the base, so the live lab can open a sweep preset
    assert isinstance(hl.comparison(), Comparison) and hl.comparison().names == ["plain", "bn"]
    assert presets.get("quick-look").sweep is None


# --------------------------------------------------------------------------- run_sweep

def test_tiny_sweep_gives_one_complete_row_per_value_and_variant():
    calls = []
    result = run_sweep((spiral(), "batch_size", (4, 8, 16)), progress=calls.append)
    assert result.complete and result.field == "batch_size"
    assert [(r["value"], r["variant"]) for r in result.rows] == [
        (v, n) for v in (4, 8, 16) for n in ("plain", "bn")]
    for r in result.rows:
        assert set(r) == set(ROW_FIELDS)
        assert r["status"] == "finished" and r["diverged"] is False and r["diverged_at"] is None
        assert r["steps"] == 30 and r["message"] is None
        assert 0 <= r["test_acc"] <= 1 and math.isfinite(r["train_loss"])
        if r["variant"] == "bn":
            assert 0 <= r["train_mode_acc"] <= 1
        else:
            assert r["train_mode_acc"] is None
    assert calls[-1].runs_done == calls[-1].runs_total == 3
    assert calls[-1].steps_done == calls[-1].steps_total == 90
    # the tidy-enough wide CSV: header ROW_FIELDS, one line per row, empty cells for None
    lines = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert len(lines) == 6 and list(lines[0]) == list(ROW_FIELDS)
    assert lines[0]["train_mode_acc"] == "" and lines[1]["train_mode_acc"] != ""
    assert lines[0]["diverged"] == "false"


def test_steps_argument_applies_to_every_run():
    result = run_sweep((spiral(), "lr", (0.05, 0.1)), steps=7)
    assert {r["steps"] for r in result.rows} == {7}


def test_a_diverging_value_is_recorded_and_the_sweep_goes_on():
    result = run_sweep((spiral(plain={"norm": "none"}), "lr", (0.1, 1e12, 0.2)))
    bad = result.row(1e12, "plain")
    assert bad["status"] == "diverged" and bad["diverged"] is True and isinstance(bad["diverged_at"], int)
    assert bad["test_acc"] is None and bad["train_loss"] is None and bad["steps"] == bad["diverged_at"]
    assert result.row(0.2, "plain")["status"] == "finished"
    assert result.largest_stable("plain", 0.0) == 0.2


def test_refused_values_are_skipped_with_their_message():
    result = run_sweep((spiral(), "batch_size", (1, 4)))
    bn1, plain1 = result.row(1, "bn"), result.row(1, "plain")
    assert bn1["status"] == "skipped" and bn1["message"].startswith("batch_size:") and "\n" not in bn1["message"]
    assert bn1["test_acc"] is None and bn1["diverged"] is False
    assert plain1["status"] == "finished"  # the variants that accept the value still run
    assert result.row(4, "bn")["status"] == "finished"
    # a value every variant refuses is skipped for all, without raising
    result = run_sweep((spiral(), "batch_size", (10**6 // 2, 8)))
    assert [r["status"] for r in result.rows] == ["skipped", "skipped", "finished", "finished"]
    assert all(r["message"] for r in result.rows[:2])


def test_largest_stable_on_hand_made_rows():
    def row(value, variant, acc, diverged=False, status="finished"):
        return dict(dict.fromkeys(ROW_FIELDS), field="lr", value=value, variant=variant, status=status,
                    test_acc=acc, diverged=diverged)

    rows = [row(0.1, "a", 0.95), row(1.0, "a", 0.93), row(10.0, "a", None, diverged=True, status="diverged"),
            row(0.1, "b", 0.96), row(1.0, "b", 0.50), row(10.0, "b", 0.91),
            row(0.1, "c", 0.2), row(3.0, "c", None, status="skipped")]
    assert largest_stable(rows, "a", 0.9) == 1.0
    assert largest_stable(rows, "a", 0.94) == 0.1
    assert largest_stable(rows, "b", 0.9) == 10.0  # the largest value, not the first contiguous run
    assert largest_stable(rows, "c", 0.5) is None
    assert largest_stable(rows, "nobody", 0.0) is None
    assert smallest_stable(rows, "b", 0.9) == 0.1 and smallest_stable(rows, "c", 0.5) is None


def test_train_mode_accuracy_uses_batch_statistics_and_leaves_the_model_unchanged():
    cmp = Comparison({"bn": SPIRAL.replace(norm="batch", batch_size=2, steps=40, dropout=0.2)})
    trainer = Trainer(cmp)
    trainer.run()
    v = trainer.variants[0]
    model = v.model
    model.eval()
    before = {k: b.clone() for k, b in model.named_buffers()}
    x, y = v.data.x_test, v.data.y_test
    with torch.no_grad():
        eval_logits = model(x[:2])
    acc = train_mode_accuracy(model, v.cfg, x, y)
    assert 0.0 <= acc <= 1.0
    for k, b in model.named_buffers():  # running statistics and counters restored
        assert torch.equal(b, before[k]), k
    assert not any(m.training for m in model.modules())  # modes restored
    model.train()
    train_mode_accuracy(model, v.cfg, x, y)
    assert all(m.training for m in model.modules())
    # in train mode a chunk of 2 is normalized by its own statistics: other outputs than eval mode
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x[:2]), eval_logits)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.train()
        assert not torch.allclose(model(x[:2]), eval_logits)
    for k, b in model.named_buffers():
        b.copy_(before[k])


# --------------------------------------------------------------------------- figure

def test_sweep_figure_has_one_trace_per_variant_with_the_right_points():
    base = dict.fromkeys(ROW_FIELDS)
    rows = [
        dict(base, value=0.1, variant="plain", status="finished", test_acc=0.9, diverged=False),
        dict(base, value=0.1, variant="bn", status="finished", test_acc=0.92, train_mode_acc=0.8, diverged=False),
        dict(base, value=1.0, variant="plain", status="diverged", diverged=True, diverged_at=7),
        dict(base, value=1.0, variant="bn", status="finished", test_acc=0.95, train_mode_acc=0.9, diverged=False),
        dict(base, value=10.0, variant="plain", status="skipped", diverged=False, message="no"),
    ]
    fig = sweep_figure(rows, "lr", log_x=True)
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"plain", "bn", "bn, train mode"}
    plain, bn, tm = by_name["plain"], by_name["bn"], by_name["bn, train mode"]
    assert list(plain.x) == [0.1, 1.0] and list(plain.y) == [0.9, 0.0]  # skipped left out
    assert list(plain.marker.symbol) == ["circle", "x"] and "diverged" in plain.hovertext[1]
    assert list(bn.x) == [0.1, 1.0] and list(bn.y) == [0.92, 0.95]
    assert list(tm.y) == [0.8, 0.9] and tm.line.dash == "dash" and tm.line.color == bn.line.color
    assert plain.line.color == PALETTE[0] and bn.line.color == PALETTE[1]
    assert fig.layout.xaxis.type == "log" and fig.layout.title.text and fig.layout.xaxis.title.text == "learning rate"
    assert sweep_figure(rows, "batch_size").layout.xaxis.title.text == "batch size"
    assert sweep_figure(rows, "lr").layout.xaxis.title.text == "learning rate"
    assert list(fig.layout.xaxis.tickvals) == [0.1, 1.0, 10.0]
    assert sweep_figure(rows, "lr", log_x=False).layout.xaxis.type == "linear"
    named = {t.name for t in sweep_figure(rows, "lr", labels={"bn": "BatchNorm"}).data}
    assert named == {"plain", "BatchNorm", "BatchNorm, train mode"}


# --------------------------------------------------------------------------- CLI

def test_cli_on_a_sweep_preset_writes_config_csv_and_report(capsys, tmp_path):
    out = tmp_path / "o"
    rc, stdout, err = main(capsys, "run", "--preset", "high-lr", "--steps", "3", "--set", "width=8",
                           "--out", str(out), "--quiet")
    assert rc == 0, err
    cmp = Comparison.from_json((out / "config.json").read_text())
    assert cmp.names == ["plain", "bn"] and {c.steps for c in cmp.variants.values()} == {3}
    lines = list(csv.DictReader(io.StringIO((out / "sweep.csv").read_text())))
    values = presets.get("high-lr").sweep[1]
    assert len(lines) == 2 * len(values) and {ln["field"] for ln in lines} == {"lr"}
    assert {ln["steps"] for ln in lines if ln["status"] == "finished"} == {"3"}
    html = (out / "report.html").read_text()
    assert len(html) > 1_000_000 and 'src="https://cdn.plot.ly' not in html  # plotly.js inline
    # Its lines are named as on the app's page (Comparison.labels), its stable list says both.
    assert '"name":"BatchNorm"' in html and "<b>BatchNorm</b> (bn): largest" in html
    assert "<title>bnviz: high-lr (lr sweep)</title>" in html  # as the app's sweep page downloads it
    # under the note's "1,000 SGD steps", what this sweep changed
    assert "This run differs from the note: width 8 instead of 100; 3 instead of 1,000 steps." in html
    assert "largest stable lr" in stdout and "  plain: " in stdout and "  bn: " in stdout
    assert not (out / "metrics.csv").exists()


def test_cli_sweep_bad_input_exits_2_with_one_line(capsys, tmp_path):
    for args in (["--threshold", "2"], ["--set", "width=abc"], ["--steps", "0"]):
        rc, _, err = main(capsys, "run", "--preset", "small-batch", *args, "--out", str(tmp_path / "x"))
        assert rc == 2, err
        assert err.startswith("bnviz: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_no_sweep_runs_the_base_comparison_once(capsys, tmp_path):
    rc, stdout, err = main(capsys, "run", "--preset", "high-lr", "--no-sweep", "--steps", "3", "--set", "width=8",
                           "--out", str(tmp_path / "o"), "--quiet")
    assert rc == 0, err
    assert (tmp_path / "o" / "metrics.csv").exists() and not (tmp_path / "o" / "sweep.csv").exists()
    assert "plain: " in stdout and "largest stable" not in stdout


# --------------------------------------------------------------------------- SweepJob

def test_sweep_job_runs_to_the_end_on_a_worker(wait):
    job = SweepJob((spiral(), "lr", (0.05, 0.1)), steps=10)
    assert job.state == "idle" and job.progress == (0, 2)
    job.start()
    assert wait(lambda: job.state != "running")
    assert job.join(5)
    assert job.state == "finished", job.error
    assert job.progress == (2, 2) and job.fraction == 1.0
    rows = job.rows
    assert len(rows) == 4 and rows is not job.rows  # a snapshot copy
    with pytest.raises(RuntimeError):
        job.start()


def test_sweep_job_stop_ends_the_worker(wait, monkeypatch):
    threads = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (threads.append((threading.current_thread().name, n)),
                                                             real(n)))
    job = SweepJob((spiral(), "lr", (0.05, 0.1, 0.2)), steps=100_000, single_thread=True)
    job.start()
    assert wait(lambda: job.fraction > 0)
    job.stop()
    assert not job.alive and job.state == "stopped"
    assert job.rows == [] and job.result is not None and not job.result.complete
    assert (SweepJob.THREAD_NAME, 1) in threads
    assert alive_sweeps() == 0


def test_sweep_job_reports_a_failure_instead_of_raising(wait, monkeypatch):
    import bnviz.sweep as sweep_mod

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sweep_mod, "_variant_rows", boom)
    job = SweepJob((spiral(), "lr", (0.05,)), steps=3)
    job.start()
    assert job.join(30)
    assert job.state == "failed" and "disk on fire" in job.error


def test_sweep_csv_reads_back_to_the_same_rows():
    from bnviz.sweep import rows_from_csv, rows_to_csv
    rows = [
        {"field": "lr", "value": 0.05, "variant": "bn", "status": "finished", "test_acc": 0.9125,
         "train_mode_acc": 0.9, "train_loss": 0.25, "diverged": False, "diverged_at": None, "steps": 2000,
         "message": None},
        {"field": "batch_size", "value": 4, "variant": "plain", "status": "diverged", "test_acc": None,
         "train_mode_acc": None, "train_loss": None, "diverged": True, "diverged_at": 17, "steps": 17,
         "message": "loss became NaN"},
    ]
    assert rows_from_csv(rows_to_csv(rows)) == rows


def test_variants_are_labelled_by_their_norm_unless_two_share_one():
    assert presets.get("small-batch").comparison().labels() == {
        "bn": "BatchNorm", "layer": "LayerNorm", "group": "GroupNorm", "renorm": "Batch Renorm"}
    two_bn = Comparison({"slow": RunConfig(norm="batch", lr=0.01), "fast": RunConfig(norm="batch", lr=1.0)})
    assert two_bn.labels() == {"slow": "slow", "fast": "fast"}
