"""Submission bundles end to end: real runs -> `offrl submit` -> checksums, safe unpacking,
verification (an honest bundle passes, an inflated one is flagged) and the static board.

`tiny_runs` / `make_bundle_copy` are shared with the other test_leaderboard_* files.
"""

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from offrl.cli import main
from offrl.leaderboard.bundle import BundleError, pack_bundle, read_bundle, unpack_bundle
from offrl.leaderboard.checksums import ChecksumError, write_checksums

DATASET = "inverted-pendulum-random-lb-v0"
CARD = f"""\
id = "{DATASET}"
env_id = "InvertedPendulum-v4"
description = "Uniform-random InvertedPendulum steps for the leaderboard tests."
max_episode_steps = 50

[source.recipe]
policy = "uniform-random"
env_id = "InvertedPendulum-v4"
seed = 0
transitions = 400
max_episode_steps = 50

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
actor_hidden_dims = [16, 16]
critic_hidden_dims = [16, 16]

[training]
steps = 20
batch_size = 32
eval_every = 0
eval_episodes = 3
log_every = 10
checkpoint_every = 20
tensorboard = false
"""
SUITE = f"""\
name = "tiny"
version = "1"
datasets = ["{DATASET}"]
seeds_min = 5
eval_episodes = 3
steps = 20
"""


