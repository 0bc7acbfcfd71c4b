"""A Trainer in a child process, driven like a local one: the server's training workers as processes.

Why: every worker thread of the Streamlit server shares one GIL with the other workers and
with every page's redraw. Measured with the protocol load client (docs/DEPLOYMENT.md), 4
worker threads on 2 cores got 0.62 of a core between them and made 150 steps per CPU-second
(a worker alone: ~300). In a process of its own a worker competes only for a core.

``RemoteTrainer`` has the part of ``Trainer``'s interface the Lab and the pages use
(``start / pause / resume / step / stop / join / set_lr``, ``state``, ``busy``, ``error``,
``total_steps``, ``comparison`` and ``log.snapshot()``). Commands go down a pipe; a snapshot
is asked for and comes back pickled (a RunLog is bounded, so at most ~1-2 MB). The child
runs the ordinary threaded Trainer, so both modes train the same numbers.

Children are forked by multiprocessing's forkserver, which has imported the engine and read
the presets' datasets on disk once (bnviz/worker_boot.py): a worker trains its first step
~0.2 s after Start and shares torch's pages and MNIST's with its siblings, and the Streamlit
process itself (its threads and locks) is never forked. The forkserver starts (~1.5 s) as soon
as a page opens, while its user reads it (``warm_up``). A child whose parent dies sees its
pipe close and stops.

The trade (docs/DEPLOYMENT.md, 10 sessions on 2 cores): 2.1x faster training per session,
~150 MB per worker, and a server that answers a little slower (workers run at nice +10).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import threading
from itertools import count

from bnviz.config import Comparison
from bnviz.errors import BnvizError, training_failure
from bnviz.numpy_sort import prefer_avx2_sort
from bnviz.runlog import TERMINAL_STATES, RunSnapshot

PROCESS_NAME = "bnviz-trainer"  # the threads' name too: alive_workers() counts both
WORKER_NICE = 10  # added to a worker process's niceness (lower scheduling priority than the server)
SNAPSHOT_WAIT_S = 0.25  # a page waits at most this for a worker's snapshot, then shows the last one

_context = None
_context_lock = threading.Lock()
_warming = False


def worker_context():
    """multiprocessing's forkserver context for bnviz's workers (one per process, made once)."""
    global _context
    with _context_lock:
        if _context is None:
            prefer_avx2_sort()  # the forkserver imports numpy afresh: numpy_sort.py
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["bnviz.worker_boot"])  # see there: no re-import of app.py
            _context = ctx
        return _context


def warm_up() -> None:
    """Start the workers' forkserver now, in the background, if it is not running yet.

    It imports torch and the engine and reads MNIST before it forks its first worker, ~1.2-1.6 s:
    started when a page opens (``live.warm_workers``), that is done while the user reads the
    page, not after they press Start.
    """
    global _warming
    with _context_lock:
        if _warming:
            return
        _warming = True
    worker_context()  # the preload and the environment the forkserver starts with
    threading.Thread(target=multiprocessing.forkserver.ensure_running, name="bnviz-forkserver-start",
                     daemon=True).start()


def active_processes() -> int:
    return sum(1 for p in multiprocessing.active_children() if p.name == PROCESS_NAME)


class _LogView:
    """What the Lab and the pages read of the child's RunLog."""

    def __init__(self, owner: "RemoteTrainer"):
        self._owner = owner

    @property
    def state(self) -> str:
        return self._owner.state

    def snapshot(self) -> RunSnapshot | None:
        return self._owner.snapshot()


