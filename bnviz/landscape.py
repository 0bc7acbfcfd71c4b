"""Santurkar et al.'s probes of internal covariate shift and of the loss landscape.

Santurkar, Tsipras, Ilyas, Madry 2018, "How Does Batch Normalization Help Optimization?"
(arXiv 1805.11604) test the original explanation of batch norm, that it works by reducing
"internal covariate shift" (ICS), and propose another: BN makes the loss landscape
smoother. This module computes both kinds of measurement at the current point of a
training run, as pure functions of (model, batch, learning rate).

``ics(model, x, y, lr)`` -- their optimization-based ICS measure (Section 2.2, Def. 2.1).
    For hidden layer i, G_i is the gradient of the batch loss w.r.t. the layer's weight
    W_i at the current parameters, and G'_i the same gradient after every layer BEFORE i
    (weights, biases, norm parameters) has taken its own plain SGD step with learning
    rate ``lr`` on the same batch, layer i and the later ones unchanged. So G' is the
    gradient layer i would see once the layers feeding it have moved: the shift of
    its input, measured by what it does to the layer's update. Returned per layer:
    ||G - G'||_2 (0 is ideal) and cos(G, G') (1 is ideal). Layer 1 has no earlier layers:
    distance 0 and cosine 1 by definition.
    Claim: by this measure, BN networks show similar or even WORSE ICS than standard
    ones (in a 25-layer deep linear net BN leaves G and G' almost uncorrelated), yet they
    train faster and reach lower loss. Whatever BN does, it is not reducing this shift.

``smoothness(model, x, y, lr, scales)`` -- their landscape probes (Section 3.1, Fig. 4).
    Along the gradient direction g = grad L(w) (all parameters), at step sizes
    eta = s * lr for s in ``scales`` (the paper spans about [1/2, 4] x lr):
    * ``loss_range``: max - min of L(w - eta g) over the scales, the current loss
      (s = 0) included -- how much the loss varies along the step direction;
    * ``grad_change``: max over the scales of ||grad L(w - eta g) - grad L(w)||_2,
      "gradient predictiveness" (small = the gradient here predicts the gradient
      there, so a larger step is safe);
    * ``beta_smoothness``: max over the scales of
      ||grad L(w - eta g) - grad L(w)||_2 / ||eta g||_2, the "effective
      beta-smoothness", a Lipschitz constant of the gradient along that segment.
    Claim: BN narrows the loss range and makes the gradients far more predictive and
    the landscape smoother -- early in training by close to two orders of magnitude in
    gradient change -- which is what lets BN networks take larger learning rates.

Both leave the model exactly as they found it: parameters, their ``.grad`` (None stays
None), buffers (BN running statistics, ``num_batches_tracked``, and the ``last_*`` values
of the custom norms), the training flag, and the state of the random generators (dropout
masks, noisy-BN draws), so a run with these probes trains exactly like one without.
(torch's global generators are saved and restored only for models that draw from them;
the trainer's models have generators of their own, and other threads share the global.)
Every pass runs through ``torch.func.functional_call`` on detached parameter tensors
and fresh copies of the buffers, and gradients come from ``torch.autograd.grad``, never
``.backward()``. In train mode, BN normalizes with the batch's statistics in every
pass, as in the training step. Each pass starts from the same generator states, so
dropout masks and noisy-BN noise are the same in all passes: the differences measured
are due to the parameter change alone. Forward hooks (the trainer's probes) do fire in
these passes; call them after the step's probes were read, or disable the probes
around the call as evaluation does.

Cost: these are extra forward/backward passes on the batch, not free by-products of the
training step, so the trainer computes them every k steps only:
* ``ics``: L passes for L hidden layers -- one forward/backward for every G and the
  earlier layers' steps, then one per layer 2..L (whose backward stops at W_i);
* ``smoothness``: 1 + (number of nonzero scales) passes, 6 with the default scales.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from bnviz.errors import ConfigError
from bnviz.models import Net

__all__ = ["SMOOTHNESS_SCALES", "ics", "ics_gradients", "smoothness"]

SMOOTHNESS_SCALES = (0.5, 1.0, 2.0, 3.0, 4.0)  # x lr: the paper's span of step sizes


# -- keeping the model untouched ----------------------------------------------------------

def _generators(model: nn.Module, device: torch.device) -> tuple[list[torch.Generator], bool]:
    """Every generator a forward pass of ``model`` may draw from (deduplicated), and
    whether that includes the global ones.

    The global default generators only where a module draws from them (a ``generator``
    of None, torch's own dropout): other threads use them too, so leave them alone
    where we can. bnviz's trainer gives every module its own generator.
    """
    gens: list[torch.Generator] = []
    uses_global = False
    for m in model.modules():
        g = getattr(m, "generator", None)
        if isinstance(g, torch.Generator):
            gens.append(g)
        elif (hasattr(m, "generator") and g is None) or isinstance(m, nn.modules.dropout._DropoutNd):
            uses_global = True
    if uses_global:
        gens.append(torch.default_generator)
        if device.type == "cuda":
            torch.cuda.init()
            gens.append(torch.cuda.default_generators[device.index if device.index is not None
                                                      else torch.cuda.current_device()])
    unique: dict[int, torch.Generator] = {}
    for g in gens:
        unique.setdefault(id(g), g)
    return list(unique.values()), uses_global


def _plain_state(m: nn.Module) -> dict[str, object]:
    # Tensor (or None) attributes a forward may reassign: BatchRenorm's last_r / last_d.
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and (v is None or isinstance(v, Tensor))}


@contextlib.contextmanager
def _untouched(model: nn.Module, device: torch.device) -> Iterator[Callable[[], None]]:
    """Restore buffers, tensor attributes and RNG states on exit; yield a rewind() for the RNGs.

    Passes get buffer copies, so in-place updates of running statistics never reach the
    model; this also undoes reassignments (a norm's ``last_*`` values, buffers that were
    None before) and the draws of dropout / noisy BN.
    """
    modules = list(model.modules())
    saved_buffers = [dict(m._buffers) for m in modules]
    saved_attrs = [_plain_state(m) for m in modules]
    gens, uses_global = _generators(model, device)
    rng = [g.get_state() for g in gens]
    mps_rng = torch.mps.get_rng_state() if uses_global and device.type == "mps" else None

    def rewind() -> None:
        for g, s in zip(gens, rng):
            g.set_state(s)
        if mps_rng is not None:
            torch.mps.set_rng_state(mps_rng)

    try:
        yield rewind
    finally:
        rewind()
        for m, bufs, attrs in zip(modules, saved_buffers, saved_attrs):
            m._buffers.clear()
            m._buffers.update(bufs)
            for k in [k for k in _plain_state(m) if k not in attrs]:
                delattr(m, k)
            for k, v in attrs.items():
                object.__setattr__(m, k, v)


# -- passes ---------------------------------------------------------------------------------

def _check_lr(lr: float) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ConfigError(f"lr: must be a finite number >= 0, got {lr!r}")
    return float(lr)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _loss_and_grads(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
                    x: Tensor, y: Tensor, wrt: Sequence[str], rewind: Callable[[], None]
                    ) -> tuple[Tensor, list[Tensor]]:
    """One forward/backward at ``params``: the loss and its gradients w.r.t. ``params[n]``, n in wrt.

    ``params[n]`` for n in ``wrt`` must be leaves that require grad; fresh buffer copies
    keep the model's running statistics out of it.
    """
    rewind()  # the same dropout masks / noise in every pass
    fresh = {n: b.clone() for n, b in buffers.items()}
    logits = functional_call(model, (params, fresh), (x,))
    loss = F.cross_entropy(logits, y)
    inputs = [params[n] for n in wrt]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return loss.detach(), [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, inputs)]


def _setup(model: nn.Module) -> tuple[dict[int, str], dict[str, Tensor], dict[str, Tensor]]:
    names = {id(p): n for n, p in model.named_parameters()}
    base = {n: p.detach() for n, p in model.named_parameters()}  # shares storage; never written
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    return names, base, buffers


def _leaves(base: dict[str, Tensor], wrt: Sequence[str], values: dict[str, Tensor] | None = None
            ) -> dict[str, Tensor]:
    """A parameter dict: ``values`` over ``base``, with the entries named in ``wrt`` as grad leaves."""
    params = dict(base)
    if values:
        params.update(values)
    for n in wrt:
        params[n] = params[n].detach().requires_grad_(True)
    return params


# -- ICS ------------------------------------------------------------------------------------

def ics_gradients(model: Net, x: Tensor, y: Tensor, lr: float) -> tuple[list[Tensor], list[Tensor]]:
    """G_i and G'_i of every hidden layer (see the module docstring), each shaped like W_i.

    G'_1 is G_1 (the same tensor). L forward/backward passes for L hidden layers.
    """
    lr = _check_lr(lr)
    names, base, buffers = _setup(model)
    blocks = [[names[id(p)] for p in b.parameters()] for b in model.hidden]  # per layer
    weights = [names[id(b.linear.weight)] for b in model.hidden]
    hidden = [n for block in blocks for n in block]
    with torch.enable_grad(), _untouched(model, _device(model)) as rewind:
        # pass 1: every G_i, and every earlier-layer gradient the SGD steps need
        _, grads = _loss_and_grads(model, _leaves(base, hidden), buffers, x, y, hidden, rewind)
        grad = dict(zip(hidden, grads))
        stepped = {n: base[n] - lr * grad[n] for n in hidden}  # every hidden parameter after its step
        g = [grad[w] for w in weights]
        g_after = [g[0]]
        moved: dict[str, Tensor] = {}
        for i in range(1, len(weights)):
            moved.update({n: stepped[n] for n in blocks[i - 1]})  # layers 1..i have stepped
            _, (gi,) = _loss_and_grads(model, _leaves(base, [weights[i]], moved), buffers, x, y,
                                       [weights[i]], rewind)
            g_after.append(gi)
    return g, g_after


def ics(model: Net, x: Tensor, y: Tensor, lr: float) -> tuple[Tensor, Tensor]:
    """Santurkar et al.'s ICS per hidden layer: (||G - G'||_2, cos(G, G')), two (L,) tensors.

    On the model's device and dtype, no host sync. Layer 1: exactly 0 and 1. Where G = G'
    (lr = 0 for instance) the cosine is 1; where one of them is zero and the other not, 0.
    """
    g, g_after = ics_gradients(model, x, y, lr)
    diff = torch.stack([torch.linalg.vector_norm(a - b) for a, b in zip(g, g_after)])  # (L,)
    dot = torch.stack([(a * b).sum() for a, b in zip(g, g_after)])
    norms = torch.stack([torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b) for a, b in zip(g, g_after)])
    tiny = torch.finfo(dot.dtype).tiny
    cos = torch.where(diff == 0, torch.ones_like(dot), (dot / norms.clamp_min(tiny)).clamp(-1, 1))
    diff[0], cos[0] = 0, 1  # no earlier layers: G' is G
    return diff, cos


# -- smoothness -----------------------------------------------------------------------------

def _global_norm(tensors: Sequence[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def smoothness(model: Net, x: Tensor, y: Tensor, lr: float,
               scales: Sequence[float] = SMOOTHNESS_SCALES) -> dict[str, float]:
    """Loss range, gradient change and effective beta-smoothness along -grad L at the current point.

    ``scales`` multiply ``lr`` into the step sizes eta; s = 0 costs nothing (it is the
    current point). 1 + (number of nonzero scales) forward/backward passes, one host sync.
    """
    lr = _check_lr(lr)
    scales = [float(s) for s in scales]
    if not all(math.isfinite(s) for s in scales):
        raise ConfigError(f"scales: must be finite numbers, got {scales!r}")
    _, base, buffers = _setup(model)
    every = list(base)
    with torch.enable_grad(), _untouched(model, _device(model)) as rewind:
        loss0, g = _loss_and_grads(model, _leaves(base, every), buffers, x, y, every, rewind)
        g_norm = _global_norm(g)
        zero = torch.zeros_like(loss0)
        losses, changes, betas = [loss0], [zero], [zero]
        for s in scales:
            eta = s * lr
            if eta == 0:  # w itself: loss0 and g again
                continue
            moved = {n: base[n] - eta * gn for n, gn in zip(every, g)}
            loss, gs = _loss_and_grads(model, _leaves(base, every, moved), buffers, x, y, every, rewind)
            change = _global_norm([a - b for a, b in zip(gs, g)])
            step = abs(eta) * g_norm
            losses.append(loss)
            changes.append(change)
            # g = 0 means w did not move and the gradient did not change: 0, not 0/0
            betas.append(torch.where(step > 0, change / step.clamp_min(torch.finfo(step.dtype).tiny), zero))
        losses_t = torch.stack(losses)
        out = torch.stack([losses_t.max() - losses_t.min(), torch.stack(changes).max(), torch.stack(betas).max()])
    loss_range, grad_change, beta = out.tolist()  # the one host sync
    return {"loss_range": loss_range, "grad_change": grad_change, "beta_smoothness": beta}
