"""The BN transform step by step, in float64 numpy, for the explainer page and its tests.

Everything follows Ioffe & Szegedy 2015: Algorithm 1 (forward), section 3 (the backward
formulas, computed here by hand and compared with torch autograd), section 3.1
(population statistics at inference; BN as one affine map) and section 3.2 (convolutions:
statistics per channel over N x H x W). Also Ghost BN (Hoffer et al. 2017): BN over slices
of the mini-batch, as bnviz.norms.GhostBatchNorm computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bnviz.norms import ghost_sizes


@dataclass(frozen=True)
class Forward:
    mean: np.ndarray  # (C,) mini-batch mean
    var: np.ndarray  # (C,) mini-batch variance (biased, as the paper's Algorithm 1)
    x_hat: np.ndarray  # (m, C) normalized
    y: np.ndarray  # (m, C) = gamma * x_hat + beta


def forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> Forward:
    """Algorithm 1 on a mini-batch x of shape (m, C)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).mean(axis=0)
    x_hat = (x - mean) / np.sqrt(var + eps)
    return Forward(mean, var, x_hat, gamma * x_hat + beta)


@dataclass(frozen=True)
class GhostForward:
    parts: list[tuple[int, int]]  # each ghost batch's rows, [start, stop)
    mean: np.ndarray  # (k, C) each ghost batch's mean
    var: np.ndarray  # (k, C) each ghost batch's (biased) variance
    y: np.ndarray  # (m, C) every row normalized by its own ghost batch, then scaled and shifted


def ghost_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, ghost_size: int,
                  eps: float = 1e-5) -> GhostForward:
    """Ghost BN in training mode on x (m, C): the rows split, in order, as GhostBatchNorm splits them
    (bnviz.norms.ghost_sizes), and each ghost batch goes through Algorithm 1 alone."""
    x = np.asarray(x, dtype=np.float64)
    sizes = ghost_sizes(len(x), ghost_size)
    ends = np.cumsum(sizes)
    parts = [(int(e - n), int(e)) for n, e in zip(sizes, ends)]
    each = [forward(x[a:b], gamma, beta, eps) for a, b in parts]
    return GhostForward(parts, np.stack([f.mean for f in each]), np.stack([f.var for f in each]),
                        np.concatenate([f.y for f in each]))


@dataclass(frozen=True)
class Grads:
    x: np.ndarray  # dl/dx (m, C)
    gamma: np.ndarray  # dl/dgamma (C,)
    beta: np.ndarray  # dl/dbeta (C,)
    x_hat: np.ndarray | None = None  # dl/dx_hat (m, C), by hand only
    var: np.ndarray | None = None  # dl/dvar (C,), by hand only
    mean: np.ndarray | None = None  # dl/dmu (C,), by hand only


def backward_by_hand(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dy: np.ndarray, eps: float = 1e-5) -> Grads:
    """The chain rule through BN exactly as the paper's section 3 writes it."""
    x = np.asarray(x, dtype=np.float64)
    m = x.shape[0]
    f = forward(x, gamma, beta, eps)
    inv_std = 1.0 / np.sqrt(f.var + eps)
    d_xhat = dy * gamma
    d_var = np.sum(d_xhat * (x - f.mean), axis=0) * -0.5 * inv_std ** 3
    d_mean = np.sum(d_xhat * -inv_std, axis=0) + d_var * np.sum(-2.0 * (x - f.mean), axis=0) / m
    d_x = d_xhat * inv_std + d_var * 2.0 * (x - f.mean) / m + d_mean / m
    return Grads(x=d_x, gamma=np.sum(dy * f.x_hat, axis=0), beta=np.sum(dy, axis=0),
                 x_hat=d_xhat, var=d_var, mean=d_mean)


def backward_autograd(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dy: np.ndarray, eps: float = 1e-5) -> Grads:
    """The same gradients from torch's own batch_norm and autograd (float64)."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    g = torch.tensor(gamma, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.batch_norm(xt, None, None, g, b, training=True, eps=eps)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    return Grads(x=xt.grad.numpy(), gamma=g.grad.numpy(), beta=b.grad.numpy())


def max_abs_diff(a: Grads, b: Grads) -> dict[str, float]:
    return {k: float(np.max(np.abs(getattr(a, k) - getattr(b, k)))) for k in ("x", "gamma", "beta")}


def running_update(run_mean: np.ndarray, run_var: np.ndarray, x: np.ndarray, momentum: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's moving averages: new = (1 - momentum) * old + momentum * batch, UNBIASED variance
    (m / (m - 1) times the batch variance, as the paper's section 3.1 prescribes)."""
    x = np.asarray(x, dtype=np.float64)
    m = x.shape[0]
    batch_var = x.var(axis=0) * m / (m - 1)
    return (1 - momentum) * run_mean + momentum * x.mean(axis=0), (1 - momentum) * run_var + momentum * batch_var


def inference_affine(gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float = 1e-5
                     ) -> tuple[np.ndarray, np.ndarray]:
    """BN at inference is one affine map y = scale * x + shift (section 3.1)."""
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - scale * mean


def conv_channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (biased) variance over N x H x W of x (N, C, H, W) (section 3.2)."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
