"""The offline loop: configs, preprocessing, a tiny end-to-end run, exact resume."""

import csv
import dataclasses
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from offrl.algos.td3_bc import TD3BC
from offrl.data.dataset import Dataset
from offrl.errors import UserError
from offrl.training.checkpoint import load_checkpoint
from offrl.training.config import (ConfigError, TrainingConfig, baselines_dirs, load_config,
                                   read_config_file)
from offrl.training.logging import CsvLog, MetricAccumulator
from offrl.training.loop import prepare_transitions, train

ENV = "InvertedPendulum-v4"  # MuJoCo, 4-dim obs, 1-dim action in [-3, 3], short episodes
SHA = "ab" * 32


def quiet(*_):
    pass


def algorithm_classes():
    """The agents to run the loop with: every registered one once the registry exists."""
    try:
        from offrl.algos import get_algorithm
    except ImportError:
        return [TD3BC]
    classes = []
    for name in ("td3_bc", "iql", "cql"):
        try:
            classes.append(get_algorithm(name))
        except Exception:
            pass
    return classes or [TD3BC]


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    """500 uniform-random steps of InvertedPendulum (about 60 short episodes), made here."""
    from offrl.data.generate import rollout_uniform_random

    data = rollout_uniform_random(ENV, transitions=500, seed=0, max_episode_steps=100,
                                  progress=False)
    data.metadata.update(dataset_id="inverted-pendulum-random-test", env_id=ENV, sha256=SHA,
                         ref_min_score=0.0, ref_max_score=50.0, max_episode_steps=100)
    return data


def tiny_config(agent_cls=TD3BC, **training):
    values = dict(steps=300, batch_size=32, seeds=[0, 1], eval_every=100, eval_episodes=2,
                  log_every=50, checkpoint_every=100, max_episode_steps=40, tensorboard=False)
    values.update(training)
    # Small networks keep the tests fast; the loop does not care about widths.
    small = {f.name: [32, 32] for f in dataclasses.fields(agent_cls.config_class)
             if f.name.endswith("hidden_dims")}
    small.update({f.name: 2 for f in dataclasses.fields(agent_cls.config_class)
                  if f.name == "cql_n_actions"})
    return load_config(agent_cls.name, agent_cls.config_class, None, training_overrides=values,
                       algo_overrides=small)


def rows(path, drop=()):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------------------------- configs
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_unknown_key_names_file_table_and_key(tmp_path):
    path = write(tmp_path / "c.toml", "[algo]\nalpah = 2.5\n")
    with pytest.raises(ConfigError, match=r"c\.toml.*\[algo\].*'alpah'.*did you mean 'alpha'"):
        load_config("td3_bc", TD3BC.config_class, path)
    path = write(tmp_path / "d.toml", "[training]\nstep = 5\n")
    with pytest.raises(ConfigError, match=r"d\.toml.*\[training\].*'step'"):
        load_config("td3_bc", TD3BC.config_class, path)
    path = write(tmp_path / "e.toml", "[model]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"e\.toml.*'model'"):
        read_config_file(path)


@pytest.mark.parametrize("text, key", [
    ('[training]\nsteps = "many"\n', "steps"),
    ("[training]\nsteps = 1.5\n", "steps"),
    ("[training]\nnormalize_states = 1\n", "normalize_states"),
    ('[training]\nseeds = [0, "1"]\n', "seeds"),
    ('[algo]\nalpha = "2.5"\n', "alpha"),
    ("[algo]\nactor_hidden_dims = 256\n", "actor_hidden_dims"),
])
def test_config_wrong_type_names_file_and_key(tmp_path, text, key):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError, match=rf"bad\.toml.*{key}.*expected"):
        load_config("td3_bc", TD3BC.config_class, path)


