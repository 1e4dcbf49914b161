"""Offline-to-online fine-tuning: it improves a weak policy, resumes exactly, mixes batches."""

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from offrl.algos import get_algorithm
from offrl.errors import UserError
from offrl.training.checkpoint import load_checkpoint
from offrl.training.config import load_config
from offrl.training.finetune import FinetuneConfig, MixedSampler, OfflineTable, finetune
from offrl.training.loop import train
from offrl.training.online import ReplayBuffer
from offrl.data.dataset import Transitions

ENV = "InvertedPendulum-v4"  # MuJoCo, 4-dim obs, 1-dim action in [-3, 3]; random play falls in ~6 steps


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def dataset():
    """2000 uniform-random steps: the policies trained on them barely balance (score ~4/100)."""
    from offrl.data.generate import rollout_uniform_random

    data = rollout_uniform_random(ENV, transitions=2000, seed=0, max_episode_steps=200,
                                  progress=False)
    data.metadata.update(dataset_id="inverted-pendulum-random-ft", env_id=ENV, sha256="cd" * 32,
                         ref_min_score=0.0, ref_max_score=200.0, max_episode_steps=200)
    return data


def offline_run(algo, dataset, root, steps=200):
    """A complete, deliberately weak offline run: tiny networks, 200 updates on random data."""
    cls = get_algorithm(algo)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    small = {f: [32, 32] for f in fields if f.endswith("hidden_dims")}
    if "cql_n_actions" in fields:
        small["cql_n_actions"] = 2
    config = load_config(algo, cls.config_class, None, algo_overrides=small, training_overrides=dict(
        steps=steps, batch_size=64, seeds=[0, 1], eval_every=100, eval_episodes=3, log_every=50,
        checkpoint_every=steps, tensorboard=False))
    return train(cls, dataset, config, out=root, progress=False, print_fn=quiet).run_dir


