"""The stacked fast path (models.StackedMLP, Trainer(batched=True)) records what the
straightforward path does: one autograd pass and one torch.optim.SGD step per variant
(Trainer(batched=False)). And probes=False changes nothing but what is recorded.

The stacked path is written to give the same numbers bit for bit (same kernels, and each
product autograd's own call for one variant on the CPU), which the app relies on: a variant must train
the same whether its companions can be stacked or not (tests/test_browser.py restarts a
comparison with bn switched to layer norm and expects the plain variant's loss to repeat).
The one metric computed differently is update_ratio: ||lr * update|| / ||W|| instead of
||W_after - W_before|| / ||W_before|| by subtraction, equal up to float rounding.

Everything here runs on the CPU; ``BNVIZ_TEST_DEVICE=cuda`` runs the same comparisons on a
GPU (bench/gpu_session.sh does). There cuBLAS picks its kernels by shape, so a batched product
rounds differently from the per-variant ones (measured on an H100: 1e-7 relative after one
step, growing with the steps as training amplifies it, up to 25% after 50 steps of a chaotic
run): on a GPU the paths agree to float rounding over the first steps, not bit for bit, and
the bit-for-bit tests are CPU-only.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bnviz.config import Comparison, RunConfig
from bnviz.metrics import LAYER_METRICS
from bnviz.models import StackedMLP, build_model, stack_key
from bnviz.trainer import Trainer

STEPS = 50
DEVICE = os.environ.get("BNVIZ_TEST_DEVICE", "cpu")
EXACT = DEVICE == "cpu"  # bit for bit (see the module doc)
cpu_only = pytest.mark.skipif(not EXACT, reason="bit for bit on the CPU only: cuBLAS rounds batched products "
                                                "differently from per-variant ones")
# steps over which the paths must agree within float tolerance: all of them on the CPU; on a GPU
# the first few, before training amplifies rounding differences
CLOSE_STEPS = STEPS if EXACT else 5
RTOL = 1e-6 if EXACT else 1e-4
# width 25: a layer's 60 x 25 = 1,500 values are no multiple of 16 or 32, so each variant's
# block ends in the scalar tail of torch's elementwise CPU kernels with AVX2 and AVX-512 alike.
# At width 24 (1,440 = 45 x 32) these tests passed while one sigmoid call over the stacked pair
# rounded the paper's 100-unit layers differently from autograd on an AVX-512 machine.
BASE = [f"device={DEVICE}", "dataset=mnist-mini", "width=25", "depth=3", f"steps={STEPS}", "eval_every=20", "hist_every=5",
        "batch_size=60"]

COMPARISONS = {
    # the paper's Figure 1 pair: sigmoid, plain vs BN before the nonlinearity, SGD at lr 0.5
    "paper-fig1": ["variants=plain,bn", "bn.norm=batch", "lr=0.5", "init_scale=0.1"],
    # ReLU, BN before and after, Kaiming init
    "placement": ["variants=plain,before,after", "before.norm=batch", "after.norm=batch", "after.placement=after",
                  "activation=relu", "init=kaiming", "init_scale=1.0", "lr=0.1"],
    # momentum, weight decay, learning rates and BN settings that differ per variant, tanh
    "optimizers": ["variants=a,b,c", "activation=tanh", "optimizer=momentum", "weight_decay=0.001", "b.norm=batch",
                   "b.lr=0.2", "c.optimizer=sgd", "c.weight_decay=0", "b.bn_momentum=0.3", "b.bn_eps=0.001"],
    # activations that differ per variant (one stack still)
    "activations": ["variants=g,s", "g.activation=gelu", "s.activation=sigmoid", "s.norm=batch", "lr=0.3"],
}

PERCENTILE_METRICS = ("act_p15", "act_p50", "act_p85", "unit_p15", "unit_p50", "unit_p85")


def comparison(pairs: list[str], steps: int | None = None) -> Comparison:
    """BASE overridden by ``pairs`` (later keys win) and ``steps``."""
    fields = dict(p.split("=", 1) for p in BASE + pairs)
    if steps is not None:
        fields["steps"] = str(steps)
    return Comparison.from_flat([f"{k}={v}" for k, v in fields.items()])


def run(pairs: list[str], batched: bool, probes: bool = True, steps: int | None = None):
    trainer = Trainer(comparison(pairs, steps), batched=batched, probes=probes)
    assert trainer.batched == batched and trainer.device.type == DEVICE
    trainer.run()
    return trainer, trainer.log.snapshot()


@pytest.fixture(scope="module")
def both_paths():
    """name -> (snapshot of the stacked path, snapshot of the per-variant path, trainers)."""
    out = {}
    for name, pairs in COMPARISONS.items():
        fast, fast_snap = run(pairs, batched=True)
        slow, slow_snap = run(pairs, batched=False)
        out[name] = (fast_snap, slow_snap, fast, slow)
    return out


@pytest.mark.parametrize("name", list(COMPARISONS))
def test_stacked_path_records_the_same_numbers_as_the_per_variant_path(both_paths, name):
    fast, slow, _, _ = both_paths[name]
    assert list(fast.variants) == list(slow.variants)
    k = CLOSE_STEPS
    for vname in fast.variants:
        a, b = fast.variants[vname], slow.variants[vname]
        assert a.steps.tolist() == b.steps.tolist() == list(range(1, STEPS + 1))
        # losses within float tolerance (and on the CPU in fact identical)
        np.testing.assert_allclose(a.series["train_loss"][:k], b.series["train_loss"][:k], rtol=RTOL, atol=0)
        # percentiles: tight tolerance; moments, gradient and weight norms likewise
        for m in PERCENTILE_METRICS + ("act_mean", "act_std", "grad_norm", "weight_norm"):
            np.testing.assert_allclose(a.series[m][:k], b.series[m][:k], rtol=RTOL, atol=1e-7 if EXACT else 1e-5,
                                       err_msg=f"{vname} {m}")
        # the update measured as the optimizer's step rather than by subtracting weights
        np.testing.assert_allclose(a.series["update_ratio"][:k], b.series["update_ratio"][:k], rtol=1e-4,
                                   atol=0 if EXACT else 1e-6, err_msg=vname)
        assert a.eval_steps.tolist() == b.eval_steps.tolist()
        assert a.hist_steps.tolist() == b.hist_steps.tolist()
        if EXACT:  # evaluations and histograms come after 20 and 5 steps
            np.testing.assert_allclose(a.evals["test_loss"], b.evals["test_loss"], rtol=1e-6)
            assert np.array_equal(a.evals["test_acc"], b.evals["test_acc"])
            np.testing.assert_allclose(a.hists, b.hists, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", list(COMPARISONS))
@cpu_only
def test_stacked_path_is_bit_for_bit_the_per_variant_path(both_paths, name):
    """Stronger than the tolerances above, and what the app needs (see the module doc)."""
    fast, slow, _, _ = both_paths[name]
    for vname in fast.variants:
        a, b = fast.variants[vname], slow.variants[vname]
        for m in a.series:
            if m != "update_ratio":
                assert np.array_equal(a.series[m], b.series[m]), f"{vname} {m} differs"
        assert np.array_equal(a.evals["test_loss"], b.evals["test_loss"])
        assert np.array_equal(a.hists, b.hists)


@cpu_only
def test_models_and_optimizer_state_after_the_stacked_path_equal_the_per_variant_ones(both_paths):
    """The stacked path writes through to every variant's module and optimizer (views)."""
    _, _, fast, slow = both_paths["optimizers"]
    for vf, vs in zip(fast.variants, slow.variants):
        sf, ss = vf.model.state_dict(), vs.model.state_dict()
        assert sf.keys() == ss.keys()
        for key in sf:
            assert torch.equal(sf[key], ss[key]), f"{vf.name} {key}"
        for pf, ps in zip(vf.model.parameters(), vs.model.parameters()):
            assert torch.equal(pf.grad, ps.grad), vf.name
            bf = vf.optimizer.state.get(pf, {}).get("momentum_buffer")
            bs = vs.optimizer.state.get(ps, {}).get("momentum_buffer")
            assert (bf is None) == (bs is None), vf.name
            if bf is not None:
                assert torch.equal(bf, bs), vf.name


