"""TD3+BC (Fujimoto & Gu, "A Minimalist Approach to Offline Reinforcement Learning", 2021).

TD3 with a behaviour-cloning term in the actor loss. The math follows CORL's
`algorithms/offline/td3_bc.py` (itself a port of the authors' code) step for step; only the
layout differs: S seeds train side by side, the actor is an ensemble of S members and both
critics of every seed are one ensemble of 2 S members (member 2 s + k is critic k of seed s).

Per update (step t counts from 1), for every member:

    critic, every step:
        ε ~ clip(N(0, σ²), -c, c)                       σ = policy_noise · max_action,
        ã = clip(π_φ'(s') + ε, -max_action, max_action)  c = noise_clip · max_action
        y = r + γ (1 - d) min_k Q_θ'k(s', ã)
        L_Q = Σ_k mean_batch (Q_θk(s, a) - y)²           (CORL: mse(q1, y) + mse(q2, y))
    actor and targets, when t % policy_delay == 0 (after the critic step):
        λ = α / mean_batch |Q_θ1(s, π_φ(s))|             (no gradient through λ)
        L_π = -λ mean_batch Q_θ1(s, π_φ(s)) + mean_batch,dims (π_φ(s) - a)²
        θ'k <- (1 - τ) θ'k + τ θk,  φ' <- (1 - τ) φ' + τ φ

As in CORL and the authors' code, the target networks move only on actor steps (every
`policy_delay` updates), counted by the agent's own step counter so that the schedule does not
depend on how the loop groups its calls. The actor is π_φ(s) = max_action · tanh(MLP(s)).
States are expected normalised by the loop (CORL: dataset mean and std, eps 1e-3).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from offrl.algos.base import Agent, Batch, member_generators
from offrl.algos.networks import EnsembleMLP, expand_members
from offrl.algos.optim import make_adam, soft_update_

__all__ = ["TD3BC", "TD3BCConfig"]


def _dims(value: Any, field: str) -> tuple[int, ...]:
    dims = tuple(int(h) for h in value)
    if not dims or any(h <= 0 for h in dims):
        raise ValueError(f"{field} must be a non-empty list of positive layer widths; got {value!r}")
    return dims


@dataclass
class TD3BCConfig:
    """TD3+BC hyperparameters; defaults are CORL's (algorithms/offline/td3_bc.py)."""

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99  # discount (CORL: discount)
    tau: float = 0.005  # target-network Polyak rate
    alpha: float = 2.5  # weight of the Q term relative to BC (λ = α / mean |Q|)
    policy_noise: float = 0.2  # std of target-policy smoothing noise, × max_action
    noise_clip: float = 0.5  # clip of that noise, × max_action
    policy_delay: int = 2  # actor and target updates every policy_delay critic updates (CORL: policy_freq)
    exploration_noise: float = 0.1  # std of act(deterministic=False) noise, × max_action (CORL: expl_noise)
    actor_hidden_dims: tuple[int, ...] = (256, 256)
    critic_hidden_dims: tuple[int, ...] = (256, 256)

    def __post_init__(self) -> None:
        self.actor_hidden_dims = _dims(self.actor_hidden_dims, "actor_hidden_dims")
        self.critic_hidden_dims = _dims(self.critic_hidden_dims, "critic_hidden_dims")
        for name in ("actor_lr", "critic_lr", "alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TD3BCConfig.{name} must be positive; got {getattr(self, name)!r}")
        for name in ("policy_noise", "noise_clip", "exploration_noise"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"TD3BCConfig.{name} must be >= 0; got {getattr(self, name)!r}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"TD3BCConfig.gamma must be in [0, 1]; got {self.gamma!r}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"TD3BCConfig.tau must be in (0, 1]; got {self.tau!r}")
        if int(self.policy_delay) != self.policy_delay or self.policy_delay < 1:
            raise ValueError(f"TD3BCConfig.policy_delay must be an integer >= 1; got {self.policy_delay!r}")
        self.policy_delay = int(self.policy_delay)


