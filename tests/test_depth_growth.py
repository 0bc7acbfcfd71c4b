"""Tests for the depth-growth preset (Bjorck et al. 2018): bnviz.depth, its figure, claims and CLI run.

The moments and gradients are checked against a hand computation on tiny nets; the
paper's claims are checked at initialization on the preset's own setup (cheap: no
training); the figure and the CLI run use a handful of steps.
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from torch import nn

from bnviz import cli, presets
from bnviz.claims import depth_growth_table
from bnviz.config import Comparison, RunConfig
from bnviz.depth import (
    at_init,
    first_batch,
    gradient_similarity,
    majority_share,
    profile,
    snapshot_profiles,
)
from bnviz.errors import ConfigError
from bnviz.figures import depth_growth
from bnviz.models import Block, Net, SeededDropout, build_model
from bnviz.runlog import from_csv, to_csv
from bnviz.trainer import Trainer

PRESET = presets.get("depth-growth")


def tiny_relu_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    blocks = [Block(nn.Linear(3, 4), None, "before", nn.ReLU(), SeededDropout(0.0, None)),
              Block(nn.Linear(4, 5), None, "before", nn.ReLU(), SeededDropout(0.0, None))]
    return Net(blocks, nn.Linear(5, 3), flatten_input=True).double().train()


@pytest.fixture(scope="module")
def preset_profiles():
    return {name: at_init(cfg) for name, cfg in PRESET.comparison().variants.items()}


# -- the measurement --------------------------------------------------------------------------

def test_moments_and_output_gradient_match_a_hand_computation_on_a_tiny_net():
    net = tiny_relu_net()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    p = profile(net, x, y)

    w = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in (net.layers["hidden1"].linear,
                                                                       net.layers["hidden2"].linear,
                                                                       net.layers["output"])]
    h1 = np.maximum(x.numpy() @ w[0][0].T + w[0][1], 0)
    h2 = np.maximum(h1 @ w[1][0].T + w[1][1], 0)
    z = h2 @ w[2][0].T + w[2][1]
    for i, h in enumerate((h1, h2)):
        unit_mean = h.sum(axis=0) / len(h)
        unit_var = ((h - unit_mean) ** 2).sum(axis=0) / len(h)  # population variance
        assert p.mean[i] == pytest.approx(np.abs(unit_mean).mean(), rel=1e-12)
        assert p.var[i] == pytest.approx(unit_var.mean(), rel=1e-12)
    softmax = np.exp(z - z.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    expected = (softmax - np.eye(3)[y.numpy()]).T  # (classes, images): d loss_i / d z_i
    np.testing.assert_allclose(p.grad, expected, rtol=1e-10, atol=1e-12)
    assert p.layers == ["hidden1", "hidden2"]
    np.testing.assert_array_equal(p.predicted, z.argmax(1))
    np.testing.assert_array_equal(p.labels, y.numpy())


def test_cnn_moments_are_per_channel_over_images_and_positions():
    cfg = RunConfig(model="cnn", depth=2, width=4, activation="relu", init="kaiming", init_scale=1.0, norm="batch")
    net = build_model(cfg, (1, 28, 28), 10).train()
    x, y = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    p = profile(net, x, y)
    ref, h = copy.deepcopy(net), x
    with torch.no_grad():
        for i, block in enumerate(ref.hidden):
            h = block(h)  # (N, C, H, W)
            assert p.var[i] == pytest.approx(h.var(dim=(0, 2, 3), unbiased=False).mean().item(), rel=1e-5)
            assert p.mean[i] == pytest.approx(h.mean(dim=(0, 2, 3)).abs().mean().item(), rel=1e-5)


def test_profile_leaves_the_model_as_it_found_it():
    cfg = RunConfig(depth=3, width=8, activation="relu", norm="batch", init="kaiming", init_scale=1.0)
    net = build_model(cfg, (1, 28, 28), 10).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    profile(net, x, y)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running statistics and num_batches_tracked included
    assert net.training and all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("x, y, words", [
    (torch.randn(4, 784), torch.tensor([0, 1, 2]), ("batch", "(4,)")),
    (torch.randn(1, 784), torch.tensor([0]), ("batch", "at least 2")),
    (torch.randn(3, 784), torch.tensor([0, 1, 10]), ("labels", "0..9")),
    ([[0.0]], torch.tensor([0]), ("tensors",)),
])
def test_bad_batches_raise_one_line_config_errors(x, y, words):
    net = build_model(RunConfig(depth=2, width=8), (1, 28, 28), 10)
    with pytest.raises(ConfigError) as exc:
        profile(net, x, y)
    msg = str(exc.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_first_batch_is_the_trainers_first_training_batch():
    cfg = PRESET.comparison().variants["plain"].replace(steps=1, eval_every=1)
    trainer = Trainer(Comparison({"plain": cfg}), batched=False)
    seen = []
    model = trainer.variants[0].model
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()) if m.training else None)
    trainer.run()  # evaluations (eval mode) before and after the step are not recorded
    x, _ = first_batch(cfg)
    assert len(seen) == 1 and torch.equal(seen[0].flatten(1), x.flatten(1))


# -- the numbers ------------------------------------------------------------------------------

def test_gradient_similarity_closed_forms():
    same = np.tile(np.array([[0.5], [-0.5], [0.0]]), (1, 4))
    assert gradient_similarity(same) == pytest.approx(1.0)
    # one class (0) predicted with certainty: columns e_0 - e_y; labels 1 and 2 -> cosine 1/2
    e = np.eye(3)
    cols = np.stack([e[0] - e[1], e[0] - e[2], e[0] - e[1]], axis=1)
    assert gradient_similarity(cols) == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    # a zero column (certain and right) has no direction: left out
    assert gradient_similarity(np.concatenate([cols, np.zeros((3, 1))], axis=1)) == pytest.approx(2 / 3)
    assert math.isnan(gradient_similarity(np.zeros((3, 5))))
    with pytest.raises(ConfigError):
        gradient_similarity(np.zeros(3))


def test_majority_share():
    assert majority_share(np.array([3, 3, 3, 1])) == 0.75
    assert majority_share(np.arange(10)) == 0.1


# -- the paper's claims at initialization, on the preset's setup ------------------------------

def test_without_bn_variance_and_mean_grow_exponentially_with_depth_with_bn_they_stay_bounded(preset_profiles):
    plain, bn = preset_profiles["plain"], preset_profiles["bn"]
    assert len(plain.var) == len(bn.var) == 20
    assert plain.var[-1] / plain.var[0] > 100 and plain.growth > 1.2  # geometric growth per layer
    assert plain.var[-1] > plain.var[9] > plain.var[0] and plain.mean[-1] > 10 * plain.mean[0]
    assert np.all((bn.var > 0.2) & (bn.var < 0.5)) and abs(bn.growth - 1) < 0.02
    assert np.all((bn.mean > 0.2) & (bn.mean < 0.6))


def test_output_gradient_similarity_is_high_without_bn_and_near_zero_with_bn(preset_profiles):
    plain, bn = preset_profiles["plain"], preset_profiles["bn"]
    assert plain.grad.shape == bn.grad.shape == (10, 60)  # classes x images of the first batch
    assert plain.similarity > 0.3 and abs(bn.similarity) < 0.1
    assert plain.majority > 0.9 and bn.majority < 0.5  # the plain net predicts one class whatever the input


# -- figure, claims table, CLI ---------------------------------------------------------------

@pytest.fixture(scope="module")
def snap():
    """A snapshot before training: it holds each variant's config, which is all the figure needs."""
    trainer = Trainer(PRESET.comparison())
    s = trainer.log.snapshot()
    trainer.close()
    return s


