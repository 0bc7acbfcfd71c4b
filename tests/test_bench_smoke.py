"""The benchmark (python -m bench) runs end to end and reports every target.

Tiny sizes, so the numbers mean nothing and nothing is asserted about them: CI runs
`python -m bench --quick` for the figures; this only makes sure no row went missing or
crashed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import run

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("train_speed_1t", "train_vs_probed_naive_1t", "probe_overhead_1t",
        "train_speed_2t", "train_vs_probed_naive_2t", "probe_overhead_2t", "fig1_wall",
        "fig1_wall_10k_test", "fig1_wall_2proc", "page_ms", "page_kb", "memory", "gpu")


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
        assert r["status"] in ("PASS", "MISS", "NOISY", "TODO", "INFO"), (r["key"], r["status"], r["note"])
        assert r["measured"] and r["goal"]
        assert r["ratio"] is None or r["ratio"] > 0, r["key"]


def test_probe_kernel_bench_times_both_ways_of_finding_the_percentiles(capsys):
    from bench import probe_kernels

    threads = torch.get_num_threads()
    got = probe_kernels.measure(rounds=1, calls=1)
    assert torch.get_num_threads() == threads
    for name in ("percentiles by sort", "percentiles by selection", "moments",
                 "activation_stats, sorting", "activation_stats, selecting"):
        assert got[name] > 0, name
    assert got["percentiles: sort / selection"] > 0
    phases = probe_kernels.in_situ(rounds=1, steps=2)
    assert torch.get_num_threads() == threads
    assert phases["on"]["all"] > phases["on"]["activation stats"] > 0
    assert phases["off"]["all"] > 0 and phases["off"]["activation stats"] == 0  # probes off: never called


def test_gpu_probe_bench_times_every_way_to_the_percentiles_and_each_gives_the_sorts_values():
    from bench import gpu_probes

    got = gpu_probes.kernels("cpu", rounds=1, calls=1)  # on the CPU: checks the script, not the GPU's figures
    assert set(got) == {"layers (6 x 6000)", "units (6 x 60)", "layers and units"}
    for what, ways in got.items():
        assert len(ways) >= 2, what
        for way, r in ways.items():
            assert r["same values"] and r["us"] > 0, (what, way)


def test_rank_drift_ranks_last_steps_percentiles_among_this_steps_values():
    from bench import probe_kernels

    got = probe_kernels.rank_drift(steps=3)
    assert list(got) == ["p50", "p90", "p99", "max"]
    assert 0 <= got["p50"] <= got["p90"] <= got["p99"] <= got["max"] < 6000
    assert got["max"] > 0  # each step draws a new batch: the percentiles cannot keep their ranks


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_ab_bench_runs_a_commits_engine_beside_the_working_tree():
    import sys

    from bench import ab
    from bnviz.trainer import Trainer

    seen = {}
    real = ab._trainer

    def spy(pkg, probes, preset):
        seen[(pkg.__name__, probes)] = type(tr := real(pkg, probes, preset))
        seen["stacked", pkg.__name__] = (len(tr.variants), tr.batched)
        return tr

    ab._trainer = spy
    try:
        got = ab.measure("HEAD", rounds=1, steps=1, preset="placement")
    finally:
        ab._trainer = real
    assert seen["stacked", "bnviz"] == seen["stacked", "bnviz_base"] == (3, True)  # the preset's three, stacked
    assert seen[("bnviz", True)] is Trainer
    assert seen[("bnviz_base", True)] is not Trainer  # the commit's own engine, not the working tree's
    assert seen[("bnviz_base", True)].__module__ == "bnviz_base.trainer"
    assert not [m for m in sys.modules if m.startswith("bnviz_base")]  # unloaded again
    for key in ("base on", "base off", "new on", "new off"):
        assert got["cpu_us"][key] > 0 and got["wall_us"][key] > 0
    assert got["new vs base, probes on (speed-up)"] > 0


@pytest.mark.browser
def test_client_bench_times_both_ways_of_drawing_every_live_chart(capsys):
    from bench import client
    assert client.main(["--rounds", "1", "--steps", "200"]) == 0
    out = capsys.readouterr().out
    assert "bnviz" in out and "automargin everywhere" in out
    for spec in client.figures.FIGURES:
        assert out.count(f"{spec.key} ") == 2, spec.key


@pytest.mark.browser
def test_client_bench_against_a_commit_draws_that_commits_figures_beside_these(capsys):
    from bench import client
    assert client.main(["--rounds", "1", "--steps", "200", "--against", "HEAD"]) == 0
    out = capsys.readouterr().out
    assert "  HEAD " in out and "automargin" not in out
    for spec in client.figures.FIGURES:
        assert out.count(f"{spec.key} ") == 2, spec.key
    assert not [m for m in sys.modules if m.startswith("bnviz_base")]  # unloaded again


def test_the_probed_naive_baseline_records_every_layer_metric_of_the_engine():
    """bench.naive.InstrumentedLoop is the like-for-like baseline: per step, the train loss and
    every one of the engine's LAYER_METRICS for each hidden layer, and histograms every 10 steps."""
    from bench.naive import InstrumentedLoop
    from bnviz import data
    from bnviz.metrics import LAYER_METRICS

    ds = data.load("mnist-mini")
    loop = InstrumentedLoop(ds.x_train, ds.y_train, bn=True, lr=0.5)
    for _ in range(10):
        loop.step()
    assert len(loop.rows) == 10 and len(loop.hists) == 1
    row = loop.rows[-1]
    assert len(row) == 1 + 3 * len(LAYER_METRICS)
    for layer, (z, lin) in enumerate(zip(loop.seen, loop.linears)):
        got = dict(zip(LAYER_METRICS, row[1 + layer * len(LAYER_METRICS):]))
        flat = z.flatten()
        assert got["act_p50"] == pytest.approx(flat.median().item(), abs=1e-3)
        assert got["act_std"] == pytest.approx(flat.std(unbiased=False).item(), rel=1e-5)
        assert got["unit_p15"] <= got["unit_p50"] <= got["unit_p85"]
        assert got["weight_norm"] == pytest.approx(lin.weight.norm().item(), rel=1e-6)
        assert got["update_ratio"] == pytest.approx(0.5 * got["grad_norm"] / got["weight_norm"], rel=1e-5)
    assert loop.hists[0].sum(dim=1).tolist() == [60 * 100] * 3  # every value of each layer, in some bin


