"""The CPU probe kernels on their own: ``python -m bench.probe_kernels [--rounds 15]``.

Trains the paper-fig1 pair for 60 steps, keeps the last step's pre-activations (6 rows of
6,000 floats: 3 layers x 2 variants) and times, interleaved round by round on one thread,
what the probes do with them every step: the percentiles by a full sort and by selection
(bnviz/row_stats.py), the moments, and the whole ``LayerProbes.activation_stats`` both
ways. Prints the median per call and the ratio sort / select from the same rounds.

Then the same work in situ (``--in-situ``): the real lockstep with probes on and off,
interleaved, each phase timed in thread CPU time by wrapping the trainer's methods. In a
step the probe kernels cost about twice what they cost alone: the step's 1.6 MB of weights
and gradients have pushed their data out of the caches, and they push out the step's.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.run import _fig1, _trainer, interleave, torch_threads
from bnviz.metrics import PERCENTILES


def _preacts(steps: int = 60, device: str = "cpu") -> torch.Tensor:
    tr = _trainer(_fig1(device=device), probes=True)
    tr._begin()
    try:
        for _ in range(steps):
            tr._step_all()
        return tr._stack.preacts.flatten(0, 1).clone()  # (L * V, N, C)
    finally:
        tr._end("stopped")


def measure(rounds: int = 15, calls: int = 100) -> dict[str, float]:
    """Median microseconds per call of each kernel (wall time), and the sort / select ratios."""
    from bnviz.probes import LayerProbes

    with torch_threads(1):
        pre = _preacts()
        rows = pre.flatten(1).numpy()
        buf, scratch = pre.clone(), np.empty_like(rows)
        probes = LayerProbes([], [0] * pre.shape[0])
        plan = probes._plan(*rows.shape, rows.dtype)

        def stats(sort: bool):
            buf.copy_(pre)
            probes.observe(buf, consumable=True)
            return probes.activation_stats(sort=sort)

        kernels = {
            "copy of the rows (in both below)": lambda: np.copyto(scratch, rows),
            "percentiles by sort": lambda: (np.copyto(scratch, rows), plan.percentiles(scratch, sort=True)),
            "percentiles by selection": lambda: (np.copyto(scratch, rows), plan.percentiles(scratch, sort=False)),
            "moments": lambda: plan.moments(rows),
            "activation_stats, sorting": lambda: stats(True),
            "activation_stats, selecting": lambda: stats(False),
        }
        wall, _ = interleave(kernels, chunk=calls, rounds=rounds, warmup=1)
    times = {k: [t * 1e6 for t in v] for k, v in wall.items()}
    out = {k: statistics.median(v) for k, v in times.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    out["percentiles: sort / selection"] = ratio("percentiles by sort", "percentiles by selection")
    out["activation_stats: sorting / selecting"] = ratio("activation_stats, sorting", "activation_stats, selecting")
    return out


def rank_drift(steps: int = 300) -> dict[str, float]:
    """Ranks (of 6,000) that each of the six rows' three percentiles moves between consecutive steps."""
    with torch_threads(1):
        tr = _trainer(_fig1(device="cpu"), probes=True)
        tr._begin()
        try:
            moves, last = [], None
            for _ in range(steps):
                tr._step_all()
                rows = tr._stack.preacts.flatten(0, 1).flatten(1).numpy()
                ranks = (np.array(PERCENTILES) / 100 * (rows.shape[1] - 1)).astype(int)  # numpy's 'linear' lo ranks
                if last is not None:  # where last step's order statistics fall among this step's values
                    below = (rows[:, None, :] < last[:, :, None]).sum(axis=2)
                    moves.append(np.abs(below - ranks))
                last = np.sort(rows, axis=1)[:, ranks]
        finally:
            tr._end("stopped")
    moved = np.concatenate(moves, axis=None)
    return {f"p{q}": float(np.percentile(moved, q)) for q in (50, 90, 99)} | {"max": float(moved.max())}


PHASES = (("all", "trainer", "_step_all"), ("step + SGD", "stack", "step"), ("SGD + weight stats", "stack", "_update"),
          ("activation stats", "probes", "activation_stats"), ("histograms", "probes", "histograms"))


def in_situ(rounds: int = 20, steps: int = 50) -> dict[str, dict[str, float]]:
    """Thread CPU microseconds per lockstep of each phase, probes on and off, interleaved."""
    spent: dict[str, collections.Counter] = {"on": collections.Counter(), "off": collections.Counter()}
    trainers = {}
    with torch_threads(1):
        try:
            for tag in spent:
                tr = _trainer(_fig1(device="cpu"), probes=tag == "on")
                tr._begin()
                for _ in range(30):
                    tr._step_all()
                owners = {"trainer": tr, "stack": tr._stack, "probes": tr._stack_probes}
                for phase, owner, method in PHASES:
                    if owners[owner] is not None:
                        _time_calls(owners[owner], method, spent[tag], phase)
                trainers[tag] = tr
            # the wrapped methods keep the time; interleaving spreads the host's bursts over both
            interleave({tag: tr._step_all for tag, tr in trainers.items()}, chunk=steps, rounds=rounds, warmup=0)
        finally:
            for tr in trainers.values():
                tr._end("stopped")
    n = rounds * steps
    return {tag: {phase: spent[tag][phase] / n * 1e6 for phase, _, _ in PHASES} for tag in spent}


def _time_calls(obj, method: str, into: collections.Counter, phase: str) -> None:
    inner = getattr(obj, method)

    def timed(*args, **kwargs):
        t0 = time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            into[phase] += time.thread_time() - t0

    setattr(obj, method, timed)  # on the instance: the class and other trainers are untouched


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.probe_kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--in-situ", action="store_true", help="also time each phase of the real step, probes on and off")
    p.add_argument("--drift", action="store_true", help="only: how many ranks the percentiles move between steps")
    args = p.parse_args(argv)
    if args.drift:
        got = rank_drift()
        print("ranks (of 6,000) a percentile moves from one step to the next, paper-fig1, steps 1-300:")
        print("  " + "   ".join(f"{k} {v:.0f}" for k, v in got.items()))
        return 0
    print("the probe kernels alone, on the paper-fig1 pre-activations (6 rows x 6,000 floats), 1 thread:")
    for name, value in measure(args.rounds).items():
        unit = "x" if "/" in name else "us"
        print(f"  {name:42s} {value:8.2f} {unit}")
    if args.in_situ:
        got = in_situ(args.rounds)
        print("in situ, per lockstep of both variants (thread CPU time; phases nest: 'all' holds the rest):")
        for phase, _, _ in PHASES:
            on, off = got["on"][phase], got["off"][phase]
            print(f"  {phase:20s} probes on {on:8.1f} us   off {off:8.1f} us   on - off {on - off:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
