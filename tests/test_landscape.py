"""Tests for bnviz.landscape: Santurkar et al.'s ICS measure and loss-landscape probes.

Each measurement is checked against a direct reference (copy the model, step it by
hand, recompute with .backward()) or a closed-form computation, and both functions are
checked to leave the model -- parameters, grads, buffers, mode, random generators --
exactly as they found it.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnviz.config import RunConfig
from bnviz.landscape import ics, ics_gradients, smoothness
from bnviz.models import Block, Net, SeededDropout, build_model

D_IN, N_CLASSES, BATCH = 20, 3, 32


def mlp(double: bool = True, **changes) -> Net:
    cfg = RunConfig(dataset="spiral", depth=3, width=16, activation="tanh", init="xavier", init_scale=1.0)
    net = build_model(cfg.replace(**changes), input_shape=(D_IN,), n_classes=N_CLASSES)
    net.train()
    return net.double() if double else net


def batch(dtype=torch.float64, n: int = BATCH, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=gen, dtype=dtype)
    y = torch.randint(0, N_CLASSES, (n,), generator=gen)
    return x, y


def linear_net(depth: int = 3, width: int = 8, bias: bool = True, seed: int = 0) -> Net:
    """A deep linear network (identity activations) in bnviz's Net / Block structure."""
    torch.manual_seed(seed)
    blocks, fan_in = [], D_IN
    for _ in range(depth):
        blocks.append(Block(nn.Linear(fan_in, width, bias=bias), None, "before", nn.Identity(),
                            SeededDropout(0.0, None)))
        fan_in = width
    return Net(blocks, nn.Linear(width, N_CLASSES, bias=bias), flatten_input=True).double().train()


# -- references -------------------------------------------------------------------------------

def reference_grads(model: Net, x, y) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and every parameter's gradient, by .backward() on a copy (the copy's buffers absorb BN updates)."""
    m = copy.deepcopy(model)
    loss = F.cross_entropy(m(x), y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in m.named_parameters()}


def reference_ics(model: Net, x, y, lr: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """G and G' per hidden layer, the slow obvious way."""
    _, grads = reference_grads(model, x, y)
    names = {id(p): n for n, p in model.named_parameters()}
    g = [grads[names[id(b.linear.weight)]] for b in model.hidden]
    g_after = [g[0]]
    for i in range(1, len(model.hidden)):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for j in range(i):  # hidden blocks 1..i: names as in model.named_parameters()
                for name, p in m.hidden[j].named_parameters():
                    p -= lr * grads[f"layers.hidden{j + 1}.{name}"]
        F.cross_entropy(m(x), y).backward()
        g_after.append(m.hidden[i].linear.weight.grad.clone())
    return g, g_after


def reference_smoothness(model: Net, x, y, lr: float, scales) -> dict[str, float]:
    loss0, g = reference_grads(model, x, y)
    losses, changes, betas = [loss0], [0.0], [0.0]
    g_norm = math.sqrt(sum(t.pow(2).sum().item() for t in g.values()))
    for s in scales:
        eta = s * lr
        m = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in m.named_parameters():
                p -= eta * g[n]
        loss, gs = reference_grads(m, x, y)
        change = math.sqrt(sum((gs[n] - g[n]).pow(2).sum().item() for n in g))
        losses.append(loss)
        changes.append(change)
        betas.append(change / (eta * g_norm) if eta else 0.0)
    return {"loss_range": max(losses) - min(losses), "grad_change": max(changes), "beta_smoothness": max(betas)}


# -- model state ------------------------------------------------------------------------------

def snapshot(model: nn.Module) -> dict:
    state = {
        "training": [m.training for m in model.modules()],
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "grad_ids": {n: id(p.grad) for n, p in model.named_parameters()},
        "buffers": {n: (b.clone(), id(b)) for n, b in model.named_buffers()},
        "buffer_names": [sorted(m._buffers) for m in model.modules()],
        "none_buffers": [sorted(k for k, v in m._buffers.items() if v is None) for m in model.modules()],
        "last": [(getattr(m, "last_r", None), getattr(m, "last_d", None)) for m in model.modules()],
        "rng": torch.get_rng_state(),
    }
    gens = [m.generator for m in model.modules() if isinstance(getattr(m, "generator", None), torch.Generator)]
    state["gens"] = [g.get_state() for g in gens]
    return state


