"""SAC (Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018).

The online algorithm that trains the behaviour policies of the offrl MuJoCo datasets, as rlkit's
SAC trained D4RL's. The math follows rlkit's `SACTrainer` (the code D4RL used): every loss is
computed from the networks as they are at the start of the step, then every optimiser steps.
S seeds train side by side: the actor is an ensemble of S members and both critics of every seed
are one ensemble of 2 S members (member 2 s + k is critic k of seed s).

Per update, for every member:

    actor π_φ: tanh-Gaussian, a = max_action · tanh(u), u ~ N(μ_φ(s), σ_φ(s)²), log σ clipped to
        [-20, 2]; log π(a|s) is the density of tanh(u) (no max_action Jacobian, as rlkit).
    sample ã ~ π_φ(·|s), a' ~ π_φ(·|s')
    temperature:  L_α = -mean_batch[ log α · (log π(ã|s) + H̄) ]          H̄ = -act_dim
    actor:        L_π = mean_batch[ α log π(ã|s) - min_k Q_θk(s, ã) ]
    critics:      y = r + γ (1 - d) [ min_k Q_θ'k(s', a') - α log π(a'|s') ]   (no gradient)
                  L_Q = Σ_k mean_batch (Q_θk(s, a) - y)²       (rlkit: an MSE per critic)
    then Adam steps on log α, φ and θ, and θ'k <- (1 - τ) θ'k + τ θk every step.

α in L_π and y is exp(log α) from before this step's temperature update, as in rlkit.

The parameter sets are disjoint (the actor's Q term backpropagates through the critics with
their weights detached, so it moves φ only), so the three losses take one backward pass and
one Adam step over all parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from offrl.algos.base import Agent, Batch, member_generators
from offrl.algos.networks import EnsembleMLP, LayerInit, expand_members
from offrl.algos.optim import make_adam, soft_update_
from offrl.algos.td3_bc import _check_state, _dims, _set_generator_states

__all__ = ["SAC", "SACConfig", "tanh_gaussian_sample"]

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


@dataclass
class SACConfig:
    """SAC hyperparameters; defaults are the SAC paper's (and rlkit's, which D4RL used)."""

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4  # learning rate of log α
    gamma: float = 0.99
    tau: float = 5e-3  # target-critic Polyak rate, every step
    automatic_entropy_tuning: bool = True
    initial_alpha: float = 1.0  # α at the start (the fixed α without tuning)
    target_entropy: float | None = None  # None: -action_dim
    actor_hidden_dims: tuple[int, ...] = (256, 256)
    critic_hidden_dims: tuple[int, ...] = (256, 256)

    def __post_init__(self) -> None:
        self.actor_hidden_dims = _dims(self.actor_hidden_dims, "actor_hidden_dims")
        self.critic_hidden_dims = _dims(self.critic_hidden_dims, "critic_hidden_dims")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "initial_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SACConfig.{name} must be positive; got {getattr(self, name)!r}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"SACConfig.gamma must be in [0, 1]; got {self.gamma!r}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"SACConfig.tau must be in (0, 1]; got {self.tau!r}")
        if self.target_entropy is not None:
            self.target_entropy = float(self.target_entropy)


def tanh_gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor,
                         noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised a = tanh(μ + σ ε) and log π(a) summed over the action dims.

    log π = log N(u; μ, σ) - Σ log(1 - tanh(u)²), with the stable form
    log(1 - tanh(u)²) = 2 (log 2 - u - softplus(-2 u)). Shapes (..., A) -> (..., A), (...)."""
    u = torch.addcmul(mean, log_std.exp(), noise)
    log_prob = (-0.5 * noise.square() - log_std - _HALF_LOG_2PI
                - 2.0 * (_LOG_2 - u - torch.nn.functional.softplus(-2.0 * u)))
    return torch.tanh(u), log_prob.sum(dim=-1)


