"""The offrl datasets the repository ships: cards, behaviour policies, selections, builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offrl.data.generate import platform_tag
from offrl.data.hashing import sha256_file
from offrl.data.load import fetch, load_dataset
from offrl.data.policies import load_policy
from offrl.data.registry import get_card, list_cards

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "datasets" / "policies"
OFFRL_CARDS = [c for c in list_cards() if c.path.parent == ROOT / "datasets" / "offrl"]
SELECTIONS = sorted(POLICIES.glob("*-selection.json"))
# issue 4's expert thresholds (mean over 100 stochastic episodes)
EXPERT_THRESHOLDS = {"Hopper-v5": 3000, "HalfCheetah-v5": 8000, "Walker2d-v5": 3500}


@pytest.mark.parametrize("card", [c for c in OFFRL_CARDS if c.source.policy.endswith(".pt")],
                         ids=lambda c: c.id)
def test_policy_cards_name_a_shipped_policy_with_its_hash(card):
    path = (card.path.parent / card.source.policy).resolve()
    assert path.is_file(), f"{card.path}: policy {path} is missing"
    assert sha256_file(path) == card.source.policy_sha256
    policy = load_policy(path)
    assert policy.env_id == card.env_id
    assert card.source.build_sha256, f"{card.path}: never built (no build_sha256)"


@pytest.mark.parametrize("selection", SELECTIONS, ids=lambda p: p.stem)
def test_selections_meet_the_d4rl_definitions(selection):
    record = json.loads(selection.read_text())
    expert, medium, random = record["expert"], record["medium"], record["random"]
    assert expert["episodes"] == medium["episodes"] == random["episodes"] == 100
    assert expert["mean"] >= EXPERT_THRESHOLDS.get(record["env_id"], random["mean"])
    # medium: the snapshot of the same run nearest a third of the expert's return
    assert medium["step"] < expert["step"]
    assert 0.2 <= (medium["mean"] / expert["mean"]) <= 0.45
    name = record["name"]
    for kind in ("expert", "medium"):
        meta = load_policy(POLICIES / f"{name}-{kind}.pt").meta
        assert meta["training_step"] == record[kind]["step"] and meta["kind"] == kind
    curve = (POLICIES / f"{name}-curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,") and len(curve) > 2
    assert (POLICIES / f"{name}-sac.toml").is_file()


def test_a_shipped_small_dataset_rebuilds_to_the_cards_bytes(offrl_home):
    """100k steps of the InvertedDoublePendulum expert: the same sha256 as the card on the
    platform that wrote it (elsewhere floating point may differ; the build only warns)."""
    card = get_card("inverteddoublependulum-expert-100k-v0")
    path = fetch(card, progress=False)
    if card.source.build_platform == platform_tag():
        assert sha256_file(path) == card.source.build_sha256
    data = load_dataset(card, progress=False)
    assert len(data.rewards) == 100_000 and data.observations.shape[1] == 9
    returns = data.episode_returns[:-1]  # the last episode is cut at 100k steps
    # the expert balances for the whole episode: 1000 steps of ~9.35 reward
    assert np.median(returns) > 0.9 * card.scores.ref_max_score
