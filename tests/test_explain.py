"""The explainer's BN math: forward per Algorithm 1, the paper's backward formulas vs
autograd, PyTorch's running statistics, inference as one affine map, conv statistics."""

import numpy as np
import pytest
import torch

from bnviz import explain
from bnviz.norms import GhostBatchNorm

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("m", [2, 5, 60])
def test_forward_normalizes_each_feature_to_mean_0_var_1(m):
    x = RNG.normal(3.0, 2.0, size=(m, 4))
    f = explain.forward(x, np.ones(4), np.zeros(4), eps=0.0)
    np.testing.assert_allclose(f.x_hat.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(f.x_hat.var(axis=0), 1, atol=1e-9)


def test_forward_scale_and_shift_give_mean_beta_and_std_gamma():
    x = RNG.normal(size=(50, 3))
    gamma, beta = np.array([0.5, 2.0, 1.5]), np.array([-1.0, 0.0, 3.0])
    y = explain.forward(x, gamma, beta, eps=0.0).y
    np.testing.assert_allclose(y.mean(axis=0), beta, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=0), gamma, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_backward_by_hand_matches_autograd_to_1e_5(seed):
    rng = np.random.default_rng(seed)
    m, c = rng.integers(2, 40), rng.integers(1, 6)
    x, dy = rng.normal(size=(m, c)) * rng.uniform(0.1, 10), rng.normal(size=(m, c))
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    hand = explain.backward_by_hand(x, gamma, beta, dy)
    auto = explain.backward_autograd(x, gamma, beta, dy)
    assert max(explain.max_abs_diff(hand, auto).values()) < 1e-5


def test_backward_by_hand_detects_a_wrong_formula():
    """The comparison can fail: drop the variance term and the gradients no longer agree."""
    x, dy = RNG.normal(size=(8, 2)), RNG.normal(size=(8, 2))
    g, b = np.ones(2), np.zeros(2)
    hand = explain.backward_by_hand(x, g, b, dy)
    wrong = explain.Grads(x=hand.x - hand.var * 2 * (x - x.mean(0)) / 8, gamma=hand.gamma, beta=hand.beta)
    assert explain.max_abs_diff(wrong, explain.backward_autograd(x, g, b, dy))["x"] > 1e-3


def test_running_update_matches_torch_batchnorm():
    x = RNG.normal(2.0, 3.0, size=(7, 3))
    bn = torch.nn.BatchNorm1d(3, momentum=0.3, dtype=torch.float64).train()
    mean, var = np.zeros(3), np.ones(3)
    for _ in range(4):
        bn(torch.tensor(x))
        mean, var = explain.running_update(mean, var, x, 0.3)
    np.testing.assert_allclose(mean, bn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(var, bn.running_var.numpy(), rtol=1e-12)


def test_inference_affine_map_equals_torch_eval_mode():
    x = RNG.normal(size=(10, 3))
    gamma, beta, mean, var = RNG.normal(size=3), RNG.normal(size=3), RNG.normal(size=3), RNG.uniform(0.5, 2, 3)
    scale, shift = explain.inference_affine(gamma, beta, mean, var, 1e-5)
    bn = torch.nn.BatchNorm1d(3, dtype=torch.float64).eval()
    with torch.no_grad():
        for t, v in ((bn.weight, gamma), (bn.bias, beta), (bn.running_mean, mean), (bn.running_var, var)):
            t.copy_(torch.tensor(v))
        expected = bn(torch.tensor(x)).numpy()
    np.testing.assert_allclose(scale * x + shift, expected, atol=1e-12)


def test_conv_statistics_are_per_channel_over_n_h_w():
    x = RNG.normal(size=(4, 2, 3, 5))
    mean, var = explain.conv_channel_stats(x)
    for c in range(2):
        vals = x[:, c].reshape(-1)  # 4 * 3 * 5 values
        assert vals.size == 60
        assert mean[c] == pytest.approx(vals.mean()) and var[c] == pytest.approx(vals.var())
    bn = torch.nn.BatchNorm2d(2, momentum=1.0, dtype=torch.float64).train()
    bn(torch.tensor(x))
    np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-12)


@pytest.mark.parametrize("m, ghost_size, sizes", [(5, 2, [3, 2]), (7, 3, [4, 3]), (8, 2, [2, 2, 2, 2]), (5, 3, [5])])
def test_ghost_forward_normalizes_each_slice_alone_as_the_engines_ghost_batch_norm_does(m, ghost_size, sizes):
    x = RNG.normal(2.0, 3.0, size=(m, 3))
    gamma, beta = np.array([1.5, 1.0, 2.0]), np.array([0.1, -1.0, 0.0])
    g = explain.ghost_forward(x, gamma, beta, ghost_size)
    assert [b - a for a, b in g.parts] == sizes and g.parts[0][0] == 0 and g.parts[-1][1] == m
    for j, (a, b) in enumerate(g.parts):
        alone = explain.forward(x[a:b], gamma, beta)
        np.testing.assert_allclose(g.y[a:b], alone.y, rtol=0, atol=1e-12)
        np.testing.assert_allclose(g.mean[j], x[a:b].mean(axis=0), atol=1e-12)
    engine = GhostBatchNorm(3, ghost_size=ghost_size).double()
    with torch.no_grad():
        engine.weight.copy_(torch.from_numpy(gamma))
        engine.bias.copy_(torch.from_numpy(beta))
        np.testing.assert_allclose(engine(torch.from_numpy(x)).numpy(), g.y, rtol=0, atol=1e-12)
