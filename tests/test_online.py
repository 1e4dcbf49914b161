"""Online machinery: env slots restore exactly, the replay ring buffer, behaviour-run resume."""

import json

import numpy as np
import pytest
import torch

from offrl.algos.base import member_generators
from offrl.algos.sac import SACConfig
from offrl.errors import UserError
from offrl.training.behaviour import BehaviourConfig, train_behaviour
from offrl.training.online import EnvSlots, ReplayBuffer


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Pendulum-v1"])
def test_env_slots_restore_mid_episode_exactly(env_id):
    rng = np.random.default_rng(0)
    a = EnvSlots(env_id, [1, 2], max_episode_steps=40)
    A = a.action_dim
    for _ in range(25):  # mid-episode, possibly after a reset
        a.step(rng.uniform(-1, 1, (2, A)))
    state = a.state_dict()
    actions = rng.uniform(-1, 1, (60, 2, A))
    first = [a.step(x) for x in actions]
    b = EnvSlots(env_id, [1, 2], max_episode_steps=40)
    b.load_state_dict(state)
    second = [b.step(x) for x in actions]
    for x, y in zip(first, second):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert any(np.isfinite(x["finished"]).any() for x in first)  # crossed an episode end
    with pytest.raises(ValueError, match="seeds"):
        EnvSlots(env_id, [1], max_episode_steps=40).load_state_dict(state)


def test_env_slots_seed_each_member_independently():
    a = EnvSlots("Hopper-v5", [1, 2])
    b = EnvSlots("Hopper-v5", [2])
    np.testing.assert_array_equal(a.observations[1], b.observations[0])
    assert not np.array_equal(a.observations[0], a.observations[1])


def test_replay_buffer_ring_order_sampling_and_state():
    buf = ReplayBuffer(2, 5, 3, 1, extras={"qpos": 2})
    for t in range(7):
        buf.add({"observations": np.full((2, 3), t), "actions": np.full((2, 1), t),
                 "rewards": [t, -t], "next_observations": np.full((2, 3), t + 1),
                 "terminals": [0, 1], "timeouts": [0, 0], "qpos": np.zeros((2, 2))})
    assert (buf.size, buf.position, buf.added) == (5, 2, 7)
    np.testing.assert_array_equal(buf.contents(1)["rewards"], [-2, -3, -4, -5, -6])
    batch = buf.sample(16, member_generators([0, 1], "s"))
    assert batch.observations.shape == (2, 16, 3) and batch.dones.shape == (2, 16)
    assert set(batch.rewards[0].tolist()) <= {2, 3, 4, 5, 6}
    assert torch.all(batch.dones[1] == 1) and torch.all(batch.dones[0] == 0)
    other = ReplayBuffer(2, 5, 3, 1, extras={"qpos": 2})
    other.load_state_dict(buf.state_dict())
    for k in buf.data:
        assert torch.equal(buf.data[k], other.data[k])
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(2, 6, 3, 1).load_state_dict(buf.state_dict())


def _small(steps=400):
    config = BehaviourConfig(env_id="Hopper-v5", steps=steps, learning_starts=150, eval_every=200,
                             eval_episodes=2, checkpoint_every=100, log_every=50,
                             max_episode_steps=60, batch_size=32)
    return config, SACConfig(actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32))


def test_behaviour_run_stopped_and_resumed_equals_uninterrupted(tmp_path):
    config, sac = _small()
    train_behaviour(tmp_path / "a", config, sac, progress=False)
    train_behaviour(tmp_path / "b", config, sac, progress=False, stop_after=230)  # mid-episode
    info = json.loads((tmp_path / "b" / "run.json").read_text())
    assert info["status"] == "interrupted"
    train_behaviour(tmp_path / "b", config, sac, progress=False)
    a, b = np.load(tmp_path / "a" / "replay_seed_0.npz"), np.load(tmp_path / "b" / "replay_seed_0.npz")
    assert a["observations"].shape == (400, 11) and a["qpos"].shape == (400, 6)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for name in ("evaluations.csv", "episodes.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    strip = lambda p: [ln.rsplit(",", 1)[0] for ln in p.read_text().splitlines()]  # drop rate
    assert strip(tmp_path / "a" / "metrics.csv") == strip(tmp_path / "b" / "metrics.csv")
    snaps = sorted((tmp_path / "b" / "snapshots" / "seed_0").iterdir())
    assert [p.name for p in snaps] == ["step_00000200.pt", "step_00000400.pt"]
    info = json.loads((tmp_path / "b" / "run.json").read_text())
    assert info["status"] == "complete" and info["resumed"][0]["step"] == 230


def test_behaviour_run_refuses_a_different_config(tmp_path):
    config, sac = _small(steps=160)
    train_behaviour(tmp_path / "r", config, sac, progress=False, stop_after=120)
    config.steps = 200
    with pytest.raises(UserError, match="different config"):
        train_behaviour(tmp_path / "r", config, sac, progress=False)


def test_select_policies_writes_expert_and_medium_with_provenance(tmp_path):
    from offrl.data.policies import load_policy
    from offrl.training.behaviour import select_policies

    config, sac = _small(steps=400)
    config.eval_every = 100
    run = train_behaviour(tmp_path / "run", config, sac, progress=False)
    record = select_policies(run, tmp_path / "policies", "hopper-v5", episodes=3, candidates=2,
                             log=lambda *a: None)
    assert record["medium"]["step"] < record["expert"]["step"]
    assert record["expert"]["episodes"] == 3 and record["random"]["episodes"] == 3
    expert = load_policy(tmp_path / "policies" / "hopper-v5-expert.pt")
    assert expert.meta["kind"] == "expert" and expert.meta["training_step"] == record["expert"]["step"]
    assert (tmp_path / "policies" / "hopper-v5-sac.toml").read_text() == (run / "config.toml").read_text()
    curve = (tmp_path / "policies" / "hopper-v5-curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,") and len(curve) == 5
    saved = json.loads((tmp_path / "policies" / "hopper-v5-selection.json").read_text())
    assert saved["expert"] == record["expert"]
