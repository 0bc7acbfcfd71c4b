"""Lockstep training of every variant of a comparison on the same batches, instrumented.

Each step, every live variant takes one optimizer step on the same mini-batch (variants
that share dataset, batch size and seed share one sampler). Probe results stay on the
device in a row buffer; every ``flush_every`` steps one copy moves the block to the host
and into the RunLog. That is also where divergence is detected: the first non-finite
train loss marks the variant diverged at that step and it stops; the others go on.

When every variant is an MLP of one shape (``models.stack_key``: the paper's comparisons),
the variants are stepped together as one ``models.StackedMLP``: stacked weights, backward
written out by hand, probes reduced for all layers and variants at once. It records bit for
bit what one autograd pass and one SGD step per variant record (``batched=False``, the path
every other comparison takes; only update_ratio is computed from the optimizer's step, equal
up to float rounding), about twice as fast (docs/PERFORMANCE.md). On a GPU that stacked step
is replayed as a CUDA graph (``bnviz.cuda_graphs``): one launch instead of ~130.

Run it synchronously (``run()``, for the CLI and tests) or on a worker thread
(``start()``, then ``pause()`` / ``resume()`` / ``step()`` / ``stop()`` / ``set_lr()`` from
any thread). The worker never touches UI code; readers use ``log.snapshot()``.
"""

from __future__ import annotations

import functools
import math
import random
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from bnviz import data as datasets
from bnviz import optimizers
from bnviz.config import Comparison, RunConfig
from bnviz.cuda_graphs import GPU_LOCK, StepGraphs
from bnviz.errors import ConfigError, training_failure
from bnviz.metrics import LANDSCAPE_METRICS, LAYER_METRICS, STEP_METRICS
from bnviz.models import Net, StackedMLP, build_model, hidden_names, stack_key
from bnviz.landscape import ics, smoothness
from bnviz.probes import ACT_STATS, HIST_EDGES, LayerProbes, weight_stats
from bnviz.runlog import RunLog

EVAL_CHUNK = 2000  # test examples per forward pass in evaluation


def _gpu_turn(method):
    """Run a method that computes on the trainer's device holding GPU_LOCK when that is a GPU
    (bnviz.cuda_graphs: a graph capture must not meet other threads' GPU work)."""
    @functools.wraps(method)
    def on_turn(self, *args, **kwargs):
        if self.device.type != "cuda":
            return method(self, *args, **kwargs)
        with GPU_LOCK:
            return method(self, *args, **kwargs)
    return on_turn


def resolve_device(requested: str) -> tuple[torch.device, str | None]:
    """The device to use and, if the request could not be met, a one-line notice."""
    cuda, mps = torch.cuda.is_available(), getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu"), None
    if requested == "cuda" and not cuda:
        return torch.device("cpu"), "device: cuda was asked for but no CUDA GPU is available; training on cpu"
    if requested == "mps" and not mps:
        return torch.device("cpu"), "device: mps was asked for but is not available; training on cpu"
    return torch.device(requested), None


