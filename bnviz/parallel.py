"""Independent trainings in parallel processes: a comparison's variants, a sweep's values.

    >>> snap = train_split(presets.get("paper-fig1").comparison(), jobs=2)   # one variant per process
    >>> run_sweep(spec, jobs=4, threads=1)                                    # bnviz/sweep.py

Why it is sound: on the CPU a variant trains the same numbers, bit for bit, whichever
companions it is trained with (tests/test_fast_path.py), so the variants of a comparison can
train in separate processes, one core each, and the merged record is the one a single
process would have written at the same torch thread count (a sweep's values never depended
on each other). Why it is worth it: the whole paper-fig1 on two Zen 3 cores took 96 s in
two processes against 126 s in one at one thread and 108 s in one at two threads (the BN
variant alone cost ~2/3 of the pair there: docs/PERFORMANCE.md, step 9); on two Zen 4
cores, where the two cost about the same, 52.4 s against 91.4 s (run K). The live app does not
use this: on a class server every core already trains a student's run.

Numbers depend on the torch thread count a process trains with (batch norm's reductions
split over threads), so each child trains with ``threads`` threads and the same work at the
same ``threads`` gives the same numbers in one process or in several: bit for bit at one
thread; at more, MKL's threaded products may differ in the last bits with the alignment of
their buffers unless ``MKL_CBWR=AUTO,STRICT`` is set (docs/PERFORMANCE.md, *Exactness*).
"""

from __future__ import annotations

import os
import time
from multiprocessing.connection import wait
from typing import Callable

from bnviz.config import Comparison
from bnviz.errors import BnvizError, training_failure
from bnviz.runlog import RunSnapshot

PROCESS_NAME = "bnviz-job"  # the children's name (multiprocessing.active_children())
PROGRESS_EVERY_S = 0.2  # a child reports its step count at most this often
MAX_JOBS = 8  # as many as a comparison has variants at most
# Child processes take a few seconds to start (the forkserver imports torch, each child loads
# its dataset); "auto" uses them only for work long enough to pay for that (3,000 steps of
# paper-fig1 take ~7 s here).
AUTO_MIN_STEPS = 10_000


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def auto_jobs(tasks: int, steps: int, comparison: Comparison) -> int:
    """Processes for ``tasks`` independent trainings of ``steps`` steps in all: one per task, at
    most one per core; one for short work and on a GPU (where the device, not the host's
    cores, does the work)."""
    from bnviz.trainer import resolve_device

    on_cpu = all(resolve_device(c.device)[0].type == "cpu" for c in comparison.variants.values())
    return _auto_jobs(tasks, steps, on_cpu)


def _auto_jobs(tasks: int, steps: int, on_cpu: bool) -> int:
    """auto_jobs' rule, for start_early too, which must decide before torch is imported."""
    return max(1, min(tasks, available_cores())) if steps >= AUTO_MIN_STEPS and on_cpu else 1


def start_early(tasks: int, steps: int, comparison: Comparison, jobs: int | None) -> bool:
    """Start the workers' forkserver now, in the background, if this work will likely train in
    processes (``auto_jobs``'s rule, decided without torch: a device left to ``auto`` counts as
    the CPU). The forkserver then imports torch and the engine on another core while this
    process imports them too: ~1 s sooner to the first step of ``python -m bnviz run --jobs 2``.
    Whether it started."""
    if jobs is None:
        jobs = _auto_jobs(tasks, steps, all(c.device in ("auto", "cpu") for c in comparison.variants.values()))
    likely = min(jobs, tasks) > 1
    if likely:
        from bnviz.remote import warm_up

        warm_up()
    return likely


