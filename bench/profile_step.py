"""Where one engine step's time goes: ``python -m bench.profile_step [--device cuda] [--probes off] [--graphs off]``.

Profiles the paper-fig1 comparison's lockstep (both variants, all probes unless ``--probes
off``) with torch.profiler and prints, per step: wall time, the host's time in torch
operators, the number of operators and of device kernels, the device's busy time, and the
operators that cost most. On a GPU a step is launch-bound when the device's busy time is
far below the wall time: the host cannot issue kernels as fast as the device runs them.

On a GPU the trainer replays its step as a CUDA graph (bnviz/cuda_graphs.py); ``--graphs off``
profiles the eager step it replaces.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.profiler import ProfilerActivity, profile

from bench.run import _fig1, _trainer


def _timed(f, n: int, sync) -> float:
    """Median seconds per call over 5 rounds of ``n`` calls."""
    times = []
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        sync()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def profile_step(device: str = "cpu", probes: bool = True, steps: int = 50, graphs: bool = True) -> dict:
    torch.set_num_threads(1)
    tr = _trainer(_fig1(device=device), probes=probes, graphs=graphs)
    cuda = tr.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tr._begin()
    try:
        for _ in range(30):  # warm: buffers, caches, cuBLAS handles, graph captures
            tr._step_all()
        wall = _timed(tr._step_all, steps, sync)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for _ in range(steps):
                tr._step_all()
            sync()
        events = prof.events()
        top_level = [e for e in events if e.cpu_parent is None and e.name.startswith("aten::")]
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        return {"device": str(tr.device), "probes": probes, "graphs": tr.graphs,
                "wall_ms": wall * 1e3, "host_ops_per_step": len(top_level) / steps,
                "host_op_ms": sum(e.cpu_time_total for e in top_level) / steps / 1e3,
                "kernels_per_step": len(kernels) / steps,
                "device_busy_ms": sum(e.device_time_total for e in kernels) / steps / 1e3 if cuda else None,
                "notices": tr.log.snapshot().notices,
                "table": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)}
    finally:
        tr._end("stopped")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--probes", default="on", choices=("on", "off"))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--graphs", default="on", choices=("on", "off"), help="CUDA graphs of the step (GPU only)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU here", file=sys.stderr)
        return 2
    r = profile_step(args.device, args.probes == "on", args.steps, args.graphs == "on")
    print(r.pop("table"))
    busy = "-" if r["device_busy_ms"] is None else f"{r['device_busy_ms']:.3f} ms"
    for notice in r["notices"]:
        print(notice)
    print(f"{r['device']}, probes {'on' if r['probes'] else 'off'}, CUDA graphs {'on' if r['graphs'] else 'off'}, "
          f"per lockstep of both variants: wall {r['wall_ms']:.3f} ms, host in torch ops {r['host_op_ms']:.3f} ms, "
          f"{r['host_ops_per_step']:.0f} ops, {r['kernels_per_step']:.0f} kernels, device busy {busy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