class RemoteTrainer:
    """A Trainer running in a child process, started when it is first asked to compute.

    A lab waiting in the queue holds no process (a worker process costs ~100 MB and a
    second of CPU to build its Trainer); the process starts on the first ``resume()``,
    ``step()`` or ``set_lr()`` and is not waited for: a build error arrives with the next
    snapshot, as a failed run with its message.
    """

    def __init__(self, comparison: Comparison, single_thread: bool = True):
        self.comparison = comparison
        self.single_thread = single_thread
        self.total_steps = comparison.steps
        self.log = _LogView(self)
        self.error: str | None = None
        self._state = "idle"
        self._busy = False
        self._last: RunSnapshot | None = None
        self._ids = count(1)
        self._lock = threading.RLock()  # one request on the pipe at a time (the page, the pool's sweep)
        self._proc = None
        self._conn = None
        self._in_flight: int | None = None  # id of the snapshot asked for and not yet received
        self._stop_sent = False

    def _ensure_process(self) -> bool:
        """Start the child if there is none yet; False if this run has ended."""
        with self._lock:
            if self._proc is not None:
                return True
            if self._state in TERMINAL_STATES:
                return False
            import torch
            ctx = worker_context()
            self._conn, child = ctx.Pipe()
            # The Trainer is built with this process's torch thread count, as in thread mode
            # (float results may depend on it; the datasets' normalization does not: data.pixel_stats).
            self._proc = ctx.Process(target=serve, args=(child, self.comparison, self.single_thread,
                                                         torch.get_num_threads()),
                                     name=PROCESS_NAME, daemon=True)
            self._proc.start()
            child.close()
            return True

    # commands ------------------------------------------------------------------------------
    def _send(self, *msg) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                pass  # the child is gone; state says so

    def start(self, paused: bool = False) -> None:
        self._state = "paused"
        if not paused:
            self.resume()

    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        if self._ensure_process():
            self._state = "running"
            self._send("resume")

    def step(self, n: int = 1) -> None:
        if self._ensure_process():
            self._busy = True
            self._send("step", n)

    def set_lr(self, lr: float, variant: str | None = None) -> None:
        from bnviz.trainer import check_lr_change
        check_lr_change(self.comparison, lr, variant)  # a bad value is the caller's error, here
        if self._ensure_process():
            self._busy = True
            self._send("set_lr", lr, variant)

    def stop(self) -> None:
        with self._lock:
            if self._proc is None and self._state not in TERMINAL_STATES:
                self._state = "stopped"
            self._send("stop")

    def join(self, timeout: float | None = None) -> bool:
        if self._proc is None:
            return True
        self._proc.join(timeout)
        if self._proc.is_alive():
            return False
        self._conn.close()
        return True

    # what the page reads ---------------------------------------------------------------------
    @property
    def state(self) -> str:
        p = self._proc
        if p is not None and self._state not in TERMINAL_STATES and not p.is_alive() and p.exitcode is not None:
            self._state = "failed"
            self.error = self.error or f"training worker exited unexpectedly (exit code {p.exitcode})"
        return self._state

    @property
    def busy(self) -> bool:
        return self._busy or self._state == "running"

    def snapshot(self) -> RunSnapshot | None:
        """The child's latest RunLog; never waits more than SNAPSHOT_WAIT_S.

        At most one request is in flight: a page asks, takes the answer if it comes within
        SNAPSHOT_WAIT_S, and otherwise shows the last snapshot it has (the answer is picked up
        by the next refresh). A busy or still-building worker thus slows its own page's
        updates, never holds the page's script thread (and the Lab's lock) for long.
        """
        with self._lock:
            if self._proc is None:
                return self._last
            try:
                self._receive(0)
                if self._in_flight is None and self._proc.is_alive():
                    self._in_flight = next(self._ids)
                    self._conn.send(("snapshot", self._in_flight))
                if self._in_flight is not None:
                    self._receive(SNAPSHOT_WAIT_S)
                if self._state in TERMINAL_STATES and not self._busy and not self._stop_sent:
                    # The run is over and this snapshot is its last word: the child and the
                    # memory it holds can go now rather than when the tab closes.
                    self._stop_sent = True
                    self._conn.send(("stop",))
            except (BrokenPipeError, EOFError, OSError):
                pass
            return self._last

    def _receive(self, timeout: float) -> None:
        """Read what the child sent, waiting up to ``timeout`` for the answer in flight."""
        while self._conn.poll(timeout if self._in_flight is not None else 0):
            msg = self._conn.recv()
            if msg[0] == "error":  # the Trainer could not be built
                self._state, self._busy, self.error = "failed", False, str(msg[1])
                self._in_flight = None
                return
            _, self._state, self._busy, self.error, self._last = msg
            if msg[0] == self._in_flight:
                self._in_flight = None
                return


def serve(conn, comparison: Comparison, single_thread: bool, threads: int) -> None:
    """The child: build the Trainer, then obey the pipe until told to stop or the parent goes."""
    import torch

    from bnviz.trainer import Trainer

    torch.set_num_threads(threads)
    # Below the server in the scheduler: the pages' redraws, the websocket and the health
    # check must not wait behind training (with threads, the GIL did that job, badly).
    os.nice(WORKER_NICE)
    try:
        trainer = Trainer(comparison, single_thread=single_thread)
    except Exception as exc:  # noqa: BLE001 -- reported to the page as a failed run
        conn.send(("error", str(exc) if isinstance(exc, BnvizError) else training_failure(exc)))
        conn.close()
        return
    trainer.start(paused=True)
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break  # the parent closed the pipe or died
            cmd = msg[0]
            if cmd == "snapshot":
                conn.send((msg[1], trainer.state, trainer.busy, trainer.error, trainer.log.snapshot()))
            elif cmd == "step":
                trainer.step(msg[1])
            elif cmd == "set_lr":
                trainer.set_lr(msg[1], msg[2])
            elif cmd in ("pause", "resume"):
                getattr(trainer, cmd)()
            elif cmd == "stop":
                break
    finally:
        trainer.stop()
        trainer.join(timeout=10)
        trainer.close()
        conn.close()