class Sampler:
    """Shuffled mini-batches without replacement, reshuffled each epoch, from its own generator."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(n, generator=self.gen), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:  # drop the last partial batch, as usual
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos: self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def next_on(self, device: torch.device) -> torch.Tensor:
        """``next()`` as indices on ``device``: one copy of the permutation per epoch, not one per step."""
        if device.type == "cpu":
            return self.next()
        start = self.pos if self.pos + self.batch_size <= self.n else 0
        self.next()  # advances (and reshuffles) exactly as on the CPU
        if start == 0 or getattr(self, "_perm_on", None) is None or self._perm_on[0] is not self.perm:
            self._perm_on = (self.perm, self.perm.to(device))
        return self._perm_on[1][self.pos - self.batch_size: self.pos]


@dataclass
class Variant:
    name: str
    cfg: RunConfig
    model: Net
    optimizer: torch.optim.Optimizer
    probes: LayerProbes
    weights: list[torch.Tensor]
    data: datasets.Dataset
    batch_key: tuple
    live: bool = True
    step: int = 0  # optimizer steps taken
    logged: int = 0  # last step whose row reached the RunLog
    diverged_at: int | None = None


def _optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return optimizers.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    momentum = 0.9 if cfg.optimizer == "momentum" else 0.0
    return optimizers.SGD(params, lr=cfg.lr, momentum=momentum, weight_decay=cfg.weight_decay)


def tracked_units(cfg: RunConfig) -> list[int]:
    """The unit tracked in each hidden layer: cfg.tracked_unit, or one per layer chosen by seed."""
    if cfg.tracked_unit >= 0:
        return [cfg.tracked_unit] * cfg.depth
    return [random.Random(cfg.seed * 31 + i).randrange(cfg.width) for i in range(cfg.depth)]


def check_lr_change(comparison: Comparison, lr: float, variant: str | None) -> None:
    """Raise ConfigError unless ``set_lr(lr, variant)`` is valid for ``comparison``."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr: must be a finite number > 0, got {lr!r}")
    if variant is not None and variant not in comparison.variants:
        raise ConfigError(f"variant: no variant named {variant!r}")


