"""The submission schema, suites, policy export, and every rule with a failing example."""

import copy
import json

import numpy as np
import pytest
import torch

from offrl.leaderboard.rules import RULES, RegistryFacts, RulesError, check_rules, enforce_rules
from offrl.leaderboard.schema import (SchemaError, parse_submission, submission_fingerprint,
                                      validate_submission)
from offrl.leaderboard.suite import SuiteError, load_suite, suite_from_dict

SHA = {"ds-a": "a" * 64, "ds-b": "b" * 64}
SUITE = suite_from_dict({"name": "tiny", "version": "1", "datasets": ["ds-a", "ds-b"],
                         "seeds_min": 5, "eval_episodes": 3, "steps": 20})


def facts_of(dataset_id):
    if dataset_id not in SHA:
        from offrl.errors import UserError
        raise UserError(f"unknown dataset id {dataset_id!r}")
    return RegistryFacts(SHA[dataset_id], "InvertedPendulum-v4", 50, 0.0, 50.0)


def valid_data(seeds=5, episodes=3):
    def results(ds):
        return [{"seed": s, "step": 20, "policy": f"policies/{ds}/seed_{s}.pt",
                 "returns": [10.0 + s + e for e in range(episodes)],
                 "lengths": [10 + e for e in range(episodes)],
                 "env_seeds": [1000 * s + e for e in range(episodes)]} for s in range(seeds)]

    return {
        "schema_version": 1, "name": "ok-1", "description": "fine", "submitter": "me",
        "created": "2026-01-01T00:00:00Z", "suite": {"name": "tiny", "version": "1"},
        "algorithm": "td3_bc",
        "code": {"offrl_version": "0.1.0", "git_commits": ["abc1234"], "git_dirty": False},
        "protocol": {"training_steps": 20, "evaluation_episodes": episodes,
                     "last_iterate": True},
        "datasets": [{"dataset_id": ds, "sha256": SHA[ds], "env_id": "InvertedPendulum-v4",
                      "max_episode_steps": 50, "ref_min_score": 0.0, "ref_max_score": 50.0,
                      "config": f"configs/{ds}.toml",
                      "hyperparameters": {"algo": {"alpha": 2.5}, "training": {"steps": 20}},
                      "results": results(ds)} for ds in ("ds-a", "ds-b")],
    }


def test_a_valid_submission_passes_every_rule():
    submission = validate_submission(valid_data())
    assert check_rules(submission, SUITE, bundle_dir=None, facts_of=facts_of) == []
    assert submission.dataset("ds-a").seed_scores()[0] == pytest.approx(100 * 11.0 / 50)
    # claimed_aggregates may be sent, and changes nothing.
    data = valid_data()
    data["claimed_aggregates"] = {"IQM": 99.0}
    assert submission_fingerprint(validate_submission(data)) == submission_fingerprint(
        submission)


