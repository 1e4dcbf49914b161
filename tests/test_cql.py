"""CQL: the loss against CORL's formulas, the conservative term by hand, TD values, learning on
Pendulum, exact resume and member independence."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from offrl.algos.base import Batch
from offrl.algos.cql import CQL, CQLConfig, cql_logsumexp

SMALL = dict(actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32, 32), cql_n_actions=3)


def random_batch(S, B, obs_dim, act_dim, seed=0, max_action=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return Batch(observations=torch.randn(S, B, obs_dim, generator=g, dtype=dtype),
                 actions=(torch.rand(S, B, act_dim, generator=g, dtype=dtype) * 2 - 1) * 0.99 * max_action,
                 rewards=torch.randn(S, B, generator=g, dtype=dtype),
                 next_observations=torch.randn(S, B, obs_dim, generator=g, dtype=dtype),
                 dones=(torch.rand(S, B, generator=g) < 0.3).to(dtype))


def member_slice(batch, s):
    return Batch(*(x[s:s + 1] for x in (batch.observations, batch.actions, batch.rewards,
                                          batch.next_observations, batch.dones)))


def all_tensors(agent):
    state = agent.state_dict()
    out = {}
    for key in ("actor", "critic", "critic_target", "scalars"):
        for name, value in state[key].items():
            out[f"{key}.{name}"] = value
    return out


# ----------------------------------------------------------------------------- the conservative term
def test_cql_logsumexp_matches_hand_computation():
    """T · log Σ exp(X / T) over the 3N importance-weighted values (or 3N + 1 raw values)."""
    q_rand = torch.tensor([[1.0, -2.0]])
    q_data = torch.tensor([0.5])
    q_next = torch.tensor([[0.3, 2.0]])
    q_pi = torch.tensor([[-1.0, 0.7]])
    logp_next = torch.tensor([[-0.2, 1.5]])
    logp = torch.tensor([[0.4, -0.9]])
    log_rho = math.log(0.5 ** 2)  # uniform density on [-1, 1]^2
    for temp in (1.0, 0.5):
        xs = ([q - log_rho for q in (1.0, -2.0)] + [0.3 + 0.2, 2.0 - 1.5]
              + [-1.0 - 0.4, 0.7 + 0.9])
        want = temp * math.log(sum(math.exp(x / temp) for x in xs))
        got = cql_logsumexp(q_rand, q_data, q_next, q_pi, logp_next, logp, log_rho, True, temp)
        assert got.shape == (1,)
        assert got.item() == pytest.approx(want, rel=1e-6)
        xs = [1.0, -2.0, 0.5, 0.3, 2.0, -1.0, 0.7]  # no importance weights; the data action too
        want = temp * math.log(sum(math.exp(x / temp) for x in xs))
        got = cql_logsumexp(q_rand, q_data, q_next, q_pi, logp_next, logp, log_rho, False, temp)
        assert got.item() == pytest.approx(want, rel=1e-6)


def test_conservative_term_by_hand_on_a_tiny_batch():
    """The agent's cql_diff metric equals mean_s[ logsumexp_IS(s) - Q(s, a) ] recomputed here by
    hand from the critic, the random actions and the policy samples (B = 2, N = 2, A = 1)."""
    cfg = CQLConfig(**{**SMALL, "cql_n_actions": 2})
    agent = CQL(cfg, 2, 1, [3], max_action=2.0)
    batch = random_batch(1, 2, 2, 1, seed=4, max_action=2.0)
    gens = [copy.deepcopy(g.get_state()) for g in agent._update_generators]
    noise, rand = agent._draw_noise(1, 2)
    for g, st in zip(agent._update_generators, gens):
        g.set_state(st)
    metrics = agent.update(batch)  # draws the same noise again

    def q(k, s, a):  # critic k of the (pre-update) network
        x = torch.tensor([[[*s, a]]])
        return agent_before.critic(x.expand(2, 1, 3))[k, 0, 0].item()

    agent_before = CQL(cfg, 2, 1, [3], max_action=2.0)
    with torch.no_grad():
        out = agent_before.actor(torch.cat([batch.observations, batch.next_observations], 1))
    N, diffs = 2, []
    for k in range(2):
        total = 0.0
        for b in range(2):
            s = batch.observations[0, b].tolist()
            xs = [q(k, s, rand[0, b, j].item()) - math.log(1 / 4.0) for j in range(N)]
            for row in (2 + b, b):  # next-state proposals, then current-state proposals
                mean, raw = out[0, row, 0].item(), out[0, row, 1].item()
                log_std = min(max(1.0 * raw - 1.0, -20.0), 2.0)
                for j in range(N):
                    eps = noise[0, row, j, 0].item()
                    u = mean + math.exp(log_std) * eps
                    log_pi = (-0.5 * eps ** 2 - log_std - 0.5 * math.log(2 * math.pi)
                              - math.log(1 - math.tanh(u) ** 2))
                    xs.append(q(k, s, 2.0 * math.tanh(u)) - log_pi)
            lse = math.log(sum(math.exp(x) for x in xs))
            total += lse - q(k, s, batch.actions[0, b, 0].item())
        diffs.append(total / 2)
    assert metrics["cql_diff"].item() == pytest.approx(sum(diffs) / 2, rel=1e-4, abs=1e-5)


# ----------------------------------------------------------------------------- CORL's formulas
def corl_gradients(agent, batch, noise, rand, cfg, bc):
    """Losses and gradients of seed 0 written as CORL's cql.py writes them (two separate critics,
    torch.distributions for log-probabilities), on the agent's weights and noise."""
    def take(mlp, m):
        return [(layer.weight[m].detach().clone().requires_grad_(),
                 layer.bias[m, 0].detach().clone().requires_grad_()) for layer in mlp.layers]

    actor, q1, q2 = take(agent.actor, 0), take(agent.critic, 0), take(agent.critic, 1)
    t1, t2 = take(agent.critic_target, 0), take(agent.critic_target, 1)
    scalars = {n: getattr(agent, n)[0].detach().clone().requires_grad_()
               for n in ("log_std_multiplier", "log_std_offset", "log_alpha", "log_alpha_prime")}

    def mlp(params, x):
        for i, (w, b) in enumerate(params):
            x = x @ w.t() + b
            x = torch.relu(x) if i < len(params) - 1 else x
        return x

    A, ma = agent.action_dim, agent.max_action

    def head(o):
        out = mlp(actor, o)
        log_std = scalars["log_std_multiplier"] * out[..., A:] + scalars["log_std_offset"]
        return out[..., :A], log_std.clamp(-20, 2)

    def dist(mean, log_std):
        return TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform(cache_size=1))

    def sample(o, eps):
        mean, log_std = head(o)
        if eps.ndim == o.ndim + 1:
            mean, log_std = mean.unsqueeze(-2).expand(eps.shape), log_std.unsqueeze(-2).expand(eps.shape)
        d = dist(mean, log_std)
        a = torch.tanh(mean + log_std.exp() * eps)
        d.transforms[0]._cached_x_y = (mean + log_std.exp() * eps, a)
        return ma * a, d.log_prob(a).sum(-1)

    def Q(params, o, a):
        if a.ndim == 3:
            o = o.unsqueeze(1).expand(a.shape[0], a.shape[1], o.shape[-1])
        return mlp(params, torch.cat([o, a], -1)).squeeze(-1)

    obs, act, rew, nobs, done = (x[0] for x in (batch.observations, batch.actions, batch.rewards,
                                                batch.next_observations, batch.dones))
    B, N, nz = obs.shape[0], cfg.cql_n_actions, noise[0]
    new_actions, log_pi = sample(obs, nz[:B, N])
    alpha_loss = -(scalars["log_alpha"] * (log_pi + agent.target_entropy).detach()).mean()
    alpha = (scalars["log_alpha"].exp() * cfg.alpha_multiplier if cfg.automatic_entropy_tuning
             else torch.tensor(cfg.alpha_multiplier, dtype=obs.dtype))
    if bc:
        mean, log_std = head(obs)
        log_probs = dist(mean, log_std).log_prob((act / ma).clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
        policy_loss = (alpha * log_pi - log_probs).mean()
    else:
        policy_loss = (alpha * log_pi - torch.min(Q(q1, obs, new_actions), Q(q2, obs, new_actions))).mean()
    q1p, q2p = Q(q1, obs, act), Q(q2, obs, act)
    if cfg.cql_max_target_backup:
        na, nlp = sample(nobs, nz[B:, N:])
        tq, idx = torch.max(torch.min(Q(t1, nobs, na), Q(t2, nobs, na)), dim=-1)
        nlp = torch.gather(nlp, -1, idx.unsqueeze(-1)).squeeze(-1)
    else:
        na, nlp = sample(nobs, nz[B:, N])
        tq = torch.min(Q(t1, nobs, na), Q(t2, nobs, na))
    if cfg.backup_entropy:
        tq = tq - alpha * nlp
    td = rew + (1 - done) * cfg.gamma * tq.detach()
    qf1_loss, qf2_loss = F.mse_loss(q1p, td.detach()), F.mse_loss(q2p, td.detach())
    ca, clp = (x.detach() for x in sample(obs, nz[:B, :N]))
    cna, cnlp = (x.detach() for x in sample(nobs, nz[B:, :N]))
    ra = rand[0]
    cat = []
    for qk, qp in ((q1, q1p), (q2, q2p)):
        qr, qc, qn = Q(qk, obs, ra), Q(qk, obs, ca), Q(qk, obs, cna)
        if cfg.cql_importance_sample:
            rd = math.log((0.5 / ma) ** A)
            cat.append(torch.cat([qr - rd, qn - cnlp, qc - clp], 1))
        else:
            cat.append(torch.cat([qr, qp.unsqueeze(1), qn, qc], 1))
    diffs = [torch.clamp(torch.logsumexp(c / cfg.cql_temp, 1) * cfg.cql_temp - qp,
                         cfg.cql_clip_diff_min, cfg.cql_clip_diff_max).mean()
             for c, qp in zip(cat, (q1p, q2p))]
    grads = {}
    if cfg.cql_lagrange:
        ap = torch.clamp(scalars["log_alpha_prime"].exp(), 0, 1e6)
        l1, l2 = (ap * cfg.cql_alpha * (d - cfg.cql_target_action_gap) for d in diffs)
        grads["log_alpha_prime"] = torch.autograd.grad((-l1 - l2) * 0.5, scalars["log_alpha_prime"],
                                                       retain_graph=True)[0]
    else:
        l1, l2 = (d * cfg.cql_alpha for d in diffs)
    qf_loss = qf1_loss + qf2_loss + l1 + l2
    if cfg.automatic_entropy_tuning:
        grads["log_alpha"] = torch.autograd.grad(alpha_loss, scalars["log_alpha"], retain_graph=True)[0]
    actor_params = [p for wb in actor for p in wb] + [scalars["log_std_multiplier"], scalars["log_std_offset"]]
    grads["actor"] = torch.autograd.grad(policy_loss, actor_params, retain_graph=True)
    grads["critic"] = torch.autograd.grad(qf_loss, [p for q in (q1, q2) for wb in q for p in wb])
    return grads, qf_loss, policy_loss


@pytest.mark.parametrize("options", [
    {},
    {"bc": True},
    {"cql_importance_sample": False, "cql_temp": 0.5},
    {"cql_lagrange": True, "cql_target_action_gap": 0.8, "cql_max_target_backup": True,
     "cql_clip_diff_min": -0.5, "backup_entropy": True},
    {"automatic_entropy_tuning": False, "alpha_multiplier": 0.3, "backup_entropy": True},
    {"cql_clip_diff_min": -0.2, "cql_clip_diff_max": 0.3, "cql_temp": 2.0},
], ids=["default", "bc_steps", "no_importance_sampling", "lagrange_max_backup", "fixed_alpha",
        "clipped"])
@pytest.mark.parametrize("critic_backward", ["fused", "autograd"])
def test_gradients_match_a_transcription_of_corl(options, critic_backward):
    """One backward of the summed losses (with the critics' part by hand, or by autograd) gives
    each parameter exactly the gradient of its own loss as CORL computes it (float64,
    max_action 2, perturbed targets; chunks of 2 states for the fused critic)."""
    options = dict(options)
    bc = options.pop("bc", False)
    cfg = CQLConfig(**SMALL, **options)
    agent = CQL(cfg, 5, 2, [7], max_action=2.0, critic_backward=critic_backward,
                chunk_rows=2 * 2 * 10)
    torch.manual_seed(0)
    with torch.no_grad():
        for module in (agent.actor, agent.critic, agent.critic_target):
            module.double()
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
        for name in ("log_std_multiplier", "log_std_offset", "log_alpha", "log_alpha_prime"):
            getattr(agent, name).data = getattr(agent, name).data.double() + 0.1
    batch = random_batch(1, 16, 5, 2, seed=1, max_action=2.0, dtype=torch.float64)
    noise, rand = (x.double() for x in agent._draw_noise(1, 16))
    total, metrics = agent._losses_eager(batch.observations, batch.actions, batch.rewards,
                                         batch.next_observations, batch.dones, noise, rand, bc,
                                         critic_backward == "fused")
    total.backward()
    want, qf_loss, policy_loss = corl_gradients(agent, batch, noise, rand, cfg, bc)
    assert metrics["critic_loss"].item() == pytest.approx(qf_loss.item(), rel=1e-12)
    assert metrics["actor_loss"].item() == pytest.approx(policy_loss.item(), rel=1e-12, abs=1e-12)
    def layer_grads(mlp, m):
        for layer in mlp.layers:  # the bias is stored padded; its padding gets no gradient
            yield layer.weight.grad[m]
            yield layer.bias_padded.grad[m, 0, :layer.out_features]
            assert not layer.bias_padded.grad[m, 0, layer.out_features:].any()

    got_actor = list(layer_grads(agent.actor, 0))
    got_actor += [agent.log_std_multiplier.grad[0], agent.log_std_offset.grad[0]]
    for got, ref in zip(got_actor, want["actor"], strict=True):
        torch.testing.assert_close(got.reshape(ref.shape), ref, rtol=1e-9, atol=1e-12)
    got_critic = [g for k in (0, 1) for g in layer_grads(agent.critic, k)]
    for got, ref in zip(got_critic, want["critic"], strict=True):
        torch.testing.assert_close(got.reshape(ref.shape), ref, rtol=1e-9, atol=1e-12)
    for name in ("log_alpha", "log_alpha_prime"):
        if name in want:
            torch.testing.assert_close(getattr(agent, name).grad[0], want[name], rtol=1e-9, atol=1e-12)
        else:
            assert getattr(agent, name).grad is None


# ----------------------------------------------------------------------------- TD values
def test_critic_learns_td_values_and_the_conservative_gap():
    """Constant reward 1, γ = 0.5; transitions whose first observation feature is +1 are
    terminal. Without the CQL term Q → 1 on terminal transitions and v = (1 + 0.3 γ) / (1 - 0.7 γ)
    on the others (30 % of next states are terminal ones); with it, Q at the (single) data
    action stays higher than away from it, and lower than the unregularised value."""
    torch.manual_seed(0)
    n = 512
    term = torch.rand(n) < 0.3
    obs = torch.randn(n, 3)
    obs[:, 0] = torch.where(term, 1.0, -1.0)
    next_obs = obs[torch.randperm(n)]
    gamma = 0.5
    v = (1 + 0.3 * gamma) / (1 - 0.7 * gamma)

    def train(cql_alpha):
        cfg = CQLConfig(actor_hidden_dims=(32, 32), critic_hidden_dims=(64, 64), cql_n_actions=4,
                        gamma=gamma, tau=0.05, critic_lr=3e-3, actor_lr=1e-3, cql_alpha=cql_alpha)
        agent = CQL(cfg, 3, 1, [0])
        g = torch.Generator().manual_seed(1)
        for _ in range(400):
            idx = torch.randint(0, n, (1, 128), generator=g)
            agent.update(Batch(obs[idx], torch.zeros(1, 128, 1), torch.ones(1, 128), next_obs[idx],
                               term[idx].float()))
        return agent

    def q_at(agent, a):
        x = torch.cat([obs, torch.full((n, 1), a)], 1).unsqueeze(0).expand(2, n, 4)
        with torch.no_grad():
            return agent.critic(x).squeeze(-1).amin(0)

    plain = train(0.0)
    q0 = q_at(plain, 0.0)
    assert q0[term].mean().item() == pytest.approx(1.0, abs=0.1)
    assert q0[~term].mean().item() == pytest.approx(v, abs=0.1)
    conservative = train(1.0)
    qc0, qc_far = q_at(conservative, 0.0), q_at(conservative, 0.9)
    assert (qc0 - qc_far).mean().item() > 0.5
    assert qc0[~term].mean().item() < v - 0.1


# ----------------------------------------------------------------------------- learning
def _expert(obs):
    """Energy-pumping swing-up with a PD balancer near the top (Pendulum-v1: θ̈ = 15 sin θ + 3 u)."""
    c, s, w = obs[..., 0], obs[..., 1], obs[..., 2]
    th = np.arctan2(s, c)
    energy = 0.5 * w ** 2 + 15 * c
    return np.where(c > 0.85, np.clip(-(10 * th + 2 * w), -2, 2),
                    np.clip(0.5 * (15.0 - energy) * w, -2, 2))[..., None]


PENDULUM_START = {"x_init": 0.5, "y_init": 1.0}  # |θ| <= 0.5, |θ̇| <= 1: must balance


def _pendulum_dataset(episodes=20, seed=0):
    """Noisy expert (σ 0.3) with 20 % uniform actions, clipped to ±1.9: 4000 transitions."""
    import gymnasium as gym

    rng = np.random.default_rng(seed)
    env = gym.make_vec("Pendulum-v1", num_envs=episodes, vectorization_mode="sync")
    obs, _ = env.reset(seed=seed, options=PENDULUM_START)
    rows = []
    for _ in range(200):
        a = _expert(obs) + 0.3 * rng.standard_normal((episodes, 1))
        rnd = rng.random(episodes) < 0.2
        a[rnd] = rng.uniform(-1.9, 1.9, (int(rnd.sum()), 1))
        a = np.clip(a, -1.9, 1.9).astype(np.float32)
        next_obs, r, *_ = env.step(a)
        rows.append((obs, a, r, next_obs))
        obs = next_obs
    env.close()
    return [np.concatenate(x).astype(np.float32) for x in zip(*rows)]


def _pendulum_returns(policy, members, episodes=10, seed=100):
    """Mean return per member of `policy(obs (S, E, 3)) -> (S, E, 1)` over `episodes` episodes."""
    import gymnasium as gym

    envs = [gym.make_vec("Pendulum-v1", num_envs=episodes, vectorization_mode="sync")
            for _ in range(members)]
    obs = np.stack([e.reset(seed=seed, options=PENDULUM_START)[0] for e in envs])
    returns = np.zeros((members, episodes))
    for _ in range(200):
        actions = policy(obs)
        for i, env in enumerate(envs):
            obs[i], r, *_ = env.step(actions[i])
            returns[i] += r
    for env in envs:
        env.close()
    return returns.mean(axis=1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_learns_pendulum(precision):
    """Two seeds, 600 updates on 4000 noisy-expert transitions: both balance (return > -500;
    expert -26, behaviour about -110). Doing nothing scores -655, the best constant torque about
    -1010, uniform random -870; a flipped actor or CQL sign, or a policy that ignores its
    observations, scores below -750 (checked once by hand)."""
    obs, act, rew, next_obs = _pendulum_dataset()
    mean, std = obs.mean(0), obs.std(0) + 1e-3
    data = [torch.from_numpy(x) for x in ((obs - mean) / std, act, rew, (next_obs - mean) / std)]
    cfg = CQLConfig(actor_hidden_dims=(64, 64), critic_hidden_dims=(64, 64), cql_n_actions=4,
                    actor_lr=3e-3, critic_lr=1e-3, gamma=0.9, tau=0.02, alpha_multiplier=0.1)
    agent = CQL(cfg, 3, 1, [0, 1], max_action=2.0)
    agent.set_precision(precision)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        idx = torch.randint(0, len(obs), (2, 128), generator=g)
        metrics = agent.update(Batch(data[0][idx], data[1][idx], data[2][idx], data[3][idx],
                                     torch.zeros(2, 128)))
    assert all(torch.isfinite(v).all() for v in metrics.values())

    def policy(o):
        return agent.act(torch.from_numpy((o - mean) / std)).numpy()

    returns = _pendulum_returns(policy, 2)
    assert (returns > -500).all(), returns


# ----------------------------------------------------------------------------- checkpoints, members
@pytest.mark.parametrize("options", [{}, {"cql_lagrange": True, "cql_max_target_backup": True,
                                          "bc_steps": 2, "target_update_period": 2}])
def test_exact_resume(options):
    cfg = CQLConfig(**SMALL, **options)
    batches = [random_batch(2, 16, 4, 2, seed=i) for i in range(6)]
    a = CQL(cfg, 4, 2, [0, 1])
    for b in batches[:3]:
        a.update(b)
    state = a.state_dict()
    rest_a = [a.update(b) for b in batches[3:]]
    acts_a = a.act(batches[0].observations, deterministic=False)
    b_agent = CQL(cfg, 4, 2, [0, 1])
    b_agent.load_state_dict(state)
    assert b_agent.step == 3
    rest_b = [b_agent.update(b) for b in batches[3:]]
    acts_b = b_agent.act(batches[0].observations, deterministic=False)
    for ma, mb in zip(rest_a, rest_b):
        assert ma.keys() == mb.keys()
        for k in ma:
            assert torch.equal(ma[k], mb[k]), k
    ta, tb = all_tensors(a), all_tensors(b_agent)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert torch.equal(acts_a, acts_b)
    # the snapshot was not changed by the updates after it
    assert not torch.equal(state["critic"]["layers.0.weight"], a.critic.layers[0].weight)


def test_members_are_independent():
    cfg = CQLConfig(**SMALL)
    seeds = [3, 5, 7]
    batches = [random_batch(3, 16, 4, 2, seed=i) for i in range(3)]
    many = CQL(cfg, 4, 2, seeds)
    single = CQL(cfg, 4, 2, [5])
    tm, ts = all_tensors(many), all_tensors(single)
    for k in ts:  # member 1 of the 3-seed agent (critics 2, 3) is the 1-seed agent exactly
        sl = slice(2, 4) if k.startswith("critic") else slice(1, 2)
        assert torch.equal(tm[k][sl], ts[k]), k
    for b in batches:
        mm = many.update(b)
        ms = single.update(member_slice(b, 1))
    for k in ms:
        torch.testing.assert_close(mm[k][1:2], ms[k], rtol=1e-5, atol=1e-6)
    tm, ts = all_tensors(many), all_tensors(single)
    for k in ts:
        sl = slice(2, 4) if k.startswith("critic") else slice(1, 2)
        torch.testing.assert_close(tm[k][sl], ts[k], rtol=1e-5, atol=1e-6)
    obs = batches[0].observations
    torch.testing.assert_close(many.act(obs)[1:2], single.act(obs[1:2]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"automatic_entropy_tuning": False},
                                     {"cql_lagrange": True}, {"bc_steps": 1}])
def test_every_parameter_steps_once_per_update(options):
    """Only parameters that get a gradient are in the optimiser (log α with tuning, log α' with
    the Lagrangian), and each takes exactly one Adam step per update."""
    agent = CQL(CQLConfig(**SMALL, **options), 4, 2, [0, 1])
    for _ in range(2):
        agent.update(random_batch(2, 8, 4, 2))
    steps = [agent.optimizer.state[p]["step"].item() for group in agent.optimizer.param_groups
             for p in group["params"]]
    assert steps and all(s == 2 for s in steps), steps
    n_params = sum(len(g["params"]) for g in agent.optimizer.param_groups)
    expected = (len(list(agent.actor.parameters())) + 2 + len(list(agent.critic.parameters()))
                + options.get("automatic_entropy_tuning", True) + options.get("cql_lagrange", False))
    assert n_params == expected


# ----------------------------------------------------------------------------- interface
def test_act_shapes_range_and_validation():
    agent = CQL(CQLConfig(**SMALL), 4, 2, [0, 1], max_action=3.0)
    obs = torch.randn(2, 5, 4) * 10
    for det in (True, False):
        a = agent.act(obs, deterministic=det)
        assert a.shape == (2, 5, 2) and a.abs().max() <= 3.0
    with pytest.raises(ValueError, match="observations shaped"):
        agent.act(torch.randn(3, 5, 4))


def test_config_defaults_are_corls_and_validation():
    c = CQLConfig()
    assert (c.actor_lr, c.critic_lr, c.gamma, c.tau, c.cql_alpha, c.cql_n_actions) == (3e-5, 3e-4, 0.99, 5e-3, 10.0, 10)
    assert c.critic_hidden_dims == (256, 256, 256) and c.actor_hidden_dims == (256, 256, 256)
    assert c.cql_importance_sample and not c.cql_lagrange and not c.backup_entropy
    assert c.cql_clip_diff_min == -math.inf and c.orthogonal_init and c.bc_steps == 0
    assert CQLConfig(critic_hidden_dims=[256, 256]).critic_hidden_dims == (256, 256)
    dataclasses.asdict(c)
    for bad in ({"cql_n_actions": 0}, {"tau": 0.0}, {"actor_lr": -1.0}, {"cql_temp": 0.0},
                {"cql_clip_diff_min": 1.0, "cql_clip_diff_max": 0.0}, {"critic_hidden_dims": []}):
        with pytest.raises(ValueError):
            CQLConfig(**bad)
    with pytest.raises(TypeError):
        CQL({"actor_lr": 1e-4}, 3, 1, [0])
    agent = CQL(CQLConfig(**SMALL), 3, 2, [0])
    assert agent.target_entropy == -2.0
    with pytest.raises(ValueError, match="algorithm"):
        agent.load_state_dict({**agent.state_dict(), "algorithm": "iql"})


def test_bf16_fused_critic_gradients_follow_fp32():
    """bf16 compute of the hand-written critic backward: fp32 gradients, pointing where the
    fp32 ones do (the fused and autograd paths in bf16 agree with each other too)."""
    grads = {}
    for name, precision, backward in [("fp32", "fp32", "fused"), ("bf16", "bf16", "fused"),
                                      ("bf16-autograd", "bf16", "autograd")]:
        agent = CQL(CQLConfig(**SMALL), 5, 2, [7], critic_backward=backward)
        agent.set_precision(precision)
        batch = random_batch(1, 64, 5, 2, seed=1)
        noise, rand = agent._draw_noise(1, 64)
        total, _ = agent._losses_eager(batch.observations, batch.actions, batch.rewards,
                                       batch.next_observations, batch.dones, noise, rand, False,
                                       backward == "fused")
        total.backward()
        grads[name] = torch.cat([p.grad.flatten() for p in agent.critic.parameters()])
        assert all(p.grad.dtype == torch.float32 for p in agent.critic.parameters())
    assert not torch.equal(grads["fp32"], grads["bf16"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(grads["fp32"], grads["bf16"], dim=0) > 0.99
    assert cos(grads["bf16"], grads["bf16-autograd"], dim=0) > 0.99
