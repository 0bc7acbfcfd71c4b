"""Tests for bnviz.models: layer names, BN behaviour, shared initial weights, bias rules, the CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnviz import data
from bnviz.config import RunConfig
from bnviz.models import OUTPUT, Block, build_model, hidden_names, weight_of
from bnviz.norms import BatchRenorm, GhostBatchNorm, NoisyBatchNorm

IMAGE = (1, 28, 28)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return data.load("mnist-mini").x_train[:64]


def capture_preacts(net) -> tuple[list[torch.Tensor], list]:
    seen: list[torch.Tensor] = []
    handles = [b.preact.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
               for b in net.hidden]
    return seen, handles


def test_layer_names_are_hidden1_to_n_then_output():
    net = build_model(RunConfig(depth=4, width=8), IMAGE, 10)
    assert list(net.layers) == ["hidden1", "hidden2", "hidden3", "hidden4", OUTPUT]
    assert hidden_names(4) == ["hidden1", "hidden2", "hidden3", "hidden4"]
    assert len(net.hidden) == 4 and all(isinstance(b, Block) for b in net.hidden)


def test_mlp_forward_gives_one_logit_per_class(digits):
    net = build_model(RunConfig(depth=2, width=16), IMAGE, 10)
    assert net(digits).shape == (len(digits), 10)


def test_mlp_on_synthetic_two_feature_input():
    ds = data.load("spiral")
    net = build_model(RunConfig(dataset="spiral", depth=2, width=8), ds.input_shape, ds.n_classes)
    assert net(ds.x_train[:5]).shape == (5, 3)


@pytest.mark.parametrize("model, width", [("mlp", 32), ("cnn", 6)])
def test_bn_before_nonlinearity_gives_zero_mean_unit_std_per_feature_in_train_mode(model, width, digits):
    cfg = RunConfig(model=model, depth=3, width=width, norm="batch", placement="before", activation="sigmoid",
                    init="normal", init_scale=0.1)
    net = build_model(cfg, IMAGE, 10)
    net.train()
    for b in net.hidden:
        assert torch.equal(b.norm.weight, torch.ones(width))  # gamma = 1
        assert torch.equal(b.norm.bias, torch.zeros(width))  # beta = 0
    seen, handles = capture_preacts(net)
    net(digits)
    for h in handles:
        h.remove()
    assert len(seen) == 3
    for z in seen:
        dims = (0,) if model == "mlp" else (0, 2, 3)  # a CNN feature is a channel over N*H*W
        z = z.double()
        torch.testing.assert_close(z.mean(dims), torch.zeros(width, dtype=torch.float64), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.std(dims, unbiased=False), torch.ones(width, dtype=torch.float64),
                                   atol=2e-3, rtol=0)


def test_without_bn_preactivations_are_not_normalized(digits):
    """The counterpart of the BN test: the same hook on the plain net sees unnormalized values."""
    net = build_model(RunConfig(depth=3, width=32, norm="none", init_scale=0.1), IMAGE, 10)
    seen, handles = capture_preacts(net)
    net(digits)
    for h in handles:
        h.remove()
    assert (seen[0].std(0, unbiased=False) - 1).abs().max() > 0.05


def test_placement_after_normalizes_activation_output_not_preact(digits):
    cfg = RunConfig(depth=2, width=32, norm="batch", placement="after", activation="sigmoid")
    net = build_model(cfg, IMAGE, 10)
    outs: list[torch.Tensor] = []
    net.hidden[0].norm.register_forward_hook(lambda _m, _i, o: outs.append(o.detach()))
    seen, _ = capture_preacts(net)
    net(digits)
    assert (seen[0] == net.hidden[0].linear(digits.flatten(1))).all()  # preact = raw linear output
    torch.testing.assert_close(outs[0].mean(0), torch.zeros(32), atol=1e-5, rtol=0)


def _hidden_and_output_weights(net) -> list[torch.Tensor]:
    return [b.linear.weight for b in net.hidden] + [weight_of(net.layers[OUTPUT])]


@pytest.mark.parametrize("init", ["normal", "xavier", "kaiming", "default"])
def test_plain_and_bn_variants_start_from_identical_weights(init):
    base = RunConfig(depth=3, width=20, init=init, init_scale=0.5, seed=3)
    plain = build_model(base, IMAGE, 10)
    bn = build_model(base.replace(norm="batch", lr=0.01, activation="relu", optimizer="adam"), IMAGE, 10)
    pw, bw = _hidden_and_output_weights(plain), _hidden_and_output_weights(bn)
    assert len(pw) == len(bw) == 4
    for a, b in zip(pw, bw):
        assert torch.equal(a, b)


def test_deeper_variant_shares_the_weights_of_the_first_layers():
    shallow = build_model(RunConfig(depth=3, width=20, seed=5), IMAGE, 10)
    deep = build_model(RunConfig(depth=5, width=20, seed=5, norm="layer"), IMAGE, 10)
    for a, b in zip(shallow.hidden, deep.hidden[:3]):
        assert torch.equal(a.linear.weight, b.linear.weight)


def test_initial_weights_depend_on_the_seed():
    a = build_model(RunConfig(depth=2, width=20, seed=1), IMAGE, 10)
    b = build_model(RunConfig(depth=2, width=20, seed=2), IMAGE, 10)
    assert not torch.equal(a.hidden[0].linear.weight, b.hidden[0].linear.weight)


def test_layers_of_one_model_get_different_weights():
    net = build_model(RunConfig(depth=3, width=20), IMAGE, 10)
    assert not torch.equal(net.hidden[1].linear.weight, net.hidden[2].linear.weight)


def test_normal_init_has_the_configured_std():
    net = build_model(RunConfig(depth=1, width=200, init="normal", init_scale=0.05), IMAGE, 10)
    w = net.hidden[0].linear.weight
    assert abs(w.std().item() - 0.05) < 0.002 and abs(w.mean().item()) < 0.002


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("norm", ["batch", "layer", "group", "batch_renorm", "noisy_batch", "ghost_batch"])
def test_bias_dropped_before_norm_and_kept_after(model, norm):
    before = build_model(RunConfig(model=model, depth=2, width=8, norm=norm, placement="before"), IMAGE, 10)
    after = build_model(RunConfig(model=model, depth=2, width=8, norm=norm, placement="after"), IMAGE, 10)
    assert all(b.linear.bias is None for b in before.hidden)
    assert all(b.linear.bias is not None for b in after.hidden)
    assert weight_of(before.layers[OUTPUT]) is not None


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_plain_net_keeps_its_biases(model):
    net = build_model(RunConfig(model=model, depth=2, width=8), IMAGE, 10)
    assert all(b.linear.bias is not None for b in net.hidden)


@pytest.mark.parametrize("norm, mlp_type, cnn_type", [
    ("batch", nn.BatchNorm1d, nn.BatchNorm2d),
    ("layer", nn.LayerNorm, nn.GroupNorm),
    ("group", nn.GroupNorm, nn.GroupNorm),
    ("batch_renorm", BatchRenorm, BatchRenorm),
    ("noisy_batch", NoisyBatchNorm, NoisyBatchNorm),
    ("ghost_batch", GhostBatchNorm, GhostBatchNorm),
    ("none", nn.Identity, nn.Identity),
])
def test_norm_switch_builds_the_right_module(norm, mlp_type, cnn_type):
    for model, expected in (("mlp", mlp_type), ("cnn", cnn_type)):
        net = build_model(RunConfig(model=model, depth=1, width=8, norm=norm), IMAGE, 10)
        assert type(net.hidden[0].norm) is expected, (model, norm)


def test_bn_uses_configured_eps_and_momentum():
    net = build_model(RunConfig(depth=1, width=8, norm="batch", bn_eps=1e-3, bn_momentum=0.3), IMAGE, 10)
    assert net.hidden[0].norm.eps == 1e-3 and net.hidden[0].norm.momentum == 0.3


def test_ghost_bn_uses_configured_ghost_size_eps_and_momentum():
    cfg = RunConfig(depth=1, width=8, norm="ghost_batch", ghost_size=5, bn_eps=1e-3, bn_momentum=0.3)
    norm = build_model(cfg, IMAGE, 10).hidden[0].norm
    assert (norm.ghost_size, norm.eps, norm.momentum) == (5, 1e-3, 0.3)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_cnn_builds_and_runs_a_forward_pass_on_images(depth, digits):
    cfg = RunConfig(model="cnn", depth=depth, width=6, norm="batch", activation="relu", init="kaiming", init_scale=1.0)
    net = build_model(cfg, IMAGE, 10)
    out = net(digits[:8])
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    assert all(isinstance(b.linear, nn.Conv2d) for b in net.hidden)


def test_cnn_preact_is_per_channel_feature_map(digits):
    net = build_model(RunConfig(model="cnn", depth=3, width=6), IMAGE, 10)
    seen, _ = capture_preacts(net)
    net(digits[:4])
    # 28x28, max-pooled after the first two blocks: 28 -> 14 -> 7
    assert [tuple(z.shape) for z in seen] == [(4, 6, 28, 28), (4, 6, 14, 14), (4, 6, 7, 7)]


def test_dropout_is_off_in_eval_mode_and_seeded_in_train_mode(digits):
    cfg = RunConfig(depth=2, width=16, dropout=0.5)
    outs = []
    for _ in range(2):
        net = build_model(cfg, IMAGE, 10, noise_generator=torch.Generator().manual_seed(0))
        net.train()
        outs.append(net(digits))
    assert torch.equal(outs[0], outs[1])  # same generator seed: same masks
    net.eval()
    assert torch.equal(net(digits), net(digits))
    net.train()
    assert not torch.equal(net(digits), net(digits))  # fresh masks each call
