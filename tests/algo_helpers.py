"""Small, fast, deterministic RL fixtures for the algorithm tests (not part of the package).

A vectorised numpy copy of gymnasium's Pendulum-v1 (checked against gymnasium step by step in
test_sampler.py), a scripted swing-up controller, a mixed-quality dataset made from it, and a
batched evaluator that rolls out every member of an agent at once.
"""

from __future__ import annotations

import numpy as np
import torch

from offrl.data.dataset import Transitions

MAX_TORQUE = 2.0
EPISODE_STEPS = 200


def angle_normalize(x: np.ndarray) -> np.ndarray:
    return ((x + np.pi) % (2 * np.pi)) - np.pi


def pendulum_step(th: np.ndarray, thdot: np.ndarray, u: np.ndarray):
    """gymnasium Pendulum-v1's step (g=10, m=l=1, dt=0.05) on arrays: -> th', thdot', reward."""
    u = np.clip(u, -MAX_TORQUE, MAX_TORQUE)
    cost = angle_normalize(th) ** 2 + 0.1 * thdot ** 2 + 0.001 * u ** 2
    new_thdot = np.clip(thdot + (3 * 10.0 / 2 * np.sin(th) + 3.0 * u) * 0.05, -8.0, 8.0)
    return th + new_thdot * 0.05, new_thdot, -cost


def pendulum_obs(th: np.ndarray, thdot: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(th), np.sin(th), thdot], axis=-1).astype(np.float32)


def pendulum_reset(rng: np.random.Generator, n: int):
    """gymnasium's reset: θ ~ U(-π, π), θ' ~ U(-1, 1)."""
    return rng.uniform(-np.pi, np.pi, n), rng.uniform(-1.0, 1.0, n)


def swing_up_controller(obs: np.ndarray) -> np.ndarray:
    """Energy pumping far from the top, PD near it. Mean return about -163 per episode."""
    c, s, w = (obs[..., i].astype(np.float64) for i in range(3))
    th = np.arctan2(s, c)
    energy = 0.5 * w ** 2 + 15.0 * c  # 15 = 3g / 2l; upright at rest is 15
    pump = 0.5 * (15.0 - energy) * w
    pd = -(10.0 * th + 2.0 * w)
    return np.clip(np.where(c > 0.85, pd, pump), -MAX_TORQUE, MAX_TORQUE)


def rollout_returns(policy, n_episodes: int, seed: int) -> np.ndarray:
    """Returns of `policy(obs (n, 3)) -> actions (n,)` over n_episodes parallel episodes."""
    rng = np.random.default_rng(seed)
    th, thdot = pendulum_reset(rng, n_episodes)
    total = np.zeros(n_episodes)
    for _ in range(EPISODE_STEPS):
        th, thdot, r = pendulum_step(th, thdot, policy(pendulum_obs(th, thdot)))
        total += r
    return total


def make_pendulum_dataset(n_episodes: int = 150, expert_prob: float = 0.3, seed: int = 0,
                          reward_scale: float = 0.1):
    """A mixed-quality Pendulum dataset, normalised like CORL (states by mean/std, eps 1e-3).

    At every step the controller's torque is taken with probability `expert_prob`, otherwise a
    uniform random torque. Behaviour cloning learns the average, about expert_prob times the
    controller (return about -840 for 0.3), while the best actions in the data reach about -163:
    only an algorithm that uses the rewards gets near the controller.

    Returns (transitions, obs_mean, obs_std) with rewards multiplied by `reward_scale`; actions
    are torques divided by 2, so in [-1, 1] like D4RL's (max_action = 1; `evaluate_agent`
    multiplies them back).
    """
    rng = np.random.default_rng(seed)
    th, thdot = pendulum_reset(rng, n_episodes)
    obs, act, rew, nxt = [], [], [], []
    for _ in range(EPISODE_STEPS):
        o = pendulum_obs(th, thdot)
        u = np.where(rng.random(n_episodes) < expert_prob, swing_up_controller(o),
                     rng.uniform(-MAX_TORQUE, MAX_TORQUE, n_episodes))
        th, thdot, r = pendulum_step(th, thdot, u)
        obs.append(o), act.append(u), rew.append(r), nxt.append(pendulum_obs(th, thdot))
    # (T, E, ·) -> episode-major rows
    def flat(x):
        x = np.asarray(x)
        return np.swapaxes(x, 0, 1).reshape(n_episodes * EPISODE_STEPS, *x.shape[2:])
    o, a, r, n = flat(obs), (flat(act) / MAX_TORQUE).astype(np.float32)[:, None], flat(rew), flat(nxt)
    mean, std = o.mean(0), o.std(0) + 1e-3
    tr = Transitions(observations=((o - mean) / std).astype(np.float32), actions=a,
                     rewards=(r * reward_scale).astype(np.float32),
                     next_observations=((n - mean) / std).astype(np.float32),
                     dones=np.zeros(len(r), dtype=bool), labelled=np.ones(len(r), dtype=bool))
    return tr, mean.astype(np.float32), std.astype(np.float32)


def evaluate_agent(agent, obs_mean: np.ndarray, obs_std: np.ndarray, n_episodes: int = 20,
                   seed: int = 12345) -> np.ndarray:
    """(S,) mean undiscounted return of every member's deterministic policy, same start states
    for every member. The agent acts in [-1, 1]; the torque is twice that."""
    S = agent.num_members
    rng = np.random.default_rng(seed)
    th0, thdot0 = pendulum_reset(rng, n_episodes)
    th, thdot = np.tile(th0, (S, 1)), np.tile(thdot0, (S, 1))
    total = np.zeros((S, n_episodes))
    for _ in range(EPISODE_STEPS):
        o = (pendulum_obs(th, thdot) - obs_mean) / obs_std
        with torch.no_grad():
            u = agent.act(torch.as_tensor(o, dtype=torch.float32), deterministic=True)
        th, thdot, r = pendulum_step(th, thdot, MAX_TORQUE * u.cpu().numpy()[..., 0].astype(np.float64))
        total += r
    return total.mean(axis=1)


def train(agent, sampler, steps: int) -> dict[str, torch.Tensor]:
    metrics = {}
    for _ in range(steps):
        metrics = agent.update(sampler.sample())
    return metrics


def random_transitions(n: int = 5000, obs_dim: int = 11, act_dim: int = 3, seed: int = 0,
                       labelled_fraction: float = 1.0) -> Transitions:
    rng = np.random.default_rng(seed)
    labelled = rng.random(n) < labelled_fraction
    actions = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
    actions[~labelled] = np.nan
    return Transitions(observations=rng.standard_normal((n, obs_dim)).astype(np.float32),
                       actions=actions, rewards=rng.standard_normal(n).astype(np.float32),
                       next_observations=rng.standard_normal((n, obs_dim)).astype(np.float32),
                       dones=rng.random(n) < 0.05, labelled=labelled)
