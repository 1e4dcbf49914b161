"""Dataset core: D4RL qlearning semantics (hand-built and against a port of D4RL's loop),
episode views, boundaries and validation."""

import numpy as np
import pytest

from offrl.data.dataset import Dataset, DatasetError


def make_dataset(terminals, timeouts, *, has_timeouts=True, max_episode_steps=None,
                 obs_dim=2, dtype=np.float32, seed=0):
    terminals, timeouts = np.asarray(terminals, bool), np.asarray(timeouts, bool)
    n = len(terminals)
    rng = np.random.default_rng(seed)
    meta = {"has_timeouts": has_timeouts}
    if max_episode_steps is not None:
        meta["max_episode_steps"] = max_episode_steps
    return Dataset(
        observations=rng.normal(size=(n, obs_dim)).astype(dtype),
        actions=rng.uniform(-1, 1, size=(n, 1)).astype(dtype),
        rewards=rng.normal(size=n).astype(dtype),
        terminals=terminals, timeouts=timeouts,
        episode_starts=Dataset.episode_starts_from_flags(
            terminals, timeouts, None if has_timeouts else max_episode_steps),
        metadata=meta)


def d4rl_qlearning_port(dataset, max_episode_steps=1000, terminate_on_end=False):
    """A straight port of d4rl.qlearning_dataset's loop (d4rl/__init__.py)."""
    N = dataset["rewards"].shape[0]
    obs_, next_obs_, action_, reward_, done_ = [], [], [], [], []
    use_timeouts = "timeouts" in dataset
    episode_step = 0
    for i in range(N - 1):
        obs = dataset["observations"][i].astype(np.float32)
        new_obs = dataset["observations"][i + 1].astype(np.float32)
        action = dataset["actions"][i].astype(np.float32)
        reward = dataset["rewards"][i].astype(np.float32)
        done_bool = bool(dataset["terminals"][i])
        if use_timeouts:
            final_timestep = dataset["timeouts"][i]
        else:
            final_timestep = (episode_step == max_episode_steps - 1)
        if (not terminate_on_end) and final_timestep:
            # Skip this transition and don't apply terminals on the last step of an episode
            episode_step = 0
            continue
        if done_bool or final_timestep:
            episode_step = 0
        obs_.append(obs)
        next_obs_.append(new_obs)
        action_.append(action)
        reward_.append(reward)
        done_.append(done_bool)
        episode_step += 1
    return {"observations": np.array(obs_), "actions": np.array(action_),
            "next_observations": np.array(next_obs_), "rewards": np.array(reward_),
            "terminals": np.array(done_)}


