"""What every agent offers the training loop, evaluation and checkpoints.

Shapes: S = members trained side by side (one per seed), B = batch size.
Tensors live on the agent's device; the host touches them only to log and evaluate.
"""

from __future__ import annotations

import abc
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch


PRECISIONS = ("fp32", "bf16")  # Agent.set_precision; [training] precision


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

    @property
    def num_members(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.rewards.shape[1])


def derive_seed(seed: int, stream: str) -> int:
    """A 64-bit seed for one named random stream of one member, derived from its run seed.

    Streams ("init", "update", "act", "sampler", ...) of the same seed are independent, and the
    derivation depends on nothing but (seed, stream), so a member draws the same numbers whether
    it trains alone or beside other seeds.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seeds must be non-negative integers; got {seed!r}")
    sequence = np.random.SeedSequence([int(seed), zlib.crc32(stream.encode())])
    return int(sequence.generate_state(1, np.uint64)[0])


def member_generators(seeds: list[int], stream: str,
                      device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One `torch.Generator` per member on `device`, seeded with `derive_seed(seed, stream)`."""
    gens = []
    for seed in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(derive_seed(seed, stream))
        gens.append(g)
    return gens


class Agent(abc.ABC):
    """An offline RL agent training S independent members (seeds) in one process.

    Subclasses set `name` and `config_class`, build their ensembles in
    `__init__(config, observation_dim, action_dim, seeds, device="cpu", max_action=1.0)` and
    implement the methods below. Member s's initial weights and every random number it uses
    come only from seeds[s] (`member_generators`), so member s of an S-seed agent trains exactly
    like a one-seed agent built with seeds[s] (bit for bit on one CPU thread with a batch size
    that is a multiple of 16; within float rounding otherwise). Agents may take keyword-only
    speed options after these (TD3BC and IQL: `compile=False`).
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    # The attributes holding the EnsembleMLPs that `set_precision("bf16")` switches to bf16
    # compute; empty: the agent trains in fp32 only.
    bf16_networks: ClassVar[tuple[str, ...]] = ()

    seeds: list[int]
    step: int

    @property
    def num_members(self) -> int:
        return len(self.seeds)

    def set_precision(self, precision: str) -> None:
        """"fp32", or "bf16": matmuls, activations and gradients of `bf16_networks` in bfloat16,
        their fp32 weights and optimiser state kept as the master copy."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
        if precision == "bf16" and not self.bf16_networks:
            raise ValueError(f"{self.name} trains in fp32 only (it lists no bf16_networks)")
        dtype = torch.bfloat16 if precision == "bf16" else None
        for attr in self.bf16_networks:
            getattr(self, attr).set_compute_dtype(dtype)

    @classmethod
    def adapt_config(cls, config: Any, *, total_steps: int) -> Any:
        """The config with run-level facts its schedules depend on filled in.

        The training loop calls this once with the run's total number of gradient steps before
        building the agent (e.g. IQL decays its actor learning rate over exactly that many
        steps). The default returns `config` unchanged.
        """
        return config

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
