"""Vectorised evaluation: seeding, equality with a plain loop, no restarted episodes."""

import numpy as np
import pytest

from offrl.evaluation.rollout import (Rollouts, VectorEvaluator, episode_seeds, evaluate,
                                      make_env)

ENV = "Hopper-v4"
MAX_STEPS = 150


def hop_policy(obs: np.ndarray) -> np.ndarray:
    """Deterministic and elementwise (no matmul), so batching cannot change its floats."""
    return np.tanh(0.5 * obs[..., :3])


def plain_loop_return(env_seed: int) -> tuple[float, int]:
    env = make_env(ENV, MAX_STEPS)
    obs, _ = env.reset(seed=int(env_seed))
    total, length = 0.0, 0
    while True:
        obs, reward, terminated, truncated, _ = env.step(hop_policy(obs[None, None])[0, 0])
        total += reward
        length += 1
        if terminated or truncated:
            env.close()
            return total, length


def test_episode_seeds_distinct_reproducible_and_fresh_per_evaluation():
    a = episode_seeds(0, [0, 1, 2], 50, evaluation_index=5000)
    assert a.shape == (3, 50) and a.dtype == np.int64
    assert len(np.unique(a)) == a.size  # every episode of every member: its own seed
    assert (a >= 0).all() and (a < 2**32).all()
    np.testing.assert_array_equal(a, episode_seeds(0, [0, 1, 2], 50, evaluation_index=5000))
    later = episode_seeds(0, [0, 1, 2], 50, evaluation_index=10000)
    assert not np.intersect1d(a, later).size  # never the same seeds at the next evaluation
    other_stream = episode_seeds(0, [0, 1, 2], 50, evaluation_index=5000, stream=1)
    assert not np.intersect1d(a, other_stream).size
    assert not np.intersect1d(a, episode_seeds(1, [0, 1, 2], 50, evaluation_index=5000)).size
    # A member's seeds depend on its own key only, not on which members train beside it.
    np.testing.assert_array_equal(episode_seeds(0, [2], 50, evaluation_index=5000)[0], a[2])
    with pytest.raises(ValueError):
        episode_seeds(0, [1, 1], 2)


def test_returns_equal_a_plain_single_env_loop():
    result = evaluate(hop_policy, ENV, 2, 3, seed=7, max_episode_steps=MAX_STEPS,
                      member_seeds=[4, 9], evaluation_index=3)
    assert isinstance(result, Rollouts)
    returns, lengths, env_seeds = result  # unpacks as a triple
    assert returns.shape == lengths.shape == env_seeds.shape == (2, 3)
    assert returns.dtype == np.float64
    np.testing.assert_array_equal(env_seeds, episode_seeds(7, [4, 9], 3, evaluation_index=3))
    for m in range(2):
        for e in range(3):
            total, length = plain_loop_return(env_seeds[m, e])
            assert returns[m, e] == total and lengths[m, e] == length
    assert len(np.unique(lengths)) > 1  # episodes of different lengths were in one batch


def test_reproducible_and_different_across_evaluations():
    kw = dict(max_episode_steps=MAX_STEPS, member_seeds=[0, 1])
    first = evaluate(hop_policy, ENV, 2, 2, seed=0, evaluation_index=1, **kw)
    again = evaluate(hop_policy, ENV, 2, 2, seed=0, evaluation_index=1, **kw)
    np.testing.assert_array_equal(first.returns, again.returns)
    other = evaluate(hop_policy, ENV, 2, 2, seed=0, evaluation_index=2, **kw)
    assert not np.intersect1d(first.env_seeds, other.env_seeds).size
    assert not np.array_equal(first.returns, other.returns)


def test_one_batched_call_per_step_and_finished_episodes_are_not_restarted():
    calls = []

    def policy(obs):
        calls.append(obs.shape)
        return hop_policy(obs)

    seeds = episode_seeds(0, [0, 1], 2)
    with VectorEvaluator(ENV, 2, 2, max_episode_steps=MAX_STEPS) as evaluator:
        stepped = [0] * evaluator.num_envs
        for i, env in enumerate(evaluator.envs):  # count real env steps per env
            original = env.step

            def counting_step(action, i=i, original=original):
                stepped[i] += 1
                return original(action)

            env.step = counting_step
        result = evaluator.run(policy, seeds)
        assert all(shape == (2, 2, 11) for shape in calls)
        assert len(calls) == result.lengths.max()  # one policy call per step, for all envs
        assert len(np.unique(result.lengths)) > 1
        assert stepped == result.lengths.reshape(-1).tolist()  # finished envs were left alone
        # Envs are reused between evaluations; reused envs give the fresh-env results.
        np.testing.assert_array_equal(evaluator.run(hop_policy, seeds).returns, result.returns)


def test_async_backend_gives_the_same_returns():
    kw = dict(max_episode_steps=40, evaluation_index=11)
    sync = evaluate(hop_policy, ENV, 2, 1, seed=3, **kw)
    asyn = evaluate(hop_policy, ENV, 2, 1, seed=3, backend="async", **kw)
    np.testing.assert_array_equal(sync.returns, asyn.returns)
    np.testing.assert_array_equal(sync.lengths, asyn.lengths)


def test_bad_policy_output_and_normalized_scores():
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda obs: np.zeros((1, 1, 3)), ENV, 2, 1, seed=0, max_episode_steps=5)
    result = Rollouts(np.array([[0.0, 50.0]]), np.array([[1, 1]]), np.array([[1, 2]]))
    np.testing.assert_allclose(result.normalized_scores((0.0, 100.0)), [[0.0, 50.0]])
