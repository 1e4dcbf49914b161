"""IQL: CORL's math, per-seed independence, lr schedule, exact resume, and learning."""

import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal
from torch.optim.lr_scheduler import CosineAnnealingLR

from algo_helpers import evaluate_agent, make_pendulum_dataset, random_transitions, train
from offrl.algos import IQL, IQLConfig, TransitionSampler, get_algorithm

SMALL = dict(actor_hidden_dims=(64, 64), critic_hidden_dims=(64, 64), value_hidden_dims=(64, 64))
NETS = ("qf", "q_target", "vf", "actor")


def _agent(seeds, **kw):
    max_action = kw.pop("max_action", 1.0)
    return IQL(IQLConfig(**kw), 11, 3, seeds, max_action=max_action)


def test_config_defaults_are_corl_and_checked():
    c = IQLConfig()
    assert (c.actor_lr, c.qf_lr, c.vf_lr, c.gamma, c.tau) == (3e-4, 3e-4, 3e-4, 0.99, 0.005)
    assert (c.beta, c.expectile, c.exp_adv_max, c.deterministic_actor) == (3.0, 0.7, 100.0, False)
    assert c.max_steps == 1_000_000 and c.critic_hidden_dims == (256, 256)
    with pytest.raises(ValueError, match="expectile"):
        IQLConfig(expectile=1.0)
    assert get_algorithm("iql") is IQL


def test_adapt_config_sets_the_decay_length():
    c = IQL.adapt_config(IQLConfig(), total_steps=12345)
    assert c.max_steps == 12345 and IQLConfig().max_steps == 1_000_000


def test_members_start_and_train_exactly_like_one_seed_runs():
    """Member s of a 3-seed run is bit-identical to a 1-seed run with seeds[s] (1 CPU thread)."""
    tr = random_transitions(2000)
    seeds = [4, 8, 15]
    many, smp_many = _agent(seeds, **SMALL), TransitionSampler(tr, seeds, 64)
    runs = [(_agent([s], **SMALL), TransitionSampler(tr, [s], 64)) for s in seeds]
    for step in range(6):
        if step == 0:
            for s, (agent, _) in enumerate(runs):
                for net in NETS:
                    for p, q in zip(getattr(many, net).parameters(), getattr(agent, net).parameters()):
                        k = p.shape[0] // 3
                        assert torch.equal(p[s * k:(s + 1) * k], q), net
        m = many.update(smp_many.sample())
        singles = [agent.update(smp.sample()) for agent, smp in runs]
    for s, (agent, _) in enumerate(runs):
        for key in m:
            assert torch.equal(m[key][s:s + 1], singles[s][key]), key
        for net in NETS:
            for p, q in zip(getattr(many, net).parameters(), getattr(agent, net).parameters()):
                k = p.shape[0] // 3
                assert torch.equal(p[s * k:(s + 1) * k], q), net
        assert torch.equal(many.log_std_padded[s], agent.log_std_padded[0])


# ---------------------------------------------------------------------- CORL reference
def _mlp(dims, out_act=None):
    layers = []
    for i in range(len(dims) - 2):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
    layers.append(nn.Linear(dims[-2], dims[-1]))
    if out_act:
        layers.append(out_act())
    return nn.Sequential(*layers)


def _load_member(seq, ensemble, m):
    with torch.no_grad():
        for lin, layer in zip([x for x in seq if isinstance(x, nn.Linear)], ensemble.layers):
            lin.weight.copy_(layer.weight[m])
            lin.bias.copy_(layer.bias[m, 0])


def _member_params(ensemble, m):
    return [t for layer in ensemble.layers for t in (layer.weight[m], layer.bias[m, 0])]


