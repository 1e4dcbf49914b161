"""Behaviour policies: the small files under `datasets/policies/` that regenerate datasets.

A policy file is a `torch.save`d dict of plain tensors and numbers (loaded with
`weights_only=True`, so a file cannot run code):

    format            POLICY_FORMAT
    kind              "tanh_gaussian_mlp"
    weights, biases   per layer, (out, in) and (out,) float32; ReLU between layers; the last
                      layer outputs [μ, raw log σ] (2 × action_dim)
    log_std_min/max   clip of log σ
    max_action        actions are max_action · tanh(u), u ~ N(μ, σ²)
    observation_dim, action_dim
    env_id            the env it acts in
    meta              provenance: algorithm, run, training step, seed, returns measured...

The data layer runs these itself (a few matmuls), so generating data never needs the agents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offrl.errors import UserError

__all__ = ["POLICY_FORMAT", "PolicyFileError", "TanhGaussianPolicy", "load_policy", "save_policy"]

POLICY_FORMAT = 1


class PolicyFileError(UserError, ValueError):
    """A behaviour-policy file is missing, unreadable or malformed."""


@dataclass
class TanhGaussianPolicy:
    """A tanh-Gaussian MLP policy (SAC's actor) for one env.

    `act(observations (N, obs_dim), noise (N, act_dim) or None)` -> actions (N, act_dim)
    float32: max_action · tanh(μ + σ ε) with ε = noise, or max_action · tanh(μ) without.
    """

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    log_std_min: float
    log_std_max: float
    max_action: float
    env_id: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def observation_dim(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.weights[-1].shape[0]) // 2

    @torch.no_grad()
    def mean_log_std(self, observations: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(np.asarray(observations, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.observation_dim:
            raise ValueError(f"policy takes observations shaped (N, {self.observation_dim}); "
                             f"got {tuple(x.shape)}")
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.addmm(b, x, w.t())
            if i < last:
                x = torch.relu_(x)
        mean, log_std = x.split(self.action_dim, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    @torch.no_grad()
    def act(self, observations: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        mean, log_std = self.mean_log_std(observations)
        if noise is None:
            u = mean
        else:
            eps = torch.as_tensor(np.asarray(noise, dtype=np.float32))
            if eps.shape != mean.shape:
                raise ValueError(f"noise has shape {tuple(eps.shape)}; expected {tuple(mean.shape)}")
            u = torch.addcmul(mean, log_std.exp(), eps)
        return (torch.tanh(u) * self.max_action).numpy()

    def to_dict(self) -> dict[str, Any]:
        return {"format": POLICY_FORMAT, "kind": "tanh_gaussian_mlp",
                "weights": [w.contiguous() for w in self.weights],
                "biases": [b.contiguous() for b in self.biases],
                "log_std_min": float(self.log_std_min), "log_std_max": float(self.log_std_max),
                "max_action": float(self.max_action), "observation_dim": self.observation_dim,
                "action_dim": self.action_dim, "env_id": self.env_id, "meta": dict(self.meta)}

    @classmethod
    def from_weights(cls, weights: dict[str, Any], env_id: str,
                     meta: dict[str, Any] | None = None) -> "TanhGaussianPolicy":
        """From `SAC.policy_weights(member)`'s dict."""
        policy = cls([w.detach().float().cpu().clone() for w in weights["weights"]],
                     [b.detach().float().cpu().clone() for b in weights["biases"]],
                     float(weights["log_std_min"]), float(weights["log_std_max"]),
                     float(weights["max_action"]), env_id, dict(meta or {}))
        _check_shapes(policy, "<weights>")
        return policy


def _check_shapes(policy: TanhGaussianPolicy, source: str) -> None:
    if not policy.weights or len(policy.weights) != len(policy.biases):
        raise PolicyFileError(f"{source}: needs one bias per weight and at least one layer")
    for i, (w, b) in enumerate(zip(policy.weights, policy.biases)):
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise PolicyFileError(f"{source}: layer {i} has weight {tuple(w.shape)} and bias "
                                  f"{tuple(b.shape)}; expected (out, in) and (out,)")
        if i and w.shape[1] != policy.weights[i - 1].shape[0]:
            raise PolicyFileError(f"{source}: layer {i} takes {w.shape[1]} inputs but layer "
                                  f"{i - 1} gives {policy.weights[i - 1].shape[0]}")
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise PolicyFileError(f"{source}: layer {i} has non-finite values")
    if policy.weights[-1].shape[0] % 2:
        raise PolicyFileError(f"{source}: the last layer must output 2 × action_dim values")


def save_policy(path: str | os.PathLike, policy: TanhGaussianPolicy) -> Path:
    """Write atomically (temp file, then rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(policy.to_dict(), tmp)
    os.replace(tmp, path)
    return path


def load_policy(path: str | os.PathLike) -> TanhGaussianPolicy:
    """Read a policy file; clear errors for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(f"behaviour policy {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PolicyFileError(f"cannot read behaviour policy {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT:
        raise PolicyFileError(f"{path} is not an offrl policy file of format {POLICY_FORMAT}")
    if data.get("kind") != "tanh_gaussian_mlp":
        raise PolicyFileError(f"{path}: unknown policy kind {data.get('kind')!r}")
    try:
        policy = TanhGaussianPolicy([w.float() for w in data["weights"]],
                                    [b.float() for b in data["biases"]],
                                    float(data["log_std_min"]), float(data["log_std_max"]),
                                    float(data["max_action"]), str(data["env_id"]),
                                    dict(data.get("meta") or {}))
    except (KeyError, TypeError, AttributeError) as exc:
        raise PolicyFileError(f"{path}: malformed policy file ({exc!r})") from exc
    _check_shapes(policy, str(path))
    return policy