@cpu_only
def test_a_variant_trains_the_same_whatever_its_companions():
    """plain stacked with a BN variant == plain next to a layer-norm variant (not stackable)."""
    _, stacked = run(["variants=plain,bn", "bn.norm=batch"], batched=True)
    mixed_trainer, mixed = run(["variants=plain,bn", "bn.norm=layer"], batched=False)
    alone_trainer = Trainer(comparison(["variants=plain"]))
    assert alone_trainer.batched
    alone_trainer.run()
    alone = alone_trainer.log.snapshot()
    want = stacked.variants["plain"].series["train_loss"]
    assert np.array_equal(mixed.variants["plain"].series["train_loss"], want)
    assert np.array_equal(alone.variants["plain"].series["train_loss"], want)


def test_variants_that_finish_or_diverge_early_leave_the_stack_and_the_others_go_on():
    pairs = ["variants=plain,bn,late", "bn.norm=batch", "bn.steps=20", "late.norm=batch", "late.placement=after",
             "activation=relu", "init=kaiming", "init_scale=1.0", "plain.lr=1e6", "lr=0.1", "hist_every=1"]
    _, fast = run(pairs, batched=True, steps=40)
    _, slow = run(pairs, batched=False, steps=40)
    assert fast.variants["plain"].status == slow.variants["plain"].status == "diverged"
    assert fast.variants["plain"].diverged_at == slow.variants["plain"].diverged_at
    assert fast.variants["bn"].steps.tolist() == list(range(1, 21))
    assert fast.variants["late"].steps.tolist() == list(range(1, 41))
    for vname in fast.variants:
        a, b = fast.variants[vname], slow.variants[vname]
        assert a.status == b.status
        if EXACT:
            assert np.array_equal(a.series["train_loss"], b.series["train_loss"]), vname
        k = CLOSE_STEPS
        np.testing.assert_allclose(a.series["train_loss"][:k], b.series["train_loss"][:k], rtol=RTOL, err_msg=vname)
        np.testing.assert_allclose(a.series["act_p50"][:k], b.series["act_p50"][:k], rtol=RTOL,
                                   atol=1e-7 if EXACT else 1e-5)
        assert a.hist_steps.tolist() == b.hist_steps.tolist()


