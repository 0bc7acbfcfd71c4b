"""Sweeps: run one comparison once per value of one field and keep the final numbers.

    >>> result = run_sweep(presets.get("high-lr"))          # the preset's field and values
    >>> result = run_sweep((comparison, "batch_size", (4, 16, 64)), steps=500)
    >>> result.largest_stable("bn", threshold=0.9)

For each value the sweep builds ``comparison.with_all(**{field: value})`` and trains it to
the end with a :class:`~bnviz.trainer.Trainer` (synchronously), then records one row per
variant (see ``ROW_FIELDS``). A variant whose config refuses the value (e.g. batch_size 1
with a batch-statistics norm) is recorded as ``skipped`` with the one-line message; the
other variants of that value still run.

Because only the final numbers matter, a sweep evaluates once, at the last step, and takes
histograms rarely (``eval_every`` and ``hist_every`` are set to the run length unless they
are the swept field). Neither changes training: same batches, same weights, same numbers.

``SweepJob`` runs a sweep on a worker thread for the app; it never touches Streamlit.
"""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Sequence

import torch

from bnviz.config import BATCH_STAT_NORMS, Comparison, RunConfig
from bnviz.errors import ConfigError, training_failure
from bnviz.norms import BatchRenorm
from bnviz.presets import Preset, note_for
from bnviz.remote import WORKER_NICE

# Columns of a row, in CSV order. ``value`` is the swept field's value (the field's name is
# in the ``field`` column); None means "not applicable" and is an empty cell in the CSV.
ROW_FIELDS = (
    "field",          # the swept field, e.g. "lr"
    "value",          # its value in this run
    "variant",        # the variant's name
    "status",         # finished | diverged | skipped
    "test_acc",       # final test accuracy, eval mode (running statistics); None if diverged/skipped
    "train_mode_acc",  # test accuracy with the norms in train mode (batch statistics over test chunks
                      # of the run's batch size); only for batch-statistics norms, else None
    "train_loss",     # mean train loss over the last 5% of steps; None if diverged/skipped
    "diverged",       # True if the train loss became NaN or infinite
    "diverged_at",    # the step at which it did, else None
    "steps",          # steps this variant trained (for a diverged one: its divergence step)
    "message",        # why it was skipped or how it diverged, else None
)
TAIL_FRACTION = 0.05  # train_loss averages the last 5% of the recorded steps (one batch's loss is noisy)


@dataclass(frozen=True)
class Progress:
    """Where a sweep stands: runs (one per value) and training steps over the whole sweep."""

    runs_done: int
    runs_total: int
    steps_done: int
    steps_total: int

    @property
    def fraction(self) -> float:
        return min(self.steps_done / self.steps_total, 1.0) if self.steps_total else 1.0


@dataclass
class SweepResult:
    """Rows of a sweep (one per value x variant, dicts with the keys of ``ROW_FIELDS``)."""

    field: str
    values: tuple
    variants: list[str]
    rows: list[dict] = dc_field(default_factory=list)
    complete: bool = True  # False when stopped before the last value

    def to_csv(self) -> str:
        """A wide table, one line per (value, variant), columns ``ROW_FIELDS``.

        Empty cells are "not applicable" (None); ``diverged`` is ``true``/``false``.
        """
        return rows_to_csv(self.rows)

    def largest_stable(self, variant: str, threshold: float) -> Any | None:
        """The largest swept value at which ``variant`` did not diverge and reached test
        accuracy >= ``threshold``; None if there is none."""
        return largest_stable(self.rows, variant, threshold)

    def smallest_stable(self, variant: str, threshold: float) -> Any | None:
        """The same, smallest (e.g. the smallest batch size at which a norm still works)."""
        return smallest_stable(self.rows, variant, threshold)

    def row(self, value: Any, variant: str) -> dict | None:
        return next((r for r in self.rows if r["value"] == value and r["variant"] == variant), None)


def rows_to_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(ROW_FIELDS)
    for r in rows:
        writer.writerow([_cell(r.get(k)) for k in ROW_FIELDS])
    return buf.getvalue()


