"""Time offrl's statistics engine against rliable on the same random score matrices.

Workload (the issue's): 10 algorithms × 9 tasks × 10 seeds; IQM, Mean, Median and Optimality
Gap intervals with 50,000 stratified-bootstrap replicates, plus P(X > Y) intervals for all 45
pairs with 2,000 replicates. rliable needs minutes for this; ``--rliable-reps`` /
``--rliable-poi-reps`` run it on fewer replicates and scale its time up linearly (its cost is
a Python loop per replicate), and the JSON says so. Wall-clock and CPU (process) seconds are
both recorded: on a shared machine the CPU ratio is the steadier one.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_stats.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_stats.py --rliable-reps 5000

Writes benchmarks/results/stats.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from offrl.evaluation import stats  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "stats.json"


def score_matrices(algorithms: int, tasks: int, runs: int, seed: int) -> dict[str, np.ndarray]:
    """Normalised scores (runs, tasks) with different means and spreads per algorithm."""
    rng = np.random.default_rng(seed)
    task_level = rng.uniform(30, 90, size=tasks)
    return {f"algo{i}": task_level + rng.normal(3 * i - 15, 5, size=tasks)
            + rng.normal(0, rng.uniform(3, 15), size=(runs, tasks)) for i in range(algorithms)}


class Timer:
    """Wall-clock and CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def time_ours(scores, reps, poi_reps, seed):
    with Timer() as agg_time:
        aggregates = stats.aggregate_intervals(scores, reps=reps, seed=seed)
    with Timer() as poi_time:
        poi = stats.probability_of_improvement_intervals(scores, reps=poi_reps, seed=seed)
    return aggregates, poi, agg_time, poi_time


def time_rliable(scores, reps, poi_reps):
    from rliable import library, metrics

    def aggregate_func(x):
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x),
                         metrics.aggregate_median(x), metrics.aggregate_optimality_gap(x, 100)])

    np.random.seed(0)   # rliable ignores random_state; the global seed makes it repeatable
    with Timer() as agg_time:
        _, aggregate_cis = library.get_interval_estimates(scores, aggregate_func, reps=reps)
    pairs = {f"{x},{y}": [scores[x], scores[y]] for x, y in stats.all_pairs(list(scores))}
    with Timer() as poi_time:
        _, poi_cis = library.get_interval_estimates(pairs, metrics.probability_of_improvement,
                                                    reps=poi_reps)
    return aggregate_cis, poi_cis, agg_time, poi_time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=9)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--reps", type=int, default=50_000, help="aggregate replicates")
    parser.add_argument("--poi-reps", type=int, default=2_000, help="P(X > Y) replicates")
    parser.add_argument("--rliable-reps", type=int, default=None,
                        help="replicates rliable actually runs for aggregates (default: --reps); "
                             "its time is scaled up to --reps")
    parser.add_argument("--rliable-poi-reps", type=int, default=None,
                        help="replicates rliable actually runs for P(X > Y) (default: --poi-reps)")
    parser.add_argument("--skip-rliable", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    scores = score_matrices(args.algorithms, args.tasks, args.runs, args.seed)
    n_pairs = args.algorithms * (args.algorithms - 1) // 2
    print(f"workload: {args.algorithms} algorithms × {args.tasks} tasks × {args.runs} seeds; "
          f"4 aggregates × {args.reps} replicates + {n_pairs} pairs × {args.poi_reps} replicates; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")

    stats.aggregate_intervals({"warmup": scores["algo0"]}, reps=100)   # imports, first calls
    aggregates, poi, ours_agg_t, ours_poi_t = time_ours(scores, args.reps, args.poi_reps,
                                                        args.seed)
    ours_agg, ours_poi = ours_agg_t.wall, ours_poi_t.wall
    ours_total = ours_agg + ours_poi
    ours_cpu = ours_agg_t.cpu + ours_poi_t.cpu
    print(f"offrl:   aggregates {ours_agg:7.2f} s   P(improvement) {ours_poi:6.2f} s   "
          f"total {ours_total:7.2f} s   (CPU {ours_cpu:.2f} s)")
    result = {
        "workload": {"algorithms": args.algorithms, "tasks": args.tasks, "runs": args.runs,
                     "aggregate_reps": args.reps, "poi_reps": args.poi_reps, "pairs": n_pairs},
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "cpus": os.cpu_count(), "platform": platform.platform(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "offrl_seconds": {"aggregates": ours_agg, "probability_of_improvement": ours_poi,
                          "total": ours_total,
                          "cpu": {"aggregates": ours_agg_t.cpu,
                                  "probability_of_improvement": ours_poi_t.cpu,
                                  "total": ours_cpu}},
    }

    if not args.skip_rliable:
        rl_reps = args.rliable_reps or args.reps
        rl_poi_reps = args.rliable_poi_reps or args.poi_reps
        agg_cis, poi_cis, rl_agg_t, rl_poi_t = time_rliable(scores, rl_reps, rl_poi_reps)
        rl_agg, rl_poi = rl_agg_t.wall, rl_poi_t.wall
        scaled_agg = rl_agg * args.reps / rl_reps
        scaled_poi = rl_poi * args.poi_reps / rl_poi_reps
        scaled_cpu = (rl_agg_t.cpu * args.reps / rl_reps
                      + rl_poi_t.cpu * args.poi_reps / rl_poi_reps)
        extrapolated = rl_reps != args.reps or rl_poi_reps != args.poi_reps
        rl_total = scaled_agg + scaled_poi
        note = " (extrapolated linearly from fewer replicates)" if extrapolated else ""
        print(f"rliable: aggregates {scaled_agg:7.2f} s   P(improvement) {scaled_poi:6.2f} s   "
              f"total {rl_total:7.2f} s   (CPU {scaled_cpu:.2f} s){note}")
        print(f"speed-up: {rl_total / ours_total:.1f}× wall, {scaled_cpu / ours_cpu:.1f}× CPU "
              f"(aggregates {scaled_agg / ours_agg:.1f}×, "
              f"P(improvement) {scaled_poi / ours_poi:.1f}×)")

        # Same numbers within Monte-Carlo error: largest endpoint gap relative to interval width.
        worst_agg = max(
            abs(agg_cis[name][side, j] - (iv.low if side == 0 else iv.high))
            / max(iv.high - iv.low, 1e-12)
            for name in scores for j, iv in enumerate(aggregates[name].values())
            for side in (0, 1))
        worst_poi = max(
            abs(poi_cis[f"{x},{y}"][side] - (iv.low if side == 0 else iv.high)).max()
            for (x, y), iv in poi.items() for side in (0, 1))
        print(f"agreement: aggregate endpoints within {100 * worst_agg:.1f}% of the interval "
              f"width; P(X > Y) endpoints within {worst_poi:.3f}")
        result["rliable_seconds"] = {
            "aggregates": scaled_agg, "probability_of_improvement": scaled_poi, "total": rl_total,
            "cpu_total": scaled_cpu,
            "measured": {"aggregates": rl_agg, "probability_of_improvement": rl_poi},
            "reps_run": {"aggregates": rl_reps, "probability_of_improvement": rl_poi_reps},
            "extrapolated": extrapolated}
        result["speedup"] = {"total": rl_total / ours_total, "aggregates": scaled_agg / ours_agg,
                             "probability_of_improvement": scaled_poi / ours_poi,
                             "cpu_total": scaled_cpu / ours_cpu}
        result["agreement"] = {"aggregate_endpoint_gap_over_width": worst_agg,
                               "poi_endpoint_gap": float(worst_poi)}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
