"""Write a report folder from run directories: tables, interval plots, profiles, curves.

``build_report(runs, out_dir)`` writes:

- ``report.md``: everything below in one page, with the runs it was built from;
- ``table.md`` / ``table.csv``: per-dataset mean score and aggregate IQM / Mean / Median /
  Optimality Gap, each with its 95% stratified-bootstrap interval;
- ``probability_of_improvement.csv``, ``scores.csv`` (every run's score), ``report.json``;
- figures as PNG and SVG: ``aggregates``, ``profiles``, ``probability_of_improvement``,
  ``learning_curves``, and ``metrics_<dataset>`` when runs have a metrics.csv.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from offrl.evaluation import plots, stats
from offrl.evaluation.runs import RunDirError, RunSet


@dataclass
class ReportSettings:
    reps: int = 50_000            # bootstrap replicates for aggregates and per-dataset means
    profile_reps: int = 2_000     # for performance profiles and P(improvement) (rliable's default)
    curve_reps: int = 1_000       # for learning-curve bands
    confidence: float = 0.95
    seed: int = 0
    gamma: float = stats.DEFAULT_GAMMA   # optimality-gap threshold, normalized-score units
    common_datasets: bool = False  # aggregate over the datasets every algorithm has
    figures: bool = True          # False: tables and JSON only (fast)


@dataclass
class Report:
    """What was computed and written."""

    out_dir: Path
    algorithms: list[str]
    datasets: list[str]
    per_dataset: dict[str, list[stats.Interval]]            # algorithm -> one per dataset
    aggregates: dict[str, dict[str, stats.Interval]]        # algorithm -> metric -> interval
    probability_of_improvement: dict[tuple[str, str], stats.Interval]
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def format_interval(iv: stats.Interval | dict, digits: int = 1) -> str:
    """``"point [low, high]"``, from an Interval or its report.json form (a dict with the same keys)."""
    if isinstance(iv, dict):
        iv = stats.Interval(iv["point"], iv["low"], iv["high"])
    return f"{iv.point:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def improvement_from_report(report: dict, x: str, y: str) -> stats.Interval:
    """P(x > y) with its interval from a report.json, which stores each pair once: the reverse
    pair is read as P(x > y) = 1 - P(y > x), its interval flipped the same way."""
    for p in report["probability_of_improvement"]:
        if (p["x"], p["y"]) == (x, y):
            return stats.Interval(p["point"], p["low"], p["high"])
        if (p["x"], p["y"]) == (y, x):
            return stats.Interval(1 - p["point"], 1 - p["high"], 1 - p["low"])
    raise KeyError(f"report has no probability of improvement for {x!r} vs {y!r}")


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "dataset"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_figures(runs, out_dir, datasets, algorithms, aggregates, profiles, poi, colors, s):
    """Write every figure; return the files and the (dataset, stem) of training-metric ones."""
    pct = f"{100 * s.confidence:g}%"
    files: list[Path] = []
    metric_figures: list[tuple[str, str]] = []
    fig = plots.plot_interval_estimates(aggregates, stats.AGGREGATE_METRICS, colors)
    files += plots.save_figure(fig, out_dir, "aggregates")
    fig = plots.plot_performance_profiles(profiles, colors)
    files += plots.save_figure(fig, out_dir, "profiles")
    if poi:
        fig = plots.plot_probability_of_improvement(poi, colors, s.confidence)
        files += plots.save_figure(fig, out_dir, "probability_of_improvement")

    panels = []
    for dataset in datasets:
        curves = {}
        for algo in algorithms:
            curve = runs.evaluation_curve(algo, dataset)
            mean, low, high = stats.curve_intervals(curve.values, reps=s.curve_reps,
                                                    confidence=s.confidence, seed=s.seed,
                                                    key=f"{algo}/{dataset}")
            keep = np.isfinite(mean)
            curves[algo] = (curve.steps[keep], mean[keep], low[keep], high[keep])
        panels.append((dataset, curves))
    fig = plots.plot_curves(panels, colors, ylabel="Normalized score",
                            suptitle=f"Evaluation: mean over seeds, {pct} bootstrap band")
    files += plots.save_figure(fig, out_dir, "learning_curves")

    for dataset in datasets:
        by_metric: dict[str, dict] = {}
        for algo in algorithms:
            for metric, curve in runs.metric_curves(algo, dataset).items():
                mean, low, high = stats.curve_intervals(
                    curve.values, reps=s.curve_reps, confidence=s.confidence, seed=s.seed,
                    key=f"{algo}/{dataset}/{metric}")
                keep = np.isfinite(mean)
                by_metric.setdefault(metric, {})[algo] = (curve.steps[keep], mean[keep],
                                                          low[keep], high[keep])
        if by_metric:
            fig = plots.plot_curves(list(by_metric.items()), colors, ylabel="value",
                                    suptitle=f"Training metrics on {dataset} (mean over seeds)")
            stem = f"metrics_{_slug(dataset)}"
            files += plots.save_figure(fig, out_dir, stem)
            metric_figures.append((dataset, stem))
    return files, metric_figures


def build_report(runs: RunSet, out_dir: str | Path,
                 settings: ReportSettings | None = None) -> Report:
    """Compute every statistic of ``runs`` and write the report folder ``out_dir``."""
    s = settings or ReportSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings = list(runs.warnings)
    algorithms = runs.algorithms
    datasets = runs.datasets
    if s.common_datasets:
        common = runs.common_datasets()
        if not common:
            raise RunDirError("no dataset has runs of every algorithm; nothing to aggregate")
        dropped = [d for d in datasets if d not in common]
        if dropped:
            warnings.append(f"left out datasets not run by every algorithm: {', '.join(dropped)}")
        datasets = common
    columns = runs.score_columns(datasets)     # raises, naming what is missing
    colors = plots.algorithm_colors(algorithms)
    files: list[Path] = []

    per_dataset = stats.task_mean_intervals(columns, reps=s.reps, confidence=s.confidence,
                                            seed=s.seed)
    aggregates = stats.aggregate_intervals(columns, reps=s.reps, confidence=s.confidence,
                                           seed=s.seed, gamma=s.gamma)
    poi = (stats.probability_of_improvement_intervals(columns, reps=s.profile_reps,
                                                      confidence=s.confidence, seed=s.seed)
           if len(algorithms) > 1 else {})
    taus = stats.default_taus(columns)
    profiles = {
        "Run-score distribution": stats.performance_profiles(
            columns, taus, "runs", reps=s.profile_reps, confidence=s.confidence, seed=s.seed),
        "Average-score distribution": stats.performance_profiles(
            columns, taus, "average", reps=s.profile_reps, confidence=s.confidence, seed=s.seed),
    }
    pct = f"{100 * s.confidence:g}%"

    # ---- tables
    table_rows = []
    for d, dataset in enumerate(datasets):
        for algo in algorithms:
            iv = per_dataset[algo][d]
            table_rows.append(["dataset", dataset, algo, iv.point, iv.low, iv.high,
                               len(columns[algo][d])])
    for metric in stats.AGGREGATE_METRICS:
        for algo in algorithms:
            iv = aggregates[algo][metric]
            table_rows.append(["aggregate", metric, algo, iv.point, iv.low, iv.high,
                               sum(len(c) for c in columns[algo])])
    files.append(_write_csv(out_dir / "table.csv",
                            ["kind", "name", "algorithm", "point", "low", "high", "runs"],
                            table_rows))
    dataset_md = _markdown_table(
        ["dataset"] + algorithms,
        [[dataset] + [f"{format_interval(per_dataset[a][d])} (n={len(columns[a][d])})" for a in algorithms]
         for d, dataset in enumerate(datasets)])
    aggregate_md = _markdown_table(
        ["aggregate"] + algorithms,
        [[m + (f" (γ={s.gamma:g})" if m == "Optimality Gap" else "")]
         + [format_interval(aggregates[a][m]) for a in algorithms] for m in stats.AGGREGATE_METRICS])
    caption = (f"Normalized score (×100) at the last evaluation; point estimate [{pct} "
               f"stratified-bootstrap percentile interval, {s.reps} replicates, seed {s.seed}]. "
               "n = seeds.")
    (out_dir / "table.md").write_text(
        f"{caption}\n\n{aggregate_md}\n\n{dataset_md}\n")
    files.append(out_dir / "table.md")

    poi_md = ""
    if poi:
        files.append(_write_csv(
            out_dir / "probability_of_improvement.csv", ["x", "y", "point", "low", "high"],
            [[x, y, iv.point, iv.low, iv.high] for (x, y), iv in poi.items()]))
        poi_md = _markdown_table(["X", "Y", f"P(X > Y) [{pct} CI]"],
                                 [[x, y, format_interval(iv, 2)] for (x, y), iv in poi.items()])

    score_rows = []
    for run in runs.runs:
        if run.dataset_id in datasets:
            for seed, score in sorted(run.scores.items()):
                score_rows.append([run.algo, run.dataset_id, seed, run.final_steps[seed], score,
                                   str(run.path)])
    files.append(_write_csv(out_dir / "scores.csv",
                            ["algorithm", "dataset", "seed", "step", "score", "run_dir"],
                            score_rows))

    # ---- figures
    metric_figures: list[tuple[str, str]] = []
    if s.figures:
        written, metric_figures = _write_figures(runs, out_dir, datasets, algorithms,
                                                 aggregates, profiles, poi, colors, s)
        files += written

    # ---- report.md and report.json
    from offrl import __version__

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run_rows = [[r.algo, r.dataset_id, ", ".join(str(x) for x in sorted(r.scores)),
                 str(max(r.final_steps.values())), r.status,
                 str(r.info.get("git_commit") or "")[:10], str(r.path)] for r in runs.runs]
    def image(title: str, stem: str) -> str:
        return f"![{title}]({stem}.png)\n" if s.figures else ""

    parts = [
        "# offrl report", "",
        f"Built {now} by offrl {__version__} from {len(runs.runs)} run director"
        f"{'y' if len(runs.runs) == 1 else 'ies'}: {len(algorithms)} algorithm(s) × "
        f"{len(datasets)} dataset(s).", "",
        f"Score of a run = mean normalized score (×100) over the episodes of its last "
        f"evaluation. Intervals: {pct} stratified bootstrap (runs resampled within each "
        f"dataset), percentile method; {s.reps} replicates for tables, {s.profile_reps} for "
        f"profiles and P(improvement); seed {s.seed}.", "",
        "## Aggregates", "", aggregate_md, "", image("Aggregate scores", "aggregates"),
        "## Per-dataset scores", "", dataset_md, "",
    ]
    if s.figures:
        parts += ["## Performance profiles", "", image("Performance profiles", "profiles")]
    if poi:
        parts += ["## Probability of improvement", "", poi_md, "",
                  image("Probability of improvement", "probability_of_improvement")]
    if s.figures:
        parts += ["## Learning curves", "", image("Learning curves", "learning_curves")]
    if metric_figures:
        parts += ["## Training metrics", ""]
        parts += [image(f"Training metrics on {d}", stem) for d, stem in metric_figures]
    parts += ["## Runs", "",
              _markdown_table(["algorithm", "dataset", "seeds", "last step", "status", "commit",
                               "run directory"], run_rows), ""]
    if warnings:
        parts += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    (out_dir / "report.md").write_text("\n".join(parts))
    files.append(out_dir / "report.md")

    as_dict = lambda iv: {"point": iv.point, "low": iv.low, "high": iv.high}  # noqa: E731
    summary = {
        "offrl_version": __version__,
        "settings": {"reps": s.reps, "profile_reps": s.profile_reps, "curve_reps": s.curve_reps,
                     "confidence": s.confidence, "seed": s.seed, "gamma": s.gamma},
        "algorithms": algorithms,
        "datasets": datasets,
        "aggregates": {a: {m: as_dict(iv) for m, iv in aggregates[a].items()} for a in algorithms},
        "per_dataset": {a: {d: {**as_dict(per_dataset[a][i]), "runs": len(columns[a][i])}
                            for i, d in enumerate(datasets)} for a in algorithms},
        "probability_of_improvement": [{"x": x, "y": y, **as_dict(iv)}
                                       for (x, y), iv in poi.items()],
        "performance_profiles": {
            kind: {"taus": taus.tolist(),
                   "algorithms": {a: {"point": p.point.tolist(), "low": p.low.tolist(),
                                      "high": p.high.tolist()} for a, p in per_algo.items()}}
            for kind, per_algo in profiles.items()},
        "scores": [dict(zip(["algorithm", "dataset", "seed", "step", "score", "run_dir"], row))
                   for row in score_rows],
        "warnings": warnings,
    }
    (out_dir / "report.json").write_text(json.dumps(summary, indent=1))
    files.append(out_dir / "report.json")
    return Report(out_dir, algorithms, datasets, per_dataset, aggregates, poi, files, warnings)
