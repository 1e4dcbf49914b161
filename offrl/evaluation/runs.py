"""Read run directories (docs/run-directory.md) into per-seed scores and learning curves.

A run directory holds one algorithm on one dataset, with several seeds; each seed is a run.
The score of a run is the mean ``normalized_score`` over the episodes of that seed's last
evaluation step (last iterate, not best). Only runs whose run.json ``status`` is "complete"
have a final evaluation, so others are left out (with a warning) unless asked for. Several
directories of the same algorithm and dataset (e.g. seeds 0-4 and 5-9 trained separately) are
merged; the same seed twice is an error.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from offrl.errors import UserError

EVALUATION_COLUMNS = ("step", "seed", "episode", "return", "normalized_score")


class RunDirError(UserError, ValueError):
    """A run directory that cannot be read, or runs that cannot be put together."""


@dataclass
class Curve:
    """Values per step and seed: ``values[s, r]`` at ``steps[s]`` for ``seeds[r]`` (NaN: none)."""

    steps: np.ndarray   # (points,) gradient steps, increasing
    seeds: list[int]
    values: np.ndarray  # (points, seeds)

    @staticmethod
    def merge(curves: Sequence[Curve]) -> Curve:
        """Put curves of disjoint seeds side by side on the union of their steps."""
        steps = np.unique(np.concatenate([c.steps for c in curves]))
        seeds = [s for c in curves for s in c.seeds]
        values = np.full((steps.size, len(seeds)), np.nan)
        col = 0
        for c in curves:
            rows = np.searchsorted(steps, c.steps)
            values[rows, col:col + len(c.seeds)] = c.values
            col += len(c.seeds)
        return Curve(steps, seeds, values)


@dataclass
class RunDir:
    """One run directory: identity, per-seed scores, and curves."""

    path: Path
    algo: str                     # label used in reports: run.json "algo" unless overridden
    dataset_id: str
    info: dict                    # run.json
    scores: dict[int, float]      # seed -> mean normalized score at its last evaluation step
    final_steps: dict[int, int]   # seed -> that step
    evaluation: Curve             # mean normalized score per evaluation step and seed
    metrics: dict[str, Curve] = field(default_factory=dict)  # metrics.csv, one curve per column

    @property
    def status(self) -> str:
        return str(self.info.get("status", "unknown"))


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read ({exc.strerror})") from None
    except csv.Error as exc:
        raise RunDirError(f"{path}: not a valid CSV file ({exc})") from None


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise RunDirError(f"{path}, line {line}: column {column!r} should be a number, "
                          f"got {text!r}") from None


def _read_evaluations(path: Path, info: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(step, seed, normalized_score)`` per episode row of evaluations.csv."""
    columns, rows = _read_csv(path)
    missing = [c for c in EVALUATION_COLUMNS if c not in columns]
    if missing:
        raise RunDirError(f"{path}: missing column(s) {missing}; expected "
                          f"{list(EVALUATION_COLUMNS)} (see docs/run-directory.md)")
    if not rows:
        raise RunDirError(f"{path}: no evaluation rows yet (the run has not been evaluated)")
    ref_min, ref_max = info.get("ref_min_score"), info.get("ref_max_score")
    steps, seeds, scores = [], [], []
    for line, row in enumerate(rows, start=2):
        steps.append(_number(row["step"], path, line, "step"))
        seeds.append(_number(row["seed"], path, line, "seed"))
        text = (row["normalized_score"] or "").strip()
        if text:
            score = _number(text, path, line, "normalized_score")
        elif ref_min is not None and ref_max is not None and ref_max != ref_min:
            # The card had no reference scores when the run was evaluated, run.json has them now.
            ret = _number(row["return"], path, line, "return")
            score = 100.0 * (ret - ref_min) / (ref_max - ref_min)
        else:
            raise RunDirError(f"{path}, line {line}: normalized_score is empty and run.json has "
                              "no ref_min_score/ref_max_score to compute it from")
        if not math.isfinite(score):
            raise RunDirError(f"{path}, line {line}: normalized_score is {score} (not finite)")
        scores.append(score)
    return np.array(steps, dtype=np.int64), np.array(seeds, dtype=np.int64), np.array(scores)