def assert_same_state(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    for n, p in before["params"].items():
        assert torch.equal(after["params"][n], p), n
    for n, g in before["grads"].items():
        if g is None:
            assert after["grads"][n] is None, n
        else:
            assert after["grads"][n] is not None and torch.equal(after["grads"][n], g), n
    assert after["grad_ids"] == before["grad_ids"]
    assert after["buffer_names"] == before["buffer_names"]
    assert after["none_buffers"] == before["none_buffers"]
    assert after["buffers"].keys() == before["buffers"].keys()
    for n, (b, ident) in before["buffers"].items():
        b_after, ident_after = after["buffers"][n]
        assert ident_after == ident, n  # the same tensor object ...
        assert torch.equal(b_after, b), n  # ... with the same values
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(after["last"], before["last"]))
    assert torch.equal(after["rng"], before["rng"])
    assert all(torch.equal(a, b) for a, b in zip(after["gens"], before["gens"]))


# -- ICS --------------------------------------------------------------------------------------

def test_ics_first_layer_has_distance_zero_and_cosine_one():
    net = mlp()
    x, y = batch()
    dist, cos = ics(net, x, y, lr=0.5)
    assert dist.shape == cos.shape == (3,)
    assert dist[0].item() == 0.0 and cos[0].item() == 1.0
    assert (dist[1:] > 0).all()  # the later layers do see a shift


def test_ics_gradients_match_a_manual_sgd_step_in_a_deep_linear_net():
    net = linear_net(depth=4)
    x, y = batch()
    g, g_after = ics_gradients(net, x, y, lr=0.3)
    ref_g, ref_after = reference_ics(net, x, y, lr=0.3)
    for a, b in zip(g + g_after, ref_g + ref_after):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    dist, cos = ics(net, x, y, lr=0.3)
    ref_dist = torch.stack([(a - b).norm() for a, b in zip(ref_g, ref_after)])
    ref_cos = torch.stack([F.cosine_similarity(a.flatten(), b.flatten(), dim=0) for a, b in zip(ref_g, ref_after)])
    torch.testing.assert_close(dist, ref_dist, rtol=0, atol=1e-10)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-10)


def test_ics_gradients_match_a_closed_form_two_layer_linear_net():
    # logits = x W1^T W2^T W3^T; with P = (softmax - onehot) / N = dL/dlogits:
    # G2 = (P W3)^T (x W1^T), G1 = (P W3 W2)^T x, and G2' is G2 at W1 - lr G1.
    net = linear_net(depth=2, bias=False)
    x, y = batch()
    lr = 0.7
    w1, w2, w3 = (net.hidden[0].linear.weight.detach(), net.hidden[1].linear.weight.detach(),
                  net.layers["output"].weight.detach())
    onehot = F.one_hot(y, N_CLASSES).double()

    def p_of(w1_):
        return (torch.softmax(x @ w1_.T @ w2.T @ w3.T, 1) - onehot) / len(y)

    p = p_of(w1)
    g1 = (p @ w3 @ w2).T @ x
    g2 = (p @ w3).T @ (x @ w1.T)
    w1_new = w1 - lr * g1
    g2_after = (p_of(w1_new) @ w3).T @ (x @ w1_new.T)
    g, g_after = ics_gradients(net, x, y, lr)
    torch.testing.assert_close(g[0], g1, rtol=0, atol=1e-10)
    torch.testing.assert_close(g[1], g2, rtol=0, atol=1e-10)
    torch.testing.assert_close(g_after[1], g2_after, rtol=0, atol=1e-10)
    assert not torch.allclose(g_after[1], g2)  # the step did shift layer 2's gradient


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_ics_gradients_match_a_manual_sgd_step_with_tanh_and_norms(norm):
    # With BN the earlier layers' norm parameters (gamma, beta) step too.
    net = mlp(norm=norm)
    x, y = batch()
    g, g_after = ics_gradients(net, x, y, lr=0.5)
    ref_g, ref_after = reference_ics(net, x, y, lr=0.5)
    for a, b in zip(g + g_after, ref_g + ref_after):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_ics_tends_to_zero_distance_and_cosine_one_as_lr_tends_to_zero(norm):
    net = mlp(norm=norm)
    x, y = batch()
    dists = []
    for lr in (1e-1, 1e-4, 1e-8):
        dist, cos = ics(net, x, y, lr)
        dists.append(dist)
    torch.testing.assert_close(dist, torch.zeros(3, dtype=dist.dtype), rtol=0, atol=1e-6)
    torch.testing.assert_close(cos, torch.ones(3, dtype=cos.dtype), rtol=0, atol=1e-9)
    # first order in lr: 1000x smaller lr, about 1000x smaller distance
    assert (dists[0][1:] > 100 * dists[1][1:]).all() and (dists[1][1:] > 100 * dists[2][1:]).all()
    dist, cos = ics(net, x, y, 0.0)
    assert (dist == 0).all() and (cos == 1).all()


