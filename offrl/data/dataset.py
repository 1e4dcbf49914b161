"""The in-memory offline dataset: flat per-step arrays plus episode boundaries.

Rows are environment steps in D4RL's raw layout: row i holds the observation seen, the action
taken, the reward received and whether the episode terminated or timed out at that step.
`next_observations` is kept when the source recorded it (Minari always does, D4RL files
sometimes) and is None otherwise; the `qlearning` view then follows D4RL exactly.

Arrays keep the dtype they were stored with (float32 or float64) so that conversions are
lossless; training code casts to float32 when it moves data to the device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from offrl.errors import UserError


class DatasetError(UserError, ValueError):
    """A dataset (file, card or arrays) is malformed. The message names the source and the key."""


# infos key of the per-row flag "this action was predicted (inverse dynamics), not recorded".
PROXY_INFO = "action_is_proxy"


@dataclass
class Transitions:
    """(s, a, r, s', done) arrays for Q-learning, all float32 except `dones` (bool).

    observations (N, obs_dim), actions (N, act_dim), rewards (N,), next_observations
    (N, obs_dim), dones (N,), labelled (N,) — True where the row has an action to learn from
    (as `Dataset.labelled`: a true action, or a proxy from inverse dynamics).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    dones: np.ndarray
    labelled: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)


@dataclass
class Episode:
    """One episode's rows: observations (T, obs_dim), actions (T, act_dim), rewards (T,), …"""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    next_observations: np.ndarray | None
    labelled: np.ndarray

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum(dtype=np.float64))

    def __len__(self) -> int:
        return len(self.rewards)