def _per_step_curve(steps: np.ndarray, seeds: np.ndarray, values: np.ndarray) -> Curve:
    """Mean of ``values`` per (step, seed), as a Curve."""
    step_ids, step_index = np.unique(steps, return_inverse=True)
    seed_ids, seed_index = np.unique(seeds, return_inverse=True)
    sums = np.zeros((step_ids.size, seed_ids.size))
    counts = np.zeros_like(sums)
    np.add.at(sums, (step_index, seed_index), values)
    np.add.at(counts, (step_index, seed_index), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / counts, np.nan)
    return Curve(step_ids, [int(s) for s in seed_ids], mean)


def _read_metrics(path: Path) -> dict[str, Curve]:
    """metrics.csv (step, seed, <metric>...) as one curve per numeric metric column."""
    columns, rows = _read_csv(path)
    if not rows or "step" not in columns or "seed" not in columns:
        return {}
    steps = np.array([_number(r["step"], path, i, "step") for i, r in enumerate(rows, 2)])
    seeds = np.array([_number(r["seed"], path, i, "seed") for i, r in enumerate(rows, 2)])
    curves = {}
    for column in columns:
        if column in ("step", "seed"):
            continue
        try:  # empty cells (a metric logged less often) become NaN and are skipped
            values = np.array([float(r[column]) if r[column] not in ("", None) else np.nan
                               for r in rows])
        except ValueError:
            continue  # a text column is not a metric
        keep = np.isfinite(values)
        if keep.any():
            curves[column] = _per_step_curve(steps[keep], seeds[keep], values[keep])
    return curves


def read_run_dir(path: str | Path, label: str | None = None) -> RunDir:
    """Read one run directory; ``label`` replaces run.json's ``algo`` as the algorithm name."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: not a directory")
    run_json = path / "run.json"
    evaluations = path / "evaluations.csv"
    for needed in (run_json, evaluations):
        if not needed.is_file():
            raise RunDirError(f"{path}: missing {needed.name} (a run directory holds run.json and "
                              "evaluations.csv, see docs/run-directory.md)")
    try:
        info = json.loads(run_json.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{run_json}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise RunDirError(f"{run_json}: expected a JSON object")
    for key in ("algo", "dataset_id"):
        if not info.get(key):
            raise RunDirError(f"{run_json}: missing {key!r}")
    steps, seeds, scores = _read_evaluations(evaluations, info)
    curve = _per_step_curve(steps, seeds, scores)
    run_scores, final_steps = {}, {}
    for r, seed in enumerate(curve.seeds):
        evaluated = np.flatnonzero(np.isfinite(curve.values[:, r]))
        last = evaluated[-1]
        run_scores[seed] = float(curve.values[last, r])
        final_steps[seed] = int(curve.steps[last])
    metrics_path = path / "metrics.csv"
    metrics = _read_metrics(metrics_path) if metrics_path.is_file() else {}
    return RunDir(path=path, algo=label or str(info["algo"]), dataset_id=str(info["dataset_id"]),
                  info=info, scores=run_scores, final_steps=final_steps, evaluation=curve,
                  metrics=metrics)


def find_run_dirs(path: str | Path) -> list[Path]:
    """``path`` itself if it is a run directory, else every run directory below it (sorted)."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"{path}: no such file or directory")
    if (path / "run.json").is_file():
        return [path]
    found = sorted(p.parent for p in path.rglob("run.json"))
    if not found:
        raise RunDirError(f"{path}: no run directories (no run.json) found in it")
    return found


