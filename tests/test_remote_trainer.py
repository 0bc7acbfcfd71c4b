"""Training workers as child processes (bnviz/remote.py, BNVIZ_WORKER_MODE=process).

A RemoteTrainer must train the same numbers as the thread it replaces, obey the same
controls, say so when its process dies, and never outlive what owns it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bnviz import limits, live, presets, remote
from bnviz.errors import ConfigError
from bnviz.trainer import Trainer
from tests.test_trainer import small

TIMEOUT_S = 120
ROOT = Path(__file__).resolve().parents[1]


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


def report_dynamo(out: str) -> None:
    """Run in a worker: train a little, then say whether torch._dynamo was ever imported."""
    trainer = Trainer(small(steps=5))
    trainer.run()
    Path(out).write_text(f"{trainer.log.state} {'torch._dynamo' in sys.modules}")


def test_workers_train_without_ever_importing_torch_dynamo(tmp_path):
    """torch.optim's first optimizer imports torch._dynamo (~1.4 s); bnviz.optimizers' do not,
    so neither the forkserver nor a worker's first step pays it (docs/DEPLOYMENT.md)."""
    seen = tmp_path / "seen"
    p = remote.worker_context().Process(target=report_dynamo, args=(str(seen),))
    p.start()
    p.join(TIMEOUT_S)
    assert p.exitcode == 0 and seen.read_text() == "finished False"


# The forkserver below is a fresh one in a subprocess: this process's may already run, started
# with the session's empty data directory. bench.first_step, imported there first, gives its
# bnviz.data the digests of the small IDX files the test writes (a monkeypatch does not cross exec).
def report_loads(out: str) -> None:
    """Run in a worker: what the forkserver preloaded, and whether mnist was read again."""
    from bnviz import data, worker_boot

    data.load("mnist")
    info = data.load.cache_info()
    Path(out).write_text(f"{worker_boot.PRELOADED} {info.misses} {info.hits}")


WARM_AND_TRAIN = """
import multiprocessing.forkserver as fs, sys, time
from bnviz import live, remote
from tests.test_remote_trainer import report_loads
from tests.test_trainer import small
remote.worker_context().set_forkserver_preload(["bench.first_step", "bnviz.worker_boot"])
lab = live.Lab(pool=live.WorkerPool())  # a page opening, on a server with BNVIZ_WORKER_MODE=process
deadline = time.monotonic() + 60
while fs._forkserver._forkserver_pid is None and time.monotonic() < deadline:
    time.sleep(0.01)
print("forkserver", fs._forkserver._forkserver_pid is not None, "workers", remote.active_processes())

p = remote.worker_context().Process(target=report_loads, args=(sys.argv[1],))
p.start(); p.join(60)
trainer = remote.RemoteTrainer(small("dataset=mnist", "depth=1", steps=3))
trainer.resume()
while trainer.state not in ("finished", "failed") and time.monotonic() < deadline:
    trainer.snapshot()  # the state comes with the snapshots
    time.sleep(0.05)
print("run", trainer.state, trainer.error)
"""


def test_a_page_opening_warms_the_forkserver_which_preloads_datasets_on_disk_for_its_workers(tmp_path):
    """A page's Lab, made as the page opens, starts the forkserver without starting a worker;
    the forkserver reads the verified datasets on disk once and its workers train on them without
    reading them again, and without the hang a fork after a parallel region would leave them in."""
    from bench.first_step import SYNTHETIC_VAR
    from tests.test_data import FILES, idx_gz, sha

    # As many images as torch splits over threads, both in the forkserver's normalization and in
    # the worker's first shuffle (measured: randperm(60,000) hung; 30,000 did not). Mostly blank,
    # so the files stay small.
    n = 50_000
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 14, :] = np.random.default_rng(0).integers(0, 256, (n, 28))
    blobs = {FILES[0]: idx_gz(images), FILES[1]: idx_gz(np.arange(n) % 10),
             FILES[2]: idx_gz(images[:200]), FILES[3]: idx_gz(np.arange(200) % 10)}
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    for fname, blob in blobs.items():
        (tmp_path / "data" / "mnist" / fname).write_bytes(blob)
    env = {**os.environ, "BNVIZ_WORKER_MODE": "process", "BNVIZ_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(ROOT), SYNTHETIC_VAR: json.dumps({f: sha(b) for f, b in blobs.items()})}
    env.pop("OMP_NUM_THREADS", None)
    out = tmp_path / "child"
    proc = subprocess.run([sys.executable, "-c", WARM_AND_TRAIN, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "forkserver True workers 0" in proc.stdout
    assert out.exists(), proc.stderr[-2000:]
    assert out.read_text() == "('mnist',) 1 1"  # loaded once, in the forkserver; a hit in the worker
    assert "run finished None" in proc.stdout, proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize("mode, warms", [("process", True), ("thread", False), ("fibers", False)])
def test_labs_and_sweep_slots_warm_the_forkserver_only_on_a_server_of_worker_processes(monkeypatch, mode, warms):
    """Both are made as their page opens; a bad BNVIZ_WORKER_MODE is left to the Start click to report."""
    from ui import sweeps

    warmed = []
    monkeypatch.setattr(remote, "warm_up", lambda: warmed.append(True))
    monkeypatch.setenv("BNVIZ_WORKER_MODE", mode)
    live.Lab(pool=live.WorkerPool())
    sweeps.SweepSlot(presets.get("high-lr"))
    assert warmed == [True, True] if warms else warmed == []
