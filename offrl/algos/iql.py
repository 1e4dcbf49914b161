"""IQL (Kostrikov, Nair & Levine, "Offline Reinforcement Learning with Implicit Q-Learning", 2021).

Expectile regression of a state value V towards the twin target critic, a critic regressed on
r + γ V(s'), and advantage-weighted regression of the actor. The math follows CORL's
`algorithms/offline/iql.py` step for step; only the layout differs: S seeds train side by side,
the actor and V are ensembles of S members, and the twin critics of every seed are one ensemble
of 2 S members (member 2 s + k is critic k of seed s).

Per update, for every member (all three losses use the networks as they were before the step):

    value:   u = min_k Q_θ'k(s, a) - V_ψ(s)
             L_V = mean_batch |τ_e - 1(u < 0)| u²                     (expectile τ_e = 0.7)
    critic:  y = r + γ (1 - d) V_ψ(s')                                 (no gradient through y)
             L_Q = ½ Σ_k mean_batch (Q_θk(s, a) - y)²
    actor:   w = min(exp(β u), 100)                                    (no gradient through w)
             L_π = -mean_batch w log π_φ(a | s)      Gaussian actor (CORL's default), or
             L_π = mean_batch w ‖π_φ(s) - a‖²        deterministic actor
    then:    θ'k <- (1 - τ) θ'k + τ θk  (every step); the actor's learning rate follows
             CosineAnnealingLR over `max_steps` steps.

The parameter sets are disjoint and every loss reads the pre-update networks, so the three
losses are summed and take one backward pass and one step of each optimiser; that is the same
update as CORL's three sequential steps.

Gaussian actor (CORL's GaussianPolicy): mean = max_action · tanh(MLP(s)), a state-independent
log std per action dimension (initialised to 0, clamped to [-20, 2]); acting deterministically
returns the mean. CORL leaves the tanh mean unscaled and multiplies by max_action only when
acting, which is the same thing for max_action = 1 (all D4RL MuJoCo tasks); scaling the mean
keeps the likelihood consistent with the dataset's actions for other ranges.

`max_steps` is the length of the actor's cosine decay and should equal the run's total number
of gradient steps (CORL passes max_timesteps, default 1M). The training loop sets it through
`IQL.adapt_config(config, total_steps=...)`; the default is CORL's 1M.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from offrl.algos.base import Agent, Batch, member_generators
from offrl.algos.networks import EnsembleMLP, expand_members, padded_size
from offrl.algos.optim import make_adam, soft_update_
from offrl.algos.td3_bc import _check_state, _dims, _set_generator_states

__all__ = ["IQL", "IQLConfig"]

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class IQLConfig:
    """IQL hyperparameters; defaults are CORL's for D4RL MuJoCo (algorithms/offline/iql.py).

    AntMaze in CORL: beta 10, expectile 0.9 (and reward - 1, which is the loop's business).
    """

    actor_lr: float = 3e-4
    qf_lr: float = 3e-4
    vf_lr: float = 3e-4
    gamma: float = 0.99  # discount (CORL: discount)
    tau: float = 0.005  # target-critic Polyak rate
    beta: float = 3.0  # inverse temperature of the advantage weights
    expectile: float = 0.7  # τ of the value's asymmetric L2 loss (CORL: iql_tau)
    exp_adv_max: float = 100.0  # clip of exp(β u) (CORL: EXP_ADV_MAX)
    deterministic_actor: bool = False  # CORL: iql_deterministic
    max_steps: int = 1_000_000  # T_max of the actor's cosine lr decay = the run's gradient steps
    actor_hidden_dims: tuple[int, ...] = (256, 256)
    critic_hidden_dims: tuple[int, ...] = (256, 256)
    value_hidden_dims: tuple[int, ...] = (256, 256)

    def __post_init__(self) -> None:
        for name in ("actor_hidden_dims", "critic_hidden_dims", "value_hidden_dims"):
            setattr(self, name, _dims(getattr(self, name), name))
        for name in ("actor_lr", "qf_lr", "vf_lr", "exp_adv_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"IQLConfig.{name} must be positive; got {getattr(self, name)!r}")
        if not self.beta >= 0:
            raise ValueError(f"IQLConfig.beta must be >= 0; got {self.beta!r}")
        if not 0 < self.expectile < 1:
            raise ValueError(f"IQLConfig.expectile must be in (0, 1); got {self.expectile!r}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"IQLConfig.gamma must be in [0, 1]; got {self.gamma!r}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"IQLConfig.tau must be in (0, 1]; got {self.tau!r}")
        if int(self.max_steps) != self.max_steps or self.max_steps < 1:
            raise ValueError(f"IQLConfig.max_steps must be an integer >= 1; got {self.max_steps!r}")
        self.max_steps = int(self.max_steps)


class IQL(Agent):
    """IQL for S seeds in one process. See the module docstring for the update.

    compile=True runs the loss computation (forward and backward) through torch.compile:
    10-18% more updates per CPU-second on the 2-core build machine, 20-30 s of compilation at
    the first updates, results equal to eager within float rounding (not bit for bit).
    """

    name: ClassVar[str] = "iql"
    config_class: ClassVar[type] = IQLConfig
    bf16_networks: ClassVar[tuple[str, ...]] = ("qf", "q_target", "vf", "actor")
    num_critics: ClassVar[int] = 2

    @classmethod
    def adapt_config(cls, config: IQLConfig, *, total_steps: int) -> IQLConfig:
        """Decay the actor's learning rate over the run's `total_steps` (CORL: max_timesteps)."""
        return dataclasses.replace(config, max_steps=int(total_steps))

    def __init__(self, config: IQLConfig, observation_dim: int, action_dim: int,
                 seeds: list[int], device: str | torch.device = "cpu", max_action: float = 1.0,
                 *, compile: bool = False):
        if not isinstance(config, IQLConfig):
            raise TypeError(f"IQL needs an IQLConfig; got {type(config).__name__}")
        if len(seeds) == 0:
            raise ValueError("IQL needs at least one seed")
        self.config = config
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.observation_dim, self.action_dim = int(observation_dim), int(action_dim)
        self.max_action = float(max_action)
        self.step = 0
        S, K = len(self.seeds), self.num_critics
        c = config

        # Built and initialised on the CPU from each seed's "init" generator (critic 1, critic 2,
        # value, actor), so initial weights do not depend on S or on the device.
        self.qf = EnsembleMLP(observation_dim + action_dim, 1, c.critic_hidden_dims, S * K)
        self.vf = EnsembleMLP(observation_dim, 1, c.value_hidden_dims, S)
        self.actor = EnsembleMLP(observation_dim, action_dim, c.actor_hidden_dims, S,
                                 output_activation="tanh")
        # State-independent log std per member, CORL: zeros. Stored padded to 16 columns for
        # the same reason as EnsembleLinear.bias_padded; `_log_std()` is the (S, 1, A) view.
        self.log_std_padded = torch.nn.Parameter(torch.zeros(S, 1, padded_size(action_dim)))
        for s, g in enumerate(member_generators(self.seeds, "init")):
            for k in range(K):
                self.qf.init_member_(s * K + k, g)
            self.vf.init_member_(s, g)
            self.actor.init_member_(s, g)
        for module in (self.qf, self.vf, self.actor):
            module.to(self.device)
        self.log_std_padded.data = self.log_std_padded.data.to(self.device)
        self.q_target = copy.deepcopy(self.qf).requires_grad_(False)

        self._actor_params = list(self.actor.parameters())
        if not c.deterministic_actor:
            self._actor_params.append(self.log_std_padded)
        self._q_params, self._v_params = list(self.qf.parameters()), list(self.vf.parameters())
        self.q_optimizer = make_adam(self._q_params, c.qf_lr)
        self.v_optimizer = make_adam(self._v_params, c.vf_lr)
        self.actor_optimizer = make_adam(self._actor_params, c.actor_lr)
        self.actor_lr_schedule = CosineAnnealingLR(self.actor_optimizer, c.max_steps)
        self._optimizers = (self.v_optimizer, self.q_optimizer, self.actor_optimizer)
        self._all_params = self._v_params + self._q_params + self._actor_params
        self._target_params = list(self.q_target.parameters())
        # The update draws no random numbers; only act(deterministic=False) does.
        self._act_generators = member_generators(self.seeds, "act", self.device)

        self.compiled = bool(compile)
        if compile:
            self._losses = torch.compile(self._losses, dynamic=False)

    # ------------------------------------------------------------------ networks
    def _q_all(self, qf: EnsembleMLP, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Both critics of every seed: (S, B, ·) -> (S, K, B)."""
        S, B = obs.shape[0], obs.shape[1]
        sa = expand_members(torch.cat([obs, act], dim=-1), self.num_critics)
        return qf(sa).view(S, self.num_critics, B)

    def _log_std(self) -> torch.Tensor:
        """(S, 1, A), clamped to [LOG_STD_MIN, LOG_STD_MAX] as CORL does before exp."""
        return self.log_std_padded[..., : self.action_dim].clamp(LOG_STD_MIN, LOG_STD_MAX)

    def _v(self, obs: torch.Tensor) -> torch.Tensor:
        return self.vf(obs).squeeze(-1)  # (S, B)

    def _mean(self, obs: torch.Tensor) -> torch.Tensor:
        """Actor output: the Gaussian's mean (or the deterministic action), in ±max_action."""
        a = self.actor(obs)
        return a if self.max_action == 1.0 else a * self.max_action

    # ------------------------------------------------------------------ losses
    def _losses(self, obs, act, rew, next_obs, done):
        c = self.config
        with torch.no_grad():
            target_q = self._q_all(self.q_target, obs, act).amin(dim=1)  # (S, B)
            next_v = self._v(next_obs)
            y = rew + c.gamma * (1.0 - done) * next_v
        # Value: expectile regression towards the target critic.
        v = self._v(obs)
        u = target_q - v
        weight = torch.where(u < 0, 1.0 - c.expectile, c.expectile)  # |τ - 1(u < 0)|
        value_loss = (weight * u.square()).mean(dim=1)
        # Critic: both twins towards r + γ (1 - d) V(s'), averaged (CORL: sum / len(qs)).
        q = self._q_all(self.qf, obs, act)
        q_loss = 0.5 * (q - y.unsqueeze(1)).square().mean(dim=2).sum(dim=1)
        # Actor: advantage-weighted regression with weights exp(β u) clipped at exp_adv_max.
        exp_adv = torch.exp(c.beta * u.detach()).clamp(max=c.exp_adv_max)
        mean = self._mean(obs)
        if c.deterministic_actor:
            bc = (mean - act).square().sum(dim=2)
        else:
            log_std = self._log_std()  # (S, 1, A)
            z = (act - mean) * torch.exp(-log_std)
            # -log N(a; mean, std) summed over action dims
            bc = (0.5 * z.square() + log_std + _HALF_LOG_2PI).sum(dim=2)
        actor_loss = (exp_adv * bc).mean(dim=1)
        total = (value_loss + q_loss + actor_loss).sum()
        return total, value_loss.detach(), q_loss.detach(), actor_loss.detach(), v.detach().mean(dim=1), \
            u.detach().mean(dim=1)

    # ------------------------------------------------------------------ update
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One IQL step for every member; metrics are (S,) tensors (no host sync)."""
        self.step += 1
        total, value_loss, q_loss, actor_loss, v_mean, adv_mean = self._losses(
            batch.observations, batch.actions, batch.rewards, batch.next_observations, batch.dones)
        for opt in self._optimizers:
            opt.zero_grad(set_to_none=True)
        total.backward()  # disjoint parameter sets, members independent: one backward
        for opt in self._optimizers:
            opt.step()
        self.actor_lr_schedule.step()
        soft_update_(self._target_params, self._q_params, self.config.tau)
        return {"value_loss": value_loss, "q_loss": q_loss, "actor_loss": actor_loss,
                "v_mean": v_mean, "adv_mean": adv_mean}

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, observations: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """(S, N, obs) -> (S, N, act) in [-max_action, max_action]. Deterministic: the mean;
        otherwise a sample of the Gaussian from each member's own "act" stream (training never
        touches it), clipped to the action range."""
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        if obs.ndim != 3 or obs.shape[0] != len(self.seeds) or obs.shape[2] != self.observation_dim:
            raise ValueError(f"act() takes observations shaped (S={len(self.seeds)}, N, "
                             f"{self.observation_dim}); got {tuple(obs.shape)}")
        a = self._mean(obs)
        if not deterministic and not self.config.deterministic_actor:
            noise = torch.empty_like(a)
            for s, g in enumerate(self._act_generators):
                noise[s].normal_(generator=g)
            a = a + noise * torch.exp(self._log_std())
        return a.clamp(-self.max_action, self.max_action)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """A snapshot (tensors copied) of everything exact resume needs."""
        state = {
            "algorithm": self.name,
            "config": dataclasses.asdict(self.config),
            "seeds": list(self.seeds),
            "step": self.step,
            "qf": self.qf.state_dict(),
            "q_target": self.q_target.state_dict(),
            "vf": self.vf.state_dict(),
            "actor": self.actor.state_dict(),
            "log_std_padded": self.log_std_padded.detach(),
            "q_optimizer": self.q_optimizer.state_dict(),
            "v_optimizer": self.v_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "actor_lr_schedule": self.actor_lr_schedule.state_dict(),
            "act_generators": [g.get_state() for g in self._act_generators],
        }
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(self, state)
        self.qf.load_state_dict(state["qf"])
        self.q_target.load_state_dict(state["q_target"])
        self.vf.load_state_dict(state["vf"])
        self.actor.load_state_dict(state["actor"])
        with torch.no_grad():
            self.log_std_padded.copy_(state["log_std_padded"])
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        self.v_optimizer.load_state_dict(state["v_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.actor_lr_schedule.load_state_dict(state["actor_lr_schedule"])
        _set_generator_states(self._act_generators, state["act_generators"])
        self.step = int(state["step"])
