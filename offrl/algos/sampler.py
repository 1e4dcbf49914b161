"""Uniform minibatches for S members at once, drawn on the training device.

The dataset is copied once to the device as one packed float32 table whose columns are
[observation | action | reward | next observation | done]; a batch is one `index_select` of
S * B rows, returned as views shaped (S, B, ·). Member s draws its B indices from its own
`torch.Generator`, seeded from seeds[s] (`derive_seed(seed, "sampler")`), so member s of an
S-seed sampler draws exactly the indices a one-seed sampler with seeds[s] draws.

Unlabelled rows (`Transitions.labelled` False: no trusted action) are left out of the table:
every algorithm here learns from actions, so they are never sampled. A dataset with no labelled
row raises `ValueError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from offrl.algos.base import Batch, member_generators
from offrl.data.dataset import DatasetError, Transitions

__all__ = ["TransitionSampler"]


class TransitionSampler:
    """Draws `Batch`es shaped (S, batch_size, ·) from `transitions`, uniformly with replacement.

    transitions: the (s, a, r, s', done, labelled) arrays; only labelled rows are kept.
    seeds: one per member; member s's indices come from its own generator.
    batch_size: rows per member per batch.
    device: where the table lives and batches are drawn.
    """

    def __init__(self, transitions: Transitions, seeds: list[int], batch_size: int,
                 device: str | torch.device = "cpu"):
        if len(seeds) == 0:
            raise ValueError("TransitionSampler needs at least one seed")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        labelled = np.asarray(transitions.labelled, dtype=bool)
        if labelled.shape != (len(transitions),):
            raise ValueError(f"transitions.labelled has shape {labelled.shape}; expected "
                             f"({len(transitions)},)")
        n = int(labelled.sum())
        if n == 0:
            raise DatasetError(f"the dataset has no labelled transitions (of {len(transitions)}); "
                               "these algorithms need actions: label them first (`offrl datasets "
                               "label`, inverse dynamics)")
        keep = None if n == len(transitions) else np.flatnonzero(labelled)

        def rows(a: np.ndarray) -> np.ndarray:
            a = np.asarray(a, dtype=np.float32)
            a = a if keep is None else a[keep]
            return a.reshape(len(a), -1)

        obs, act = rows(transitions.observations), rows(transitions.actions)
        parts = [obs, act, rows(transitions.rewards), rows(transitions.next_observations),
                 rows(transitions.dones)]
        if not np.isfinite(act).all():
            raise ValueError("labelled transitions have NaN or inf actions")
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.batch_size = int(batch_size)
        self.size = n
        self.observation_dim, self.action_dim = obs.shape[1], act.shape[1]
        table = np.concatenate(parts, axis=1)
        self._table = torch.from_numpy(table).to(self.device)
        self._row_width = table.shape[1]
        o, a = self.observation_dim, self.action_dim
        self._slices = (slice(0, o), slice(o, o + a), o + a, slice(o + a + 1, 2 * o + a + 1),
                        2 * o + a + 1)
        self._generators = member_generators(self.seeds, "sampler", self.device)
        self._index = torch.empty(len(self.seeds), self.batch_size, dtype=torch.int64,
                                  device=self.device)

    @property
    def num_members(self) -> int:
        return len(self.seeds)

    def sample_indices(self) -> torch.Tensor:
        """(S, B) int64 row indices into the labelled rows, member s from its own generator.

        A new tensor each call (the previous batch may still be in use)."""
        index = torch.empty_like(self._index)
        n = self.size
        for s, g in enumerate(self._generators):
            index[s].random_(0, n, generator=g)
        return index

    def sample(self) -> Batch:
        """A `Batch`: observations (S, B, obs), actions (S, B, act), rewards (S, B),
        next_observations (S, B, obs), dones (S, B) float32 in {0, 1}."""
        index = self.sample_indices()
        s, b = index.shape
        rows = self._table.index_select(0, index.view(-1)).view(s, b, self._row_width)
        so, sa, sr, sn, sd = self._slices
        return Batch(observations=rows[..., so], actions=rows[..., sa], rewards=rows[..., sr],
                     next_observations=rows[..., sn], dones=rows[..., sd])

    def state_dict(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "size": self.size, "batch_size": self.batch_size,
                "generators": [g.get_state() for g in self._generators]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["seeds"]) != self.seeds or int(state["size"]) != self.size:
            raise ValueError(f"sampler state is for seeds {state['seeds']} over {state['size']} "
                             f"rows; this sampler has seeds {self.seeds} over {self.size} rows")
        for g, st in zip(self._generators, state["generators"]):
            g.set_state(st.cpu() if isinstance(st, torch.Tensor) else st)
