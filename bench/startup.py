"""What starting costs, each in a fresh process: ``python -m bench.startup [--against REV] [--rounds 3]``.

    forkserver     the workers' forkserver from cold until its first child runs (a process-mode
                   server's page warms it; `bnviz run --jobs N` waits for it)
    first-start    in a process that has imported the engine (a thread-mode server), a
                   quick-look Trainer built and stepped once: what the first Start click waits for
    cli-jobs-2     `python -m bnviz run --preset paper-fig1 --jobs 2 --steps 200` (on mnist-mini), the whole
                   command: 200 steps are ~0.2 s of it, the rest is starting and the report
    cli-jobs-1     the same in one process

With ``--against REV`` the same runs of REV's tree (``git archive``) alternate with the
working tree's, round by round, so a slower minute of the host slows both alike. Prints the
median and range of each; numbers in docs/DEPLOYMENT.md and docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ab import ROOT, extract_bnviz, unreadable

_PROBE = """
import sys, time
from bnviz.numpy_sort import prefer_avx2_sort
prefer_avx2_sort()
if sys.argv[1] == "forkserver":
    from bnviz import remote
    t = time.perf_counter()
    p = remote.worker_context().Process(target=print, args=("",))
    p.start()
    p.join()
else:
    import bnviz.presets, bnviz.trainer
    cmp = bnviz.presets.get("quick-look").comparison()
    t = time.perf_counter()
    trainer = bnviz.trainer.Trainer(cmp)
    trainer._begin()
    trainer._step_all()
print(f"{time.perf_counter() - t:.4f}")
"""
CLI = ["-m", "bnviz", "run", "--preset", "paper-fig1", "--set", "dataset=mnist-mini", "--steps", "200", "--quiet"]
MEASURES = ("forkserver", "first-start", "cli-jobs-2", "cli-jobs-1")


def measure_once(tree: Path, what: str, out: Path) -> float:
    """Seconds of one ``what`` in a fresh process of ``tree``'s bnviz."""
    if what in ("forkserver", "first-start"):
        run = subprocess.run([sys.executable, "-c", _PROBE, what], cwd=tree, capture_output=True, text=True,
                             check=True, timeout=300)
        return float(run.stdout.split()[-1])
    jobs = what.rsplit("-", 1)[1]
    t = time.perf_counter()
    subprocess.run([sys.executable, *CLI, "--jobs", jobs, "--out", str(out)], cwd=tree, capture_output=True,
                   check=True, timeout=300)
    return time.perf_counter() - t


def measure(trees: dict[str, Path], rounds: int, out: Path) -> dict[str, dict[str, list[float]]]:
    got = {name: {w: [] for w in MEASURES} for name in trees}
    for _ in range(rounds):
        for what in MEASURES:
            for name, tree in trees.items():
                got[name][what].append(measure_once(tree, what, out / name))
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--against", metavar="REV", help="also REV's tree, alternated with the working tree's")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds: at least 1")
    with tempfile.TemporaryDirectory(prefix="bnviz-startup-") as tmp:
        trees = {"new": ROOT}
        if args.against:
            try:
                trees["base"] = extract_bnviz(args.against, Path(tmp) / "base").parent
            except subprocess.CalledProcessError as exc:
                return unreadable("bench.startup", args.against, exc)
        got = measure(trees, args.rounds, Path(tmp))
    print(f"seconds, {args.rounds} rounds, fresh processes; new = working tree"
          + (f", base = {args.against}" if args.against else ""))
    for what in MEASURES:
        for name, per in got.items():
            v = per[what]
            print(f"  {what:12s} {name:5s} median {statistics.median(v):6.2f}   range {min(v):.2f}-{max(v):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
