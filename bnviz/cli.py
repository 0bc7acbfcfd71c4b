"""Command line: ``python -m bnviz presets`` and ``python -m bnviz run ...``.

    python -m bnviz run --preset quick-look --out out/quick
    python -m bnviz run --preset paper-fig1 --set lr=0.3 --set bn.placement=after --out out/fig1
    python -m bnviz run --config out/fig1/config.json --steps 1000 --out out/again

Writes DIR/config.json, DIR/metrics.csv (tidy: variant,step,layer,metric,value) and
DIR/report.html (every figure, self-contained). Exit 0 when the run finished (diverged
variants included), 2 with one line on stderr for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnviz import presets
from bnviz.config import Comparison
from bnviz.errors import BnvizError, ConfigError


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


def _run(args) -> int:
    from tqdm import tqdm  # imported here: `presets` and bad input answer instantly

    from bnviz.report import to_html
    from bnviz.runlog import to_csv
    from bnviz.trainer import Trainer

    comparison = _comparison(args)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create {args.out!r} ({exc.strerror})") from None
    trainer = Trainer(comparison)
    for notice in trainer.log.snapshot().notices:
        print(f"bnviz: {notice}", file=sys.stderr)
    (out / "config.json").write_text(comparison.to_json() + "\n", encoding="utf-8")
    bar = tqdm(total=trainer.total_steps, unit="step", disable=args.quiet, file=sys.stderr,
               desc=" vs ".join(comparison.names), smoothing=0.1)
    last = [0]

    def progress(step: int) -> None:
        if step - last[0] >= 50 or step == trainer.total_steps:
            bar.update(step - last[0])
            last[0] = step

    try:
        trainer.run(progress=progress)
    finally:
        bar.close()
    snap = trainer.log.snapshot()
    (out / "metrics.csv").write_text(to_csv(snap), encoding="utf-8")
    title = f"bnviz: {args.preset}" if args.preset else "bnviz run"
    note = presets.get(args.preset).note if args.preset else None
    (out / "report.html").write_text(to_html(snap, title, note), encoding="utf-8")
    for v in snap.variants.values():
        acc = v.evals["test_acc"]
        tail = f"test accuracy {acc[-1]:.3f}" if len(acc) else "no test accuracy"
        extra = f", diverged at step {v.diverged_at}" if v.diverged_at is not None else ""
        print(f"{v.name}: {v.status} at step {v.step}, {tail}{extra}")
    print(f"wrote {out / 'config.json'}, {out / 'metrics.csv'}, {out / 'report.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "presets":
            for p in presets.PRESETS.values():
                print(f"{p.name:14s} {p.title}")
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
