"""Dataset cards: every shipped card parses; parsing is strict; lookup and $OFFRL_CARDS."""

from __future__ import annotations

from pathlib import Path

import pytest

from offrl.data.registry import (
    CardError,
    DatasetCard,
    MinariSource,
    RecipeSource,
    UrlSource,
    builtin_cards_dir,
    get_card,
    list_cards,
    parse_card,
)
from offrl.errors import UserError

REPO_CARDS = Path(__file__).resolve().parent.parent / "datasets"
D4RL_TSV = Path(__file__).resolve().parents[2] / "shared" / "reference" / "d4rl-mujoco-v2.tsv"

RECIPE_CARD = """\
id = "{id}"
env_id = "HalfCheetah-v5"
description = "a tiny test dataset"
max_episode_steps = 100

[source.recipe]
policy = "uniform-random"
env_id = "HalfCheetah-v5"
seed = 3
transitions = 250
max_episode_steps = 100

[scores]
ref_min_score = -300.0
ref_max_score = 12135.0
approximate = true
note = "test numbers"

[spaces]
observation_shape = [17]
action_shape = [6]
"""


def write_card(folder: Path, card_id: str, text: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{card_id}.toml"
    path.write_text(text if text is not None else RECIPE_CARD.format(id=card_id))
    return path


def test_every_repo_card_parses():
    assert builtin_cards_dir() == REPO_CARDS
    # Behaviour-policy SAC configs live under datasets/policies/ and are not cards.
    paths = sorted(p for p in REPO_CARDS.rglob("*.toml")
                   if "policies" not in p.relative_to(REPO_CARDS).parts[:-1])
    assert len(paths) >= 24
    assert any(p.parts[-2] == "policies" for p in REPO_CARDS.rglob("*.toml"))
    for path in paths:
        card = parse_card(path)
        assert isinstance(card, DatasetCard) and card.id == path.stem
    ids = [c.id for c in list_cards()]
    assert len(ids) == len(set(ids)) == len(paths)


def test_d4rl_cards_match_the_reference_table():
    cards = {c.id: c for c in list_cards() if isinstance(c.source, UrlSource)}
    assert len(cards) == 18
    hopper = cards["hopper-medium-v2"]
    assert hopper.env_id == "Hopper-v4" and hopper.observation_shape == (11,)
    assert hopper.action_shape == (3,)
    assert (hopper.ref_min_score, hopper.ref_max_score) == (-20.272305, 3234.3)
    assert hopper.scores.approximate and "mujoco-py" in hopper.scores.note
    assert cards["halfcheetah-medium-replay-v2"].ref_min_score == -280.178953
    assert cards["walker2d-full-replay-v2"].action_shape == (6,)
    if D4RL_TSV.is_file():  # shared/ sits beside the repo in dev and CI
        rows = [line.split("\t") for line in D4RL_TSV.read_text().splitlines()[2:] if line]
        by_url = {c.source.url: c.source for c in cards.values()}
        assert len(rows) == 18
        for url, size, sha in rows:
            assert by_url[url].bytes == int(size) and by_url[url].sha256 == sha.strip()


def test_random_cards_are_offline_recipes():
    card = get_card("hopper-random-10k-v0")
    assert isinstance(card.source, RecipeSource)
    assert card.source.policy == "uniform-random" and card.source.transitions == 10_000
    assert card.env_id == card.source.env_id == "Hopper-v5"
    assert card.ref_min_score is not None and card.ref_max_score is not None
    for card_id in ("hopper-random-100k-v0", "halfcheetah-random-10k-v0", "walker2d-random-10k-v0"):
        assert get_card(card_id).source_kind == "recipe"


def test_unknown_id_lists_close_matches():
    with pytest.raises(UserError, match="did you mean: hopper-medium-v2"):
        get_card("hoper-medium-v2")
    with pytest.raises(UserError, match="unknown dataset id 'zzz'"):
        get_card("zzz")


def test_metadata_carries_card_fields():
    meta = get_card("walker2d-medium-v2").metadata()
    assert meta["dataset_id"] == "walker2d-medium-v2" and meta["env_id"] == "Walker2d-v4"
    assert meta["ref_max_score"] == 4592.3 and meta["source"] == "url"
    assert meta["sha256"] == get_card("walker2d-medium-v2").source.sha256


def test_extra_cards_dir(tmp_path, monkeypatch):
    write_card(tmp_path / "cards", "tiny-cheetah-v0")
    monkeypatch.setenv("OFFRL_CARDS", str(tmp_path / "cards"))
    card = get_card("tiny-cheetah-v0")
    assert card.source == RecipeSource("uniform-random", "HalfCheetah-v5", 3, 250, 100)
    assert "hopper-medium-v2" in {c.id for c in list_cards()}


def test_duplicate_id_is_an_error(tmp_path, monkeypatch):
    text = Path(get_card("hopper-medium-v2").path).read_text()
    write_card(tmp_path, "hopper-medium-v2", text)
    monkeypatch.setenv("OFFRL_CARDS", str(tmp_path))
    with pytest.raises(CardError, match="defined twice"):
        list_cards()


def test_missing_cards_dir_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFRL_CARDS", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="not a folder"):
        list_cards()


URL_SOURCE = """\
[source]
url = "http://example.invalid/x.hdf5"
bytes = 10
sha256 = "{sha}"
"""


@pytest.mark.parametrize("edit, field, problem", [
    (lambda t: t.replace('env_id = "HalfCheetah-v5"\ndescription', 'description'),
     "env_id", "is missing"),
    (lambda t: t.replace("seed = 3", 'seed = "3"'), "source.recipe.seed", "expected int"),
    (lambda t: t.replace("seed = 3", "seed = 3.0"), "source.recipe.seed", "expected int"),
    (lambda t: t.replace("approximate = true", "approximate = 1"), "scores.approximate",
     "expected bool"),
    (lambda t: t.replace("transitions = 250", "transitions = 0"), "source.recipe.transitions",
     "must be positive"),
    (lambda t: t.replace("[17]", "[17.0]"), "spaces.observation_shape", "list of positive"),
    (lambda t: t.replace("ref_max_score = 12135.0", "ref_max_score = -400.0"),
     "scores.ref_max_score", "greater than"),
    (lambda t: t.replace('note = "test numbers"', ""), "scores.note", "need a note"),
    (lambda t: t + "colour = 3\n", "spaces.colour", "not a card field"),
    (lambda t: "colour = 3\n" + t, "colour", "not a card field"),
    (lambda t: t.replace("seed = 3", "seed = 3\nsed = 4"), "source.recipe.sed",
     "not a card field"),
    (lambda t: t.replace('id = "bad-v0"', 'id = "other-v0"'), "id", "named 'bad-v0.toml'"),
    (lambda t: t.replace("[source.recipe]", URL_SOURCE.format(sha="a" * 64) + "[source.recipe]"),
     "source", "exactly one of"),
    (lambda t: t.replace("[source.recipe]", "[source]\nminari_id = 'a/b-v0'\n[unused]"),
     "unused", "not a card field"),
    (lambda t: t.replace("[source.recipe]\npolicy", URL_SOURCE.format(sha="abc") + "[x]\npolicy"),
     "source.sha256", "64 lowercase hex"),
    (lambda t: t.replace("[scores]", "[scores\n"), "", "not valid TOML"),
])
def test_bad_cards_name_file_and_field(tmp_path, edit, field, problem):
    path = write_card(tmp_path, "bad-v0", edit(RECIPE_CARD.format(id="bad-v0")))
    with pytest.raises(CardError) as err:
        parse_card(path)
    message = str(err.value)
    assert str(path) in message and problem in message
    if field:
        assert f"field '{field}'" in message


def test_minari_source_card(tmp_path):
    text = RECIPE_CARD.format(id="m-v0").replace(
        "[source.recipe]\npolicy = \"uniform-random\"\nenv_id = \"HalfCheetah-v5\"\nseed = 3\n"
        "transitions = 250\nmax_episode_steps = 100\n",
        "[source]\nminari_id = \"mujoco/halfcheetah/simple-v0\"\n")
    card = parse_card(write_card(tmp_path, "m-v0", text))
    assert card.source == MinariSource("mujoco/halfcheetah/simple-v0", None)
    assert card.source_kind == "minari"