def threads_each(jobs: int) -> int:
    """The torch threads this process would use, shared out among ``jobs`` children."""
    import torch

    return max(1, torch.get_num_threads() // jobs)


def split(comparison: Comparison, jobs: int) -> list[Comparison]:
    """The variants in ``jobs`` contiguous groups of near-equal size, in the comparison's order."""
    names = comparison.names
    jobs = max(1, min(jobs, len(names)))
    size, extra = divmod(len(names), jobs)
    groups, at = [], 0
    for j in range(jobs):
        n = size + (j < extra)
        groups.append(Comparison({m: comparison.variants[m] for m in names[at: at + n]}))
        at += n
    return groups


def merge(comparison: Comparison, parts: list[RunSnapshot]) -> RunSnapshot:
    """One snapshot of the whole comparison from its groups' snapshots."""
    variants = {n: v for part in parts for n, v in part.variants.items()}
    events = sorted((e for part in parts for e in part.events), key=lambda e: e.step)
    notices = list(dict.fromkeys(n for part in parts for n in part.notices))
    states = {part.state for part in parts}
    state = next((s for s in ("failed", "stopped") if s in states), "finished")
    return RunSnapshot({n: variants[n] for n in comparison.names}, events, state,
                       sum(part.steps_per_s for part in parts), notices)


def train_split(comparison: Comparison, jobs: int, threads: int = 1,
                progress: Callable[[int], None] | None = None,
                notice: Callable[[str], None] | None = None) -> RunSnapshot:
    """Train ``comparison`` to the end in ``jobs`` child processes; the merged final snapshot.

    ``progress(step)`` gets the step that every group has reached (the slowest group's; a
    group that is done counts as at the last step); ``notice(text)`` each notice a group's
    Trainer gives when built (e.g. which dataset it fell back to), as it arrives. A group
    that fails raises BnvizError with its one-line reason; the others are stopped.
    """
    groups = split(comparison, jobs)
    steps = [0] * len(groups)
    total = comparison.steps

    def on_message(i: int, kind: str, value) -> None:
        if kind == "notice":
            if notice is not None:
                notice(value)
            return
        # "done": finished, or every variant of the group stopped early (diverged)
        steps[i] = total if kind == "done" else value
        if progress is not None:
            progress(min(steps))

    parts = run_in_processes([(_train_group, (g,)) for g in groups], len(groups), threads, on_message,
                             lambda i: f"training of {', '.join(groups[i].names)}")
    return merge(comparison, parts)


def _train_group(report: Callable[[str, object], None], comparison: Comparison) -> RunSnapshot:
    """In a child: build and train one group, reporting notices and progress; its final snapshot."""
    from bnviz.trainer import Trainer

    trainer = Trainer(comparison)
    for text in trainer.log.snapshot().notices:
        report("notice", text)
    trainer.run(progress=lambda step: report("progress", step))
    return trainer.log.snapshot()


# ------------------------------------------------------------------------------ the processes

Task = tuple[Callable, tuple]  # (function, args): the child calls function(report, *args)


def run_in_processes(tasks: list[Task], jobs: int, threads: int,
                     on_message: Callable[[int, str, object], None] | None = None,
                     describe: Callable[[int], str] = lambda i: f"task {i + 1}", nice: int = 0) -> list:
    """Run each task in a child process, at most ``jobs`` at once; their return values, in order.

    A task ``(fn, args)`` runs as ``fn(report, *args)`` in a child whose torch uses ``threads``
    threads; ``fn`` must be importable by name. Its ``report(kind, value)`` reaches the parent
    as ``on_message(i, kind, value)`` ("progress" at most every PROGRESS_EVERY_S: a task may
    report every step), and its return value as ``on_message(i, "done", value)``.
    A task that raises makes this raise BnvizError with its one-line reason (``describe(i)``
    names a task whose process died); the other children are stopped, as on any exception
    here (Ctrl-C included): their pipes close and each stops at its next report.
    ``nice`` > 0 lowers the children's scheduling priority (a server's sweeps: bnviz/remote.py's
    WORKER_NICE), so that they cannot slow the pages down.
    """
    from bnviz.remote import worker_context  # the forkserver that has imported the engine once

    ctx = worker_context()
    waiting = list(range(len(tasks)))
    running: dict = {}  # connection -> (task index, process)
    results: dict[int, object] = {}
    procs = []
    try:
        while waiting or running:
            while waiting and len(running) < max(1, jobs):
                i = waiting.pop(0)
                mine, child = ctx.Pipe()
                fn, args = tasks[i]
                p = ctx.Process(target=_child, args=(child, threads, fn, args, nice), name=PROCESS_NAME, daemon=True)
                p.start()
                child.close()
                procs.append(p)
                running[mine] = (i, p)
            for conn in wait(list(running), timeout=1.0):
                i, p = running[conn]
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):
                    p.join(5)
                    raise BnvizError(f"{describe(i)} stopped: its process exited unexpectedly "
                                     f"(exit code {p.exitcode})") from None
                if kind == "error":
                    raise BnvizError(value)
                if kind == "done":
                    results[i] = value
                    del running[conn]
                    conn.close()
                    p.join(timeout=5)  # it exits right after sending
                if on_message is not None:
                    on_message(i, kind, value)
        return [results[i] for i in range(len(tasks))]
    finally:
        for conn in running:
            conn.close()  # a child still working sees its pipe close at its next report, and stops
        for p in procs:
            p.join(timeout=2)
            if p.is_alive():
                p.terminate()
                p.join()


def _child(conn, threads: int, fn: Callable, args: tuple, nice: int = 0) -> None:
    import torch

    if nice > 0:
        os.nice(nice)
    torch.set_num_threads(threads)
    last_progress = [0.0]

    def report(kind: str, value) -> None:  # a send raises once the parent has gone: the task stops
        if kind == "progress":
            now = time.monotonic()
            if now - last_progress[0] < PROGRESS_EVERY_S:
                return
            last_progress[0] = now
        conn.send((kind, value))

    try:
        result = fn(report, *args)
        conn.send(("done", result))
    except (BrokenPipeError, EOFError, OSError, KeyboardInterrupt):
        pass  # the parent stopped waiting, or Ctrl-C reached the whole process group: the parent reports it
    except Exception as exc:  # noqa: BLE001 -- one line for the parent to print
        text = str(exc)[:300] if isinstance(exc, BnvizError) else training_failure(exc)
        try:
            conn.send(("error", text))
        except (BrokenPipeError, EOFError, OSError):
            pass
    finally:
        conn.close()
