"""The bridge between Streamlit sessions and training workers; the only engine module that
knows Streamlit.

* ``Lab``: one per browser session. Owns at most one Trainer (a worker thread), the
  user's intent (running or paused, how fast) and when the page last asked for data.
* ``WorkerPool``: one per process. Caps the trainers that compute at once
  (BNVIZ_MAX_WORKERS); the others wait in a FIFO and their page shows "queued: n ahead".
  A paused lab gives its slot back. Each page refresh calls ``tick()``, which hands free
  slots on, and stops labs whose page has not asked for data for BNVIZ_IDLE_TIMEOUT_S.
* ``session_lab()``: the session's Lab, from a session-scoped resource cache whose
  release callback stops the worker when the tab closes.

Worker threads never call ``st.*`` or read ``st.session_state``: they only write the
RunLog, which the page reads through snapshots.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
from collections import deque

from bnviz import limits, remote
from bnviz.config import Comparison
from bnviz.errors import BnvizError, ConfigError
from bnviz.pacing import PACER
from bnviz.runlog import TERMINAL_STATES, RunSnapshot
from bnviz.trainer import Trainer

log = logging.getLogger("bnviz.live")

# Steps granted per refresh in slow motion; None runs as fast as the machine allows.
SPEEDS: dict[str, int | None] = {"1 step": 1, "5 steps": 5, "25 steps": 25, "100 steps": 100, "max": None}


class WorkerPool:
    """Process-wide cap on computing trainers, with a FIFO of waiting labs."""

    def __init__(self):
        self._lock = threading.RLock()
        self._active: set[Lab] = set()
        self._queue: deque[Lab] = deque()
        self.labs: set[Lab] = set()  # every open lab, for the idle sweep and tests

    def capacity(self) -> int:
        return limits.current().max_workers

    def request(self, lab: "Lab") -> None:
        with self._lock:
            if lab in self._active or lab in self._queue:
                return
            self._queue.append(lab)
        self.tick()

    def release(self, lab: "Lab") -> None:
        with self._lock:
            self._active.discard(lab)
            if lab in self._queue:
                self._queue.remove(lab)
        self.tick()

    def place(self, lab: "Lab") -> int | None:
        """How many labs wait before this one (0: next), or None if it is not waiting."""
        with self._lock:
            return list(self._queue).index(lab) if lab in self._queue else None

    def has_slot(self, lab: "Lab") -> bool:
        with self._lock:
            return lab in self._active

    @property
    def active_count(self) -> int:
        with self._lock:
            return len(self._active)

    def tick(self) -> None:
        """Free the slots of labs that stopped computing, give slots to waiting labs, sweep idle labs."""
        timeout = limits.current().idle_timeout_s
        now = time.monotonic()
        with self._lock:
            for lab in list(self.labs):
                if now - lab.last_seen > timeout and lab.trainer is not None and lab.trainer.state in ("running", "paused"):
                    lab.stop(reason=f"stopped after {timeout} s without a page refresh (BNVIZ_IDLE_TIMEOUT_S)")
            for lab in list(self._active):
                if not lab.wants_cpu():
                    self._active.discard(lab)
            while self._queue and len(self._active) < self.capacity():
                lab = self._queue.popleft()
                if lab.wants_cpu():
                    self._active.add(lab)
                    lab._granted()


POOL = WorkerPool()


class Lab:
    """One session's training: build, start, pause, step, reset; all safe from the script thread."""

    def __init__(self, pool: WorkerPool = POOL, single_thread: bool = True):
        self.pool = pool
        self.single_thread = single_thread
        self.trainer: Trainer | None = None
        self.comparison: Comparison | None = None
        self.running = False  # the user's intent: Start pressed and not paused
        self.speed: int | None = None
        self.last_seen = time.monotonic()
        self.message: str | None = None  # why the lab stopped, if not by the user
        self.change: str | None = None  # what the last configure() did, until the page shows it
        self.settle_until = 0.0  # keep the page refreshing until then, to show what a click caused
        self.refresh_s: float | None = None  # the page's timer now (bnviz/pacing.py); None: not live
        self._lock = threading.RLock()
        pool.labs.add(self)
        warm_workers()

    # what the page calls -------------------------------------------------------------------
    def configure(self, comparison: Comparison) -> str:
        """Adopt ``comparison``: 'same', 'lr' (applied live) or 'restart' (new run, same seed)."""
        with self._lock:
            old = self.comparison
            if old == comparison:
                return "same"
            if old is not None and self.trainer is not None and _only_lr_differs(old, comparison):
                for name, cfg in comparison.variants.items():
                    if cfg.lr != old.variants[name].lr:
                        self.trainer.set_lr(cfg.lr, name if _lrs_differ(comparison) else None)
                        if not _lrs_differ(comparison):
                            break
                self.comparison = comparison
                self.change = "lr"
                return "lr"
            was_running = self.running
            had_run = self.trainer is not None
            self._discard_trainer()
            self.comparison = comparison
            if was_running:
                self.start()
            if had_run:
                self.change = "restart"
            return "restart"

    def start(self) -> None:
        with self._lock:
            if self.comparison is None:
                raise BnvizError("nothing to train: no comparison configured")
            if self.trainer is None or self.trainer.state in TERMINAL_STATES:
                self._discard_trainer()
                self.trainer = new_trainer(self.comparison, self.single_thread)
            self.running = True
            self.message = None
        self.pool.request(self)

    def pause(self) -> None:
        self._settle()
        with self._lock:
            self.running = False
            if self.trainer is not None:
                self.trainer.pause()
        self.pool.release(self)

    def step(self, n: int = 1) -> None:
        """Single-step while paused (a few steps cost too little to queue for a slot)."""
        self._settle()
        with self._lock:
            if self.comparison is None:
                return
            if self.trainer is None or self.trainer.state in TERMINAL_STATES:
                self._discard_trainer()
                self.trainer = new_trainer(self.comparison, self.single_thread)
            self.running = False
            self.trainer.pause()
            self.trainer.step(n)

    def reset(self) -> None:
        with self._lock:
            self.running = False
            self._discard_trainer()
        self.pool.release(self)

    def stop(self, reason: str | None = None) -> None:
        with self._lock:
            self.running = False
            self.message = reason
            if self.trainer is not None:
                self.trainer.stop()
        self.pool.release(self)

    def close(self) -> None:
        """The tab closed: stop the worker and forget this lab."""
        self.stop()
        with self._lock:
            if self.trainer is not None:
                self.trainer.join(timeout=5)
            # Streamlit keeps a disconnected session (and with it this Lab) for
            # server.disconnectedSessionTTL seconds in case the tab reconnects; drop the
            # trainer now so its models and run log are freed at once, not minutes later.
            self.trainer = None
        self.pool.labs.discard(self)
        PACER.forget(id(self))
        _give_memory_back()
        # Read by the leak tests and by an operator: how many workers outlive their tabs.
        log.warning("bnviz: session closed; %d labs open, %d training workers alive",
                    len(self.pool.labs), alive_workers())

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def refresh(self) -> RunSnapshot | None:
        """Called by every page refresh: keeps the lab alive, feeds slow motion, returns a snapshot."""
        self.touch()
        self.pool.tick()
        with self._lock:
            t = self.trainer
            if t is None:
                return None
            # First: for a worker process (bnviz/remote.py) the snapshot also brings its state.
            snap = t.log.snapshot()
            if self.running and self.pool.has_slot(self) and self.speed is not None and t.state == "paused":
                t.step(self.speed)  # slow motion: a few steps per refresh
            if self.running and t.state in TERMINAL_STATES:
                self.running = False
                if t.state == "failed":
                    self.message = t.error
        if not self.running:
            self.pool.release(self)
        return snap

    def take_change(self) -> str | None:
        """What the last configure() did ('restart' or 'lr'), once; kept here, not in the
        session state, so a rerun interrupted by the change cannot drop it."""
        with self._lock:
            change, self.change = self.change, None
            return change

    def _settle(self, seconds: float = 3.0) -> None:
        self.settle_until = time.monotonic() + seconds

    @property
    def settling(self) -> bool:
        """Just paused or stepped: the worker reacts a moment later; keep showing its progress."""
        t = self.trainer
        return time.monotonic() < self.settle_until or (t is not None and t.busy)

    # status -------------------------------------------------------------------------------
    def wants_cpu(self) -> bool:
        t = self.trainer
        return self.running and t is not None and t.state not in TERMINAL_STATES

    @property
    def queue_place(self) -> int | None:
        return self.pool.place(self)

    @property
    def active(self) -> bool:
        """Whether the lab trains or waits for a slot to train."""
        return self.wants_cpu()

    @property
    def live(self) -> bool:
        """Whether the page shows a run in motion (training, queued, or settling after a
        click), so it keeps redrawing; a still run is paused, finished or stopped."""
        return self.active or self.queue_place is not None or self.settling

    # internals ----------------------------------------------------------------------------
    def _granted(self) -> None:
        with self._lock:
            if self.trainer is not None and self.speed is None:
                self.trainer.resume()

    def set_speed(self, speed: int | None) -> None:
        with self._lock:
            self.speed = speed
            if self.trainer is not None and self.running and self.pool.has_slot(self):
                if speed is None:
                    self.trainer.resume()
                else:
                    self.trainer.pause()

    def _discard_trainer(self) -> None:
        if self.trainer is not None:
            self.trainer.stop()
            self.trainer.join(timeout=5)
            self.trainer = None


