"""Cal-QL: the calibrated conservative term against a hand computation, returns-to-go, sampler."""

import copy
import math

import numpy as np
import pytest
import torch

from offrl.algos.cal_ql import (CalQL, CalQLConfig, MCBatch, MCReturnSampler,
                                calibrated_cql_logsumexp, mc_returns)
from offrl.algos.cql import CQL, CQLConfig
from offrl.algos.sampler import TransitionSampler
from offrl.data.dataset import Transitions
from offrl.errors import UserError

from algo_helpers import random_transitions


def test_calibrated_logsumexp_matches_hand_computation():
    """One state, N = 2: the policy actions' Q-values are raised to the bound before the
    importance-sampled logsumexp; random actions are not."""
    q_rand, q_data = [0.5, -1.0], 0.2
    q_next, q_pi = [-3.0, 1.0], [-2.0, 0.0]
    lp_next, lp = [-0.5, -1.5], [-1.0, 0.3]
    log_rho = math.log(0.5)  # U[-1, 1], one action dim
    lb = -0.5
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    got = calibrated_cql_logsumexp(t(q_rand), torch.tensor([q_data], dtype=torch.float64), t(q_next),
                                   t(q_pi), t(lp_next), t(lp), torch.tensor([lb], dtype=torch.float64),
                                   log_rho, True, 1.0).item()
    xs = ([q - log_rho for q in q_rand] + [max(q, lb) - l for q, l in zip(q_next, lp_next)]
          + [max(q, lb) - l for q, l in zip(q_pi, lp)])
    assert got == pytest.approx(math.log(sum(math.exp(x) for x in xs)), abs=1e-12)
    uncal = calibrated_cql_logsumexp(t(q_rand), torch.tensor([q_data], dtype=torch.float64), t(q_next),
                                     t(q_pi), t(lp_next), t(lp), None, log_rho, True, 1.0).item()
    xs0 = ([q - log_rho for q in q_rand] + [q - l for q, l in zip(q_next, lp_next)]
           + [q - l for q, l in zip(q_pi, lp)])
    assert uncal == pytest.approx(math.log(sum(math.exp(x) for x in xs0)), abs=1e-12)
    assert got > uncal  # two of the four policy values were below the bound
    # temperature T and no importance sampling: T log Σ exp(X / T) with the data action included
    got_t = calibrated_cql_logsumexp(t(q_rand), torch.tensor([q_data], dtype=torch.float64), t(q_next),
                                     t(q_pi), t(lp_next), t(lp), torch.tensor([lb], dtype=torch.float64),
                                     log_rho, False, 2.0).item()
    xs_t = q_rand + [q_data] + [max(q, lb) for q in q_next] + [max(q, lb) for q in q_pi]
    assert got_t == pytest.approx(2.0 * math.log(sum(math.exp(x / 2.0) for x in xs_t)), abs=1e-12)


def tiny(cls=CalQL, **kw):
    config_cls = CalQLConfig if cls is CalQL else CQLConfig
    c = config_cls(actor_hidden_dims=(8, 8), critic_hidden_dims=(8, 8), cql_n_actions=3, **kw)
    extra = {"critic_backward": "autograd"}
    return cls(c, 3, 2, [0, 1], **extra)


def tiny_batch(mc_value: float | None, B: int = 4) -> MCBatch:
    g = torch.Generator().manual_seed(7)
    S = 2
    obs = torch.randn(S, B, 3, generator=g)
    return MCBatch(obs, torch.rand(S, B, 2, generator=g) * 2 - 1, torch.randn(S, B, generator=g),
                   torch.randn(S, B, 3, generator=g), torch.zeros(S, B),
                   mc_returns=torch.full((S, B), -math.inf) if mc_value is None
                   else torch.full((S, B), mc_value))


def test_without_a_bound_cal_ql_is_cql_bit_for_bit():
    """mc_returns = -inf leaves every Q-value as it is: the update equals CQL's (autograd)."""
    cal, cql = tiny(), tiny(CQL)
    batch = tiny_batch(None)
    m1 = cal.update(batch)
    m2 = cql.update(batch)
    for k in m2:
        assert torch.equal(m1[k], m2[k]), k
    for p, q in zip(cal.critic.parameters(), cql.critic.parameters()):
        assert torch.equal(p, q)
    assert torch.all(m1["bound_rate"] == 0)


