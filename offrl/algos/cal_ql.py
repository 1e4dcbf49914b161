"""Cal-QL (Nakamoto et al., "Cal-QL: Calibrated Offline RL Pre-Training for Efficient Online
Fine-Tuning", 2023).

CQL whose conservative term is calibrated: the Q-values it pushes down at the policy's actions
are first raised to at least a reference value of the state, the Monte-Carlo return-to-go of
the behaviour policy that produced the data (eq. 5.1 of the paper):

    R(θ) = α ( E_{s~D, a~π}[ max(Q_θ(s, a), V^μ(s)) ] − E_{s,a~D}[ Q_θ(s, a) ] )

so Q stays a lower bound of the policy's value but no lower than the behaviour policy's, which
keeps fine-tuning from "unlearning" at its start. Everything else is `offrl.algos.cql.CQL`
(CORL's CQL). With the CQL(H) importance-sampled logsumexp, as in the authors' code and in
CORL's `algorithms/finetune/cal_ql.py`, for every member and critic k:

    lb(s) = G(s)    the discounted return-to-go of the episode the transition comes from:
                    G_t = r_t + γ (1 − d_t) G_{t+1}, 0 after the episode's last row
    X = [ Q_k(s, a^R_j) − log ρ,
          max(Q_k(s, a^π'_j), lb(s)) − log π(a^π'_j|s'),      (actions drawn at s', Q at s)
          max(Q_k(s, a^π_j),  lb(s)) − log π(a^π_j|s) ]
    Δ_k = mean_batch clip(T · log Σ_X exp(X / T) − Q_k(s, a), clip_min, clip_max)

Random actions are not calibrated (as in the paper's code). A batch row whose return-to-go is
not known yet (an online episode still running) carries lb = −inf, which leaves it uncalibrated.

Batches carry the returns as `MCBatch.mc_returns` (S, B): `mc_returns(transitions, gamma)`
computes them per transition from a dataset's episodes (rewards as the loop scaled them),
`MCReturnSampler` draws them with the transitions, and `offrl.training.finetune` computes them
for online episodes as they end. Online fine-tuning mixes offline and online data half and half
(`mixing_ratio = 0.5` in baselines/cal_ql/default-finetune.toml).

The critics' loss runs through autograd (CQL's hand-fused critic pass has no calibration), so
an update costs about as much as CQL with `critic_backward="autograd"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from offrl.algos.base import Batch
from offrl.algos.cql import CQL, CQLConfig
from offrl.algos.optim import soft_update_
from offrl.algos.sampler import TransitionSampler
from offrl.data.dataset import Transitions
from offrl.errors import UserError

__all__ = ["CalQL", "CalQLConfig", "MCBatch", "MCReturnSampler", "calibrated_cql_logsumexp",
           "mc_returns"]


@dataclass
class CalQLConfig(CQLConfig):
    """CQL's hyperparameters (CORL's Cal-QL uses CQL's MuJoCo defaults with 2 × 256 critics)
    plus the calibration switches."""

    critic_hidden_dims: tuple[int, ...] = (256, 256)  # CORL cal_ql: q_n_hidden_layers = 2
    calibrate: bool = True  # False: plain CQL (the ablation)
    sparse_reward: bool = False  # CORL is_sparse_reward: a failed episode's return-to-go is r_min / (1 − γ)


@dataclass
class MCBatch(Batch):
    """A Batch plus mc_returns (S, B): the return-to-go lower bound of each row's state."""

    mc_returns: torch.Tensor


