"""A change's effect on the engine, measured against noise: ``python -m bench.ab [--against REV]``.

On a shared machine the same step can take 1.7x longer from one minute to the next, so two
runs of ``python -m bench`` cannot tell a 5% change. This loads the engine of commit REV
(default HEAD, i.e. the working tree against the last commit) beside the working tree's in
ONE process, as the package ``bnviz_base``, and times the paper-fig1 lockstep (``--preset``:
another comparison's) of both engines, probes on and off, interleaved round by round on one
thread. It prints each median (process CPU time and wall) and the median of the per-round
ratios: a burst of load slows every engine of a round alike.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import interleave, torch_threads

ROOT = Path(__file__).resolve().parent.parent
_IMPORT = re.compile(r"\b(from|import)\s+bnviz\b|\bbnviz\.(?=[a-z_])")


def extract_bnviz(rev: str, into: Path) -> Path:
    """REV's bnviz/ (``git archive``) extracted as ``into``/bnviz; CalledProcessError if git cannot read REV."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "bnviz"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    return into / "bnviz"


def unreadable(tool: str, rev: str, exc: subprocess.CalledProcessError) -> int:
    """The one-line error of a --against REV that git cannot read; the exit status, 2."""
    print(f"{tool}: --against: git cannot read {rev!r} ({exc.stderr.decode().strip()[:200]})", file=sys.stderr)
    return 2


def load_base(rev: str, into: Path):
    """REV's bnviz/ extracted into ``into`` as the package ``bnviz_base`` and imported."""
    pkg = into / "bnviz_base"
    extract_bnviz(rev, into).rename(pkg)
    for f in pkg.rglob("*.py"):
        src = f.read_text()
        f.write_text(_IMPORT.sub(lambda m: m.group(0).replace("bnviz", "bnviz_base"), src))
    sys.path.insert(0, str(into))
    import bnviz_base.presets
    import bnviz_base.trainer

    return bnviz_base


@contextlib.contextmanager
def base_package(rev: str):
    """REV's bnviz/ imported as ``bnviz_base`` (load_base) while the block runs, unloaded after:
    a later call may load another commit under the same name."""
    with tempfile.TemporaryDirectory(prefix="bnviz-ab-") as tmp:
        try:
            yield load_base(rev, Path(tmp))
        finally:
            if tmp in sys.path:
                sys.path.remove(tmp)
            for name in [m for m in sys.modules if m == "bnviz_base" or m.startswith("bnviz_base.")]:
                del sys.modules[name]


def _trainer(pkg, probes: bool, preset: str = "paper-fig1"):
    cmp = pkg.presets.get(preset).comparison().with_all(dataset="mnist-mini")
    tr = pkg.trainer.Trainer(cmp, probes=probes)
    tr._begin()
    for _ in range(30):  # warm: buffers, caches
        tr._step_all()
    return tr


def measure(rev: str = "HEAD", rounds: int = 15, steps: int = 50, preset: str = "paper-fig1") -> dict:
    import bnviz.presets
    import bnviz.trainer

    with base_package(rev) as base, torch_threads(1):
        trainers = {f"{name} {'on' if probes else 'off'}": _trainer(pkg, probes, preset)
                    for name, pkg in (("base", base), ("new", bnviz)) for probes in (True, False)}
        wall, cpu = interleave({k: tr._step_all for k, tr in trainers.items()}, chunk=steps, rounds=rounds,
                               warmup=0)
        for tr in trainers.values():
            tr._end("stopped")

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(cpu[a], cpu[b]))

    return {"cpu_us": {k: statistics.median(v) * 1e6 for k, v in cpu.items()},
            "wall_us": {k: statistics.median(v) * 1e6 for k, v in wall.items()},
            "base probe overhead": ratio("base on", "base off"),
            "new probe overhead": ratio("new on", "new off"),
            "new vs base, probes on (speed-up)": ratio("base on", "new on"),
            "new vs base, probes off (speed-up)": ratio("base off", "new off")}


def main(argv: list[str] | None = None) -> int:
    from bnviz.presets import PRESETS

    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--against", default="HEAD", metavar="REV", help="the commit to compare with (default HEAD)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=50, help="locksteps per engine per round")
    p.add_argument("--preset", default="paper-fig1", choices=list(PRESETS), metavar="NAME",
                   help="the comparison to train, on mnist-mini (default paper-fig1; placement: three variants)")
    args = p.parse_args(argv)
    try:
        got = measure(args.against, args.rounds, args.steps, args.preset)
    except subprocess.CalledProcessError as exc:
        return unreadable("bench.ab", args.against, exc)
    print(f"{args.preset} lockstep of all its variants, 1 thread, {args.rounds} rounds x {args.steps} steps, "
          f"base = {args.against}, new = working tree")
    for k in got["cpu_us"]:
        print(f"  {k:9s} cpu {got['cpu_us'][k]:8.1f} us   wall {got['wall_us'][k]:8.1f} us")
    for k, v in got.items():
        if isinstance(v, float):
            print(f"  {k:36s} {v:.3f}x (CPU time, median of per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