def alive_workers() -> int:
    """Training workers alive in this server: threads, and child processes (BNVIZ_WORKER_MODE=process)."""
    threads = sum(1 for t in threading.enumerate() if t.name == "bnviz-trainer" and t.is_alive())
    return threads + remote.active_processes()


def warm_workers() -> None:
    """On a server that trains in processes, start their forkserver as a page opens (~1.5 s of
    imports and MNIST, bnviz/remote.py) rather than after the first Start click."""
    try:
        if limits.worker_mode() == "process":
            remote.warm_up()
    except ConfigError:
        pass  # a bad BNVIZ_WORKER_MODE is reported where a run starts (new_trainer)


def new_trainer(comparison: Comparison, single_thread: bool) -> "Trainer | remote.RemoteTrainer":
    """A paused trainer for ``comparison``: a thread of this process, or a child process."""
    if limits.worker_mode() == "process":
        trainer = remote.RemoteTrainer(comparison, single_thread=single_thread)
    else:
        trainer = Trainer(comparison, single_thread=single_thread)
    trainer.start(paused=True)
    return trainer


def _only_lr_differs(a: Comparison, b: Comparison) -> bool:
    if list(a.variants) != list(b.variants):
        return False
    return all(ca.replace(lr=1.0) == cb.replace(lr=1.0) for ca, cb in zip(a.variants.values(), b.variants.values()))


