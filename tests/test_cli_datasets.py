"""`offrl datasets …` in-process on a tiny recipe card, and the uniform-random recipe itself."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest

from offrl.cli import main

TINY = "tiny-cheetah-random-v0"
TINY_CARD = f"""\
id = "{TINY}"
env_id = "HalfCheetah-v5"
description = "250 uniform-random HalfCheetah steps, 100-step episodes (test card)"
max_episode_steps = 100

[source.recipe]
policy = "uniform-random"
env_id = "HalfCheetah-v5"
seed = 7
transitions = 250
max_episode_steps = 100

[scores]
ref_min_score = -280.178953
ref_max_score = 12135.0
approximate = true
note = "D4RL's numbers, for the test"

[spaces]
observation_shape = [17]
action_shape = [6]
"""


@pytest.fixture
def cards(tmp_path, monkeypatch, offrl_home):
    """A temp $OFFRL_CARDS with the tiny recipe card; cwd in tmp (MuJoCo writes a log there)."""
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / f"{TINY}.toml").write_text(TINY_CARD)
    monkeypatch.setenv("OFFRL_CARDS", str(folder))
    monkeypatch.chdir(tmp_path)
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["datasets", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def built_path(offrl_home: Path) -> Path:
    return offrl_home / "datasets" / TINY / f"{TINY}.hdf5"


def test_list_info_build_path(cards, offrl_home, capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["id", "env", "source", "size", "cached"]
    tiny = next(r for r in rows if r.startswith(TINY))
    assert tiny.split() == [TINY, "HalfCheetah-v5", "recipe", "250", "steps", "no"]
    assert any(r.split()[:4] == ["hopper-medium-v2", "Hopper-v4", "url", "145.7"] for r in rows)

    code, _, err = run(capsys, "path", TINY)
    assert code == 1 and err.count("\n") == 1
    assert "not on this machine" in err and f"offrl datasets build {TINY}" in err

    code, out, _ = run(capsys, "build", TINY, "--quiet")
    assert code == 0 and out.strip() == str(built_path(offrl_home))
    assert built_path(offrl_home).is_file()

    code, out, _ = run(capsys, "path", TINY)
    assert code == 0 and out.strip() == str(built_path(offrl_home))
    code, out, _ = run(capsys, "list", "--cached")
    assert out.splitlines()[1].split()[0] == TINY and out.splitlines()[1].split()[-1] == "yes"

    code, out, _ = run(capsys, "info", TINY)
    assert code == 0
    assert "ref_max_score" in out and "12135" in out and "uniform-random" in out
    assert "cached dataset:" in out
    assert " transitions " in out and "250" in out and "return_mean" in out


def test_convert_recipe_to_minari_and_back(cards, offrl_home, tmp_path, capsys):
    from offrl.data.hdf5 import read_hdf5
    from offrl.data.load import load_dataset

    code, out, err = run(capsys, "convert", TINY, "minari:offrl/tiny/cheetah-v0", "--quiet")
    assert code == 0, err
    assert "wrote 250 transitions in 3 episodes" in out
    back = tmp_path / "back.hdf5"
    code, out, err = run(capsys, "convert", "minari:offrl/tiny/cheetah-v0", str(back))
    assert code == 0, err
    original, again = load_dataset(TINY, progress=False), read_hdf5(back)
    for key in ("observations", "actions", "rewards", "terminals", "timeouts",
                "next_observations", "episode_starts"):
        np.testing.assert_array_equal(getattr(again, key), getattr(original, key), err_msg=key)
    np.testing.assert_array_equal(again.infos["qpos"], original.infos["qpos"])
    assert again.metadata["env_id"] == "HalfCheetah-v5"

    code, _, err = run(capsys, "convert", str(back), str(back))
    assert code == 1 and "exists; pass --force" in err
    code, _, err = run(capsys, "convert", str(back), "somewhere.txt")
    assert code == 1 and "must be an .hdf5 path or minari:ID" in err
    code, _, err = run(capsys, "convert", "tiny-cheetah-random-v1", "x.hdf5")
    assert code == 1 and f"did you mean: {TINY}" in err


def test_errors_are_one_clean_line(cards, capsys):
    code, _, err = run(capsys, "info", "hoper-medium-v2")
    assert code == 1 and err.startswith("offrl: error: unknown dataset id")
    assert "hopper-medium-v2" in err and err.count("\n") == 1
    code, _, err = run(capsys, "build", "hopper-medium-v2")
    assert code == 1 and "not a recipe" in err


def test_download_offline_is_one_clean_line(cards, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = (Path(cards) / f"{TINY}.toml").read_text()
    recipe = text[text.index("[source.recipe]"):text.index("[scores]")]
    body = b"x" * 10
    (cards / "offline-v0.toml").write_text(text.replace(f'"{TINY}"', '"offline-v0"').replace(
        recipe, f'[source]\nurl = "http://127.0.0.1:{port}/f.hdf5"\nbytes = 10\n'
                f'sha256 = "{hashlib.sha256(body).hexdigest()}"\n\n'))
    code, _, err = run(capsys, "download", "offline-v0", "--quiet")
    assert code == 1 and err.count("\n") == 1
    assert f"cannot reach 127.0.0.1:{port}" in err and "offline" in err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["datasets", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "offrl datasets convert hopper-random-10k-v0 minari:" in out


# ------------------------------------------------------------------- the uniform-random recipe
def test_build_is_deterministic_to_the_byte(cards, offrl_home, capsys):
    assert run(capsys, "build", TINY, "--quiet")[0] == 0
    first = built_path(offrl_home).read_bytes()
    assert run(capsys, "build", TINY, "--quiet", "--force")[0] == 0
    assert built_path(offrl_home).read_bytes() == first


def test_uniform_random_rows(monkeypatch, tmp_path):
    from offrl.data.generate import rollout_uniform_random

    monkeypatch.chdir(tmp_path)
    d = rollout_uniform_random("HalfCheetah-v5", transitions=250, seed=1, max_episode_steps=100,
                               progress=False)
    assert len(d) == 250 and d.observations.dtype == np.float32
    np.testing.assert_array_equal(d.episode_starts, [0, 100, 200])
    np.testing.assert_array_equal(np.flatnonzero(d.timeouts), [99, 199])  # the last is cut
    assert not d.terminals.any() and np.abs(d.actions).max() <= 1
    inner = np.ones(249, bool)
    inner[[99, 199]] = False
    np.testing.assert_array_equal(d.next_observations[:-1][inner], d.observations[1:][inner])
    assert d.infos["qpos"].shape == (250, 9) and d.infos["qvel"].shape == (250, 9)
    # qpos/qvel are the state *before* the step: HalfCheetah's obs = qpos[1:] ++ qvel
    np.testing.assert_allclose(d.observations,
                               np.concatenate([d.infos["qpos"][:, 1:], d.infos["qvel"]], 1),
                               rtol=1e-6, atol=1e-6)
    d.validate(observation_shape=(17,), action_shape=(6,))

    hopper = rollout_uniform_random("Hopper-v5", transitions=300, seed=1, progress=False)
    ends = hopper.episode_ends - 1
    assert hopper.terminals[ends[:-1]].all() and not (hopper.terminals & hopper.timeouts).any()


def test_a_changed_built_file_is_detected(cards, offrl_home, capsys):
    assert run(capsys, "build", TINY, "--quiet")[0] == 0
    path = built_path(offrl_home)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = run(capsys, "info", TINY)
    assert code == 1 and "checksum mismatch" in err and f"build {TINY} --force" in err
    assert run(capsys, "build", TINY, "--quiet", "--force")[0] == 0
    assert run(capsys, "info", TINY)[0] == 0


# ---------------------------------------------------------------------------------- semi-supervised
TINY_IDM = "[idm]\nhidden_dims = [16]\nmax_steps = 20\nbatch_size = 32\nholdout_fraction = 0.0\n"


def test_hide_actions_then_label(cards, offrl_home, tmp_path, capsys):
    from offrl.data.hdf5 import read_hdf5
    from offrl.data.minari_io import read_minari

    code, out, err = run(capsys, "hide-actions", TINY, "--fraction", "0.34", "--from", "random",
                         "--seed", "1", "--quiet")
    assert code == 0, err
    hidden_id = f"{TINY}-labelled34-random-s1"
    hidden_path = offrl_home / "datasets" / hidden_id / f"{hidden_id}.hdf5"
    assert "kept the actions of 1 of 3 trajectories" in out and str(hidden_path) in out
    hidden = read_hdf5(hidden_path)
    assert 50 <= hidden.labelled.sum() <= 100 and np.isnan(hidden.actions[~hidden.labelled]).all()
    assert hidden.metadata["semi_supervised"]["by"] == "random"
    assert hidden.metadata["env_id"] == "HalfCheetah-v5" and hidden.metadata["ref_max_score"]

    config = tmp_path / "idm.toml"
    config.write_text(TINY_IDM)
    out_path = tmp_path / "labelled.hdf5"
    code, out, err = run(capsys, "label", hidden_id, "--idm-config", str(config), "--device",
                         "cpu", "--out", str(out_path), "--minari", "test/tiny/labelled-v0",
                         "--quiet")
    assert code == 0, err
    assert f"{250 - hidden.labelled.sum()} proxy actions" in out and "minari:test/tiny" in out
    labelled = read_hdf5(out_path)
    np.testing.assert_array_equal(labelled.action_is_proxy, ~hidden.labelled)
    assert labelled.fully_labelled
    np.testing.assert_array_equal(labelled.actions[hidden.labelled],
                                  hidden.actions[hidden.labelled])
    assert labelled.metadata["labelling"]["idm_config"]["hidden_dims"] == [16]
    back = read_minari("test/tiny/labelled-v0")
    np.testing.assert_array_equal(back.action_is_proxy, labelled.action_is_proxy)

    code, _, err = run(capsys, "hide-actions", TINY, "--fraction", "0.34", "--from", "random",
                       "--seed", "1", "--quiet")
    assert code == 1 and "exists; pass --force" in err


def test_hide_actions_and_label_errors_are_one_clean_line(cards, tmp_path, capsys):
    config = tmp_path / "idm.toml"
    config.write_text(TINY_IDM)
    for argv, fragment in [
        (["hide-actions", TINY, "--fraction", "0"], "fraction must be in (0, 1]"),
        (["hide-actions", TINY, "--fraction", "0.5", "--from", "bottom"], "unknown split spec"),
        (["hide-actions", TINY, "--fraction", "0.1"], "no labelled trajectory would be left"),
        (["label", TINY, "--idm-config", str(tmp_path / "nope.toml")], "cannot read"),
        (["label", TINY, "--idm-config", str(config)], "every row already has an action"),
    ]:
        code, _, err = run(capsys, *argv, "--quiet")
        assert code == 1 and fragment in err and err.startswith("offrl: error:"), (argv, err)
        assert len(err.strip().splitlines()) == 1


def test_build_with_minari_export_and_report(cards, offrl_home, tmp_path, capsys):
    import minari

    code, out, err = run(capsys, "build", TINY, "--quiet", "--minari")
    assert code == 0, err
    assert "minari:offrl/tiny/cheetah-random-v0" in out
    assert minari.load_dataset("offrl/tiny/cheetah-random-v0").total_steps == 250
    code, out, err = run(capsys, "report", TINY, "--reference", TINY, "--out", str(tmp_path / "r"),
                         "--quiet")
    assert code == 0, err
    text = (tmp_path / "r" / f"{TINY}.md").read_text()
    assert "| transitions | 250 |" in text and "| SACo" in text and "1.000" in text
