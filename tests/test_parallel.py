"""Variants, and a sweep's values, trained in separate processes (bnviz/parallel.py) record what
one process records."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import numpy as np
import pytest
import torch

from bnviz import parallel, remote
from bnviz.config import Comparison
from bnviz.errors import BnvizError
from bnviz.sweep import SweepJob, run_sweep
from bnviz.trainer import Trainer

BASE = ["device=cpu", "dataset=mnist-mini", "width=24", "depth=3", "steps=60", "eval_every=20", "hist_every=5"]
# three variants, so two processes get groups of unequal size; one diverges on its first steps
THREE = BASE + ["variants=plain,bn,after", "bn.norm=batch", "after.norm=batch", "after.placement=after",
                "lr=0.5", "after.lr=1e6", "activation=relu"]


def comparison(pairs: list[str]) -> Comparison:
    fields = dict(p.split("=", 1) for p in pairs)
    return Comparison.from_flat([f"{k}={v}" for k, v in fields.items()])


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_record(a, b) -> None:
    assert list(a.variants) == list(b.variants)
    for name in a.variants:
        va, vb = a.variants[name], b.variants[name]
        assert (va.status, va.step, va.diverged_at, va.message) == (vb.status, vb.step, vb.diverged_at, vb.message), name
        assert np.array_equal(va.steps, vb.steps), name
        for m in va.series:
            assert np.array_equal(va.series[m], vb.series[m], equal_nan=True), (name, m)
        assert np.array_equal(va.eval_steps, vb.eval_steps), name
        for m in va.evals:
            assert np.array_equal(va.evals[m], vb.evals[m], equal_nan=True), (name, m)
        assert np.array_equal(va.hist_steps, vb.hist_steps) and np.array_equal(va.hists, vb.hists), name
    assert a.events == b.events and a.notices == b.notices


def test_split_keeps_the_comparisons_order_in_groups_of_near_equal_size():
    cmp = comparison(THREE)
    assert [g.names for g in parallel.split(cmp, 2)] == [["plain", "bn"], ["after"]]
    assert [g.names for g in parallel.split(cmp, 3)] == [["plain"], ["bn"], ["after"]]
    assert [g.names for g in parallel.split(cmp, 8)] == [["plain"], ["bn"], ["after"]]
    assert [g.names for g in parallel.split(cmp, 1)] == [["plain", "bn", "after"]]
    assert parallel.split(cmp, 2)[1].variants["after"] == cmp.variants["after"]


def test_variants_in_separate_processes_record_what_one_process_records_bit_for_bit(one_thread):
    cmp = comparison(THREE)
    seen: list[int] = []
    split = parallel.train_split(cmp, jobs=2, threads=1, progress=seen.append)
    trainer = Trainer(cmp)
    trainer.run()
    alone = trainer.log.snapshot()
    assert split.variants["after"].status == "diverged"  # the early stop travels too
    assert_same_record(split, alone)
    assert split.state == "finished"
    assert seen and seen == sorted(seen) and seen[-1] == 60  # the slowest group's step, never backwards


def test_a_group_that_cannot_be_built_raises_its_one_line_reason(monkeypatch):
    monkeypatch.setenv("BNVIZ_MAX_BATCH", "8192")  # a batch the config allows, larger than the dataset
    cmp = comparison(BASE + ["variants=plain,big", "big.batch_size=4500"])  # mnist-mini has 4,000 examples
    with pytest.raises(BnvizError, match=r"^batch_size: must be <= the 4,000 training examples"):
        parallel.train_split(cmp, jobs=2)


def test_a_group_whose_process_dies_is_reported_and_the_others_are_stopped():
    cmp = comparison(BASE + ["variants=plain,bn", "bn.norm=batch", "steps=100000"])

    def kill_one(step: int) -> None:
        if step >= 20:
            victims = [p for p in multiprocessing.active_children() if p.name == parallel.PROCESS_NAME]
            os.kill(victims[-1].pid, signal.SIGKILL)

    with pytest.raises(BnvizError, match=r"stopped: its process exited unexpectedly \(exit code -9\)"):
        parallel.train_split(cmp, jobs=2, progress=kill_one)
    assert not [p for p in multiprocessing.active_children() if p.name == parallel.PROCESS_NAME]


def test_auto_uses_one_process_per_task_and_core_for_long_cpu_work(monkeypatch):
    cmp = comparison(BASE + ["variants=plain,bn", "bn.norm=batch"])
    monkeypatch.setattr(parallel, "available_cores", lambda: 16)
    assert parallel.auto_jobs(2, parallel.AUTO_MIN_STEPS, cmp) == 2
    assert parallel.auto_jobs(5, parallel.AUTO_MIN_STEPS, cmp) == 5
    assert parallel.auto_jobs(2, parallel.AUTO_MIN_STEPS - 1, cmp) == 1  # the start-up would eat what it saves
    monkeypatch.setattr(parallel, "available_cores", lambda: 1)
    assert parallel.auto_jobs(2, parallel.AUTO_MIN_STEPS, cmp) == 1


def test_the_forkserver_starts_early_exactly_when_auto_would_use_processes(monkeypatch):
    """start_early decides without torch what auto_jobs decides with it (a device left to auto
    counts as the CPU, as it is on this machine)."""
    started = []
    monkeypatch.setattr(remote, "warm_up", lambda: started.append(1))
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    long, short = parallel.AUTO_MIN_STEPS, parallel.AUTO_MIN_STEPS - 1
    on_cpu = comparison(BASE + ["variants=plain,bn", "bn.norm=batch", "device=cpu"])
    for device in ("cpu", "auto"):
        cmp = comparison(BASE + ["variants=plain,bn", "bn.norm=batch", f"device={device}"])
        for tasks, steps, jobs in [(2, long, None), (2, short, None), (1, long, None), (2, short, 2), (2, long, 1),
                                   (1, long, 2)]:
            expected = min(jobs or parallel.auto_jobs(tasks, steps, on_cpu), tasks) > 1
            before = len(started)
            assert parallel.start_early(tasks, steps, cmp, jobs) == expected, (device, tasks, steps, jobs)
            assert len(started) - before == expected
    assert len(started) == 4
    monkeypatch.setattr(parallel, "available_cores", lambda: 1)
    assert not parallel.start_early(2, long, on_cpu, None)
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    assert not parallel.start_early(2, long, comparison(BASE + ["variants=plain,bn", "device=cuda"]), None)
    assert len(started) == 4


# --------------------------------------------------------------------------- sweeps

SPIRAL = BASE + ["dataset=spiral", "depth=2", "width=16", "activation=relu", "init=kaiming", "init_scale=1.0",
                 "batch_size=16", "steps=30", "variants=plain,bn", "bn.norm=batch"]


def sweep_children() -> list:
    return [p for p in multiprocessing.active_children() if p.name == parallel.PROCESS_NAME]


def test_a_sweep_in_processes_gives_the_rows_of_a_sweep_in_one(one_thread):
    spec = (comparison(SPIRAL), "lr", (0.05, 1e12, 0.2))  # the middle value diverges
    seen = []
    split = run_sweep(spec, jobs=2, threads=1, progress=seen.append)
    alone = run_sweep(spec)
    assert split.complete and [(r["value"], r["variant"]) for r in split.rows] == \
        [(r["value"], r["variant"]) for r in alone.rows]
    assert split.rows == alone.rows
    assert split.row(1e12, "plain")["status"] == "diverged"
    assert seen[-1].runs_done == seen[-1].runs_total == 3 and seen[-1].steps_done == seen[-1].steps_total == 90


def test_a_sweep_in_processes_stops_when_asked():
    stop = threading.Event()

    def progress(p) -> None:
        if p.steps_done > 0:
            stop.set()

    spec = (comparison(SPIRAL), "lr", (0.05, 0.1, 0.2))
    result = run_sweep(spec, steps=100_000, jobs=2, progress=progress, stop_event=stop)
    assert not result.complete and result.rows == []
    assert not [p for p in multiprocessing.active_children() if p.name == parallel.PROCESS_NAME]


def test_a_server_sweep_job_in_a_child_gives_the_rows_of_one_on_a_thread(one_thread):
    """BNVIZ_WORKER_MODE=process: the sweep pages' jobs train in a child process, one value at
    a time, with the rows a job on a thread records."""
    spec = (comparison(SPIRAL), "lr", (0.05, 1e12, 0.2))
    jobs = {mode: SweepJob(spec, steps=30, single_thread=True, processes=mode == "process")
            for mode in ("thread", "process")}
    for job in jobs.values():
        job.start()
        assert job.join(120) and job.state == "finished", job.error
    assert jobs["process"].rows == jobs["thread"].rows
    assert jobs["process"].progress == (3, 3)
    assert not sweep_children()


def test_a_server_sweep_job_trains_below_the_servers_priority_and_stops_when_asked(wait):
    job = SweepJob((comparison(SPIRAL), "lr", (0.05, 0.1)), steps=100_000, single_thread=True, processes=True)
    job.start()
    try:
        assert wait(lambda: job.fraction > 0 and len(sweep_children()) == 1, timeout=60)
        child = sweep_children()[0]
        expected = min(os.getpriority(os.PRIO_PROCESS, 0) + remote.WORKER_NICE, 19)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == expected
    finally:
        job.stop()
    assert job.state == "stopped" and not job.alive
    assert not sweep_children()


def test_cli_sweep_with_jobs_writes_the_csv_of_one_process(one_thread, tmp_path, capsys):
    from bnviz import cli

    args = ["run", "--preset", "high-lr", "--steps", "20", "--set", "width=8", "--quiet"]
    assert cli.main([*args, "--jobs", "1", "--out", str(tmp_path / "one")]) == 0
    assert cli.main([*args, "--jobs", "3", "--out", str(tmp_path / "three")]) == 0
    assert (tmp_path / "three" / "sweep.csv").read_text() == (tmp_path / "one" / "sweep.csv").read_text()
    out = capsys.readouterr().out
    assert out.count("largest stable lr") == 2
