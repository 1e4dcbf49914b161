"""The statistics engine: hand-computed cases, agreement with rliable, determinism, bad input."""

import numpy as np
import pytest
import scipy.stats

from offrl.errors import UserError
from offrl.evaluation import stats

rliable_library = pytest.importorskip("rliable.library")
rliable_metrics = pytest.importorskip("rliable.metrics")


def _score_matrices():
    """Score dicts covering ties, unequal run counts across algorithms, and a single task."""
    rs = np.random.RandomState(0)
    return {
        "ties": {"a": np.round(rs.normal(50, 20, size=(6, 4))),
                 "b": np.round(rs.normal(55, 20, size=(6, 4)))},
        "unequal_runs": {"a": rs.normal(50, 20, size=(10, 3)),
                         "b": rs.normal(70, 5, size=(3, 3)),
                         "c": rs.gamma(2.0, 20.0, size=(7, 3))},
        "single_task": {"a": rs.normal(50, 20, size=(8, 1)),
                        "b": rs.normal(40, 20, size=(5, 1))},
    }


def _rliable_aggregates(gamma):
    return lambda x: np.array([
        rliable_metrics.aggregate_iqm(x), rliable_metrics.aggregate_mean(x),
        rliable_metrics.aggregate_median(x), rliable_metrics.aggregate_optimality_gap(x, gamma)])


# ----------------------------------------------------------------------------- hand-computed


def test_hand_computed_point_estimates():
    one_to_ten = np.arange(1, 11, dtype=float)[:, None]          # 10 runs, 1 task
    assert stats.iqm(one_to_ten) == pytest.approx(5.5)
    assert stats.probability_of_improvement(np.array([[1.0], [2.0], [3.0]]),
                                            np.array([[1.0], [2.0], [4.0]])) == pytest.approx(4 / 9)
    scores = np.array([[10.0, 100.0, 30.0], [20.0, 120.0, 50.0]])  # task means 15, 110, 40
    assert stats.mean_score(scores) == pytest.approx((15 + 110 + 40) / 3)
    assert stats.median_score(scores) == pytest.approx(40.0)
    # clipped at 100: 10, 20, 100, 100, 30, 50 -> mean 51.666..., gap 48.333...
    assert stats.optimality_gap(scores) == pytest.approx(100 - 310 / 6)
    assert stats.optimality_gap(scores / 100, gamma=1.0) == pytest.approx(1 - 3.1 / 6)
    taus = np.array([0.0, 15.0, 50.0, 200.0])
    np.testing.assert_allclose(stats.score_distribution(scores, taus), [1, 5 / 6, 2 / 6, 0])
    np.testing.assert_allclose(stats.average_score_distribution(scores, taus), [1, 2 / 3, 1 / 3, 0])


def test_identical_runs_give_half_and_zero_width_intervals():
    x = np.full((5, 2), 7.0)
    poi = stats.probability_of_improvement_intervals({"a": x, "b": x.copy()}, reps=200)
    assert poi[("a", "b")] == stats.Interval(0.5, 0.5, 0.5)
    agg = stats.aggregate_intervals({"a": x}, reps=200)["a"]
    assert agg["IQM"] == stats.Interval(7.0, 7.0, 7.0)


def test_ragged_tasks_use_every_run():
    columns = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0])]
    assert stats.iqm(columns) == pytest.approx(scipy.stats.trim_mean([1, 2, 3, 4, 10, 20], 0.25))
    assert stats.mean_score(columns) == pytest.approx((2.5 + 15) / 2)
    out = stats.aggregate_intervals({"a": columns}, reps=500)["a"]
    assert out["Mean"].low <= out["Mean"].point <= out["Mean"].high


# ----------------------------------------------------------------------------- rliable


@pytest.mark.parametrize("case", ["ties", "unequal_runs", "single_task"])
def test_point_estimates_equal_rliable(case):
    score_dict = _score_matrices()[case]
    ours = stats.aggregate_intervals(score_dict, reps=10)
    for name, scores in score_dict.items():
        expected = _rliable_aggregates(100.0)(scores)
        got = [ours[name][m].point for m in stats.AGGREGATE_METRICS]
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    names = list(score_dict)
    for x, y in stats.all_pairs(names):
        expected = rliable_metrics.probability_of_improvement(score_dict[x], score_dict[y])
        got = stats.probability_of_improvement(score_dict[x], score_dict[y])
        assert got == pytest.approx(expected, rel=1e-12)
    taus = np.linspace(0, 100, 11)
    for name, scores in score_dict.items():
        np.testing.assert_allclose(stats.score_distribution(scores, taus),
                                   rliable_library.score_distributions(scores, taus))
        np.testing.assert_allclose(stats.average_score_distribution(scores, taus),
                                   rliable_library.average_score_distributions(scores, taus))