def test_config_bad_values_and_toml(tmp_path):
    with pytest.raises(ConfigError, match=r"v\.toml.*normalize_reward"):
        load_config("td3_bc", TD3BC.config_class,
                    write(tmp_path / "v.toml", '[training]\nnormalize_reward = "yes"\n'))
    with pytest.raises(ConfigError, match=r"s\.toml.*steps.*positive"):
        load_config("td3_bc", TD3BC.config_class,
                    write(tmp_path / "s.toml", "[training]\nsteps = 0\n"))
    with pytest.raises(ConfigError, match=r"t\.toml.*not valid TOML"):
        read_config_file(write(tmp_path / "t.toml", "[training\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(tmp_path / "missing.toml")


def test_config_round_trip_and_overrides(tmp_path):
    path = write(tmp_path / "c.toml", "[algo]\nalpha = 3\nactor_hidden_dims = [64, 64]\n"
                 "[training]\nsteps = 10\nreward_bias = -1\n")
    config = load_config("td3_bc", TD3BC.config_class, path, training_overrides={"steps": 20})
    assert config.algo.alpha == 3.0 and isinstance(config.algo.alpha, float)
    assert tuple(config.algo.actor_hidden_dims) == (64, 64)
    assert config.training.steps == 20 and config.training.reward_bias == -1.0
    again = load_config("td3_bc", TD3BC.config_class, write(tmp_path / "r.toml", config.to_toml()))
    assert again.to_dict() == config.to_dict()
    assert tomllib.loads(config.to_toml())["training"]["seeds"] == [0]


def test_baseline_configs_load():
    """Every baselines/<algo>/*.toml of a registered algorithm is a valid config."""
    dirs = [d for d in baselines_dirs() if (d / "td3_bc").is_dir()]
    if not dirs:
        pytest.skip("no baselines/ folder next to the package")
    checked = 0
    from offrl.training.finetune import read_finetune_file

    for cls in algorithm_classes():
        for path in sorted((dirs[0] / cls.name).glob("*.toml")):
            if path.stem.endswith("-finetune"):  # the online phase's [algo] + [finetune] schema
                read_finetune_file(path, cls.config_class)
            else:
                config = load_config(cls.name, cls.config_class, path)
                assert config.training.batch_size == 256 and config.training.steps == 1_000_000
            checked += 1
    assert checked >= 8


# ---------------------------------------------------------------------------------- preprocessing
def test_prepare_transitions_normalizes_states_and_scales_rewards(dataset):
    plain, norm = prepare_transitions(dataset, TrainingConfig())
    q = dataset.qlearning()
    np.testing.assert_allclose(norm.observation_mean, q.observations.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.observation_std, q.observations.std(0) + 1e-3, rtol=1e-5)
    np.testing.assert_allclose(plain.observations.mean(0), 0, atol=1e-4)
    np.testing.assert_array_equal(plain.next_observations, norm.normalize(q.next_observations))
    np.testing.assert_array_equal(plain.rewards, q.rewards)

    scaled, norm = prepare_transitions(dataset, TrainingConfig(normalize_reward="return_range",
                                                               reward_bias=-1.0))
    returns = dataset.episode_returns[:-1]  # the last episode is cut by the end of the data
    factor = 1000.0 / (returns.max() - returns.min())
    assert norm.reward_multiplier == pytest.approx(factor)
    np.testing.assert_allclose(scaled.rewards, q.rewards * factor - 1.0, rtol=1e-6)

    raw, norm = prepare_transitions(dataset, TrainingConfig(normalize_states=False))
    np.testing.assert_array_equal(raw.observations, q.observations)
    assert (norm.observation_std == 1).all()


def test_metric_accumulator_and_csv_truncation(tmp_path):
    acc = MetricAccumulator()
    acc.add({"loss": torch.tensor([1.0, 2.0])})
    acc.add({"loss": torch.tensor([3.0, 6.0])})
    np.testing.assert_allclose(acc.means()["loss"], [2.0, 4.0])
    assert acc.count == 0
    log = CsvLog(tmp_path / "m.csv")
    log.write_rows([{"step": s, "seed": 0, "x": s / 3} for s in (10, 20, 30)])
    assert log.truncate_after_step(20) == 1
    assert [r["step"] for r in rows(tmp_path / "m.csv")] == ["10", "20"]
    assert float(rows(tmp_path / "m.csv")[0]["x"]) == 10 / 3  # full float precision


# ---------------------------------------------------------------------------------- end to end
def test_tiny_run_writes_a_valid_run_directory(dataset, tmp_path):
    printed = []
    result = train(TD3BC, dataset, tiny_config(), out=tmp_path / "runs", progress=False,
                   print_fn=printed.append)
    run = result.run_dir
    assert run.parent == tmp_path / "runs" / "td3_bc" / "inverted-pendulum-random-test"
    assert result.status == "complete" and result.step == 300
    assert result.normalized_scores.shape == (2, 2)
    assert any("[training]" in line for line in printed)  # the resolved config is printed

    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["finished"]
    assert info["algo"] == "td3_bc" and info["dataset_id"] == "inverted-pendulum-random-test"
    assert info["dataset_sha256"] == SHA and info["env_id"] == ENV
    assert info["seeds"] == [0, 1] and info["steps"] == 300
    assert info["offrl_version"] and "git_commit" in info
    assert (info["ref_min_score"], info["ref_max_score"]) == (0.0, 50.0)

    config = tomllib.loads((run / "config.toml").read_text())
    assert config["training"]["steps"] == 300 and config["algo"]["alpha"] == 2.5

    metrics = rows(run / "metrics.csv")
    assert list(metrics[0])[:2] == ["step", "seed"] and list(metrics[0])[-1] == "updates_per_s"
    assert [(int(r["step"]), int(r["seed"])) for r in metrics] == [
        (s, seed) for s in range(50, 301, 50) for seed in (0, 1)]
    assert all(np.isfinite(float(v)) for r in metrics for v in r.values())

    evals = rows(run / "evaluations.csv")
    assert list(evals[0]) == ["step", "seed", "episode", "env_seed", "return", "length",
                              "normalized_score"]
    assert len(evals) == 3 * 2 * 2  # evaluations × seeds × episodes
    assert len({r["env_seed"] for r in evals}) == len(evals)  # all distinct
    for r in evals:
        assert float(r["normalized_score"]) == pytest.approx(100 * float(r["return"]) / 50)
        assert 1 <= int(r["length"]) <= 40

    norm = json.loads((run / "normalization.json").read_text())
    assert len(norm["observation_mean"]) == len(norm["observation_std"]) == 4
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["step"] == 300 and state["algo"] == "td3_bc"
    assert not list((run / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize("agent_cls", algorithm_classes(), ids=lambda c: c.name)
def test_exact_resume(dataset, tmp_path, agent_cls):
    """A run stopped and resumed equals an uninterrupted one bit for bit: parameters,
    optimiser state, metrics.csv rows and evaluations (with their env seeds)."""
    kw = dict(progress=False, print_fn=quiet)
    cfg = lambda: tiny_config(agent_cls, steps=200, keep_checkpoints=True)  # noqa: E731
    train(agent_cls, dataset, cfg(), run_dir=tmp_path / "straight", **kw)

    # A clean stop (Ctrl-C, a time limit) between checkpoints writes a checkpoint there.
    stopped = train(agent_cls, dataset, cfg(), run_dir=tmp_path / "stopped", stop_at_step=150, **kw)
    assert stopped.status == "interrupted"
    assert json.loads((tmp_path / "stopped" / "run.json").read_text())["status"] == "interrupted"
    # A crash instead: rows up to step 150 are on disk but the last checkpoint is step 100's.
    shutil.copytree(tmp_path / "stopped", tmp_path / "crashed")
    ckpts = tmp_path / "crashed" / "checkpoints"
    shutil.copy(ckpts / "step_100.pt", ckpts / "latest.pt")

    train(agent_cls, dataset, None, run_dir=tmp_path / "stopped", **kw)
    train(agent_cls, dataset, cfg(), run_dir=tmp_path / "crashed", **kw)

    reference = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")
    for name in ("stopped", "crashed"):
        run = tmp_path / name
        state = load_checkpoint(run / "checkpoints" / "latest.pt")
        assert state["step"] == 200
        assert same_state(state["agent"], reference["agent"]), name
        assert same_state(state["sampler"], reference["sampler"]), name
        assert rows(run / "metrics.csv", ["updates_per_s"]) == rows(
            tmp_path / "straight" / "metrics.csv", ["updates_per_s"]), name
        assert rows(run / "evaluations.csv") == rows(
            tmp_path / "straight" / "evaluations.csv"), name
        assert json.loads((run / "run.json").read_text())["status"] == "complete"


def test_resume_refuses_a_different_config_and_finishes_idempotently(dataset, tmp_path):
    kw = dict(progress=False, print_fn=quiet)
    run = tmp_path / "run"
    train(TD3BC, dataset, tiny_config(steps=100, eval_every=0), run_dir=run, stop_at_step=50, **kw)
    with pytest.raises(UserError, match="different config.*steps"):
        train(TD3BC, dataset, tiny_config(steps=200, eval_every=0), run_dir=run, **kw)
    with pytest.raises(UserError, match="is a run of 'td3_bc'"):
        from offrl.algos.base import Agent

        class Other(TD3BC):
            name = "other"

        assert issubclass(Other, Agent)
        train(Other, dataset, None, run_dir=run, **kw)
    done = train(TD3BC, dataset, None, run_dir=run, **kw)
    assert done.status == "complete" and done.normalized_scores.shape == (2, 2)
    printed = []
    again = train(TD3BC, dataset, None, run_dir=run, progress=False, print_fn=printed.append)
    assert again.status == "complete" and any("already complete" in p for p in printed)
    np.testing.assert_array_equal(again.returns, done.returns)


@pytest.mark.parametrize("agent_cls", algorithm_classes(), ids=lambda c: c.name)
def test_bf16_precision_is_recorded_applied_and_resumes_exactly(dataset, tmp_path, agent_cls):
    kw = dict(progress=False, print_fn=quiet)
    cfg = lambda **t: tiny_config(agent_cls, steps=200, **t)  # noqa: E731
    # fp32, the default, is left out of config.toml (configs from before the key keep their hash)
    assert "precision" not in cfg().to_toml()
    assert 'precision = "bf16"' in cfg(precision="bf16").to_toml()

    train(agent_cls, dataset, cfg(), run_dir=tmp_path / "fp32", **kw)
    train(agent_cls, dataset, cfg(precision="bf16"), run_dir=tmp_path / "bf16", **kw)
    stopped = train(agent_cls, dataset, cfg(precision="bf16"), run_dir=tmp_path / "stopped",
                    stop_at_step=150, **kw)
    assert stopped.status == "interrupted"
    train(agent_cls, dataset, None, run_dir=tmp_path / "stopped", **kw)  # reads precision back

    state = lambda name: load_checkpoint(tmp_path / name / "checkpoints" / "latest.pt")["agent"]  # noqa: E731
    assert same_state(state("stopped"), state("bf16"))
    assert not same_state(state("fp32"), state("bf16"))  # bf16 compute really ran
    stored = tomllib.loads((tmp_path / "bf16" / "config.toml").read_text())
    assert stored["training"]["precision"] == "bf16"


def test_bf16_precision_is_refused_where_an_agent_has_no_bf16_path(dataset, tmp_path):
    from offrl.algos.sac import SAC  # the online agent of fine-tuning: fp32 only

    with pytest.raises(UserError, match="precision.*bf16.*sac"):
        train(SAC, dataset, tiny_config(SAC, precision="bf16"), run_dir=tmp_path / "r",
              progress=False, print_fn=quiet)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match=r"p\.toml.*precision.*'fp16'"):
        load_config("td3_bc", TD3BC.config_class, write(tmp_path / "p.toml",
                                                        '[training]\nprecision = "fp16"\n'))


@pytest.mark.slow
def test_compiled_run_is_recorded_and_resumes_compiled_and_exact(dataset, tmp_path):
    kw = dict(progress=False, print_fn=quiet)
    cfg = lambda: tiny_config(TD3BC, steps=100, eval_every=0, precision="bf16")  # noqa: E731
    train(TD3BC, dataset, cfg(), run_dir=tmp_path / "straight", compile=True, **kw)
    train(TD3BC, dataset, cfg(), run_dir=tmp_path / "stopped", compile=True, stop_at_step=50, **kw)
    train(TD3BC, dataset, None, run_dir=tmp_path / "stopped", **kw)  # takes compile from run.json
    for name in ("straight", "stopped"):
        assert json.loads((tmp_path / name / "run.json").read_text())["compile"] is True
    state = lambda name: load_checkpoint(tmp_path / name / "checkpoints" / "latest.pt")["agent"]  # noqa: E731
    assert same_state(state("stopped"), state("straight"))
