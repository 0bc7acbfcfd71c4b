"""Tests for bnviz.probes: percentiles, per-layer statistics, histograms and hook hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bnviz import data
from bnviz import probes as probes_module
from bnviz.config import Comparison, RunConfig
from bnviz.metrics import PERCENTILES
from bnviz.models import build_model
from bnviz.probes import HIST_BINS, HIST_EDGES, Hook, LayerProbes, percentiles, weight_stats
from bnviz.trainer import Trainer

IMAGE = (1, 28, 28)


class Point(nn.Module):
    """A stand-in block: only its ``preact`` point, which tests feed values through directly."""

    def __init__(self):
        super().__init__()
        self.preact = nn.Identity()


def feed(values: list[torch.Tensor], units: list[int] | None = None) -> LayerProbes:
    blocks = [Point() for _ in values]
    probes = LayerProbes(blocks, units or [0] * len(values))
    for b, v in zip(blocks, values):
        b.preact(v)
    return probes


def numpy_stats(z: np.ndarray, unit: int) -> np.ndarray:
    """p15, p50, p85, mean, std (population) of the whole layer, then p15..p85 of one unit/channel."""
    z = z.astype(np.float64)
    flat = z.reshape(-1)
    u = z[:, unit].reshape(-1)
    return np.concatenate([np.percentile(flat, PERCENTILES), [flat.mean(), flat.std()],
                           np.percentile(u, PERCENTILES)])


def all_forward_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# --------------------------------------------------------------------------- percentiles

@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 101, 1000, 1001])
def test_percentiles_equal_numpy_linear_method_on_random_tensors(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(4, n, generator=g, dtype=torch.float64)
    qs = (0, 1, 15, 33.3, 50, 85, 99, 100)
    got = percentiles(x, qs).numpy()
    np.testing.assert_allclose(got, np.percentile(x.numpy(), qs, axis=-1).T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [5, 9, 64, 333])
def test_percentiles_equal_numpy_with_ties(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randint(-3, 4, (3, n), generator=g).float()
    got = percentiles(x, PERCENTILES).numpy()
    np.testing.assert_allclose(got, np.percentile(x.numpy(), PERCENTILES, axis=-1).T, rtol=0, atol=1e-6)


def test_percentiles_of_a_one_dimensional_float32_tensor():
    x = torch.tensor([3.0, -1.0, 2.0, 10.0, 0.5], dtype=torch.float32)
    got = percentiles(x, PERCENTILES)
    assert got.shape == (3,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), np.percentile(x.numpy(), PERCENTILES), rtol=1e-6)


def test_percentiles_on_the_gpu_path_equal_the_cpu_path_bit_for_bit(monkeypatch):
    """The torch sort and one gather (what a GPU runs) give numpy's sort and indexing's numbers."""
    g = torch.Generator().manual_seed(3)
    rows = [torch.randn(6, n, generator=g) * 2 + 0.5 for n in (1, 2, 60, 6000)]
    on_cpu = [percentiles(x, PERCENTILES) for x in rows]
    monkeypatch.setattr(probes_module, "on_numpy", lambda device, dtype: False)
    probes_module._INTERP.clear()
    for x, want in zip(rows, on_cpu):
        assert torch.equal(percentiles(x, PERCENTILES), want)
    probes_module._INTERP.clear()


def test_tracked_units_of_observed_layers_follow_a_change_of_batch_size():
    """The cached gather positions of the tracked units are rebuilt when the shape changes."""
    g = torch.Generator().manual_seed(4)
    p = LayerProbes([], [1, 3])
    for n in (7, 5, 7):
        z = torch.randn(2, n, 4, generator=g)
        p.observe(z)
        got = p.activation_stats()[:, 5:]
        for layer, unit in enumerate([1, 3]):
            want = np.percentile(z[layer, :, unit].numpy(), PERCENTILES)
            np.testing.assert_allclose(got[layer].numpy(), want, rtol=1e-6, atol=1e-6)


@settings(max_examples=100, deadline=None, database=None)
@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=60),
       q=st.floats(0, 100))
def test_property_percentiles_match_numpy(values, q):
    x = torch.tensor(values, dtype=torch.float64)
    got = percentiles(x, (q,)).item()
    want = float(np.percentile(np.array(values, dtype=np.float64), q))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-6)


# --------------------------------------------------------------------------- activation stats

def test_activation_stats_of_fed_values_equal_numpy_per_layer_and_unit():
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(37, 5, generator=g) * 3 + 1, torch.rand(37, 5, generator=g), torch.randn(37, 5, generator=g)]
    units = [4, 0, 2]
    stats = feed(layers, units).activation_stats()
    assert stats.shape == (3, 8)
    for i, (z, u) in enumerate(zip(layers, units)):
        np.testing.assert_allclose(stats[i].numpy(), numpy_stats(z.numpy(), u), rtol=1e-5, atol=1e-5)


def test_activation_stats_of_layers_of_different_sizes_equal_numpy():
    g = torch.Generator().manual_seed(1)
    layers = [torch.randn(16, 3, 8, 8, generator=g), torch.randn(16, 3, 4, 4, generator=g) + 5,
              torch.randn(16, 3, 3, 3, generator=g) * 0.1]
    units = [1, 2, 0]
    stats = feed(layers, units).activation_stats()
    for i, (z, u) in enumerate(zip(layers, units)):
        np.testing.assert_allclose(stats[i].numpy(), numpy_stats(z.numpy(), u), rtol=1e-5, atol=1e-5)


def test_tracked_unit_stats_come_from_that_unit_only():
    z = torch.zeros(10, 4)
    z[:, 2] = torch.arange(10.0)  # only unit 2 varies
    stats = feed([z], [2]).activation_stats()[0]
    np.testing.assert_allclose(stats[5:].numpy(), np.percentile(np.arange(10.0), PERCENTILES), rtol=1e-6)
    stats0 = feed([z], [0]).activation_stats()[0]
    assert stats0[5:].abs().max().item() == 0


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_activation_stats_of_a_real_model_equal_numpy(model):
    cfg = RunConfig(model=model, depth=3, width=8, norm="batch" if model == "cnn" else "none",
                    activation="relu", init="kaiming", init_scale=1.0)
    net = build_model(cfg, IMAGE, 10)
    units = [7, 0, 3]
    seen: list[torch.Tensor] = []
    for b in net.hidden:
        b.preact.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    with LayerProbes(net.hidden, units) as probes:
        net(data.load("mnist-mini").x_train[:20])
        stats = probes.activation_stats()
        hists = probes.histograms()
    assert stats.shape == (3, 8) and hists.shape == (3, HIST_BINS)
    for i, (z, u) in enumerate(zip(seen, units)):
        np.testing.assert_allclose(stats[i].numpy(), numpy_stats(z.numpy(), u), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(hists[i].numpy(), numpy_hist(z.numpy()), rtol=0, atol=1e-6)


def test_probes_do_not_record_while_disabled():
    block = Point()
    probes = LayerProbes([block], [0])
    block.preact(torch.ones(4, 2))
    probes.enabled = False
    block.preact(torch.full((4, 2), 5.0))
    assert probes.activation_stats()[0, 3].item() == 1.0  # the mean of what it saw while enabled


# --------------------------------------------------------------------------- histograms

def numpy_hist(z: np.ndarray) -> np.ndarray:
    """Fractions per bin of the module's edges, values beyond the edges counted in the end bins."""
    edges = HIST_EDGES.numpy().astype(np.float64)
    flat = np.clip(z.reshape(-1).astype(np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(flat, bins=edges)
    return counts / counts.sum()


def test_hist_edges_are_increasing_symmetric_and_span_the_limit():
    e = HIST_EDGES.numpy()
    assert len(e) == HIST_BINS + 1
    assert (np.diff(e) > 0).all()
    np.testing.assert_allclose(e, -e[::-1], atol=1e-5)
    assert e[-1] == pytest.approx(100.0, rel=1e-5)


def test_histograms_sum_to_one_and_equal_numpy_counts():
    g = torch.Generator().manual_seed(2)
    layers = [torch.randn(50, 10, generator=g), torch.randn(50, 10, generator=g) * 30 + 10,
              torch.rand(50, 10, generator=g) * 0.01]
    hists = feed(layers).histograms()
    assert hists.shape == (3, HIST_BINS)
    np.testing.assert_allclose(hists.sum(1).numpy(), np.ones(3), atol=1e-6)
    for i, z in enumerate(layers):
        np.testing.assert_allclose(hists[i].numpy(), numpy_hist(z.numpy()), rtol=0, atol=1e-7)


def test_histogram_values_beyond_the_edges_fall_in_the_end_bins():
    z = torch.tensor([[-1e9, -500.0, -100.5, 1e9, 250.0, 0.3]])
    h = feed([z]).histograms()[0]
    assert h[0].item() == pytest.approx(3 / 6)
    assert h[-1].item() == pytest.approx(2 / 6)
    np.testing.assert_allclose(h.numpy(), numpy_hist(z.numpy()), atol=1e-7)


def test_histograms_of_layers_of_different_sizes_are_separate():
    a = torch.full((4, 3), 0.05)  # all in one bin
    b = torch.linspace(-50, 50, 2 * 3 * 5 * 5).reshape(2, 3, 5, 5)
    hists = feed([a, b]).histograms()
    assert (hists[0] > 0).sum().item() == 1
    np.testing.assert_allclose(hists[1].numpy(), numpy_hist(b.numpy()), atol=1e-7)


# --------------------------------------------------------------------------- weight stats

def test_weight_stats_are_grad_norm_weight_norm_and_update_ratio():
    w = torch.tensor([[3.0, 4.0]], requires_grad=True)
    w.grad = torch.tensor([[0.0, 2.0]])
    before = [torch.tensor([[3.0, 0.0]])]
    stats = weight_stats([w], before)
    np.testing.assert_allclose(stats.detach().numpy(), [[2.0, 5.0, 4.0 / 3.0]], rtol=1e-6)
    assert weight_stats([w], None)[0, 2].item() == 0.0


# --------------------------------------------------------------------------- hooks

def test_hook_removal_is_idempotent_and_context_managed():
    m = nn.Identity()
    with Hook(m, lambda *a: None) as h:
        assert len(m._forward_hooks) == 1
    assert len(m._forward_hooks) == 0 and h.handle is None
    h.remove()  # twice is safe


def test_layer_probes_context_removes_hooks_and_seen_tensors():
    blocks = [Point(), Point()]
    with LayerProbes(blocks, [0, 0]) as probes:
        assert probes.active
        assert all(len(b.preact._forward_hooks) == 1 for b in blocks)
    assert not probes.active
    assert all(len(b.preact._forward_hooks) == 0 for b in blocks)


def _tiny(**kw) -> Comparison:
    pairs = ["variants=plain,bn", "bn.norm=batch", "dataset=blobs", "width=8", "depth=2", "steps=30",
             "eval_every=10", "hist_every=5"] + [f"{k}={v}" for k, v in kw.items()]
    return Comparison.from_flat(pairs)


def test_hooks_are_gone_after_a_synchronous_run():
    trainer = Trainer(_tiny())
    assert all(v.probes.active for v in trainer.variants)
    assert all(all_forward_hooks(v.model) > 0 for v in trainer.variants)
    trainer.run()
    for v in trainer.variants:
        assert not v.probes.active
        assert all_forward_hooks(v.model) == 0


def test_hooks_are_gone_after_a_run_interrupted_by_an_exception(monkeypatch):
    trainer = Trainer(_tiny())

    def explode(self, sort=False):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(LayerProbes, "activation_stats", explode)
    with pytest.raises(RuntimeError, match="probe exploded"):
        trainer.run()
    for v in trainer.variants:
        assert not v.probes.active
        assert all_forward_hooks(v.model) == 0


def _failing_after(monkeypatch, calls_ok: int) -> None:
    original = LayerProbes.activation_stats
    calls = [0]

    def flaky(self, sort=False):
        calls[0] += 1
        if calls[0] > calls_ok:
            raise RuntimeError("probe exploded\nwith a second line")
        return original(self, sort)

    monkeypatch.setattr(LayerProbes, "activation_stats", flaky)


def test_threaded_run_that_raises_is_failed_with_message_and_hooks_removed(monkeypatch):
    _failing_after(monkeypatch, calls_ok=6)  # three lockstep steps of two variants, then fail
    # graphs off: a CUDA graph's replay does not call activation_stats, so the failure would never come
    trainer = Trainer(_tiny(), graphs=False)
    trainer.start()
    assert trainer.join(timeout=60)
    snap = trainer.log.snapshot()
    assert trainer.state == "failed" and snap.state == "failed"
    assert trainer.error is not None
    assert "RuntimeError" in trainer.error and "probe exploded" in trainer.error
    assert "\n" not in trainer.error  # one line for the page
    assert trainer.error in snap.notices
    assert {v.status for v in snap.variants.values()} == {"failed"}
    for v in trainer.variants:
        assert not v.probes.active
        assert all_forward_hooks(v.model) == 0


def test_threaded_failure_keeps_the_error_message_on_each_failed_variant(monkeypatch):
    _failing_after(monkeypatch, calls_ok=6)
    trainer = Trainer(_tiny(), graphs=False)
    trainer.start()
    assert trainer.join(timeout=60)
    snap = trainer.log.snapshot()
    for v in snap.variants.values():
        assert v.status == "failed"
        assert v.message == trainer.error
