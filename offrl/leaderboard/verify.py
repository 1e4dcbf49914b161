"""Verification: re-run every submitted policy on env seeds the submitter never saw.

For each dataset, every seed's TorchScript policy plays `episodes` fresh episodes (default: the
protocol's number) with `offrl.evaluation.rollout`, on env seeds drawn from a verification
seed that is random unless given (`secrets`), avoiding every env seed in the submission. The
claimed and re-measured returns are compared per dataset in normalised-score units (raw
returns when the dataset has no reference scores):

    difference = mean(claimed) − mean(verified)       (over all seeds × episodes)
    flagged if difference > tolerance and Welch's one-sided p-value < alpha

The default tolerance is 5 normalised points (5% of |mean| for raw returns) and alpha 1e-3,
so honest submissions pass while inflated claims are caught. Per-seed differences are reported
too. A submission is "verified" when no dataset is flagged, else "flagged".
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offrl.errors import UserError
from offrl.leaderboard.schema import DatasetResult, Submission

VERIFY_STREAM = 7          # `episode_seeds` stream of verification rollouts
STATUS_VERIFIED, STATUS_FLAGGED = "verified", "flagged"


@dataclass
class SeedCheck:
    seed: int
    claimed: float           # mean over the claimed episodes
    verified: float          # mean over the re-run episodes
    verified_returns: list[float]
    verified_env_seeds: list[int]


@dataclass
class DatasetCheck:
    dataset_id: str
    units: str               # "normalized score" or "return"
    claimed_mean: float
    verified_mean: float
    difference: float        # claimed − verified
    tolerance: float
    p_value: float
    flagged: bool
    seeds: list[SeedCheck] = field(default_factory=list)
    flagged_seeds: list[int] = field(default_factory=list)


@dataclass
class Verification:
    """The outcome of one verification; `to_json()` is what verification.json holds."""

    status: str
    verified_at: str
    episodes: int
    verification_seed: int
    tolerance: float
    alpha: float
    datasets: list[DatasetCheck]

    @property
    def message(self) -> str:
        bad = [d for d in self.datasets if d.flagged]
        if not bad:
            return (f"verified: re-running every policy on {self.episodes} fresh episode(s) per "
                    "seed reproduces the claimed returns")
        return "flagged: claimed returns exceed the re-run's on " + "; ".join(
            f"{d.dataset_id} (claimed {d.claimed_mean:.2f}, re-run {d.verified_mean:.2f} "
            f"{d.units}, difference {d.difference:.2f}, p = {d.p_value:.2g})" for d in bad)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Verification":
        datasets = []
        for d in data["datasets"]:
            seeds = [SeedCheck(**s) for s in d.get("seeds", [])]
            datasets.append(DatasetCheck(**{**d, "seeds": seeds}))
        return cls(**{k: v for k, v in data.items() if k not in ("message", "datasets")},
                   datasets=datasets)


def welch_p_greater(claimed: np.ndarray, verified: np.ndarray) -> float:
    """One-sided p-value of mean(claimed) > mean(verified) (Welch's t-test)."""
    import scipy.stats

    diff = float(claimed.mean() - verified.mean())
    vc = float(claimed.var(ddof=1)) / claimed.size if claimed.size > 1 else 0.0
    vv = float(verified.var(ddof=1)) / verified.size if verified.size > 1 else 0.0
    se2 = vc + vv
    if se2 <= 0.0:
        return 0.0 if diff > 0 else 1.0
    df_den = ((vc ** 2 / (claimed.size - 1) if claimed.size > 1 else 0.0)
              + (vv ** 2 / (verified.size - 1) if verified.size > 1 else 0.0))
    df = se2 ** 2 / df_den if df_den > 0 else 1.0
    return float(scipy.stats.t.sf(diff / math.sqrt(se2), df))


def _fresh_env_seeds(verification_seed: int, seeds: list[int], episodes: int,
                     used: set[int]) -> np.ndarray:
    from offrl.evaluation.rollout import episode_seeds

    for index in range(100):
        env_seeds = episode_seeds(verification_seed, seeds, episodes, evaluation_index=index,
                                  stream=VERIFY_STREAM)
        if not used.intersection(int(s) for s in env_seeds.ravel()):
            return env_seeds
    raise UserError("could not draw env seeds disjoint from the submission's")  # never in practice


def _policy_batch(modules: list[Any]):
    """A rollout policy: (S, E, obs_dim) numpy -> (S, E, act_dim), member s by modules[s]."""
    import torch

    def policy(observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.stack([modules[s](torch.from_numpy(np.asarray(observations[s],
                                                                    dtype=np.float32))).numpy()
                             for s in range(len(modules))])
    return policy


def verify_dataset(entry: DatasetResult, bundle_dir: Path, *, episodes: int,
                   verification_seed: int, tolerance: float, alpha: float,
                   backend: str = "sync") -> DatasetCheck:
    """Re-run every seed of one dataset and compare with its claims."""
    from offrl.evaluation.rollout import VectorEvaluator
    from offrl.training.export import load_policy

    seeds = [r.seed for r in entry.results]
    modules = [load_policy(bundle_dir / r.policy)[0] for r in entry.results]
    used = {s for r in entry.results for s in r.env_seeds}
    env_seeds = _fresh_env_seeds(verification_seed, seeds, episodes, used)
    try:
        with VectorEvaluator(entry.env_id, len(seeds), episodes,
                             max_episode_steps=entry.max_episode_steps,
                             backend=backend) as evaluator:
            rollouts = evaluator.run(_policy_batch(modules), env_seeds)
    except UserError:
        raise
    except Exception as exc:  # a policy that fails mid-episode, an env that cannot be made
        raise UserError(f"{entry.dataset_id}: re-running the policies failed ({exc})") from exc
    has_refs = entry.ref_min_score is not None
    claimed = [np.asarray(entry.normalized(r.returns)) for r in entry.results]
    verified = [np.asarray(entry.normalized(list(rollouts.returns[m])))
                for m in range(len(seeds))]
    all_claimed, all_verified = np.concatenate(claimed), np.concatenate(verified)
    difference = float(all_claimed.mean() - all_verified.mean())
    tol = tolerance if has_refs else tolerance / 100.0 * max(abs(float(all_claimed.mean())), 1.0)
    p_value = welch_p_greater(all_claimed, all_verified)
    checks, flagged_seeds = [], []
    for m, (seed, c, v) in enumerate(zip(seeds, claimed, verified)):
        checks.append(SeedCheck(seed, float(c.mean()), float(v.mean()),
                                [float(x) for x in rollouts.returns[m]],
                                [int(x) for x in rollouts.env_seeds[m]]))
        if float(c.mean() - v.mean()) > tol and welch_p_greater(c, v) < alpha:
            flagged_seeds.append(seed)
    return DatasetCheck(entry.dataset_id, "normalized score" if has_refs else "return",
                        float(all_claimed.mean()), float(all_verified.mean()), difference, tol,
                        p_value, bool(difference > tol and p_value < alpha), checks,
                        flagged_seeds)


def verify_submission(submission: Submission, bundle_dir: str | Path, *,
                      episodes: int | None = None, verification_seed: int | None = None,
                      tolerance: float = 5.0, alpha: float = 1e-3,
                      backend: str = "sync") -> Verification:
    """Re-evaluate every policy of a (rule-checked) bundle; see the module docstring."""
    from offrl.training.run_dir import utc_now

    episodes = int(episodes or submission.protocol.evaluation_episodes)
    if episodes <= 0:
        raise UserError(f"episodes must be positive; got {episodes}")
    if not tolerance >= 0 or not 0 < alpha < 1:
        raise UserError(f"need tolerance >= 0 and 0 < alpha < 1; got {tolerance}, {alpha}")
    if verification_seed is None:
        verification_seed = secrets.randbits(63)
    checks = [verify_dataset(d, Path(bundle_dir), episodes=episodes,
                             verification_seed=verification_seed, tolerance=tolerance,
                             alpha=alpha, backend=backend)
              for d in submission.datasets]
    status = STATUS_FLAGGED if any(c.flagged for c in checks) else STATUS_VERIFIED
    return Verification(status, utc_now(), episodes, int(verification_seed), float(tolerance),
                        float(alpha), checks)