def tiny_runs(root: Path, monkeypatch) -> dict:
    """Cards, suite and one complete 5-seed TD3+BC run under `root`; env vars set."""
    cards = root / "cards"
    cards.mkdir(parents=True)
    (cards / f"{DATASET}.toml").write_text(CARD)
    monkeypatch.setenv("OFFRL_CARDS", str(cards))
    monkeypatch.setenv("OFFRL_HOME", str(root / "home"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
    suites = root / "suites"
    suites.mkdir()
    (suites / "tiny.toml").write_text(SUITE)
    monkeypatch.setenv("OFFRL_SUITES", str(suites))
    config = root / "tiny_config.toml"
    config.write_text(CONFIG)
    run = root / "runs" / "td3_bc" / "run"
    assert main(["train", "td3_bc", DATASET, "--config", str(config), "--seeds", "5",
                 "--run-dir", str(run), "--device", "cpu", "--threads", "1",
                 "--no-progress"]) == 0
    return {"run": run, "suite": suites / "tiny.toml", "root": root}


def make_bundle_copy(bundle: Path, dest: Path, name: str, *, shift: float = 0.0,
                     edit=None) -> Path:
    """A copy of `bundle` renamed `name`, returns shifted by `shift` (new results), optionally
    edited (`edit(data)` on submission.json), with fresh checksums: what a submitter could
    make by hand."""
    shutil.copytree(bundle, dest)
    (dest / "verification.json").unlink(missing_ok=True)
    data = json.loads((dest / "submission.json").read_text())
    data["name"] = name
    for d in data["datasets"]:
        for r in d["results"]:
            r["returns"] = [x + shift for x in r["returns"]]
    if edit is not None:
        edit(data)
    (dest / "submission.json").write_text(json.dumps(data))
    write_checksums(dest)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One real bundle, built by `offrl submit`, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("lb")
    with pytest.MonkeyPatch.context() as mp:
        setup = tiny_runs(root, mp)
        board = root / "board"
        code = main(["submit", str(setup["run"]), "--name", "td3bc-tiny", "--suite", "tiny",
                     "--out", str(board / "submissions"), "--submitter", "tests",
                     "--description", "<script>alert(1)</script> & friends", "--zip"])
        assert code == 0
        yield {**setup, "board": board, "bundle": board / "submissions" / "td3bc-tiny", "mp": mp}


def test_submit_writes_a_checked_bundle(built):
    bundle = built["bundle"]
    submission = read_bundle(bundle)
    assert submission.algorithm == "td3_bc" and submission.suite.name == "tiny"
    assert submission.protocol.training_steps == 20
    assert submission.protocol.evaluation_episodes == 3 and submission.protocol.last_iterate
    (entry,) = submission.datasets
    assert entry.dataset_id == DATASET and len(entry.sha256) == 64
    assert [r.seed for r in entry.results] == [0, 1, 2, 3, 4]
    assert all(len(r.returns) == 3 for r in entry.results)
    assert entry.hyperparameters["algo"]["actor_hidden_dims"] == [16, 16]
    assert (bundle / entry.config).read_text().startswith("[algo]")
    sums = (bundle / "SHA256SUMS").read_text()
    assert "policies/inverted-pendulum-random-lb-v0/seed_4.pt" in sums and "submission.json" in sums
    assert (bundle.parent / "td3bc-tiny.zip").is_file()


def test_exported_policy_reproduces_the_claimed_returns(built):
    """The TorchScript policy (normalisation inside) replays a claimed episode exactly."""
    import numpy as np
    import torch

    from offrl.evaluation.rollout import VectorEvaluator
    from offrl.training.export import load_policy

    entry = read_bundle(built["bundle"]).datasets[0]
    result = entry.results[2]
    module, info = load_policy(built["bundle"] / result.policy)
    assert info["seed"] == 2 and info["observation_dim"] == 4 and info["action_dim"] == 1

    def policy(obs):
        with torch.no_grad():
            return module(torch.from_numpy(obs[0].astype(np.float32))).numpy()[None]

    with VectorEvaluator("InvertedPendulum-v4", 1, 3, max_episode_steps=50) as ev:
        rollouts = ev.run(policy, np.array([result.env_seeds]))
    np.testing.assert_allclose(rollouts.returns[0], result.returns, rtol=1e-4, atol=1e-3)


def test_submit_refuses_a_suite_it_breaks(built, tmp_path, capsys):
    suite = tmp_path / "strict.toml"
    suite.write_text(SUITE.replace("seeds_min = 5", "seeds_min = 8"))
    code = main(["submit", str(built["run"]), "--name", "too-few", "--suite", str(suite),
                 "--out", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert "[seeds]" in err and "at least 8" in err
    assert not (tmp_path / "out" / "too-few").exists()  # nothing half-kept


def test_tampered_bundle_fails_its_checksums(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built["bundle"], copy)
    data = json.loads((copy / "submission.json").read_text())
    data["datasets"][0]["results"][0]["returns"][0] += 100.0
    (copy / "submission.json").write_text(json.dumps(data))
    with pytest.raises(ChecksumError, match="sha256 differs"):
        read_bundle(copy)
    (copy / "extra.txt").write_text("x")
    with pytest.raises(ChecksumError, match="not listed"):
        read_bundle(copy)


def _zip(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt",
                                  "a\\..\\evil.txt", "<script>.txt"])
def test_unpack_refuses_unsafe_names(tmp_path, name):
    with pytest.raises(BundleError, match="unsafe name"):
        unpack_bundle(_zip([(name, b"x")]), tmp_path / "out", max_bytes=1000)
    assert not (tmp_path / "evil.txt").exists()


def test_unpack_refuses_links_bombs_and_junk(tmp_path):
    link = zipfile.ZipInfo("link")
    link.external_attr = (0o120777 << 16)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(link, "/etc/passwd")
    with pytest.raises(BundleError, match="not a plain file"):
        unpack_bundle(buffer.getvalue(), tmp_path / "a", max_bytes=1000)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.bin", b"\0" * 5_000_000)
    assert len(bomb.getvalue()) < 50_000
    with pytest.raises(BundleError, match="more than 1000000 bytes"):
        unpack_bundle(bomb.getvalue(), tmp_path / "b", max_bytes=1_000_000)
    with pytest.raises(BundleError, match="not a zip"):
        unpack_bundle(b"definitely not a zip", tmp_path / "c", max_bytes=1000)


def test_pack_unpack_round_trip(built, tmp_path):
    folder = unpack_bundle(pack_bundle(built["bundle"]), tmp_path / "u", max_bytes=10**8)
    assert read_bundle(folder).name == "td3bc-tiny"


def test_verify_passes_honest_and_flags_inflated(built, tmp_path, capsys):
    honest = tmp_path / "honest"
    shutil.copytree(built["bundle"], honest)
    assert main(["leaderboard", "verify", str(honest), "--seed", "11"]) == 0
    record = json.loads((honest / "verification.json").read_text())
    assert record["status"] == "verified"
    check = record["datasets"][0]
    assert not check["flagged"] and record["episodes"] == 3
    assert len(check["seeds"]) == 5 and len(check["seeds"][0]["verified_returns"]) == 3
    # Fresh env seeds: none of the submission's.
    assert record["verification_seed"] == 11
    claimed_seeds = {s for r in read_bundle(honest).datasets[0].results for s in r.env_seeds}
    verified_seeds = {s for seed in check["seeds"] for s in seed["verified_env_seeds"]}
    assert len(verified_seeds) == 15 and not verified_seeds & claimed_seeds

    # Inflate every claimed return by 25 (50 normalised points): caught and reported.
    inflated = make_bundle_copy(built["bundle"], tmp_path / "inflated", "inflated", shift=25.0)
    capsys.readouterr()
    assert main(["leaderboard", "verify", str(inflated), "--seed", "11"]) == 1
    out = capsys.readouterr().out
    assert "FLAGGED" in out and "flagged: claimed returns exceed" in out
    record = json.loads((inflated / "verification.json").read_text())
    assert record["status"] == "flagged"
    check = record["datasets"][0]
    assert check["flagged"] and 35.0 < check["difference"] < 65.0
    assert check["flagged_seeds"]


def test_board_build_ranks_and_escapes(built, tmp_path, capsys):
    board = tmp_path / "board"
    (board / "submissions").mkdir(parents=True)
    shutil.copytree(built["bundle"], board / "submissions" / "td3bc-tiny")
    make_bundle_copy(built["bundle"], board / "submissions" / "worse", "worse", shift=-20.0)
    make_bundle_copy(built["bundle"], board / "submissions" / "cheat", "cheat", shift=40.0)
    (board / "submissions" / "cheat" / "verification.json").write_text(json.dumps(
        {"status": "flagged", "message": "flagged: <b>inflated</b>"}))
    (board / "submissions" / "broken").mkdir()
    (board / "submissions" / "broken" / "submission.json").write_text("{not json")
    assert main(["leaderboard", "build", "--dir", str(board), "--reps", "500"]) == 0
    assert "broken: left off the board" in capsys.readouterr().err
    readme = (board / "README.md").read_text()
    page = (board / "index.html").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| 1 ") or
            line.startswith("| 2 ")]
    assert "td3bc\\-tiny" in rows[0] or "td3bc-tiny" in rows[0]
    assert "worse" in rows[1]
    assert "Flagged" in readme and "cheat" in readme and "<b>" not in readme
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('class="ranked"') == 2 and "&lt;b&gt;inflated" in page
    assert "submissions/td3bc-tiny/configs/inverted-pendulum-random-lb-v0.toml" in page
    data = json.loads((board / "leaderboard.json").read_text())
    assert [r["name"] for r in data[0]["rows"]] == ["td3bc-tiny", "worse"]
    assert data[0]["rows"][1]["probability_of_improvement_vs_leader"]["point"] < 0.5
    assert (board / "profiles-tiny-1.svg").read_text().startswith("<svg")


def test_infinite_hyperparameters_are_written_as_toml_spellings():
    """CQL's default cql_clip_diff_min/max are ±inf, which JSON cannot hold."""
    from offrl.leaderboard.bundle import _json_safe

    assert _json_safe({"algo": {"cql_clip_diff_min": float("-inf"), "cql_clip_diff_max": float("inf"),
                                "dims": [256, 1.5]}}) == {
        "algo": {"cql_clip_diff_min": "-inf", "cql_clip_diff_max": "inf", "dims": [256, 1.5]}}