def rows_from_csv(text: str) -> list[dict]:
    """The rows of a sweep.csv (``rows_to_csv``) back, typed: numbers, booleans, None for empty cells."""
    def parse(key: str, cell: str) -> Any:
        if cell == "":
            return None
        if key == "diverged":
            return cell == "true"
        if key in ("field", "variant", "status", "message"):
            return cell
        try:
            number = float(cell)
        except ValueError:
            return cell  # a swept value that is not a number (e.g. a normalization)
        return int(number) if key in ("diverged_at", "steps") or (key == "value" and number.is_integer()
                                                                   and "." not in cell and "e" not in cell) else number

    return [{k: parse(k, row.get(k, "")) for k in ROW_FIELDS} for row in csv.DictReader(io.StringIO(text))]


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def stable_values(rows: Sequence[dict], variant: str, threshold: float) -> list:
    """The swept values at which ``variant`` finished without diverging, test accuracy >= threshold."""
    return [r["value"] for r in rows
            if r["variant"] == variant and r["status"] == "finished" and not r["diverged"]
            and r["test_acc"] is not None and r["test_acc"] >= threshold]


def largest_stable(rows: Sequence[dict], variant: str, threshold: float) -> Any | None:
    ok = stable_values(rows, variant, threshold)
    return max(ok) if ok else None


def smallest_stable(rows: Sequence[dict], variant: str, threshold: float) -> Any | None:
    ok = stable_values(rows, variant, threshold)
    return min(ok) if ok else None


# ----------------------------------------------------------------------------- running
class _Stopped(Exception):
    """Raised from the trainer's progress callback to end a run early (stop_event set)."""


SweepSpec = Any  # a Preset with .sweep, or (comparison, field, values)


def _resolve(spec: SweepSpec) -> tuple[Comparison, str, tuple]:
    if isinstance(spec, tuple):
        if len(spec) != 3:
            raise ConfigError("sweep: expected a preset or (comparison, field, values)")
        comparison, name, values = spec
    else:
        if getattr(spec, "sweep", None) is None:
            raise ConfigError(f"sweep: preset {getattr(spec, 'name', spec)!r} is not a sweep")
        comparison, (name, values) = spec.comparison(), spec.sweep
    if not isinstance(comparison, Comparison):
        raise ConfigError(f"sweep: expected a Comparison, got {type(comparison).__name__}")
    if name not in next(iter(comparison.variants.values())).to_dict():
        raise ConfigError(f"sweep: unknown field {name!r}")
    values = tuple(values)
    if not values:
        raise ConfigError(f"sweep: no values given for {name}")
    return comparison, name, values


def plan(spec: SweepSpec, steps: int | None = None) -> list[tuple[Any, dict[str, RunConfig], dict[str, str]]]:
    """Per value: (value, configs of the variants that accept it, refusal message per skipped variant)."""
    comparison, name, values = _resolve(spec)
    runs = []
    for value in values:
        ok: dict[str, RunConfig] = {}
        refused: dict[str, str] = {}
        for vname, cfg in comparison.variants.items():
            changes: dict[str, Any] = {name: value}
            if steps is not None and name != "steps":
                changes["steps"] = steps
            try:
                new = cfg.replace(**changes)
                quiet = {k: new.steps for k in ("eval_every", "hist_every") if k != name}
                ok[vname] = new.replace(**quiet)
            except ConfigError as exc:
                refused[vname] = str(exc)
        runs.append((value, ok, refused))
    return runs


def run_lengths(runs: list[tuple[Any, dict[str, RunConfig], dict[str, str]]]) -> list[int]:
    """Steps of each value's run in a ``plan`` (0 where every variant refused the value)."""
    return [max((c.steps for c in ok.values()), default=0) for _, ok, _ in runs]