@pytest.mark.parametrize("deterministic", [False, True])
def test_matches_corl_iql_step_for_step(deterministic):
    """CORL's ImplicitQLearning.train transcribed (same weights and batches) gives the same nets,
    including the actor's cosine learning-rate decay."""
    seeds, s, max_steps = [3, 5], 0, 6
    c = IQLConfig(max_steps=max_steps, deterministic_actor=deterministic)
    agent = IQL(c, 11, 3, seeds)
    smp = TransitionSampler(random_transitions(3000), seeds, 256)

    q1, q2, vf = _mlp([14, 256, 256, 1]), _mlp([14, 256, 256, 1]), _mlp([11, 256, 256, 1])
    actor_net = _mlp([11, 256, 256, 3], nn.Tanh)
    _load_member(q1, agent.qf, 2 * s), _load_member(q2, agent.qf, 2 * s + 1)
    _load_member(vf, agent.vf, s), _load_member(actor_net, agent.actor, s)
    log_std = nn.Parameter(torch.zeros(3))
    q1_t, q2_t = copy.deepcopy(q1), copy.deepcopy(q2)
    q_opt = torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=3e-4)
    v_opt = torch.optim.Adam(vf.parameters(), lr=3e-4)
    actor_params = [*actor_net.parameters()] + ([] if deterministic else [log_std])
    a_opt = torch.optim.Adam(actor_params, lr=3e-4)
    sched = CosineAnnealingLR(a_opt, max_steps)

    def twin(a, b, obs, act):
        sa = torch.cat([obs, act], 1)
        return a(sa).squeeze(-1), b(sa).squeeze(-1)

    for _ in range(max_steps + 2):  # past T_max: the cosine turns back up, as in CORL
        batch = smp.sample()
        agent.update(batch)
        obs, act, rew = batch.observations[s], batch.actions[s], batch.rewards[s]
        next_obs, done = batch.next_observations[s], batch.dones[s]
        with torch.no_grad():
            next_v = vf(next_obs).squeeze(-1)
        # _update_v
        with torch.no_grad():
            target_q = torch.min(*twin(q1_t, q2_t, obs, act))
        v = vf(obs).squeeze(-1)
        adv = target_q - v
        v_loss = torch.mean(torch.abs(c.expectile - (adv < 0).float()) * adv ** 2)
        v_opt.zero_grad(), v_loss.backward(), v_opt.step()
        # _update_q
        targets = rew + (1.0 - done.float()) * c.gamma * next_v.detach()
        qs = twin(q1, q2, obs, act)
        q_loss = sum(nn.functional.mse_loss(q, targets) for q in qs) / len(qs)
        q_opt.zero_grad(), q_loss.backward(), q_opt.step()
        with torch.no_grad():
            for tp, sp in zip([*q1_t.parameters(), *q2_t.parameters()], [*q1.parameters(), *q2.parameters()]):
                tp.copy_((1 - c.tau) * tp + c.tau * sp)
        # _update_policy
        exp_adv = torch.exp(c.beta * adv.detach()).clamp(max=100.0)
        mean = actor_net(obs)
        if deterministic:
            bc_losses = torch.sum((mean - act) ** 2, dim=1)
        else:
            std = torch.exp(log_std.clamp(-20.0, 2.0))
            bc_losses = -Normal(mean, std).log_prob(act).sum(-1)
        policy_loss = torch.mean(exp_adv * bc_losses)
        a_opt.zero_grad(), policy_loss.backward(), a_opt.step(), sched.step()

    assert agent.actor_optimizer.param_groups[0]["lr"] == pytest.approx(a_opt.param_groups[0]["lr"])
    pairs = [(q1, agent.qf, 2 * s), (q2, agent.qf, 2 * s + 1), (q1_t, agent.q_target, 2 * s),
             (q2_t, agent.q_target, 2 * s + 1), (vf, agent.vf, s), (actor_net, agent.actor, s)]
    for ref, ens, m in pairs:
        for p, q in zip(ref.parameters(), _member_params(ens, m)):
            torch.testing.assert_close(q, p.detach(), rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(agent.log_std_padded[s, 0, :3], log_std.detach(), rtol=1e-5, atol=2e-6)


def test_actor_lr_follows_the_cosine_and_critics_do_not_decay():
    agent = _agent([0], max_steps=10, **SMALL)
    smp = TransitionSampler(random_transitions(500), [0], 32)
    for t in range(1, 11):
        agent.update(smp.sample())
        expected = 3e-4 * (1 + math.cos(math.pi * t / 10)) / 2
        assert agent.actor_optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
    assert agent.q_optimizer.param_groups[0]["lr"] == agent.v_optimizer.param_groups[0]["lr"] == 3e-4


def test_target_critic_moves_every_step_and_padding_stays_zero():
    agent = _agent([0, 1], **SMALL)
    smp = TransitionSampler(random_transitions(500), [0, 1], 32)
    for _ in range(3):
        before = [p.detach().clone() for p in agent.q_target.parameters()]
        metrics = agent.update(smp.sample())
        assert all(not torch.equal(a, b) for a, b in zip(before, agent.q_target.parameters()))
    assert set(metrics) == {"value_loss", "q_loss", "actor_loss", "v_mean", "adv_mean"}
    assert all(v.shape == (2,) and not v.requires_grad for v in metrics.values())
    assert (agent.log_std_padded[..., 3:] == 0).all() and (agent.qf.layers[-1].bias_padded[..., 1:] == 0).all()


def test_exact_resume_is_bit_identical():
    tr = random_transitions(2000)
    seeds, k, m = [2, 3], 5, 4
    kw = dict(max_steps=9, **SMALL)
    full, smp_full = _agent(seeds, **kw), TransitionSampler(tr, seeds, 64)
    train(full, smp_full, k + m)

    first, smp_first = _agent(seeds, **kw), TransitionSampler(tr, seeds, 64)
    train(first, smp_first, k)
    buf = io.BytesIO()
    torch.save({"agent": first.state_dict(), "sampler": smp_first.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    resumed, smp_resumed = _agent(seeds, **kw), TransitionSampler(tr, seeds, 64)
    resumed.load_state_dict(saved["agent"])
    smp_resumed.load_state_dict(saved["sampler"])
    train(resumed, smp_resumed, m)

    a, b = full.state_dict(), resumed.state_dict()
    assert a["step"] == b["step"] == k + m
    for net in NETS:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)
    assert torch.equal(a["log_std_padded"], b["log_std_padded"])
    for opt in ("q_optimizer", "v_optimizer", "actor_optimizer"):
        assert a[opt]["param_groups"][0]["lr"] == b[opt]["param_groups"][0]["lr"]
        for i, st in a[opt]["state"].items():
            for key in st:
                assert torch.equal(st[key], b[opt]["state"][i][key]), (opt, key)
    assert a["actor_lr_schedule"] == b["actor_lr_schedule"]


def test_act_mean_and_samples():
    agent = _agent([0, 1], max_action=2.0, **SMALL)
    obs = torch.randn(2, 5, 11)
    a = agent.act(obs)
    assert a.shape == (2, 5, 3) and a.abs().max() <= 2.0 and torch.equal(a, agent.act(obs))
    sample = agent.act(obs, deterministic=False)
    assert sample.abs().max() <= 2.0 and not torch.equal(sample, a)


# ---------------------------------------------------------------------- learning
# Pendulum with 70% random torques (make_pendulum_dataset): BC about -840, a state-blind policy
# about -1260, the controller -163. Short-run settings for the toy task; CORL's β and expectile.
LEARN_CONFIG = dict(actor_hidden_dims=(64, 64), critic_hidden_dims=(64, 64),
                    value_hidden_dims=(64, 64), gamma=0.95, actor_lr=1e-3, qf_lr=1e-3, vf_lr=1e-3,
                    tau=0.02)
LEARN_STEPS, LEARN_THRESHOLD = 3000, -450.0


@pytest.mark.slow
@pytest.mark.parametrize("precision,compile", [("fp32", False), ("bf16", False), ("bf16", True)])
def test_learns_pendulum_beyond_behaviour_cloning(precision, compile):
    """Also in the fastest CPU path (bf16 and torch.compile), whose numbers the speed table
    reports."""
    tr, mean, std = make_pendulum_dataset(n_episodes=150, expert_prob=0.3, seed=0)
    seeds = [0, 1]
    agent = IQL(IQL.adapt_config(IQLConfig(**LEARN_CONFIG), total_steps=LEARN_STEPS), 3, 1, seeds,
                compile=compile)
    agent.set_precision(precision)
    metrics = train(agent, TransitionSampler(tr, seeds, 256), LEARN_STEPS)
    returns = evaluate_agent(agent, mean, std)
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert (returns > LEARN_THRESHOLD).all(), returns


@pytest.mark.slow
def test_compiled_agent_matches_eager():
    kw = dict(actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32), value_hidden_dims=(32, 32))
    tr = random_transitions(500)
    eager = IQL(IQLConfig(**kw), 11, 3, [0, 1])
    compiled = IQL(IQLConfig(**kw), 11, 3, [0, 1], compile=True)
    for agent in (eager, compiled):
        train(agent, TransitionSampler(tr, [0, 1], 32), 4)
    for net in NETS:
        for p, q in zip(getattr(eager, net).parameters(), getattr(compiled, net).parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