def _lrs_differ(c: Comparison) -> bool:
    return len({cfg.lr for cfg in c.variants.values()}) > 1


def _give_memory_back() -> None:
    """After a session's run is dropped: collect its reference cycles and return freed heap to the OS.

    Streamlit's collection after every script run is off (.streamlit/config.toml: it held
    the GIL ~0.2 s per chart refresh), so cycles left by a closed session (models, optimizers,
    the run log) would otherwise wait for Python's next full collection, and glibc keeps freed
    arenas mapped: the server's memory would creep up with every student who came and went
    (tests/test_leak.py). One full collection per closed tab is cheap.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the collection alone must do
        pass


def session_lab(page: str = "lab") -> Lab:
    """This browser session's Lab for ``page``; its worker stops when the session ends (tab closed)."""
    global _session_lab_fn
    if _session_lab_fn is None:
        _session_lab_fn = _make_session_cache()
    return _session_lab_fn(page)


def _release(lab: Lab) -> None:
    lab.close()


def _make_session_cache():
    import streamlit as st  # the one engine import of Streamlit, and only when the app runs

    @st.cache_resource(scope="session", on_release=_release, show_spinner=False)
    def lab_for_session(page: str) -> Lab:
        return Lab()

    return lab_for_session


_session_lab_fn = None