class Trainer:
    """Trains a comparison in lockstep and records it into ``self.log``."""

    def __init__(self, comparison: Comparison, flush_every: int = 25, single_thread: bool = False,
                 probes: bool = True, batched: bool = True, graphs: bool = True):
        self.comparison = comparison
        self.flush_every = flush_every
        # probes=False: record the train loss only (no activation or weight statistics, no
        # histograms; their columns hold NaN), e.g. to measure what the probes cost.
        self.probes = probes
        self.single_thread = single_thread  # a shared server gives each worker one core
        devices = {resolve_device(c.device) for c in comparison.variants.values()}
        self.device = next(iter(devices))[0]
        self.log = RunLog(HIST_EDGES.numpy())
        for _, notice in devices:
            if notice:
                self.log.add_notice(notice)
        self.variants: list[Variant] = []
        self._tensors: dict[str, tuple[torch.Tensor, ...]] = {}
        self.samplers: dict[tuple, Sampler] = {}
        for name, cfg in comparison.variants.items():
            self.variants.append(self._build(name, cfg))
        self.total_steps = max(v.cfg.steps for v in self.variants)
        self.step_count = 0
        # batched=True: variants that are MLPs of one shape (models.stack_key) train as one
        # StackedMLP, several times faster than one autograd pass per variant. False: the
        # straightforward per-variant path (the reference the stacked path is tested against).
        keys = {stack_key(v.cfg) for v in self.variants}
        self.batched = batched and len(keys) == 1 and None not in keys
        self._stack: StackedMLP | None = None
        self._stack_members: list[int] = []  # indices of the variants in the stack
        self._stack_probes: LayerProbes | None = None
        self._stack_rows: slice | torch.Tensor = slice(0, 0)  # their rows in self._rows
        # graphs=True: on a GPU the stacked step is replayed as a CUDA graph (same numbers, launched
        # at once); False: eager, the reference the graphs are tested against
        self._step_graphs = StepGraphs() if graphs and self.batched and self.device.type == "cuda" else None
        width = len(STEP_METRICS) + max(v.cfg.depth for v in self.variants) * len(LAYER_METRICS)
        self._rows = torch.full((len(self.variants), flush_every, width), 0.0 if probes else math.nan,
                                device=self.device)  # (V, K, D)
        self._row_steps: list[int] = []
        self._hists: dict[str, list[tuple[int, torch.Tensor]]] = {v.name: [] for v in self.variants}
        self._landscape_samplers: dict[tuple, Sampler] = {}
        # thread control
        self._cond = threading.Condition()
        self._running = False
        self._budget = 0  # single steps requested while paused
        self._stop = False
        self._lr_changes: list[tuple[float, str | None]] = []
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    @property
    def graphs(self) -> bool:
        """Whether the stacked step is replayed as a CUDA graph (False again after a failed capture)."""
        return self._step_graphs is not None

    # construction ----------------------------------------------------------------------
    def _build(self, name: str, cfg: RunConfig) -> Variant:
        ds = datasets.load(cfg.dataset)
        if ds.notice:
            self.log.add_notice(ds.notice)
        n_train = len(ds.y_train)
        if cfg.batch_size > n_train:
            raise ConfigError(
                f"batch_size: must be <= the {n_train:,} training examples of {cfg.dataset}, got {cfg.batch_size}"
            )
        if cfg.dataset not in self._tensors:
            self._tensors[cfg.dataset] = tuple(
                t.to(self.device) for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
        key = (cfg.dataset, cfg.batch_size, cfg.seed)
        if key not in self.samplers:
            self.samplers[key] = Sampler(n_train, cfg.batch_size, cfg.seed)
        noise = torch.Generator(device=self.device).manual_seed(cfg.seed + 7919)
        model = build_model(cfg, ds.input_shape, ds.n_classes, noise_generator=noise).to(self.device)
        model.train()
        probes = LayerProbes(model.hidden, tracked_units(cfg))
        probes.enabled = self.probes
        weights = [b.linear.weight for b in model.hidden]
        layers = hidden_names(cfg.depth)
        self.log.add_variant(name, cfg.to_dict(), layers)
        return Variant(name, cfg, model, _optimizer(cfg, model.parameters()), probes, weights, ds, key)

    # one lockstep step -----------------------------------------------------------------
    @_gpu_turn
    def _step_all(self) -> None:
        step = self.step_count + 1
        for v in self.variants:
            every = v.cfg.landscape_every
            if v.live and every and self.step_count % every == 0:
                self._measure_landscape(v)
        k = len(self._row_steps)
        if self.batched:
            self._step_stacked(step, k)
        else:
            self._step_each(step, k)
        self._row_steps.append(step)
        self.step_count = step
        for v in self.variants:
            if v.live and (step % v.cfg.eval_every == 0 or step == v.cfg.steps):
                self.flush()  # a diverged variant is not evaluated past its divergence
                if v.live:
                    self._evaluate(v)
        if len(self._row_steps) == self.flush_every:
            self.flush()
        for v in self.variants:
            if v.live and v.step >= v.cfg.steps:
                v.live = False
                self.log.set_status(v.name, "finished")

    def _restack(self, live: list[int]) -> None:
        """(Re)build the stacked network of the live variants (their state carries over)."""
        vs = [self.variants[i] for i in live]
        self._stack = StackedMLP([v.model for v in vs], [v.cfg for v in vs], [v.optimizer for v in vs])
        self._stack_members = live
        n = len(vs)
        # rows of the stacked pre-activations are (layer, variant); each variant's tracked unit per layer
        units = [tracked_units(v.cfg)[layer] for layer in range(vs[0].cfg.depth) for v in vs]
        self._stack_probes = LayerProbes([], units)
        contiguous = live == list(range(live[0], live[0] + n))
        self._stack_rows = slice(live[0], live[0] + n) if contiguous else torch.tensor(live, device=self.device)
        if self._step_graphs is not None:
            self._stack.cache_w_norm = False
            self._step_graphs.reset()  # the graphs hold the old stack's buffers

    def _step_stacked(self, step: int, k: int) -> None:
        """One step of every live variant as one stacked MLP (see models.StackedMLP)."""
        live = [i for i, v in enumerate(self.variants) if v.live]
        if live != self._stack_members:
            self._restack(live)
        vs = [self.variants[i] for i in live]
        dataset = vs[0].cfg.dataset
        idx = self.samplers[vs[0].batch_key].next_on(self.device)
        due = [j for j, v in enumerate(vs) if step % v.cfg.hist_every == 0] if self.probes else []

        def compute(batch: torch.Tensor):
            return self._stacked_compute(dataset, batch, hists=bool(due))

        # Under inference_mode rather than the step's no_grad: no autograd bookkeeping (version
        # counters, view tracking) on its ~150 ops, ~5% of a CPU step (python -m bench.ab; on a GPU,
        # whose replayed graph is bound by the device, 1.005x). Its new tensors, a graph's static
        # ones included, are inference tensors, read but never written outside it; in-place updates
        # of the parameters still bump their versions.
        with torch.inference_mode():
            if self._step_graphs is not None:
                (loss, act, wstats, hists), replayed = self._step_graphs.run(bool(due), compute, idx)
            else:
                (loss, act, wstats, hists), replayed = compute(idx), False
        if self._step_graphs is not None and not self._step_graphs.enabled:
            self.log.add_notice(f"cuda graphs: capture failed ({self._step_graphs.error}); "
                                "training on without them (slower, same numbers)")
            self._step_graphs = None
        for j in due:  # a replay's outputs are overwritten by the next one: keep a copy
            self._hists[vs[j].name].append((step, hists[:, j].clone() if replayed else hists[:, j]))
        if not self.probes:
            self._rows[self._stack_rows, k, 0] = loss
        elif isinstance(self._stack_rows, slice):  # write straight into the row buffer
            n, n_layers = len(vs), act.shape[0]
            block = self._rows[self._stack_rows, k]
            m = len(LAYER_METRICS)
            per_layer = block[:, 1: 1 + n_layers * m].view(n, n_layers, m)
            per_layer[:, :, :ACT_STATS].copy_(act.transpose(0, 1))
            per_layer[:, :, ACT_STATS:].copy_(wstats.transpose(0, 1))
            block[:, 0].copy_(loss)
        else:
            n = len(vs)
            per_layer = torch.cat([act, wstats], dim=2).transpose(0, 1).reshape(n, -1)  # (V, L * 11)
            rows = torch.cat([loss[:, None], per_layer], dim=1)
            self._rows[self._stack_rows, k, : rows.shape[1]] = rows
        for v in vs:
            v.step = step

    def _stacked_compute(self, dataset: str, idx: torch.Tensor, hists: bool):
        """The stack's step on the batch ``idx``: (loss, act stats, weight stats, histograms or None).

        Device work only, no host syncs, same shapes every call: a CUDA graph can hold it.
        """
        x_train, y_train = self._tensors[dataset][:2]
        stack = self._stack
        x = x_train.flatten(1).index_select(0, idx)  # = x_train[idx], flattened (a copy of whole rows)
        loss, wstats = stack.step(x, y_train.index_select(0, idx), stats=self.probes)
        if not self.probes:
            return loss, None, None, None
        probes = self._stack_probes
        # (L * V, N, C); step() is done with it, so the probes may reorder it
        probes.observe(stack.preacts.flatten(0, 1), consumable=True)
        act = probes.activation_stats(sort=hists).view(stack.L, stack.V, -1)  # (L, V, 8)
        return loss, act, wstats, probes.histograms().view(stack.L, stack.V, -1) if hists else None

    def _step_each(self, step: int, k: int) -> None:
        """One step of every live variant, one autograd pass each (any model, norm, optimizer)."""
        batches: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, v in enumerate(self.variants):
            if not v.live:
                continue
            if v.batch_key not in batches:
                x_train, y_train = self._tensors[v.cfg.dataset][:2]
                idx = self.samplers[v.batch_key].next_on(self.device)
                batches[v.batch_key] = (x_train[idx], y_train[idx])
            x, y = batches[v.batch_key]
            if not self.probes:
                v.optimizer.zero_grad(set_to_none=False)
                loss = F.cross_entropy(v.model(x), y)
                loss.backward()
                v.optimizer.step()
                self._rows[i, k, 0] = loss.detach()
                v.step = step
                continue
            with torch.no_grad():
                before = [w.detach().clone() for w in v.weights]
            v.optimizer.zero_grad(set_to_none=False)
            loss = F.cross_entropy(v.model(x), y)
            loss.backward()
            with torch.no_grad():
                hist_due = step % v.cfg.hist_every == 0
                act = v.probes.activation_stats(sort=hist_due)  # (L, 8)
                if hist_due:
                    self._hists[v.name].append((step, v.probes.histograms()))
            v.optimizer.step()
            with torch.no_grad():
                row = torch.cat([loss.detach().reshape(1), torch.cat([act, weight_stats(v.weights, before)], 1).reshape(-1)])
                self._rows[i, k, : row.numel()] = row
            v.step = step

    @_gpu_turn
    def flush(self) -> None:
        """Move buffered rows and histograms to the RunLog; detect divergence."""
        k = len(self._row_steps)
        if k:
            rows = self._rows[:, :k].cpu().numpy()  # (V, k, D): the one host copy
            steps = np.asarray(self._row_steps)
            for i, v in enumerate(self.variants):
                if v.diverged_at is not None:
                    continue
                mask = (steps > v.logged) & (steps <= v.step)  # steps this variant trained
                vsteps = steps[mask]
                vrows = rows[i, mask, : len(STEP_METRICS) + v.cfg.depth * len(LAYER_METRICS)]
                bad = ~np.isfinite(vrows[:, 0])
                if bad.any():
                    first = int(bad.argmax())
                    vsteps, vrows = vsteps[:first + 1], vrows[:first]
                    self._mark_diverged(v, int(vsteps[first]))
                    vsteps = vsteps[:first]
                self.log.append_steps(v.name, vsteps, vrows)
                if len(vsteps):
                    v.logged = int(vsteps[-1])
            self._row_steps.clear()
            self.log.mark_progress(self.step_count)
        for v in self.variants:
            pending = self._hists[v.name]
            if pending:
                steps = np.array([s for s, _ in pending])
                hists = torch.stack([h for _, h in pending]).cpu().numpy()  # (h, L, bins)
                keep = steps < v.diverged_at if v.diverged_at is not None else np.ones(len(steps), bool)
                self.log.append_hist(v.name, steps[keep], hists[keep])
                pending.clear()

    def _measure_landscape(self, v: Variant) -> None:
        """Santurkar et al.'s ICS measure and smoothness probes at the current weights.

        On a batch from a sampler of its own (seeded apart), so the training batches, and
        with them every other number of the run, are the same with these probes on or off.
        """
        if v.batch_key not in self._landscape_samplers:
            n_train = len(self._tensors[v.cfg.dataset][1])
            self._landscape_samplers[v.batch_key] = Sampler(n_train, v.cfg.batch_size, v.cfg.seed + 104_729)
        x_train, y_train = self._tensors[v.cfg.dataset][:2]
        idx = self._landscape_samplers[v.batch_key].next_on(self.device)
        x, y = x_train[idx], y_train[idx]
        lr = v.optimizer.param_groups[0]["lr"]
        v.probes.enabled = False  # these extra passes are not training steps
        try:
            dist, cos = ics(v.model, x, y, lr)
            smooth = smoothness(v.model, x, y, lr)
        finally:
            v.probes.enabled = self.probes
        per_layer = torch.stack([dist, cos], dim=1).cpu().numpy()  # (L, 2)
        self.log.append_landscape(v.name, self.step_count, per_layer, [smooth[m] for m in LANDSCAPE_METRICS])

    def _mark_diverged(self, v: Variant, step: int) -> None:
        v.live, v.diverged_at = False, step
        self.log.set_status(v.name, "diverged", f"{v.name}: loss became NaN or infinite at step {step}", diverged_at=step)
        self.log.add_event(step, "diverged", v.name)

    def _evaluate(self, v: Variant) -> None:
        _, _, x_test, y_test = self._tensors[v.cfg.dataset]
        v.model.eval()
        v.probes.enabled = False
        total_loss, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        with torch.no_grad():
            for start in range(0, len(y_test), EVAL_CHUNK):
                logits = v.model(x_test[start: start + EVAL_CHUNK])
                y = y_test[start: start + EVAL_CHUNK]
                total_loss += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
        v.model.train()
        v.probes.enabled = self.probes
        loss, acc = total_loss.item() / len(y_test), correct.item() / len(y_test)
        if math.isfinite(loss):
            self.log.append_eval(v.name, v.step, loss, acc)

    # synchronous use ---------------------------------------------------------------------
    def run(self, steps: int | None = None, progress: Callable[[int], None] | None = None) -> None:
        """Train until every variant finished (or ``steps`` more steps); then release hooks."""
        try:
            self._begin()
            target = self.total_steps if steps is None else min(self.total_steps, self.step_count + steps)
            while self.step_count < target and any(v.live for v in self.variants):
                self._step_all()
                if progress is not None:
                    progress(self.step_count)
            self.flush()
        finally:
            self._end("finished" if not any(v.live for v in self.variants) else "stopped")

    @_gpu_turn
    def _begin(self) -> None:
        self.log.state = "running"
        if self.step_count == 0:
            for v in self.variants:
                self._evaluate(v)  # accuracy before training: the curves start at chance

    @_gpu_turn
    def _end(self, state: str) -> None:
        self.flush()
        if self._step_graphs is not None:
            self._step_graphs.release()  # their memory, now, under GPU_LOCK
        for v in self.variants:
            v.probes.remove()
            if v.live and state != "finished":
                self.log.set_status(v.name, state, self.error if state == "failed" else None)
        self.log.state = state

    @_gpu_turn
    def close(self) -> None:
        """Release hooks without training further (idempotent)."""
        if self._step_graphs is not None:
            self._step_graphs.release()
        for v in self.variants:
            v.probes.remove()

    # threaded use ----------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.log.state

    @property
    def busy(self) -> bool:
        """Steps or changes asked for and not yet done (e.g. just after ``step()``)."""
        with self._cond:
            pending = self._budget > 0 or bool(self._lr_changes)
        return pending or self.log.state == "running"

    def start(self, paused: bool = False) -> None:
        if self._thread is not None:
            raise RuntimeError("trainer already started")
        self._running = not paused
        self.log.state = "paused" if paused else "running"
        self._thread = threading.Thread(target=self._loop, name="bnviz-trainer", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            self._running = True
            self._cond.notify_all()

    def step(self, n: int = 1) -> None:
        """While paused: take ``n`` more steps, then pause again."""
        with self._cond:
            self._budget += n
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def set_lr(self, lr: float, variant: str | None = None) -> None:
        """Change the learning rate of one or all variants at the next step boundary."""
        check_lr_change(self.comparison, lr, variant)
        with self._cond:
            self._lr_changes.append((float(lr), variant))
            self._cond.notify_all()

    def _apply_lr_changes(self) -> None:
        changes, self._lr_changes = self._lr_changes, []
        for lr, target in changes:
            for v in self.variants:
                if target in (None, v.name):
                    for group in v.optimizer.param_groups:
                        group["lr"] = lr
            self.log.add_event(self.step_count, f"lr → {lr:g}", target)
        if changes and self._step_graphs is not None:
            self._step_graphs.reset()  # learning rates are frozen into a captured step

    def _loop(self) -> None:
        if self.single_thread:
            torch.set_num_threads(1)
        final = "finished"
        try:
            self._begin()
            while True:
                with self._cond:
                    while not (self._stop or self._running or self._budget or self._lr_changes):
                        if self._row_steps or any(self._hists.values()):
                            break  # flush below before sleeping, so a paused page is complete
                        self.log.state = "paused"
                        self._cond.wait(timeout=1.0)
                    if self._stop:
                        final = "stopped"
                        break
                    self._apply_lr_changes()
                    can_step = self._running or self._budget > 0
                    if can_step and not self._running:
                        self._budget -= 1
                    if can_step:
                        self.log.state = "running"
                if not can_step:
                    self.flush()
                    continue
                if not any(v.live for v in self.variants) or self.step_count >= self.total_steps:
                    break
                self._step_all()
                if not self._running and self._budget == 0:
                    self.flush()
        except Exception as exc:  # any cause: the run ends with its message, the server goes on
            self.error = training_failure(exc)
            final = "failed"
            for v in self.variants:
                if v.live:
                    self.log.set_status(v.name, "failed", self.error)
            self.log.add_notice(self.error)
        finally:
            try:
                self._end(final)
            except Exception:  # never leave hooks behind, even if the last flush fails
                self.close()
                self.log.state = "failed"
