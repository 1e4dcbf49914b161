"""Export one seed's policy as a self-contained TorchScript file.

The exported module maps raw env observations to actions, with the run's observation
normalisation inside:

    policy = torch.jit.load("seed_0.pt")
    actions = policy(observations)   # (N, obs_dim) float32 raw observations -> (N, act_dim)

It is the deterministic policy (`agent.act(·, deterministic=True)`) of one member, traced on
the CPU. The file also carries `offrl_policy.json` (an extra file: algorithm, seed, step,
dimensions, max_action, dataset id) that `read_policy_info` returns. Loading it needs only
torch, not offrl.

How: the member is copied into a one-seed agent of the same class (every per-member tensor
sliced out of the ensemble), checked to act exactly like member m of the original, and its
`act` traced with plain-torch stand-ins for the ensemble layers' custom autograd functions
(a traced custom Function cannot be saved).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from offrl.errors import UserError

POLICY_INFO_FILE = "offrl_policy.json"
POLICY_FORMAT = 1


class ExportError(UserError, ValueError):
    """A policy that cannot be exported or a file that is not an exported policy."""


# ---------------------------------------------------------------------------------- members
def _tensor_slots(agent: Any) -> Iterator[tuple[str, nn.Module | torch.Tensor]]:
    """The agent's modules and bare tensors, by attribute name (optimisers etc. skipped)."""
    for name, value in vars(agent).items():
        if isinstance(value, (nn.Module, torch.Tensor)):
            yield name, value


def _member_slice(original: torch.Tensor, fresh: torch.Tensor, m: int, members: int,
                  where: str) -> torch.Tensor:
    """Member m's part of `original` shaped like `fresh` (the one-member agent's tensor)."""
    if original.shape == fresh.shape and members != 1 and (
            original.ndim == 0 or original.shape[0] != members * fresh.shape[0]):
        return original  # shared by all members
    if original.ndim == 0 or original.shape[1:] != fresh.shape[1:] or (
            original.shape[0] != members * fresh.shape[0]):
        raise ExportError(f"cannot tell member {m}'s part of {where}: shape "
                          f"{tuple(original.shape)} for {members} members, "
                          f"{tuple(fresh.shape)} for one")
    k = fresh.shape[0]
    return original[m * k:(m + 1) * k]


def single_member_agent(agent: Any, m: int) -> Any:
    """A one-seed agent of the same class whose every network is member m of `agent`.

    Per-member tensors have a leading dimension of (members × copies); member m's copies are
    rows m·copies … (m+1)·copies − 1 (the seed-major ensemble layout). The copy is on the CPU,
    with no gradients, and is checked to act exactly as member m does.
    """
    seeds = list(agent.seeds)
    if not 0 <= m < len(seeds):
        raise ExportError(f"member {m} does not exist; the agent has {len(seeds)} member(s)")
    fresh = type(agent)(copy.deepcopy(agent.config), int(agent.observation_dim),
                        int(agent.action_dim), [seeds[m]], device="cpu",
                        max_action=float(agent.max_action))
    original = dict(_tensor_slots(agent))
    with torch.no_grad():
        for name, target in _tensor_slots(fresh):
            if name not in original:
                raise ExportError(f"{type(agent).__name__}: attribute {name!r} of a new agent "
                                  "is missing from the trained one")
            source = original[name]
            if isinstance(target, nn.Module):
                src_state = source.state_dict()
                new_state = {key: _member_slice(src_state[key].detach().cpu(), value, m,
                                                len(seeds), f"{name}.{key}")
                             for key, value in target.state_dict().items()}
                target.load_state_dict(new_state)
                target.requires_grad_(False)
            else:
                target.copy_(_member_slice(source.detach().cpu(), target, m, len(seeds), name))
                target.requires_grad_(False)
    for _, value in _tensor_slots(fresh):
        if isinstance(value, nn.Module):
            value.eval()
    _check_same_actions(agent, fresh, m)
    return fresh


def _check_same_actions(agent: Any, single: Any, m: int) -> None:
    generator = torch.Generator().manual_seed(0)
    obs = torch.randn(len(agent.seeds), 7, int(agent.observation_dim), generator=generator)
    with torch.no_grad():
        want = agent.act(obs.to(agent.device), deterministic=True)[m].float().cpu()
        got = single.act(obs[m:m + 1], deterministic=True)[0].float()
    if not torch.allclose(want, got, rtol=1e-5, atol=1e-5):
        raise ExportError(f"{type(agent).__name__}: the one-member copy of member {m} acts "
                          f"differently (max difference {float((want - got).abs().max()):.3g}); "
                          "its per-member tensors are not laid out member-major")