def mc_returns(transitions: Transitions, gamma: float, *, sparse_reward: bool = False) -> np.ndarray:
    """(N,) float32 discounted return-to-go of every transition, within its episode.

    Rows are in dataset order; an episode ends at a done row, at the last row, or where the next
    row's observation is not this row's next observation (a timeout or a cut: the D4RL
    qlearning view drops timeout rows, so its episodes end one row early, as in CORL's
    `get_return_to_go`). Nothing is bootstrapped past an episode's end, so a truncated episode's
    values are lower than its true values (still a lower bound when rewards are >= 0).
    With sparse_reward, an episode whose every reward equals the data's smallest reward (it never
    reached the goal) gets r / (1 − γ) at every row, as CORL does for AntMaze.
    """
    r = np.asarray(transitions.rewards, dtype=np.float64)
    n = len(r)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    done = np.asarray(transitions.dones, dtype=bool)
    obs, nxt = transitions.observations, transitions.next_observations
    cut = np.ones(n, dtype=bool)
    cut[:-1] = np.any(obs[1:] != nxt[:-1], axis=tuple(range(1, obs.ndim)))
    last = done | cut
    out = np.empty(n, dtype=np.float64)
    g = 0.0
    for t in range(n - 1, -1, -1):  # one pass; 1M rows take about half a second
        if last[t]:
            g = 0.0
        g = r[t] + gamma * (0.0 if done[t] else g)
        out[t] = g
    if sparse_reward and gamma < 1:
        r_min = r.min()
        ends = np.flatnonzero(last)
        start = 0
        for end in ends:
            sl = slice(start, end + 1)
            if np.all(r[sl] == r_min):
                out[sl] = r_min / (1.0 - gamma)
            start = end + 1
    return out.astype(np.float32)


def calibrated_cql_logsumexp(q_random: torch.Tensor, q_data: torch.Tensor,
                             q_next_pi: torch.Tensor, q_pi: torch.Tensor,
                             log_pi_next: torch.Tensor, log_pi: torch.Tensor,
                             lower_bound: torch.Tensor | None, log_density_random: float,
                             importance_sample: bool, temperature: float) -> torch.Tensor:
    """The CQL(H) logsumexp with the policy actions' Q-values raised to `lower_bound`.

    q_random, q_next_pi, q_pi, log_pi_next, log_pi: (..., N); q_data (...); lower_bound (...)
    (None: no calibration, which is CQL's `cql_logsumexp`). Returns (...).
    """
    if lower_bound is not None:
        lb = lower_bound.unsqueeze(-1)
        q_next_pi, q_pi = torch.maximum(q_next_pi, lb), torch.maximum(q_pi, lb)
    if importance_sample:
        x = torch.cat([q_random - log_density_random, q_next_pi - log_pi_next, q_pi - log_pi], -1)
    else:
        x = torch.cat([q_random, q_data.unsqueeze(-1), q_next_pi, q_pi], -1)
    return torch.logsumexp(x / temperature, dim=-1) * temperature