@pytest.mark.parametrize("own_generator", [True, False])
def test_ics_uses_the_same_dropout_masks_in_every_pass(own_generator):
    # Different masks in the G' passes would show up as a large shift even at lr -> 0.
    # Without a generator of its own, dropout draws from torch's global one.
    noise = torch.Generator().manual_seed(3) if own_generator else None
    cfg = RunConfig(dataset="spiral", depth=3, width=16, dropout=0.5)
    net = build_model(cfg, input_shape=(D_IN,), n_classes=N_CLASSES, noise_generator=noise).double().train()
    x, y = batch()
    before = snapshot(net)
    dist, cos = ics(net, x, y, 1e-7)
    assert dist.max().item() < 1e-6 and cos.min().item() > 1 - 1e-9
    assert smoothness(net, x, y, 1e-9, scales=(1.0,))["grad_change"] < 1e-6
    assert_same_state(net, before)  # generator states included


# -- smoothness -------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["none", "batch"])
def test_smoothness_matches_a_direct_reference(norm):
    net = mlp(norm=norm)
    x, y = batch()
    scales = (0.5, 1, 2, 3, 4)
    got = smoothness(net, x, y, lr=0.2, scales=scales)
    want = reference_smoothness(net, x, y, 0.2, scales)
    assert got.keys() == {"loss_range", "grad_change", "beta_smoothness"}
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k
    assert got["loss_range"] > 0 and got["grad_change"] > 0
    assert math.isfinite(got["beta_smoothness"]) and got["beta_smoothness"] > 0


def test_smoothness_with_scale_zero_only_is_all_zero():
    net = mlp()
    x, y = batch()
    assert smoothness(net, x, y, lr=0.5, scales=(0,)) == {"loss_range": 0.0, "grad_change": 0.0, "beta_smoothness": 0.0}
    assert smoothness(net, x, y, lr=0.0) == {"loss_range": 0.0, "grad_change": 0.0, "beta_smoothness": 0.0}


def test_smoothness_beta_is_the_hessian_norm_along_g_for_tiny_steps():
    # For eta -> 0, ||grad L(w - eta g) - grad L(w)|| / ||eta g|| -> ||H g|| / ||g||.
    net = mlp()
    x, y = batch()
    params = dict(net.named_parameters())
    _, g = reference_grads(net, x, y)
    names = list(params)

    def grad_at(*flat):
        out = torch.func.functional_call(net, dict(zip(names, flat)), (x,))
        return torch.autograd.grad(F.cross_entropy(out, y), flat, create_graph=True)

    leaves = [p.detach().requires_grad_() for p in params.values()]
    grads = grad_at(*leaves)
    hg = torch.autograd.grad(grads, leaves, grad_outputs=[g[n] for n in names])
    want = math.sqrt(sum(t.pow(2).sum().item() for t in hg)) / math.sqrt(sum(t.pow(2).sum().item() for t in g.values()))
    got = smoothness(net, x, y, lr=1e-6, scales=(1.0,))["beta_smoothness"]
    assert got == pytest.approx(want, rel=1e-4)