@pytest.mark.parametrize("batched", [True, False])
def test_probes_off_records_the_same_train_loss_and_nothing_else(batched):
    pairs = COMPARISONS["paper-fig1"]
    _, on = run(pairs, batched=batched)
    _, off = run(pairs, batched=batched, probes=False)
    for vname in on.variants:
        a, b = on.variants[vname], off.variants[vname]
        assert np.array_equal(a.series["train_loss"], b.series["train_loss"])
        assert np.array_equal(a.evals["test_loss"], b.evals["test_loss"])
        for m in LAYER_METRICS:  # not measured: NaN, not a made-up zero
            assert np.isnan(b.series[m]).all(), m
        assert len(b.hist_steps) == 0 and len(a.hist_steps) == STEPS // 5


def test_stack_key_says_which_variants_can_be_stacked():
    base = RunConfig(dataset="mnist-mini")
    assert stack_key(base) is not None
    assert stack_key(base.replace(norm="batch", placement="after", activation="relu", optimizer="momentum",
                                  lr=0.1, weight_decay=0.01)) == stack_key(base)
    for change in (dict(model="cnn"), dict(dropout=0.1), dict(optimizer="adam"), dict(norm="layer"),
                   dict(norm="batch_renorm"), dict(norm="noisy_batch"), dict(norm="ghost_batch")):
        assert stack_key(base.replace(**change)) is None, change
    assert stack_key(base.replace(width=32)) != stack_key(base)
    assert not Trainer(comparison(["variants=a,b", "b.optimizer=adam"])).batched
    assert not Trainer(comparison(["variants=a,b", "b.width=32"])).batched