class SAC(Agent):
    """SAC for S seeds in one process. See the module docstring for the update."""

    name: ClassVar[str] = "sac"
    config_class: ClassVar[type] = SACConfig
    num_critics: ClassVar[int] = 2

    def __init__(self, config: SACConfig, observation_dim: int, action_dim: int,
                 seeds: list[int], device: str | torch.device = "cpu", max_action: float = 1.0):
        if not isinstance(config, SACConfig):
            raise TypeError(f"SAC needs a SACConfig; got {type(config).__name__}")
        if len(seeds) == 0:
            raise ValueError("SAC needs at least one seed")
        if not max_action > 0:
            raise ValueError(f"max_action must be positive; got {max_action!r}")
        self.config = config
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.observation_dim, self.action_dim = int(observation_dim), int(action_dim)
        self.max_action = float(max_action)
        self.step = 0
        S, K, A = len(self.seeds), self.num_critics, self.action_dim
        c = config
        self.target_entropy = -float(A) if c.target_entropy is None else c.target_entropy

        # Built and initialised on the CPU from each seed's "init" generator (actor, then the
        # two critics), so initial weights do not depend on S or on the device. The actor's last
        # layer starts small (rlkit: U(±3e-3)) so the first policy is near-uniform.
        self.actor = EnsembleMLP(observation_dim, 2 * A, c.actor_hidden_dims, S)
        self.critic = EnsembleMLP(observation_dim + A, 1, c.critic_hidden_dims, S * K)
        for s, g in enumerate(member_generators(self.seeds, "init")):
            self.actor.init_member_(s, g, final_init=LayerInit("xavier_uniform", 1e-2))
            for k in range(K):
                self.critic.init_member_(s * K + k, g)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(
            torch.full((S,), math.log(c.initial_alpha), device=self.device))

        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critic.parameters())
        self._critic_target_params = list(self.critic_target.parameters())
        groups = [{"params": self._actor_params, "lr": c.actor_lr},
                  {"params": self._critic_params, "lr": c.critic_lr}]
        self._actor_side = list(self._actor_params)
        if c.automatic_entropy_tuning:
            groups.append({"params": [self.log_alpha], "lr": c.alpha_lr})
            self._actor_side.append(self.log_alpha)
        self.optimizer = make_adam(groups, lr=c.critic_lr)
        self._update_generators = member_generators(self.seeds, "update", self.device)
        self._act_generators = member_generators(self.seeds, "act", self.device)

    # ------------------------------------------------------------------ networks
    def _policy_head(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, R, obs) -> mean, log σ (S, R, act)."""
        mean, log_std = self.actor(obs).split(self.action_dim, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def _q_all(self, critic: EnsembleMLP, obs: torch.Tensor, act: torch.Tensor,
               detach_params: bool = False) -> torch.Tensor:
        """Both critics of every seed: (S, B, ·) -> (S, K, B)."""
        S, B = obs.shape[0], obs.shape[1]
        sa = expand_members(torch.cat([obs, act], dim=-1), self.num_critics)
        return critic(sa, detach_params=detach_params).view(S, self.num_critics, B)

    def _draw_noise(self, S: int, B: int) -> torch.Tensor:
        """Standard normals (S, 2, B, A) for ã at s (index 0) and a' at s' (index 1), member s
        from its own "update" generator."""
        noise = torch.empty(S, 2, B, self.action_dim, device=self.device)
        for s, g in enumerate(self._update_generators):
            noise[s].normal_(generator=g)
        return noise

    # ------------------------------------------------------------------ update
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One SAC step for every member; metrics are (S,) tensors (no host sync)."""
        c, m = self.config, self.max_action
        S, B = batch.num_members, batch.batch_size
        if S != len(self.seeds):
            raise ValueError(f"batch has {S} members; this agent trains {len(self.seeds)}")
        self.step += 1
        obs, act, next_obs = batch.observations, batch.actions, batch.next_observations
        noise = self._draw_noise(S, B)
        alpha = self.log_alpha.detach().exp()  # (S,) α before this step's update

        # Actor and temperature.
        mean, log_std = self._policy_head(obs)
        new_act, log_pi = tanh_gaussian_sample(mean, log_std, noise[:, 0])
        new_act = new_act * m if m != 1.0 else new_act
        # The critics as fixed functions of the action: L_π moves only φ.
        q_new = self._q_all(self.critic, obs, new_act, detach_params=True).amin(dim=1)  # (S, B)
        actor_loss = (alpha.unsqueeze(1) * log_pi - q_new).mean(dim=1)
        if c.automatic_entropy_tuning:
            alpha_loss = -(self.log_alpha.unsqueeze(1) * (log_pi.detach() + self.target_entropy)).mean(dim=1)
        else:
            alpha_loss = torch.zeros_like(actor_loss)

        # Critics.
        with torch.no_grad():
            next_mean, next_log_std = self._policy_head(next_obs)
            next_act, next_log_pi = tanh_gaussian_sample(next_mean, next_log_std, noise[:, 1])
            next_act = next_act * m if m != 1.0 else next_act
            q_next = self._q_all(self.critic_target, next_obs, next_act).amin(dim=1)
            y = batch.rewards + c.gamma * (1.0 - batch.dones) * (q_next - alpha.unsqueeze(1) * next_log_pi)
        q = self._q_all(self.critic, obs, act)  # (S, K, B)
        critic_loss = (q - y.unsqueeze(1)).square().mean(dim=2).sum(dim=1)

        self.optimizer.zero_grad(set_to_none=True)
        # Members are independent, so d(sum)/d(loss_s) = 1, and every loss moves only its own
        # parameters, so one backward of the sum gives each its own gradient.
        (actor_loss.sum() + alpha_loss.sum() + critic_loss.sum()).backward()
        self.optimizer.step()
        soft_update_(self._critic_target_params, self._critic_params, c.tau)
        return {"critic_loss": critic_loss.detach(), "q_mean": q[:, 0].detach().mean(dim=1),
                "actor_loss": actor_loss.detach(), "alpha": alpha,
                "alpha_loss": alpha_loss.detach(), "entropy": -log_pi.detach().mean(dim=1)}

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, observations: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """(S, N, obs) -> (S, N, act) in [-max_action, max_action]: max_action · tanh(μ) when
        deterministic, else a policy sample from each member's own "act" stream."""
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        if obs.ndim != 3 or obs.shape[0] != len(self.seeds) or obs.shape[2] != self.observation_dim:
            raise ValueError(f"act() takes observations shaped (S={len(self.seeds)}, N, "
                             f"{self.observation_dim}); got {tuple(obs.shape)}")
        mean, log_std = self._policy_head(obs)
        if deterministic:
            a = torch.tanh(mean)
        else:
            noise = torch.empty_like(mean)
            for s, g in enumerate(self._act_generators):
                noise[s].normal_(generator=g)
            a = torch.tanh(torch.addcmul(mean, log_std.exp(), noise))
        return a * self.max_action if self.max_action != 1.0 else a

    def policy_weights(self, member: int) -> dict[str, Any]:
        """Member `member`'s actor as plain tensors, the format of behaviour-policy files
        (`offrl.data.policies.TanhGaussianPolicy`): layer weights (out, in) and biases (out,)."""
        weights, biases = [], []
        for layer in self.actor.layers:
            weights.append(layer.weight[member].detach().cpu().clone())
            biases.append(layer.bias[member].detach().reshape(-1).cpu().clone())
        return {"kind": "tanh_gaussian_mlp", "weights": weights, "biases": biases,
                "log_std_min": LOG_STD_MIN, "log_std_max": LOG_STD_MAX,
                "max_action": self.max_action, "observation_dim": self.observation_dim,
                "action_dim": self.action_dim}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """A snapshot (tensors copied) of everything exact resume needs."""
        state = {
            "algorithm": self.name,
            "config": dataclasses.asdict(self.config),
            "seeds": list(self.seeds),
            "step": self.step,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach(),
            "optimizer": self.optimizer.state_dict(),
            "update_generators": [g.get_state() for g in self._update_generators],
            "act_generators": [g.get_state() for g in self._act_generators],
        }
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(self, state)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.optimizer.load_state_dict(state["optimizer"])
        _set_generator_states(self._update_generators, state["update_generators"])
        _set_generator_states(self._act_generators, state["act_generators"])
        self.step = int(state["step"])