def _counts_like_rliable(layout, idx):
    """rliable draws, per replicate, run indices (runs, tasks); turn them into our counts."""
    return np.concatenate([stats.counts_from_indices(idx[:, :, t], idx.shape[1])
                           for t in range(idx.shape[2])], axis=1)


@pytest.mark.parametrize("case", ["ties", "unequal_runs", "single_task"])
def test_bootstrap_equals_rliable_on_the_same_resamples(case):
    """Feed rliable's own resampling indices to our replicate formulas: identical intervals."""
    reps = 300
    for name, scores in _score_matrices()[case].items():
        np.random.seed(123)
        _, ci = rliable_library.get_interval_estimates(
            {name: scores}, _rliable_aggregates(100.0), reps=reps)
        np.random.seed(123)   # replay the draws rliable's StratifiedBootstrap made
        idx = np.stack([np.random.choice(scores.shape[0], scores.shape) for _ in range(reps)])
        layout = stats._Layout(stats.as_task_columns(scores))
        replicates = stats._aggregate_replicates(layout, _counts_like_rliable(layout, idx),
                                                 stats.AGGREGATE_METRICS, 100.0)
        low, high = stats._percentile_interval(replicates, 0.95)
        np.testing.assert_allclose(low, ci[name][0], rtol=1e-10)
        np.testing.assert_allclose(high, ci[name][1], rtol=1e-10)


def test_probability_of_improvement_bootstrap_equals_rliable_on_the_same_resamples():
    score_dict = _score_matrices()["unequal_runs"]
    x, y, reps = score_dict["a"], score_dict["b"], 300
    np.random.seed(7)
    _, ci = rliable_library.get_interval_estimates(
        {"a,b": [x, y]}, rliable_metrics.probability_of_improvement, reps=reps)
    np.random.seed(7)   # StratifiedIndependentBootstrap: x's indices, then y's, per replicate
    idx_x, idx_y = [], []
    for _ in range(reps):
        idx_x.append(np.random.choice(x.shape[0], x.shape))
        idx_y.append(np.random.choice(y.shape[0], y.shape))
    idx_x, idx_y = np.stack(idx_x), np.stack(idx_y)
    per_task = []
    for t in range(x.shape[1]):
        cx = stats.counts_from_indices(idx_x[:, :, t], x.shape[0])
        cy = stats.counts_from_indices(idx_y[:, :, t], y.shape[0])
        wins = stats._win_matrix(x[:, t], y[:, t])
        per_task.append(np.einsum("ra,ra->r", cx @ wins, cy) / (x.shape[0] * y.shape[0]))
    low, high = stats._percentile_interval(np.mean(per_task, axis=0), 0.95)
    np.testing.assert_allclose([low, high], ci["a,b"].ravel(), rtol=1e-10)


def test_intervals_agree_with_rliable_within_monte_carlo_error():
    """Independent random streams: ours at 50k replicates vs rliable at 2k (seeded globally)."""
    # 10 and 7 runs: with 3 runs the bootstrap distribution is too lumpy to compare quantiles
    score_dict = _score_matrices()["unequal_runs"]
    score_dict = {k: score_dict[k] for k in ("a", "c")}
    ours = stats.aggregate_intervals(score_dict, reps=50_000, seed=3)
    np.random.seed(0)  # rliable ignores random_state; only the global seed makes it repeatable
    _, ci = rliable_library.get_interval_estimates(score_dict, _rliable_aggregates(100.0),
                                                   reps=2_000)
    for name in score_dict:
        for j, metric in enumerate(stats.AGGREGATE_METRICS):
            ours_iv = ours[name][metric]
            width = ours_iv.high - ours_iv.low
            # rliable's endpoint at 2k replicates has a Monte-Carlo sd of about 2% of the width
            assert abs(ci[name][0, j] - ours_iv.low) < 0.12 * width, (name, metric)
            assert abs(ci[name][1, j] - ours_iv.high) < 0.12 * width, (name, metric)

    taus = np.linspace(0, 100, 21)
    ours_p = stats.performance_profiles(score_dict, taus, reps=20_000, seed=3)
    np.random.seed(0)
    _, rl_cis = rliable_library.create_performance_profile(score_dict, taus, reps=1_000)
    for name in score_dict:
        assert np.abs(rl_cis[name][0] - ours_p[name].low).max() <= 0.1 + 1e-9
        assert np.abs(rl_cis[name][1] - ours_p[name].high).max() <= 0.1 + 1e-9


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_intervals_and_independent_of_other_algorithms():
    d = _score_matrices()["unequal_runs"]
    first = stats.aggregate_intervals(d, reps=2_000, seed=11)
    again = stats.aggregate_intervals(d, reps=2_000, seed=11)
    other = stats.aggregate_intervals(d, reps=2_000, seed=12)
    alone = stats.aggregate_intervals({"a": d["a"]}, reps=2_000, seed=11)
    assert first == again
    assert first["a"] == alone["a"]          # adding algorithms does not move an interval
    assert first["a"]["IQM"] != other["a"]["IQM"]
    poi = stats.probability_of_improvement_intervals(d, reps=500, seed=1)
    assert poi == stats.probability_of_improvement_intervals(d, reps=500, seed=1)
    swapped = stats.probability_of_improvement_intervals(d, pairs=[("b", "a")], reps=500, seed=1)
    ab, ba = poi[("a", "b")], swapped[("b", "a")]
    assert ba.point == pytest.approx(1 - ab.point)
    assert (ba.low, ba.high) == pytest.approx((1 - ab.high, 1 - ab.low))