class TD3BC(Agent):
    """TD3+BC for S seeds in one process. See the module docstring for the update.

    compile=True runs the loss computations (forward and backward) through torch.compile:
    about 5% more updates per CPU-second on the 2-core build machine, 20-30 s of compilation
    at the first updates, results equal to eager within float rounding (not bit for bit).
    """

    name: ClassVar[str] = "td3_bc"
    config_class: ClassVar[type] = TD3BCConfig
    bf16_networks: ClassVar[tuple[str, ...]] = ("actor", "critic", "actor_target", "critic_target")
    num_critics: ClassVar[int] = 2

    def __init__(self, config: TD3BCConfig, observation_dim: int, action_dim: int,
                 seeds: list[int], device: str | torch.device = "cpu", max_action: float = 1.0,
                 *, compile: bool = False):
        if not isinstance(config, TD3BCConfig):
            raise TypeError(f"TD3BC needs a TD3BCConfig; got {type(config).__name__}")
        if len(seeds) == 0:
            raise ValueError("TD3BC needs at least one seed")
        self.config = config
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.observation_dim, self.action_dim = int(observation_dim), int(action_dim)
        self.max_action = float(max_action)
        self.step = 0
        S, K = len(self.seeds), self.num_critics
        c = config

        # Networks: built and initialised on the CPU from each seed's "init" generator (actor,
        # then critic 1, critic 2), so initial weights do not depend on S or on the device.
        self.actor = EnsembleMLP(observation_dim, action_dim, c.actor_hidden_dims, S,
                                 output_activation="tanh")
        self.critic = EnsembleMLP(observation_dim + action_dim, 1, c.critic_hidden_dims, S * K)
        for s, g in enumerate(member_generators(self.seeds, "init")):
            self.actor.init_member_(s, g)
            for k in range(K):
                self.critic.init_member_(s * K + k, g)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)

        self.actor_optimizer = make_adam(self.actor.parameters(), c.actor_lr)
        self.critic_optimizer = make_adam(self.critic.parameters(), c.critic_lr)
        # Per-member random streams: target-policy noise in `update`, exploration in `act`.
        self._update_generators = member_generators(self.seeds, "update", self.device)
        self._act_generators = member_generators(self.seeds, "act", self.device)

        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.actor_target.parameters()) + list(self.critic_target.parameters())
        self._online_params = self._actor_params + self._critic_params
        zeros = torch.zeros(S, device=self.device)
        # Actor-side metrics of the latest actor step (zeros before the first one).
        self._actor_metrics = {"actor_loss": zeros, "bc_loss": zeros.clone(), "lambda": zeros.clone()}

        self.compiled = bool(compile)
        if compile:
            self._critic_losses = torch.compile(self._critic_losses, dynamic=False)
            self._actor_losses = torch.compile(self._actor_losses, dynamic=False)

    # ------------------------------------------------------------------ networks
    def _pi(self, actor: EnsembleMLP, obs: torch.Tensor) -> torch.Tensor:
        """π(s) = max_action · tanh(MLP(s)): (S, B, obs) -> (S, B, act)."""
        a = actor(obs)
        return a if self.max_action == 1.0 else a * self.max_action

    def _q_all(self, critic: EnsembleMLP, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Both critics of every seed: (S, B, ·) -> (S, K, B)."""
        S, B = obs.shape[0], obs.shape[1]
        sa = expand_members(torch.cat([obs, act], dim=-1), self.num_critics)
        return critic(sa).view(S, self.num_critics, B)

    # ------------------------------------------------------------------ losses
    def _critic_losses(self, obs, act, rew, next_obs, done, noise):
        """L_Q per seed (S,), and mean Q_θ1(s, a) per seed for logging."""
        c, m = self.config, self.max_action
        with torch.no_grad():
            eps = (noise * (c.policy_noise * m)).clamp_(-c.noise_clip * m, c.noise_clip * m)
            next_act = (self._pi(self.actor_target, next_obs) + eps).clamp_(-m, m)
            q_next = self._q_all(self.critic_target, next_obs, next_act).amin(dim=1)  # (S, B)
            y = rew + c.gamma * (1.0 - done) * q_next
        q = self._q_all(self.critic, obs, act)  # (S, K, B)
        critic_loss = (q - y.unsqueeze(1)).square().mean(dim=2).sum(dim=1)
        return critic_loss, q[:, 0].detach().mean(dim=1)

    def _actor_losses(self, obs, act):
        """L_π per seed (S,), the BC part and λ."""
        pi = self._pi(self.actor, obs)
        sa = torch.cat([obs, pi], dim=-1)
        q1 = self.critic(sa, members=slice(0, None, self.num_critics)).squeeze(-1)  # (S, B)
        lmbda = self.config.alpha / q1.abs().mean(dim=1).detach()
        bc = (pi - act).square().mean(dim=(1, 2))
        actor_loss = -lmbda * q1.mean(dim=1) + bc
        return actor_loss, bc.detach(), lmbda

    # ------------------------------------------------------------------ update
    def _critic_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.empty_like(batch.actions)
        for s, g in enumerate(self._update_generators):
            noise[s].normal_(generator=g)
        critic_loss, q_mean = self._critic_losses(batch.observations, batch.actions, batch.rewards,
                                                  batch.next_observations, batch.dones, noise)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()  # members are independent: d(sum)/d(loss_s) = 1
        self.critic_optimizer.step()
        return critic_loss.detach(), q_mean

    def _actor_step(self, batch: Batch) -> None:
        actor_loss, bc, lmbda = self._actor_losses(batch.observations, batch.actions)
        self.actor_optimizer.zero_grad(set_to_none=True)
        # Only the actor's gradients: the critic's weights get none (and none are computed).
        actor_loss.sum().backward(inputs=self._actor_params)
        self.actor_optimizer.step()
        soft_update_(self._target_params, self._online_params, self.config.tau)
        self._actor_metrics = {"actor_loss": actor_loss.detach(), "bc_loss": bc, "lambda": lmbda}

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One TD3+BC step for every member; metrics are (S,) tensors (no host sync).

        actor_loss, bc_loss and lambda are those of the latest actor step."""
        self.step += 1
        critic_loss, q_mean = self._critic_step(batch)
        if self.step % self.config.policy_delay == 0:
            self._actor_step(batch)
        return {"critic_loss": critic_loss, "q_mean": q_mean, **self._actor_metrics}

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, observations: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """(S, N, obs) -> (S, N, act) in [-max_action, max_action]; with deterministic=False,
        Gaussian exploration noise (exploration_noise · max_action) from each member's own
        "act" stream, which training never touches."""
        obs = self._check_obs(observations)
        a = self._pi(self.actor, obs)
        if not deterministic and self.config.exploration_noise > 0:
            noise = torch.empty_like(a)
            for s, g in enumerate(self._act_generators):
                noise[s].normal_(generator=g)
            a = (a + noise * (self.config.exploration_noise * self.max_action)).clamp_(
                -self.max_action, self.max_action)
        return a

    def _check_obs(self, observations: torch.Tensor) -> torch.Tensor:
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        if obs.ndim != 3 or obs.shape[0] != len(self.seeds) or obs.shape[2] != self.observation_dim:
            raise ValueError(f"act() takes observations shaped (S={len(self.seeds)}, N, "
                             f"{self.observation_dim}); got {tuple(obs.shape)}")
        return obs

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
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "update_generators": [g.get_state() for g in self._update_generators],
            "act_generators": [g.get_state() for g in self._act_generators],
            "actor_metrics": self._actor_metrics,
        }
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(self, state)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        _set_generator_states(self._update_generators, state["update_generators"])
        _set_generator_states(self._act_generators, state["act_generators"])
        self._actor_metrics = {k: v.to(self.device).clone() for k, v in state["actor_metrics"].items()}
        self.step = int(state["step"])


def _check_state(agent: Agent, state: dict[str, Any]) -> None:
    if state.get("algorithm") != agent.name:
        raise ValueError(f"checkpoint is for algorithm {state.get('algorithm')!r}, not {agent.name!r}")
    if list(state["seeds"]) != list(agent.seeds):
        raise ValueError(f"checkpoint holds seeds {state['seeds']}; this agent has {agent.seeds}")


def _set_generator_states(generators: list[torch.Generator], states: list[torch.Tensor]) -> None:
    if len(generators) != len(states):
        raise ValueError(f"checkpoint holds {len(states)} generator states; expected {len(generators)}")
    for g, st in zip(generators, states):
        g.set_state(st.cpu())
