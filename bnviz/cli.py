"""Command line: ``python -m bnviz presets`` and ``python -m bnviz run ...``.

    python -m bnviz run --preset quick-look --out out/quick
    python -m bnviz run --preset paper-fig1 --set lr=0.3 --set bn.placement=after --out out/fig1
    python -m bnviz run --config out/fig1/config.json --steps 1000 --out out/again

Writes DIR/config.json, DIR/metrics.csv (tidy: variant,step,layer,metric,value) and
DIR/report.html (every figure, self-contained). Exit 0 when the run finished (diverged
variants included), 2 with one line on stderr for bad input.

A sweep preset (``high-lr``, ``small-batch``) runs its comparison once per value of its
field and writes DIR/config.json (the base comparison), DIR/sweep.csv (one line per value
x variant, see bnviz/sweep.py) and DIR/report.html (the sweep figure and the table), then
prints the largest stable value per variant. ``--steps``, ``--seed`` and ``--set`` apply to
every run. A ``--set`` of the swept field itself (e.g. ``--set plain.lr=1e6`` on high-lr),
or ``--no-sweep``, runs the base comparison once instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bnviz import presets
from bnviz.config import Comparison
from bnviz.errors import BnvizError, ConfigError

if TYPE_CHECKING:
    from bnviz.runlog import RunSnapshot


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other bad input
        self.exit(2, f"bnviz: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m bnviz", description="Train networks with and without Batch Normalization.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("presets", help="list the presets")
    run = sub.add_parser("run", help="train a comparison and write config.json, metrics.csv, report.html")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a preset name (see `presets`)")
    src.add_argument("--config", help="a config.json written by an earlier run")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="set a field of every variant (lr=0.1) or of one (bn.norm=layer); repeatable")
    run.add_argument("--steps", type=int, help="training steps (every variant)")
    run.add_argument("--seed", type=int, help="seed (every variant)")
    run.add_argument("--out", required=True, help="output directory")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--jobs", default="auto", metavar="N",
                     help="processes to train in (CPU): the variants of a run, or the values of a sweep, "
                          "in parallel; 1 to 8, or auto (default: one per variant or value and core, for "
                          "10,000 steps or more)")
    run.add_argument("--no-sweep", action="store_true", help="on a sweep preset: run the base comparison once")
    run.add_argument("--threshold", type=float,
                     help="sweeps only: test accuracy a value must reach to count as stable "
                          "(default: 90%% of the best accuracy in the sweep)")
    return p


def _comparison(args) -> Comparison:
    pairs = list(args.set)
    if args.steps is not None:
        pairs.append(f"steps={args.steps}")
    if args.seed is not None:
        pairs.append(f"seed={args.seed}")
    if args.preset:
        return presets.resolve(pairs, default=args.preset)
    try:
        text = Path(args.config).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: cannot read {args.config!r} ({type(exc).__name__})") from None
    return Comparison.from_flat(pairs, base=Comparison.from_json(text))


def _sweep_of(args) -> tuple[str, tuple] | None:
    """The preset's sweep, unless --no-sweep or a --set fixes the swept field."""
    if not args.preset or args.no_sweep:
        return None
    sweep = presets.get(args.preset).sweep
    if sweep is None:
        return None
    keys = {p.partition("=")[0].strip().rpartition(".")[2] for p in args.set}
    return None if sweep[0] in keys else sweep


def _out_dir(args) -> Path:
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create {args.out!r} ({exc.strerror})") from None
    return out


def _run_sweep(args, comparison: Comparison, sweep: tuple[str, tuple], jobs: int | None) -> int:
    from bnviz import parallel

    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ConfigError(f"--threshold: must be between 0 and 1, got {args.threshold!r}")
    field, values = sweep
    parallel.start_early(len(values), len(values) * comparison.steps, comparison, jobs)  # before torch loads

    from tqdm import tqdm

    from bnviz.claims import sweep_threshold
    from bnviz.sweep import plan, preset_report, run_lengths, run_sweep

    spec = (comparison, field, values)
    runs = plan(spec)  # bad input (an unknown field) fails here, before any output
    if jobs is None:
        jobs = parallel.auto_jobs(len(runs), sum(run_lengths(runs)), comparison)
    jobs = min(jobs, len(runs))
    out = _out_dir(args)
    (out / "config.json").write_text(comparison.to_json() + "\n", encoding="utf-8")
    bar = tqdm(total=1, unit="step", disable=args.quiet, file=sys.stderr, smoothing=0.1,
               desc=f"{args.preset}: {field} sweep" + (f" ({jobs} processes)" if jobs > 1 else ""))
    last = [0]

    def progress(p) -> None:
        bar.total = p.steps_total
        bar.set_postfix_str(f"{min(p.runs_done + 1, p.runs_total)}/{p.runs_total} runs", refresh=False)
        bar.update(p.steps_done - last[0])
        last[0] = p.steps_done

    try:
        result = run_sweep(spec, progress=progress, jobs=jobs, threads=parallel.threads_each(jobs))
    finally:
        bar.close()
    threshold = args.threshold if args.threshold is not None else sweep_threshold(result.rows)
    (out / "sweep.csv").write_text(result.to_csv(), encoding="utf-8")
    preset = presets.get(args.preset)
    (out / "report.html").write_text(preset_report(result, preset, threshold, comparison), encoding="utf-8")
    for r in result.rows:
        if r["status"] == "skipped":
            print(f"{field}={r['value']} {r['variant']}: skipped ({r['message']})")
    how = "" if args.threshold is not None else " (90% of the best in the sweep)"
    print(f"largest stable {field} (no divergence, test accuracy >= {threshold:g}{how}):")
    for name in result.variants:
        hi, lo = result.largest_stable(name, threshold), result.smallest_stable(name, threshold)
        print(f"  {name}: {'none' if hi is None else f'{hi:g} (smallest stable: {lo:g})'}")
    print(f"wrote {out / 'config.json'}, {out / 'sweep.csv'}, {out / 'report.html'}")
    return 0


