"""A process worker's first step after Start, and what the workers hold (docs/DEPLOYMENT.md).

    python -m bench.first_step [--dataset mnist] [--workers 3] [--wait 8] [--synthetic-mnist]

As a server with BNVIZ_WORKER_MODE=process does it: the forkserver is warmed as a page opens
(``remote.warm_up``), ``--wait`` seconds pass (a user reading the page), then each of
``--workers`` trainers is started in turn, the next once the previous one has recorded its
first step (and keeps training meanwhile). Prints each one's seconds from Start to its first
recorded step, then the Rss and Pss of every worker and of the forkserver.

``--synthetic-mnist`` writes full-size MNIST files of random pixels (the real sizes and format)
into a temporary BNVIZ_DATA_DIR and trusts their digests, here and in the forkserver: for a
machine that cannot download MNIST. Without it, mnist is what ``python -m bnviz.data fetch
mnist`` left in BNVIZ_DATA_DIR.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import multiprocessing.forkserver
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.proc import kib

SYNTHETIC_VAR = "BNVIZ_BENCH_MNIST_SHA256"  # the synthetic files' digests, for the forkserver
SHAPES = {"train": 60_000, "t10k": 10_000}


def write_synthetic_mnist(root: Path) -> dict[str, str]:
    """MNIST's four files, random pixels in its layout, under root/mnist; their SHA-256s."""
    rng = np.random.default_rng(0)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for split, n in SHAPES.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
            blob = gzip.compress(header + array.tobytes(), compresslevel=1, mtime=0)
            name = f"{split}-{kind}-ubyte.gz"
            (folder / name).write_bytes(blob)
            digests[name] = hashlib.sha256(blob).hexdigest()
    return digests


def _trust_synthetic() -> None:
    """In this process (and, imported there first, the forkserver): mnist's digests are the synthetic files'."""
    if SYNTHETIC_VAR in os.environ:
        from bnviz import data

        data.REMOTE["mnist"] = data.Remote(("http://127.0.0.1:9/",), json.loads(os.environ[SYNTHETIC_VAR]))


_trust_synthetic()


def memory_mb(pid: int) -> dict[str, int]:
    return {k: kb // 1024 for k, kb in kib(pid, "smaps_rollup", "Rss", "Pss").items()}


def first_step_s(trainer, timeout: float = 120.0) -> float:
    start = time.perf_counter()
    trainer.resume()
    while time.perf_counter() - start < timeout:
        snap = trainer.snapshot()
        if trainer.error:
            raise SystemExit(f"bench.first_step: the worker failed: {trainer.error}")
        if snap is not None and snap.step >= 1:
            elapsed = time.perf_counter() - start
            if snap.notices:  # e.g. mnist fell back to mnist-mini: not what was asked to be timed
                raise SystemExit(f"bench.first_step: the worker says: {snap.notices[0]}")
            return elapsed
        time.sleep(0.01)
    raise SystemExit(f"bench.first_step: no first step within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.first_step", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist", help="what the workers train on (default mnist)")
    ap.add_argument("--workers", type=int, default=3, help="trainers started one after the other (default 3)")
    ap.add_argument("--wait", type=float, default=8.0, help="seconds between the page opening and Start (default 8)")
    ap.add_argument("--synthetic-mnist", action="store_true", help="full-size random MNIST files (no download)")
    args = ap.parse_args(argv)

    root = None
    if args.synthetic_mnist:
        root = Path(tempfile.mkdtemp(prefix="bnviz-bench-mnist-"))
        os.environ["BNVIZ_DATA_DIR"] = str(root)
        os.environ[SYNTHETIC_VAR] = json.dumps(write_synthetic_mnist(root))
        _trust_synthetic()
    from bnviz import remote
    from bnviz.config import Comparison, RunConfig

    if args.synthetic_mnist:
        remote.worker_context().set_forkserver_preload(["bench.first_step", "bnviz.worker_boot"])
    comparison = Comparison({"plain": RunConfig(dataset=args.dataset, steps=100_000),
                             "bn": RunConfig(dataset=args.dataset, norm="batch", steps=100_000)})
    remote.warm_up()  # what a page's Lab does as it opens (live.warm_workers)
    time.sleep(args.wait)
    trainers = [remote.RemoteTrainer(comparison) for _ in range(args.workers)]
    try:
        times = [first_step_s(t) for t in trainers]
        time.sleep(2)  # every worker training, its pages touched
        workers = [memory_mb(t._proc.pid) for t in trainers]
        server = memory_mb(multiprocessing.forkserver._forkserver._forkserver_pid)
    finally:
        for t in trainers:
            t.stop()
        for t in trainers:
            t.join(30)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"dataset {args.dataset}, Start {args.wait:g} s after the page opened, {args.workers} workers in turn")
    print("first step after Start (s): " + " / ".join(f"{s:.2f}" for s in times))
    for i, m in enumerate(workers, 1):
        print(f"worker {i}: Rss {m['Rss']} MB, Pss {m['Pss']} MB")
    print(f"forkserver: Rss {server['Rss']} MB, Pss {server['Pss']} MB")
    print(f"Pss of the forkserver and the workers: {server['Pss'] + sum(m['Pss'] for m in workers)} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
