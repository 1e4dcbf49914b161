"""The sequential comparison: family-wise error under identical agents, power, API, bad input."""

import numpy as np
import pytest

from offrl.errors import UserError
from offrl.evaluation import adastop
from offrl.evaluation.adastop import SequentialTestError, sequential_compare, sequential_test_batch

ALPHA = 0.05


def _slack(experiments: int) -> float:
    """Three Monte-Carlo standard errors of a rejection rate near alpha."""
    return 3 * np.sqrt(ALPHA * (1 - ALPHA) / experiments)


@pytest.mark.parametrize("algorithms, experiments", [(2, 1000), (3, 600)])
def test_identical_agents_keep_family_wise_error_at_alpha(algorithms, experiments):
    rng = np.random.default_rng(algorithms)
    data = rng.normal(size=(experiments, algorithms, 20))            # n=5, K=4
    result = sequential_test_batch(data, n_per_interim=5, interims=4, alpha=ALPHA, seed=1)
    false_rejection = (result.decisions != 0).any(axis=1).mean()
    assert false_rejection <= ALPHA + _slack(experiments), false_rejection
    assert (result.level_spent <= ALPHA + 1e-9).all()
    # no early stop without a decision: undecided experiments ran all four interims
    undecided = (result.decisions == 0).all(axis=1)
    assert (result.interims_done[undecided] == 4).all()


def test_a_noisy_pair_is_not_misjudged_because_of_a_steady_third_algorithm():
    """Per-pair references: a low-variance third algorithm does not narrow the null of two
    noisy ones (pooling all algorithms' scores would, and doubles their error)."""
    rng = np.random.default_rng(8)
    data = rng.normal(size=(600, 3, 20))
    data[:, 2] *= 0.1                                   # same mean, a tenth of the spread
    result = sequential_test_batch(data, 5, 4, ALPHA, seed=1)
    assert (result.decisions[:, 0] != 0).mean() <= ALPHA + _slack(600)


def test_two_algorithms_scaled_and_plain_statistics_agree():
    rng = np.random.default_rng(9)
    data = rng.normal(size=(300, 2, 20))
    data[:, 1] += 0.8
    scaled = sequential_test_batch(data, 5, 4, ALPHA, permutations=2_000, seed=1)
    plain = sequential_test_batch(data, 5, 4, ALPHA, permutations=2_000, seed=1,
                                  statistic="mean")
    np.testing.assert_array_equal(scaled.decisions, plain.decisions)
    np.testing.assert_array_equal(scaled.decided_at, plain.decided_at)


def test_signed_permutation_distribution_doubles_the_error():
    """The published package's flaw: |T| against signed permuted differences rejects ~2 alpha."""
    rng = np.random.default_rng(2)
    data = rng.normal(size=(800, 2, 20))
    ours = sequential_test_batch(data, 5, 4, ALPHA, permutations=2_000, seed=1)
    flawed = sequential_test_batch(data, 5, 4, ALPHA, permutations=2_000, seed=1,
                                   signed_permutations=True)
    ours_rate = (ours.decisions != 0).mean()
    flawed_rate = (flawed.decisions != 0).mean()
    assert flawed_rate > 1.5 * ALPHA and flawed_rate > ours_rate + 0.03


def test_power_on_a_clear_difference():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(1000, 2, 20))
    data[:, 1] += 1.0                                                 # 1 sd better
    result = sequential_test_batch(data, 5, 4, ALPHA, permutations=2_000, seed=1)
    decided = result.decisions[:, 0]
    assert (decided == -1).mean() >= 0.75          # first is "smaller" (about 0.8 expected)
    assert (decided == 1).mean() <= 0.005          # almost never the wrong direction
    assert result.seeds_used.mean() < 16           # stops early on average

    data[:, 1] += 1.0                                                 # 2 sd better
    result = sequential_test_batch(data, 5, 4, ALPHA, permutations=2_000, seed=1)
    assert (result.decisions[:, 0] == -1).mean() >= 0.99
    assert result.seeds_used.mean() < 11           # mostly decided at the first or second interim