class CalQL(CQL):
    """Cal-QL for S seeds in one process: `update` takes an `MCBatch`. See the module docstring."""

    name: ClassVar[str] = "cal_ql"
    config_class: ClassVar[type] = CalQLConfig
    uses_mc_returns: ClassVar[bool] = True  # the fine-tuning loop stores returns-to-go for it

    def __init__(self, config: CalQLConfig, observation_dim: int, action_dim: int,
                 seeds: list[int], device: str | torch.device = "cpu", max_action: float = 1.0,
                 *, critic_backward: str = "autograd", chunk_rows: int | None = None,
                 compile: bool = False):
        if not isinstance(config, CalQLConfig):
            raise TypeError(f"CalQL needs a CalQLConfig; got {type(config).__name__}")
        if critic_backward != "autograd" or compile:
            raise ValueError("Cal-QL computes the critics' loss through autograd only "
                             "(critic_backward='autograd', compile=False)")
        super().__init__(config, observation_dim, action_dim, seeds, device, max_action,
                         critic_backward="autograd", chunk_rows=chunk_rows, compile=False)

    @classmethod
    def offline_sampler(cls, transitions: Transitions, config: CalQLConfig, seeds: list[int],
                        batch_size: int, device: str | torch.device = "cpu") -> "MCReturnSampler":
        """The sampler the offline loop needs for Cal-QL: transitions with their returns-to-go."""
        returns = mc_returns(transitions, config.gamma, sparse_reward=config.sparse_reward)
        return MCReturnSampler(transitions, returns, seeds, batch_size, device)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One Cal-QL step for every member; metrics are (S,) tensors (no host sync)."""
        if not isinstance(batch, MCBatch):
            raise UserError(
                "Cal-QL needs the Monte-Carlo return-to-go of every transition (an MCBatch); this "
                "batch has none. Draw batches with CalQL.offline_sampler (offline) or "
                "offrl.training.finetune (online); the offline loop builds its sampler with "
                "`agent_cls.offline_sampler` where it supports it")
        self.step += 1
        S, B = batch.num_members, batch.batch_size
        if S != len(self.seeds):
            raise ValueError(f"batch has {S} members; this agent trains {len(self.seeds)}")
        noise, random_actions = self._draw_noise(S, B)
        self.optimizer.zero_grad(set_to_none=True)
        total, metrics = self._calql_losses(batch, noise, random_actions,
                                            self.step <= self.config.bc_steps)
        total.backward()
        self.optimizer.step()
        if self.step % self.config.target_update_period == 0:
            soft_update_(self._critic_target_params, self._critic_params, self.config.tau)
        return metrics

    def _calql_losses(self, batch: MCBatch, noise: torch.Tensor, random_actions: torch.Tensor,
                      bc: bool):
        """CQL's losses (see offrl/algos/cql.py) with the calibrated conservative term."""
        c = self.config
        obs, act, rew, next_obs, done = (batch.observations, batch.actions, batch.rewards,
                                         batch.next_observations, batch.dones)
        S, B, A = act.shape
        N, K = c.cql_n_actions, self.num_critics
        m = self.max_action

        # ---- actor over [s; s'], its samples (reparameterised for L_π, detached for CQL) ----
        mean, log_std = self._policy_head(torch.cat([obs, next_obs], dim=1))  # (S, 2B, A)
        mean_s, log_std_s = mean[:, :B], log_std[:, :B]
        pi, log_pi = self._sample(mean_s, log_std_s, noise[:, :B, N])
        pi = pi * m if m != 1.0 else pi
        with torch.no_grad():
            extra, extra_log_pi = self._sample(mean.detach().unsqueeze(2),
                                               log_std.detach().unsqueeze(2), noise)
            if m != 1.0:
                extra = extra * m
            cur_act, cur_log_pi = extra[:, :B, :N], extra_log_pi[:, :B, :N]
            next_pi_act, next_pi_log_pi = extra[:, B:, :N], extra_log_pi[:, B:, :N]
            if c.cql_max_target_backup:
                tgt_act, tgt_log_pi = extra[:, B:, N:], extra_log_pi[:, B:, N:]
            else:
                tgt_act, tgt_log_pi = extra[:, B:, N], extra_log_pi[:, B:, N]

        # ---- entropy temperature and actor (as CQL) -----------------------------------------
        if c.automatic_entropy_tuning:
            alpha_loss = -(self.log_alpha.unsqueeze(1) * (log_pi.detach() + self.target_entropy)).mean(dim=1)
            alpha = self.log_alpha.detach().exp() * c.alpha_multiplier
        else:
            alpha_loss = log_pi.new_zeros(S)
            alpha = log_pi.new_full((S,), c.alpha_multiplier)
        if bc:
            policy_term = self._log_prob(mean_s, log_std_s, act)
        else:
            detached = [t.detach() for layer in self.critic.layers for t in (layer.weight, layer.bias)]
            policy_term = self._q(self.critic, obs, pi, detached).amin(dim=1)
        actor_loss = (alpha.unsqueeze(1) * log_pi - policy_term).mean(dim=1)

        # ---- TD target (as CQL) ----------------------------------------------------------
        with torch.no_grad():
            if c.cql_max_target_backup:
                next_rep = next_obs.unsqueeze(2).expand(S, B, N, next_obs.shape[-1]).reshape(S, B * N, -1)
                q_next = self._q(self.critic_target, next_rep, tgt_act.reshape(S, B * N, A))
                q_next, idx = q_next.amin(dim=1).view(S, B, N).max(dim=2)
                tgt_log_pi = tgt_log_pi.gather(2, idx.unsqueeze(2)).squeeze(2)
            else:
                q_next = self._q(self.critic_target, next_obs, tgt_act).amin(dim=1)
            if c.backup_entropy:
                q_next = q_next - alpha.unsqueeze(1) * tgt_log_pi
            y = rew + (1.0 - done) * c.gamma * q_next

        # ---- critics: TD + calibrated conservative term --------------------------------------
        actions = torch.cat([act.unsqueeze(2), random_actions, next_pi_act, cur_act], dim=2)
        n_all = 1 + 3 * N
        obs_rep = obs.unsqueeze(2).expand(S, B, n_all, obs.shape[-1])
        q_all = self._q(self.critic, obs_rep.reshape(S, B * n_all, -1),
                        actions.reshape(S, B * n_all, A)).view(S, K, B, n_all)
        q_data = q_all[..., 0]  # (S, K, B)
        q_rand, q_next_pi, q_cur = q_all[..., 1:1 + N], q_all[..., 1 + N:1 + 2 * N], q_all[..., 1 + 2 * N:]
        td_loss = (q_data - y.unsqueeze(1)).square().mean(dim=2)  # (S, K)
        lower = batch.mc_returns.to(q_data.dtype).unsqueeze(1).expand(S, K, B)  # lb(s) per critic
        lse = calibrated_cql_logsumexp(q_rand, q_data, q_next_pi, q_cur, next_pi_log_pi.unsqueeze(1),
                                       cur_log_pi.unsqueeze(1), lower if c.calibrate else None,
                                       self._log_density_random, c.cql_importance_sample, c.cql_temp)
        cql_diff = (lse - q_data).clamp(c.cql_clip_diff_min, c.cql_clip_diff_max).mean(dim=2)  # (S, K)
        with torch.no_grad():  # how often the bound is active (CORL: bound_rate_*)
            lb = lower.unsqueeze(-1)
            bound_rate = ((q_cur < lb).float().mean(dim=(1, 2, 3)) + (q_next_pi < lb).float().mean(dim=(1, 2, 3))) / 2
        if c.cql_lagrange:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
            cql_weight = alpha_prime.detach() * c.cql_alpha
            gap = cql_diff.detach() - c.cql_target_action_gap
            alpha_prime_loss = -0.5 * (alpha_prime.unsqueeze(1) * c.cql_alpha * gap).sum(dim=1)
            gap_offset = c.cql_target_action_gap
        else:
            alpha_prime = log_pi.new_zeros(S)
            cql_weight = log_pi.new_full((S,), c.cql_alpha)
            alpha_prime_loss = log_pi.new_zeros(S)
            gap_offset = 0.0
        critic_loss = (td_loss + cql_weight.unsqueeze(1) * (cql_diff - gap_offset)).sum(dim=1)

        total = (actor_loss + alpha_loss + alpha_prime_loss + critic_loss).sum()
        metrics = {
            "critic_loss": critic_loss.detach(),
            "td_loss": td_loss.detach().mean(dim=1),
            "cql_diff": cql_diff.detach().mean(dim=1),
            "bound_rate": bound_rate,
            "q_data": q_data.detach()[:, 0].mean(dim=1),
            "q_random": q_rand.detach()[:, 0].mean(dim=(1, 2)),
            "q_target": y.mean(dim=1),
            "actor_loss": actor_loss.detach(),
            "log_pi": log_pi.detach().mean(dim=1),
            "alpha": alpha,
            "alpha_loss": alpha_loss.detach(),
            "alpha_prime": alpha_prime.detach(),
            "alpha_prime_loss": alpha_prime_loss.detach(),
        }
        return total, metrics

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Also takes a CQL agent's state (same networks): Cal-QL fine-tuning of a CQL run."""
        if state.get("algorithm") == CQL.name:
            state = {**state, "algorithm": self.name}
        super().load_state_dict(state)