def test_calibration_changes_the_conservative_term_as_the_paper_says():
    """Δ = mean_s [ T log Σ exp(X) − Q(s, a) ] with X's policy terms max(Q, G(s)) − log π,
    recomputed by hand (python floats, loops) from the agent's own networks and noise."""
    agent = tiny()
    batch = tiny_batch(None)
    G = torch.tensor([[0.3, -0.2, 5.0, -5.0], [1.0, 0.0, -1.0, 2.0]])  # bounds, some above Q
    batch.mc_returns = G
    ref_agent = copy.deepcopy(agent)
    metrics = agent.update(batch)

    c, S, B, N = ref_agent.config, 2, 4, 3
    noise, random_actions = ref_agent._draw_noise(S, B)  # the same draws the update made
    with torch.no_grad():
        mean, log_std = ref_agent._policy_head(torch.cat([batch.observations, batch.next_observations], 1))
        acts, logps = ref_agent._sample(mean.unsqueeze(2), log_std.unsqueeze(2), noise)
        log_rho = -2 * math.log(2.0)
        expected = np.zeros(S)
        calibrated_diffs, plain_diffs = np.zeros((S, 2)), np.zeros((S, 2))
        for s in range(S):
            for k in range(2):
                member = s * 2 + k
                for cal, out in ((True, calibrated_diffs), (False, plain_diffs)):
                    total = 0.0
                    for b in range(B):
                        o = batch.observations[s, b]

                        def q(a):
                            x = torch.cat([o, a]).view(1, 1, -1).expand(ref_agent.critic.layers[0].weight.shape[0], 1, -1)
                            return ref_agent.critic(x.contiguous())[member, 0, 0].item()

                        xs = [q(random_actions[s, b, j]) - log_rho for j in range(N)]
                        for j in range(N):  # actions drawn at s' (rows B..), Q at s
                            v = q(acts[s, B + b, j])
                            xs.append((max(v, G[s, b].item()) if cal else v) - logps[s, B + b, j].item())
                        for j in range(N):  # actions drawn at s
                            v = q(acts[s, b, j])
                            xs.append((max(v, G[s, b].item()) if cal else v) - logps[s, b, j].item())
                        total += math.log(sum(math.exp(x) for x in xs)) - q(batch.actions[s, b])
                    out[s, k] = total / B
        expected = calibrated_diffs.mean(axis=1)
    assert metrics["cql_diff"].numpy() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # the bound only ever raises the term, and here it does
    assert np.all(calibrated_diffs >= plain_diffs - 1e-9) and np.all(calibrated_diffs.mean(1) > plain_diffs.mean(1))
    assert torch.all(metrics["bound_rate"] > 0)


def test_mc_returns_within_episodes():
    # two episodes: rows 0-2 (ends with a terminal), rows 3-4 (cut: obs[5] != next_obs[4]),
    # then row 5 alone (end of data)
    obs = np.arange(6, dtype=np.float32)[:, None]
    nxt = obs + 1
    nxt[4] = 99.0
    t = Transitions(observations=obs, actions=np.zeros((6, 1), np.float32),
                    rewards=np.array([1, 2, 3, 4, 5, 6], np.float32), next_observations=nxt,
                    dones=np.array([0, 0, 1, 0, 0, 0], bool), labelled=np.ones(6, bool))
    g = 0.5
    want = [1 + g * 2 + g * g * 3, 2 + g * 3, 3, 4 + g * 5, 5, 6]
    assert mc_returns(t, g) == pytest.approx(want)
    # sparse: an episode that never beats the smallest reward gets r_min / (1 − γ) everywhere
    t2 = Transitions(obs, t.actions, np.array([-1, -1, -1, -1, 0, -1], np.float32), nxt, t.dones, t.labelled)
    got = mc_returns(t2, g, sparse_reward=True)
    assert got[:3] == pytest.approx([-2, -2, -2]) and got[3:5] == pytest.approx([-1, 0]) and got[5] == -2


def test_mc_return_sampler_draws_the_plain_samplers_rows():
    t = random_transitions(n=300, labelled_fraction=0.8)
    returns = np.arange(300, dtype=np.float32)
    plain = TransitionSampler(t, [0, 3], 32)
    mc = MCReturnSampler(t, returns, [0, 3], 32)
    a, b = plain.sample(), mc.sample()
    assert torch.equal(a.observations, b.observations) and torch.equal(a.rewards, b.rewards)
    labelled_ids = torch.from_numpy(np.flatnonzero(t.labelled).astype(np.float32))
    # each row's return is the one of its own transition (here its original index)
    idx = torch.searchsorted(labelled_ids, b.mc_returns.reshape(-1)).view_as(b.mc_returns)
    assert torch.equal(labelled_ids[idx], b.mc_returns)
    rows = torch.from_numpy(t.rewards)[b.mc_returns.long()]
    assert torch.equal(rows, b.rewards)
    state = mc.state_dict()
    again = MCReturnSampler(t, returns, [0, 3], 32)
    again.load_state_dict(state)
    assert torch.equal(again.sample().mc_returns, mc.sample().mc_returns)


def test_cal_ql_needs_returns_and_takes_cql_state():
    agent = tiny()
    plain = tiny_batch(0.0)
    with pytest.raises(UserError, match="Monte-Carlo return-to-go"):
        from offrl.algos.base import Batch

        agent.update(Batch(plain.observations, plain.actions, plain.rewards,
                           plain.next_observations, plain.dones))
    cql = tiny(CQL)
    cql.update(plain)
    agent.load_state_dict(cql.state_dict())
    assert agent.step == 1
    for p, q in zip(agent.actor.parameters(), cql.actor.parameters()):
        assert torch.equal(p, q)


def test_bf16_compute_trains_close_to_fp32():
    """Cal-QL inherits CQL's bf16 path: fp32 weights, finite losses, close to the fp32 update."""
    full, low = tiny(), tiny()
    low.set_precision("bf16")
    batch = tiny_batch(0.5, B=32)
    m_full, m_low = full.update(batch), low.update(batch)
    assert all(torch.isfinite(v).all() for v in m_low.values())
    torch.testing.assert_close(m_low["critic_loss"], m_full["critic_loss"], rtol=0.05, atol=0.05)
    assert all(q.dtype == torch.float32 for q in low.critic.parameters())
    # the update's gradients (left in .grad) point where fp32's do
    g_full = torch.cat([p.grad.flatten() for p in full.critic.parameters()])
    g_low = torch.cat([p.grad.flatten() for p in low.critic.parameters()])
    assert g_low.dtype == torch.float32 and not torch.equal(g_low, g_full)
    assert torch.nn.functional.cosine_similarity(g_low, g_full, dim=0) > 0.99
