"""MLP and small CNN builders with a normalization switch and its placement.

Every hidden layer is a ``Block`` named ``hidden1`` .. ``hiddenN``; the classifier is
``output``. Inside a block, ``preact`` (an identity) marks the input to the nonlinearity:
probes hook it, so what they see is what the paper's Figure 1 plots.

Initial weights are drawn per layer from a generator seeded by (seed, layer), so two
variants of a comparison start from identical weights wherever their layers have the
same shape, whatever else differs (norm, activation, optimizer, learning rate).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bnviz.config import RunConfig
from bnviz.norms import BatchRenorm, GhostBatchNorm, NoisyBatchNorm

OUTPUT = "output"
ACTIVATION_MODULES = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
CNN_POOLED_BLOCKS = 2  # max-pool after the first two conv blocks: 28 -> 14 -> 7


def hidden_names(depth: int) -> list[str]:
    """Stable layer names, so charts line up across variants."""
    return [f"hidden{i}" for i in range(1, depth + 1)]


class SeededDropout(nn.Module):
    """Dropout drawing its mask from a given generator (torch's global RNG is shared by threads)."""

    def __init__(self, p: float, generator: torch.Generator | None):
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """linear -> [norm] -> preact -> activation -> [norm] -> dropout [-> pool]."""

    def __init__(self, linear: nn.Module, norm: nn.Module | None, placement: str, act: nn.Module,
                 dropout: nn.Module, pool: nn.Module | None = None):
        super().__init__()
        self.linear, self.act, self.dropout = linear, act, dropout
        self.norm = norm if norm is not None else nn.Identity()
        self.norm_before = norm is not None and placement == "before"
        self.norm_after = norm is not None and placement == "after"
        self.preact = nn.Identity()  # the probe point
        self.pool = pool if pool is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        if self.norm_before:
            z = self.norm(z)
        a = self.act(self.preact(z))
        if self.norm_after:
            a = self.norm(a)
        return self.pool(self.dropout(a))


class Net(nn.Module):
    """Hidden blocks in order, then the classifier; ``layers`` maps names to modules."""

    def __init__(self, blocks: list[Block], head: nn.Module, flatten_input: bool):
        super().__init__()
        self.layers = nn.ModuleDict({n: b for n, b in zip(hidden_names(len(blocks)), blocks)})
        self.layers[OUTPUT] = head
        self.flatten_input = flatten_input

    @property
    def hidden(self) -> list[Block]:
        return [m for n, m in self.layers.items() if n != OUTPUT]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten_input:
            x = x.flatten(1)  # (N, 1, 28, 28) -> (N, 784)
        for layer in self.layers.values():
            x = layer(x)
        return x


def make_norm(cfg: RunConfig, conv: bool, generator: torch.Generator | None) -> nn.Module | None:
    c, eps, mom = cfg.width, cfg.bn_eps, cfg.bn_momentum
    if cfg.norm == "none":
        return None
    if cfg.norm == "batch":
        return (nn.BatchNorm2d if conv else nn.BatchNorm1d)(c, eps=eps, momentum=mom)
    if cfg.norm == "layer":
        # LayerNorm of a conv layer normalizes over (C, H, W): GroupNorm with one group.
        return nn.GroupNorm(1, c, eps=eps) if conv else nn.LayerNorm(c, eps=eps)
    if cfg.norm == "group":
        return nn.GroupNorm(cfg.groups, c, eps=eps)
    if cfg.norm == "batch_renorm":
        w = cfg.renorm_warmup
        # The paper relaxes rmax by step 40k and dmax by 25k after a 5k warm-up: same ratios.
        return BatchRenorm(c, eps=eps, momentum=mom, warmup_steps=w, rmax_ramp_end=8 * w, dmax_ramp_end=5 * w)
    if cfg.norm == "noisy_batch":
        return NoisyBatchNorm(c, eps=eps, momentum=mom, generator=generator)
    if cfg.norm == "ghost_batch":
        return GhostBatchNorm(c, ghost_size=cfg.ghost_size, eps=eps, momentum=mom)
    raise AssertionError(cfg.norm)  # config validation makes this unreachable


def _init_linear(layer: nn.Module, cfg: RunConfig, gen: torch.Generator) -> None:
    w = layer.weight
    if cfg.init == "normal":
        nn.init.normal_(w, 0.0, cfg.init_scale, generator=gen)
    elif cfg.init == "xavier":
        nn.init.xavier_normal_(w, gain=cfg.init_scale, generator=gen)
    elif cfg.init == "kaiming":
        std = cfg.init_scale * math.sqrt(2.0 / nn.init._calculate_correct_fan(w, "fan_in"))
        nn.init.normal_(w, 0.0, std, generator=gen)
    else:  # torch's own default for Linear and Conv2d, drawn from our generator
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
    if layer.bias is not None:
        if cfg.init == "default":
            bound = 1 / math.sqrt(nn.init._calculate_correct_fan(w, "fan_in"))
            nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
        else:
            nn.init.zeros_(layer.bias)


def build_model(cfg: RunConfig, input_shape: tuple[int, ...], n_classes: int,
                noise_generator: torch.Generator | None = None) -> Net:
    """The network ``cfg`` describes, on the CPU, with reproducible initial weights.

    ``noise_generator`` drives dropout masks and noisy-BN draws during training.
    """
    conv = cfg.model == "cnn"
    # A bias before a norm that subtracts the mean is dead weight: beta replaces it.
    bias = not (cfg.norm != "none" and cfg.placement == "before")
    blocks: list[Block] = []
    fan_in = input_shape[0] if conv else math.prod(input_shape)
    for i in range(cfg.depth):
        if conv:
            linear = nn.Conv2d(fan_in, cfg.width, 3, padding=1, bias=bias)
            pool = nn.MaxPool2d(2) if i < CNN_POOLED_BLOCKS else None
        else:
            linear, pool = nn.Linear(fan_in, cfg.width, bias=bias), None
        _init_linear(linear, cfg, _layer_generator(cfg.seed, i))
        blocks.append(Block(linear, make_norm(cfg, conv, noise_generator), cfg.placement,
                            ACTIVATION_MODULES[cfg.activation](), SeededDropout(cfg.dropout, noise_generator), pool))
        fan_in = cfg.width
    head_linear = nn.Linear(cfg.width, n_classes)
    _init_linear(head_linear, cfg, _layer_generator(cfg.seed, cfg.depth))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), head_linear) if conv else head_linear
    return Net(blocks, head, flatten_input=not conv)


