"""Bjorck et al.'s depth probes: activation moments by depth and the output-layer gradient.

Bjorck, Gomes, Selman, Weinberger 2018, "Understanding Batch Normalization" (arXiv
1806.02375), look at an unnormalized deep network at initialization and find (their
Figures 4 and 6):
* the channel means and variances of the activations grow exponentially with depth;
* the gradient of the loss with respect to the output layer, drawn as a heatmap of
  classes x images of one batch, is nearly the same for every image: the network
  predicts one class whatever the input. With BN it varies by image.

``profile(model, x, y)`` measures both at the model's current weights, on one batch:
* per hidden layer (the output of each block ``hidden1`` .. ``hiddenN``, i.e. what the
  next layer receives), per unit (channel, for a CNN: over the batch and all positions)
  the batch mean m_c and the batch variance v_c (population, divided by N), then
  ``mean`` = the average over units of |m_c| and ``var`` = the average of v_c;
* ``grad``: d loss_i / d logits_i for every image i of the batch, where loss_i is that
  image's cross-entropy -- the column of image i is softmax(z_i) - onehot(y_i) -- as a
  (classes, images) matrix.

The numbers that make the heatmap concrete, defined once here (docs and tests use them):
* ``gradient_similarity(grad)``: the mean cosine similarity between the gradient columns
  of two different images. A column that is exactly zero (an image the net already
  predicts with certainty, correctly) has no direction and is left out. When a net gives
  every image probability ~1 on one class c, a column is e_c - e_y: two images of
  different labels (neither c) have cosine 1/2, so the number is about 0.55 with ten
  balanced classes; when predictions depend on the input it is near 0.
* ``majority_share(predicted)``: the fraction of the batch given the batch's most
  frequent predicted class (1.0: one class whatever the input; ~0.1: balanced).

``at_init(cfg)`` is the profile of the network ``cfg`` builds (the run's initial
weights, bit for bit) on the run's first training batch: what the trainer starts from;
``snapshot_profiles(snap)`` does it for every variant of a run, from the configurations
its snapshot records (the report's figure, ``figures.depth_growth``, draws these).
Like landscape.py (whose helpers it shares), ``profile`` leaves the model as it found it: it runs through
``torch.func.functional_call`` on copies of the buffers (BN running statistics do not
move) and restores the random generators (dropout masks, noisy-BN draws).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from bnviz import data as datasets
from bnviz.config import RunConfig
from bnviz.errors import ConfigError
from bnviz.landscape import _device, _untouched
from bnviz.models import Net, build_model, hidden_names
from bnviz.probes import Hook
from bnviz.runlog import RunSnapshot
from bnviz.trainer import Sampler

__all__ = ["DepthProfile", "at_init", "first_batch", "gradient_similarity", "majority_share", "profile",
           "snapshot_profiles"]


@dataclass(frozen=True)
class DepthProfile:
    """One network on one batch. Arrays: mean, var (L,); grad (classes, images); labels, predicted (images,)."""

    layers: list[str]
    mean: np.ndarray  # average over units of |batch mean of the unit|
    var: np.ndarray  # average over units of the batch variance of the unit
    grad: np.ndarray  # d loss_i / d logits_i, one column per image
    labels: np.ndarray
    predicted: np.ndarray

    @property
    def similarity(self) -> float:
        return gradient_similarity(self.grad)

    @property
    def majority(self) -> float:
        return majority_share(self.predicted)

    @property
    def growth(self) -> float:
        """Geometric-mean factor by which ``var`` grows per layer, first hidden layer to last."""
        if len(self.var) < 2 or not self.var[0] > 0:
            return float("nan")
        return float((self.var[-1] / self.var[0]) ** (1.0 / (len(self.var) - 1)))


def gradient_similarity(grad: np.ndarray) -> float:
    """Mean cosine similarity of the columns of two different images; NaN with fewer than two nonzero columns."""
    g = np.asarray(grad, dtype=np.float64)
    if g.ndim != 2:
        raise ConfigError(f"grad: expected a (classes, images) matrix, got shape {g.shape}")
    norms = np.linalg.norm(g, axis=0)
    keep = norms > 0
    n = int(keep.sum())
    if n < 2:
        return float("nan")
    u = g[:, keep] / norms[keep]  # (C, n) unit columns
    cos = u.T @ u  # (n, n)
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


def majority_share(predicted: np.ndarray) -> float:
    """Fraction of images given the most frequent predicted class."""
    p = np.asarray(predicted).reshape(-1)
    if not len(p):
        return float("nan")
    _, counts = np.unique(p, return_counts=True)
    return float(counts.max() / len(p))


def _check_batch(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ConfigError("batch: x and y must be tensors")
    if y.ndim != 1 or len(x) != len(y):
        raise ConfigError(f"batch: expected y of shape ({len(x)},) for {len(x)} images, got {tuple(y.shape)}")
    if len(y) < 2:  # a variance over one image is 0 by definition, and BN refuses it
        raise ConfigError(f"batch: needs at least 2 images, got {len(y)}")


def profile(model: Net, x: Tensor, y: Tensor) -> DepthProfile:
    """Activation moments by depth and per-image output gradients at the current weights.

    In the model's current mode (the trainer's models train in train mode, where BN uses
    the batch's statistics, as Bjorck et al. measure); the model is left untouched.
    """
    _check_batch(x, y)
    device = _device(model)
    x, y = x.to(device), y.to(device)  # a batch from first_batch (CPU) for a trainer's model on a GPU
    blocks = model.hidden
    outs: list[Tensor] = [torch.empty(0)] * len(blocks)

    def keep(i: int):
        def fn(_m, _inputs, out):
            outs[i] = out.detach()
        return fn

    hooks = [Hook(b, keep(i)) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad(), _untouched(model, device):
            params = {n: p.detach() for n, p in model.named_parameters()}
            buffers = {n: b.detach().clone() for n, b in model.named_buffers()}  # running stats stay put
            logits = functional_call(model, (params, buffers), (x,))
    finally:
        for h in hooks:
            h.remove()
    if logits.ndim != 2 or int(y.max()) >= logits.shape[1] or int(y.min()) < 0:
        raise ConfigError(f"batch: labels must lie in 0..{logits.shape[-1] - 1}, got {int(y.min())}..{int(y.max())}")
    means, variances = [], []
    for a in outs:
        dims = [d for d in range(a.ndim) if d != 1]  # per unit / channel: over images (and positions)
        means.append(a.double().mean(dim=dims).abs().mean())
        variances.append(a.double().var(dim=dims, unbiased=False).mean())
    z = logits.detach().double().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), z)  # (N, C): loss_i w.r.t. z_i
    return DepthProfile(
        layers=hidden_names(len(blocks)),
        mean=torch.stack(means).cpu().numpy(), var=torch.stack(variances).cpu().numpy(),
        grad=grad.T.cpu().numpy(), labels=y.cpu().numpy(), predicted=logits.argmax(1).cpu().numpy(),
    )


def first_batch(cfg: RunConfig) -> tuple[Tensor, Tensor]:
    """The run's first training batch (the trainer's sampler, same seed), on the CPU."""
    ds = datasets.load(cfg.dataset)
    if cfg.batch_size > len(ds.y_train):
        raise ConfigError(f"batch_size: must be <= the {len(ds.y_train):,} training examples of {cfg.dataset}, "
                          f"got {cfg.batch_size}")
    idx = Sampler(len(ds.y_train), cfg.batch_size, cfg.seed).next()
    return ds.x_train[idx], ds.y_train[idx]


@functools.lru_cache(maxsize=32)
def at_init(cfg: RunConfig) -> DepthProfile:
    """``profile`` of the network ``cfg`` describes, at its initial weights, on the run's first batch.

    Cached: it depends on ``cfg`` alone, and the live lab redraws its figure every refresh.
    """
    if not isinstance(cfg, RunConfig):
        raise ConfigError(f"config: expected a RunConfig, got {type(cfg).__name__}")
    ds = datasets.load(cfg.dataset)
    noise = torch.Generator().manual_seed(cfg.seed + 7919)  # as the trainer seeds dropout / noisy BN
    model = build_model(cfg, ds.input_shape, ds.n_classes, noise_generator=noise)
    model.train()
    x, y = first_batch(cfg)
    return profile(model, x, y)


def snapshot_profiles(snap: RunSnapshot) -> dict[str, DepthProfile]:
    """``at_init`` of every variant of a run whose configuration the snapshot holds.

    A snapshot read back from a metrics.csv (``runlog.from_csv``) has no configurations:
    its variants are left out rather than profiled with default settings.
    """
    return {name: at_init(RunConfig.from_dict(v.config)) for name, v in snap.variants.items() if v.config}