def _set(path, value):
    def edit(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


SCHEMA_FAILURES = {
    "unknown key": _set(["surprise"], 1),
    "hostile name (html)": _set(["name"], "<script>alert(1)</script>"),
    "hostile name (path)": _set(["name"], "../../etc"),
    "name too long": _set(["name"], "x" * 65),
    "hostile algorithm": _set(["algorithm"], "td3<b>"),
    "dataset id with ..": _set(["datasets", 0, "dataset_id"], "ds/../a"),
    "policy path traversal": _set(["datasets", 0, "results", 0, "policy"],
                                  "policies/../../../evil.pt"),
    "config path elsewhere": _set(["datasets", 0, "config"], "/etc/passwd"),
    "returns not numbers": _set(["datasets", 0, "results", 0, "returns"], ["1", "2", "3"]),
    "bool as int": _set(["datasets", 0, "results", 0, "seed"], True),
    "negative seed": _set(["datasets", 0, "results", 0, "seed"], -1),
    "lengths mismatch": _set(["datasets", 0, "results", 0, "lengths"], [1, 2]),
    "repeated env seed": _set(["datasets", 0, "results", 0, "env_seeds"], [5, 5, 6]),
    "duplicate seed": _set(["datasets", 0, "results", 1, "seed"], 0),
    "duplicate dataset": lambda d: d["datasets"].append(copy.deepcopy(d["datasets"][0])),
    "bad sha256": _set(["datasets", 0, "sha256"], "XYZ"),
    "schema version": _set(["schema_version"], 2),
    "missing field": lambda d: d.pop("protocol"),
    "description too long": _set(["description"], "x" * 2001),
    "inf in hyperparameters": _set(["datasets", 0, "hyperparameters"], {"a": float("inf")}),
    "deep hyperparameters": _set(["datasets", 0, "hyperparameters"],
                                 {"a": [[[[[[[[[[1]]]]]]]]]]}),
    "refs half given": _set(["datasets", 0, "ref_max_score"], None),
    "timestamp": _set(["created"], "yesterday"),
    "no datasets": _set(["datasets"], []),
}


@pytest.mark.parametrize("what", sorted(SCHEMA_FAILURES))
def test_schema_rejects(what):
    data = valid_data()
    SCHEMA_FAILURES[what](data)
    with pytest.raises(SchemaError):
        validate_submission(data)


@pytest.mark.parametrize("text", [
    "{not json", "[]", '"a string"', json.dumps(valid_data()).replace("10.0", "NaN", 1),
    json.dumps(valid_data()).replace("10.0", "Infinity", 1), b"\xff\xfe\x00",
    "[" * 100_000])
def test_parse_rejects_malformed_json(text):
    with pytest.raises(SchemaError):
        parse_submission(text)


def _violations(data=None, **kwargs):
    submission = validate_submission(data or valid_data())
    kwargs.setdefault("facts_of", facts_of)
    kwargs.setdefault("bundle_dir", None)
    return {v.rule for v in check_rules(submission, kwargs.pop("suite", SUITE), **kwargs)}


def test_rule_suite():
    data = valid_data()
    data["suite"]["version"] = "2"
    assert _violations(data) == {"suite"}


def test_rule_datasets_missing_and_extra():
    data = valid_data()
    data["datasets"].pop()
    assert _violations(data) == {"datasets"}
    extra = suite_from_dict({**SUITE.to_dict(), "datasets": ["ds-a"]})
    assert _violations(suite=extra) == {"datasets"}


def test_rule_seeds():
    assert _violations(valid_data(seeds=4)) == {"seeds"}


def test_rule_episodes():
    assert _violations(valid_data(episodes=2)) == {"episodes"}
    data = valid_data()
    for key in ("returns", "lengths", "env_seeds"):
        data["datasets"][0]["results"][0][key] = data["datasets"][0]["results"][0][key][:2]
    assert _violations(data) == {"episodes"}
    data = valid_data()
    data["datasets"][0]["results"][0]["lengths"] = [10, 11, 51]   # over the episode limit
    assert _violations(data) == {"episodes"}


def test_rule_protocol():
    data = valid_data()
    data["protocol"]["training_steps"] = 19
    for d in data["datasets"]:
        for r in d["results"]:
            r["step"] = 19
    assert _violations(data) == {"protocol"}
    data = valid_data()
    data["protocol"]["last_iterate"] = False
    assert _violations(data) == {"protocol"}
    data = valid_data()
    data["datasets"][1]["results"][3]["step"] = 10   # one seed evaluated early
    assert _violations(data) == {"protocol"}


def test_rule_finite():
    # The schema refuses NaN already; the rule is a second line for objects built in code.
    submission = validate_submission(valid_data())
    entry = submission.datasets[0]
    bad_result = entry.results[0].model_copy(update={"returns": [1.0, float("nan"), 2.0]})
    bad_entry = entry.model_copy(update={"results": [bad_result, *entry.results[1:]]})
    bad = submission.model_copy(update={"datasets": [bad_entry, submission.datasets[1]]})
    assert {v.rule for v in check_rules(bad, SUITE, bundle_dir=None, facts_of=facts_of)} == {
        "finite"}


def test_rule_registry():
    data = valid_data()
    data["datasets"][0]["sha256"] = "c" * 64
    assert _violations(data) == {"registry"}
    data = valid_data()
    data["datasets"][1]["ref_max_score"] = 25.0     # own references: scores twice as high
    assert _violations(data) == {"registry"}
    data = valid_data()
    data["datasets"][1]["max_episode_steps"] = 1000
    assert _violations(data) == {"registry"}


def _export_policy(path, seed, dataset_id):
    from offrl.algos import TD3BC, TD3BCConfig
    from offrl.training.export import export_policy

    agent = TD3BC(TD3BCConfig(actor_hidden_dims=[8], critic_hidden_dims=[8]), 4, 1, [seed],
                  max_action=3.0)
    export_policy(agent, 0, {"observation_mean": [0.0] * 4, "observation_std": [1.0] * 4},
                  path, info={"dataset_id": dataset_id})


def test_rule_policies(tmp_path):
    for ds in ("ds-a", "ds-b"):
        for s in range(5):
            _export_policy(tmp_path / f"policies/{ds}/seed_{s}.pt", s, ds)
    assert _violations(bundle_dir=tmp_path) == set()
    (tmp_path / "policies/ds-a/seed_0.pt").unlink()                       # missing
    (tmp_path / "policies/ds-a/seed_1.pt").write_bytes(b"not torchscript")  # unloadable
    _export_policy(tmp_path / "policies/ds-b/seed_2.pt", 3, "ds-b")         # another seed's
    submission = validate_submission(valid_data())
    messages = [v.message for v in check_rules(submission, SUITE, bundle_dir=tmp_path,
                                               facts_of=facts_of)]
    assert len(messages) == 3
    assert "seed_0.pt is missing" in messages[0]
    assert "not a loadable TorchScript" in messages[1]
    assert "seed 3" in messages[2]


def test_rule_duplicate():
    submission = validate_submission(valid_data())
    assert _violations(existing_names={"ok-1"}) == {"duplicate"}
    renamed = valid_data()
    renamed["name"] = "other-name"
    assert _violations(renamed, existing_fingerprints={submission_fingerprint(submission)}) == {
        "duplicate"}


def test_every_rule_is_tested():
    tested = {name.removeprefix("test_rule_") for name in globals() if name.startswith(
        "test_rule_")}
    assert {r for r in RULES} <= {t.split("_")[0] for t in tested}


def test_enforce_lists_every_violation():
    data = valid_data(seeds=4)
    data["suite"]["version"] = "9"
    with pytest.raises(RulesError) as info:
        enforce_rules(validate_submission(data), SUITE, bundle_dir=None, facts_of=facts_of)
    assert {v.rule for v in info.value.violations} == {"suite", "seeds"}
    assert "[seeds]" in str(info.value)


def test_suite_files(tmp_path, monkeypatch):
    (tmp_path / "a.toml").write_text('[suite]\nname = "a"\nversion = "2"\n'
                                     'datasets = [{id = "x"}, "y"]\nmin_seeds = 10\n'
                                     'episodes = 7\ntraining_steps = 100\n')
    monkeypatch.setenv("OFFRL_SUITES", str(tmp_path))
    suite = load_suite("a")
    assert (suite.datasets, suite.seeds_min, suite.eval_episodes, suite.steps) == (
        ("x", "y"), 10, 7, 100)
    assert load_suite({**suite.to_dict(), "seeds_min": 2}).seeds_min == 5   # the board's floor
    (tmp_path / "bad.toml").write_text('name = "b"\nversion = "1"\ndatasets = []\n')
    with pytest.raises(SuiteError, match="bad.toml.*datasets"):
        load_suite("bad")
    with pytest.raises(SuiteError, match="no suite"):
        load_suite("../etc/passwd")


@pytest.mark.parametrize("algo", ["td3_bc", "iql", "cql"])
def test_export_single_member_with_normalisation(tmp_path, algo):
    from offrl.algos import get_algorithm
    from offrl.training.export import export_policy, load_policy

    cls = get_algorithm(algo)
    agent = cls(cls.config_class(actor_hidden_dims=[16, 16], critic_hidden_dims=[16, 16]), 3, 2,
                [4, 7, 9], max_action=2.0)
    mean = np.array([0.5, -1.0, 2.0], np.float32)
    std = np.array([2.0, 3.0, 0.5], np.float32)
    path = export_policy(agent, 1, {"observation_mean": mean, "observation_std": std},
                         tmp_path / "p.pt")
    module, info = load_policy(path)
    assert info["seed"] == 7 and info["algo"] == algo
    obs = np.random.default_rng(0).normal(size=(3, 6, 3)).astype(np.float32)
    with torch.no_grad():
        want = agent.act(torch.from_numpy((obs - mean) / std), deterministic=True)[1]
        got = module(torch.from_numpy(obs[1]))
    torch.testing.assert_close(got, want)


def test_sweep_suites_are_leaderboard_suites_with_per_algorithm_steps():
    from offrl.leaderboard.suite import load_suite

    quick = load_suite("quick")
    assert quick.seeds_min == 5 and quick.version == "1" and quick.eval_episodes == 5
    assert quick.steps == 1000 and quick.steps_for("cql") == 200 and quick.steps_for("iql") == 1000
    assert quick.datasets == ("hopper-random-10k-v0", "halfcheetah-random-10k-v0",
                              "walker2d-random-10k-v0")