def _layer_generator(seed: int, layer: int) -> torch.Generator:
    # Per-layer streams: a variant with more layers or another norm still shares the
    # weights of every layer it has in common with its partner.
    return torch.Generator().manual_seed(seed * 1009 + layer)


def weight_of(module: nn.Module) -> torch.Tensor:
    """The weight matrix of a hidden block or the head (the one the gradient metrics use)."""
    if isinstance(module, Block):
        return module.linear.weight
    return module[-1].weight if isinstance(module, nn.Sequential) else module.weight


# ------------------------------------------------------------------------------ stacked MLPs
# Variants of one comparison that are MLPs of the same shape train as ONE stacked network:
# weights of the same layer are stacked along a leading variant dim. On the CPU each variant's
# products are autograd's own calls on its slices; on a GPU every layer of every variant is one
# batched matrix product (the first layer, which all variants feed the same batch, a single
# (N, D) x (D, V*C) product). Forward and backward are written out by hand
# with the same aten kernels autograd would call (batch norm, activation backward), so there
# is no autograd graph, no per-module Python, no hooks. Each variant's nn.Module keeps working:
# its parameters, gradients, BN buffers and SGD momentum buffers become views of the stacks, so
# evaluation, inspection and the optimizer's state see every update.

STACKED_ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu")
STACKED_NORMS = ("none", "batch")
STACKED_OPTIMIZERS = ("sgd", "momentum")