# ------------------------------------------------------------------------- hand-built examples
def test_qlearning_hand_built_with_timeouts_and_terminals():
    # Episodes: rows 0-2 end by termination at 2; rows 3-6 end by timeout at 6; rows 7-9 unfinished.
    obs = np.array([[r, 10 + r] for r in range(10)], dtype=np.float32)
    terminals = np.zeros(10, bool)
    terminals[2] = True
    timeouts = np.zeros(10, bool)
    timeouts[6] = True
    ds = Dataset(observations=obs, actions=np.arange(10, dtype=np.float32)[:, None],
                 rewards=np.arange(10, dtype=np.float32) / 10, terminals=terminals,
                 timeouts=timeouts, episode_starts=[0, 3, 7])

    q = ds.qlearning()
    # Row 6 (timeout) is dropped, terminal row 2 is kept with done=True, last row 9 is dropped.
    np.testing.assert_array_equal(q.observations, [[0, 10], [1, 11], [2, 12], [3, 13], [4, 14],
                                                   [5, 15], [7, 17], [8, 18]])
    np.testing.assert_array_equal(q.next_observations, [[1, 11], [2, 12], [3, 13], [4, 14],
                                                        [5, 15], [6, 16], [8, 18], [9, 19]])
    np.testing.assert_array_equal(q.actions[:, 0], [0, 1, 2, 3, 4, 5, 7, 8])
    np.testing.assert_array_equal(q.rewards, np.float32([0, .1, .2, .3, .4, .5, .7, .8]))
    np.testing.assert_array_equal(q.dones, [False, False, True, False, False, False, False, False])
    assert q.observations.dtype == np.float32 and q.dones.dtype == np.bool_

    q_end = ds.qlearning(terminate_on_end=True)  # keeps the timeout row, still drops the last
    np.testing.assert_array_equal(q_end.observations[:, 0], [0, 1, 2, 3, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(q_end.next_observations[:, 0], [1, 2, 3, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(q_end.dones, [False, False, True] + [False] * 6)


def test_qlearning_no_timeouts_fallback_counts_steps_like_d4rl():
    # max_episode_steps = 3 and a terminal at row 4. D4RL's counter: rows 0,1,2 -> step 2 is
    # final (dropped); 3,4 -> terminal kept, and the counter restarts at 1 (D4RL's quirk), so
    # rows 5,6 -> row 6 is final; 7,8,9 -> row 9 final; row 10 kept; row 11 is the last row.
    terminals = np.zeros(12, bool)
    terminals[4] = True
    ds = make_dataset(terminals, np.zeros(12, bool), has_timeouts=False, max_episode_steps=3)
    # Episode boundaries: a terminal or max_episode_steps rows end an episode.
    np.testing.assert_array_equal(ds.episode_starts, [0, 3, 5, 8, 11])
    q = ds.qlearning()
    kept = [0, 1, 3, 4, 5, 7, 8, 10]
    np.testing.assert_array_equal(q.observations, ds.observations[kept])
    np.testing.assert_array_equal(q.next_observations, ds.observations[np.add(kept, 1)])
    np.testing.assert_array_equal(q.dones, [False, False, False, True, False, False, False, False])
    assert len(ds.qlearning(terminate_on_end=True)) == 11


# ------------------------------------------------------------------------ against D4RL's loop
@pytest.mark.parametrize("has_timeouts", [True, False])
@pytest.mark.parametrize("terminate_on_end", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_qlearning_matches_d4rl_loop_on_random_data(has_timeouts, terminate_on_end, seed):
    rng = np.random.default_rng(seed)
    n, limit = 3000, 25
    terminals = rng.random(n) < 0.03
    timeouts = np.zeros(n, bool)
    if has_timeouts:  # a timeout every `limit` steps of an episode unless it terminated first
        step = 0
        for i in range(n):
            if step == limit - 1 and not terminals[i]:
                timeouts[i] = True
            step = 0 if (terminals[i] or timeouts[i] or step == limit - 1) else step + 1
    ds = make_dataset(terminals, timeouts, has_timeouts=has_timeouts,
                      max_episode_steps=None if has_timeouts else limit, seed=seed,
                      dtype=np.float64)
    raw = {"observations": ds.observations, "actions": ds.actions, "rewards": ds.rewards,
           "terminals": ds.terminals}
    if has_timeouts:
        raw["timeouts"] = ds.timeouts
    expected = d4rl_qlearning_port(raw, max_episode_steps=limit, terminate_on_end=terminate_on_end)
    q = ds.qlearning(terminate_on_end=terminate_on_end)
    for ours, theirs in [(q.observations, "observations"), (q.actions, "actions"),
                         (q.next_observations, "next_observations"), (q.rewards, "rewards"),
                         (q.dones, "terminals")]:
        assert ours.dtype == expected[theirs].dtype, theirs
        np.testing.assert_array_equal(ours, expected[theirs], err_msg=theirs)


# ------------------------------------------------------------------------------ episodes
def test_episodes_and_returns():
    terminals = np.zeros(10, bool)
    terminals[2] = True
    timeouts = np.zeros(10, bool)
    timeouts[6] = True
    ds = make_dataset(terminals, timeouts)
    ds.rewards = np.arange(10, dtype=np.float32)
    episodes = list(ds.episodes())
    assert [len(e) for e in episodes] == [3, 4, 3]
    np.testing.assert_array_equal(ds.episode_lengths, [3, 4, 3])
    np.testing.assert_array_equal(ds.episode_ends, [3, 7, 10])
    np.testing.assert_array_equal(ds.episode_returns, [0 + 1 + 2, 3 + 4 + 5 + 6, 7 + 8 + 9])
    assert [e.episode_return for e in episodes] == [3.0, 18.0, 24.0]
    assert episodes[0].terminals[-1] and episodes[1].timeouts[-1]
    assert np.shares_memory(episodes[1].observations, ds.observations)  # views, not copies
    assert ds.num_episodes == 3


def test_episode_starts_from_flags_with_and_without_limit():
    terminals = np.array([0, 0, 1, 0, 0, 0, 0, 0], bool)
    timeouts = np.zeros(8, bool)
    np.testing.assert_array_equal(Dataset.episode_starts_from_flags(terminals, timeouts), [0, 3])
    np.testing.assert_array_equal(Dataset.episode_starts_from_flags(terminals, timeouts, 2),
                                  [0, 2, 3, 5, 7])
    assert len(Dataset.episode_starts_from_flags(np.zeros(0, bool), np.zeros(0, bool))) == 0


def test_transitions_uses_recorded_next_observations():
    ds = make_dataset([0, 0, 1, 0], [0, 0, 0, 1])
    ds.next_observations = ds.observations + 100
    t = ds.transitions()
    assert len(t) == 4  # nothing dropped
    np.testing.assert_array_equal(t.next_observations, (ds.observations + 100).astype(np.float32))


def test_unlabelled_rows_from_nan_actions():
    ds = make_dataset([0, 0, 0, 0], [0, 0, 0, 1])
    ds.actions[1] = np.nan
    ds = Dataset(**{f: getattr(ds, f) for f in ("observations", "actions", "rewards", "terminals",
                                                 "timeouts", "episode_starts")})
    np.testing.assert_array_equal(ds.labelled, [True, False, True, True])
    assert not ds.fully_labelled
    ds.validate()  # NaN actions are fine on unlabelled rows


# ------------------------------------------------------------------------------ validate
@pytest.mark.parametrize("breakage, key", [
    (lambda d: setattr(d, "rewards", d.rewards[:-1]), "observations"),
    (lambda d: setattr(d, "actions", d.actions[:-1]), "actions"),
    (lambda d: d.observations.__setitem__((1, 0), np.nan), "observations"),
    (lambda d: d.rewards.__setitem__(2, np.inf), "rewards"),
    (lambda d: setattr(d, "observations", d.observations.astype(np.int32)), "observations"),
    (lambda d: d.timeouts.__setitem__(2, True), "terminals"),
    (lambda d: setattr(d, "episode_starts", np.array([1, 3])), "episode_starts"),
    (lambda d: setattr(d, "episode_starts", np.array([0, 3, 3])), "episode_starts"),
    (lambda d: d.actions.__setitem__((0, 0), np.nan), "actions"),
    (lambda d: d.infos.__setitem__("qpos", np.zeros((3, 2))), "infos/qpos"),
])
def test_validate_names_the_problem(breakage, key):
    ds = make_dataset([0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1])
    breakage(ds)
    with pytest.raises(DatasetError, match=f"my-source: '{key}'"):
        ds.validate(source="my-source")


def test_validate_checks_env_shapes():
    ds = make_dataset([0, 0, 1], [0, 0, 0])
    ds.validate(observation_shape=(2,), action_shape=(1,))
    with pytest.raises(DatasetError, match="observation space"):
        ds.validate(observation_shape=(11,))
