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
from bnviz.norms import BatchRenorm, NoisyBatchNorm

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
