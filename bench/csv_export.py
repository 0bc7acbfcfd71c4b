"""The tidy CSV of a run, as a page builds it for its download button: ``python -m bench.csv_export``.

A page builds the CSV (and the HTML report) in its script run whenever its run stops, holding
the GIL, so every other page of the server waits that long. Times ``runlog.to_csv`` against
the straightforward csv.writer fed one tidy row at a time, interleaved, on a RunLog of
``--steps`` synthetic steps of 2 variants x 3 layers (bench/synth.py, as the page row of
``python -m bench``), and checks both give the same text.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import time

import numpy as np

from bench import synth
from bnviz.runlog import CSV_HEADER, tidy_rows, to_csv


def row_by_row(snap) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for variant, step, layer, metric, value in tidy_rows(snap):
        writer.writerow((variant, step, layer, metric, str(np.float32(value))))
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.csv_export", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100_000, help="recorded steps (default 100,000)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    snap = synth.fill(args.steps).snapshot()
    times: dict[str, list[float]] = {"to_csv": [], "row by row": []}
    texts = {}
    for _ in range(args.rounds):
        for name, fn in (("to_csv", to_csv), ("row by row", row_by_row)):
            t = time.perf_counter()
            texts[name] = fn(snap)
            times[name].append(time.perf_counter() - t)
    same = texts["to_csv"] == texts["row by row"]
    rows = texts["to_csv"].count("\n") - 1
    print(f"tidy CSV of {args.steps:,} recorded steps: {rows:,} rows, {len(texts['to_csv']) / 1e6:.1f} MB, "
          f"{args.rounds} rounds, interleaved")
    for name, v in times.items():
        print(f"  {name:10s} median {statistics.median(v) * 1e3:7.1f} ms")
    ratio = statistics.median(b / a for a, b in zip(times["to_csv"], times["row by row"]))
    print(f"  to_csv {ratio:.2f}x faster (median of per-round ratios); same text: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
