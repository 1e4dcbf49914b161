"""TransitionSampler: per-member streams, labelled rows only, exact resume; the test Pendulum."""

import numpy as np
import pytest
import torch

from algo_helpers import (make_pendulum_dataset, pendulum_obs, pendulum_step, random_transitions,
                          swing_up_controller)
from offrl.algos import TransitionSampler


def _row_ids(tr, batch):
    """Which dataset row each sampled observation came from (observations are unique here)."""
    table = {tuple(o): i for i, o in enumerate(tr.observations.tolist())}
    return np.array([[table[tuple(o)] for o in member] for member in batch.observations.tolist()])


def test_batch_shapes_dtypes_and_rows_are_consistent():
    tr = random_transitions(500)
    smp = TransitionSampler(tr, seeds=[0, 1, 2], batch_size=64)
    b = smp.sample()
    assert b.observations.shape == (3, 64, 11) and b.next_observations.shape == (3, 64, 11)
    assert b.actions.shape == (3, 64, 3) and b.rewards.shape == (3, 64) and b.dones.shape == (3, 64)
    assert b.num_members == 3 and b.batch_size == 64
    for t in (b.observations, b.actions, b.rewards, b.next_observations, b.dones):
        assert t.dtype == torch.float32
    ids = _row_ids(tr, b)
    np.testing.assert_array_equal(b.actions.numpy(), tr.actions[ids])
    np.testing.assert_array_equal(b.rewards.numpy(), tr.rewards[ids])
    np.testing.assert_array_equal(b.next_observations.numpy(), tr.next_observations[ids])
    np.testing.assert_array_equal(b.dones.numpy(), tr.dones[ids].astype(np.float32))


def test_member_s_draws_what_a_one_seed_sampler_draws():
    tr = random_transitions(1000)
    many = TransitionSampler(tr, seeds=[5, 9, 13], batch_size=32)
    one = TransitionSampler(tr, seeds=[9], batch_size=32)
    for _ in range(5):
        a, b = many.sample(), one.sample()
        assert torch.equal(a.observations[1], b.observations[0])
        assert torch.equal(a.actions[1], b.actions[0])
    idx = many.sample_indices()
    assert not torch.equal(idx[0], idx[1])  # different seeds, different draws


def test_unlabelled_rows_are_never_sampled():
    tr = random_transitions(400, labelled_fraction=0.3, seed=1)
    smp = TransitionSampler(tr, seeds=[0, 1], batch_size=256)
    assert smp.size == int(tr.labelled.sum())
    seen = set()
    for _ in range(20):
        b = smp.sample()
        assert torch.isfinite(b.actions).all()
        seen.update(_row_ids(tr, b).ravel().tolist())
    assert seen <= set(np.flatnonzero(tr.labelled).tolist())
    assert len(seen) > 0.9 * smp.size  # and all of them are reachable


def test_no_labelled_rows_raises():
    tr = random_transitions(50, labelled_fraction=0.0)
    with pytest.raises(ValueError, match="no labelled transitions"):
        TransitionSampler(tr, seeds=[0], batch_size=8)
    with pytest.raises(ValueError, match="at least one seed"):
        TransitionSampler(random_transitions(50), seeds=[], batch_size=8)


def test_state_dict_resumes_exactly():
    tr = random_transitions(1000)
    a = TransitionSampler(tr, seeds=[1, 2], batch_size=16)
    for _ in range(3):
        a.sample()
    state = a.state_dict()
    expected = [a.sample_indices() for _ in range(4)]
    b = TransitionSampler(tr, seeds=[1, 2], batch_size=16)
    b.load_state_dict(state)
    for e in expected:
        assert torch.equal(b.sample_indices(), e)
    with pytest.raises(ValueError, match="seeds"):
        TransitionSampler(tr, seeds=[1], batch_size=16).load_state_dict(state)


def test_indices_are_uniform():
    tr = random_transitions(10)
    counts = np.bincount(TransitionSampler(tr, [0], 4000).sample_indices().numpy().ravel(),
                         minlength=10)
    assert counts.min() > 300 and counts.max() < 500


def test_test_pendulum_matches_gymnasium():
    gym = pytest.importorskip("gymnasium")
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=3)
    th, thdot = env.unwrapped.state.copy()
    for _ in range(200):
        u = swing_up_controller(obs[None])[0]
        obs2, reward, *_ = env.step(np.array([u], np.float32))
        th, thdot, r = pendulum_step(th, thdot, np.float32(u))
        assert r == pytest.approx(reward, abs=1e-9)
        np.testing.assert_allclose(pendulum_obs(th, thdot), obs2, atol=1e-6)
        obs = obs2


def test_pendulum_dataset_is_normalised_and_mixed():
    tr, mean, std = make_pendulum_dataset(n_episodes=20, seed=0)
    assert len(tr) == 20 * 200 and tr.actions.shape == (4000, 1)
    assert np.abs(tr.observations.mean(0)).max() < 1e-3 and np.abs(tr.actions).max() <= 1.0
    assert not tr.dones.any() and tr.labelled.all()
