"""SAC: rlkit's update, per-seed independence, exact resume, the exported policy, and learning."""

import numpy as np
import pytest
import torch

from offrl.algos.base import Batch
from offrl.algos.sac import SAC, SACConfig
from offrl.data.policies import PolicyFileError, TanhGaussianPolicy, load_policy, save_policy
from offrl.training.behaviour import BehaviourConfig, evaluation_curve, train_behaviour

SMALL = dict(actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32))


def _batch(S, B=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(S, B, 11, generator=g), torch.rand(S, B, 3, generator=g) * 2 - 1,
                 torch.randn(S, B, generator=g), torch.randn(S, B, 11, generator=g),
                 (torch.rand(S, B, generator=g) < 0.1).float())


def test_config_defaults_are_the_sac_paper_and_checked():
    c = SACConfig()
    assert (c.actor_lr, c.critic_lr, c.alpha_lr, c.gamma, c.tau) == (3e-4, 3e-4, 3e-4, 0.99, 5e-3)
    assert c.actor_hidden_dims == (256, 256) and c.automatic_entropy_tuning
    with pytest.raises(ValueError, match="tau"):
        SACConfig(tau=0)
    with pytest.raises(ValueError, match="actor_hidden_dims"):
        SACConfig(actor_hidden_dims=())


def test_update_matches_a_transcription_of_rlkit():
    """One step equals rlkit's SACTrainer step written out with separate optimisers."""
    agent = SAC(SACConfig(**SMALL), 11, 3, [7])
    ref_actor = [p.detach().clone().requires_grad_() for p in agent.actor.parameters()]
    ref_critic = [p.detach().clone().requires_grad_() for p in agent.critic.parameters()]
    ref_target = [p.detach().clone() for p in agent.critic_target.parameters()]
    log_alpha = torch.zeros(1, requires_grad=True)
    batch = _batch(1)
    noise = torch.empty(1, 2, 64, 3)
    g = torch.Generator()
    g.set_state(agent._update_generators[0].get_state())
    noise[0].normal_(generator=g)

    def mlp(x, params):  # params: [w0, b0(padded), w1, b1, ...]
        n = len(params) // 2
        for i in range(n):
            w, b = params[2 * i], params[2 * i + 1]
            x = torch.baddbmm(b[..., :w.shape[1]], x, w.transpose(1, 2))
            if i < n - 1:
                x = torch.relu(x)
        return x

    def policy(obs, eps):
        mean, log_std = mlp(obs, ref_actor).split(3, -1)
        log_std = log_std.clamp(-20, 2)
        u = mean + log_std.exp() * eps
        # rlkit: Normal(μ, σ).log_prob(u) - log(1 - tanh(u)² + 1e-6); here without the epsilon
        log_det = 2 * (np.log(2) - u - torch.nn.functional.softplus(-2 * u))
        log_pi = (torch.distributions.Normal(mean, log_std.exp()).log_prob(u) - log_det).sum(-1)
        return torch.tanh(u), log_pi

    def q(params, obs, act):
        sa = torch.cat([obs, act], -1).expand(2, -1, -1)
        return mlp(sa, params).squeeze(-1)  # (2, B)

    obs, act, rew, nobs, done = (batch.observations, batch.actions, batch.rewards[0],
                                 batch.next_observations, batch.dones[0])
    new_a, log_pi = policy(obs, noise[:, 0])
    alpha = log_alpha.exp().detach()
    alpha_loss = -(log_alpha * (log_pi + agent.target_entropy).detach()).mean()
    q_new = torch.min(q([p.detach() for p in ref_critic], obs, new_a), dim=0).values
    policy_loss = (alpha * log_pi[0] - q_new).mean()
    with torch.no_grad():
        na, nlp = policy(nobs, noise[:, 1])
        tq = torch.min(q(ref_target, nobs, na), dim=0).values - alpha * nlp[0]
        y = rew + 0.99 * (1 - done) * tq
    qp = q(ref_critic, obs, act)
    qf_loss = ((qp[0] - y) ** 2).mean() + ((qp[1] - y) ** 2).mean()
    opts = [torch.optim.Adam(ref_actor, lr=3e-4), torch.optim.Adam(ref_critic, lr=3e-4),
            torch.optim.Adam([log_alpha], lr=3e-4)]
    for o in opts:
        o.zero_grad()
    (policy_loss + alpha_loss + qf_loss).backward()
    for o in opts:
        o.step()

    metrics = agent.update(batch)
    assert torch.allclose(metrics["critic_loss"], qf_loss.detach(), rtol=1e-5)
    assert torch.allclose(metrics["actor_loss"], policy_loss.detach(), rtol=1e-5, atol=1e-6)
    for p, r in zip(agent.actor.parameters(), ref_actor):
        assert torch.allclose(p, r, atol=1e-6)
    for p, r in zip(agent.critic.parameters(), ref_critic):
        assert torch.allclose(p, r, atol=1e-6)
    assert torch.allclose(agent.log_alpha, log_alpha.detach(), atol=1e-7)
    expected_target = [t + 5e-3 * (c.detach() - t) for t, c in zip(ref_target, ref_critic)]
    for p, r in zip(agent.critic_target.parameters(), expected_target):
        assert torch.allclose(p, r, atol=1e-6)