def test_chunked_replicates_match_one_chunk(monkeypatch):
    d = {"a": _score_matrices()["ties"]["a"]}
    whole = stats.aggregate_intervals(d, reps=3_000, seed=5)
    monkeypatch.setattr(stats, "_MAX_CHUNK_ELEMENTS", 24 * 100)   # 100 replicates per chunk
    chunked = stats.aggregate_intervals(d, reps=3_000, seed=5)
    # Different draws, same distribution: the intervals agree to Monte-Carlo error.
    for metric in stats.AGGREGATE_METRICS:
        width = whole["a"][metric].high - whole["a"][metric].low
        assert abs(whole["a"][metric].low - chunked["a"][metric].low) < 0.15 * width
        assert whole["a"][metric].point == chunked["a"][metric].point


def test_curve_intervals_skip_missing_runs():
    values = np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]])
    mean, low, high = stats.curve_intervals(values, reps=500)
    np.testing.assert_allclose(mean[:2], [2.0, 2.0])
    assert np.isnan(mean[2]) and np.isnan(low[2])
    assert low[0] >= 1.0 and high[0] <= 3.0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("scores, message", [
    (np.array([[1.0, np.nan], [2.0, 3.0]]), "non-finite"),
    (np.zeros((0, 3)), "no runs"),
    (np.zeros((4, 0)), "no tasks"),
    (np.zeros(5), "shaped (runs, tasks)"),
    ([np.array([1.0]), np.array([])], "no runs"),
    ("scores", "expected"),
])
def test_bad_scores_raise_clear_errors(scores, message):
    with pytest.raises(stats.ScoreError, match=message.replace("(", r"\(").replace(")", r"\)")):
        stats.aggregate_intervals({"algo": scores}, reps=10)


def test_mismatched_tasks_and_bad_arguments():
    with pytest.raises(stats.ScoreError, match="different numbers of tasks"):
        stats.aggregate_intervals({"a": np.ones((3, 2)), "b": np.ones((3, 3))}, reps=10)
    with pytest.raises(stats.ScoreError, match="no algorithms"):
        stats.aggregate_intervals({}, reps=10)
    with pytest.raises(stats.ScoreError, match="unknown metric"):
        stats.aggregate_intervals({"a": np.ones((3, 2))}, metrics=["IQR"], reps=10)
    with pytest.raises(stats.ScoreError, match="reps"):
        stats.aggregate_intervals({"a": np.ones((3, 2))}, reps=0)
    with pytest.raises(stats.ScoreError, match="confidence"):
        stats.aggregate_intervals({"a": np.ones((3, 2))}, reps=10, confidence=95)
    with pytest.raises(stats.ScoreError, match="unknown algorithm"):
        stats.probability_of_improvement_intervals({"a": np.ones((3, 2))}, pairs=[("a", "z")])
    with pytest.raises(stats.ScoreError, match="kind"):
        stats.performance_profiles({"a": np.ones((3, 2))}, np.arange(3), kind="median")
    # ScoreError is a UserError (one clear CLI line) and a ValueError (for library callers)
    assert issubclass(stats.ScoreError, UserError) and issubclass(stats.ScoreError, ValueError)
