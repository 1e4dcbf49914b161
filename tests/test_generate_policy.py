"""Datasets from behaviour policies: vectorised rollouts, determinism, hashes, combine, Minari."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from offrl.algos.sac import SAC, SACConfig
from offrl.data.hashing import sha256_file
from offrl.data.load import fetch, load_dataset
from offrl.data.policies import TanhGaussianPolicy, save_policy
from offrl.data.registry import get_card
from offrl.errors import UserError

POLICY_CARD = """\
id = "tiny-hopper-policy-v0"
env_id = "Hopper-v5"
description = "a random-init SAC actor, 300 steps (test card)"
max_episode_steps = 50

[source.recipe]
policy = "policies/tiny.pt"
policy_sha256 = "{sha}"
env_id = "Hopper-v5"
seed = 3
transitions = 300
max_episode_steps = 50
envs = 4
{extra}
[scores]
ref_min_score = 0.0
ref_max_score = 100.0
approximate = false

[spaces]
observation_shape = [11]
action_shape = [3]
"""

RANDOM_CARD = POLICY_CARD.replace("tiny-hopper-policy-v0", "tiny-hopper-random-v0").replace(
    'policy = "policies/tiny.pt"\npolicy_sha256 = "{sha}"', 'policy = "uniform-random"').replace(
    "envs = 4\n{extra}", "")

COMBO_CARD = """\
id = "tiny-hopper-combo-v0"
env_id = "Hopper-v5"
description = "policy data then random data (test card)"
max_episode_steps = 50

[source.recipe]
policy = "combine"
combine = ["tiny-hopper-policy-v0", "tiny-hopper-random-v0"]
env_id = "Hopper-v5"
seed = 0
transitions = 600
max_episode_steps = 50

[scores]
ref_min_score = 0.0
ref_max_score = 100.0
approximate = false

[spaces]
observation_shape = [11]
action_shape = [3]
"""


def _write_cards(folder, extra=""):
    folder.mkdir(exist_ok=True)
    agent = SAC(SACConfig(actor_hidden_dims=(16, 16), critic_hidden_dims=(16, 16)), 11, 3, [0])
    path = save_policy(folder / "policies" / "tiny.pt",
                       TanhGaussianPolicy.from_weights(agent.policy_weights(0), "Hopper-v5",
                                                       {"algo": "sac", "step": 0}))
    sha = sha256_file(path)
    (folder / "tiny-hopper-policy-v0.toml").write_text(POLICY_CARD.format(sha=sha, extra=extra))
    (folder / "tiny-hopper-random-v0.toml").write_text(RANDOM_CARD)
    (folder / "tiny-hopper-combo-v0.toml").write_text(COMBO_CARD)
    return sha


@pytest.fixture
def cards(tmp_path, monkeypatch, offrl_home):
    folder = tmp_path / "cards"
    _write_cards(folder)
    monkeypatch.setenv("OFFRL_CARDS", str(folder))
    monkeypatch.chdir(tmp_path)
    return folder


def test_policy_recipe_is_deterministic_and_well_formed(cards):
    card = get_card("tiny-hopper-policy-v0")
    path = fetch(card, progress=False)
    first = sha256_file(path)
    assert sha256_file(fetch(card, progress=False, force=True)) == first  # same bytes twice
    d = load_dataset("tiny-hopper-policy-v0", progress=False)
    assert len(d) == 300 and d.infos["qpos"].shape == (300, 6) and d.infos["qvel"].shape == (300, 6)
    lengths = np.diff(np.append(d.episode_starts, len(d)))
    assert lengths.max() <= 50
    ends = d.episode_starts[1:] - 1
    assert np.all(d.terminals[ends] | d.timeouts[ends])  # every whole episode ends flagged
    assert np.abs(d.actions).max() <= 1.0
    np.testing.assert_array_equal(d.observations[1:][~(d.terminals | d.timeouts)[:-1]],
                                  d.next_observations[:-1][~(d.terminals | d.timeouts)[:-1]])
    assert d.metadata["algorithm"] == "sac" and d.metadata["policy"] == "tiny.pt"
    assert d.metadata["actions_sampled"] == "stochastic"


def test_actions_are_sampled_from_the_policy(cards):
    from offrl.data.policies import load_policy

    d = load_dataset("tiny-hopper-policy-v0", progress=False)
    policy = load_policy(cards / "policies" / "tiny.pt")
    mean, log_std = policy.mean_log_std(d.observations)
    u = np.arctanh(np.clip(d.actions, -1 + 1e-6, 1 - 1e-6))
    z = (u - mean.numpy()) / np.exp(log_std.numpy())
    assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2  # standard-normal noise, not the mean


def test_policy_hash_mismatch_is_an_error(cards):
    (cards / "policies" / "tiny.pt").write_bytes((cards / "policies" / "tiny.pt").read_bytes() + b"x")
    with pytest.raises(UserError, match="policy file changed"):
        fetch(get_card("tiny-hopper-policy-v0"), progress=False)


def test_build_hash_differing_from_the_card_warns_and_keeps_the_file(tmp_path, monkeypatch, offrl_home):
    folder = tmp_path / "cards"
    _write_cards(folder, extra=f'build_sha256 = "{"0" * 64}"\nbuild_platform = "elsewhere"\n')
    monkeypatch.setenv("OFFRL_CARDS", str(folder))
    monkeypatch.chdir(tmp_path)
    with pytest.warns(RuntimeWarning, match="Floating point can differ"):
        path = fetch(get_card("tiny-hopper-policy-v0"), progress=False)
    assert path.is_file()


def test_combine_concatenates_and_minari_opens_the_export(cards, tmp_path):
    import minari

    from offrl.data.minari_io import write_minari

    combo = load_dataset("tiny-hopper-combo-v0", progress=False)
    a = load_dataset("tiny-hopper-policy-v0", progress=False)
    b = load_dataset("tiny-hopper-random-v0", progress=False)
    assert len(combo) == 600
    np.testing.assert_array_equal(combo.observations, np.concatenate([a.observations, b.observations]))
    np.testing.assert_array_equal(combo.episode_starts,
                                  np.concatenate([a.episode_starts, b.episode_starts + 300]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_minari(a, "offrl/tinyhopper/policy-v0", env_id="Hopper-v5")
        m = minari.load_dataset("offrl/tinyhopper/policy-v0")
    assert m.total_steps == 300 and m.total_episodes == a.num_episodes
    first = next(iter(m.iterate_episodes()))
    np.testing.assert_array_equal(first.actions, a.actions[:len(first.actions)])


REPLAY_CARD = """\
id = "tiny-hopper-replay-v0"
env_id = "Hopper-v5"
description = "the replay of a tiny SAC run up to step 200 (test card)"
max_episode_steps = 60