def _jobs(args) -> int | None:
    """--jobs as a number, or None for auto."""
    from bnviz import parallel

    if args.jobs == "auto":
        return None
    try:
        jobs = int(args.jobs)
    except ValueError:
        jobs = 0
    if not 1 <= jobs <= parallel.MAX_JOBS:
        raise ConfigError(f"--jobs: a whole number from 1 to {parallel.MAX_JOBS}, or auto; got {args.jobs!r}")
    return jobs


def _train(args, comparison: Comparison, jobs: int | None, out: Path) -> RunSnapshot:
    """Train to the end, in this process or (--jobs) in several, with a progress bar; the final snapshot."""
    from tqdm import tqdm  # imported here: `presets` and bad input answer instantly

    from bnviz import parallel
    from bnviz.trainer import Trainer

    total = comparison.steps
    if jobs is None:
        jobs = parallel.auto_jobs(len(comparison.variants), total, comparison)
    jobs = min(jobs, len(comparison.variants))
    shown: set[str] = set()

    def notice(text: str) -> None:
        if text not in shown:
            shown.add(text)
            print(f"bnviz: {text}", file=sys.stderr)

    trainer = None
    if jobs == 1:
        trainer = Trainer(comparison)
        for text in trainer.log.snapshot().notices:
            notice(text)
    (out / "config.json").write_text(comparison.to_json() + "\n", encoding="utf-8")
    bar = tqdm(total=total, unit="step", disable=args.quiet, file=sys.stderr,
               desc=" vs ".join(comparison.names) + (f" ({jobs} processes)" if jobs > 1 else ""), smoothing=0.1)
    last = [0]

    def progress(step: int) -> None:
        if step - last[0] >= 50 or step == total:
            bar.update(step - last[0])
            last[0] = step

    try:
        if trainer is not None:
            trainer.run(progress=progress)
            return trainer.log.snapshot()
        return parallel.train_split(comparison, jobs, parallel.threads_each(jobs), progress, notice)
    finally:
        bar.close()


def _run(args) -> int:
    from bnviz import parallel

    comparison = _comparison(args)
    jobs = _jobs(args)
    sweep = _sweep_of(args)
    if sweep is not None:
        return _run_sweep(args, comparison, sweep, jobs)
    if args.threshold is not None:  # it would change nothing: say so rather than ignore it
        sweeps = ", ".join(n for n, p in presets.PRESETS.items() if p.sweep)
        raise ConfigError(f"--threshold: only for a sweep (presets {sweeps}, without --no-sweep or a --set of "
                          "the swept field); this run trains one comparison")
    out = _out_dir(args)
    parallel.start_early(len(comparison.variants), comparison.steps, comparison, jobs)  # before torch loads
    from bnviz.report import to_html
    from bnviz.runlog import to_csv

    snap = _train(args, comparison, jobs, out)
    (out / "metrics.csv").write_text(to_csv(snap), encoding="utf-8")
    title = f"bnviz: {args.preset}" if args.preset else "bnviz run"
    preset = presets.get(args.preset) if args.preset else None
    note = presets.note_for(preset, comparison) if preset else None  # "--steps 300" beside the note's 50,000
    extra = preset.figures if preset else ()
    (out / "report.html").write_text(to_html(snap, title, note, extra), encoding="utf-8")
    for v in snap.variants.values():
        acc = v.evals["test_acc"]
        tail = f"test accuracy {acc[-1]:.3f}" if len(acc) else "no test accuracy"
        print(f"{v.name}: {v.ended}, {tail}")
    print(f"wrote {out / 'config.json'}, {out / 'metrics.csv'}, {out / 'report.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "presets":
            for p in presets.PRESETS.values():
                kind = f" [sweep over {p.sweep[0]}]" if p.sweep else ""
                print(f"{p.name:14s} {p.title}{kind}")
            return 0
        return _run(args)
    except BnvizError as exc:
        print(f"bnviz: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnviz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
