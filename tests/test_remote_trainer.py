"""Training workers as child processes (bnviz/remote.py, BNVIZ_WORKER_MODE=process).

A RemoteTrainer must train the same numbers as the thread it replaces, obey the same
controls, say so when its process dies, and never outlive what owns it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from bnviz import limits, live, remote
from bnviz.errors import ConfigError
from bnviz.trainer import Trainer
from tests.test_trainer import small

TIMEOUT_S = 120


def wait_for(trainer, ok, what: str):
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        snap = trainer.log.snapshot()
        if snap is not None and ok(snap):
            return snap
        time.sleep(0.05)
    raise AssertionError(f"remote trainer: no {what} within {TIMEOUT_S} s (state {trainer.state})")


def same_record(a, b) -> None:
    assert a.state == b.state and a.variants.keys() == b.variants.keys()
    for name, va in a.variants.items():
        vb = b.variants[name]
        assert (va.status, va.step) == (vb.status, vb.step)
        np.testing.assert_array_equal(va.steps, vb.steps)
        for m in va.series:
            np.testing.assert_array_equal(va.series[m], vb.series[m], err_msg=f"{name}.{m}")
        for m in va.evals:
            np.testing.assert_array_equal(va.evals[m], vb.evals[m], err_msg=f"{name}.{m}")
        np.testing.assert_array_equal(va.hists, vb.hists)


@pytest.fixture
def remote_trainers():
    made = []
    yield made
    for t in made:
        t.stop()
        assert t.join(timeout=30), "a worker process did not stop"


def test_a_process_worker_records_exactly_what_a_thread_records(remote_trainers):
    comparison = small("variants=plain,bn", "bn.norm=batch", steps=60)
    reference = Trainer(comparison, single_thread=True)  # a worker thread, as the server runs it
    reference.start()
    assert reference.join(timeout=TIMEOUT_S) and reference.state == "finished"

    r = remote.RemoteTrainer(comparison)
    remote_trainers.append(r)
    assert r.total_steps == 60 and r.comparison == comparison
    r.start()
    snap = wait_for(r, lambda s: s.state == "finished", "finished run")
    same_record(snap, reference.log.snapshot())
    assert r.state == "finished" and r.error is None


def test_pause_step_and_lr_reach_the_process(remote_trainers):
    r = remote.RemoteTrainer(small(steps=10_000))
    remote_trainers.append(r)
    r.start(paused=True)
    assert r.state == "paused"
    r.step(5)
    assert r.busy, "a step just asked for is pending until a snapshot says it is done"
    snap = wait_for(r, lambda s: s.step == 5 and s.state == "paused", "5 single steps")
    assert snap.step == 5
    r.set_lr(0.01)
    r.resume()
    wait_for(r, lambda s: s.step > 30 and any("lr → 0.01" in e.text for e in s.events), "training at the new lr")
    r.pause()
    a = wait_for(r, lambda s: s.state == "paused", "pause").step
    time.sleep(0.5)
    assert r.log.snapshot().step == a, "a paused worker took steps"


def test_bad_lr_is_refused_in_the_caller_with_the_field_named(remote_trainers):
    r = remote.RemoteTrainer(small())
    remote_trainers.append(r)
    with pytest.raises(ConfigError, match="^lr: must be a finite number > 0"):
        r.set_lr(-1.0)
    with pytest.raises(ConfigError, match="^variant: no variant named 'nope'"):
        r.set_lr(0.1, "nope")


def test_a_worker_that_dies_is_reported_failed_and_frees_its_slot(remote_trainers):
    r = remote.RemoteTrainer(small(steps=100_000))
    remote_trainers.append(r)
    r.start()
    wait_for(r, lambda s: s.step > 0, "first steps")
    r._proc.kill()
    r._proc.join(10)
    assert r.state == "failed"
    assert "training worker exited unexpectedly" in r.error
    assert r.log.snapshot() is not None, "the page keeps the last record it had"


def test_a_finished_run_lets_its_process_go_and_keeps_its_record(remote_trainers):
    r = remote.RemoteTrainer(small(steps=20))
    remote_trainers.append(r)
    r.start()
    wait_for(r, lambda s: s.state == "finished", "finished run")
    r._proc.join(30)
    assert not r._proc.is_alive(), "the process of a finished run stayed alive"
    assert r.log.snapshot().state == "finished"


def test_stop_ends_the_process_and_the_count_of_live_workers(remote_trainers):
    before = live.alive_workers()
    r = remote.RemoteTrainer(small(steps=100_000))
    r.start()
    assert live.alive_workers() == before + 1
    r.stop()
    assert r.join(timeout=30)
    assert live.alive_workers() == before


def test_worker_mode_comes_from_the_environment_and_bad_values_name_the_variable(monkeypatch):
    monkeypatch.delenv("BNVIZ_WORKER_MODE", raising=False)
    assert limits.worker_mode() == limits.DEFAULT_WORKER_MODE
    monkeypatch.setenv("BNVIZ_WORKER_MODE", "Process")
    assert limits.worker_mode() == "process"
    monkeypatch.setenv("BNVIZ_WORKER_MODE", "fibers")
    with pytest.raises(ConfigError, match=r"^BNVIZ_WORKER_MODE: expected one of thread, process, got 'fibers'$"):
        limits.worker_mode()


def test_a_lab_in_process_mode_trains_through_a_child(monkeypatch):
    monkeypatch.setenv("BNVIZ_WORKER_MODE", "process")
    lab = live.Lab(pool=live.WorkerPool())
    try:
        lab.configure(small(steps=40))
        lab.start()
        assert isinstance(lab.trainer, remote.RemoteTrainer)
        deadline = time.monotonic() + TIMEOUT_S
        while (snap := lab.refresh()) is None or snap.state != "finished":
            assert time.monotonic() < deadline, "lab did not finish"
            time.sleep(0.05)
        assert snap.step == 40 and not lab.running
    finally:
        lab.close()
    assert remote.active_processes() == 0


def test_a_waiting_trainer_holds_no_process_until_asked_to_compute(remote_trainers):
    before = remote.active_processes()
    r = remote.RemoteTrainer(small(steps=100))
    remote_trainers.append(r)
    r.start(paused=True)  # what a queued lab holds
    assert remote.active_processes() == before and r.state == "paused" and r.log.snapshot() is None
    r.stop()
    assert r.state == "stopped" and r.join(timeout=1)
    r.resume()
    assert remote.active_processes() == before, "a stopped run started a process"


def test_workers_are_forked_with_torch_dynamo_already_imported(tmp_path):
    """torch's first optimizer imports torch._dynamo (~1 s); the forkserver does it once, so
    each worker's first step is not a second late (docs/DEPLOYMENT.md)."""
    seen = tmp_path / "seen"
    code = f"import sys; open({str(seen)!r}, 'w').write(str('torch._dynamo' in sys.modules))"
    p = remote.worker_context().Process(target=exec, args=(code,))
    p.start()
    p.join(TIMEOUT_S)
    assert p.exitcode == 0 and seen.read_text() == "True"
