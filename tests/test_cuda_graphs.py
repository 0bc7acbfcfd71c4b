"""bnviz.cuda_graphs: warm-up, capture, replay on new inputs, and the way out when a capture fails.

The capture and replay tests need CUDA (bench/gpu_session.sh runs them on a GPU); the
fallback is tested everywhere, with a capture that fails as one would on a GPU for a step
that syncs with the host.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bnviz import cuda_graphs
from bnviz.cuda_graphs import WARMUP, StepGraphs
from bnviz.trainer import Trainer

from tests.test_fast_path import COMPARISONS, STEPS, comparison

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class _Uncapturable:
    def __init__(self):
        raise RuntimeError("operation not permitted when stream is capturing")


@pytest.fixture
def captures_fail(monkeypatch):
    monkeypatch.setattr(cuda_graphs.torch.cuda, "CUDAGraph", _Uncapturable)


def test_a_failed_capture_turns_graphs_off_says_why_and_still_returns_the_step(captures_fail):
    graphs, calls = StepGraphs(), []

    def step(idx):
        calls.append(idx.clone())
        return idx * 2

    outs = [graphs.run("k", step, torch.arange(3) + n) for n in range(WARMUP + 2)]
    assert [replayed for _, replayed in outs] == [False] * (WARMUP + 2)
    for n, (out, _) in enumerate(outs):
        assert torch.equal(out, (torch.arange(3) + n) * 2)
    assert not graphs.enabled and graphs.error == "RuntimeError: operation not permitted when stream is capturing"
    assert graphs.captured == 0 and len(calls) == WARMUP + 2


def test_graphs_are_used_on_cuda_only():
    trainer = Trainer(comparison(COMPARISONS["paper-fig1"] + ["device=cpu"]), graphs=True)
    assert trainer.graphs is False and trainer._step_graphs is None


def test_a_trainer_whose_capture_fails_says_so_once_and_records_the_same_numbers(captures_fail):
    """The run goes on eagerly, numbers unchanged (forced onto the CPU to run everywhere)."""
    pairs = COMPARISONS["paper-fig1"] + ["device=cpu", "steps=20"]
    eager = Trainer(comparison(pairs))
    eager.run()
    forced = Trainer(comparison(pairs))
    forced._step_graphs = StepGraphs()
    forced.run()
    assert forced._step_graphs is None  # given up after the first failed capture
    notices = [n for n in forced.log.snapshot().notices if "cuda graphs" in n]
    assert len(notices) == 1 and "capture failed" in notices[0] and "same numbers" in notices[0]
    a, b = forced.log.snapshot(), eager.log.snapshot()
    for vname in a.variants:
        for m, series in a.variants[vname].series.items():
            assert np.array_equal(series, b.variants[vname].series[m], equal_nan=True), f"{vname} {m}"
        assert np.array_equal(a.variants[vname].hists, b.variants[vname].hists)


@cuda
def test_a_replay_computes_the_step_on_each_new_input():
    graphs = StepGraphs()
    w = torch.randn(5, 4, device="cuda")

    def step(idx):
        return (w.index_select(0, idx) * 3).sum(0)

    for n in range(WARMUP + 4):
        idx = torch.tensor([n % 5, (n + 2) % 5], device="cuda")
        out, replayed = graphs.run("k", step, idx)
        assert replayed == (n >= WARMUP)
        assert torch.equal(out, (w[idx] * 3).sum(0))
    assert graphs.captured == graphs.captures == 1 and graphs.error is None
    graphs.reset()  # stale: dropped at the next call, which warms up again
    assert graphs.captured == 0
    out, replayed = graphs.run("k", step, idx)
    assert not replayed and graphs.captures == 1 and torch.equal(out, (w[idx] * 3).sum(0))


@cuda
def test_a_step_that_syncs_with_the_host_is_not_captured_and_cuda_still_works():
    graphs = StepGraphs()
    w = torch.randn(5, device="cuda")

    def step(idx):
        return w.index_select(0, idx) * w.sum().item()  # .item(): a host sync, illegal in a capture

    for n in range(WARMUP + 3):
        idx = torch.tensor([n % 5], device="cuda")
        out, replayed = graphs.run("k", step, idx)
        assert not replayed and torch.equal(out, w[idx] * w.sum().item())
    assert not graphs.enabled and graphs.error and graphs.captured == 0


@cuda
@pytest.mark.parametrize("name", list(COMPARISONS))
def test_cuda_graph_replays_record_what_eager_steps_record(name):
    """The same kernels on the same data: bit for bit, across a learning-rate change (which
    throws the captures away) and histogram steps (captured apart)."""
    pairs = COMPARISONS[name] + ["device=cuda"]
    snaps = {}
    for graphs in (True, False):
        trainer = Trainer(comparison(pairs), graphs=graphs)
        assert trainer.graphs == graphs
        trainer._begin()
        for _ in range(20):
            trainer._step_all()
        trainer.set_lr(0.05)
        trainer._apply_lr_changes()
        for _ in range(STEPS - 20):
            trainer._step_all()
        trainer._end("stopped")
        snaps[graphs] = trainer.log.snapshot()
        if graphs:
            assert trainer._step_graphs is not None, snaps[graphs].notices
            # a step without histograms and one with, captured again after the lr change
            assert trainer._step_graphs.captures == 4 and trainer._step_graphs.captured == 0  # released at the end
    for vname, a in snaps[True].variants.items():
        b = snaps[False].variants[vname]
        assert a.steps.tolist() == b.steps.tolist() == list(range(1, STEPS + 1))
        for m in a.series:
            np.testing.assert_array_equal(a.series[m], b.series[m], err_msg=f"{vname} {m}")
        np.testing.assert_array_equal(a.hists, b.hists)
        np.testing.assert_array_equal(a.evals["test_loss"], b.evals["test_loss"])


@cuda
def test_runs_on_threads_and_in_a_worker_process_share_one_gpu_and_record_what_one_alone_does():
    """A server's sessions: each worker captures and replays its own graphs, side by side."""
    from bnviz import remote

    pairs = COMPARISONS["paper-fig1"] + ["device=cuda"]
    alone = Trainer(comparison(pairs))
    alone.run()
    want = alone.log.snapshot()
    threads = [Trainer(comparison(pairs), single_thread=True) for _ in range(3)]
    process = remote.RemoteTrainer(comparison(pairs))
    try:
        for t in (*threads, process):
            t.start()
        for t in threads:
            assert t.join(timeout=120) and t.state == "finished", t.state
        deadline = time.monotonic() + 120
        while process.log.snapshot() is None or process.log.snapshot().state != "finished":
            assert time.monotonic() < deadline and process.state not in ("failed", "stopped"), process.state
            time.sleep(0.05)
        for t in (*threads, process):
            got = t.log.snapshot()
            for vname, a in got.variants.items():
                b = want.variants[vname]
                for m in a.series:
                    np.testing.assert_array_equal(a.series[m], b.series[m], err_msg=f"{vname} {m}")
                np.testing.assert_array_equal(a.hists, b.hists)
        assert all(t._step_graphs is not None and t._step_graphs.captures == 2 for t in threads)
    finally:
        process.stop()
        process.join(timeout=30)