def test_members_train_exactly_like_one_seed_runs():
    many, one = SAC(SACConfig(**SMALL), 11, 3, [3, 9]), SAC(SACConfig(**SMALL), 11, 3, [9])
    for i in range(4):
        b = _batch(2, seed=i)
        many.update(b)
        one.update(Batch(*(x[1:2] for x in (b.observations, b.actions, b.rewards,
                                             b.next_observations, b.dones))))
    for p, q in zip(many.actor.parameters(), one.actor.parameters()):
        assert torch.equal(p[1:2], q)
    for p, q in zip(many.critic.parameters(), one.critic.parameters()):
        assert torch.equal(p[2:4], q)
    assert torch.equal(many.log_alpha[1:], one.log_alpha)


def test_state_dict_resume_is_exact():
    a = SAC(SACConfig(**SMALL), 11, 3, [1, 2])
    for i in range(3):
        a.update(_batch(2, seed=i))
    b = SAC(SACConfig(**SMALL), 11, 3, [1, 2])
    b.load_state_dict(a.state_dict())
    for i in range(3, 6):
        ma, mb = a.update(_batch(2, seed=i)), b.update(_batch(2, seed=i))
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
    obs = torch.randn(2, 4, 11)
    assert torch.equal(a.act(obs, deterministic=False), b.act(obs, deterministic=False))
    with pytest.raises(ValueError, match="seeds"):
        SAC(SACConfig(**SMALL), 11, 3, [1]).load_state_dict(a.state_dict())


def test_exported_policy_acts_like_the_agent(tmp_path):
    agent = SAC(SACConfig(**SMALL), 11, 3, [0, 5], max_action=2.0)
    agent.update(_batch(2))
    policy = TanhGaussianPolicy.from_weights(agent.policy_weights(1), "Hopper-v5", {"step": 1})
    path = save_policy(tmp_path / "p.pt", policy)
    loaded = load_policy(path)
    obs = np.random.default_rng(0).standard_normal((6, 11)).astype(np.float32)
    expected = agent.act(torch.as_tensor(obs).expand(2, -1, -1))[1].numpy()
    np.testing.assert_allclose(loaded.act(obs), expected, rtol=1e-5, atol=1e-6)
    assert loaded.env_id == "Hopper-v5" and loaded.meta == {"step": 1}
    assert np.abs(loaded.act(obs, np.ones((6, 3)))).max() <= 2.0


def test_policy_file_errors(tmp_path):
    with pytest.raises(PolicyFileError, match="does not exist"):
        load_policy(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a policy")
    with pytest.raises(PolicyFileError, match="cannot read"):
        load_policy(tmp_path / "junk.pt")
    torch.save({"format": 99}, tmp_path / "other.pt")
    with pytest.raises(PolicyFileError, match="format"):
        load_policy(tmp_path / "other.pt")
    agent = SAC(SACConfig(**SMALL), 11, 3, [0])
    good = TanhGaussianPolicy.from_weights(agent.policy_weights(0), "Hopper-v5").to_dict()
    bad = dict(good, biases=good["biases"][:-1])
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(PolicyFileError, match="one bias per weight"):
        load_policy(tmp_path / "bad.pt")
    nan = dict(good, weights=[w.clone() for w in good["weights"]])
    nan["weights"][0][0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(PolicyFileError, match="non-finite"):
        load_policy(tmp_path / "nan.pt")


@pytest.mark.slow
def test_sac_learns_pendulum(tmp_path):
    """5k env steps of SAC swing the pendulum up: a uniform-random policy scores about -1200 and
    a broken update (wrong sign, no entropy term, critics not learning) stays far below -400."""
    config = BehaviourConfig(env_id="Pendulum-v1", steps=5000, learning_starts=500,
                             eval_every=5000, eval_episodes=5, checkpoint_every=5000,
                             log_every=1000, batch_size=128, record_physics=False)
    sac = SACConfig(actor_hidden_dims=(64, 64), critic_hidden_dims=(64, 64), actor_lr=1e-3,
                    critic_lr=1e-3, alpha_lr=1e-3)
    train_behaviour(tmp_path / "run", config, sac, seeds=[0], progress=False)
    deterministic = evaluation_curve(tmp_path / "run", "deterministic")[0][5000]
    stochastic = evaluation_curve(tmp_path / "run", "stochastic")[0][5000]
    assert deterministic > -400 and stochastic > -600, (deterministic, stochastic)