def stack_key(cfg: RunConfig) -> tuple | None:
    """What variants must share to be stacked, or None if this variant cannot be.

    Stacked: MLPs without dropout, norm none or batch (either placement), sgd or momentum.
    Learning rate, init, weight decay, norm, placement, BN momentum / eps, activation,
    step counts and probe settings may differ between stacked variants.
    """
    if (cfg.model != "mlp" or cfg.dropout != 0 or cfg.norm not in STACKED_NORMS
            or cfg.activation not in STACKED_ACTIVATIONS or cfg.optimizer not in STACKED_OPTIMIZERS
            or getattr(cfg, "landscape_every", 0)):  # extra per-variant autograd passes: the per-variant path
        return None
    return (cfg.dataset, cfg.batch_size, cfg.seed, cfg.depth, cfg.width, cfg.device)


def _act_forward(name: str, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if name == "sigmoid":
        return torch.sigmoid(z, out=out)
    if name == "tanh":
        return torch.tanh(z, out=out)
    if name == "relu":
        return torch.ops.aten.relu.out(z, out=out)
    return torch.ops.aten.gelu.out(z, out=out)


def _act_backward(name: str, grad: torch.Tensor, out: torch.Tensor, inp: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    """d act(inp) given d out, written into ``into``: the kernels autograd uses (sigmoid/tanh/relu from the output)."""
    aten = torch.ops.aten
    if name == "sigmoid":
        return aten.sigmoid_backward.grad_input(grad, out, grad_input=into)
    if name == "tanh":
        return aten.tanh_backward.grad_input(grad, out, grad_input=into)
    if name == "relu":
        return aten.threshold_backward.grad_input(grad, out, 0, grad_input=into)
    return aten.gelu_backward.grad_input(grad, inp, grad_input=into)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """[0, 1, 3] -> [(0, 2), (3, 4)]: contiguous index ranges, so copies are slices."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


class StackedMLP:
    """``V`` MLP variants of one shape (see ``stack_key``) stepped together.

    ``step(x, y)`` takes one optimizer step of every variant on the batch (x, y) and returns
    the (V,) train losses; with ``stats=True`` it also leaves every hidden layer's
    pre-activation in ``self.preacts`` (L, V, N, C) and returns (L, V, 3) weight statistics
    (||dL/dW||, ||W|| after the step, ||update|| / ||W|| before it). Nothing is copied to the
    host, so on a GPU nothing waits.

    On the CPU each variant's numbers are bit for bit those of its own autograd pass with
    torch.optim.SGD (tests/test_fast_path.py): its products are autograd's own calls on the
    same shapes, and the loss, its gradient, batch norm and the optimizer use the same kernels
    as autograd and SGD. So a variant does not train differently when its companions change.
    """

    def __init__(self, models: list[Net], cfgs: list[RunConfig], optimizers: list[torch.optim.Optimizer]):
        keys = {stack_key(c) for c in cfgs}
        if len(keys) != 1 or None in keys:
            raise ValueError("StackedMLP: variants must be stackable MLPs of one shape")
        self.V, self.L, self.C = V, L, C = len(models), cfgs[0].depth, cfgs[0].width
        self.models, self.cfgs, self.optimizers = models, cfgs, optimizers
        hidden = [m.hidden for m in models]
        heads = [m.layers[OUTPUT] for m in models]
        self.device, self.dtype = heads[0].weight.device, heads[0].weight.dtype
        self.D, self.K = hidden[0][0].linear.weight.shape[1], heads[0].weight.shape[0]
        self.acts = [c.activation for c in cfgs]
        # One activation call for the whole (V, N, C) block only off the CPU. On the CPU torch's
        # elementwise kernels do a block's tail (its last n mod 2 x vector width elements) in
        # scalar code, which rounds differently: with AVX-512 a variant's 60 x 100 values end
        # in such a tail when alone and not inside the pair's block, and the variant would train
        # differently beside a companion. Per variant, each call sees what autograd's does.
        self.one_act = self.acts[0] if len(set(self.acts)) == 1 and self.device.type != "cpu" else None
        # Matrix products per variant on the CPU too, each the very call autograd makes. A BLAS
        # picks its kernel, and with it the order of the sums, by shape: on an Intel Xeon (MKL,
        # AVX-512) the pair's first layer as one (60, 784) x (784, 200) product rounded otherwise
        # than each variant's (60, 784) x (784, 100), and torch's bmm multiplies matrices of
        # fewer than 400 multiply-adds in a loop of its own, not in the BLAS. Off the CPU the
        # variants share one batched product per layer: fewer kernel launches, equal to rounding.
        self.batched_products = self.device.type != "cpu"
        self.bn_before = [v for v, c in enumerate(cfgs) if c.norm == "batch" and c.placement == "before"]
        self.bn_after = [v for v, c in enumerate(cfgs) if c.norm == "batch" and c.placement == "after"]
        self.plain_runs = _runs([v for v in range(V) if v not in self.bn_before])  # preact = linear output
        self.bias_runs = _runs([v for v in range(V) if hidden[v][0].linear.bias is not None])

        # One flat buffer holds every parameter of every variant, another their gradients, so
        # that an SGD step shared by all variants is one elementwise op (bit for bit the
        # per-tensor ops of torch.optim.SGD). The stacks are views of it.
        shapes = ([(V, C, self.D)] + [(V, C, C)] * (L - 1) + [(V, self.K, C)]  # W1..WL, Wo
                  + [(V, C)] * L + [(V, self.K)]  # b1..bL, bo
                  + [(V, C)] * (2 * L))  # gamma1..L, beta1..L (used by batch-norm variants)
        total = sum(math.prod(sh) for sh in shapes)
        kw = dict(device=self.device, dtype=self.dtype)
        self.flat, self.flat_grad = torch.zeros(total, **kw), torch.zeros(total, **kw)

        def views(buf: torch.Tensor) -> list[torch.Tensor]:
            out, at = [], 0
            for sh in shapes:
                n = math.prod(sh)
                out.append(buf[at: at + n].view(sh))
                at += n
            return out

        self.params, self.grads = views(self.flat), views(self.flat_grad)
        self.W, self.Wo = self.params[:L], self.params[L]
        self.b, self.bo = self.params[L + 1: 2 * L + 1], self.params[2 * L + 1]
        self.gamma, self.beta = self.params[2 * L + 2: 3 * L + 2], self.params[3 * L + 2:]
        self.GW, self.GWo = self.grads[:L], self.grads[L]
        self.Gb, self.Gbo = self.grads[L + 1: 2 * L + 1], self.grads[2 * L + 1]
        self.Gg, self.Gbe = self.grads[2 * L + 2: 3 * L + 2], self.grads[3 * L + 2:]
        for g in self.gamma:
            g.fill_(1.0)
        self.rmean = [torch.zeros(V, C, **kw) for _ in range(L)]
        self.rvar = [torch.ones(V, C, **kw) for _ in range(L)]
        self.nbt = torch.zeros(V, L, dtype=torch.long, device=self.device)
        self.nbt_step = torch.zeros(V, L, dtype=torch.long, device=self.device)

        # optimizer settings; variants that share them all are updated together
        self.momentum = [0.9 if c.optimizer == "momentum" else 0.0 for c in cfgs]
        self.weight_decay = [c.weight_decay for c in cfgs]
        self.flat_buf = torch.zeros(total, **kw) if any(self.momentum) else None
        self.bufs = views(self.flat_buf) if self.flat_buf is not None else None

        # Every module now reads and writes the stacks: parameters, grads, BN buffers and the
        # optimizer's momentum buffers become views (a restacked variant's state carries over).
        def tie(v: int, param: torch.Tensor | None, stacked: torch.Tensor) -> None:
            if param is None:
                return
            i = next(i for i, p in enumerate(self.params) if p is stacked)
            self.params[i][v].copy_(param.detach())
            param.data = self.params[i][v]
            param.grad = self.grads[i][v]
            if self.bufs is not None and self.momentum[v]:
                state = optimizers[v].state[param]
                old = state.get("momentum_buffer")
                if old is not None:
                    self.bufs[i][v].copy_(old)
                state["momentum_buffer"] = self.bufs[i][v]  # zero before the first step: 0.9 * 0 + g = g

        for v, (h, head) in enumerate(zip(hidden, heads)):
            for l in range(L):
                tie(v, h[l].linear.weight, self.W[l])
                tie(v, h[l].linear.bias, self.b[l])
                n = h[l].norm
                if isinstance(n, nn.BatchNorm1d):
                    tie(v, n.weight, self.gamma[l])
                    tie(v, n.bias, self.beta[l])
                    for stacked, buf in ((self.rmean[l], n.running_mean), (self.rvar[l], n.running_var),
                                         (self.nbt[v, l], n.num_batches_tracked)):
                        target = stacked[v] if stacked.dim() == 2 else stacked
                        target.copy_(buf)
                        buf.data = target
                    self.nbt_step[v, l] = 1
            tie(v, head.weight, self.Wo)
            tie(v, head.bias, self.bo)
        self.any_bn = bool(self.bn_before or self.bn_after)
        # per-(layer, variant) views for the weight statistics, in (l, v) order
        self._w_views = [self.W[l][v] for l in range(L) for v in range(V)]
        self._g_views = [self.GW[l][v] for l in range(L) for v in range(V)]
        self._per_variant_cache: dict[tuple, torch.Tensor] = {}
        self.preacts: torch.Tensor | None = None  # (L, V, N, C), filled by step()
        self._n = 0
        self._w_params = [h[l].linear.weight for h in hidden for l in range(L)]
        self._w_norm: tuple[torch.Tensor, tuple[int, ...]] | None = None  # ||W|| after the last step
        # False: measure ||W|| before each step rather than reuse the host's cache of it (a CUDA
        # graph replays the step without the host, so it cannot know whether the cache holds)
        self.cache_w_norm = True

    # ------------------------------------------------------------------------------------
    def _stack_view(self, flat: torch.Tensor, i: int) -> torch.Tensor:
        """Stack ``i`` (as in self.params) of a flat buffer laid out like self.flat."""
        p = self.params[i]
        start = p.storage_offset() - self.flat.storage_offset()
        return flat[start: start + p.numel()].view(p.shape)

    def _vector(self, values: list[float]) -> torch.Tensor:
        key = tuple(values)
        t = self._per_variant_cache.get(key)
        if t is None:
            t = self._per_variant_cache[key] = torch.tensor(values, dtype=self.dtype, device=self.device)
        return t

    def _prepare(self, n: int) -> None:
        """Buffers and views for batches of ``n``, made once: a step then allocates almost nothing
        (every op writes into its buffer), and its views are not re-created each step."""
        V, L, C, K = self.V, self.L, self.C, self.K
        kw = dict(device=self.device, dtype=self.dtype)
        empty = lambda *shape: torch.empty(*shape, **kw)  # noqa: E731
        self._n = n
        self.preacts = P = empty(L, V, n, C)  # what the probes read: the input of each nonlinearity
        self._z = [P[l] if not self.bn_before else empty(V, n, C) for l in range(L)]  # linear outputs
        self._a = [empty(V, n, C) for _ in range(L)]  # activation outputs
        self._h = [self._a[l] if not self.bn_after else empty(V, n, C) for l in range(L)]  # next layer's input
        self._logits, self._lsm = empty(V, n, K), empty(V, n, K)
        self._dlsm, self._dlogits = empty(V, n, K), empty(V, n, K)
        self._dh, self._dz, self._scratch = empty(V, n, C), empty(V, n, C), empty(V, n, C)
        if self.batched_products:
            self._z1 = empty(n, V * C)  # the first layer's product for all variants, (N, V*C)
            self._z1_t = self._z1.view(n, V, C).transpose(0, 1)
            self._dz1 = empty(n, V * C)  # its gradient, transposed back for the weight-gradient product
            self._dz1_t = self._dz1.view(n, V, C).transpose(0, 1)
            self._b1 = self.b[0].view(-1)
            self._w1t = self.W[0].view(V * C, -1).t()
            self._gw1 = self.GW[0].view(V * C, -1)
            self._bias = [b.unsqueeze(1) for b in self.b]
            self._wt = [w.transpose(1, 2) for w in self.W]
            self._bo, self._wot = self.bo.unsqueeze(1), self.Wo.transpose(1, 2)
        else:
            # per layer (the output layer last), per variant: autograd's products for
            # F.linear(input, W, b): forward addmm(b, input, W.t()), weight gradient
            # dz.t().mm(input), input gradient dz.mm(W). The inputs are self._h, and the batch
            # itself for the first layer (step() passes it).
            outs, grads = self._z + [self._logits], [self._dz] * L + [self._dlogits]
            Ws, Gs, bs = self.W + [self.Wo], self.GW + [self.GWo], self.b + [self.bo]
            self._fwd_mm = [[(bs[l][v], Ws[l][v].t(), outs[l][v]) for v in range(V)] for l in range(L + 1)]
            self._gw_mm = [[(grads[l][v].t(), Gs[l][v]) for v in range(V)] for l in range(L + 1)]
            self._dh_mm = [[(grads[l][v], Ws[l][v], self._dh[v]) for v in range(V)] for l in range(1, L + 1)]
            self._h_v = [[h[v] for v in range(V)] for h in self._h]
        self._gb_runs = [[(self._dz[a:b], self.Gb[l][a:b]) for a, b in self.bias_runs] for l in range(L)]
        self._plain_copies = [[(P[l, a:b], self._z[l][a:b]) for a, b in self.plain_runs] for l in range(L)]
        after = set(self.bn_after)
        self._unnormed_copies = [[(self._h[l][a:b], self._a[l][a:b]) for a, b in _runs([v for v in range(V)
                                                                                      if v not in after])]
                                 for l in range(L)] if self.bn_after else [[] for _ in range(L)]
        # per (layer, variant) with batch norm: input, output, saved stats, parameters, grads, eps, momentum
        self._bn_before_ops = [[self._bn_op(l, v, self._z[l][v], P[l, v]) for v in self.bn_before] for l in range(L)]
        self._bn_after_ops = [[self._bn_op(l, v, self._a[l][v], self._h[l][v]) for v in self.bn_after]
                              for l in range(L)]
        self._dz_v = [self._dz[v] for v in range(V)]
        self._dh_v = [self._dh[v] for v in range(V)]
        # each layer's activation calls, forward and backward: one for the block, or one per
        # variant (see one_act), their views made here rather than at every step
        blocks = [(self.one_act, P[l], self._a[l], self._dh, self._dz) for l in range(L)] if self.one_act else None
        self._act_calls = [blocks[l:l + 1] if blocks else
                           [(self.acts[v], P[l, v], self._a[l][v], self._dh_v[v], self._dz_v[v]) for v in range(V)]
                           for l in range(L)]
        self._scratch_v = [self._scratch[v] for v in range(V)]
        self._lsm_v = [self._lsm[v] for v in range(V)]
        one = torch.ones((), **kw)
        self._dlogit_target = (-(one / n)).expand(V, n, 1)  # nll_loss's gradient at the target, as autograd has it

    def _bn_op(self, l: int, v: int, inp: torch.Tensor, out: torch.Tensor) -> tuple:
        kw = dict(device=self.device, dtype=self.dtype)
        c = self.cfgs[v]
        return (v, inp, out, torch.empty(self.C, **kw), torch.empty(self.C, **kw), self.gamma[l][v], self.beta[l][v],
                self.rmean[l][v], self.rvar[l][v], self.Gg[l][v], self.Gbe[l][v], c.bn_momentum, c.bn_eps)

    @staticmethod
    def _bn_forward(ops: list[tuple]) -> None:
        bn = torch.ops.aten.native_batch_norm.out
        for _, inp, out, sm, si, g, b, rm, rv, _, _, mom, eps in ops:
            bn(inp, g, b, rm, rv, True, mom, eps, out=out, save_mean=sm, save_invstd=si)

    @staticmethod
    def _bn_backward(ops: list[tuple], grad_v: list[torch.Tensor], scratch_v: list[torch.Tensor]) -> None:
        """grad_v[v] <- d input of each BN given d output grad_v[v]; its gamma / beta grads into place."""
        bwd = torch.ops.aten.native_batch_norm_backward.out
        for v, inp, _, sm, si, g, _, rm, rv, gg, gb, _, eps in ops:
            bwd(grad_v[v], inp, g, rm, rv, sm, si, True, eps, [True, True, True],
                out0=scratch_v[v], out1=gg, out2=gb)
            grad_v[v].copy_(scratch_v[v])

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor, stats: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        V, L = self.V, self.L
        N = x.shape[0]
        x = x.reshape(N, -1)
        if self.preacts is None or self._n != N:
            self._prepare(N)
        # forward ------------------------------------------------------------------------
        for l in range(L):
            self._linear(l, x)
            if self.bn_before:
                for dst, src in self._plain_copies[l]:
                    dst.copy_(src)
                self._bn_forward(self._bn_before_ops[l])
            for act, z, a, _, _ in self._act_calls[l]:
                _act_forward(act, z, a)
            if self.bn_after:
                for dst, src in self._unnormed_copies[l]:
                    dst.copy_(src)
                self._bn_forward(self._bn_after_ops[l])
        self._linear(L, x)  # the logits, (V, N, K)
        lsm = torch.ops.aten._log_softmax.out(self._logits, 2, False, out=self._lsm)
        # the loss and its gradient exactly as F.cross_entropy and autograd compute them
        nll = torch.ops.aten.nll_loss_forward
        loss = torch.stack([nll(self._lsm_v[v], y, None, 1, -100)[0] for v in range(V)])
        self._dlsm.zero_().scatter_(2, y.view(1, N, 1).expand(V, N, 1), self._dlogit_target)
        d = torch.ops.aten._log_softmax_backward_data.out(self._dlsm, lsm, 2, self.dtype, out=self._dlogits)
        # backward -----------------------------------------------------------------------
        self._linear_backward(L, x)
        torch.sum(d, dim=1, out=self.Gbo)
        for l in range(L - 1, -1, -1):
            if self.bn_after:
                self._bn_backward(self._bn_after_ops[l], self._dh_v, self._scratch_v)
            for act, z, a, g, into in self._act_calls[l]:
                _act_backward(act, g, a, z, into)
            if self.bn_before:
                self._bn_backward(self._bn_before_ops[l], self._dz_v, self._scratch_v)
            for src, gbias in self._gb_runs[l]:  # variants without this bias keep a zero gradient
                torch.sum(src, dim=1, out=gbias)
            self._linear_backward(l, x)
        if self.any_bn:
            self.nbt.add_(self.nbt_step)
        return loss, self._update(stats)

    def _linear(self, l: int, x: torch.Tensor) -> None:
        """Layer l's product (l == L: the output layer's) for every variant, into its buffer."""
        L = self.L
        if not self.batched_products:
            inputs = [x] * self.V if l == 0 else self._h_v[l - 1]
            for (b, wt, out), inp in zip(self._fwd_mm[l], inputs):
                torch.addmm(b, inp, wt, out=out)
        elif l == 0:  # every variant sees the same x: one (N, D) x (D, V*C) product
            torch.addmm(self._b1, x, self._w1t, out=self._z1)
            self._z[0].copy_(self._z1_t)
        elif l < L:
            torch.baddbmm(self._bias[l], self._h[l - 1], self._wt[l], out=self._z[l])
        else:
            torch.baddbmm(self._bo, self._h[L - 1], self._wot, out=self._logits)

    def _linear_backward(self, l: int, x: torch.Tensor) -> None:
        """Layer l's weight gradient from the gradient of its output (self._dlogits for the
        output layer, else self._dz) and, but for the first layer, its input's into self._dh."""
        if not self.batched_products:
            inputs = [x] * self.V if l == 0 else self._h_v[l - 1]
            for (grad_t, into), inp in zip(self._gw_mm[l], inputs):
                torch.mm(grad_t, inp, out=into)
            for grad, w, into in self._dh_mm[l - 1] if l > 0 else ():
                torch.mm(grad, w, out=into)
            return
        grad = self._dlogits if l == self.L else self._dz
        if l == 0:
            self._dz1_t.copy_(grad)
            torch.mm(self._dz1.t(), x, out=self._gw1)
            return
        w, into = (self.Wo, self.GWo) if l == self.L else (self.W[l], self.GW[l])
        torch.bmm(grad.transpose(1, 2), self._h[l - 1], out=into)
        torch.bmm(grad, w, out=self._dh)

    def _update(self, stats: bool) -> torch.Tensor | None:
        """torch.optim.SGD's step for every variant; returns (L, V, 3) weight statistics if asked."""
        V, L = self.V, self.L
        lrs = [float(o.param_groups[0]["lr"]) for o in self.optimizers]
        w_before = g_norm = None
        if stats:
            # ||W|| before this step is ||W|| after the last one, unless the weights were written since
            cached = self._w_norm if self.cache_w_norm else None
            if cached is not None and cached[1] == self._w_versions():
                w_before = cached[0]
            else:
                w_before = torch.stack(torch._foreach_norm(self._w_views))
            g_norm = torch._foreach_norm(self._g_views)
        groups: dict[tuple[float, float, float], list[int]] = {}
        for v in range(V):
            groups.setdefault((lrs[v], self.weight_decay[v], self.momentum[v]), []).append(v)
        upd_views = self._g_views  # what each weight moves by, divided by its lr
        for (lr, wd, mom), members in groups.items():
            if len(groups) == 1:  # the flat buffers: one op each for every parameter of every variant
                p, g, buf = [self.flat], [self.flat_grad], [self.flat_buf]
            else:
                p = [t[v] for v in members for t in self.params]
                g = [t[v] for v in members for t in self.grads]
                buf = [t[v] for v in members for t in self.bufs] if self.bufs is not None else None
            if wd:
                g = torch._foreach_add(g, p, alpha=wd)
            if mom:
                torch._foreach_mul_(buf, mom)
                torch._foreach_add_(buf, g)
                g = buf
            torch._foreach_add_(p, g, alpha=-lr)
            if stats and (wd or mom):  # the update is no longer lr * grad: take its norm
                if upd_views is self._g_views:
                    upd_views = list(self._g_views)
                n_params = len(self.params)
                for j, v in enumerate(members):
                    for l in range(L):
                        upd_views[l * V + v] = (self._stack_view(g[0], l)[v] if len(groups) == 1
                                                else g[j * n_params + l])
        if not stats:
            return None
        lr_vec = self._vector([lrs[v] for _ in range(L) for v in range(V)])
        g_norm = torch.stack(g_norm)
        upd = g_norm if upd_views is self._g_views else torch.stack(torch._foreach_norm(upd_views))
        ratio = upd.mul(lr_vec).div_(w_before.clamp_min(1e-12))
        after = torch.stack(torch._foreach_norm(self._w_views))
        self._w_norm = (after, self._w_versions())
        return torch.stack([g_norm, after, ratio], dim=1).view(L, V, 3)

    def _w_versions(self) -> tuple[int, ...]:
        """In-place writes to the weight stacks or through a module's parameter bump these."""
        return (self.flat._version, *(p._version for p in self._w_params))
