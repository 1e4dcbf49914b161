"""`offrl report` (tables, intervals, plots from run directories) and `offrl compare`
(sequential test: which algorithms differ, how many more seeds each one needs)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from offrl.errors import UserError


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="write tables and plots (IQM, intervals, profiles, curves) from run directories",
        description="Read run directories (or folders holding them) and write a report folder: "
                    "per-dataset and aggregate scores (IQM, mean, median, optimality gap) with "
                    "stratified-bootstrap intervals, performance profiles, probability of "
                    "improvement, learning curves and training metrics.",
    )
    report.add_argument("runs", nargs="+", metavar="RUNS",
                        help="run directories, or folders searched for them")
    report.add_argument("--out", type=Path, default=None,
                        help="output folder (default: ./report-<date>-<time>)")
    report.add_argument("--reps", type=int, default=50_000,
                        help="bootstrap replicates for tables and aggregates (default 50000)")
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    report.add_argument("--confidence", type=float, default=0.95,
                        help="interval coverage (default 0.95)")
    report.add_argument("--gamma", type=float, default=100.0,
                        help="optimality-gap threshold in normalized score (default 100)")
    report.add_argument("--no-figures", action="store_true",
                        help="write tables and JSON only (much faster)")
    _add_name_and_datasets(report)
    report.set_defaults(func=run_report)

    compare = subparsers.add_parser(
        "compare",
        help="sequential test over seeds: which algorithms differ, how many more seeds to run",
        description="Replay an AdaStop-style group-sequential test on the seeds run so far "
                    "(seeds in increasing order, n per interim) and report, per dataset, which "
                    "pairs of algorithms are decided and how many more seeds each algorithm "
                    "needs. The family-wise error over all pairs and interims is at most alpha "
                    "(per dataset, or overall with --aggregate).",
    )
    compare.add_argument("runs", nargs="+", metavar="RUNS",
                         help="run directories, or folders searched for them")
    compare.add_argument("--alpha", type=float, default=0.05,
                         help="family-wise error level (default 0.05)")
    compare.add_argument("--interims", type=int, default=4,
                         help="most interims K, the seed budget being K × n (default 4)")
    compare.add_argument("--n-per-interim", type=int, default=5,
                         help="seeds added per algorithm at each interim (default 5)")
    compare.add_argument("--permutations", type=int, default=10_000,
                         help="random permutations when exact enumeration is too large "
                              "(default 10000)")
    compare.add_argument("--seed", type=int, default=0, help="permutation seed (default 0)")
    compare.add_argument("--statistic", choices=["z", "mean"], default="z",
                         help="mean difference over its pooled standard error (default), or "
                              "AdaStop's plain mean difference")
    compare.add_argument("--aggregate", action="store_true",
                         help="one test on each seed's mean score over the datasets, instead "
                              "of one test per dataset")
    _add_name_and_datasets(compare)
    compare.set_defaults(func=run_compare)


def _add_name_and_datasets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", action="append", metavar="LABEL", default=None,
                        help="algorithm label for the runs under the matching RUNS argument "
                             "(give one per RUNS, in order; '-' keeps run.json's algo)")
    parser.add_argument("--common-datasets", action="store_true",
                        help="use only the datasets every algorithm was run on")
    parser.add_argument("--include-incomplete", action="store_true",
                        help="also use runs that are not complete (running, interrupted, "
                             "failed), scored at their latest evaluation")


def _load(args):
    from offrl.evaluation.runs import load_runs

    labels = None
    if args.name is not None:
        if len(args.name) != len(args.runs):
            raise UserError(f"--name was given {len(args.name)} time(s) for {len(args.runs)} RUNS "
                            "argument(s); give one label per RUNS argument ('-' to keep algo)")
        labels = [None if label == "-" else label for label in args.name]
    runs = load_runs(args.runs, labels, include_incomplete=args.include_incomplete)
    for warning in runs.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return runs


def run_report(args) -> int:
    from offrl.evaluation.report import ReportSettings, build_report

    runs = _load(args)
    out = args.out or Path(f"report-{dt.datetime.now():%Y%m%d-%H%M%S}")
    settings = ReportSettings(reps=args.reps, seed=args.seed, confidence=args.confidence,
                              gamma=args.gamma, common_datasets=args.common_datasets,
                              figures=not args.no_figures)
    report = build_report(runs, out, settings)
    for warning in report.warnings[len(runs.warnings):]:
        print(f"warning: {warning}", file=sys.stderr)
    print((out / "table.md").read_text())
    print(f"report written to {out}/ (report.md, {len(report.files)} files)")
    return 0


def run_compare(args) -> int:
    import numpy as np

    from offrl.evaluation.adastop import sequential_compare

    runs = _load(args)
    algorithms = runs.algorithms
    if len(algorithms) < 2:
        raise UserError(f"compare needs at least two algorithms, found {algorithms}")
    datasets = runs.common_datasets() if args.common_datasets else runs.datasets
    runs.score_columns(datasets)   # the same datasets for everyone, or a clear error

    groups = []   # (title, {algorithm: per-seed scores in seed order})
    if args.aggregate:
        scores = {}
        for algo in algorithms:
            per_dataset = [runs.seed_scores(algo, d) for d in datasets]
            seeds = sorted(set.intersection(*(set(s) for s in per_dataset)))
            left_out = sorted(set().union(*(set(s) for s in per_dataset)) - set(seeds))
            if left_out:
                print(f"warning: {algo}: seeds {left_out} are missing on some datasets and are "
                      "left out of the mean over datasets", file=sys.stderr)
            scores[algo] = [float(np.mean([s[seed] for s in per_dataset])) for seed in seeds]
        groups.append((f"mean over {len(datasets)} datasets", scores))
    else:
        for d in datasets:
            groups.append((d, {a: list(runs.seed_scores(a, d).values()) for a in algorithms}))

    print(f"Sequential comparison: alpha={args.alpha} "
          f"{'overall' if args.aggregate else 'per dataset'}, at most {args.interims} interims "
          f"of {args.n_per_interim} seeds (seeds taken in increasing order).")
    to_run: dict[str, dict[str, int]] = {}
    width = max(len(a) for a in algorithms)
    for title, scores in groups:
        result = sequential_compare(scores, n_per_interim=args.n_per_interim,
                                    interims=args.interims, alpha=args.alpha,
                                    permutations=args.permutations, seed=args.seed,
                                    statistic=args.statistic)
        state = ("finished" if result.finished
                 else f"interim {result.interims_done} of {result.interims} done")
        print(f"\n{title}: {state}")
        for pair in result.pairs:
            if pair.decision == "undecided":
                why = ("no significant difference within the seed budget" if result.finished
                       else "needs more seeds")
                line = f"undecided  ({why})"
            else:
                line = (f"{pair.decision:<9}  (decided at interim {pair.interim}; mean "
                        f"{pair.mean_first:.1f} vs {pair.mean_second:.1f} over {pair.seeds} seeds)")
            print(f"  {pair.first:<{width}}  vs  {pair.second:<{width}}  {line}")
        for algo in algorithms:
            more = result.seeds_needed[algo]
            have = result.seeds_available[algo]
            if more:
                to_run.setdefault(algo, {})[title] = more
                note = f"run {more} more seed(s) (has {have})"
            elif result.finished or algo not in result.still_running():
                note = f"done (used {result.seeds_used[algo]} of {have} seeds)"
            else:
                note = f"has enough seeds ({have}) for the next interim"
            print(f"    {algo:<{width}}  {note}")
    print()
    if to_run:
        print("Seeds still needed:")
        for algo, per in to_run.items():
            print(f"  {algo}: " + ", ".join(f"{more} on {title}" for title, more in per.items()))
    else:
        print("All comparisons are decided or the seed budget is spent; no more seeds needed.")
    return 0