def run_sweep(spec: SweepSpec, steps: int | None = None, progress: Callable[[Progress], None] | None = None,
              stop_event: threading.Event | None = None, on_rows: Callable[[list[dict]], None] | None = None,
              jobs: int = 1, threads: int = 1, processes: bool = False, nice: int = 0) -> SweepResult:
    """Train ``spec``'s comparison once per value, synchronously; see the module docstring.

    ``progress`` is called every few steps and after each value; ``on_rows`` with the rows of
    each finished value. Setting ``stop_event`` ends the sweep within one training step (with
    ``jobs`` > 1: within a fraction of a second); the values in flight are dropped and the
    result is marked incomplete. ``jobs`` > 1 trains that many values at once, each in a
    child process with ``threads`` torch threads (bnviz/parallel.py): the same rows as one
    process at that thread count. ``processes`` trains in child processes even one value at
    a time (a server's sweep: off its GIL), at ``nice`` lower priority.
    """
    comparison, name, values = _resolve(spec)
    runs = plan(spec, steps)
    result = SweepResult(name, values, comparison.names)
    totals = run_lengths(runs)
    at = [0] * len(runs)  # steps done in each value's run
    per_value: dict[int, list[dict]] = {}  # rows of the finished values

    def report(i: int, step: int, quiet: bool = False) -> None:
        if stop_event is not None and stop_event.is_set():
            raise _Stopped
        at[i] = step
        if progress is not None and not quiet:
            progress(Progress(len(per_value), len(runs), sum(at), sum(totals)))

    def finished(i: int, rows: list[dict]) -> None:
        per_value[i] = rows
        result.rows = [r for k in sorted(per_value) for r in per_value[k]]  # the sweep's order, whatever finished first
        if on_rows is not None:
            on_rows(rows)
        report(i, totals[i])

    report(0, 0)
    try:
        if jobs > 1 or processes:
            from bnviz.parallel import run_in_processes

            def on_message(i: int, kind: str, value) -> None:
                if kind == "done":
                    finished(i, value)
                else:
                    report(i, value)

            run_in_processes([(_sweep_value, (name, value, ok, refused, comparison.names))
                              for value, ok, refused in runs], jobs, threads, on_message,
                             lambda i: f"the run with {name}={runs[i][0]!r}", nice=nice)
        else:
            for i, (value, ok, refused) in enumerate(runs):
                # checks stop_event every step, calls progress every 25
                step_report = (lambda kind, step, _i=i: report(_i, step, quiet=step % 25 != 0))
                finished(i, _sweep_value(step_report, name, value, ok, refused, comparison.names))
    except _Stopped:
        result.complete = False
    return result


def _sweep_value(report: Callable[[str, int], None], name: str, value: Any, ok: dict[str, RunConfig],
                 refused: dict[str, str], names: list[str]) -> list[dict]:
    """The rows of one value's run, in the comparison's variant order; ``report("progress", step)``
    after every step. In the sweep's process, or in a child (``run_sweep(jobs=...)``)."""
    from bnviz.trainer import Trainer  # imported here: presets and the CLI's bad input stay fast

    refused = dict(refused)
    rows: list[dict] = []
    trainer = None
    if ok:
        try:
            trainer = Trainer(Comparison(ok), **_fast_trainer_kwargs(Trainer))
        except ConfigError as exc:  # e.g. batch_size larger than the training set
            refused.update({n: str(exc) for n in ok})
    if trainer is not None:
        trainer.run(progress=lambda step: report("progress", step))
        rows.extend(_variant_rows(trainer, name, value))
    for vname in names:  # keep the comparison's variant order
        if vname in refused:
            rows.append(_row(name, value, vname, "skipped", message=refused[vname]))
    order = {n: k for k, n in enumerate(names)}
    rows.sort(key=lambda r: order[r["variant"]])
    return rows


def _fast_trainer_kwargs(trainer_cls) -> dict:
    """A sweep needs only the loss and the final accuracy: skip the layer probes where the
    Trainer offers that (``probes=False``); the training computation is the same (up to
    floating-point rounding, which a run at the edge of stability can amplify)."""
    import inspect

    return {"probes": False} if "probes" in inspect.signature(trainer_cls.__init__).parameters else {}