# (width, batch): the paper's sizes, where on an Intel Xeon (MKL, AVX-512) the pair's first
# layer as one (60, 784) x (784, 200) product rounded otherwise than each variant's (60, 784) x
# (784, 100); small ones; and tiny ones, where torch's bmm multiplies in a loop of its own
# rather than in BLAS (fewer than 400 multiply-adds per matrix).
SHAPES = [(16, 8), (100, 60), (3, 2), (1, 1), (7, 5)]


def _one_step_against_autograd(device: str, width: int, batch: int, same, batched_products: bool | None = None):
    norms = ("none", "batch") if batch > 1 else ("none", "none")  # batch norm needs two examples
    cfgs = [RunConfig(dataset="mnist-mini", width=width, depth=2, norm=n, activation=a, lr=0.3)
            for n, a in zip(norms, ("sigmoid", "relu"))]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    ref = [build_model(c, (1, 28, 28), 10).to(device) for c in cfgs]
    models = [build_model(c, (1, 28, 28), 10).to(device) for c in cfgs]
    opts = [torch.optim.SGD(m.parameters(), lr=c.lr) for m, c in zip(models, cfgs)]
    stack = StackedMLP(models, cfgs, opts)
    assert stack.batched_products == (device != "cpu")
    if batched_products is not None:
        stack.batched_products = batched_products
    loss, stats = stack.step(x.flatten(1), y)
    assert stats.shape == (2, 2, 3) and stack.preacts.shape == (2, 2, batch, width)
    for i, (m, c) in enumerate(zip(ref, cfgs)):
        opt = torch.optim.SGD(m.parameters(), lr=c.lr)
        ref_loss = torch.nn.functional.cross_entropy(m(x), y)
        ref_loss.backward()
        grad_norms = [b.linear.weight.grad.norm() for b in m.hidden]
        opt.step()
        assert same(loss[i], ref_loss.detach())
        for pa, pb in zip(models[i].parameters(), m.parameters()):
            assert same(pa, pb)
        for layer, gn in enumerate(grad_norms):
            assert same(stats[layer, i, 0], gn)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("width,batch", SHAPES)
@pytest.mark.parametrize("device", sorted({"cpu", DEVICE}))
def test_stacked_mlp_step_matches_autograd_on_one_batch(device, width, batch):
    """One step by hand, checked against autograd and torch.optim.SGD directly (not via the
    trainer): equal on the CPU, equal to float rounding on a GPU (see the module doc)."""
    _one_step_against_autograd(device, width, batch, torch.equal if device == "cpu" else _close)


@pytest.mark.parametrize("width,batch", SHAPES)
def test_batched_products_a_gpu_runs_match_autograd_to_rounding_on_the_cpu_too(width, batch):
    """The GPU's one product per layer for all variants, run on the CPU where every CI has one."""
    _one_step_against_autograd("cpu", width, batch, _close, batched_products=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batched", [True, False])
def test_cuda_records_the_cpu_numbers_within_float_tolerance(batched):
    """Same seeds, same batches: cuBLAS and the CPU's BLAS round differently, so 50 steps of
    SGD at lr 0.5 drift apart by float rounding only, never by a different computation."""
    pairs = COMPARISONS["paper-fig1"]
    runs = {}
    for device in ("cpu", "cuda"):
        trainer = Trainer(comparison(pairs + [f"device={device}"]), batched=batched)
        assert trainer.device.type == device
        trainer.run()
        runs[device] = trainer.log.snapshot()
    for vname, a in runs["cuda"].variants.items():
        b = runs["cpu"].variants[vname]
        assert a.steps.tolist() == b.steps.tolist() == list(range(1, STEPS + 1))
        for m in ("train_loss", *PERCENTILE_METRICS, "act_mean", "act_std", "grad_norm", "weight_norm"):
            np.testing.assert_allclose(a.series[m], b.series[m], rtol=1e-3, atol=1e-4, err_msg=f"{vname} {m}")
        np.testing.assert_allclose(a.evals["test_loss"], b.evals["test_loss"], rtol=1e-3)
        np.testing.assert_allclose(a.hists, b.hists, rtol=0, atol=0.02)
