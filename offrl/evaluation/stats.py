"""Aggregate scores with stratified-bootstrap confidence intervals (rliable semantics, vectorised).

Scores are normalised scores (×100) shaped ``(runs, tasks)`` per algorithm: one row per seed,
one column per dataset. An algorithm may also be given as a list of per-task 1-D arrays when
its tasks have different numbers of runs (a seed that crashed on one dataset); every formula
below is written per task, so nothing changes except that "all runs × tasks" then has
``sum(runs_t)`` entries.

Point estimates (identical to ``rliable.metrics``):

- IQM: ``scipy.stats.trim_mean(all runs × tasks, 0.25)``, i.e. drop ``floor(N/4)`` at each end.
- Mean: mean of the per-task means.  Median: median of the per-task means.
- Optimality gap: ``gamma - mean(min(score, gamma))`` over all runs × tasks. ``gamma`` is 100
  here because our scores are ×100 (rliable's default of 1 is for fractions).
- P(X > Y): per task, Mann-Whitney ``U / (n_x n_y)`` with ties counting ½, averaged over tasks.
- Performance profiles: fraction of runs (run-score distribution) or of per-task means
  (average-score distribution) with ``score > tau`` (strict), for each ``tau`` of a grid.

Intervals: stratified bootstrap, percentile method, as in ``rliable.library``. Every replicate
resamples the runs of each task with replacement (tasks stay fixed); for P(X > Y) the runs of X
and of Y are resampled independently. The interval is ``np.percentile`` (linear) of the
replicates at ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``.

Speed: a replicate is represented by how many times each run was drawn, ``counts`` of shape
``(reps, N)``. Means are then matrix products, the trimmed mean is a cumulative sum over the
runs pre-sorted once (no per-replicate sort), and U statistics are ``counts_x @ G @ counts_y``
with ``G[a, b] = [x_a > y_b] + ½[x_a = y_b]``. Replicates are processed in chunks to bound
memory. Randomness comes from ``numpy.random.Generator`` streams derived from ``(seed, what,
algorithm)``, so an algorithm's interval depends only on the seed and its own scores — adding
another algorithm to a report does not move it.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import scipy.stats

from offrl.errors import UserError

AGGREGATE_METRICS = ("IQM", "Mean", "Median", "Optimality Gap")
DEFAULT_GAMMA = 100.0          # optimality-gap threshold on ×100 normalised scores
_MAX_CHUNK_ELEMENTS = 2_000_000  # replicates × runs held at once (16 MB of float64)


class ScoreError(UserError, ValueError):
    """Scores that cannot be aggregated (NaN, empty, mismatched tasks). The message says which."""


class Interval(NamedTuple):
    """A point estimate and its confidence interval, in the units of the scores."""

    point: float
    low: float
    high: float


class Profile(NamedTuple):
    """A performance profile: fraction above each threshold, with pointwise intervals.

    All arrays have shape ``(len(taus),)``; fractions are in [0, 1].
    """

    taus: np.ndarray
    point: np.ndarray
    low: np.ndarray
    high: np.ndarray


ScoreInput = np.ndarray | Sequence[np.ndarray]


# ----------------------------------------------------------------------------- input checks


def as_task_columns(scores: ScoreInput, name: str = "scores") -> list[np.ndarray]:
    """Validate one algorithm's scores and return them as a list of per-task 1-D float arrays.

    ``scores``: a 2-D array ``(runs, tasks)``, or a list/tuple of per-task 1-D arrays ``(runs_t,)``.
    """
    if isinstance(scores, np.ndarray):
        if scores.ndim != 2:
            raise ScoreError(f"{name}: expected scores shaped (runs, tasks), "
                             f"got shape {scores.shape}")
        columns = [scores[:, t] for t in range(scores.shape[1])]
    elif isinstance(scores, (list, tuple)):
        columns = [np.asarray(c) for c in scores]
        for t, c in enumerate(columns):
            if c.ndim != 1:
                raise ScoreError(f"{name}: task {t} should be a 1-D array of run scores, "
                                 f"got shape {c.shape}")
    else:
        raise ScoreError(f"{name}: expected a (runs, tasks) numpy array or a list of per-task "
                         f"arrays, got {type(scores).__name__}")
    if not columns:
        raise ScoreError(f"{name}: no tasks (scores have 0 columns)")
    out = []
    for t, c in enumerate(columns):
        if c.size == 0:
            raise ScoreError(f"{name}: task {t} has no runs")
        try:
            c = c.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ScoreError(f"{name}: task {t} holds non-numeric scores ({exc})") from None
        bad = ~np.isfinite(c)
        if bad.any():
            raise ScoreError(f"{name}: task {t} has {int(bad.sum())} non-finite score(s) "
                             f"(NaN or inf) at run(s) {np.flatnonzero(bad).tolist()}")
        out.append(c)
    return out


def check_score_dict(score_dict: Mapping[str, ScoreInput]) -> dict[str, list[np.ndarray]]:
    """Validate ``{algorithm: scores}``: finite, non-empty, and the same number of tasks for all."""
    if not score_dict:
        raise ScoreError("no algorithms given")
    checked = {str(name): as_task_columns(s, f"algorithm {name!r}")
               for name, s in score_dict.items()}
    n_tasks = {name: len(cols) for name, cols in checked.items()}
    if len(set(n_tasks.values())) > 1:
        listing = ", ".join(f"{name!r}: {n}" for name, n in n_tasks.items())
        raise ScoreError(f"algorithms have different numbers of tasks ({listing}); every "
                         "algorithm needs scores on the same tasks, in the same order")
    return checked


def _check_bootstrap_args(reps: int, confidence: float) -> None:
    if int(reps) != reps or reps < 1:
        raise ScoreError(f"reps must be a positive integer, got {reps!r}")
    if not 0.0 < confidence < 1.0:
        raise ScoreError(f"confidence must be in (0, 1), got {confidence!r}")


# ----------------------------------------------------------------------------- point estimates


def iqm(scores: ScoreInput) -> float:
    """Interquartile mean over all runs × tasks (25% trimmed from each end)."""
    values = np.concatenate(as_task_columns(scores))
    return float(scipy.stats.trim_mean(values, 0.25))


def mean_score(scores: ScoreInput) -> float:
    """Mean over tasks of the per-task mean score."""
    return float(np.mean([c.mean() for c in as_task_columns(scores)]))


def median_score(scores: ScoreInput) -> float:
    """Median over tasks of the per-task mean score."""
    return float(np.median([c.mean() for c in as_task_columns(scores)]))


def optimality_gap(scores: ScoreInput, gamma: float = DEFAULT_GAMMA) -> float:
    """``gamma - mean(min(score, gamma))`` over all runs × tasks: how far below ``gamma``."""
    values = np.concatenate(as_task_columns(scores))
    return float(gamma - np.mean(np.minimum(values, gamma)))


def _win_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``G[a, b] = 1`` if ``x[a] > y[b]``, ½ if equal, 0 otherwise; shape ``(len(x), len(y))``."""
    diff = x[:, None] - y[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def probability_of_improvement(scores_x: ScoreInput, scores_y: ScoreInput) -> float:
    """P(X > Y): per task Mann-Whitney U / (n_x n_y), ties ½, averaged over tasks."""
    cols_x = as_task_columns(scores_x, "scores_x")
    cols_y = as_task_columns(scores_y, "scores_y")
    if len(cols_x) != len(cols_y):
        raise ScoreError(f"scores_x has {len(cols_x)} tasks but scores_y has {len(cols_y)}")
    return float(np.mean([_win_matrix(x, y).mean() for x, y in zip(cols_x, cols_y)]))


def score_distribution(scores: ScoreInput, taus: np.ndarray) -> np.ndarray:
    """Run-score distribution: fraction of runs × tasks with ``score > tau``; ``(len(taus),)``."""
    values = np.concatenate(as_task_columns(scores))
    return (values[:, None] > np.asarray(taus, dtype=float)[None, :]).mean(axis=0)


def average_score_distribution(scores: ScoreInput, taus: np.ndarray) -> np.ndarray:
    """Average-score distribution: fraction of tasks whose mean score is ``> tau``."""
    task_means = np.array([c.mean() for c in as_task_columns(scores)])
    return (task_means[:, None] > np.asarray(taus, dtype=float)[None, :]).mean(axis=0)


# ----------------------------------------------------------------------------- bootstrap core


def _rng(seed: int, *key: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``key`` (e.g. the metric and algorithm)."""
    if int(seed) != seed or seed < 0:
        raise ScoreError(f"seed must be a non-negative integer, got {seed!r}")
    words = [int(seed)] + [zlib.crc32(k.encode("utf-8")) for k in key]
    return np.random.default_rng(np.random.SeedSequence(words))


def _draw_counts(rng: np.random.Generator, reps: int, n_runs: int) -> np.ndarray:
    """How often each of ``n_runs`` runs is drawn in ``reps`` resamples of size ``n_runs``.

    Same distribution as drawing ``(reps, n_runs)`` indices with replacement; shape
    ``(reps, n_runs)``, float64 so that it feeds matrix products directly.
    """
    idx = rng.integers(0, n_runs, size=(reps, n_runs))
    return counts_from_indices(idx, n_runs)


def counts_from_indices(idx: np.ndarray, n_runs: int) -> np.ndarray:
    """Turn resampled run indices ``(reps, k)`` into draw counts ``(reps, n_runs)``."""
    reps = idx.shape[0]
    flat = idx + n_runs * np.arange(reps)[:, None]
    counts = np.bincount(flat.ravel(), minlength=reps * n_runs).reshape(reps, n_runs)
    return counts.astype(np.float64)


def _chunks(reps: int, n_per_rep: int):
    size = max(1, min(reps, _MAX_CHUNK_ELEMENTS // max(1, n_per_rep)))
    for start in range(0, reps, size):
        yield min(size, reps - start)


def _percentile_interval(replicates: np.ndarray,
                         confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0 (``np.percentile``, linear), as arch/rliable do."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail], axis=0)
    return low, high


class _Layout:
    """One algorithm's runs flattened task by task, with what the replicate formulas need."""

    def __init__(self, columns: list[np.ndarray]):
        self.columns = columns
        self.runs_per_task = np.array([len(c) for c in columns])
        self.offsets = np.concatenate([[0], np.cumsum(self.runs_per_task)[:-1]])
        self.values = np.concatenate(columns)                       # (N,) task by task
        self.n = self.values.size
        task_of_run = np.repeat(np.arange(len(columns)), self.runs_per_task)
        # (N, tasks): run value in its task's column, so that counts @ this = per-task sums
        self.task_values = np.zeros((self.n, len(columns)))
        self.task_values[np.arange(self.n), task_of_run] = self.values
        # Trimmed mean, as scipy.stats.trim_mean: keep sorted positions [trim, N - trim).
        self.order = np.argsort(self.values, kind="stable")
        self.sorted_values = self.values[self.order]
        self.trim = int(0.25 * self.n)

    def draw(self, rng: np.random.Generator, reps: int) -> np.ndarray:
        """Stratified resample counts ``(reps, N)``: each task's runs resampled on their own."""
        flat = np.empty((reps, self.n), dtype=np.int64)
        for offset, runs in zip(self.offsets, self.runs_per_task):
            flat[:, offset:offset + runs] = rng.integers(0, runs, size=(reps, runs)) + offset
        flat += (self.n * np.arange(reps))[:, None]
        return np.bincount(flat.ravel(), minlength=reps * self.n).reshape(reps, self.n)

    def task_means(self, counts: np.ndarray) -> np.ndarray:
        """Per-task means of the resampled runs: ``(reps, tasks)``."""
        return (counts @ self.task_values) / self.runs_per_task

    def trimmed_mean(self, counts: np.ndarray) -> np.ndarray:
        """IQM of each resample ``(reps,)`` without sorting it.

        The runs are sorted once; a resample's sorted sequence is each value repeated ``count``
        times, so with ``c_k`` the cumulative count up to the k-th smallest value, the number of
        copies of that value inside the kept window is ``a_k - a_{k-1}``, ``a = clip(c, lo, hi)``.
        Summing by parts,
        ``sum_k (a_k - a_{k-1}) v_k = hi v_N - lo v_1 - sum_{k<N} a_k (v_{k+1} - v_k)``.
        """
        lo, hi = self.trim, self.n - self.trim
        cum = np.cumsum(counts[:, self.order[:-1]], axis=1)
        kept = np.clip(cum, lo, hi).astype(np.float64)
        v = self.sorted_values
        total = hi * v[-1] - lo * v[0] - kept @ np.diff(v)
        return total / (hi - lo)


def _aggregate_replicates(layout: _Layout, counts: np.ndarray, metrics: Sequence[str],
                          gamma: float) -> np.ndarray:
    """The aggregates of each resample described by ``counts``: ``(reps, len(metrics))``."""
    out = np.empty((counts.shape[0], len(metrics)))
    task_means = None
    as_float = counts.astype(np.float64)  # BLAS products want floats; the cumsum wants ints
    for j, metric in enumerate(metrics):
        if metric == "IQM":
            out[:, j] = layout.trimmed_mean(counts)
        elif metric in ("Mean", "Median"):
            if task_means is None:
                task_means = layout.task_means(as_float)
            out[:, j] = (task_means.mean(axis=1) if metric == "Mean"
                         else np.median(task_means, axis=1))
        elif metric == "Optimality Gap":
            out[:, j] = gamma - (as_float @ np.minimum(layout.values, gamma)) / layout.n
        else:  # checked by the caller
            raise AssertionError(metric)
    return out


def _point_aggregates(columns: list[np.ndarray], metrics: Sequence[str],
                      gamma: float) -> list[float]:
    funcs = {"IQM": iqm, "Mean": mean_score, "Median": median_score,
             "Optimality Gap": lambda c: optimality_gap(c, gamma)}
    return [funcs[m](list(columns)) for m in metrics]


# ----------------------------------------------------------------------------- public intervals


def aggregate_intervals(
    score_dict: Mapping[str, ScoreInput],
    metrics: Sequence[str] = AGGREGATE_METRICS,
    reps: int = 50_000,
    confidence: float = 0.95,
    seed: int = 0,
    gamma: float = DEFAULT_GAMMA,
) -> dict[str, dict[str, Interval]]:
    """IQM / Mean / Median / Optimality Gap with stratified-bootstrap percentile intervals.

    ``score_dict``: ``{algorithm: (runs, tasks) scores}``. Returns
    ``{algorithm: {metric: Interval(point, low, high)}}``. All metrics of one algorithm are
    computed on the same resamples (as rliable does when ``func`` returns several metrics).
    """
    checked = check_score_dict(score_dict)
    _check_bootstrap_args(reps, confidence)
    unknown = [m for m in metrics if m not in AGGREGATE_METRICS]
    if unknown:
        raise ScoreError(f"unknown metric(s) {unknown}; choose from {list(AGGREGATE_METRICS)}")
    results = {}
    for name, columns in checked.items():
        layout = _Layout(columns)
        rng = _rng(seed, "aggregates", name)
        replicates = np.concatenate([
            _aggregate_replicates(layout, layout.draw(rng, chunk), metrics, gamma)
            for chunk in _chunks(reps, layout.n)
        ])
        low, high = _percentile_interval(replicates, confidence)
        points = _point_aggregates(columns, metrics, gamma)
        results[name] = {m: Interval(points[j], float(low[j]), float(high[j]))
                         for j, m in enumerate(metrics)}
    return results


def task_mean_intervals(
    score_dict: Mapping[str, ScoreInput],
    reps: int = 50_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, list[Interval]]:
    """Per-task mean over runs with a bootstrap percentile interval (runs resampled).

    Returns ``{algorithm: [Interval per task]}``. A task with one run gets a zero-width interval.
    """
    checked = check_score_dict(score_dict)
    _check_bootstrap_args(reps, confidence)
    results = {}
    for name, columns in checked.items():
        rng = _rng(seed, "task_means", name)
        intervals = []
        for x in columns:
            means = np.concatenate([_draw_counts(rng, chunk, x.size) @ x / x.size
                                    for chunk in _chunks(reps, x.size)])
            low, high = _percentile_interval(means, confidence)
            intervals.append(Interval(float(x.mean()), float(low), float(high)))
        results[name] = intervals
    return results


def all_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair ``(x, y)`` with x before y in ``names``."""
    return list(itertools.combinations(names, 2))


def probability_of_improvement_intervals(
    score_dict: Mapping[str, ScoreInput],
    pairs: Sequence[tuple[str, str]] | None = None,
    reps: int = 2_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[tuple[str, str], Interval]:
    """P(X > Y) with stratified-bootstrap intervals for each pair ``(X, Y)`` (default: all pairs).

    Runs of X and of Y are resampled independently within each task, as in rliable. Each
    algorithm's resamples are drawn once and shared by all its pairs: every pair's interval has
    exactly rliable's distribution, and ``P(Y > X)`` replicates are ``1 - P(X > Y)`` ones.
    """
    checked = check_score_dict(score_dict)
    _check_bootstrap_args(reps, confidence)
    names = list(checked)
    pairs = all_pairs(names) if pairs is None else [tuple(p) for p in pairs]
    for x, y in pairs:
        for name in (x, y):
            if name not in checked:
                raise ScoreError(f"pair ({x!r}, {y!r}): unknown algorithm {name!r}; "
                                 f"known: {names}")
    involved = sorted({name for pair in pairs for name in pair}, key=names.index)
    # counts[name][t]: (reps, runs_t) draw counts of that algorithm's runs on task t
    counts = {}
    for name in involved:
        rng = _rng(seed, "probability_of_improvement", name)
        counts[name] = [_draw_counts(rng, reps, c.size) for c in checked[name]]
    results = {}
    for x, y in pairs:
        per_task = []
        for t, (cx, cy) in enumerate(zip(checked[x], checked[y])):
            wins = _win_matrix(cx, cy)
            u = np.einsum("ra,ra->r", counts[x][t] @ wins, counts[y][t])
            per_task.append(u / (cx.size * cy.size))
        replicates = np.mean(per_task, axis=0)
        low, high = _percentile_interval(replicates, confidence)
        point = float(np.mean([_win_matrix(cx, cy).mean()
                               for cx, cy in zip(checked[x], checked[y])]))
        results[(x, y)] = Interval(point, float(low), float(high))
    return results


def performance_profiles(
    score_dict: Mapping[str, ScoreInput],
    taus: np.ndarray,
    kind: str = "runs",
    reps: int = 2_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Profile]:
    """Performance profiles with stratified-bootstrap pointwise intervals.

    ``kind="runs"``: run-score distribution, fraction of all runs × tasks with score > tau.
    ``kind="average"``: average-score distribution, fraction of tasks whose mean is > tau.
    ``taus``: 1-D grid of thresholds in score units. Returns ``{algorithm: Profile}``.
    """
    if kind not in ("runs", "average"):
        raise ScoreError(f"kind must be 'runs' or 'average', got {kind!r}")
    checked = check_score_dict(score_dict)
    _check_bootstrap_args(reps, confidence)
    taus = np.asarray(taus, dtype=float)
    if taus.ndim != 1 or taus.size == 0 or not np.isfinite(taus).all():
        raise ScoreError("taus must be a non-empty 1-D array of finite thresholds")
    results = {}
    for name, columns in checked.items():
        layout = _Layout(columns)
        rng = _rng(seed, f"profile_{kind}", name)
        above = (layout.values[:, None] > taus[None, :]).astype(np.float64)   # (N, taus)
        parts = []
        # per replicate: N counts, and (average kind) tasks × taus comparisons
        for chunk in _chunks(reps, max(layout.n, len(columns) * taus.size)):
            counts = layout.draw(rng, chunk).astype(np.float64)
            if kind == "runs":
                parts.append(counts @ above / layout.n)
            else:
                means = layout.task_means(counts)
                parts.append((means[:, :, None] > taus[None, None, :]).mean(axis=1))
        low, high = _percentile_interval(np.concatenate(parts), confidence)
        point = (score_distribution(columns, taus) if kind == "runs"
                 else average_score_distribution(columns, taus))
        results[name] = Profile(taus, point, low, high)
    return results


def default_taus(score_dict: Mapping[str, ScoreInput], points: int = 101) -> np.ndarray:
    """A τ grid from just below the lowest score to the highest (or 0–100 if that is wider)."""
    checked = check_score_dict(score_dict)
    values = np.concatenate([np.concatenate(cols) for cols in checked.values()])
    low = min(0.0, float(values.min()))
    high = max(100.0, float(values.max()))
    return np.linspace(low, high, points)


def curve_intervals(
    values: np.ndarray,
    reps: int = 2_000,
    confidence: float = 0.95,
    seed: int = 0,
    key: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs at each point of a curve, with a bootstrap percentile interval.

    ``values``: ``(points, runs)``, NaN where a run has no value at that point (it is left out
    there). Returns ``(mean, low, high)``, each ``(points,)``; NaN where no run has a value.
    Points with the same set of runs share one resample of those runs, so a whole learning
    curve costs one matrix product per distinct set.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ScoreError(f"curve values must be (points, runs), got shape {values.shape}")
    _check_bootstrap_args(reps, confidence)
    present = np.isfinite(values)
    mean = np.full(values.shape[0], np.nan)
    low, high = mean.copy(), mean.copy()
    rng = _rng(seed, "curve", key)
    patterns, which = np.unique(present, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        if not pattern.any():
            continue
        rows = np.flatnonzero(which.ravel() == p)
        block = values[np.ix_(rows, np.flatnonzero(pattern))]        # (points, runs present)
        counts = _draw_counts(rng, reps, block.shape[1])               # (reps, runs present)
        replicates = counts @ block.T / block.shape[1]                 # (reps, points)
        mean[rows] = block.mean(axis=1)
        low[rows], high[rows] = _percentile_interval(replicates, confidence)
    return mean, low, high
