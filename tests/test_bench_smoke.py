"""The benchmark (python -m bench) runs end to end and reports every target.

Tiny sizes, so the numbers mean nothing and nothing is asserted about them: CI runs
`python -m bench --quick` for the figures; this only makes sure no row went missing or
crashed.
"""

from __future__ import annotations

import json

import torch

from bench import run

ROWS = ("train_speed_1t", "probe_overhead_1t", "train_speed_2t", "probe_overhead_2t", "fig1_wall",
        "fig1_wall_10k_test", "page_ms", "page_kb", "memory", "gpu")


def test_tiny_bench_produces_every_row(capsys, tmp_path):
    threads = torch.get_num_threads()
    out_json = tmp_path / "bench.json"
    assert run.main(["--tiny", "--json", str(out_json)]) == 0  # non-zero only if a target crashed
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # the bench restores what it changes
    for title in ("1. train speed", "2. probe overhead", "3. paper-fig1", "4. live page", "5. RunLog", "6. GPU"):
        assert title in out, title
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["key"] for r in rows] == list(ROWS)
    for r in rows:
        assert r["status"] in ("PASS", "MISS", "NOISY", "TODO"), (r["key"], r["status"], r["note"])
        assert r["measured"] and r["goal"]
        assert r["ratio"] is None or r["ratio"] > 0, r["key"]
