"""Every bad input gets one clear line naming the field, through the CLI and through a
shared link; nothing crashes and what was valid is kept."""

from __future__ import annotations

import pytest

from bnviz import cli, presets, share
from bnviz.errors import ConfigError, training_failure

# (case, --set pairs, a word the one-line message must contain)
BAD = [
    ("lr zero", ["lr=0"], "lr"),
    ("lr negative", ["lr=-0.1"], "lr"),
    ("lr nan", ["lr=nan"], "lr"),
    ("lr inf", ["lr=inf"], "lr"),
    ("lr not a number", ["lr=fast"], "lr"),
    ("batch zero", ["batch_size=0"], "batch_size"),
    ("batch negative", ["batch_size=-4"], "batch_size"),
    ("batch 1 with BN", ["batch_size=1"], "batch statistics need more than one value"),
    ("batch beyond limit", ["batch_size=5000"], "BNVIZ_MAX_BATCH"),
    ("depth zero", ["depth=0"], "depth"),
    ("depth beyond limit", ["depth=21"], "BNVIZ_MAX_DEPTH"),
    ("width zero", ["width=0"], "width"),
    ("width beyond limit", ["width=4096"], "BNVIZ_MAX_WIDTH"),
    ("steps zero", ["steps=0"], "steps"),
    ("steps beyond limit", ["steps=10000000"], "BNVIZ_MAX_STEPS"),
    ("unknown dataset", ["dataset=cifar10"], "dataset"),
    ("unknown activation", ["activation=swish"], "activation"),
    ("unknown normalization", ["norm=weight"], "norm"),
    ("unknown key", ["colour=red"], "colour"),
    ("wrong type int", ["depth=three"], "depth"),
    ("float for int", ["depth=2.5"], "depth"),
    ("unknown variant", ["nope.lr=0.1"], "nope"),
    ("no equals sign", ["lr"], "key=value"),
]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        rc = cli.main(list(args))
    except SystemExit as exc:  # argparse
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("case,pairs,word", BAD, ids=[b[0] for b in BAD])
def test_cli_answers_bad_input_with_exit_2_and_one_line(case, pairs, word, capsys, tmp_path):
    args = ["run", "--preset", "quick-look", "--out", str(tmp_path / "out")]
    for p in pairs:
        args += ["--set", p]
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2, (case, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "out" / "metrics.csv").exists()  # nothing half-written


@pytest.mark.parametrize("case,pairs,word", [b for b in BAD if "=" in b[1][0]], ids=[b[0] for b in BAD if "=" in b[1][0]])
def test_a_link_with_bad_input_opens_with_the_rest_and_names_what_it_skipped(case, pairs, word):
    key, _, value = pairs[0].partition("=")
    base = presets.get("quick-look").comparison()
    cmp, preset, warnings = share.from_query({"preset": "quick-look", key: value, "seed": "7"})
    assert preset == "quick-look"
    assert len(warnings) == 1 and word.split()[0] in warnings[0], warnings
    assert cmp == base.with_all(seed=7)  # the valid parameter applied, the bad one left at the preset's


def test_a_link_with_missing_extra_duplicated_and_garbage_parameters_still_opens():
    cmp, preset, warnings = share.from_query({"preset": "paper-fig1", "lr": ["0.1", "0.2"], "bogus": "1",
                                              "%%%": "???", "depth": ""})
    assert preset == "paper-fig1"
    assert cmp == presets.get("paper-fig1").comparison()
    text = " | ".join(warnings)
    for word in ("lr", "bogus", "%%%", "depth"):
        assert word in text


def test_an_unknown_preset_in_a_link_falls_back_to_the_default_and_says_so():
    cmp, preset, warnings = share.from_query({"preset": "imagenet"})
    assert preset == share.DEFAULT_PRESET and "imagenet" in warnings[0]


@pytest.mark.parametrize("text,word", [
    ('{"variants": {"a": {"lr": 0.1}', "not valid JSON"),
    ('{"variants": []}', "variants"),
    ('{"variants": {"a": {"lr": "x"}}}', "lr"),
    ('{"variants": {"a": {"depth": true}}}', "depth"),
    ("", "not valid JSON"),
    ("\x00\x01", "not valid JSON"),
])
def test_a_malformed_or_truncated_config_file_exits_2_with_one_line(text, word, capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(text, encoding="utf-8")
    rc, _, err = run_cli(capsys, "run", "--config", str(path), "--out", str(tmp_path / "out"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and word in err, err


def test_an_unreadable_config_path_exits_2(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", "--config", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o"))
    assert rc == 2 and "--config" in err and len(err.strip().splitlines()) == 1


def test_batch_larger_than_the_dataset_is_refused_with_its_size(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BNVIZ_MAX_BATCH", "100000")
    rc, _, err = run_cli(capsys, "run", "--preset", "quick-look", "--set", "dataset=spiral",
                         "--set", "batch_size=4001", "--out", str(tmp_path / "o"))
    assert rc == 2 and "batch_size" in err and "4,000" in err, err


def test_cuda_asked_for_without_a_gpu_falls_back_to_cpu_and_says_so(capsys, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the fallback cannot happen")
    rc, out, err = run_cli(capsys, "run", "--preset", "quick-look", "--set", "device=cuda", "--steps", "20",
                           "--set", "dataset=spiral", "--quiet", "--out", str(tmp_path / "o"))
    assert rc == 0
    assert "cuda was asked for" in err and "cpu" in err


def test_an_absurd_learning_rate_is_not_an_error_the_run_diverges_and_says_so(capsys, tmp_path):
    # ReLU: sigmoids would saturate and keep the loss finite, which is honest but not divergence.
    rc, out, err = run_cli(capsys, "run", "--preset", "quick-look", "--set", "plain.lr=1e6", "--steps", "60",
                           "--set", "activation=relu",
                           "--quiet", "--out", str(tmp_path / "o"))
    assert rc == 0, err
    assert "plain: diverged" in out and "bn: finished" in out
    assert (tmp_path / "o" / "metrics.csv").read_text().count(",diverged,") == 1


def test_a_run_that_raised_ends_with_one_line_typed_unless_written_for_the_user():
    assert training_failure(RuntimeError("shape mismatch\n  at layer 2")) == "training failed: RuntimeError: shape mismatch"
    assert training_failure(ConfigError("lr must be > 0; got -1"), "sweep") == "sweep failed: lr must be > 0; got -1"
    assert len(training_failure(MemoryError("x" * 1000))) == 300
