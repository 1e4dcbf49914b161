"""`offrl train` and `offrl evaluate` end to end, on a dataset a recipe card generates here."""

import csv
import json

import pytest

from offrl.cli import main

CARD = """\
id = "inverted-pendulum-random-cli-v0"
env_id = "InvertedPendulum-v4"
description = "Uniform-random InvertedPendulum steps for the CLI tests."
max_episode_steps = 100

[source.recipe]
policy = "uniform-random"
env_id = "InvertedPendulum-v4"
seed = 0
transitions = 500
max_episode_steps = 100

[scores]
ref_min_score = 0.0
ref_max_score = 50.0
approximate = false

[spaces]
observation_shape = [4]
action_shape = [1]
"""

CONFIG = """\
[algo]
actor_hidden_dims = [32, 32]
critic_hidden_dims = [32, 32]

[training]
steps = 200
batch_size = 32
eval_every = 100
eval_episodes = 2
log_every = 50
checkpoint_every = 100
max_episode_steps = 40
tensorboard = false
"""

DATASET = "inverted-pendulum-random-cli-v0"


@pytest.fixture
def setup(tmp_path, monkeypatch, offrl_home):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / f"{DATASET}.toml").write_text(CARD)
    monkeypatch.setenv("OFFRL_CARDS", str(cards))
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    return tmp_path, config


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_help_shows_examples(capsys):
    for command in (["train", "--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "offrl train td3_bc hopper-medium-v2 --seeds 5" in out and "--resume" in out
    assert "--threads" in out and "offrl evaluate RUN_DIR --episodes" in out


def test_train_then_evaluate(setup, capsys):
    tmp_path, config = setup
    run = tmp_path / "run"
    code = main(["train", "td3_bc", DATASET, "--config", str(config), "--seed-list", "3,5",
                 "--run-dir", str(run), "--device", "cpu", "--threads", "1", "--no-progress",
                 "--set", "training.eval_seed=7", "--set", "algo.alpha=2.0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "[training]" in out and "eval_seed = 7" in out  # the resolved config is printed
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["seeds"] == [3, 5]
    assert info["config_source"] == str(config) and info["dataset_sha256"]
    config_toml = (run / "config.toml").read_text()
    assert "alpha = 2.0" in config_toml and "seeds = [3, 5]" in config_toml
    assert len(rows(run / "evaluations.csv")) == 2 * 2 * 2

    # Re-running a finished run does nothing and says so.
    assert main(["train", "--resume", str(run), "--no-progress", "--threads", "1"]) == 0
    assert "already complete" in capsys.readouterr().out

    # Post-hoc evaluation: fresh env seeds every call, into a separate file.
    assert main(["evaluate", str(run), "--episodes", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "seed 3:" in out and "seed 5:" in out and "normalized score" in out
    assert main(["evaluate", str(run), "--episodes", "3", "--threads", "1"]) == 0
    posthoc = rows(run / "posthoc_evaluations.csv")
    assert len(posthoc) == 2 * 2 * 3
    assert {r["evaluation"] for r in posthoc} == {"0", "1"}
    assert all(r["step"] == "200" for r in posthoc)
    training_seeds = {r["env_seed"] for r in rows(run / "evaluations.csv")}
    posthoc_seeds = {r["env_seed"] for r in posthoc}
    assert len(posthoc_seeds) == len(posthoc) and not posthoc_seeds & training_seeds
    assert len(rows(run / "evaluations.csv")) == 8  # untouched

    # --into-evaluations adds episodes at the final step, numbered after the existing ones.
    assert main(["evaluate", str(run), "--episodes", "1", "--into-evaluations",
                 "--threads", "1"]) == 0
    final = [r for r in rows(run / "evaluations.csv") if r["step"] == "200"]
    assert sorted((r["seed"], r["episode"]) for r in final) == [
        ("3", "0"), ("3", "1"), ("3", "2"), ("5", "0"), ("5", "1"), ("5", "2")]


def test_user_errors_are_one_line(setup, capsys):
    tmp_path, config = setup
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nstepz = 10\n")
    assert main(["train", "td3_bc", DATASET, "--config", str(bad), "--no-progress",
                 "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "bad.toml" in err and "stepz" in err and "Traceback" not in err
    assert main(["train", "td3_bc", DATASET, "--config", str(config), "--set", "beta=3",
                 "--threads", "1"]) == 1
    assert "TABLE.KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["train"]) == 1
    assert "ALGO and DATASET" in capsys.readouterr().err


def test_train_on_a_hide_actions_split_uses_only_labelled_rows(setup, capsys):
    tmp_path, config = setup
    code = main(["datasets", "hide-actions", DATASET, "--fraction", "0.5", "--from", "random",
                 "--seed", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    derived = f"{DATASET}-labelled50-random-s1"
    run = tmp_path / "split-run"
    code = main(["train", "td3_bc", derived, "--config", str(config), "--seeds", "1",
                 "--run-dir", str(run), "--threads", "1", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    info = json.loads((run / "run.json").read_text())
    assert info["dataset_id"] == derived and info["env_id"] == "InvertedPendulum-v4"
