"""Dataset quality measures: return statistics, TQ and SACo (Schweighofer et al., 2022).

TQ (trajectory quality) = (mean return(D) − mean return(random)) / (mean return(expert) −
mean return(random)): where the behaviour sits between a uniform-random and an expert policy,
with the returns a card records as its reference scores (100 episodes of each policy).

SACo (state-action coverage) = unique (s, a) pairs in D / unique (s, a) pairs in a reference
dataset (the replay buffer of the online run that made the policies, which saw the most
varied data). States and actions are continuous, so pairs are counted after discretisation:
every coordinate is standardised with the reference's mean and std and cut into bins of
`bin_width` standard deviations; a pair is its tuple of bin indices.

Mean return uses complete episodes only (the last, cut-off episode of a file is not one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from offrl.data.dataset import Dataset

__all__ = ["DatasetQuality", "complete_episode_returns", "dataset_quality", "saco",
           "trajectory_quality", "unique_pairs"]


def complete_episode_returns(dataset: Dataset) -> np.ndarray:
    """(E,) float64 returns of episodes that end with a terminal or timeout flag (or, if none
    does, of all episodes)."""
    returns = dataset.episode_returns
    ends = dataset.episode_ends - 1
    complete = dataset.terminals[ends] | dataset.timeouts[ends]
    return returns[complete] if complete.any() else returns


def trajectory_quality(mean_return: float, random_return: float, expert_return: float) -> float:
    """TQ: 0 at the random policy's mean return, 1 at the expert's."""
    if not expert_return > random_return:
        raise ValueError(f"expert return ({expert_return}) must exceed random return ({random_return})")
    return float((mean_return - random_return) / (expert_return - random_return))


def _pairs(dataset: Dataset) -> np.ndarray:
    keep = dataset.labelled
    return np.concatenate([dataset.observations[keep], dataset.actions[keep]], axis=1).astype(np.float64)


def unique_pairs(pairs: np.ndarray, mean: np.ndarray, std: np.ndarray, bin_width: float) -> int:
    """Number of distinct discretised rows of `pairs` (N, D)."""
    codes = np.floor((pairs - mean) / (std * bin_width)).astype(np.int64)
    codes -= codes.min(axis=0, initial=0)  # non-negative codes; distinctness is unchanged
    return int(len(np.unique(codes, axis=0)))


def saco(dataset: Dataset, reference: Dataset, bin_width: float = 0.5) -> float:
    """SACo of `dataset` relative to `reference` (see the module docstring)."""
    if dataset.observation_dim != reference.observation_dim or dataset.action_dim != reference.action_dim:
        raise ValueError("SACo needs a reference dataset with the same observation and action sizes")
    ref = _pairs(reference)
    mean, std = ref.mean(axis=0), ref.std(axis=0) + 1e-6
    return unique_pairs(_pairs(dataset), mean, std, bin_width) / unique_pairs(ref, mean, std, bin_width)


@dataclass
class DatasetQuality:
    """What a dataset report states. Returns are undiscounted episode returns."""

    transitions: int
    episodes: int
    complete_episodes: int
    mean_return: float
    std_return: float
    min_return: float
    max_return: float
    tq: float | None
    saco: float | None
    saco_reference: str | None
    saco_bin_width: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_quality(dataset: Dataset, *, random_return: float | None = None,
                    expert_return: float | None = None, reference: Dataset | None = None,
                    reference_name: str | None = None, bin_width: float = 0.5) -> DatasetQuality:
    """All measures of one dataset; TQ needs both reference returns, SACo a reference dataset."""
    returns = complete_episode_returns(dataset)
    tq = None
    if random_return is not None and expert_return is not None:
        tq = trajectory_quality(float(returns.mean()), random_return, expert_return)
    return DatasetQuality(
        transitions=len(dataset), episodes=dataset.num_episodes, complete_episodes=len(returns),
        mean_return=float(returns.mean()), std_return=float(returns.std()),
        min_return=float(returns.min()), max_return=float(returns.max()), tq=tq,
        saco=None if reference is None else saco(dataset, reference, bin_width),
        saco_reference=reference_name if reference is not None else None, saco_bin_width=bin_width)