@dataclass
class RunSet:
    """Runs grouped by (algorithm, dataset); algorithms in the order given, datasets sorted."""

    runs: list[RunDir]
    warnings: list[str]

    @property
    def algorithms(self) -> list[str]:
        return list(dict.fromkeys(r.algo for r in self.runs))

    @property
    def datasets(self) -> list[str]:
        return sorted({r.dataset_id for r in self.runs})

    def group(self, algo: str, dataset: str) -> list[RunDir]:
        return [r for r in self.runs if r.algo == algo and r.dataset_id == dataset]

    def seed_scores(self, algo: str, dataset: str) -> dict[int, float]:
        """``{seed: score}`` of one algorithm on one dataset, seeds in increasing order."""
        merged = {}
        for run in self.group(algo, dataset):
            merged.update(run.scores)
        return dict(sorted(merged.items()))

    def missing(self) -> list[tuple[str, str]]:
        """(algorithm, dataset) pairs with no runs."""
        return [(a, d) for a in self.algorithms for d in self.datasets if not self.group(a, d)]

    def common_datasets(self) -> list[str]:
        return [d for d in self.datasets if all(self.group(a, d) for a in self.algorithms)]

    def score_columns(self, datasets: Sequence[str] | None = None) -> dict[str, list[np.ndarray]]:
        """``{algorithm: [scores of its seeds on each dataset]}`` for the statistics engine.

        Every algorithm must have runs on every dataset (mismatched task sets cannot be
        aggregated); the error lists what is missing.
        """
        datasets = list(self.datasets if datasets is None else datasets)
        missing = [(a, d) for a in self.algorithms for d in datasets if not self.group(a, d)]
        if missing:
            by_algo: dict[str, list[str]] = {}
            for a, d in missing:
                by_algo.setdefault(a, []).append(d)
            listing = "; ".join(f"{a} has no runs on {', '.join(ds)}" for a, ds in by_algo.items())
            raise RunDirError(f"algorithms were run on different datasets ({listing}); "
                              "aggregates need every algorithm on every dataset "
                              "(pass the missing runs, or restrict to the common datasets)")
        return {a: [np.array(list(self.seed_scores(a, d).values())) for d in datasets]
                for a in self.algorithms}

    def evaluation_curve(self, algo: str, dataset: str) -> Curve:
        return Curve.merge([r.evaluation for r in self.group(algo, dataset)])

    def metric_curves(self, algo: str, dataset: str) -> dict[str, Curve]:
        runs = self.group(algo, dataset)
        names = list(dict.fromkeys(m for r in runs for m in r.metrics))
        return {m: Curve.merge([r.metrics[m] for r in runs if m in r.metrics]) for m in names}


def load_runs(paths: Sequence[str | Path], labels: Sequence[str | None] | None = None,
              include_incomplete: bool = False) -> RunSet:
    """Read every run directory given or found below ``paths``.

    ``labels[i]``, when not None, names the algorithm of every run found under ``paths[i]``
    (to tell apart two variants that share run.json's ``algo``). Runs that are not "complete"
    (running, interrupted, failed) are skipped with a warning, or, with ``include_incomplete``,
    scored at their latest evaluation.
    """
    if not paths:
        raise RunDirError("no run directories given")
    if labels is not None and len(labels) != len(paths):
        raise RunDirError(f"got {len(labels)} name(s) for {len(paths)} run path(s); give one "
                          "name per path")
    runs: list[RunDir] = []
    warnings: list[str] = []
    seen: set[Path] = set()
    for i, p in enumerate(paths):
        for run_path in find_run_dirs(p):
            if run_path.resolve() in seen:
                continue
            seen.add(run_path.resolve())
            run = read_run_dir(run_path, labels[i] if labels else None)
            if run.status != "complete":
                last = max(run.final_steps.values())
                if not include_incomplete:
                    warnings.append(f"{run.path}: skipped, status is {run.status!r} (only "
                                    "complete runs have a final evaluation)")
                    continue
                warnings.append(f"{run.path}: status is {run.status!r}; using its latest "
                                f"evaluation (step {last})")
            runs.append(run)
    if not runs:
        raise RunDirError("no complete runs to report on" + (
            f" ({len(warnings)} skipped; --include-incomplete uses their latest evaluation)"
            if warnings else ""))
    owner: dict[tuple[str, str, int], Path] = {}
    for run in runs:
        for seed in run.scores:
            key = (run.algo, run.dataset_id, seed)
            if key in owner:
                raise RunDirError(f"seed {seed} of {run.algo} on {run.dataset_id} appears twice: "
                                  f"in {owner[key]} and in {run.path}; pass each seed once")
            owner[key] = run.path
    runset = RunSet(runs, warnings)
    for algo in runset.algorithms:
        for dataset in runset.datasets:
            steps = {s for r in runset.group(algo, dataset) for s in r.final_steps.values()}
            if len(steps) > 1:
                warnings.append(f"{algo} on {dataset}: seeds end at different steps "
                                f"{sorted(steps)}; each seed's score is its last evaluation")
    return runset
