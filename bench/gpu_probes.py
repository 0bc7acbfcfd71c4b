"""Ways to the GPU step's percentiles, timed on a GPU: ``python -m bench.gpu_probes [--device cuda]``.

The paper-fig1 pair's pre-activations after 60 steps (6 rows of 6,000 floats: 3 layers x 2
variants) and a unit's values (6 rows of 60, the size of the tracked units' rows). Their
percentiles (p15, p50, p85, numpy's 'linear' method) by: a sort then a gather (what the step
does); ``torch.kthvalue`` of each of the 6 ranks (a radix select per rank on a GPU); kthvalue
of the 3 lower ranks with each upper rank found by a count and a masked min; one 1-D sort of
int64 keys (row number, then the value's bits in order); and both tables at once by one sort
with the units' rows padded to the layers' length. On a GPU each way is captured in a CUDA
graph of ``--calls`` calls and replayed, as the trainer replays its step, so the times are the
device's, not the launches'. Each way must give the sort's values bit for bit.

The same script at 495e329 also timed the whole lockstep with the selection and with the step
under inference_mode on the GPU (docs/PERFORMANCE.md: 0.82x and 1.005x). On the CPU
(``--device cpu``) it runs the same code, to check the script; its CPU figures say nothing
about the GPU (the CPU path sorts and selects in numpy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.probe_kernels import _preacts
from bench.run import _sync_for, interleave, torch_threads
from bnviz import probes as probes_mod
from bnviz.metrics import PERCENTILES
from bnviz.row_stats import linear_ranks


def _lerp(ab: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """numpy's 'linear' percentiles from each row's lower ranks' values then its upper ranks' (..., 2k)."""
    k = frac.shape[-1]
    a, b = ab[..., :k], ab[..., k:]
    return a + (b - a) * frac


def selected_percentiles(n: int, qs: tuple[float, ...], device: torch.device, dtype: torch.dtype):
    """Percentiles of rows of n values by ``kthvalue`` of each rank they need, not a sort."""
    lo, hi, frac = linear_ranks(n, qs)
    ranks = [int(r) + 1 for r in np.concatenate([lo, hi])]
    frac_t = torch.as_tensor(frac, device=device, dtype=dtype)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return _lerp(torch.stack([x.kthvalue(r, dim=-1).values for r in ranks], dim=-1), frac_t)
    return fn


def count_percentiles(n: int, qs: tuple[float, ...], device: torch.device, dtype: torch.dtype):
    """Percentiles of rows of n values by kthvalue of each lower rank; each upper rank is the
    same value when more than lo + 1 values are <= it, else the smallest value above it (the
    same numbers as a sort for rows without NaN). Its constants are made here, once: a graph
    capture forbids host-to-device copies."""
    lo, hi, frac = linear_ranks(n, qs)
    need = torch.as_tensor(hi + 1, device=device)
    frac_t = torch.as_tensor(frac, device=device, dtype=dtype)

    def fn(x: torch.Tensor) -> torch.Tensor:
        a = torch.stack([x.kthvalue(int(r) + 1, dim=-1).values for r in lo], dim=-1)  # (R, k)
        above = x.unsqueeze(-2) > a.unsqueeze(-1)  # (R, k, n)
        at_most = n - above.sum(-1)
        nxt = torch.where(above, x.unsqueeze(-2), torch.full_like(x[..., :1, None], float("inf"))).amin(-1)
        return _lerp(torch.cat([a, torch.where(at_most >= need, a, nxt)], dim=-1), frac_t)
    return fn


def keyed_percentiles(rows: int, n: int, qs: tuple[float, ...], device: torch.device):
    """Percentiles of (rows, n) float32 rows by ONE 1-D sort of int64 keys: the row's number in
    the high 32 bits, the value's bits made order-preserving in the low 32. One long radix sort
    instead of a segmented one; the same values (NaN of either sign sorts as the largest or
    the smallest value here, where torch.sort puts every NaN last)."""
    lo, hi, frac = linear_ranks(n, qs)
    index = (torch.arange(rows)[:, None] * n + torch.as_tensor(np.concatenate([lo, hi]))).to(device)
    row_ids = (torch.arange(rows, dtype=torch.int64) << 32).to(device)[:, None]
    frac_t = torch.as_tensor(frac, device=device, dtype=torch.float32)

    def ordered(bits: torch.Tensor) -> torch.Tensor:  # its own inverse
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)

    def fn(x: torch.Tensor) -> torch.Tensor:
        keys = ordered(x.contiguous().view(torch.int32)).to(torch.int64) + (2**31) + row_ids
        picked = torch.sort(keys.flatten()).values.take(index)  # (rows, 2k)
        return _lerp(ordered(((picked & 0xFFFFFFFF) - 2**31).to(torch.int32)).view(torch.float32), frac_t)
    return fn


def padded_pair(layers: torch.Tensor, units: torch.Tensor, qs: tuple[float, ...]):
    """Both tables of percentiles by ONE sort: the units' short rows padded with +inf to the
    layers' length (the padding sorts after their values), then one gather of each row's ranks."""
    R, n = layers.shape
    m = units.shape[-1]
    lo_l, hi_l, frac_l = linear_ranks(n, qs)
    lo_u, hi_u, frac_u = linear_ranks(m, qs)
    index = torch.as_tensor(np.stack([np.concatenate([lo_l, hi_l])] * R + [np.concatenate([lo_u, hi_u])] * R))
    index = index.to(layers.device)
    frac = torch.as_tensor(np.stack([frac_l] * R + [frac_u] * R), device=layers.device, dtype=layers.dtype)
    buf = torch.full((2 * R, n), float("inf"), device=layers.device, dtype=layers.dtype)

    def fn(_x=None) -> torch.Tensor:
        buf[:R].copy_(layers)
        buf[R:, :m].copy_(units)
        return _lerp(buf.sort(dim=-1).values.gather(1, index), frac)
    return fn


def _timed(fn, device: torch.device, calls: int):
    """A callable that runs ``fn`` ``calls`` times: on a GPU one replay of a graph that holds them."""
    if device.type != "cuda":
        return lambda: [fn() for _ in range(calls)]
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph.replay


def _compare(loops: dict, same: dict, dev: torch.device, rounds: int, calls: int) -> dict:
    """Median us per call of each timed way, its speed-up on the first (from the same rounds), its check."""
    wall, _ = interleave(loops, chunk=1, rounds=rounds, warmup=1, sync=_sync_for(dev))
    us = {k: [t * 1e6 / calls for t in v] for k, v in wall.items()}
    base = next(iter(us.values()))
    return {k: {"us": statistics.median(v), "vs sort": statistics.median(b / t for b, t in zip(base, v)),
                "same values": same[k]} for k, v in us.items()}


def kernels(device: str, rounds: int, calls: int) -> dict:
    dev = torch.device(device)
    pre = _preacts(device=device)
    rows = pre.flatten(1).contiguous()  # (6, 6000)
    units = pre[:, :, 0].contiguous()  # (6, 60): one unit's column, the size of the tracked units' rows
    qs = PERCENTILES
    out: dict = {}
    for what, x in (("layers (6 x 6000)", rows), ("units (6 x 60)", units)):
        ways = {
            "sort + gather": lambda x: by_sort(x, qs),
            "kthvalue x6": selected_percentiles(x.shape[-1], qs, dev, x.dtype),
            "kthvalue x3 + count": count_percentiles(x.shape[-1], qs, dev, x.dtype),
            "int64 keys, 1-D sort": keyed_percentiles(*x.shape, qs, dev),
        }
        want = ways["sort + gather"](x)
        same = {k: bool(torch.equal(f(x), want)) for k, f in ways.items()}
        loops = {}
        for k, f in ways.items():
            try:
                loops[k] = _timed(lambda f=f: f(x), dev, calls)
            except Exception as exc:  # a way a graph cannot hold: say so, time the others
                print(f"  {what} {k}: not captured ({type(exc).__name__}: {str(exc)[:120]})")
        out[what] = _compare(loops, same, dev, rounds, calls)
    # both tables as a step computes them (two sorts) against one sort of both
    pair = padded_pair(rows, units, qs)
    same = {"two sorts": True,
            "one padded sort": torch.equal(pair(), torch.cat([by_sort(rows, qs), by_sort(units, qs)]))}
    loops = {"two sorts": _timed(lambda: (by_sort(rows, qs), by_sort(units, qs)), dev, calls),
             "one padded sort": _timed(pair, dev, calls)}
    out["layers and units"] = _compare(loops, same, dev, rounds, calls)
    return out


def by_sort(x: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    return probes_mod.sorted_percentiles(x.sort(dim=-1).values, qs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_probes", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=50, help="calls per timed graph")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.gpu_probes: --device cuda: no CUDA GPU here (use --device cpu to check the script)",
              file=sys.stderr)
        return 2
    with torch_threads(1):
        k = kernels(args.device, args.rounds, args.calls)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"percentiles p15/p50/p85 alone, {name}, median us per call of {args.rounds} rounds"
          f"{', each a graph of %d calls' % args.calls if args.device == 'cuda' else ''}:")
    for what, ways in k.items():
        for way, r in ways.items():
            print(f"  {what:18s} {way:22s} {r['us']:8.2f} us   {r['vs sort']:.2f}x vs sort   "
                  f"same values: {r['same values']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
