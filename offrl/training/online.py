"""Online interaction for S members at once: one env per member and a replay buffer per member.

`EnvSlots` steps S envs in lockstep (member s acts only in env s), resets an env as soon as
its episode ends, and saves/restores everything exact resume needs: the physics state (MuJoCo:
`mj_getState` with the full integration state, warm starts included), the env's RNG, the time
limit's step counter, the current observation and the running episode's return and length.
`ReplayBuffer` holds (S, capacity, ·) tensors on the training device and samples (S, B) indices
there from each member's own generator, like the offline sampler.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from offrl.algos.base import Batch, derive_seed
from offrl.evaluation.rollout import make_env

__all__ = ["EnvSlots", "ReplayBuffer", "physics_state"]


def _time_limit(env: Any) -> Any | None:
    w = env
    while w is not None:
        if hasattr(w, "_elapsed_steps"):
            return w
        w = getattr(w, "env", None)
    return None


def physics_state(env: Any) -> dict[str, Any]:
    """What determines the env's next transitions: MuJoCo's full integration state, or a
    classic-control env's `state`; plus the env RNG and the time limit's counter."""
    u = env.unwrapped
    state: dict[str, Any] = {}
    if hasattr(u, "model") and hasattr(u, "data"):
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        buf = np.empty(mujoco.mj_stateSize(u.model, spec), dtype=np.float64)
        mujoco.mj_getState(u.model, u.data, buf, spec)
        state["mujoco"] = buf
    elif hasattr(u, "state"):
        state["state"] = copy.deepcopy(u.state)
    else:
        raise ValueError(f"cannot save the state of {type(u).__name__}: neither a MuJoCo env "
                         "nor one with a `state` attribute")
    state["np_random"] = copy.deepcopy(u.np_random.bit_generator.state)
    limit = _time_limit(env)
    state["elapsed_steps"] = None if limit is None else limit._elapsed_steps
    return state


def restore_physics_state(env: Any, state: dict[str, Any]) -> None:
    u = env.unwrapped
    if "mujoco" in state:
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        mujoco.mj_setState(u.model, u.data, np.asarray(state["mujoco"], dtype=np.float64), spec)
        mujoco.mj_forward(u.model, u.data)
    else:
        u.state = copy.deepcopy(state["state"])
    u.np_random.bit_generator.state = state["np_random"]
    limit = _time_limit(env)
    if limit is not None:
        limit._elapsed_steps = state["elapsed_steps"]


class EnvSlots:
    """S envs of one id, env s belonging to member s (seed seeds[s]).

    Env s is first reset with `derive_seed(seeds[s], stream) mod 2**32`; later resets draw from
    the env's own RNG, so a member's episodes depend only on its seed. `observations` (S, obs)
    is what the members act on next. `step(actions)` returns the transition of every env and
    resets finished ones.
    """

    def __init__(self, env_id: str, seeds: list[int], *, max_episode_steps: int | None = None,
                 stream: str = "online-env", record_physics: bool = False):
        self.env_id, self.seeds = env_id, [int(s) for s in seeds]
        self.envs = [make_env(env_id, max_episode_steps) for _ in self.seeds]
        space = self.envs[0].action_space
        self.action_low = np.asarray(space.low, dtype=np.float32)
        self.action_high = np.asarray(space.high, dtype=np.float32)
        self.action_dim = int(np.prod(space.shape))
        self.observation_dim = int(np.prod(self.envs[0].observation_space.shape))
        self.record_physics = record_physics and hasattr(self.envs[0].unwrapped, "data")
        S = len(self.seeds)
        self.observations = np.stack([
            np.asarray(env.reset(seed=derive_seed(s, stream) % 2**32)[0], dtype=np.float32).ravel()
            for env, s in zip(self.envs, self.seeds)])
        self.episode_returns = np.zeros(S)
        self.episode_lengths = np.zeros(S, dtype=np.int64)
        self.episodes_done = np.zeros(S, dtype=np.int64)

    @property
    def num_members(self) -> int:
        return len(self.seeds)

    def qpos_qvel(self) -> tuple[np.ndarray, np.ndarray]:
        """(S, nq), (S, nv) of the current states (MuJoCo envs)."""
        return (np.stack([env.unwrapped.data.qpos.copy() for env in self.envs]),
                np.stack([env.unwrapped.data.qvel.copy() for env in self.envs]))

    def step(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """Step every env with its member's action (S, act_dim).

        Returns observations, actions, rewards, next_observations, terminals, timeouts (S, ·)
        — the transitions just made — and `finished`: (S,) the returns of episodes that ended on
        this step (NaN where none did) and `finished_lengths` their lengths. Finished envs are
        reset; `self.observations` then holds
        their first observation.
        """
        actions = np.asarray(actions, dtype=np.float32).reshape(self.num_members, self.action_dim)
        S = self.num_members
        out = {"observations": self.observations.copy(), "actions": actions,
               "rewards": np.zeros(S, dtype=np.float32),
               "next_observations": np.empty_like(self.observations),
               "terminals": np.zeros(S, dtype=bool), "timeouts": np.zeros(S, dtype=bool),
               "finished": np.full(S, np.nan), "finished_lengths": np.zeros(S, dtype=np.int64)}
        if self.record_physics:
            out["qpos"], out["qvel"] = self.qpos_qvel()
        for i, env in enumerate(self.envs):
            o, r, terminated, truncated, _ = env.step(actions[i])
            o = np.asarray(o, dtype=np.float32).ravel()
            out["rewards"][i] = r
            out["next_observations"][i] = o
            out["terminals"][i] = terminated
            out["timeouts"][i] = truncated and not terminated
            self.episode_returns[i] += float(r)
            self.episode_lengths[i] += 1
            if terminated or truncated:
                out["finished"][i] = self.episode_returns[i]
                out["finished_lengths"][i] = self.episode_lengths[i]
                self.episode_returns[i] = 0.0
                self.episode_lengths[i] = 0
                self.episodes_done[i] += 1
                o = np.asarray(env.reset()[0], dtype=np.float32).ravel()
            self.observations[i] = o
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"env_id": self.env_id, "seeds": list(self.seeds),
                "physics": [physics_state(env) for env in self.envs],
                "observations": self.observations.copy(),
                "episode_returns": self.episode_returns.copy(),
                "episode_lengths": self.episode_lengths.copy(),
                "episodes_done": self.episodes_done.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["env_id"] != self.env_id or list(state["seeds"]) != self.seeds:
            raise ValueError(f"env state is for {state['env_id']} seeds {state['seeds']}; these "
                             f"slots are {self.env_id} seeds {self.seeds}")
        for env, phys in zip(self.envs, state["physics"]):
            restore_physics_state(env, phys)
        self.observations = np.asarray(state["observations"], dtype=np.float32).copy()
        self.episode_returns = np.asarray(state["episode_returns"], dtype=np.float64).copy()
        self.episode_lengths = np.asarray(state["episode_lengths"], dtype=np.int64).copy()
        self.episodes_done = np.asarray(state["episodes_done"], dtype=np.int64).copy()

    def close(self) -> None:
        for env in self.envs:
            env.close()


class ReplayBuffer:
    """A ring buffer per member: (S, capacity, ·) tensors on `device`.

    Fields: observations, actions, rewards, next_observations, terminals (float 0/1), timeouts,
    plus optional extra per-step arrays (e.g. qpos, qvel) given as {name: width}. Rows are
    added for all members at once, so every member's buffer has the same size and position.
    """

    def __init__(self, num_members: int, capacity: int, observation_dim: int, action_dim: int,
                 device: str | torch.device = "cpu", extras: dict[str, int] | None = None):
        if capacity <= 0:
            raise ValueError(f"replay capacity must be positive; got {capacity}")
        self.num_members, self.capacity = int(num_members), int(capacity)
        self.device = torch.device(device)
        S, C = self.num_members, self.capacity
        widths = {"observations": observation_dim, "actions": action_dim, "rewards": 0,
                  "next_observations": observation_dim, "terminals": 0, "timeouts": 0,
                  **(extras or {})}
        self.widths = widths
        self.data = {k: torch.zeros((S, C, w) if w else (S, C), dtype=torch.float32, device=self.device)
                     for k, w in widths.items()}
        self.size = 0
        self.position = 0
        self.added = 0  # rows ever added (per member)

    def add(self, rows: dict[str, np.ndarray]) -> None:
        """One row per member: each field (S, ·)."""
        p = self.position
        for k, buf in self.data.items():
            buf[:, p] = torch.as_tensor(np.asarray(rows[k], dtype=np.float32), device=self.device)
        self.position = (p + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.added += 1

    def sample(self, batch_size: int, generators: list[torch.Generator]) -> Batch:
        """(S, B) uniform indices, member s's from generators[s]; returns a Batch."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.empty(self.num_members, batch_size, dtype=torch.long, device=self.device)
        for s, g in enumerate(generators):
            idx[s] = torch.randint(self.size, (batch_size,), generator=g, device=self.device)
        rows = torch.arange(self.num_members, device=self.device).unsqueeze(1)
        d = self.data
        return Batch(d["observations"][rows, idx], d["actions"][rows, idx], d["rewards"][rows, idx],
                     d["next_observations"][rows, idx], d["terminals"][rows, idx])

    def contents(self, member: int) -> dict[str, np.ndarray]:
        """Member `member`'s rows in the order they were added (oldest first), numpy."""
        order = np.arange(self.size)
        if self.size == self.capacity:
            order = (order + self.position) % self.capacity
        return {k: v[member].cpu().numpy()[order] for k, v in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "size": self.size, "position": self.position,
                "added": self.added, "widths": dict(self.widths),
                "data": {k: v[:, :self.size].cpu().clone() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity or dict(state["widths"]) != self.widths:
            raise ValueError("replay buffer state does not match this buffer's capacity or fields")
        n = int(state["size"])
        for k, v in self.data.items():
            v.zero_()
            v[:, :n] = state["data"][k].to(self.device)
        self.size, self.position, self.added = n, int(state["position"]), int(state["added"])