def test_compare_api_decides_and_says_how_many_seeds_to_run():
    rng = np.random.default_rng(4)
    scores = {"best": 100 + rng.normal(size=5), "b": rng.normal(size=5),
              "c": rng.normal(size=5)}
    result = sequential_compare(scores, n_per_interim=5, interims=4, alpha=ALPHA)
    decisions = {(p.first, p.second): p for p in result.pairs}
    assert decisions[("best", "b")].decision == "larger"
    assert decisions[("best", "c")].decision == "larger"
    assert decisions[("best", "b")].interim == 1
    assert decisions[("b", "c")].decision == "undecided"
    assert result.interims_done == 1 and not result.finished
    # "best" is decided against everyone and stops; b and c need the next block of 5 seeds
    assert result.seeds_needed == {"best": 0, "b": 5, "c": 5}
    assert result.still_running() == ["b", "c"]
    assert result.level_spent <= ALPHA

    # Replaying with more seeds repeats interim 1 exactly and continues.
    more = {"best": scores["best"], "b": np.r_[scores["b"], rng.normal(size=5)],
            "c": np.r_[scores["c"], rng.normal(size=7)]}
    later = sequential_compare(more, n_per_interim=5, interims=4, alpha=ALPHA)
    assert later.boundaries[0] == result.boundaries[0]
    assert later.interims_done == 2 and later.seeds_used == {"best": 5, "b": 10, "c": 10}
    assert later.seeds_needed == {"best": 0, "b": 5, "c": 3}


def test_too_few_seeds_for_an_exact_decision_and_budget_end():
    # n=3: the smallest two-sided exact p-value is 2/20, so interim 1 cannot reject at 0.05/4.
    result = sequential_compare({"a": [10.0, 11, 12], "b": [0.0, 1, 2]}, n_per_interim=3,
                                interims=4, alpha=ALPHA)
    assert result.pairs[0].decision == "undecided" and result.seeds_needed == {"a": 3, "b": 3}
    # fewer seeds than one interim: nothing tested yet
    early = sequential_compare({"a": [1.0, 2.0], "b": [3.0]}, n_per_interim=5, interims=2)
    assert early.interims_done == 0 and early.seeds_needed == {"a": 3, "b": 4}
    # identical constant scores: never decided, finished after the last interim
    flat = sequential_compare({"a": [1.0] * 10, "b": [1.0] * 10}, n_per_interim=5, interims=2)
    assert flat.finished and flat.pairs[0].decision == "undecided"
    assert flat.seeds_needed == {"a": 0, "b": 0}


def test_batch_and_single_experiment_agree():
    rng = np.random.default_rng(5)
    data = rng.normal(size=(1, 3, 15))
    data[0, 0] += 1.5
    batch = sequential_test_batch(data, 5, 3, ALPHA, seed=9)
    single = sequential_compare({"x": data[0, 0], "y": data[0, 1], "z": data[0, 2]},
                                n_per_interim=5, interims=3, alpha=ALPHA, seed=9)
    codes = {"larger": 1, "smaller": -1, "undecided": 0}
    assert [codes[p.decision] for p in single.pairs] == batch.decisions[0].tolist()
    assert single.boundaries == pytest.approx(batch.boundaries[0, :single.interims_done].tolist())


def test_exact_permutations_when_few():
    """Two algorithms, n=5: interim 1 enumerates all 252 splits (no randomness)."""
    rng = np.random.default_rng(6)
    scores = {"a": rng.normal(size=5), "b": rng.normal(size=5) + 3}
    first = sequential_compare(scores, 5, 4, ALPHA, seed=1)
    second = sequential_compare(scores, 5, 4, ALPHA, seed=2)
    assert first.boundaries == second.boundaries
    assert len(adastop._combination_masks(5)) == 252


@pytest.mark.parametrize("scores, kwargs, message", [
    ({"a": [1.0, np.nan], "b": [1.0, 2.0]}, {}, "NaN"),
    ({"a": [1.0, 2.0]}, {}, "at least two"),
    ({"a": [], "b": [1.0]}, {}, "no scores"),
    ({"a": [1.0], "b": [1.0]}, {"n_per_interim": 0}, "n_per_interim"),
    ({"a": [1.0], "b": [1.0]}, {"alpha": 1.5}, "alpha"),
    ({"a": [1.0], "b": [1.0]}, {"interims": 0}, "interims"),
])
def test_bad_input(scores, kwargs, message):
    with pytest.raises(SequentialTestError, match=message):
        sequential_compare(scores, **kwargs)
    assert issubclass(SequentialTestError, UserError)


def test_batch_shape_errors():
    with pytest.raises(SequentialTestError, match="experiments, algorithms"):
        sequential_test_batch(np.zeros((10, 2, 3)), n_per_interim=5, interims=4)
