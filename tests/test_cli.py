"""Tests for the command line: ``python -m bnviz presets`` and ``python -m bnviz run``."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bnviz import cli, presets
from bnviz.config import Comparison
from bnviz.metrics import EVAL_METRICS, LAYER_METRICS, STEP_METRICS

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("train_loss", "test_loss", "test_acc", "act_p15", "act_p50", "act_p85", "act_mean", "act_std",
            "unit_p15", "unit_p50", "unit_p85", "grad_norm", "weight_norm", "update_ratio")
FIG1_SHORT = ["--preset", "paper-fig1", "--set", "dataset=mnist-mini", "--steps", "200", "--set", "eval_every=50"]


def bnviz(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "bnviz", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def main(capsys, *args: str) -> tuple[int, str, str]:
    """cli.main in-process: (exit code, stdout, stderr); argparse's exits count as exit codes."""
    try:
        rc = cli.main(list(args))
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("bnviz: ")
    for w in words:
        assert w in lines[0], (w, lines[0])


def read_metrics(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


# --------------------------------------------------------------------------- presets

def test_presets_command_lists_every_preset():
    proc = bnviz("presets")
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert listed == list(presets.PRESETS)
    for p in presets.PRESETS.values():
        assert p.title in proc.stdout


BEFORE_TORCH = """
import sys
from bnviz import cli, parallel, remote
assert cli.main(["presets"]) == 0
bad = cli.main(["run", "--preset", "paper-fig1", "--set", "lr=fast", "--out", sys.argv[1]])
print(bad, "torch" in sys.modules)
"""


def test_presets_and_bad_input_answer_before_torch_loads(tmp_path):
    """The CLI reads its presets, checks its input and can start the workers' forkserver
    (parallel.start_early) before anything imports torch (~1.3 s)."""
    out = subprocess.run([sys.executable, "-c", BEFORE_TORCH, str(tmp_path / "out")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "2 False" and "lr" in out.stderr


def test_presets_in_process(capsys):
    rc, out, _ = main(capsys, "presets")
    assert rc == 0 and all(name in out for name in presets.PRESETS)


# --------------------------------------------------------------------------- bad input

@pytest.fixture
def bad_json(tmp_path) -> Path:
    path = tmp_path / "broken.json"
    path.write_text('{"variants": {"plain": {"lr": 0.1,}}', encoding="utf-8")
    return path


def bad_inputs(tmp_path: Path, bad_json: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    out = str(tmp_path / "out")
    return {
        "unknown preset": (["run", "--preset", "nope", "--out", out], ("nope", "paper-fig1")),
        "unknown key": (["run", "--preset", "quick-look", "--set", "speed=3", "--out", out], ("speed",)),
        "bad value": (["run", "--preset", "quick-look", "--set", "lr=-1", "--out", out], ("lr", "-1", "> 0")),
        "not a number": (["run", "--preset", "quick-look", "--set", "steps=many", "--out", out], ("steps", "many")),
        "unknown variant": (["run", "--preset", "quick-look", "--set", "ln.norm=layer", "--out", out], ("ln",)),
        "no key=value": (["run", "--preset", "quick-look", "--set", "lr", "--out", out], ("key=value",)),
        "unreadable config": (["run", "--config", str(tmp_path / "missing.json"), "--out", out],
                              ("--config", "missing.json")),
        "config is a directory": (["run", "--config", str(tmp_path), "--out", out], ("--config",)),
        "malformed JSON": (["run", "--config", str(bad_json), "--out", out], ("JSON",)),
        "batch 1 with BN": (["run", "--preset", "paper-fig1", "--set", "batch_size=1", "--out", out],
                            ("bn.batch_size", "norm=batch", "1")),
        "one variant's bad value": (["run", "--preset", "paper-fig1", "--set", "bn.lr=fast", "--out", out],
                                    ("bnviz: bn.lr: expected a number", "'fast'")),
        "--threshold without a sweep": (["run", "--preset", "high-lr", "--no-sweep", "--threshold", "0.5", "--out", out],
                                        ("--threshold", "only for a sweep", "high-lr")),
        "no source": (["run", "--out", out], ("--preset", "--config")),
        "preset and config": (["run", "--preset", "quick-look", "--config", str(bad_json), "--out", out], ()),
        "no command": ([], ()),
        "bad --steps": (["run", "--preset", "quick-look", "--steps", "ten", "--out", out], ("--steps",)),
        "no --jobs": (["run", "--preset", "quick-look", "--jobs", "0", "--out", out], ("--jobs", "1 to 8", "auto")),
        "--jobs not a number": (["run", "--preset", "quick-look", "--jobs", "all", "--out", out], ("--jobs", "'all'")),
    }


CASES = ["unknown preset", "unknown key", "bad value", "not a number", "unknown variant", "no key=value",
         "unreadable config", "config is a directory", "malformed JSON", "batch 1 with BN", "one variant's bad value",
         "--threshold without a sweep", "no source",
         "preset and config", "no command", "bad --steps", "no --jobs", "--jobs not a number"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_in_process(case, capsys, tmp_path, bad_json):
    args, words = bad_inputs(tmp_path, bad_json)[case]
    rc, out, err = main(capsys, *args)
    assert_one_line_error(rc, err, *words)
    assert not (tmp_path / "out" / "metrics.csv").exists()


# The same through a real interpreter (two cases: each start imports torch, about 2 s).
@pytest.mark.parametrize("case", ["unknown key", "malformed JSON"])
def test_bad_input_exits_2_with_one_line_and_no_traceback(case, tmp_path, bad_json):
    args, words = bad_inputs(tmp_path, bad_json)[case]
    proc = bnviz(*args)
    assert_one_line_error(proc.returncode, proc.stderr, *words)
    assert proc.stdout == ""


def test_int_field_with_a_5000_digit_value_exits_2(capsys, tmp_path):
    rc, _, err = main(capsys, "run", "--preset", "quick-look", "--set", "steps=" + "1" * 5000,
                      "--out", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "steps")


# --------------------------------------------------------------------------- a real run

@pytest.fixture(scope="module")
def fig1_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("fig1")
    proc = bnviz("run", *FIG1_SHORT, "--out", str(out), "--quiet")
    return proc, out


def test_short_paper_fig1_run_exits_0_and_writes_its_three_files(fig1_run):
    proc, out = fig1_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("config.json", "metrics.csv", "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert str(out / "metrics.csv") in proc.stdout
    assert "plain: finished at step 200" in proc.stdout and "bn: finished at step 200" in proc.stdout


def test_short_paper_fig1_config_json_is_the_resolved_comparison(fig1_run):
    _, out = fig1_run
    cmp = Comparison.from_json((out / "config.json").read_text(encoding="utf-8"))
    expected = presets.resolve(["dataset=mnist-mini", "eval_every=50", "steps=200"], default="paper-fig1")
    assert cmp == expected
    assert json.loads((out / "config.json").read_text())["variants"]["bn"]["norm"] == "batch"


def test_short_paper_fig1_metrics_csv_has_every_required_metric_per_variant_and_layer(fig1_run):
    _, out = fig1_run
    rows = read_metrics(out / "metrics.csv")
    assert list(rows[0]) == ["variant", "step", "layer", "metric", "value"]
    assert set(REQUIRED) == set(STEP_METRICS) | set(EVAL_METRICS) | set(LAYER_METRICS)
    present = {(r["variant"], r["layer"], r["metric"]) for r in rows}
    for variant in ("plain", "bn"):
        for metric in ("train_loss", "test_loss", "test_acc"):
            assert (variant, "", metric) in present
        for layer in ("hidden1", "hidden2", "hidden3"):
            for metric in LAYER_METRICS:
                assert (variant, layer, metric) in present, (variant, layer, metric)
    steps = {int(r["step"]) for r in rows if r["variant"] == "bn" and r["metric"] == "train_loss"}
    assert steps == set(range(1, 201))
    evals = sorted(int(r["step"]) for r in rows if r["variant"] == "plain" and r["metric"] == "test_acc")
    assert evals == [0, 50, 100, 150, 200]


def test_short_paper_fig1_report_is_self_contained_html(fig1_run):
    _, out = fig1_run
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.lstrip().startswith("<!doctype html>")
    assert "bnviz: paper-fig1" in html
    assert ("50,000 steps of batch 60, test accuracy every 500 steps. This run differs from the note: dataset "
            "mnist-mini instead of mnist; 200 instead of 50,000 steps; test accuracy every 50 instead of 500 steps.</p>"
            in html)  # the note, then what the run changed from it
    assert re.search(r"<script[^>]*\bsrc\s*=", html, re.IGNORECASE) is None


def test_rerun_from_config_json_gives_the_same_metrics(fig1_run, tmp_path, capsys):
    _, first = fig1_run
    again = tmp_path / "again"
    rc, out, err = main(capsys, "run", "--config", str(first / "config.json"), "--out", str(again), "--quiet")
    assert rc == 0, err
    assert (again / "config.json").read_text() == (first / "config.json").read_text()
    assert (again / "metrics.csv").read_text() == (first / "metrics.csv").read_text()
    assert (again / "report.html").is_file()


def test_jobs_2_trains_the_variants_in_two_processes_and_writes_the_same_metrics(fig1_run, tmp_path):
    # bnviz() runs at one torch thread, as each of the two processes does: the same numbers
    _, first = fig1_run
    proc = bnviz("run", *FIG1_SHORT, "--jobs", "2", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "(2 processes)" in proc.stderr  # the progress bar says so
    assert (tmp_path / "o" / "metrics.csv").read_text() == (first / "metrics.csv").read_text()
    assert "plain: finished at step 200" in proc.stdout and "bn: finished at step 200" in proc.stdout


def test_config_rerun_accepts_overrides(fig1_run, tmp_path, capsys):
    _, first = fig1_run
    rc, out, err = main(capsys, "run", "--config", str(first / "config.json"), "--steps", "20",
                        "--set", "bn.lr=0.1", "--seed", "4", "--out", str(tmp_path / "o"), "--quiet")
    assert rc == 0, err
    cmp = Comparison.from_json((tmp_path / "o" / "config.json").read_text())
    assert {c.steps for c in cmp.variants.values()} == {20}
    assert {c.seed for c in cmp.variants.values()} == {4}
    assert cmp.variants["bn"].lr == 0.1 and cmp.variants["plain"].lr == 0.5
    assert "plain: finished at step 20" in out


def test_run_reports_a_diverged_variant_and_still_exits_0(capsys, tmp_path):
    rc, out, err = main(capsys, "run", "--preset", "high-lr", "--steps", "40", "--set", "plain.lr=1e6",
                        "--set", "hist_every=1", "--set", "width=16", "--out", str(tmp_path / "o"), "--quiet")
    assert rc == 0, err
    rows = read_metrics(tmp_path / "o" / "metrics.csv")
    at = next(int(r["step"]) for r in rows if r["metric"] == "diverged")
    plain = next(line for line in out.splitlines() if line.startswith("plain:"))
    assert plain.startswith(f"plain: diverged at step {at}, ") and plain.count("step") == 1, plain  # one step named
    assert "bn: finished at step 40" in out
    rows = read_metrics(tmp_path / "o" / "metrics.csv")
    assert [r["variant"] for r in rows if r["metric"] == "diverged"] == ["plain"]


def test_unwritable_out_dir_exits_2(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = main(capsys, "run", "--preset", "quick-look", "--steps", "5", "--out", str(blocker / "sub"))
    assert_one_line_error(rc, err, "--out")


def test_a_preset_that_names_the_papers_figure_puts_it_in_the_report(capsys, tmp_path):
    rc, out, err = main(capsys, "run", "--preset", "quick-look", "--steps", "30", "--set", "eval_every=10", "--quiet",
                        "--out", str(tmp_path / "o"))
    assert rc == 0, err
    html = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert "Figure 1, as measured by bnviz" in html


def test_a_preset_whose_variants_are_replaced_still_writes_its_report(capsys, tmp_path):
    # quick-look's Figure 1 needs no variant called plain or bn: here it has none without
    # normalization, and says so, where the report once ended in a KeyError traceback.
    rc, out, err = main(capsys, "run", "--preset", "quick-look", "--steps", "30", "--set", "eval_every=10", "--quiet",
                        "--set", "variants=bn,ghost", "--set", "bn.norm=batch", "--set", "ghost.norm=ghost_batch",
                        "--out", str(tmp_path / "o"))
    assert rc == 0, err
    html = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert "Figure 1, as measured by bnviz" in html and "this run has no variant" in html
    rows = (tmp_path / "o" / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert any(r.startswith("ghost,30,") for r in rows)