[source.recipe]
policy = "sac-replay"
run_config = "policies/tiny-sac.toml"
env_id = "Hopper-v5"
seed = 4
transitions = 200
max_episode_steps = 60

[scores]
ref_min_score = 0.0
ref_max_score = 100.0
approximate = false

[spaces]
observation_shape = [11]
action_shape = [3]
"""


def test_sac_replay_recipe_reruns_sac_to_the_recorded_step(tmp_path, monkeypatch, offrl_home):
    import offrl.training.behaviour  # noqa: F401  (registers the sac-replay builder)
    from offrl.training.behaviour import BehaviourConfig, train_behaviour

    config = BehaviourConfig(env_id="Hopper-v5", steps=300, learning_starts=80, eval_every=100,
                             eval_episodes=1, checkpoint_every=100, log_every=50,
                             max_episode_steps=60, batch_size=32)
    sac = SACConfig(actor_hidden_dims=(16, 16), critic_hidden_dims=(16, 16))
    original = train_behaviour(tmp_path / "original", config, sac, seeds=[4], progress=False)
    folder = tmp_path / "cards"
    (folder / "policies").mkdir(parents=True)
    (folder / "policies" / "tiny-sac.toml").write_text((original / "config.toml").read_text())
    (folder / "tiny-hopper-replay-v0.toml").write_text(REPLAY_CARD)
    monkeypatch.setenv("OFFRL_CARDS", str(folder))
    monkeypatch.chdir(tmp_path)

    rerun = load_dataset("tiny-hopper-replay-v0", progress=False)  # re-trains SAC to step 200
    with np.load(original / "replay_seed_4.npz") as z:
        np.testing.assert_array_equal(rerun.observations, z["observations"][:200])
        np.testing.assert_array_equal(rerun.actions, z["actions"][:200])
        np.testing.assert_array_equal(rerun.rewards, z["rewards"][:200])
    assert rerun.num_episodes >= 3 and len(rerun) == 200

    monkeypatch.setenv("OFFRL_REPLAY_RUN", str(original))
    path = fetch(get_card("tiny-hopper-replay-v0"), progress=False)
    first = sha256_file(path)
    assert sha256_file(fetch(get_card("tiny-hopper-replay-v0"), progress=False, force=True)) == first