def test_smoothness_loss_range_is_nonnegative_and_beta_finite_in_float32():
    net = mlp(double=False, norm="batch")
    x, y = batch(torch.float32)
    out = smoothness(net, x, y, lr=0.5)
    assert out["loss_range"] >= 0 and out["grad_change"] >= 0
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())


# -- the model is left alone --------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["none", "batch", "batch_renorm", "noisy_batch", "ghost_batch"])
def test_model_is_unchanged_by_ics_and_smoothness(norm):
    noise = torch.Generator().manual_seed(5)
    cfg = RunConfig(dataset="spiral", depth=3, width=16, norm=norm, dropout=0.2, renorm_warmup=0)
    net = build_model(cfg, input_shape=(D_IN,), n_classes=N_CLASSES, noise_generator=noise).train()
    x, y = batch(torch.float32)
    F.cross_entropy(net(x), y).backward()  # a step's worth of grads and running stats
    net.hidden[0].linear.weight.grad = None  # a None grad must stay None ...
    net.hidden[1].linear.weight.grad.zero_()  # ... and a zero one zero
    before = snapshot(net)
    if norm != "none":
        assert any(n.endswith("num_batches_tracked") for n in before["buffers"])
    ics(net, x, y, lr=0.5)
    assert_same_state(net, before)
    smoothness(net, x, y, lr=0.5)
    assert_same_state(net, before)


def test_model_in_eval_mode_stays_in_eval_mode_and_untouched():
    net = mlp(norm="batch")
    x, y = batch()
    net(x)  # running stats away from their initial values
    net.eval()
    before = snapshot(net)
    ics(net, x, y, lr=0.5)
    smoothness(net, x, y, lr=0.5)
    assert_same_state(net, before)


def test_training_after_the_probes_is_identical_to_training_without_them():
    # Restored buffers and generators: the probes do not perturb the run they measure.
    def run(probe: bool) -> torch.Tensor:
        noise = torch.Generator().manual_seed(9)
        cfg = RunConfig(dataset="spiral", depth=2, width=8, norm="noisy_batch", dropout=0.3)
        net = build_model(cfg, input_shape=(D_IN,), n_classes=N_CLASSES, noise_generator=noise).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for step in range(3):
            x, y = batch(torch.float32, seed=step)
            if probe:
                ics(net, x, y, 0.1)
                smoothness(net, x, y, 0.1)
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        return torch.cat([t.flatten() for t in net.state_dict().values()]).double()

    assert torch.equal(run(True), run(False))


# -- models -----------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["none", "batch"])
def test_ics_and_smoothness_work_for_a_cnn(norm):
    cfg = RunConfig(dataset="mnist-mini", model="cnn", depth=2, width=4, norm=norm)
    net = build_model(cfg, input_shape=(1, 28, 28), n_classes=10).train()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    before = snapshot(net)
    dist, cos = ics(net, x, y, lr=0.1)
    assert dist.shape == cos.shape == (2,) and dist.dtype == torch.float32
    assert dist[0] == 0 and cos[0] == 1 and torch.isfinite(dist).all() and (cos.abs() <= 1).all()
    out = smoothness(net, x, y, lr=0.1, scales=(0.5, 2))
    assert out["loss_range"] >= 0 and all(math.isfinite(v) for v in out.values())
    assert_same_state(net, before)


def test_ics_returns_one_value_per_hidden_layer_on_the_models_dtype():
    net = mlp(double=False, depth=5, norm="batch")
    x, y = batch(torch.float32)
    dist, cos = ics(net, x, y, lr=0.5)
    assert dist.shape == cos.shape == (5,)
    assert dist.dtype == cos.dtype == torch.float32
    assert (cos <= 1).all() and (cos >= -1).all()


def test_ics_works_under_no_grad():
    net = mlp()
    x, y = batch()
    want = ics(net, x, y, 0.5)
    with torch.no_grad():
        got = ics(net, x, y, 0.5)
        smoothness(net, x, y, 0.5)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_negative_or_non_finite_lr_is_refused():
    net = mlp()
    x, y = batch()
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr"):
            ics(net, x, y, bad)
        with pytest.raises(ValueError, match="lr"):
            smoothness(net, x, y, bad)