def test_figure_draws_mean_and_variance_by_depth_and_one_gradient_heatmap_per_variant(snap, preset_profiles):
    fig = depth_growth(snap)
    lines = [t for t in fig.data if isinstance(t, go.Scatter)]
    maps = [t for t in fig.data if isinstance(t, go.Heatmap)]
    assert [t.name for t in lines] == ["plain", "plain", "bn", "bn"]
    assert len(maps) == 2
    for t, name in zip(maps, ("plain", "bn")):
        np.testing.assert_allclose(np.asarray(t.z), preset_profiles[name].grad, rtol=1e-6, atol=1e-7)
        assert (t.zmin, t.zmax) == (-1, 1)
    np.testing.assert_allclose(np.asarray(lines[1].y), preset_profiles["plain"].var, rtol=1e-12)
    assert list(lines[0].x) == list(range(1, 21))
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"
    texts = [a.text for a in fig.layout.annotations]
    assert f"plain (similarity {preset_profiles['plain'].similarity:.2f})" in texts
    assert "Bjorck" in fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis3.title.text == "class"


def test_figure_of_a_snapshot_without_configs_is_empty_not_default_settings(snap):
    csv_snap = from_csv(to_csv(snap))  # metrics.csv keeps no configs
    assert snapshot_profiles(csv_snap) == {}
    fig = depth_growth(csv_snap)
    assert not fig.data and any("no configuration" in a.text for a in fig.layout.annotations)


def test_claims_table_gives_the_numbers_a_row_per_measure_a_column_per_variant(snap):
    rows = {r["measure"]: r for r in depth_growth_table(snap)}
    assert all(list(r) == ["measure", "plain", "bn"] for r in rows.values())
    similarity, growth = rows["output-gradient similarity"], rows["variance growth per layer"]
    assert float(similarity["plain"]) > float(similarity["bn"])
    assert float(growth["plain"]) > 1.2
    profiles = snapshot_profiles(snap)
    assert growth == {"measure": "variance growth per layer", **{n: f"{p.growth:.3f}" for n, p in profiles.items()}}


def test_cli_run_of_the_preset_writes_a_report_with_the_depth_figure_and_its_numbers(capsys, tmp_path):
    rc = cli.main(["run", "--preset", "depth-growth", "--steps", "5", "--quiet", "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    html = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert "Bjorck et al. 2018, at initialization" in html
    # the numbers EXPERIMENTS.md quotes, under the figure: a row per measure, a column per variant
    table = re.search(r"<table><thead><tr><th>measure</th><th>plain</th><th>bn</th></tr></thead>(.*?)</table>", html)
    assert table and "<td>variance growth per layer</td>" in table.group(1)
    assert html.index("Bjorck et al. 2018, at initialization") < table.start()
    assert "bn: finished at step 5" in out
