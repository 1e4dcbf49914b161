"""`offrl demo`: the main job on the default embedded setup, end to end, in a couple of minutes.

It runs the same commands a user would type, printing each one first, so the demo doubles as a
tour: build a small dataset from its recipe (no network), show its summary, train TD3+BC and IQL
on it with several seeds in one process each, and write a statistics report over the runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from offrl.errors import UserError

DEFAULT_DATASET = "hopper-random-10k-v0"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="the main job on a small embedded setup: dataset -> train -> report",
        description="Build a small Hopper dataset from its recipe, print its summary, train "
                    "TD3+BC and IQL on it (several seeds per process), evaluate them and write "
                    "a report with IQM intervals. Every step is an ordinary offrl command, "
                    "printed before it runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"dataset id (default: {DEFAULT_DATASET})")
    p.add_argument("--algos", default="td3_bc,iql", help="comma-separated algorithms "
                   "(default: td3_bc,iql)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per algorithm (default: 3)")
    p.add_argument("--steps", type=int, default=2000, help="gradient steps (default: 2000)")
    p.add_argument("--eval-episodes", type=int, default=5,
                   help="evaluation episodes per seed (default: 5)")
    p.add_argument("--out", type=Path, default=Path("demo-out"),
                   help="folder for runs and the report (default: ./demo-out)")
    p.set_defaults(func=cmd_demo)


def _run(argv: list[str]) -> None:
    from offrl.cli import main

    print(f"\n$ offrl {shlex.join(argv)}", flush=True)
    code = main(argv)
    if code:
        raise UserError(f"`offrl {shlex.join(argv)}` failed with exit code {code}")


def cmd_demo(args: argparse.Namespace) -> int:
    from offrl.data.load import is_cached
    from offrl.data.registry import get_card

    started = time.perf_counter()
    card = get_card(args.dataset)
    if not is_cached(card):
        _run(["datasets", "build", args.dataset])
    _run(["datasets", "info", args.dataset])

    runs_root = args.out / "runs"
    run_dirs = []
    for algo in [a.strip() for a in args.algos.split(",") if a.strip()]:
        run_dir = runs_root / algo / args.dataset / f"demo-{args.steps}-steps"
        _run(["train", algo, args.dataset, "--seeds", str(args.seeds), "--steps", str(args.steps),
              "--eval-every", str(max(args.steps // 2, 1)),
              "--eval-episodes", str(args.eval_episodes), "--run-dir", str(run_dir)])
        run_dirs.append(run_dir)

    report_dir = args.out / "report"
    _run(["report", *map(str, run_dirs), "--out", str(report_dir), "--reps", "10000"])

    print(f"\nDemo finished in {time.perf_counter() - started:.0f} s.")
    print(f"  dataset : {args.dataset}  (`offrl datasets path {args.dataset}`)")
    for run_dir in run_dirs:
        print(f"  run     : {run_dir}")
    print(f"  report  : {report_dir}/report.md")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cmd_demo(argparse.Namespace()))