# ---------------------------------------------------------------------------------- tracing
def _affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.baddbmm(b[..., : w.shape[1]], x, w.transpose(1, 2))


class _PlainEnsembleLinear:
    """Stand-in for networks._EnsembleLinearFn: the same forward, in traceable torch ops."""

    @staticmethod
    def apply(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _affine(x, w, b)


class _PlainReluMLP:
    """Stand-in for networks._ReluMLPFn: apply(x, w0, b0, w1, b1, ...)."""

    @staticmethod
    def apply(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        n = len(params) // 2
        for i in range(n):
            x = _affine(x, params[2 * i], params[2 * i + 1])
            if i < n - 1:
                x = torch.relu(x)
        return x


@contextlib.contextmanager
def _traceable_networks() -> Iterator[None]:
    from offrl.algos import networks

    saved = networks._EnsembleLinearFn, networks._ReluMLPFn
    networks._EnsembleLinearFn, networks._ReluMLPFn = _PlainEnsembleLinear, _PlainReluMLP
    try:
        yield
    finally:
        networks._EnsembleLinearFn, networks._ReluMLPFn = saved


class NormalizedPolicy(nn.Module):
    """Raw observations (N, obs_dim) -> actions (N, act_dim) of a one-member agent."""

    def __init__(self, agent: Any, observation_mean: np.ndarray, observation_std: np.ndarray):
        super().__init__()
        self.agent = agent
        self.register_buffer("observation_mean",
                             torch.as_tensor(np.asarray(observation_mean, np.float32)))
        self.register_buffer("observation_std",
                             torch.as_tensor(np.asarray(observation_std, np.float32)))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        x = (observations.float() - self.observation_mean) / self.observation_std
        return self.agent.act(x.unsqueeze(0), deterministic=True).squeeze(0)


def export_policy(agent: Any, member: int, normalization: Any, path: str | os.PathLike, *,
                  info: dict[str, Any] | None = None) -> Path:
    """Write member `member` of `agent` as TorchScript to `path` (atomically); return the path.

    normalization: an object with `observation_mean` / `observation_std` (obs_dim,) arrays
    (`offrl.training.loop.Normalization`) or the dict of normalization.json.
    info: extra facts stored in the file's offrl_policy.json (dataset id, step, ...).
    """
    if isinstance(normalization, dict):
        mean, std = normalization["observation_mean"], normalization["observation_std"]
    else:
        mean, std = normalization.observation_mean, normalization.observation_std
    obs_dim = int(agent.observation_dim)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean.shape != (obs_dim,) or std.shape != (obs_dim,):
        raise ExportError(f"observation normalisation has shapes {mean.shape}, {std.shape}; "
                          f"expected ({obs_dim},)")
    single = single_member_agent(agent, member)
    module = NormalizedPolicy(single, mean, std).eval()
    example = torch.zeros(3, obs_dim)
    with _traceable_networks(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what we ship
        traced = torch.jit.trace(module, example, check_trace=False)
    probe = torch.randn(5, obs_dim, generator=torch.Generator().manual_seed(1)) * 2.0
    with torch.no_grad():
        if not torch.allclose(traced(probe), module(probe), rtol=1e-5, atol=1e-5):
            raise ExportError(f"the traced policy of member {member} does not reproduce the "
                              "agent's actions")
    meta = {"format": POLICY_FORMAT, "algo": getattr(agent, "name", type(agent).__name__),
            "seed": int(agent.seeds[member]), "observation_dim": obs_dim,
            "action_dim": int(agent.action_dim), "max_action": float(agent.max_action),
            **(info or {})}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, buffer, _extra_files={POLICY_INFO_FILE: json.dumps(meta)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_policy(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """(TorchScript policy on the CPU, its offrl_policy.json) of an exported policy file."""
    path = Path(path)
    extra = {POLICY_INFO_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # a missing, truncated or foreign file
        raise ExportError(f"{path}: not a loadable TorchScript policy ({exc})") from None
    try:
        info = json.loads(extra[POLICY_INFO_FILE] or "null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict):
        raise ExportError(f"{path}: TorchScript file without a valid {POLICY_INFO_FILE}; "
                          "export policies with offrl.training.export.export_policy")
    return module.eval(), info


def read_policy_info(path: str | os.PathLike) -> dict[str, Any]:
    """The offrl_policy.json stored in an exported policy file."""
    return load_policy(path)[1]