def _row(field_name: str, value: Any, variant: str, status: str, **kw: Any) -> dict:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(field=field_name, value=value, variant=variant, status=status, diverged=False, steps=0)
    row.update(kw)
    return row


def _variant_rows(trainer, field_name: str, value: Any) -> list[dict]:
    snap = trainer.log.snapshot()
    rows = []
    for v in trainer.variants:
        s = snap.variants[v.name]
        if v.diverged_at is not None:
            rows.append(_row(field_name, value, v.name, "diverged", diverged=True, diverged_at=int(v.diverged_at),
                             steps=int(v.diverged_at), message=s.message))
            continue
        loss = s.series["train_loss"]
        k = max(1, int(round(len(loss) * TAIL_FRACTION)))
        acc = s.evals["test_acc"]
        rows.append(_row(
            field_name, value, v.name, "finished" if s.status == "finished" else s.status,
            test_acc=float(acc[-1]) if len(acc) else None,
            train_mode_acc=train_mode_accuracy(v.model, v.cfg, v.data.x_test, v.data.y_test, trainer.device)
            if v.cfg.norm in BATCH_STAT_NORMS else None,
            train_loss=float(loss[-k:].mean()) if len(loss) else None,
            steps=int(v.step),
        ))
    return rows


def train_mode_accuracy(model: torch.nn.Module, cfg: RunConfig, x_test: torch.Tensor, y_test: torch.Tensor,
                        device: torch.device | str = "cpu") -> float:
    """Test accuracy with the normalization layers in train mode: each chunk of ``batch_size``
    test examples is normalized by its own batch statistics, as in training.

    Dropout stays off (it is not what this measures). A last partial chunk is left out (a
    chunk of one has no batch statistics). Every buffer (running mean and variance, step
    counters) and the train/eval flags are restored afterwards, so the model is unchanged.
    """
    n = len(y_test)
    bs = min(cfg.batch_size, n)
    usable = n - n % bs
    saved = {k: b.detach().clone() for k, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    norm_types = (torch.nn.modules.batchnorm._NormBase, BatchRenorm, torch.nn.LayerNorm, torch.nn.GroupNorm)
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, norm_types):
                m.train()
        correct = 0
        with torch.no_grad():
            for start in range(0, usable, bs):
                x = x_test[start: start + bs].to(device)
                y = y_test[start: start + bs].to(device)
                correct += int((model(x).argmax(1) == y).sum())
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(saved[k])
        for m, was in modes.items():
            m.train(was)
    return correct / usable if usable else float("nan")