def test_first_step_bench_times_workers_on_synthetic_full_size_mnist():
    """A fresh forkserver (a subprocess) that trusts the synthetic files, preloads them, and
    whose worker trains on them: no fallback to mnist-mini (the bench exits 1 on a notice)."""
    proc = subprocess.run([sys.executable, "-m", "bench.first_step", "--synthetic-mnist", "--workers", "1",
                           "--wait", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "first step after Start (s): " in proc.stdout and "worker 1: Rss" in proc.stdout
    assert "forkserver: Rss" in proc.stdout and "Pss of the forkserver and the workers" in proc.stdout


def test_startup_bench_times_each_start_of_both_trees(capsys, monkeypatch):
    from bench import startup

    seen = []
    real = startup.measure_once

    def spy(tree, what, out):
        seen.append((tree.name, what))
        return real(tree, what, out)

    monkeypatch.setattr(startup, "measure_once", spy)
    assert startup.main(["--rounds", "1", "--against", "HEAD"]) == 0
    out = capsys.readouterr().out
    assert {w for _, w in seen} == set(startup.MEASURES) and {t for t, _ in seen} == {ROOT.name, "base"}
    for what in startup.MEASURES:
        for tree in ("new", "base"):
            assert f"  {what:12s} {tree:5s} median" in out


def test_csv_export_bench_times_both_writers_and_checks_they_agree(capsys):
    from bench import csv_export

    assert csv_export.main(["--steps", "3000", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "to_csv" in out and "row by row" in out and "same text: True" in out


@pytest.mark.parametrize("tool", ["ab", "client", "startup"])
def test_a_commit_git_cannot_read_gets_one_line_naming_the_option(tool, capsys):
    import importlib
    assert importlib.import_module(f"bench.{tool}").main(["--against", "no-such-rev"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bench.{tool}: --against: git cannot read 'no-such-rev'"), err


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux's /proc")
def test_proc_reads_a_processs_memory_in_kib_and_nothing_for_one_that_is_gone():
    from bench.proc import kib
    rss = kib("self", "status", "VmRSS")["VmRSS"]
    rollup = kib(os.getpid(), "smaps_rollup", "Rss", "Pss", "NoSuchField")
    assert set(rollup) == {"Rss", "Pss"} and 0 < rollup["Pss"] <= rollup["Rss"]
    assert 0.5 < rollup["Rss"] / rss < 2  # the same process, read twice: kB, not pages or bytes
    assert kib(2**22 + 1, "status", "VmRSS") == {}  # above Linux's largest pid


def test_ghost_bn_bench_times_bn_and_both_ghost_bns_and_checks_they_agree(capsys):
    from bench import ghost_bn
    args = ["--batch", "12", "--features", "3", "--ghosts", "4", "5", "--calls", "1", "--rounds", "1"]
    assert ghost_bn.main(args) == 0
    out = capsys.readouterr().out
    assert "ghost size 4 (3 ghost batches)" in out and "ghost size 5 (2 ghost batches)" in out
    assert out.count("the two Ghost BNs agree: True") == 2