@pytest.fixture(scope="module")
def iql_run(dataset, tmp_path_factory):
    return offline_run("iql", dataset, tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def cql_run(dataset, tmp_path_factory):
    return offline_run("cql", dataset, tmp_path_factory.mktemp("runs"))


def rows(path, drop=("env_steps_per_s",)):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


def test_finetuning_improves_a_weak_offline_policy(iql_run, dataset):
    """IQL fine-tuning (seeded buffer, UTD 1) lifts a policy that cannot balance the pole.
    If the online phase did nothing (no updates, no online data), the score would stay put."""
    config = FinetuneConfig(online_steps=1000, eval_every=500, log_every=250,
                            checkpoint_every=1000, restart_lr_schedule=True)
    result = finetune(iql_run, dataset, config, progress=False, print_fn=quiet)
    s = result.summary
    assert result.status == "complete" and s["score"] == "normalized_score"
    offline = np.array([v["offline_score"] for v in s["seeds"].values()])
    final = np.array([v["final_score"] for v in s["seeds"].values()])
    assert offline.mean() < 10, offline  # weak to start with
    assert np.all(final > offline + 3) and final.mean() > offline.mean() + 8, (offline, final)
    for v in s["seeds"].values():
        assert sorted(map(int, v["curve"])) == [0, 500, 1000]
        assert min(v["curve"].values()) <= v["auc"] <= max(v["curve"].values())
        assert v["online_env_steps"] == 1000 and v["episodes"] > 10
    # the agent really took 1000 more updates and the buffer holds 1000 online rows per seed
    state = load_checkpoint(result.path / "checkpoints" / "latest.pt")
    assert state["agent"]["step"] == 200 + 1000 and state["buffer"]["size"] == 1000
    metrics = rows(result.path / "metrics.csv")
    assert metrics[-1]["gradient_step"] == "1200"
    # step 0 of the curve is the offline run's last evaluation, on the same env seeds
    offline_rows = [r for r in rows(iql_run / "evaluations.csv") if r["step"] == "200"]
    start = [r for r in rows(result.path / "evaluations.csv") if r["step"] == "0"]
    assert [r["env_seed"] for r in start] == [r["env_seed"] for r in offline_rows]
    assert json.loads((result.path / "summary.json").read_text())["seeds"] == json.loads(
        json.dumps(s["seeds"]))


def test_resume_mid_online_is_exact(cql_run, dataset):
    """Cal-QL online from a CQL run, stopped after 70 env steps and resumed, equals the same
    run uninterrupted: agent, replay buffer (contents, position, returns-to-go), envs, CSVs."""
    config = FinetuneConfig(online_steps=160, mixing_ratio=0.5, eval_every=80, log_every=40,
                            checkpoint_every=1000, buffer_size=120)  # the ring wraps
    kw = dict(algo="cal_ql", progress=False, print_fn=quiet)
    whole = finetune(cql_run, dataset, config, tag="whole", **kw)
    first = finetune(cql_run, dataset, config, tag="split", stop_after=70, **kw)
    assert first.status == "interrupted" and first.step == 70
    second = finetune(cql_run, dataset, config, tag="split", **kw)
    assert second.status == "complete"
    a = load_checkpoint(whole.path / "checkpoints" / "latest.pt")
    b = load_checkpoint(second.path / "checkpoints" / "latest.pt")
    for key in ("step", "agent", "buffer", "envs", "sampler", "episode_start", "episode_success"):
        assert same_state(a[key], b[key]), key
    for name in ("metrics.csv", "episodes.csv", "evaluations.csv"):
        assert rows(whole.path / name) == rows(second.path / name), name
    meta = json.loads((second.path / "finetune.json").read_text())
    assert meta["resumed"][0]["step"] == 70 and meta["algo"] == "cal_ql"

    # returns-to-go of online rows: finite once their episode ended, -inf while it runs
    buf = a["buffer"]
    pos, cap = buf["position"], buf["capacity"]
    order = (np.arange(cap) + pos) % cap  # oldest first (the buffer is full)
    r = buf["data"]["rewards"][0].numpy()[order]
    done = buf["data"]["terminals"][0].numpy()[order]
    ends = (buf["data"]["terminals"][0] + buf["data"]["timeouts"][0]).numpy()[order] > 0
    mc = buf["data"]["mc_returns"][0].numpy()[order]
    last_end = np.flatnonzero(ends)[-1]
    assert np.all(np.isneginf(mc[last_end + 1:]))
    g, gamma = 0.0, 0.99
    for t in range(last_end, -1, -1):
        if ends[t]:
            g = 0.0
        g = r[t] + gamma * (0.0 if done[t] else g)
        assert mc[t] == pytest.approx(g, rel=1e-5), t


def test_mixed_sampler_ratio_and_seeded_buffer():
    n_off, S = 50, 2
    off = Transitions(observations=np.zeros((n_off, 3), np.float32), actions=np.zeros((n_off, 1), np.float32),
                      rewards=np.ones(n_off, np.float32), next_observations=np.zeros((n_off, 3), np.float32),
                      dones=np.zeros(n_off, bool), labelled=np.ones(n_off, bool))
    buffer = ReplayBuffer(S, 100, 3, 1)
    for _ in range(150):  # wraps: 100 online rows, reward 2
        buffer.add({"observations": np.zeros((S, 3)), "actions": np.zeros((S, 1)),
                    "rewards": np.full(S, 2.0), "next_observations": np.zeros((S, 3)),
                    "terminals": np.zeros(S), "timeouts": np.zeros(S)})
    table = OfflineTable(off, None, "cpu")
    half = MixedSampler(table, buffer, [0, 1], 64, 0.5, "cpu").sample()
    assert half.rewards.shape == (S, 64)
    assert torch.all(half.rewards[:, :32] == 1) and torch.all(half.rewards[:, 32:] == 2)
    uniform = MixedSampler(table, buffer, [0, 1], 3000, None, "cpu").sample()
    frac = (uniform.rewards == 1).float().mean().item()
    assert abs(frac - n_off / (n_off + 100)) < 0.03
    # member s draws from its own stream: the same seed gives the same batch beside another
    solo = MixedSampler(table, ReplayBuffer(1, 100, 3, 1), [1], 64, 1.0, "cpu").sample()
    pair = MixedSampler(table, buffer, [0, 1], 64, 1.0, "cpu").sample()
    assert torch.equal(solo.rewards[0], pair.rewards[1])


def test_refuses_incomplete_runs_other_algos_and_changed_configs(iql_run, cql_run, dataset, tmp_path):
    with pytest.raises(UserError, match="can be fine-tuned as"):
        finetune(iql_run, dataset, FinetuneConfig(online_steps=5), algo="cql", print_fn=quiet)
    info_path = cql_run / "run.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "status": "interrupted"}))
    try:
        with pytest.raises(UserError, match="not complete"):
            finetune(cql_run, dataset, FinetuneConfig(online_steps=5), print_fn=quiet)
    finally:
        info_path.write_text(json.dumps(info))
    cfg = FinetuneConfig(online_steps=4, eval_every=4, log_every=2)
    finetune(cql_run, dataset, cfg, tag="cfg", progress=False, print_fn=quiet)
    with pytest.raises(UserError, match="different config"):
        finetune(cql_run, dataset, dataclasses.replace(cfg, utd=2), tag="cfg", print_fn=quiet)
    with pytest.raises(UserError, match="sha256"):
        other = dataset.replace(metadata={**dataset.metadata, "sha256": "ee" * 32})
        finetune(cql_run, other, cfg, tag="sha", print_fn=quiet)


def test_cli_finetune(cql_run, dataset, tmp_path, capsys):
    """`offrl finetune RUN --online-steps N` reads the data from --dataset (an HDF5 file here)."""
    from offrl.cli import main
    from offrl.data.hdf5 import read_hdf5, write_hdf5

    path = tmp_path / "data.hdf5"
    write_hdf5(dataset, path)
    loaded = read_hdf5(path)
    loaded.metadata.update({k: dataset.metadata[k] for k in ("dataset_id", "env_id", "ref_min_score",
                                                             "ref_max_score", "max_episode_steps")})
    run = offline_run("td3_bc", loaded, tmp_path / "runs", steps=20)
    code = main(["finetune", str(run), "--online-steps", "6", "--eval-every", "3", "--utd", "2",
                 "--mixing-ratio", "0.25", "--dataset", str(path), "--no-progress", "--tag", "cli",
                 "--set", "finetune.log_every=3"])
    assert code == 0
    summary = json.loads((run / "finetune-cli" / "summary.json").read_text())
    assert summary["algo"] == "td3_bc" and summary["online_env_steps_done"] == 6
    state = load_checkpoint(run / "finetune-cli" / "checkpoints" / "latest.pt")
    assert state["agent"]["step"] == 20 + 12
    assert "mixing_ratio = 0.25" in (run / "finetune-cli" / "config.toml").read_text()
