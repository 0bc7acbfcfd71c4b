"""Normalization layers that torch does not ship, written in the style of
``torch/nn/modules/batchnorm.py``.

* :class:`BatchRenorm` -- Ioffe 2017, "Batch Renormalization: Towards Reducing
  Minibatch Dependence in Batch-Normalized Models" (arXiv 1702.03275).
* :class:`NoisyBatchNorm` -- the "noisy BatchNorm" of Santurkar et al. 2018, "How Does
  Batch Normalization Help Optimization?" (arXiv 1805.11604), used there to show that
  BN still trains well when its output distribution is deliberately made unstable.
* :class:`GhostBatchNorm` -- Ghost Batch Normalization of Hoffer, Hubara and Soudry 2017,
  "Train longer, generalize better: closing the generalization gap in large batch
  training of neural networks" (arXiv 1705.08741): batch norm whose statistics come from
  small "ghost" batches inside the mini-batch.

All take ``(N, C)`` or ``(N, C, H, W)`` input (any ``(N, C, *)`` in fact) and, like
batch norm, keep one statistic per feature / channel ``C``, computed over the other
``N * H * W`` values. None imports UI code, and all are device-agnostic: every tensor
they create lives on the input's device and dtype.
"""

from __future__ import annotations

from itertools import groupby

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init
from torch.nn.modules.batchnorm import _BatchNorm

from bnviz.errors import ConfigError

__all__ = ["BatchRenorm", "GhostBatchNorm", "NoisyBatchNorm", "ghost_sizes"]


def _check_positive_int(name: str, value: object) -> None:
    # bool is an int subclass; ``BatchRenorm(True)`` is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} is not allowed; expected an integer >= 1")


