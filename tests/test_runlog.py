"""Tests for bnviz.runlog: bounded decimated tables, snapshots that are copies, the tidy CSV."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from bnviz.metrics import (ALL_METRICS, DIVERGED, EVAL_METRICS, LANDSCAPE_LAYER_METRICS, LANDSCAPE_METRICS,
                           LAYER_METRICS, STEP_METRICS)
from bnviz.probes import HIST_BINS, HIST_EDGES
from bnviz.runlog import CSV_HEADER, DecimatedTable, RunLog, to_csv, tidy_rows

LAYERS = ["hidden1", "hidden2", "hidden3"]
ROW_WIDTH = len(STEP_METRICS) + len(LAYERS) * len(LAYER_METRICS)


def ramp_into(table: DecimatedTable, n: int, chunk: int) -> None:
    """Append value = step for steps 1..n, in chunks of ``chunk`` rows."""
    steps = np.arange(1, n + 1)
    for a in range(0, n, chunk):
        s = steps[a:a + chunk]
        table.append(s, s[:, None].astype(np.float64))


# --------------------------------------------------------------------------- DecimatedTable

def test_decimated_table_stays_bounded_over_a_million_rows():
    table = DecimatedTable(width=1, capacity=2048)
    nbytes = table.nbytes
    steps = np.arange(1, 1_000_001)
    for a in range(0, len(steps), 50_000):
        s = steps[a:a + 50_000]
        table.append(s, s[:, None].astype(np.float32))
        assert table.n <= table.capacity
        assert table.nbytes == nbytes
    assert table.n > table.capacity // 2 - 1  # still holds a useful number of points
    stored_steps, _ = table.copy()
    assert stored_steps[-1] > 1_000_000 - table.stride  # reaches the end of the run


def test_decimated_table_keeps_every_row_below_capacity():
    table = DecimatedTable(width=2, capacity=16)
    steps = np.arange(1, 17)
    rows = np.stack([steps * 1.0, -steps * 2.0], 1)
    table.append(steps, rows)
    got_steps, got = table.copy()
    assert np.array_equal(got_steps, steps) and np.array_equal(got, rows)
    assert table.stride == 1


@pytest.mark.parametrize("n", [17, 100, 1000])
def test_decimated_ramp_stays_increasing_and_near_its_step_labels(n):
    table = DecimatedTable(width=1, capacity=16)
    ramp_into(table, n, chunk=7)
    steps, values = table.copy()
    assert (np.diff(steps) > 0).all() and (np.diff(values[:, 0]) > 0).all()
    # each value is an average of steps at or before its label, within one bucket
    assert (values[:, 0] <= steps).all()
    assert (values[:, 0] > steps - table.stride).all()


def test_decimated_constant_series_stays_constant():
    table = DecimatedTable(width=3, capacity=8)
    steps = np.arange(1, 1001)
    table.append(steps, np.tile([1.5, -2.0, 7.0], (len(steps), 1)))
    _, values = table.copy()
    assert np.array_equal(values, np.tile(np.float32([1.5, -2.0, 7.0]), (len(values), 1)))


@pytest.mark.parametrize("capacity, n", [(4, 9), (16, 1000), (64, 100_000)])
def test_decimated_ramp_rows_equal_the_mean_of_their_buckets(capacity, n):
    table = DecimatedTable(width=1, capacity=capacity)
    ramp_into(table, n, chunk=10_000)
    steps, values = table.copy()
    # A stored row covers the steps after the previous label up to its own label.
    starts = np.concatenate([[1], steps[:-1] + 1])
    bucket_means = (starts + steps) / 2  # mean of a run of consecutive integers
    np.testing.assert_allclose(values[:, 0], bucket_means, rtol=0, atol=1e-3)
    # equal buckets, so a ramp stays a ramp; only the open bucket, last, may be shorter
    assert set(np.diff(steps[:table.n]).tolist()) == {table.stride}
    assert steps[-1] == n


@pytest.mark.parametrize("capacity", [8, 2048])
def test_decimated_copy_ends_at_the_last_step_appended_whatever_the_stride(capacity):
    # A run paused on any step exports, and draws, up to that step: the open bucket is the
    # copy's last row, the mean of the rows it holds so far.
    table = DecimatedTable(width=1, capacity=capacity)
    for last in range(1, 5 * capacity + 2):
        table.append(np.array([last]), np.array([[float(last)]]))
        if capacity > 8 and last % 97 and last not in (capacity + 1, 2 * capacity + 1, 4 * capacity + 1):
            continue  # every step of the small table; of the large one, a sample and each first step past a doubling
        steps, values = table.copy()
        assert steps[-1] == last
        start = steps[-2] + 1 if len(steps) > 1 else 1
        assert values[-1, 0] == pytest.approx((start + last) / 2)
        assert len(steps) <= capacity + 1 and (np.diff(steps) > 0).all()


def test_decimated_table_rejects_odd_or_tiny_capacity():
    for capacity in (0, 1, 3):
        with pytest.raises(ValueError):
            DecimatedTable(width=1, capacity=capacity)


def test_decimated_copy_is_independent():
    table = DecimatedTable(width=1, capacity=8)
    table.append(np.array([1, 2]), np.array([[1.0], [2.0]]))
    steps, values = table.copy()
    steps[:] = 99
    values[:] = 99
    again_steps, again_values = table.copy()
    assert again_steps.tolist() == [1, 2] and again_values[:, 0].tolist() == [1.0, 2.0]


# --------------------------------------------------------------------------- RunLog

def make_log(variants=("plain", "bn"), layers=LAYERS) -> RunLog:
    log = RunLog(HIST_EDGES.numpy())
    for name in variants:
        log.add_variant(name, {"name": name, "lr": 0.1}, list(layers))
    return log


def synthetic_rows(steps: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """Row i, column j = step_i + j / 100 + offset: every cell identifiable."""
    return steps[:, None] + np.arange(ROW_WIDTH)[None, :] / 100.0 + offset


def test_snapshot_splits_rows_into_named_series():
    log = make_log(variants=("plain",))
    steps = np.arange(1, 6)
    log.append_steps("plain", steps, synthetic_rows(steps))
    v = log.snapshot().variants["plain"]
    assert v.steps.tolist() == [1, 2, 3, 4, 5] and v.step == 5
    np.testing.assert_allclose(v.series["train_loss"], steps, rtol=1e-6)
    for j, layer in enumerate(LAYERS):
        for k, metric in enumerate(LAYER_METRICS):
            col = len(STEP_METRICS) + j * len(LAYER_METRICS) + k
            assert v.series[metric].shape == (5, 3)
            np.testing.assert_allclose(v.series[metric][:, j], steps + col / 100.0, rtol=1e-6)


@pytest.mark.parametrize("paused_at", [2_049, 2_051, 5_000])
def test_a_run_paused_past_the_first_doubling_snapshots_and_exports_up_to_its_step(paused_at):
    # The page's step counter, its charts and the CSV must agree wherever the run pauses.
    log = make_log(variants=("plain",))
    steps = np.arange(1, paused_at + 1)
    log.append_steps("plain", steps, synthetic_rows(steps))
    v = log.snapshot().variants["plain"]
    assert v.step == paused_at and v.steps[-1] == paused_at
    assert v.series["train_loss"][-1] > v.series["train_loss"][-2]
    last = max(int(r["step"]) for r in _parse(to_csv(log.snapshot())))
    assert last == paused_at


def test_snapshot_arrays_are_copies():
    log = make_log()
    steps = np.arange(1, 11)
    log.append_steps("plain", steps, synthetic_rows(steps))
    log.append_eval("plain", 10, 0.5, 0.9)
    log.append_hist("plain", np.array([10]), np.full((1, 3, HIST_BINS), 1.0 / HIST_BINS))
    snap = log.snapshot()
    v = snap.variants["plain"]
    v.steps[:] = -1
    for arr in v.series.values():
        arr[...] = -1
    v.evals["test_acc"][:] = -1
    v.hists[...] = -1
    snap.events.append("junk")
    snap.notices.append("junk")
    fresh = log.snapshot()
    w = fresh.variants["plain"]
    assert w.steps.tolist() == list(range(1, 11))
    np.testing.assert_allclose(w.series["train_loss"], np.arange(1, 11), rtol=1e-6)
    assert w.evals["test_acc"].tolist() == [pytest.approx(0.9)]
    assert np.allclose(w.hists, 1.0 / HIST_BINS)
    assert fresh.events == [] and fresh.notices == []


def test_snapshot_config_layers_and_edges_are_copies():
    log = make_log(variants=("plain",))
    v = log.snapshot().variants["plain"]
    v.config["lr"] = 123.0
    v.layers.append("hidden99")
    v.hist_edges[0] = 123.0
    w = log.snapshot().variants["plain"]
    assert w.config["lr"] == 0.1
    assert w.layers == LAYERS
    assert w.hist_edges[0] == pytest.approx(-100.0)


def test_status_events_and_notices_are_recorded():
    log = make_log()
    log.set_status("plain", "diverged", "plain: NaN", diverged_at=7)
    log.add_event(7, "diverged", "plain")
    log.add_notice("device: cpu")
    log.add_notice("device: cpu")  # once only
    snap = log.snapshot()
    assert snap.variants["plain"].status == "diverged" and snap.variants["plain"].diverged_at == 7
    assert snap.variants["plain"].message == "plain: NaN"
    assert snap.variants["bn"].status == "running"
    assert [(e.step, e.variant, e.text) for e in snap.events] == [(7, "plain", "diverged")]
    assert snap.notices == ["device: cpu"]


def test_events_stay_bounded():
    log = make_log()
    for i in range(1000):
        log.add_event(i, f"lr → {i}")
    events = log.snapshot().events
    assert len(events) <= 200 and events[-1].step == 999


def test_run_log_of_a_million_step_comparison_stays_under_a_few_megabytes():
    log = make_log()
    start = log.nbytes
    chunk = 25_000
    for a in range(0, 1_000_000, chunk):
        steps = np.arange(a + 1, a + chunk + 1)
        hist_steps = steps[steps % 10 == 0]
        hists = np.full((len(hist_steps), len(LAYERS), HIST_BINS), 1.0 / HIST_BINS)
        for name in ("plain", "bn"):
            log.append_steps(name, steps, synthetic_rows(steps))
            log.append_hist(name, hist_steps, hists)
            for s in steps[steps % 1000 == 0]:
                log.append_eval(name, int(s), 0.1, 0.9)
    assert log.nbytes == start  # nothing grows with the run length
    assert log.nbytes < 4 * 2**20
    snap = log.snapshot()
    for v in snap.variants.values():
        assert v.step == 1_000_000
        assert len(v.steps) <= 2048 and len(v.hist_steps) <= 512
        assert len(v.eval_steps) == 1000


# --------------------------------------------------------------------------- tidy CSV

def _recorded_log() -> RunLog:
    log = make_log()
    steps = np.arange(1, 5)
    log.append_steps("plain", steps[:2], synthetic_rows(steps[:2]))
    log.append_steps("bn", steps, synthetic_rows(steps, offset=1000.0))
    for name in ("plain", "bn"):
        log.append_eval(name, 0, 2.3, 0.1)
    log.append_eval("bn", 4, 0.25, 0.75)
    log.append_landscape("bn", 4, np.full((len(LAYERS), 2), 0.5), np.array([0.1, 0.2, 0.3]))
    log.set_status("plain", "diverged", "plain: NaN", diverged_at=3)
    return log


def _parse(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_header_is_variant_step_layer_metric_value():
    text = to_csv(_recorded_log().snapshot())
    assert text.splitlines()[0] == "variant,step,layer,metric,value"
    assert CSV_HEADER == ("variant", "step", "layer", "metric", "value")


def test_csv_has_every_metric_and_empty_layer_for_whole_network_metrics():
    rows = _parse(to_csv(_recorded_log().snapshot()))
    assert {r["metric"] for r in rows} == set(ALL_METRICS)
    whole = set(STEP_METRICS) | set(EVAL_METRICS) | set(LANDSCAPE_METRICS) | {DIVERGED}
    for r in rows:
        if r["metric"] in whole:
            assert r["layer"] == "", r
        else:
            assert r["layer"] in LAYERS, r
    for name in ("plain", "bn"):
        mine = [r for r in rows if r["variant"] == name]
        layer_metrics = LAYER_METRICS + (LANDSCAPE_LAYER_METRICS if name == "bn" else ())
        assert {(r["layer"], r["metric"]) for r in mine if r["layer"]} == {
            (layer, m) for layer in LAYERS for m in layer_metrics}


def test_csv_values_and_diverged_marker():
    rows = _parse(to_csv(_recorded_log().snapshot()))
    cell = {(r["variant"], int(r["step"]), r["layer"], r["metric"]): float(r["value"]) for r in rows}
    assert cell[("bn", 4, "", "train_loss")] == pytest.approx(1004.0)
    col = len(STEP_METRICS) + 2 * len(LAYER_METRICS) + LAYER_METRICS.index("grad_norm")
    assert cell[("bn", 2, "hidden3", "grad_norm")] == pytest.approx(1002.0 + col / 100.0)
    assert cell[("bn", 4, "", "test_acc")] == pytest.approx(0.75)
    assert cell[("plain", 3, "", "diverged")] == 1.0
    assert not any(k[0] == "plain" and k[1] > 3 for k in cell)  # nothing after the divergence
    assert not any(k[0] == "bn" and k[3] == "diverged" for k in cell)


def test_tidy_rows_count():
    rows = list(tidy_rows(_recorded_log().snapshot()))
    per_step = len(STEP_METRICS) + len(LAYERS) * len(LAYER_METRICS)
    landscape = len(LAYERS) * len(LANDSCAPE_LAYER_METRICS) + len(LANDSCAPE_METRICS)  # one row, for bn
    expected = (2 + 4) * per_step + (1 + 2) * len(EVAL_METRICS) + landscape + 1
    assert len(rows) == expected


def _awkward_log() -> RunLog:
    """Names CSV must quote, and values whose text is easy to get wrong."""
    names, layers = ("a,b", 'say "hi"', "line\nbreak"), ("h,1", 'h"2', "h 3")
    log = make_log(variants=names, layers=layers)
    steps = np.array([1, 2, 10, 1_000_000])
    rows = synthetic_rows(steps) * np.float32(1.1)
    rows[0, :6] = [np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4e38]
    for name in names:
        log.append_steps(name, steps, rows)
        log.append_eval(name, 10, 1e-7, 1.0)
    log.append_landscape(names[1], 2, np.full((len(layers), 2), np.nan), np.array([0.1, np.inf, 1e20]))
    log.set_status(names[2], "diverged", "NaN", diverged_at=11)
    return log


def test_csv_is_the_row_by_row_writers_text_byte_for_byte():
    from bench.csv_export import row_by_row  # csv.writer, one tidy row at a time
    from bnviz.trainer import Trainer
    from tests.test_trainer import small

    trained = Trainer(small("variants=plain,bn", "bn.norm=batch", "landscape_every=10", steps=30))
    trained.run()
    for snap in (_recorded_log().snapshot(), _awkward_log().snapshot(), trained.log.snapshot(),
                 make_log().snapshot()):
        assert to_csv(snap) == row_by_row(snap)
    assert len(_parse(to_csv(_awkward_log().snapshot()))) == len(list(tidy_rows(_awkward_log().snapshot())))


def test_csv_round_trips_series_evaluations_landscape_and_divergence():
    from bnviz.runlog import from_csv
    snap = _recorded_log().snapshot()
    back = from_csv(to_csv(snap))
    assert to_csv(back) == to_csv(snap)
    assert back.variants["plain"].diverged_at == 3


def test_from_csv_refuses_a_file_that_is_not_a_metrics_csv():
    from bnviz.runlog import from_csv
    with pytest.raises(ValueError, match="header"):
        from_csv("a,b,c\n1,2,3\n")
