"""CQL (Kumar et al., "Conservative Q-Learning for Offline Reinforcement Learning", 2020).

SAC with a conservative regulariser on the critics. The math follows CORL's
`algorithms/offline/cql.py` (itself a port of Young Geng's JAX CQL) step for step, defaults
included; only the layout differs: S seeds train side by side, the actor is an ensemble of S
members and both critics of every seed are one ensemble of 2 S members (member 2 s + k is
critic k of seed s).

Per update (step t counts from 1), for every member, with every loss evaluated at the
parameters held at the start of the step (as CORL does: it computes all losses, then steps the
optimisers):

    actor π_φ: tanh-Gaussian, a = max_action · tanh(u), u ~ N(μ_φ(s), σ_φ(s)²),
        log σ = clip(m · (raw log σ) + o, -20, 2) with m, o trained scalars (CORL's
        log_std_multiplier / log_std_offset); log π(a|s) is the tanh-Gaussian density of
        tanh(u) (no max_action Jacobian, as in CORL).
    entropy temperature (automatic tuning):
        ã, log π(ã|s) ~ π_φ(·|s)
        L_α = -mean_batch[ log α · (log π(ã|s) + H̄) ]           H̄ = target_entropy (-act_dim)
        α = exp(log α) · alpha_multiplier
    actor:
        L_π = mean_batch[ α log π(ã|s) - min_k Q_θk(s, ã) ]         (t > bc_steps)
        L_π = mean_batch[ α log π(ã|s) - log π(a|s) ]              (t <= bc_steps, BC warm-up)
    critics, TD part:
        a' ~ π_φ(·|s')
        y = r + γ (1 - d) [ min_k Q_θ'k(s', a') (- α log π(a'|s') if backup_entropy) ]
        (with cql_max_target_backup: N actions a'_j, y uses max_j min_k Q_θ'k(s', a'_j))
        L_TD,k = mean_batch (Q_θk(s, a) - y)²
    critics, conservative part (CQL(H), eq. 4 of the paper, with the importance-sampled
    estimate of log Σ_a exp Q(s, a) from its appendix F):
        N random actions a^R_j ~ U[-max_action, max_action]^d,  density ρ = (2 max_action)^-d
        N policy actions at s:  a^π_j ~ π_φ(·|s),  N at s': a^π'_j ~ π_φ(·|s')  (no gradient)
        with importance sampling (default):
            X = [ Q(s, a^R_j) - log ρ ,  Q(s, a^π'_j) - log π(a^π'_j|s') ,
                  Q(s, a^π_j) - log π(a^π_j|s) ]                       (3N values per s)
        without: X = [ Q(s, a^R_j), Q(s, a), Q(s, a^π'_j), Q(s, a^π_j) ] (3N + 1 values)
        logsumexp_k(s) = T · log Σ_X exp(X / T)                       T = cql_temp
        Δ_k = mean_batch clip(logsumexp_k(s) - Q_θk(s, a), clip_min, clip_max)
        L_CQL,k = cql_alpha · Δ_k                                   (fixed-weight variant)
        L_CQL,k = α' · cql_alpha · (Δ_k - τ_gap)                    (cql_lagrange)
            α' = clip(exp(log α'), 0, 1e6),  L_α' = -½ Σ_k α' · cql_alpha · (Δ_k - τ_gap)
        L_Q = Σ_k (L_TD,k + L_CQL,k)
    then Adam steps on α (lr actor_lr, as CORL), π (actor_lr), the critics (critic_lr) and α'
    (critic_lr), and every target_update_period steps θ'k <- (1 - τ) θ'k + τ θk.

Speed. Nearly all the work (≈ 13 GFLOP per seed and update at CORL's 3 × 256 critic, batch
256, N = 10) is the critics' pass over every (s, action) pair of the step: the data action and
the N random, N policy and N next-policy actions of each state, B (1 + 3N) rows through both
critics of every seed at once (2 S ensemble members). The actor runs once over [s; s'] (its
network output does not depend on the sample, so the 2N + 2 samples per state reuse it; CORL
reruns it on every repeated state). Every loss above moves only its own parameters (the actor's
Q term backpropagates through detached critic weights, α and α' see detached inputs), so one
backward of Σ (L_π + L_α + L_α') and the critics' gradients give exactly CORL's gradients, and
one fused Adam steps them all. The critics' loss and gradients are computed by hand
(`_fused_critic_loss_and_grads`) a chunk of states at a time so that activations stay in cache
and the first layer's state half runs once per state instead of once per action;
`critic_backward="autograd"` computes the same through autograd (it is what the tests compare
against, with a transcription of CORL's code).

Deviations from CORL, all invisible at max_action = 1 (every D4RL / MuJoCo task): random actions
are drawn from the env's box [-max_action, max_action] with its density (CORL: U[-1, 1]); the BC
warm-up evaluates log π at a / max_action, clipped to |·| <= 1 - 1e-6 (CORL: a as stored, which
is -inf at |a| = 1). As in CORL, the actor's hidden layers keep torch's default init even with
orthogonal_init (CORL never passes the flag to the actor); its output layer is Xavier-uniform
with gain 1e-2.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from offrl.algos.base import Agent, Batch, member_generators
from offrl.algos.networks import EnsembleMLP, LayerInit, ensemble_linear, expand_members
from offrl.algos.optim import make_adam, soft_update_

__all__ = ["CQL", "CQLConfig", "cql_logsumexp"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def _dims(value: Any, field: str) -> tuple[int, ...]:
    dims = tuple(int(h) for h in value)
    if not dims or any(h <= 0 for h in dims):
        raise ValueError(f"{field} must be a non-empty list of positive layer widths; got {value!r}")
    return dims


@dataclass
class CQLConfig:
    """CQL hyperparameters; defaults are CORL's for D4RL MuJoCo (algorithms/offline/cql.py).

    CORL's AntMaze settings: actor_lr 1e-4, cql_alpha 5, cql_lagrange true,
    cql_target_action_gap 0.8, cql_max_target_backup true, cql_clip_diff_min -200,
    critic_hidden_dims five layers of 256.
    """

    actor_lr: float = 3e-5  # CORL: policy_lr; also the entropy temperature's lr (as CORL)
    critic_lr: float = 3e-4  # CORL: qf_lr; also the Lagrange multiplier's lr (as CORL)
    gamma: float = 0.99  # CORL: discount
    tau: float = 5e-3  # target-network Polyak rate (CORL: soft_target_update_rate)
    target_update_period: int = 1  # target update every this many steps
    # SAC entropy term
    automatic_entropy_tuning: bool = True  # CORL: use_automatic_entropy_tuning
    target_entropy: float | None = None  # None: -action_dim (CORL)
    alpha_multiplier: float = 1.0  # α = exp(log α) · alpha_multiplier (the fixed α without tuning)
    backup_entropy: bool = False  # subtract α log π(a'|s') in the TD target
    # conservative regulariser
    cql_alpha: float = 10.0  # weight of the CQL term (CORL: cql_alpha / cql_min_q_weight)
    cql_n_actions: int = 10  # N: actions sampled per state from each proposal
    cql_importance_sample: bool = True  # importance-sampled logsumexp (CQL(H) appendix F)
    cql_temp: float = 1.0  # logsumexp temperature T
    cql_lagrange: bool = False  # tune the CQL weight α' against cql_target_action_gap
    cql_target_action_gap: float = -1.0  # τ_gap of the Lagrangian variant
    cql_max_target_backup: bool = False  # TD target from the max over N next actions
    cql_clip_diff_min: float = -math.inf  # clip of logsumexp - Q(s, a) per state
    cql_clip_diff_max: float = math.inf
    bc_steps: int = 0  # first steps train the actor by behaviour cloning (log-likelihood)
    # networks
    orthogonal_init: bool = True  # critics: orthogonal (gain √2, last 1e-2), zero biases
    actor_hidden_dims: tuple[int, ...] = (256, 256, 256)
    critic_hidden_dims: tuple[int, ...] = (256, 256, 256)  # CORL: q_n_hidden_layers = 3
    policy_log_std_multiplier: float = 1.0  # initial m (trained)
    policy_log_std_offset: float = -1.0  # initial o (trained)

    def __post_init__(self) -> None:
        self.actor_hidden_dims = _dims(self.actor_hidden_dims, "actor_hidden_dims")
        self.critic_hidden_dims = _dims(self.critic_hidden_dims, "critic_hidden_dims")
        for name in ("actor_lr", "critic_lr", "cql_temp"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CQLConfig.{name} must be positive; got {getattr(self, name)!r}")
        for name in ("cql_alpha", "alpha_multiplier"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"CQLConfig.{name} must be >= 0; got {getattr(self, name)!r}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"CQLConfig.gamma must be in [0, 1]; got {self.gamma!r}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"CQLConfig.tau must be in (0, 1]; got {self.tau!r}")
        for name, low in (("target_update_period", 1), ("cql_n_actions", 1), ("bc_steps", 0)):
            value = getattr(self, name)
            if int(value) != value or value < low:
                raise ValueError(f"CQLConfig.{name} must be an integer >= {low}; got {value!r}")
            setattr(self, name, int(value))
        if not self.cql_clip_diff_min <= self.cql_clip_diff_max:
            raise ValueError(f"CQLConfig.cql_clip_diff_min ({self.cql_clip_diff_min}) must not "
                             f"exceed cql_clip_diff_max ({self.cql_clip_diff_max})")
        if self.target_entropy is not None:
            self.target_entropy = float(self.target_entropy)


def cql_logsumexp(q_random: torch.Tensor, q_data: torch.Tensor, q_next_pi: torch.Tensor,
                  q_pi: torch.Tensor, log_pi_next: torch.Tensor, log_pi: torch.Tensor,
                  log_density_random: float, importance_sample: bool,
                  temperature: float) -> torch.Tensor:
    """The CQL(H) estimate of T · log Σ_a exp(Q(s, a) / T), per state.

    q_random, q_next_pi, q_pi: (..., N) Q at the random, next-state policy and policy actions;
    q_data (...,) Q at the dataset action; log_pi_next, log_pi: (..., N) the proposals' log
    densities; log_density_random: log density of the uniform proposal. Returns (...).
    With importance sampling each sample's Q is divided by its proposal density (in log space:
    Q - log p) and the data action is left out; without, the raw Q values and the data action's.
    """
    if importance_sample:
        x = torch.cat([q_random - log_density_random, q_next_pi - log_pi_next, q_pi - log_pi], -1)
    else:
        x = torch.cat([q_random, q_data.unsqueeze(-1), q_next_pi, q_pi], -1)
    if temperature == 1.0:
        return torch.logsumexp(x, dim=-1)
    return torch.logsumexp(x / temperature, dim=-1) * temperature


class CQL(Agent):
    """CQL for S seeds in one process. See the module docstring for the update."""

    name: ClassVar[str] = "cql"
    config_class: ClassVar[type] = CQLConfig
    bf16_networks: ClassVar[tuple[str, ...]] = ("actor", "critic", "critic_target")
    num_critics: ClassVar[int] = 2

    def __init__(self, config: CQLConfig, observation_dim: int, action_dim: int,
                 seeds: list[int], device: str | torch.device = "cpu", max_action: float = 1.0,
                 *, critic_backward: str = "fused", chunk_rows: int | None = None,
                 compile: bool = False):
        if not isinstance(config, CQLConfig):
            raise TypeError(f"CQL needs a CQLConfig; got {type(config).__name__}")
        if len(seeds) == 0:
            raise ValueError("CQL needs at least one seed")
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
        # log density of U[-max_action, max_action]^A (CORL: log(0.5 ** A) at max_action 1)
        self._log_density_random = -A * math.log(2.0 * self.max_action)

        # Networks: built and initialised on the CPU from each seed's "init" generator (actor,
        # then critic 1, critic 2), so initial weights do not depend on S or on the device.
        self.actor = EnsembleMLP(observation_dim, 2 * A, c.actor_hidden_dims, S)
        self.critic = EnsembleMLP(observation_dim + A, 1, c.critic_hidden_dims, S * K)
        actor_last = LayerInit("xavier_uniform", 1e-2)
        if c.orthogonal_init:
            critic_hidden, critic_last = LayerInit("orthogonal", math.sqrt(2.0)), LayerInit("orthogonal", 1e-2)
        else:
            critic_hidden, critic_last = LayerInit("torch"), LayerInit("xavier_uniform", 1e-2)
        for s, g in enumerate(member_generators(self.seeds, "init")):
            self.actor.init_member_(s, g, final_init=actor_last)
            for k in range(K):
                self.critic.init_member_(s * K + k, g, hidden_init=critic_hidden, final_init=critic_last)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        dev = self.device
        # Trained scalars, one per member: the actor's log-std affine map (m, o), log α, log α'.
        self.log_std_multiplier = torch.nn.Parameter(torch.full((S,), c.policy_log_std_multiplier, device=dev))
        self.log_std_offset = torch.nn.Parameter(torch.full((S,), c.policy_log_std_offset, device=dev))
        self.log_alpha = torch.nn.Parameter(torch.zeros(S, device=dev))
        self.log_alpha_prime = torch.nn.Parameter(torch.ones(S, device=dev))

        self._actor_params = [*self.actor.parameters(), self.log_std_multiplier, self.log_std_offset]
        self._critic_params = list(self.critic.parameters())
        self._critic_target_params = list(self.critic_target.parameters())
        # One Adam over the actor, the critics, and log α (with automatic entropy tuning) and
        # log α' (with the Lagrangian variant), each group with its own learning rate. Every
        # parameter in it gets a gradient at every step.
        groups = [{"params": self._actor_params, "lr": c.actor_lr},
                  {"params": self._critic_params, "lr": c.critic_lr}]
        if c.automatic_entropy_tuning:
            groups.append({"params": [self.log_alpha], "lr": c.actor_lr})
        if c.cql_lagrange:
            groups.append({"params": [self.log_alpha_prime], "lr": c.critic_lr})
        self.optimizer = make_adam(groups, lr=c.critic_lr)
        # Per-member random streams: sampling in `update`, exploration in `act`.
        self._update_generators = member_generators(self.seeds, "update", self.device)
        self._act_generators = member_generators(self.seeds, "act", self.device)

        # Speed options (the math is the same): the critics' loss and gradients by hand, a chunk
        # of states at a time ("fused", default) or through autograd; chunk_rows bounds
        # members × rows per chunk (default 4096 on the CPU, where a chunk's activations then stay
        # in cache; one chunk elsewhere); compile wraps in torch.compile the fused chunk (or,
        # with autograd, the losses).
        if critic_backward not in ("fused", "autograd"):
            raise ValueError(f"critic_backward must be 'fused' or 'autograd'; got {critic_backward!r}")
        self.critic_backward = critic_backward
        if chunk_rows is None:
            chunk_rows = 4096 if self.device.type == "cpu" else 1 << 62
        if int(chunk_rows) <= 0:
            raise ValueError(f"chunk_rows must be positive; got {chunk_rows!r}")
        self.chunk_rows = int(chunk_rows)
        self._losses = self._losses_eager
        self._chunk_fn = _critic_chunk
        self.compiled = bool(compile)
        if compile and critic_backward == "fused":
            self._chunk_fn = torch.compile(_critic_chunk, dynamic=False, fullgraph=True)
        elif compile:
            self._losses = torch.compile(self._losses_eager, dynamic=False)

    # ------------------------------------------------------------------ networks
    def _policy_head(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, R, obs) -> mean, log σ (S, R, act): log σ = clip(m · raw + o, -20, 2)."""
        out = self.actor(obs)
        mean, raw_log_std = out.split(self.action_dim, dim=-1)
        log_std = torch.addcmul(self.log_std_offset.view(-1, 1, 1), raw_log_std,
                                self.log_std_multiplier.view(-1, 1, 1)).clamp(-20.0, 2.0)
        return mean, log_std

    @staticmethod
    def _sample(mean: torch.Tensor, log_std: torch.Tensor,
                noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised tanh-Gaussian samples a = tanh(μ + σ ε) and log π(a) summed over the
        action dims (torch's TanhTransform: log N(u; μ, σ) - 2 (log 2 - u - softplus(-2 u)))."""
        u = torch.addcmul(mean, log_std.exp(), noise)
        log_prob = (-0.5 * noise.square() - log_std - _HALF_LOG_2PI
                    - 2.0 * (_LOG_2 - u - torch.nn.functional.softplus(-2.0 * u)))
        return torch.tanh(u), log_prob.sum(dim=-1)

    def _log_prob(self, mean: torch.Tensor, log_std: torch.Tensor,
                  actions: torch.Tensor) -> torch.Tensor:
        """log π(a|s) for given actions (S, B, act) in the env's range -> (S, B)."""
        y = (actions / self.max_action).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
        u = torch.atanh(y)
        z = (u - mean) * torch.exp(-log_std)
        log_prob = (-0.5 * z.square() - log_std - _HALF_LOG_2PI
                    - 2.0 * (_LOG_2 - u - torch.nn.functional.softplus(-2.0 * u)))
        return log_prob.sum(dim=-1)

    def _q(self, critic: EnsembleMLP, obs: torch.Tensor, act: torch.Tensor,
           weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Both critics of every seed at (obs, act) (S, R, ·) -> (S, K, R)."""
        S, R = obs.shape[0], obs.shape[1]
        sa = expand_members(torch.cat([obs, act], dim=-1), self.num_critics)
        if weights is None:
            q = critic(sa)
        else:  # the critic with given (e.g. detached) weights
            q = _mlp(sa, weights)
        return q.view(S, self.num_critics, R)

    # ------------------------------------------------------------------ losses
    def _losses_eager(self, obs, act, rew, next_obs, done, noise, random_actions,
                      bc: bool, fused: bool = False):
        """Per-member losses (S,) summed into one scalar for a single backward, and metrics.

        With `fused`, the critics' loss and gradients are computed by
        `_fused_critic_loss_and_grads` (which sets the critic parameters' .grad) and the scalar
        covers only the actor, α and α' losses."""
        c = self.config
        S, B, A = act.shape
        N, K = c.cql_n_actions, self.num_critics
        m = self.max_action

        # ---- actor: one pass over [s; s'] -------------------------------------------
        mean, log_std = self._policy_head(torch.cat([obs, next_obs], dim=1))  # (S, 2B, A)
        mean_s, log_std_s = mean[:, :B], log_std[:, :B]
        pi, log_pi = self._sample(mean_s, log_std_s, noise[:, :B, N])  # (S, B, A), (S, B)
        pi = pi * m if m != 1.0 else pi
        with torch.no_grad():
            # N samples per state at s and s' (CQL proposals) and the TD target's next action(s)
            extra, extra_log_pi = self._sample(mean.detach().unsqueeze(2), log_std.detach().unsqueeze(2),
                                               noise)  # (S, 2B, n, A), (S, 2B, n)
            if m != 1.0:
                extra = extra * m
            cur_act, cur_log_pi = extra[:, :B, :N], extra_log_pi[:, :B, :N]
            next_pi_act, next_pi_log_pi = extra[:, B:, :N], extra_log_pi[:, B:, :N]
            if c.cql_max_target_backup:
                tgt_act, tgt_log_pi = extra[:, B:, N:], extra_log_pi[:, B:, N:]  # (S, B, N, ·)
            else:
                tgt_act, tgt_log_pi = extra[:, B:, N], extra_log_pi[:, B:, N]  # (S, B, ·)

        # ---- entropy temperature ------------------------------------------------------
        if c.automatic_entropy_tuning:
            alpha_loss = -(self.log_alpha.unsqueeze(1) * (log_pi.detach() + self.target_entropy)).mean(dim=1)
            alpha = self.log_alpha.detach().exp() * c.alpha_multiplier  # (S,)
        else:
            alpha_loss = log_pi.new_zeros(S)
            alpha = log_pi.new_full((S,), c.alpha_multiplier)

        # ---- actor loss ----------------------------------------------------------------
        if bc:
            policy_term = self._log_prob(mean_s, log_std_s, act)
        else:
            detached = [t.detach() for layer in self.critic.layers for t in (layer.weight, layer.bias)]
            policy_term = self._q(self.critic, obs, pi, detached).amin(dim=1)  # (S, B)
        actor_loss = (alpha.unsqueeze(1) * log_pi - policy_term).mean(dim=1)

        # ---- TD target -------------------------------------------------------------------
        with torch.no_grad():
            if c.cql_max_target_backup:
                next_rep = next_obs.unsqueeze(2).expand(S, B, N, next_obs.shape[-1]).reshape(S, B * N, -1)
                q_next = self._q(self.critic_target, next_rep, tgt_act.reshape(S, B * N, A))
                q_next, idx = q_next.amin(dim=1).view(S, B, N).max(dim=2)
                tgt_log_pi = tgt_log_pi.gather(2, idx.unsqueeze(2)).squeeze(2)
            else:
                q_next = self._q(self.critic_target, next_obs, tgt_act).amin(dim=1)  # (S, B)
            if c.backup_entropy:
                q_next = q_next - alpha.unsqueeze(1) * tgt_log_pi
            y = rew + (1.0 - done) * c.gamma * q_next  # (S, B)

        # ---- critics: one pass over every (s, action) pair ------------------------------
        # per state: [data action, N random, N policy at s', N policy at s]
        actions = torch.cat([act.unsqueeze(2), random_actions, next_pi_act, cur_act], dim=2)
        if c.cql_lagrange:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)  # (S,)
            cql_weight = alpha_prime.detach() * c.cql_alpha
        else:
            alpha_prime = log_pi.new_zeros(S)
            cql_weight = log_pi.new_full((S,), c.cql_alpha)
        if fused:
            # log densities of the proposals, aligned with actions[..., 1:]
            log_density = torch.cat([log_pi.new_full((S, B, N), self._log_density_random),
                                     next_pi_log_pi, cur_log_pi], dim=2)
            td_loss, cql_diff, q_data_mean, q_random_mean = _fused_critic_loss_and_grads(
                self.critic, obs, actions, y, log_density, cql_weight,
                importance_sample=c.cql_importance_sample, temperature=c.cql_temp,
                clip_min=c.cql_clip_diff_min, clip_max=c.cql_clip_diff_max,
                rows_per_chunk=self.chunk_rows, chunk_fn=self._chunk_fn)
        else:
            n_all = 1 + 3 * N
            obs_rep = obs.unsqueeze(2).expand(S, B, n_all, obs.shape[-1])
            q_all = self._q(self.critic, obs_rep.reshape(S, B * n_all, -1),
                            actions.reshape(S, B * n_all, A)).view(S, K, B, n_all)
            q_data = q_all[..., 0]  # (S, K, B)
            q_rand, q_next_pi, q_cur = q_all[..., 1:1 + N], q_all[..., 1 + N:1 + 2 * N], q_all[..., 1 + 2 * N:]
            td_loss = (q_data - y.unsqueeze(1)).square().mean(dim=2)  # (S, K)
            lse = cql_logsumexp(q_rand, q_data, q_next_pi, q_cur, next_pi_log_pi.unsqueeze(1),
                                cur_log_pi.unsqueeze(1), self._log_density_random,
                                c.cql_importance_sample, c.cql_temp)  # (S, K, B)
            cql_diff = (lse - q_data).clamp(c.cql_clip_diff_min, c.cql_clip_diff_max).mean(dim=2)  # (S, K)
            q_data_mean, q_random_mean = q_data.detach()[:, 0].mean(dim=1), q_rand.detach()[:, 0].mean(dim=(1, 2))
        if c.cql_lagrange:
            gap = cql_diff.detach() - c.cql_target_action_gap
            alpha_prime_loss = -0.5 * (alpha_prime.unsqueeze(1) * c.cql_alpha * gap).sum(dim=1)
        else:
            alpha_prime_loss = log_pi.new_zeros(S)
        # L_TD + L_CQL per seed (with the fused path its gradients are already in place)
        gap_offset = c.cql_target_action_gap if c.cql_lagrange else 0.0
        critic_loss = (td_loss + cql_weight.unsqueeze(1) * (cql_diff - gap_offset)).sum(dim=1)

        losses = actor_loss + alpha_loss + alpha_prime_loss
        total = (losses if fused else losses + critic_loss).sum()
        metrics = {
            "critic_loss": critic_loss.detach(),
            "td_loss": td_loss.detach().mean(dim=1),
            "cql_diff": cql_diff.detach().mean(dim=1),
            "q_data": q_data_mean,
            "q_random": q_random_mean,
            "q_target": y.mean(dim=1),
            "actor_loss": actor_loss.detach(),
            "log_pi": log_pi.detach().mean(dim=1),
            "alpha": alpha,
            "alpha_loss": alpha_loss.detach(),
            "alpha_prime": alpha_prime.detach(),
            "alpha_prime_loss": alpha_prime_loss.detach(),
        }
        return total, metrics

    # ------------------------------------------------------------------ update
    def _draw_noise(self, S: int, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every random number of one step, member s from its own "update" generator:
        standard normals (S, 2B, n, A) for the policy samples at [s; s'] (columns 0..N-1: the
        CQL proposals; column N at s: the actor-loss action; columns N.. at s': the TD target's
        next action(s)) and uniform random actions (S, B, N, A)."""
        c, A = self.config, self.action_dim
        N = c.cql_n_actions
        n = N + (N if c.cql_max_target_backup else 1)
        noise = torch.empty(S, 2 * B, n, A, device=self.device)
        random_actions = torch.empty(S, B, N, A, device=self.device)
        for s, g in enumerate(self._update_generators):
            noise[s].normal_(generator=g)
            random_actions[s].uniform_(-self.max_action, self.max_action, generator=g)
        return noise, random_actions

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One CQL step for every member; metrics are (S,) tensors (no host sync)."""
        self.step += 1
        S, B = batch.num_members, batch.batch_size
        if S != len(self.seeds):
            raise ValueError(f"batch has {S} members; this agent trains {len(self.seeds)}")
        noise, random_actions = self._draw_noise(S, B)
        self.optimizer.zero_grad(set_to_none=True)
        total, metrics = self._losses(batch.observations, batch.actions, batch.rewards,
                                      batch.next_observations, batch.dones, noise,
                                      random_actions, self.step <= self.config.bc_steps,
                                      self.critic_backward == "fused")
        total.backward()
        self.optimizer.step()
        if self.step % self.config.target_update_period == 0:
            soft_update_(self._critic_target_params, self._critic_params, self.config.tau)
        return metrics

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, observations: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """(S, N, obs) -> (S, N, act) in [-max_action, max_action]: max_action · tanh(μ) when
        deterministic, else a policy sample from each member's own "act" stream."""
        obs = self._check_obs(observations)
        mean, log_std = self._policy_head(obs)
        if deterministic:
            a = torch.tanh(mean)
        else:
            noise = torch.empty_like(mean)
            for s, g in enumerate(self._act_generators):
                noise[s].normal_(generator=g)
            a = torch.tanh(torch.addcmul(mean, log_std.exp(), noise))
        return a * self.max_action if self.max_action != 1.0 else a

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
            "critic_target": self.critic_target.state_dict(),
            "scalars": {"log_std_multiplier": self.log_std_multiplier.detach(),
                        "log_std_offset": self.log_std_offset.detach(),
                        "log_alpha": self.log_alpha.detach(),
                        "log_alpha_prime": self.log_alpha_prime.detach()},
            "optimizer": self.optimizer.state_dict(),
            "update_generators": [g.get_state() for g in self._update_generators],
            "act_generators": [g.get_state() for g in self._act_generators],
        }
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algorithm") != self.name:
            raise ValueError(f"checkpoint is for algorithm {state.get('algorithm')!r}, not {self.name!r}")
        if list(state["seeds"]) != list(self.seeds):
            raise ValueError(f"checkpoint holds seeds {state['seeds']}; this agent has {self.seeds}")
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            for name, value in state["scalars"].items():
                getattr(self, name).copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        for gens, key in ((self._update_generators, "update_generators"),
                          (self._act_generators, "act_generators")):
            if len(gens) != len(state[key]):
                raise ValueError(f"checkpoint holds {len(state[key])} {key}; expected {len(gens)}")
            for g, st in zip(gens, state[key]):
                g.set_state(st.cpu())
        self.step = int(state["step"])


def _mlp(x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """An EnsembleMLP (relu, no layer norm) evaluated with explicit [w0, b0, w1, b1, ...]
    (weights (M, out, in), biases (M, 1, out))."""
    last = len(params) // 2 - 1
    for i in range(last + 1):
        x = ensemble_linear(x, params[2 * i], params[2 * i + 1])
        if i < last:
            x = torch.relu(x)
    return x


@torch.no_grad()
def _fused_critic_loss_and_grads(critic: EnsembleMLP, obs: torch.Tensor, actions: torch.Tensor,
                                 y: torch.Tensor, log_density: torch.Tensor,
                                 cql_weight: torch.Tensor, *, importance_sample: bool,
                                 temperature: float, clip_min: float, clip_max: float,
                                 rows_per_chunk: int, chunk_fn=None):
    """The critics' loss L_Q = Σ_k (L_TD,k + w Δ_k) and its gradient, by hand, a chunk of states
    at a time, so that every activation of a chunk stays in cache between its forward and
    backward pass (autograd would run the forward over all B (1 + 3N) rows, then the backward,
    streaming the activations through memory in between).

    critic: the ensemble of M = S K critics (relu MLP, no layer norm); obs (S, B, O);
    actions (S, B, n, A) with n = 1 + 3N, ordered [data, N random, N at s', N at s];
    y (S, B) TD targets; log_density (S, B, n - 1) the proposals' log densities (aligned with
    actions[..., 1:]); cql_weight (S,) w (cql_alpha, or α' cql_alpha). Sets .grad of every
    critic parameter and returns L_TD (S, K), Δ (S, K) (clipped, before the weight) and the
    mean Q of critic 0 at the data and at the random actions (S,). chunk_fn: `_critic_chunk`
    or a compiled copy of it.
    """
    S, B, n, A = actions.shape
    layers = list(critic.layers)
    M = layers[0].weight.shape[0]
    K = M // S
    weights = [layer.weight for layer in layers]
    biases = [layer.bias for layer in layers]
    dtype = critic.compute_dtype
    if dtype is not None and dtype != obs.dtype:
        # bf16 compute (critic.set_compute_dtype): matmuls and activations in bf16, the loss,
        # its softmax and the gradient sums in fp32
        weights, biases = [w.to(dtype) for w in weights], [b.to(dtype) for b in biases]
        obs, actions = obs.to(dtype), actions.to(dtype)
    grads_w = [torch.zeros_like(layer.weight) for layer in layers]
    grads_b_padded = [torch.zeros_like(layer.bias_padded) for layer in layers]
    grads_b = [g[..., :layer.out_features] for g, layer in zip(grads_b_padded, layers)]
    stats = [y.new_zeros(S, K), y.new_zeros(S, K), y.new_zeros(S), y.new_zeros(S)]
    coef = (cql_weight / B).view(S, 1, 1)
    chunk_fn = _critic_chunk if chunk_fn is None else chunk_fn
    chunk = max(1, rows_per_chunk // (M * n))  # states per chunk
    for b0 in range(0, B, chunk):
        b1 = min(B, b0 + chunk)
        gw, gb, chunk_stats = chunk_fn(
            weights, biases, obs[:, b0:b1], actions[:, b0:b1], y[:, b0:b1], log_density[:, b0:b1],
            coef, batch_size=B, importance_sample=importance_sample, temperature=temperature,
            clip_min=clip_min, clip_max=clip_max)
        torch._foreach_add_(grads_w, gw)
        torch._foreach_add_(grads_b, gb)
        torch._foreach_add_(stats, chunk_stats)
    for layer, gw, gb in zip(layers, grads_w, grads_b_padded):
        layer.weight.grad = gw
        layer.bias_padded.grad = gb  # the padding columns stay zero
    td_sum, diff_sum, q_data_sum, q_rand_sum = stats
    return td_sum / B, diff_sum / B, q_data_sum / B, q_rand_sum / (B * ((n - 1) // 3))


def _critic_chunk(weights: list[torch.Tensor], biases: list[torch.Tensor], obs: torch.Tensor,
                  actions: torch.Tensor, y: torch.Tensor, log_density: torch.Tensor,
                  coef: torch.Tensor, *, batch_size: int, importance_sample: bool,
                  temperature: float, clip_min: float, clip_max: float):
    """Forward and backward of the critics over the states of one chunk.

    weights[i] (M, out, in), biases[i] (M, 1, out); obs (S, c, O), actions (S, c, n, A),
    y (S, c), log_density (S, c, n - 1), coef (S, 1, 1) = w / B. Returns the gradients of the
    chunk's part of L_Q (lists like weights and biases) and [Σ (Q(s, a) - y)² (S, K),
    Σ clip(Δ) (S, K), Σ Q1(s, a) (S,), Σ Q1(s, a^R) (S,)] over its states.

    Per state the loss needs only that state's n Q values, which is what makes chunks exact:
        ∂L/∂Q(s, a) = 2 (Q(s, a) - y) / B - w/B · 1[clip inactive]         (the data action)
        ∂L/∂Q(s, a_j) = w/B · 1[clip inactive] · softmax_j(X / T)            (the proposals)
    with X the logsumexp's arguments (without importance sampling the data action is one of
    them too and also gets its softmax share).
    """
    S, c, n, A = actions.shape
    M, O, B = weights[0].shape[0], obs.shape[-1], batch_size
    K, rows, L = M // S, c * n, len(weights) - 1
    o = expand_members(obs, K)  # (M, c, O)
    a = expand_members(actions.reshape(S, rows, A), K)  # (M, rows, A)
    # forward; layer 0 splits into its state part (once per state) and its action part
    z0 = torch.baddbmm(biases[0], o, weights[0][:, :, :O].transpose(1, 2))  # (M, c, H)
    za = torch.bmm(a, weights[0][:, :, O:].transpose(1, 2))  # (M, rows, H)
    hs = [za.view(M, c, n, -1).add_(z0.unsqueeze(2)).view(M, rows, -1).relu_()]
    for i in range(1, L):
        hs.append(torch.baddbmm(biases[i], hs[-1], weights[i].transpose(1, 2)).relu_())
    q = torch.baddbmm(biases[L], weights[L], hs[-1].transpose(1, 2))  # (M, 1, rows)
    q = q.to(y.dtype)  # the loss in the targets' precision (a no-op unless computing in bf16)
    # dL/dQ per state
    qv = q.view(S, K, c, n)
    q_data = qv[..., 0]
    td = q_data - y.unsqueeze(1)  # (S, K, c)
    x = qv[..., 1:] - log_density.unsqueeze(1) if importance_sample else qv
    if temperature != 1.0:
        x = x / temperature
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    p = torch.exp(x - lse)  # softmax over the logsumexp's arguments
    diff = lse.squeeze(-1) * temperature - q_data  # (S, K, c)
    if clip_min > -math.inf or clip_max < math.inf:
        k = coef * ((diff >= clip_min) & (diff <= clip_max))  # torch.clamp's gradient mask
        diff = diff.clamp(clip_min, clip_max)
    else:
        k = coef.expand(S, K, c)
    dq_data = td * (2.0 / B) - k
    if importance_sample:
        dq = torch.cat([dq_data.unsqueeze(-1), p * k.unsqueeze(-1)], dim=-1)
    else:
        dq = p * k.unsqueeze(-1)
        dq = torch.cat([dq[..., :1] + dq_data.unsqueeze(-1), dq[..., 1:]], dim=-1)
    stats = [td.square().sum(dim=2), diff.sum(dim=2), q_data[:, 0].sum(dim=1),
             qv[:, 0, :, 1:1 + (n - 1) // 3].sum(dim=(1, 2))]
    # backward
    g = dq.view(M, 1, rows).to(hs[-1].dtype)
    gw, gb = [None] * (L + 1), [None] * (L + 1)
    gw[L], gb[L] = torch.bmm(g, hs[-1]), g.sum(dim=2, keepdim=True)
    dh = g.transpose(1, 2) * weights[L]  # (M, rows, H)
    for i in range(L - 1, 0, -1):
        dz = torch.ops.aten.threshold_backward(dh, hs[i], 0.0)  # relu's backward
        gw[i] = torch.bmm(dz.transpose(1, 2), hs[i - 1])
        gb[i] = dz.sum(dim=1, keepdim=True)
        dh = torch.bmm(dz, weights[i])
    dz = torch.ops.aten.threshold_backward(dh, hs[0], 0.0)  # (M, rows, H)
    dz_state = dz.view(M, c, n, -1).sum(dim=2)  # (M, c, H)
    gw[0] = torch.cat([torch.bmm(o.transpose(1, 2), dz_state).transpose(1, 2),
                       torch.bmm(a.transpose(1, 2), dz).transpose(1, 2)], dim=2)
    gb[0] = dz_state.sum(dim=1, keepdim=True)
    if gw[0].dtype != y.dtype:  # bf16 compute: accumulate the gradients in fp32
        gw, gb = [w.to(y.dtype) for w in gw], [b.to(y.dtype) for b in gb]
    return gw, gb, stats