def ghost_sizes(batch: int, ghost_size: int) -> list[int]:
    """How Ghost BN splits a batch of ``batch`` examples, in order: into
    ``max(1, batch // ghost_size)`` ghost batches within one example of each other, the larger
    first (``torch.tensor_split``'s and ``numpy.array_split``'s parts). Defined once here for
    :class:`GhostBatchNorm`, the step-by-step page (``bnviz.explain``) and the lab's caption.

    Example:
        >>> ghost_sizes(10, 3)
        [4, 3, 3]
        >>> ghost_sizes(7, 4)  # under two ghost batches' worth: one, and Ghost BN is BN
        [7]
    """
    ghosts = max(1, batch // ghost_size)
    q, r = divmod(batch, ghosts)
    return [q + 1] * r + [q] * (ghosts - r)


def _check_input(input: Tensor, num_features: int, cls_name: str) -> None:
    if input.dim() < 2:
        raise ConfigError(
            f"{cls_name} input has {input.dim()} dimension(s); expected (N, C) or (N, C, H, W)"
        )
    if input.shape[1] != num_features:
        raise ConfigError(
            f"{cls_name} input has {input.shape[1]} channels (dim 1); "
            f"expected num_features={num_features}"
        )


def _stat_dims_and_shape(input: Tensor) -> tuple[list[int], list[int]]:
    """Dims to reduce over and the shape that broadcasts a ``(C,)`` vector to ``input``.

    ``(N, C)`` -> reduce ``[0]``, view ``[1, C]``;
    ``(N, C, H, W)`` -> reduce ``[0, 2, 3]``, view ``[1, C, 1, 1]``.
    """
    dims = [0, *range(2, input.dim())]
    shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
    return dims, shape


class BatchRenorm(Module):
    r"""Applies Batch Renormalization (Ioffe, 2017) over a 2D or 4D input.

    Method described in the paper
    `Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized
    Models <https://arxiv.org/abs/1702.03275>`__ .

    Batch norm normalizes with the statistics of the current mini-batch in training but
    with moving averages at inference, so the two modes compute different functions --
    badly so for small or non-i.i.d. batches. Batch renorm corrects the training-time
    output so that it equals what the moving averages would give, as far as the
    correction stays inside a clipping range. In training mode:

    .. math::

        \mu_\mathcal{B} = \frac{1}{m}\sum_i x_i, \qquad
        \sigma_\mathcal{B} = \sqrt{\frac{1}{m}\sum_i (x_i - \mu_\mathcal{B})^2 + \epsilon}

        r = \operatorname{stop\_gradient}\left(
            \operatorname{clip}_{[1/r_{max},\, r_{max}]}
            \left(\frac{\sigma_\mathcal{B}}{\sigma}\right)\right), \qquad
        d = \operatorname{stop\_gradient}\left(
            \operatorname{clip}_{[-d_{max},\, d_{max}]}
            \left(\frac{\mu_\mathcal{B} - \mu}{\sigma}\right)\right)

        \hat{x}_i = \frac{x_i - \mu_\mathcal{B}}{\sigma_\mathcal{B}} \cdot r + d, \qquad
        y_i = \gamma \hat{x}_i + \beta

    and then the moving averages are updated (after ``r`` and ``d`` are computed):

    .. math::

        \mu \leftarrow \mu + \alpha(\mu_\mathcal{B} - \mu), \qquad
        \sigma \leftarrow \sigma + \alpha(\sigma_\mathcal{B} - \sigma)

    where :math:`\alpha` is ``momentum``. Note that, unlike :class:`torch.nn.BatchNorm2d`,
    the moving statistic is the standard deviation :math:`\sigma` (with :math:`\epsilon`
    already inside it), not the variance, exactly as in the paper; and the batch variance
    is the biased one, so that with :math:`r = 1, d = 0` the training output is the batch
    norm output. In evaluation mode:

    .. math::

        y = \gamma \frac{x - \mu}{\sigma} + \beta

    With :math:`r_{max} = 1` and :math:`d_{max} = 0` the layer is plain batch norm (in
    training). The paper starts there and relaxes the limits once the moving averages are
    trustworthy; this module follows that schedule, counted in its own training forward
    passes :math:`t` (the buffer ``num_batches_tracked``):

    .. math::

        r_{max}(t) = 1 + (r_{max}^{final} - 1)\,
            \operatorname{clip}_{[0, 1]}\left(\frac{t - t_{warm}}{t_{r} - t_{warm}}\right),
        \qquad
        d_{max}(t) = d_{max}^{final}\,
            \operatorname{clip}_{[0, 1]}\left(\frac{t - t_{warm}}{t_{d} - t_{warm}}\right)

    so the limits are 1 and 0 for the first ``warmup_steps`` training steps, then grow
    linearly to ``rmax_final`` at step ``rmax_ramp_end`` and to ``dmax_final`` at step
    ``dmax_ramp_end``. The defaults are the paper's (5k, 40k, 25k steps); small demos that
    run a few hundred steps should pass shorter lengths.

    Because :math:`r` and :math:`d` are treated as constants by autograd, the gradient
    flows as through batch norm with its output scaled by :math:`r` -- this is what lets
    the training and inference functions agree without the network fighting the
    correction.

    Args:
        num_features: number of features or channels :math:`C` of the input
        eps: a value added to the batch variance for numerical stability.
            Default: 1e-5
        momentum: the update rate :math:`\alpha` of the moving mean and standard
            deviation. Default: 0.01 (the paper's value)
        rmax_final: the largest allowed :math:`r_{max}`, reached at ``rmax_ramp_end``.
            Default: 3.0
        dmax_final: the largest allowed :math:`d_{max}`, reached at ``dmax_ramp_end``.
            Default: 5.0
        warmup_steps: training steps with :math:`r_{max}=1, d_{max}=0` (plain BN).
            Default: 5000
        rmax_ramp_end: step at which :math:`r_{max}` reaches ``rmax_final``.
            Default: 40000
        dmax_ramp_end: step at which :math:`d_{max}` reaches ``dmax_final``.
            Default: 25000
        affine: when ``True``, the module has learnable :math:`\gamma` (``weight``,
            initialised to 1) and :math:`\beta` (``bias``, initialised to 0); when
            ``False`` both are ``None``. Default: ``True``

    Buffers:
        running_mean: :math:`\mu`, shape :math:`(C)`, initialised to 0.
        running_std: :math:`\sigma`, shape :math:`(C)`, initialised to 1.
        num_batches_tracked: number of training forward passes so far (0-dim long),
            which drives the :math:`r_{max}, d_{max}` schedule.

    Attributes:
        last_r, last_d: the :math:`r` and :math:`d` of the last training forward pass,
            shape :math:`(C)`, detached; ``None`` before the first one. Not saved in the
            state dict; they are there so the app can show how hard renorm corrects.

    Shape:
        - Input: :math:`(N, C)` or :math:`(N, C, H, W)`
        - Output: same shape as input

    Examples::

        >>> m = BatchRenorm(16, warmup_steps=100, rmax_ramp_end=400, dmax_ramp_end=300)
        >>> y = m(torch.randn(8, 16, 5, 5))
        >>> m.rmax(), m.dmax()
        (1.0, 0.0)
    """

    num_features: int
    eps: float
    momentum: float
    rmax_final: float
    dmax_final: float
    warmup_steps: int
    rmax_ramp_end: int
    dmax_ramp_end: int
    affine: bool

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.01,
        rmax_final: float = 3.0,
        dmax_final: float = 5.0,
        warmup_steps: int = 5000,
        rmax_ramp_end: int = 40000,
        dmax_ramp_end: int = 25000,
        affine: bool = True,
    ) -> None:
        super().__init__()
        _check_positive_int("num_features", num_features)
        if not eps > 0:
            raise ConfigError(f"eps={eps!r} is not allowed; expected a number > 0")
        if not 0 < momentum <= 1:
            raise ConfigError(f"momentum={momentum!r} is not allowed; expected 0 < momentum <= 1")
        if not rmax_final >= 1:
            raise ConfigError(f"rmax_final={rmax_final!r} is not allowed; expected a number >= 1")
        if not dmax_final >= 0:
            raise ConfigError(f"dmax_final={dmax_final!r} is not allowed; expected a number >= 0")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigError(
                f"warmup_steps={warmup_steps!r} is not allowed; expected an integer >= 0"
            )
        for name, end in (("rmax_ramp_end", rmax_ramp_end), ("dmax_ramp_end", dmax_ramp_end)):
            if isinstance(end, bool) or not isinstance(end, int) or end < warmup_steps:
                raise ConfigError(
                    f"{name}={end!r} is not allowed; expected an integer >= "
                    f"warmup_steps={warmup_steps}"
                )
        self.num_features = num_features
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.rmax_final = float(rmax_final)
        self.dmax_final = float(dmax_final)
        self.warmup_steps = warmup_steps
        self.rmax_ramp_end = rmax_ramp_end
        self.dmax_ramp_end = dmax_ramp_end
        self.affine = affine
        if self.affine:
            self.weight = Parameter(torch.empty(num_features))
            self.bias = Parameter(torch.empty(num_features))
        else:
            # Registered as None (as torch's BN does) so that ``m.weight`` exists and
            # code can test it instead of catching AttributeError.
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.running_mean: Tensor
        self.running_std: Tensor
        self.num_batches_tracked: Tensor
        self.last_r: Tensor | None = None
        self.last_d: Tensor | None = None
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Moving mean 0, moving std 1, step counter 0 (so the schedule restarts)."""
        self.running_mean.zero_()
        self.running_std.fill_(1)
        self.num_batches_tracked.zero_()
        self.last_r = None
        self.last_d = None

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    @staticmethod
    def _ramp(step: int, start: int, end: int) -> float:
        """Fraction of the way from ``start`` to ``end`` at ``step``, clipped to [0, 1]."""
        if step < start:
            return 0.0
        if end <= start:  # zero-length ramp: jump straight to the final value
            return 1.0
        return min(1.0, (step - start) / (end - start))

    def rmax(self) -> float:
        """:math:`r_{max}` that the next training forward pass will use."""
        step = int(self.num_batches_tracked)
        frac = self._ramp(step, self.warmup_steps, self.rmax_ramp_end)
        return 1.0 + (self.rmax_final - 1.0) * frac

    def dmax(self) -> float:
        """:math:`d_{max}` that the next training forward pass will use."""
        step = int(self.num_batches_tracked)
        return self.dmax_final * self._ramp(step, self.warmup_steps, self.dmax_ramp_end)

    def forward(self, input: Tensor) -> Tensor:
        _check_input(input, self.num_features, type(self).__name__)
        dims, shape = _stat_dims_and_shape(input)

        if self.training:
            if input.numel() // input.shape[1] < 2:
                # One value per channel gives sigma_B = sqrt(eps) and a meaningless
                # output; torch's BN refuses the same input.
                raise ConfigError(
                    f"{type(self).__name__} got input of shape {tuple(input.shape)} in "
                    "training; expected more than 1 value per channel"
                )
            rmax, dmax = self.rmax(), self.dmax()
            var_b, mean_b = torch.var_mean(input, dim=dims, correction=0)  # (C,), (C,)
            std_b = torch.sqrt(var_b + self.eps)  # (C,)

            # r and d are computed from detached batch statistics: the paper treats
            # them as constants, so no gradient flows through the clipping.
            running_std = self.running_std.to(input.dtype)
            running_mean = self.running_mean.to(input.dtype)
            r = (std_b.detach() / running_std).clamp(1.0 / rmax, rmax)  # (C,)
            d = ((mean_b.detach() - running_mean) / running_std).clamp(-dmax, dmax)  # (C,)

            x_hat = (input - mean_b.view(shape)) / std_b.view(shape)
            x_hat = x_hat * r.view(shape) + d.view(shape)

            # Update the moving averages only after r and d used the old ones
            # (Algorithm 1 of the paper).
            with torch.no_grad():
                new_mean = mean_b.detach().to(self.running_mean.dtype)  # (C,)
                new_std = std_b.detach().to(self.running_std.dtype)  # (C,)
                self.running_mean.add_(self.momentum * (new_mean - self.running_mean))
                self.running_std.add_(self.momentum * (new_std - self.running_std))
                self.num_batches_tracked.add_(1)
            self.last_r = r
            self.last_d = d
        else:
            mean = self.running_mean.to(input.dtype).view(shape)
            std = self.running_std.to(input.dtype).view(shape)
            x_hat = (input - mean) / std

        if self.affine:
            return x_hat * self.weight.view(shape) + self.bias.view(shape)
        return x_hat

    def extra_repr(self) -> str:
        return (
            "{num_features}, eps={eps}, momentum={momentum}, rmax_final={rmax_final}, "
            "dmax_final={dmax_final}, warmup_steps={warmup_steps}, "
            "rmax_ramp_end={rmax_ramp_end}, dmax_ramp_end={dmax_ramp_end}, "
            "affine={affine}".format(**self.__dict__)
        )


class NoisyBatchNorm(_BatchNorm):
    r"""Batch norm followed, in training only, by noise of changing mean and scale
    ("noisy BatchNorm", Santurkar et al., 2018).

    Method described in the paper
    `How Does Batch Normalization Help Optimization?
    <https://arxiv.org/abs/1805.11604>`__ (Section 2.2).

    The paper asks whether BN works by reducing "internal covariate shift" and answers
    no: it adds, after each BN layer, noise that makes every layer's input distribution
    shift and rescale from step to step, and the network still trains about as well as
    with plain BN. This layer reproduces that experiment.

    The normalization itself is exactly :class:`torch.nn.BatchNorm1d` /
    :class:`torch.nn.BatchNorm2d` (same ``eps``, ``momentum``, running mean and
    *unbiased* running variance, same learnable :math:`\gamma, \beta`):

    .. math::

        \operatorname{bn}(x) = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}
            \cdot \gamma + \beta

    In training mode, at every forward pass :math:`t` the layer draws a step-wide mean
    and scale

    .. math::

        \mu_t \sim U(-a, a), \qquad \sigma_t \sim U(s_{low}, s_{high})

    and then, for every unit :math:`c` (feature or channel),

    .. math::

        m_c \sim U(\mu_t - j_m,\ \mu_t + j_m), \qquad
        s_c \sim \mathcal{N}(\sigma_t, j_s^2)

    and returns

    .. math::

        y_{n,c,h,w} = s_c \cdot \operatorname{bn}(x)_{n,c,h,w} + m_c

    with :math:`a` = ``mean_range``, :math:`s_{low}, s_{high}` = ``std_low, std_high``,
    :math:`j_m` = ``jitter_mean`` and :math:`j_s` = ``jitter_std``. In evaluation mode
    the output is plain BN, no noise.

    .. note::
        The paper describes the noise only loosely ("noise with non-zero mean and
        non-unit variance ... randomly sampled at each time step"). The per-unit reading
        here is ours: one :math:`(m_c, s_c)` per unit per step, shared by every sample and
        spatial position, so that the whole distribution of the unit is shifted and
        scaled -- a covariate shift -- rather than each activation getting independent
        noise (which would mostly add variance, not shift the distribution).
        :math:`s_c` is drawn from a normal distribution and may, for large
        ``jitter_std``, be negative.

    The noise is a constant for autograd: the gradient reaching :math:`\operatorname{bn}`
    is the incoming one scaled by :math:`s_c`.

    Args:
        num_features: number of features or channels :math:`C` of the input
        eps: a value added to the denominator for numerical stability. Default: 1e-5
        momentum: the value used for the running_mean and running_var computation, with
            :class:`torch.nn.BatchNorm2d`'s meaning (``None``: cumulative average).
            Default: 0.1
        mean_range: :math:`a`; :math:`\mu_t` is uniform in :math:`[-a, a]`. Default: 0.5
        std_low, std_high: :math:`\sigma_t` is uniform in that range.
            Default: 1.0, 1.25
        jitter_mean: half-width of the uniform spread of :math:`m_c` around
            :math:`\mu_t`. Default: 0.1
        jitter_std: standard deviation of :math:`s_c` around :math:`\sigma_t`.
            Default: 0.1
        generator: the :class:`torch.Generator` every draw uses; ``None`` uses torch's
            global RNG. Give each layer (or each run) its own seeded generator for
            reproducible runs: the global RNG is shared by every thread of the process,
            so runs trained concurrently would otherwise perturb each other. The draws
            are made on the generator's device and then moved to the input's device.
            Default: ``None``

    The layer is always affine and always tracks running statistics, like the BN in the
    paper's experiments; its state dict has exactly the keys of a
    :class:`torch.nn.BatchNorm2d` (weights load both ways).

    Buffers (beyond BN's ``running_mean``, ``running_var``, ``num_batches_tracked``;
    none of these are saved in the state dict, and all are ``None`` before the first
    training forward pass):
        last_mu_t: :math:`\mu_t` of the last training forward pass (0-dim).
        last_sigma_t: :math:`\sigma_t` of the last training forward pass (0-dim).
        last_shift: :math:`m`, shape :math:`(C)`, of the last training forward pass.
        last_scale: :math:`s`, shape :math:`(C)`, of the last training forward pass.

    Shape:
        - Input: :math:`(N, C)` or :math:`(N, C, H, W)`
        - Output: same shape as input

    Examples::

        >>> m = NoisyBatchNorm(16, generator=torch.Generator().manual_seed(0))
        >>> y = m(torch.randn(8, 16, 5, 5))
        >>> m.last_scale.shape
        torch.Size([16])
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        mean_range: float = 0.5,
        std_low: float = 1.0,
        std_high: float = 1.25,
        jitter_mean: float = 0.1,
        jitter_std: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        _check_positive_int("num_features", num_features)
        if not eps > 0:
            raise ConfigError(f"eps={eps!r} is not allowed; expected a number > 0")
        if momentum is not None and not 0 < momentum <= 1:
            raise ConfigError(
                f"momentum={momentum!r} is not allowed; expected 0 < momentum <= 1 or None"
            )
        if not mean_range >= 0:
            raise ConfigError(f"mean_range={mean_range!r} is not allowed; expected a number >= 0")
        if not std_low <= std_high:
            raise ConfigError(
                f"std_low={std_low!r}, std_high={std_high!r} are not allowed; "
                "expected std_low <= std_high"
            )
        if not jitter_mean >= 0:
            raise ConfigError(
                f"jitter_mean={jitter_mean!r} is not allowed; expected a number >= 0"
            )
        if not jitter_std >= 0:
            raise ConfigError(f"jitter_std={jitter_std!r} is not allowed; expected a number >= 0")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ConfigError(
                f"generator={generator!r} is not allowed; expected a torch.Generator or None"
            )
        super().__init__(num_features, eps, momentum, affine=True, track_running_stats=True)
        self.mean_range = float(mean_range)
        self.std_low = float(std_low)
        self.std_high = float(std_high)
        self.jitter_mean = float(jitter_mean)
        self.jitter_std = float(jitter_std)
        self.generator = generator
        # Non-persistent: they describe the last step, not the model, and leaving them
        # out keeps the state dict interchangeable with torch's BatchNorm.
        self.register_buffer("last_mu_t", None, persistent=False)
        self.register_buffer("last_sigma_t", None, persistent=False)
        self.register_buffer("last_shift", None, persistent=False)
        self.register_buffer("last_scale", None, persistent=False)
        self.last_mu_t: Tensor | None
        self.last_sigma_t: Tensor | None
        self.last_shift: Tensor | None
        self.last_scale: Tensor | None

    def _check_input_dim(self, input: Tensor) -> None:
        # One class for both the fully connected (N, C) and the conv (N, C, H, W) case,
        # where torch splits them into BatchNorm1d and BatchNorm2d.
        _check_input(input, self.num_features, type(self).__name__)

    def _draw_noise(self, input: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draw mu_t, sigma_t (0-dim) and m, s (C,) for one step, on input's device/dtype."""
        gen = self.generator
        # A torch.Generator only feeds tensors on its own device, so draw there and move.
        device = gen.device if gen is not None else input.device
        dtype = input.dtype
        c = self.num_features
        # The draw order (mu_t, sigma_t, m, s) is fixed: it is what makes a seed
        # reproduce a run.
        u = torch.rand(2, generator=gen, device=device, dtype=dtype)  # (2,)
        mu_t = (2 * u[0] - 1) * self.mean_range  # U(-a, a)
        sigma_t = self.std_low + (self.std_high - self.std_low) * u[1]  # U(s_low, s_high)
        u_m = torch.rand(c, generator=gen, device=device, dtype=dtype)  # (C,)
        m = mu_t + (2 * u_m - 1) * self.jitter_mean  # U(mu_t - j_m, mu_t + j_m)
        z = torch.randn(c, generator=gen, device=device, dtype=dtype)  # (C,)
        s = sigma_t + self.jitter_std * z  # N(sigma_t, j_s^2)
        return (
            mu_t.to(input.device),
            sigma_t.to(input.device),
            m.to(input.device),
            s.to(input.device),
        )

    def forward(self, input: Tensor) -> Tensor:
        out = super().forward(input)
        if not self.training:
            return out
        mu_t, sigma_t, m, s = self._draw_noise(input)
        self.last_mu_t, self.last_sigma_t = mu_t, sigma_t
        self.last_shift, self.last_scale = m, s
        _, shape = _stat_dims_and_shape(input)
        return out * s.view(shape) + m.view(shape)

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + ", mean_range={mean_range}, std_low={std_low}, std_high={std_high}, "
            "jitter_mean={jitter_mean}, jitter_std={jitter_std}".format(**self.__dict__)
        )


class GhostBatchNorm(_BatchNorm):
    r"""Batch norm over "ghost" batches: in training, each slice of about ``ghost_size``
    examples of the mini-batch is normalized by its own mean and variance.

    Method described in the paper
    `Train longer, generalize better <https://arxiv.org/abs/1705.08741>`__ (Algorithm 1).

    The paper trains with large mini-batches (thousands of examples) but keeps the noise
    of small batches' statistics (128 examples), which it finds regularizes, closing much
    of the gap in test accuracy that large batches open. The mini-batch of :math:`N` examples is
    split in order into :math:`k = \max(1, \lfloor N / g \rfloor)` ghost batches of
    near-equal size (exactly :math:`g` = ``ghost_size`` each when :math:`g` divides
    :math:`N`; the paper requires that it does, this layer rounds instead, so that any
    batch size trains). Each ghost batch :math:`B_j` is normalized by its own statistics:

    .. math::

        y = \frac{x - \mathrm{E}_{B_j}[x]}{\sqrt{\mathrm{Var}_{B_j}[x] + \epsilon}}
            \cdot \gamma + \beta \qquad (x \in B_j)

    with one :math:`\gamma, \beta` shared by all. The running statistics take one
    momentum update per ghost batch, in order, as the paper's running averages do; eval
    mode uses them, exactly as :class:`torch.nn.BatchNorm2d`. A mini-batch of fewer than
    :math:`2g` examples is a single ghost batch: the layer is then
    :class:`torch.nn.BatchNorm1d` / :class:`torch.nn.BatchNorm2d`, bit for bit.

    Args:
        num_features: number of features or channels :math:`C` of the input
        ghost_size: :math:`g`, examples per ghost batch (at least 2: a variance needs
            two values). Default: 16
        eps: a value added to the denominator for numerical stability. Default: 1e-5
        momentum: the value used for the running_mean and running_var computation, with
            :class:`torch.nn.BatchNorm2d`'s meaning, applied once per ghost batch
            (``None``: cumulative average over ghost batches). Default: 0.1

    Its state dict has exactly the keys of a :class:`torch.nn.BatchNorm2d` (weights load
    both ways); ``num_batches_tracked`` counts ghost batches.

    Shape:
        - Input: :math:`(N, C)` or :math:`(N, C, H, W)`
        - Output: same shape as input

    Examples::

        >>> m = GhostBatchNorm(16, ghost_size=4)
        >>> y = m(torch.randn(12, 16))  # three ghost batches of 4
        >>> int(m.num_batches_tracked)
        3
    """

    def __init__(self, num_features: int, ghost_size: int = 16, eps: float = 1e-5,
                 momentum: float | None = 0.1) -> None:
        _check_positive_int("num_features", num_features)
        _check_positive_int("ghost_size", ghost_size)
        if ghost_size < 2:
            raise ConfigError(f"ghost_size={ghost_size!r} is not allowed; expected an integer >= 2 "
                              "(a variance needs two values)")
        if not eps > 0:
            raise ConfigError(f"eps={eps!r} is not allowed; expected a number > 0")
        if momentum is not None and not 0 < momentum <= 1:
            raise ConfigError(
                f"momentum={momentum!r} is not allowed; expected 0 < momentum <= 1 or None"
            )
        super().__init__(num_features, eps, momentum, affine=True, track_running_stats=True)
        self.ghost_size = ghost_size

    def _check_input_dim(self, input: Tensor) -> None:
        _check_input(input, self.num_features, type(self).__name__)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        sizes = ghost_sizes(input.shape[0], self.ghost_size) if self.training else [input.shape[0]]
        if len(sizes) == 1:
            return super().forward(input)
        # Each run of equal sizes is one batch_norm call (_equal_ghosts), so a step makes one or two.
        outs, start = [], 0
        for size, run in groupby(sizes):
            count = len(list(run))
            outs.append(self._equal_ghosts(input[start:start + size * count], count))
            start += size * count
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _equal_ghosts(self, input: Tensor, ghosts: int) -> Tensor:
        """``ghosts`` ghost batches of one size in one batch_norm call: ghost j's channel c becomes
        feature j * C + c of a (g, ghosts * C, ...) batch. At 20 ghosts of 25 (CPU, 100 features,
        forward and backward) a call per ghost batch took 7.0x BN's time, this 2.6x
        (python -m bench.ghost_bn; docs/PERFORMANCE.md, step 16)."""
        n, c, rest = input.shape[0], input.shape[1], input.shape[2:]
        g = n // ghosts
        wide = input.reshape(ghosts, g, c, *rest).transpose(0, 1).reshape(g, ghosts * c, *rest)
        # With momentum 1 the call leaves each ghost batch's own mean and unbiased variance in
        # these buffers: the statistics BN would take from that ghost batch alone.
        kw = dict(device=input.device, dtype=self.running_mean.dtype)
        means, variances = torch.zeros(ghosts * c, **kw), torch.ones(ghosts * c, **kw)
        out = torch.nn.functional.batch_norm(wide, means, variances, self.weight.repeat(ghosts),
                                             self.bias.repeat(ghosts), training=True, momentum=1.0, eps=self.eps)
        with torch.no_grad():
            # One running-statistics update per ghost batch, in order, in closed form:
            # r <- (1 - f) r + f s_j for j = 1..k is r (1 - f)^k + sum_j f (1 - f)^(k - j) s_j.
            if self.momentum is None:  # cumulative average over every ghost batch so far
                seen = int(self.num_batches_tracked)
                keep, weights = seen / (seen + ghosts), torch.full((ghosts,), 1.0 / (seen + ghosts), **kw)
            else:
                f = self.momentum
                keep = (1 - f) ** ghosts
                weights = f * (1 - f) ** torch.arange(ghosts - 1, -1, -1, **kw)
            self.num_batches_tracked.add_(ghosts)
            self.running_mean.mul_(keep).add_(weights @ means.view(ghosts, c))
            self.running_var.mul_(keep).add_(weights @ variances.view(ghosts, c))
        return out.reshape(g, ghosts, c, *rest).transpose(0, 1).reshape(input.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_size={self.ghost_size}"