class MCReturnSampler(TransitionSampler):
    """A TransitionSampler whose batches also carry each row's return-to-go (`MCBatch`).

    Draws exactly the indices a TransitionSampler with the same seeds draws (same generators),
    and its state_dict is the same, so resuming works as with the plain sampler.
    """

    def __init__(self, transitions: Transitions, returns: np.ndarray, seeds: list[int],
                 batch_size: int, device: str | torch.device = "cpu"):
        super().__init__(transitions, seeds, batch_size, device)
        returns = np.asarray(returns, dtype=np.float32)
        if returns.shape != (len(transitions),):
            raise ValueError(f"returns has shape {returns.shape}; expected ({len(transitions)},)")
        labelled = np.asarray(transitions.labelled, dtype=bool)
        self._returns = torch.from_numpy(returns[labelled].copy()).to(self.device)

    def sample(self) -> MCBatch:
        index = self.sample_indices()
        s, b = index.shape
        flat = index.view(-1)
        rows = self._table.index_select(0, flat).view(s, b, self._row_width)
        so, sa, sr, sn, sd = self._slices
        return MCBatch(observations=rows[..., so], actions=rows[..., sa], rewards=rows[..., sr],
                       next_observations=rows[..., sn], dones=rows[..., sd],
                       mc_returns=self._returns.index_select(0, flat).view(s, b))