@dataclass
class Dataset:
    """Flat step arrays of an offline RL dataset.

    observations      (N, obs_dim) float
    actions           (N, act_dim) float; NaN rows where `labelled` is False (no trusted action)
    rewards           (N,) float
    terminals         (N,) bool — the MDP ended at this step (no bootstrapping)
    timeouts          (N,) bool — the episode was cut by a time limit at this step
    next_observations (N, obs_dim) float or None when the source did not record it
    episode_starts    (E,) int64 — index of each episode's first row, ascending, starts at 0
    labelled          (N,) bool — True where `actions` holds an action to train on: the
                      behaviour policy's, or a proxy predicted by an inverse dynamics model
                      (then infos["action_is_proxy"] is True; see `offrl.data.labelling`).
                      False rows have no trusted action (NaN) and are never sampled.
    infos             {name: (N, ...) array} — per-step extras, e.g. "qpos", "qvel"
    extras            {path: array} — anything else a file held (e.g. "metadata/policy/fc0/weight")
    metadata          plain JSON-able dict: dataset_id, env_id, ref_min_score, ref_max_score,
                      source, sha256, … (see `offrl.data.registry` for the card fields)
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_starts: np.ndarray
    next_observations: np.ndarray | None = None
    labelled: np.ndarray | None = None
    infos: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labelled is None:
            self.labelled = ~np.isnan(self.actions).any(axis=-1) if self.actions.size else (
                np.zeros(len(self.rewards), dtype=bool))
        self.episode_starts = np.asarray(self.episode_starts, dtype=np.int64)

    # ------------------------------------------------------------------ basic facts
    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_starts.shape[0])

    @property
    def observation_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) exclusive end index of each episode."""
        return np.append(self.episode_starts[1:], len(self)).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return self.episode_ends - self.episode_starts

    @property
    def episode_returns(self) -> np.ndarray:
        """(E,) float64 undiscounted return of each episode."""
        if len(self) == 0:
            return np.zeros(0)
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts)

    @property
    def fully_labelled(self) -> bool:
        return bool(self.labelled.all())

    @property
    def action_is_proxy(self) -> np.ndarray:
        """(N,) bool: True where the action is an inverse-dynamics proxy, not a recorded one."""
        flag = self.infos.get(PROXY_INFO)
        return np.zeros(len(self), dtype=bool) if flag is None else np.asarray(flag, dtype=bool)

    @property
    def true_labelled(self) -> np.ndarray:
        """(N,) bool: rows whose action was recorded (labelled and not a proxy)."""
        return self.labelled & ~self.action_is_proxy

    @property
    def name(self) -> str:
        return str(self.metadata.get("dataset_id") or self.metadata.get("source_path") or "<dataset>")

    def replace(self, **changes: Any) -> "Dataset":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ boundaries
    @staticmethod
    def episode_starts_from_flags(terminals: np.ndarray, timeouts: np.ndarray,
                                  max_episode_steps: int | None = None) -> np.ndarray:
        """Episode starts implied by terminal/timeout flags.

        An episode ends at a row whose terminal or timeout flag is set. Files without
        `timeouts` (older D4RL) also end an episode after `max_episode_steps` rows, exactly
        as D4RL's `qlearning_dataset` counts them.
        """
        n = len(terminals)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        ends = np.asarray(terminals, bool) | np.asarray(timeouts, bool)
        if max_episode_steps is None:
            starts = np.flatnonzero(ends[:-1]) + 1
            return np.concatenate([[0], starts]).astype(np.int64)
        # Counting steps needs a pass over episodes (not rows), like D4RL's episode_step.
        ended = np.flatnonzero(ends)
        starts, pos = [0], 0
        while True:
            k = np.searchsorted(ended, pos)
            flagged_end = ended[k] if k < len(ended) else n
            pos = min(flagged_end, pos + max_episode_steps - 1) + 1
            if pos >= n:
                return np.asarray(starts, dtype=np.int64)
            starts.append(pos)

    # ------------------------------------------------------------------ validation
    def validate(self, source: str | None = None, observation_shape: tuple[int, ...] | None = None,
                 action_shape: tuple[int, ...] | None = None) -> "Dataset":
        """Check shapes, dtypes, finiteness and boundaries; raise DatasetError naming the problem.

        `observation_shape` / `action_shape` are the env's spaces (from the card) when known.
        Returns self so calls chain.
        """
        where = source or self.name
        n = len(self)

        def fail(key: str, problem: str) -> None:
            raise DatasetError(f"{where}: '{key}' {problem}")

        def check_rows(key: str, arr: np.ndarray | None, ndim: int) -> None:
            if arr is None:
                return
            if arr.ndim != ndim:
                fail(key, f"has shape {arr.shape}; expected {ndim} dimension(s) with {n} rows")
            if arr.shape[0] != n:
                fail(key, f"has {arr.shape[0]} rows; expected {n} (the length of 'rewards')")

        for key, arr, ndim in [("observations", self.observations, 2), ("actions", self.actions, 2),
                               ("rewards", self.rewards, 1), ("terminals", self.terminals, 1),
                               ("timeouts", self.timeouts, 1),
                               ("next_observations", self.next_observations, 2),
                               ("labelled", self.labelled, 1)]:
            check_rows(key, arr, ndim)
        for key in ("observations", "actions", "rewards", "next_observations"):
            arr = getattr(self, key)
            if arr is not None and not np.issubdtype(arr.dtype, np.floating):
                fail(key, f"has dtype {arr.dtype}; expected float32 or float64")
        for key in ("terminals", "timeouts", "labelled"):
            if getattr(self, key).dtype != np.bool_:
                fail(key, f"has dtype {getattr(self, key).dtype}; expected bool")
        if self.next_observations is not None and self.next_observations.shape[1:] != self.observations.shape[1:]:
            fail("next_observations", f"has shape {self.next_observations.shape}; expected "
                 f"{(n,) + self.observations.shape[1:]} like 'observations'")
        if observation_shape is not None and tuple(self.observations.shape[1:]) != tuple(observation_shape):
            fail("observations", f"rows have shape {self.observations.shape[1:]}; the env's "
                 f"observation space is {tuple(observation_shape)}")
        if action_shape is not None and tuple(self.actions.shape[1:]) != tuple(action_shape):
            fail("actions", f"rows have shape {self.actions.shape[1:]}; the env's action space "
                 f"is {tuple(action_shape)}")
        for key in ("observations", "rewards", "next_observations"):
            arr = getattr(self, key)
            if arr is not None and not np.isfinite(arr).all():
                bad = np.flatnonzero(~np.isfinite(arr.reshape(n, -1)).all(axis=1))
                fail(key, f"has {len(bad)} row(s) with NaN or inf (first at row {bad[0]})")
        labelled_actions = self.actions[self.labelled]
        if not np.isfinite(labelled_actions).all():
            rows = np.flatnonzero(self.labelled)[~np.isfinite(labelled_actions).all(axis=1)]
            fail("actions", f"has NaN or inf in {len(rows)} labelled row(s) (first at row {rows[0]}); "
                 "mark action-free rows as unlabelled instead")
        both = np.flatnonzero(self.terminals & self.timeouts)
        if len(both):
            fail("terminals", f"and 'timeouts' are both set at {len(both)} row(s) (first at row "
                 f"{both[0]}); a step either terminates or times out")
        s = self.episode_starts
        if n and (s.ndim != 1 or len(s) == 0 or s[0] != 0 or (np.diff(s) <= 0).any() or s[-1] >= n):
            fail("episode_starts", f"must be strictly increasing row indices starting at 0 and "
                 f"below {n}; got {s[:5]}{'…' if len(s) > 5 else ''}")
        for key, arr in self.infos.items():
            if arr.shape[0] != n:
                fail(f"infos/{key}", f"has {arr.shape[0]} rows; expected {n}")
        proxy = self.infos.get(PROXY_INFO)
        if proxy is not None:
            if proxy.shape != (n,) or proxy.dtype != np.bool_:
                fail(f"infos/{PROXY_INFO}", f"has shape {proxy.shape} and dtype {proxy.dtype}; "
                     f"expected ({n},) bool")
            stray = np.flatnonzero(proxy & ~self.labelled)
            if len(stray):
                fail(f"infos/{PROXY_INFO}", f"marks {len(stray)} unlabelled row(s) as proxy "
                     f"actions (first at row {stray[0]}); a proxy row must hold an action")
        return self

    # ------------------------------------------------------------------ views
    def qlearning(self, terminate_on_end: bool = False) -> Transitions:
        """D4RL's `qlearning_dataset`, vectorised, with identical results.

        next_obs[i] = obs[i+1]; a step that ends an episode by timeout (or, for files with no
        `timeouts`, by reaching the step limit) is dropped unless `terminate_on_end`; terminal
        steps are kept with done=True; the last row is always dropped.
        """
        n = len(self)
        if n < 2:
            raise DatasetError(f"{self.name}: needs at least 2 rows for a qlearning view, has {n}")
        idx = np.arange(n - 1)
        if self.metadata.get("has_timeouts", True):
            final = self.timeouts[:-1]
        else:
            limit = int(self.metadata.get("max_episode_steps", 1000))
            final = _d4rl_final_steps(self.terminals[:-1], limit)
        if not terminate_on_end:
            idx = idx[~final]
        f32 = np.float32
        return Transitions(
            observations=self.observations[idx].astype(f32),
            actions=self.actions[idx].astype(f32),
            rewards=self.rewards[idx].astype(f32),
            next_observations=self.observations[idx + 1].astype(f32),
            dones=self.terminals[idx].astype(bool),
            labelled=self.labelled[idx].copy(),
        )

    def transitions(self) -> Transitions:
        """Every row as a transition, using the recorded `next_observations` (Minari-style data).

        Unlike `qlearning`, nothing is dropped: timeout steps keep their true next observation.
        Falls back to `qlearning()` when the source recorded no next observations.
        """
        if self.next_observations is None:
            return self.qlearning()
        f32 = np.float32
        return Transitions(
            observations=self.observations.astype(f32),
            actions=self.actions.astype(f32),
            rewards=self.rewards.astype(f32),
            next_observations=self.next_observations.astype(f32),
            dones=self.terminals.astype(bool),
            labelled=self.labelled.copy(),
        )

    def episodes(self) -> Iterator[Episode]:
        """Yield each episode's rows (views into the flat arrays, no copies)."""
        for start, end in zip(self.episode_starts.tolist(), self.episode_ends.tolist()):
            sl = slice(start, end)
            yield Episode(
                observations=self.observations[sl], actions=self.actions[sl],
                rewards=self.rewards[sl], terminals=self.terminals[sl],
                timeouts=self.timeouts[sl],
                next_observations=None if self.next_observations is None else self.next_observations[sl],
                labelled=self.labelled[sl],
            )

    def summary(self) -> dict[str, Any]:
        """Plain numbers for printing: sizes, episode counts, return statistics."""
        rets = self.episode_returns
        return {
            "dataset_id": self.metadata.get("dataset_id"),
            "env_id": self.metadata.get("env_id"),
            "transitions": len(self),
            "episodes": self.num_episodes,
            "observation_dim": self.observation_dim,
            "action_dim": self.action_dim,
            "dtype": str(self.observations.dtype),
            "terminals": int(self.terminals.sum()),
            "timeouts": int(self.timeouts.sum()),
            "labelled_fraction": float(self.labelled.mean()) if len(self) else 0.0,
            "return_mean": float(rets.mean()) if len(rets) else float("nan"),
            "return_std": float(rets.std()) if len(rets) else float("nan"),
            "return_min": float(rets.min()) if len(rets) else float("nan"),
            "return_max": float(rets.max()) if len(rets) else float("nan"),
            "has_next_observations": self.next_observations is not None,
            "sha256": self.metadata.get("sha256"),
        }


def _d4rl_final_steps(terminals: np.ndarray, max_episode_steps: int) -> np.ndarray:
    """(N,) bool: the rows D4RL's `qlearning_dataset` treats as final when a file has no timeouts.

    D4RL counts `episode_step` and calls step `max_episode_steps - 1` final (even when it is
    also terminal). Its counter restarts at 0 after a final step but, because the `+= 1` still
    runs, at 1 after a terminal step; so an episode that follows a terminal is called final one
    row early. We reproduce that count exactly, one episode at a time.
    """
    n = len(terminals)
    final = np.zeros(n, dtype=bool)
    terminal_rows = np.flatnonzero(terminals)
    pos, step = 0, 0
    while pos < n:
        k = np.searchsorted(terminal_rows, pos)
        next_terminal = terminal_rows[k] if k < len(terminal_rows) else n
        final_row = pos + (max_episode_steps - 1 - step) if step <= max_episode_steps - 1 else n
        if final_row <= next_terminal and final_row < n:
            final[final_row] = True
            pos, step = final_row + 1, 0
        else:
            pos, step = next_terminal + 1, 1
    return final
