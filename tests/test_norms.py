"""Tests for bnviz.norms: BatchRenorm (Ioffe 2017), NoisyBatchNorm (Santurkar 2018) and
GhostBatchNorm (Hoffer 2017)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnviz.errors import ConfigError
from bnviz.norms import BatchRenorm, GhostBatchNorm, NoisyBatchNorm, ghost_sizes

C = 3
SHAPES = [pytest.param((16, C), id="2d"), pytest.param((8, C, 5, 4), id="4d")]


def _torch_bn(shape: tuple[int, ...], **kw) -> nn.Module:
    return nn.BatchNorm1d(C, **kw) if len(shape) == 2 else nn.BatchNorm2d(C, **kw)


def _view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) -> broadcastable against x."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def _dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _randomize_affine(m: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.weight.copy_(torch.rand(C, generator=g) + 0.5)
        m.bias.copy_(torch.randn(C, generator=g))


# --------------------------------------------------------------------------- BatchRenorm


@pytest.mark.parametrize("shape", SHAPES)
def test_batchrenorm_in_warmup_equals_torch_batchnorm_train_output_and_grads(shape):
    torch.manual_seed(0)
    brn = BatchRenorm(C, warmup_steps=10, rmax_ramp_end=20, dmax_ramp_end=20)
    bn = _torch_bn(shape)
    _randomize_affine(brn, 1)
    bn.load_state_dict(
        {"weight": brn.weight.detach(), "bias": brn.bias.detach()}, strict=False
    )
    # Moving stats far from the batch stats: in warmup they must not matter.
    brn.running_mean.fill_(3.0)
    brn.running_std.fill_(0.2)
    for _ in range(3):
        x = (torch.randn(shape) * 2 + 1).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        assert brn.rmax() == 1.0 and brn.dmax() == 0.0
        y = brn(x)
        y_ref = bn(x2)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        w = torch.randn(shape)
        (y * w).sum().backward()
        (y_ref * w).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(brn.weight.grad, bn.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(brn.bias.grad, bn.bias.grad, atol=1e-4, rtol=1e-5)


def _renorm_reference(x, mu, sigma, gamma, beta, eps, rmax, dmax):
    """Paper formula, Algorithm 1, written out independently; r, d are constants."""
    dims = _dims(x)
    mean_b = x.mean(dim=dims)
    var_b = ((x - _view(mean_b, x)) ** 2).mean(dim=dims)
    std_b = torch.sqrt(var_b + eps)
    r = torch.clamp(std_b / sigma, min=1.0 / rmax, max=rmax).detach()
    d = torch.clamp((mean_b - mu) / sigma, min=-dmax, max=dmax).detach()
    x_hat = (x - _view(mean_b, x)) / _view(std_b, x) * _view(r, x) + _view(d, x)
    return _view(gamma, x) * x_hat + _view(beta, x), r, d, mean_b.detach(), std_b.detach()


@pytest.mark.parametrize("shape", SHAPES)
def test_batchrenorm_after_warmup_matches_paper_formula_with_active_clipping_and_constant_r_d(
    shape,
):
    dtype = torch.float64
    rmax_final, dmax_final = 2.0, 0.5
    brn = BatchRenorm(
        C, rmax_final=rmax_final, dmax_final=dmax_final,
        warmup_steps=0, rmax_ramp_end=0, dmax_ramp_end=0,
    ).to(dtype)
    _randomize_affine(brn, 2)
    # Channel 0: sigma_B/sigma >> rmax and d >> dmax; channel 1: sigma_B/sigma << 1/rmax
    # and d << -dmax; channel 2: inside the clip range (r, d un-clipped, not 1 / 0).
    mu = torch.tensor([-5.0, 5.0, 0.5], dtype=dtype)
    sigma = torch.tensor([0.1, 5.0, 1.5], dtype=dtype)
    brn.running_mean.copy_(mu)
    brn.running_std.copy_(sigma)
    assert brn.rmax() == rmax_final and brn.dmax() == dmax_final

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 2 + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    gamma = brn.weight.detach().clone().requires_grad_()
    beta = brn.bias.detach().clone().requires_grad_()

    y = brn(x)
    y_ref, r, d, mean_b, std_b = _renorm_reference(
        x_ref, mu, sigma, gamma, beta, brn.eps, rmax_final, dmax_final
    )
    # The setup really exercises clipping at both ends and the un-clipped middle.
    assert r[0] == rmax_final and d[0] == dmax_final
    assert r[1] == 1 / rmax_final and d[1] == -dmax_final
    assert 1 / rmax_final < r[2] < rmax_final and r[2] != 1
    assert -dmax_final < d[2] < dmax_final and d[2] != 0
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(brn.last_r, r)
    torch.testing.assert_close(brn.last_d, d)

    w = torch.randn(shape, generator=g, dtype=dtype)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(brn.weight.grad, gamma.grad, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(brn.bias.grad, beta.grad, atol=1e-10, rtol=1e-10)

    # Had r, d not been constants the gradient would differ: check the test can tell.
    x_live = x.detach().clone().requires_grad_()
    dims = _dims(x_live)
    mb = x_live.mean(dim=dims)
    sb = torch.sqrt(((x_live - _view(mb, x_live)) ** 2).mean(dim=dims) + brn.eps)
    r_live = (sb / sigma).clamp(1 / rmax_final, rmax_final)
    d_live = ((mb - mu) / sigma).clamp(-dmax_final, dmax_final)
    y_live = _view(gamma.detach(), x_live) * (
        (x_live - _view(mb, x_live)) / _view(sb, x_live) * _view(r_live, x_live)
        + _view(d_live, x_live)
    ) + _view(beta.detach(), x_live)
    (y_live * w).sum().backward()
    assert not torch.allclose(x_live.grad, x.grad, atol=1e-6)


def test_batchrenorm_schedule_at_step_zero_warmup_mid_ramp_and_end():
    brn = BatchRenorm(
        2, rmax_final=3.0, dmax_final=5.0, warmup_steps=100, rmax_ramp_end=300, dmax_ramp_end=200
    )

    def at(step):
        brn.num_batches_tracked.fill_(step)
        return brn.rmax(), brn.dmax()

    assert at(0) == (1.0, 0.0)
    assert at(99) == (1.0, 0.0)  # last warmup step
    assert at(100) == (1.0, 0.0)  # ramps start from the warmup values
    assert at(150) == pytest.approx((1.5, 2.5))  # 1/4 of rmax ramp, 1/2 of dmax ramp
    assert at(200) == pytest.approx((2.0, 5.0))  # mid rmax ramp, dmax ramp ended
    assert at(300) == pytest.approx((3.0, 5.0))
    assert at(10_000) == pytest.approx((3.0, 5.0))


def test_batchrenorm_default_schedule_is_the_papers():
    brn = BatchRenorm(2)
    for step, expected in [
        (0, (1.0, 0.0)),
        (4999, (1.0, 0.0)),
        (5000, (1.0, 0.0)),
        (15000, (1.0 + 2.0 * 10000 / 35000, 2.5)),
        (25000, (1.0 + 2.0 * 20000 / 35000, 5.0)),
        (40000, (3.0, 5.0)),
    ]:
        brn.num_batches_tracked.fill_(step)
        assert (brn.rmax(), brn.dmax()) == pytest.approx(expected)


def test_batchrenorm_counts_only_training_forward_passes():
    brn = BatchRenorm(C, warmup_steps=2, rmax_ramp_end=4, dmax_ramp_end=4)
    x = torch.randn(8, C)
    for _ in range(3):
        brn(x)
    brn.eval()
    brn(x)
    assert int(brn.num_batches_tracked) == 3
    # Step 3 is half-way along the 2 -> 4 ramps.
    assert brn.rmax() == pytest.approx(2.0) and brn.dmax() == pytest.approx(2.5)


@pytest.mark.parametrize("shape", SHAPES)
def test_batchrenorm_moving_averages_update_with_momentum_and_eval_uses_them(shape):
    momentum = 0.3
    brn = BatchRenorm(C, momentum=momentum, warmup_steps=1, rmax_ramp_end=3, dmax_ramp_end=3)
    _randomize_affine(brn, 4)
    g = torch.Generator().manual_seed(5)
    mu = torch.zeros(C)
    sigma = torch.ones(C)
    for _ in range(4):
        x = torch.randn(shape, generator=g) * 3 - 2
        brn(x)
        dims = _dims(x)
        mean_b = x.mean(dim=dims)
        std_b = torch.sqrt(x.var(dim=dims, unbiased=False) + brn.eps)
        mu = mu + momentum * (mean_b - mu)
        sigma = sigma + momentum * (std_b - sigma)
        torch.testing.assert_close(brn.running_mean, mu)
        torch.testing.assert_close(brn.running_std, sigma)

    brn.eval()
    x = torch.randn(shape, generator=g)
    expected = _view(brn.weight, x) * (x - _view(mu, x)) / _view(sigma, x) + _view(brn.bias, x)
    with torch.no_grad():
        y = brn(x)
        torch.testing.assert_close(y, expected)
    # Eval leaves the moving stats alone.
    torch.testing.assert_close(brn.running_mean, mu)
    torch.testing.assert_close(brn.running_std, sigma)


def test_batchrenorm_without_affine_registers_weight_and_bias_as_none():
    brn = BatchRenorm(C, affine=False, warmup_steps=0, rmax_ramp_end=0, dmax_ramp_end=0)
    assert brn.weight is None and brn.bias is None
    assert list(dict(brn.named_parameters())) == []
    assert set(brn.state_dict()) == {"running_mean", "running_std", "num_batches_tracked"}
    x = torch.randn(6, C, 2, 2)
    y = brn(x)  # moving stats are 0 / 1, clipping keeps r, d bounded
    assert y.shape == x.shape


def test_batchrenorm_is_deterministic_and_device_dtype_follow_the_input():
    x = torch.randn(10, C, 3, 3, dtype=torch.float64)
    a = BatchRenorm(C, warmup_steps=1, rmax_ramp_end=2, dmax_ramp_end=2).double()
    b = copy.deepcopy(a)
    for _ in range(3):
        ya, yb = a(x), b(x)
        assert ya.dtype == torch.float64 and ya.device == x.device
        assert torch.equal(ya, yb)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_features": 0},
        {"num_features": 2, "momentum": 0.0},
        {"num_features": 2, "eps": 0.0},
        {"num_features": 2, "rmax_final": 0.5},
        {"num_features": 2, "dmax_final": -1.0},
        {"num_features": 2, "warmup_steps": 10, "rmax_ramp_end": 5},
    ],
)
def test_batchrenorm_rejects_bad_config_with_config_error(kwargs):
    with pytest.raises(ConfigError):
        BatchRenorm(**kwargs)


def test_batchrenorm_rejects_wrong_channel_count_and_single_value_per_channel():
    brn = BatchRenorm(C)
    with pytest.raises(ConfigError):
        brn(torch.randn(4, C + 1))
    with pytest.raises(ConfigError):
        brn(torch.randn(1, C))


# ------------------------------------------------------------------------ NoisyBatchNorm


def _noisy(seed: int | None = 0, **kw) -> NoisyBatchNorm:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return NoisyBatchNorm(C, generator=gen, **kw)


@pytest.mark.parametrize("shape", SHAPES)
def test_noisy_bn_output_is_recorded_scale_times_bn_plus_recorded_shift(shape):
    noisy = _noisy(0, mean_range=0.5, std_low=1.0, std_high=1.25, jitter_mean=0.1)
    bn = _torch_bn(shape)
    _randomize_affine(noisy, 6)
    bn.load_state_dict(noisy.state_dict())
    g = torch.Generator().manual_seed(7)
    prev = None
    for _ in range(5):
        x = torch.randn(shape, generator=g) * 2 + 1
        y = noisy(x)
        bn_out = bn(x)
        s, m = noisy.last_scale, noisy.last_shift
        assert s.shape == (C,) and m.shape == (C,)
        assert not s.requires_grad and not m.requires_grad
        torch.testing.assert_close(y, _view(s, x) * bn_out + _view(m, x))
        mu_t, sigma_t = float(noisy.last_mu_t), float(noisy.last_sigma_t)
        assert -0.5 <= mu_t <= 0.5
        assert 1.0 <= sigma_t <= 1.25
        assert torch.all(m >= mu_t - 0.1 - 1e-6) and torch.all(m <= mu_t + 0.1 + 1e-6)
        # Fresh noise every step, different per unit.
        assert len(set(m.tolist())) == C and len(set(s.tolist())) == C
        if prev is not None:
            assert not torch.equal(prev, m)
        prev = m.clone()


def test_noisy_bn_noise_statistics_follow_the_documented_distributions():
    noisy = _noisy(1, mean_range=0.5, std_low=1.0, std_high=1.25, jitter_mean=0.1,
                   jitter_std=0.1)
    x = torch.randn(4, C)
    mus, sigmas, m_dev, s_dev = [], [], [], []
    for _ in range(400):
        noisy(x)
        mus.append(float(noisy.last_mu_t))
        sigmas.append(float(noisy.last_sigma_t))
        m_dev.append(noisy.last_shift - noisy.last_mu_t)
        s_dev.append(noisy.last_scale - noisy.last_sigma_t)
    mus_t, sigmas_t = torch.tensor(mus), torch.tensor(sigmas)
    m_dev_t, s_dev_t = torch.cat(m_dev), torch.cat(s_dev)
    # U(-0.5, 0.5) has std 0.289, mean 0; U(1, 1.25) mean 1.125.
    assert abs(mus_t.mean()) < 0.06 and 0.25 < mus_t.std() < 0.33
    assert abs(sigmas_t.mean() - 1.125) < 0.015
    assert m_dev_t.abs().max() <= 0.1 + 1e-6 and m_dev_t.abs().max() > 0.09
    # s - sigma_t ~ N(0, 0.1^2): spread well past the jitter_mean bound sometimes.
    assert abs(s_dev_t.mean()) < 0.015 and 0.09 < s_dev_t.std() < 0.11


@pytest.mark.parametrize("shape", SHAPES)
def test_noisy_bn_equally_seeded_generators_give_identical_outputs(shape):
    a, b, c = _noisy(42), _noisy(42), _noisy(43)
    g = torch.Generator().manual_seed(8)
    for _ in range(3):
        x = torch.randn(shape, generator=g)
        ya, yb, yc = a(x), b(x), c(x)
        assert torch.equal(ya, yb)
        assert torch.equal(a.last_shift, b.last_shift)
        assert torch.equal(a.last_scale, b.last_scale)
        assert not torch.equal(ya, yc)


def test_noisy_bn_own_generator_ignores_global_rng_and_leaves_it_untouched():
    x = torch.randn(6, C, 2, 2)
    a, b = _noisy(9), _noisy(9)
    torch.manual_seed(0)
    state_before = torch.get_rng_state()
    ya = a(x)
    assert torch.equal(torch.get_rng_state(), state_before)  # a() drew nothing globally
    torch.manual_seed(12345)  # a different global state must not matter
    yb = b(x)
    assert torch.equal(ya, yb)


def test_noisy_bn_without_generator_uses_global_rng():
    x = torch.randn(6, C)
    a, b = _noisy(None), _noisy(None)
    torch.manual_seed(3)
    ya = a(x)
    torch.manual_seed(3)
    yb = b(x)
    assert torch.equal(ya, yb)
    torch.manual_seed(4)
    assert not torch.equal(ya, a(x))


@pytest.mark.parametrize("shape", SHAPES)
def test_noisy_bn_eval_equals_torch_batchnorm_eval_and_running_stats_match(shape):
    momentum = 0.2
    noisy = _noisy(5, momentum=momentum, eps=1e-3)
    bn = _torch_bn(shape, momentum=momentum, eps=1e-3)
    _randomize_affine(noisy, 10)
    bn.load_state_dict(noisy.state_dict())
    g = torch.Generator().manual_seed(11)
    for _ in range(4):
        x = torch.randn(shape, generator=g) * 1.5 + 0.7
        noisy(x)
        bn(x)
    torch.testing.assert_close(noisy.running_mean, bn.running_mean)
    torch.testing.assert_close(noisy.running_var, bn.running_var)
    assert int(noisy.num_batches_tracked) == int(bn.num_batches_tracked) == 4

    noisy.eval()
    bn.eval()
    x = torch.randn(shape, generator=g)
    last_shift = noisy.last_shift.clone()
    gen_state = noisy.generator.get_state()
    torch.testing.assert_close(noisy(x), bn(x), atol=1e-6, rtol=1e-6)
    # Eval draws no noise: generator and recorded noise unchanged.
    assert torch.equal(noisy.generator.get_state(), gen_state)
    assert torch.equal(noisy.last_shift, last_shift)


def test_noisy_bn_state_dict_is_interchangeable_with_torch_batchnorm():
    noisy = _noisy(0)
    noisy(torch.randn(5, C))
    assert set(noisy.state_dict()) == set(nn.BatchNorm2d(C).state_dict())
    nn.BatchNorm2d(C).load_state_dict(noisy.state_dict())


def test_noisy_bn_gradient_treats_noise_as_constant():
    noisy = _noisy(2)
    bn = nn.BatchNorm1d(C)
    x = torch.randn(8, C, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    w = torch.randn(8, C)
    (noisy(x) * w).sum().backward()
    s = noisy.last_scale
    (bn(x2) * w * s).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"std_low": 1.5, "std_high": 1.0},
        {"mean_range": -0.1},
        {"jitter_mean": -0.1},
        {"jitter_std": -0.1},
        {"momentum": 1.5},
        {"generator": 7},
    ],
)
def test_noisy_bn_rejects_bad_config_with_config_error(kwargs):
    with pytest.raises(ConfigError):
        NoisyBatchNorm(C, **kwargs)


def test_noisy_bn_rejects_wrong_dimensionality():
    with pytest.raises(ConfigError):
        _noisy(0)(torch.randn(C))
    with pytest.raises(ConfigError):
        _noisy(0)(torch.randn(4, C + 1, 2, 2))


# --------------------------------------------------------------------------- GhostBatchNorm


def _ghost_pair(shape, ghost_size, momentum=0.1):
    ghost = GhostBatchNorm(C, ghost_size=ghost_size, momentum=momentum, eps=1e-3)
    _randomize_affine(ghost, 20)
    bn = _torch_bn(shape, momentum=momentum, eps=1e-3)
    bn.load_state_dict(ghost.state_dict())
    return ghost, bn


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n, ghost_size, parts", [(16, 4, [4, 4, 4, 4]), (16, 5, [6, 5, 5]), (9, 4, [5, 4]),
                                                  (50, 3, [4, 4, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3])])
@pytest.mark.parametrize("momentum", [0.3, None])
def test_ghost_bn_normalizes_each_ghost_batch_by_its_own_statistics_in_order(shape, n, ghost_size, parts, momentum):
    # Each ghost batch's output, values and gradients, is torch's BatchNorm of that slice
    # alone; the running statistics take one update per ghost batch, in order (momentum None:
    # their cumulative average).
    shape = (n, *shape[1:])
    ghost, bn = _ghost_pair(shape, ghost_size, momentum=momentum)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 2 + 1).requires_grad_()
    w = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    (ghost(x) * w).sum().backward()
    grads = (x.grad.clone(), ghost.weight.grad.clone(), ghost.bias.grad.clone())
    x.grad = None
    y_parts = [bn(part) for part in x.split(parts)]
    (torch.cat(y_parts) * w).sum().backward()
    torch.testing.assert_close(grads[0], x.grad)
    torch.testing.assert_close(grads[1], bn.weight.grad)
    torch.testing.assert_close(grads[2], bn.bias.grad)
    with torch.no_grad():
        torch.testing.assert_close(ghost(x), torch.cat([bn(p) for p in x.split(parts)]))
    torch.testing.assert_close(ghost.running_mean, bn.running_mean)
    torch.testing.assert_close(ghost.running_var, bn.running_var)
    assert int(ghost.num_batches_tracked) == int(bn.num_batches_tracked) == 2 * len(parts)
    # and the ghost batches differ from one batch: the statistics really are per slice
    bn_whole = _torch_bn(shape, eps=1e-3)
    bn_whole.load_state_dict(ghost.state_dict())
    assert not torch.allclose(ghost(x), bn_whole(x), atol=1e-3)


def test_ghost_sizes_are_tensor_splits_parts_of_the_batch_into_batch_over_ghost_size():
    # The one split rule the layer, the step-by-step page and the lab's caption share.
    for batch in range(1, 130):
        for g in range(2, 40):
            sizes = ghost_sizes(batch, g)
            assert sizes == [len(p) for p in torch.arange(batch).tensor_split(max(1, batch // g))]
            assert sum(sizes) == batch and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
            assert (len(sizes) == 1) == (batch < 2 * g)
    assert ghost_sizes(500, 25) == [25] * 20 and ghost_sizes(500, 16) == [17] * 4 + [16] * 27


@pytest.mark.parametrize("shape", SHAPES)
def test_ghost_bn_of_a_batch_under_two_ghosts_and_in_eval_mode_is_torch_batchnorm_bit_for_bit(shape):
    ghost, bn = _ghost_pair(shape, ghost_size=shape[0] // 2 + 1)  # 16 or 8 rows: one ghost batch
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 3 - 1
    assert torch.equal(ghost(x), bn(x))
    assert torch.equal(ghost.running_var, bn.running_var)
    ghost.eval()
    bn.eval()
    small = GhostBatchNorm(C, ghost_size=2, eps=1e-3)
    small.load_state_dict(ghost.state_dict())
    small.eval()
    assert torch.equal(ghost(x), bn(x)) and torch.equal(small(x), bn(x))  # eval: running statistics only


def test_ghost_bn_state_dict_is_interchangeable_with_torch_batchnorm():
    ghost = GhostBatchNorm(C, ghost_size=2)
    ghost(torch.randn(6, C))
    assert set(ghost.state_dict()) == set(nn.BatchNorm2d(C).state_dict())
    nn.BatchNorm1d(C).load_state_dict(ghost.state_dict())


@pytest.mark.parametrize("kwargs", [{"ghost_size": 1}, {"ghost_size": 0}, {"ghost_size": 2.5}, {"ghost_size": True},
                                    {"momentum": 0.0}, {"eps": 0.0}])
def test_ghost_bn_rejects_bad_config_with_config_error(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        GhostBatchNorm(C, **kwargs)


def test_ghost_bn_rejects_wrong_channel_count():
    with pytest.raises(ConfigError, match="channels"):
        GhostBatchNorm(C, ghost_size=2)(torch.randn(4, C + 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_modules_run_on_cuda_with_a_cpu_generator():
    x = torch.randn(8, C, 4, 4, device="cuda")
    brn = BatchRenorm(C, warmup_steps=0, rmax_ramp_end=1, dmax_ramp_end=1).cuda()
    assert brn(x).device == x.device
    noisy = _noisy(0).cuda()
    y = noisy(x)
    assert y.device == x.device and noisy.last_shift.device == x.device
    ref = _noisy(0)
    ref(x.cpu())
    torch.testing.assert_close(noisy.last_shift.cpu(), ref.last_shift)
    ghost = GhostBatchNorm(C, ghost_size=2).cuda()
    assert ghost(x).device == x.device and int(ghost.num_batches_tracked) == 4