# ----------------------------------------------------------------------------- threaded
class SweepJob:
    """A sweep on a worker thread: ``start()``, ``stop()``, ``progress``, ``rows``, ``state``.

    State: idle -> running -> finished | stopped | failed. Readers get copies made under a
    lock, so a page can draw while the sweep trains. The worker never calls Streamlit.
    """

    THREAD_NAME = "bnviz-sweep"

    def __init__(self, spec: SweepSpec, steps: int | None = None, single_thread: bool = True,
                 processes: bool = False):
        self.comparison, self.field, self.values = _resolve(spec)
        self._spec = (self.comparison, self.field, self.values)
        self.steps = steps
        self.single_thread = single_thread
        # Train in a child process (one value at a time, at a server worker's lower priority)
        # rather than on this thread: on a server whose labs train in processes
        # (BNVIZ_WORKER_MODE=process), a sweep must not hold the server's GIL either.
        self.processes = processes
        self._lock = threading.Lock()
        self._rows: list[dict] = []
        self._progress = Progress(0, len(self.values), 0, 1)
        self._state = "idle"
        self.error: str | None = None
        self.result: SweepResult | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def rows(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._rows]

    @property
    def progress(self) -> tuple[int, int]:
        """(values done, values in the sweep)."""
        with self._lock:
            return self._progress.runs_done, self._progress.runs_total

    @property
    def fraction(self) -> float:
        """Training steps done over the whole sweep, 0..1."""
        with self._lock:
            return self._progress.fraction

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("sweep already started")
            self._state = "running"
            self._thread = threading.Thread(target=self._work, name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the worker to stop (within one training step) and wait for it up to ``timeout``."""
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self.alive

    def _set_progress(self, p: Progress) -> None:
        with self._lock:
            self._progress = p

    def _add_rows(self, rows: list[dict]) -> None:
        with self._lock:
            self._rows.extend(dict(r) for r in rows)

    def _work(self) -> None:
        if self.single_thread:
            torch.set_num_threads(1)
        final = "finished"
        try:
            result = run_sweep(self._spec, steps=self.steps, progress=self._set_progress, stop_event=self._stop,
                               on_rows=self._add_rows, processes=self.processes,
                               threads=1 if self.single_thread else torch.get_num_threads(),
                               nice=WORKER_NICE if self.processes else 0)
            self.result = result
            if not result.complete:
                final = "stopped"
        except Exception as exc:  # any cause: the job ends with its message, the server goes on
            self.error = training_failure(exc, "sweep")
            final = "failed"
        with self._lock:
            self._state = final


def alive_sweeps() -> int:
    return sum(1 for t in threading.enumerate() if t.name == SweepJob.THREAD_NAME and t.is_alive())


# ----------------------------------------------------------------------------- report
def preset_report(result: SweepResult, preset: Preset, threshold: float | None, comparison: Comparison) -> str:
    """The report of a preset's sweep of ``comparison``, as the CLI writes it and the sweep pages
    download it: its note, and what the run changed from it (a sweep of 300 steps per run
    quoted the note's 1,000)."""
    return to_html(result, f"bnviz: {preset.name} ({result.field} sweep)", note_for(preset, comparison), threshold,
                   labels=comparison.labels())


def to_html(result: SweepResult, title: str = "bnviz sweep", note: str | None = None,
            threshold: float | None = None, labels: dict[str, str] | None = None) -> str:
    """A self-contained HTML page (plotly.js inline): the sweep figure, the largest stable
    value per variant and the table of rows. ``labels``: variant name -> legend text, as the
    app's sweep pages name them (Comparison.labels); the variants' names by default."""
    import html

    from bnviz.figures import sweep_figure
    from bnviz.report import html_table

    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in result.values)
    labels = labels or {}
    fig = sweep_figure(result.rows, result.field, log_x=numeric, labels=labels)
    fig_html = fig.to_html(full_html=False, include_plotlyjs="inline", config={"displaylogo": False})
    esc = html.escape
    stable = ""
    if threshold is not None:
        def named(n: str) -> str:  # "<b>BatchNorm</b> (bn)", or "<b>bn</b>" without a label
            return f"<b>{esc(labels[n])}</b> ({esc(n)})" if n in labels else f"<b>{esc(n)}</b>"

        items = "".join(
            f"<li>{named(n)}: largest {esc(_cell(result.largest_stable(n, threshold)) or 'none')}, "
            f"smallest {esc(_cell(result.smallest_stable(n, threshold)) or 'none')}</li>"
            for n in result.variants)
        stable = (f"<h2>Stable {esc(result.field)} values</h2><p>Stable: no divergence and final test "
                  f"accuracy &ge; {threshold:g}.</p><ul>{items}</ul>")
    table = html_table(ROW_FIELDS, ([_cell(r.get(k)) for k in ROW_FIELDS] for r in result.rows))
    incomplete = "" if result.complete else "<p><b>Stopped before the last value.</b></p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:Inter,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}
th{{background:#f6f6f6}}</style></head>
<body><h1>{esc(title)}</h1>
{f"<p>{esc(note)}</p>" if note else ""}{incomplete}
<p>Each run trains the comparison with {esc(result.field)} set to one value; every other field as in the
base configuration. test_acc: final test accuracy in eval mode (running statistics); train_mode_acc: the
same test set with the norms in train mode (batch statistics over test chunks of the run's batch size),
for norms that use batch statistics.</p>
<section>{fig_html}</section>
{stable}
<h2>Rows</h2>{table}
<p>Made with bnviz.</p></body></html>
"""
