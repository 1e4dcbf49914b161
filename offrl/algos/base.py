"""What every agent offers the training loop, evaluation and checkpoints.

Shapes: S = members trained side by side (one per seed), B = batch size.
Tensors live on the agent's device; the host touches them only to log and evaluate.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass
class Batch:
    """A minibatch per member.

    observations (S, B, obs_dim), actions (S, B, act_dim), rewards (S, B),
    next_observations (S, B, obs_dim), dones (S, B) float32 in {0, 1}.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    dones: torch.Tensor


class Agent(abc.ABC):
    """An offline RL agent training S independent members (seeds) in one process.

    Subclasses set `name` and `config_class`, build their ensembles in `__init__(config,
    observation_dim, action_dim, seeds, device)` and implement the methods below.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]

    seeds: list[int]
    step: int

    @property
    def num_members(self) -> int:
        return len(self.seeds)

    @abc.abstractmethod
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step for every member. Returns metrics as (S,) tensors (no .item())."""

    @abc.abstractmethod
    def act(self, observations: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """observations (S, N, obs_dim) -> actions (S, N, act_dim) in the env's action range."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed for exact resume: online and target nets, optimisers, RNG, step."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, bit for bit."""
