"""The registry of dataset cards: one TOML file per dataset under the repo's `datasets/` folder.

A card says where a dataset comes from (a download URL with its size and sha256, a Minari
remote id, or a recipe that generates it), which env evaluates policies trained on it, the
reference returns that normalise scores, and the env's space shapes. The schema is documented
in `datasets/README.md`; parsing is strict so that a typo fails loudly, naming file and field.

Cards are read from every folder in `$OFFRL_CARDS` (os.pathsep-separated) and from the
built-in cards folder (see `builtin_cards_dir`).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from offrl.errors import UserError

CARDS_ENV_VAR = "OFFRL_CARDS"
SOURCE_KINDS = ("url", "minari", "recipe")
UNIFORM_RANDOM = "uniform-random"


class CardError(UserError, ValueError):
    """A card file is malformed. The message names the file and the field."""


# ---------------------------------------------------------------------------------- card types
@dataclass(frozen=True)
class UrlSource:
    """A single downloadable file (D4RL HDF5), checked against its size (bytes) and sha256."""

    url: str
    bytes: int
    sha256: str
    format: str = "d4rl-hdf5"

    kind = "url"

    @property
    def filename(self) -> str:
        return Path(urlparse(self.url).path).name


@dataclass(frozen=True)
class MinariSource:
    """A Minari dataset id, fetched with `minari.download_dataset` (from `$MINARI_REMOTE`).

    `sha256`, when given, is the sha256 of the flattened arrays offrl caches (Minari checks none).
    """

    minari_id: str
    sha256: str | None = None

    kind = "minari"


@dataclass(frozen=True)
class RecipeSource:
    """How to generate the dataset (see `offrl.data.generate` for the kinds).

    policy: "uniform-random", "combine", "sac-replay", or a behaviour-policy file path
    (relative to the card's folder) checked against `policy_sha256`.
    envs: envs run side by side by a policy recipe (part of the recipe: it orders the episodes).
    actions: "stochastic" (sampled, as D4RL) or "deterministic" (the policy's mean).
    combine: dataset ids whose rows are concatenated ("combine").
    run_config: the SAC run's config.toml ("sac-replay"; relative to the card's folder).
    build_sha256 / build_bytes / build_platform: what `offrl datasets build` produced on the
    platform that wrote the card; a build elsewhere that differs only warns (floating point).
    """

    policy: str
    env_id: str
    seed: int
    transitions: int
    max_episode_steps: int
    policy_sha256: str | None = None
    envs: int = 1
    actions: str = "stochastic"
    combine: tuple[str, ...] = ()
    run_config: str | None = None
    build_sha256: str | None = None
    build_bytes: int | None = None
    build_platform: str | None = None

    kind = "recipe"


Source = UrlSource | MinariSource | RecipeSource


@dataclass(frozen=True)
class ReferenceScores:
    """Returns that map to normalised scores 0 and 100. None where unknown."""

    ref_min_score: float | None
    ref_max_score: float | None
    approximate: bool
    note: str = ""


@dataclass(frozen=True)
class DatasetCard:
    """One dataset card, parsed from `path`."""

    id: str
    env_id: str
    description: str
    source: Source
    scores: ReferenceScores
    observation_shape: tuple[int, ...]
    action_shape: tuple[int, ...]
    max_episode_steps: int
    path: Path

    @property
    def source_kind(self) -> str:
        """"url", "minari" or "recipe"."""
        return self.source.kind

    @property
    def ref_min_score(self) -> float | None:
        return self.scores.ref_min_score

    @property
    def ref_max_score(self) -> float | None:
        return self.scores.ref_max_score

    def metadata(self) -> dict[str, Any]:
        """The card's fields as plain JSON-able values, for `Dataset.metadata`."""
        meta: dict[str, Any] = {
            "dataset_id": self.id,
            "env_id": self.env_id,
            "description": self.description,
            "source": self.source_kind,
            "ref_min_score": self.scores.ref_min_score,
            "ref_max_score": self.scores.ref_max_score,
            "ref_scores_approximate": self.scores.approximate,
            "ref_scores_note": self.scores.note,
            "observation_shape": list(self.observation_shape),
            "action_shape": list(self.action_shape),
            "max_episode_steps": self.max_episode_steps,
            "card_path": str(self.path),
        }
        src = self.source
        if isinstance(src, UrlSource):
            meta.update(url=src.url, sha256=src.sha256, format=src.format)
        elif isinstance(src, MinariSource):
            meta["minari_id"] = src.minari_id
            if src.sha256:
                meta["sha256"] = src.sha256
        else:
            meta["recipe"] = {"policy": src.policy, "env_id": src.env_id, "seed": src.seed,
                              "transitions": src.transitions,
                              "max_episode_steps": src.max_episode_steps}
            if src.policy not in ("uniform-random",):
                meta["recipe"].update(policy_sha256=src.policy_sha256, envs=src.envs,
                                      actions=src.actions, combine=list(src.combine),
                                      run_config=src.run_config)
        return meta


# ---------------------------------------------------------------------------------- parsing
class _Table:
    """Typed, strict access to one TOML table; every error names the file and dotted field."""

    def __init__(self, data: dict[str, Any], path: Path, prefix: str = ""):
        self.data, self.path, self.prefix = data, path, prefix
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> CardError:
        name = f"{self.prefix}{key}".rstrip(".") or "<top level>"
        return CardError(f"card {self.path}: field '{name}' {problem}")

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, kind: str, *, required: bool = True, default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.fail(key, f"is missing (expected {kind})")
            return default
        value = self.data[key]
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "table": isinstance(value, dict),
            "list": isinstance(value, list),
            "shape": isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value),
        }[kind]
        if not ok:
            expected = {"shape": "a list of positive integers, e.g. [11]"}.get(kind, kind)
            raise self.fail(key, f"has {type(value).__name__} value {value!r}; expected {expected}")
        if kind == "str" and not value.strip():
            raise self.fail(key, "is empty")
        if kind == "float":
            return float(value)
        if kind == "shape":
            return tuple(value)
        return value

    def sub(self, key: str, *, required: bool = True) -> _Table | None:
        value = self.get(key, "table", required=required)
        return None if value is None else _Table(value, self.path, f"{self.prefix}{key}.")

    def no_unknown_keys(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise self.fail(unknown[0], f"is not a card field (known here: {known})")


def _check_sha256(table: _Table, key: str, value: str | None) -> None:
    if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise table.fail(key, f"must be 64 lowercase hex digits; got {value!r}")


def _positive(table: _Table, key: str, value: int) -> int:
    if value <= 0:
        raise table.fail(key, f"must be positive; got {value}")
    return value


def _parse_source(table: _Table) -> Source:
    given = [k for k in ("url", "minari_id", "recipe") if table.has(k)]
    if len(given) != 1:
        raise table.fail("", "must have exactly one of 'url' (+ 'bytes', 'sha256'), 'minari_id' "
                         f"or a [source.recipe] table; found {given or 'none'}")
    if given == ["url"]:
        url = table.get("url", "str")
        if urlparse(url).scheme not in ("http", "https") or not Path(urlparse(url).path).name:
            raise table.fail("url", f"must be an http(s) URL of a file; got {url!r}")
        sha = table.get("sha256", "str")
        _check_sha256(table, "sha256", sha)
        fmt = table.get("format", "str", required=False, default="d4rl-hdf5")
        if fmt != "d4rl-hdf5":
            raise table.fail("format", f"is {fmt!r}; only 'd4rl-hdf5' files are supported")
        src: Source = UrlSource(url=url, bytes=_positive(table, "bytes", table.get("bytes", "int")),
                                sha256=sha, format=fmt)
    elif given == ["minari_id"]:
        sha = table.get("sha256", "str", required=False)
        _check_sha256(table, "sha256", sha)
        src = MinariSource(minari_id=table.get("minari_id", "str"), sha256=sha)
    else:
        rec = table.sub("recipe")
        assert rec is not None
        policy_sha = rec.get("policy_sha256", "str", required=False)
        _check_sha256(rec, "policy_sha256", policy_sha)
        build_sha = rec.get("build_sha256", "str", required=False)
        _check_sha256(rec, "build_sha256", build_sha)
        actions = rec.get("actions", "str", required=False, default="stochastic")
        if actions not in ("stochastic", "deterministic"):
            raise rec.fail("actions", f"must be 'stochastic' or 'deterministic'; got {actions!r}")
        combine = rec.get("combine", "list", required=False, default=[])
        if not all(isinstance(c, str) and c for c in combine):
            raise rec.fail("combine", f"must be a list of dataset ids; got {combine!r}")
        policy = rec.get("policy", "str")
        if (policy == "combine") != bool(combine):
            raise rec.fail("combine", "is required exactly when policy = 'combine'")
        run_config = rec.get("run_config", "str", required=False)
        if (policy == "sac-replay") != (run_config is not None):
            raise rec.fail("run_config", "is required exactly when policy = 'sac-replay'")
        build_bytes = rec.get("build_bytes", "int", required=False)
        src = RecipeSource(
            policy=policy,
            env_id=rec.get("env_id", "str"),
            seed=rec.get("seed", "int"),
            transitions=_positive(rec, "transitions", rec.get("transitions", "int")),
            max_episode_steps=_positive(rec, "max_episode_steps",
                                        rec.get("max_episode_steps", "int")),
            policy_sha256=policy_sha,
            envs=_positive(rec, "envs", rec.get("envs", "int", required=False, default=1)),
            actions=actions,
            combine=tuple(combine),
            run_config=run_config,
            build_sha256=build_sha,
            build_bytes=None if build_bytes is None else _positive(rec, "build_bytes", build_bytes),
            build_platform=rec.get("build_platform", "str", required=False),
        )
        rec.no_unknown_keys()
    table.no_unknown_keys()
    return src


def parse_card(path: str | os.PathLike) -> DatasetCard:
    """Read and check one card file; raise CardError naming the file and field on any problem."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise CardError(f"card {path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CardError(f"card {path}: not valid TOML: {exc}") from exc
    top = _Table(data, path)
    card_id = top.get("id", "str")
    if card_id != path.stem:
        raise top.fail("id", f"is {card_id!r} but the file is named {path.name!r}; "
                       f"name the file {card_id}.toml")
    source = top.sub("source")
    scores = top.sub("scores")
    spaces = top.sub("spaces")
    assert source is not None and scores is not None and spaces is not None
    ref = ReferenceScores(
        ref_min_score=scores.get("ref_min_score", "float", required=False),
        ref_max_score=scores.get("ref_max_score", "float", required=False),
        approximate=scores.get("approximate", "bool"),
        note=scores.get("note", "str", required=False, default=""),
    )
    if (ref.ref_min_score is not None and ref.ref_max_score is not None
            and ref.ref_max_score <= ref.ref_min_score):
        raise scores.fail("ref_max_score", f"({ref.ref_max_score}) must be greater than "
                          f"ref_min_score ({ref.ref_min_score})")
    if ref.approximate and not ref.note:
        raise scores.fail("note", "is missing: approximate reference scores need a note saying why")
    scores.no_unknown_keys()
    card = DatasetCard(
        id=card_id,
        env_id=top.get("env_id", "str"),
        description=top.get("description", "str"),
        source=_parse_source(source),
        scores=ref,
        observation_shape=spaces.get("observation_shape", "shape"),
        action_shape=spaces.get("action_shape", "shape"),
        max_episode_steps=_positive(top, "max_episode_steps", top.get("max_episode_steps", "int")),
        path=path,
    )
    spaces.no_unknown_keys()
    top.no_unknown_keys()
    return card


# ---------------------------------------------------------------------------------- lookup
def builtin_cards_dir() -> Path | None:
    """The folder of cards that ship with offrl, or None if it cannot be found.

    In a source checkout (and an editable install) that is the repo's `datasets/` folder, next
    to the `offrl/` package; a wheel may instead carry a copy at `offrl/data/cards/`.
    """
    package_dir = Path(__file__).resolve().parent.parent  # …/offrl
    for candidate in (package_dir.parent / "datasets", package_dir / "data" / "cards"):
        if candidate.is_dir():
            return candidate
    return None


def cards_dirs() -> list[Path]:
    """Folders searched for cards: each `$OFFRL_CARDS` entry, then the built-in folder."""
    dirs = [Path(p).expanduser() for p in os.environ.get(CARDS_ENV_VAR, "").split(os.pathsep) if p]
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"${CARDS_ENV_VAR} names {d}, which is not a folder")
    builtin = builtin_cards_dir()
    if builtin is not None:
        dirs.append(builtin)
    return dirs


def _card_files(folder: Path) -> list[Path]:
    """Every `*.toml` under `folder`, except under `policies/` (behaviour-policy files)."""
    return sorted(p for p in folder.rglob("*.toml")
                  if "policies" not in p.relative_to(folder).parts[:-1])


@lru_cache(maxsize=8)
def _load_cards(dirs: tuple[Path, ...], stamp: tuple[tuple[str, int], ...]) -> dict[str, DatasetCard]:
    cards: dict[str, DatasetCard] = {}
    for d in dirs:
        for path in _card_files(d):
            card = parse_card(path)
            if card.id in cards:
                raise CardError(f"card id {card.id!r} is defined twice: {cards[card.id].path} "
                                f"and {path}")
            cards[card.id] = card
    return cards


def _all_cards() -> dict[str, DatasetCard]:
    dirs = tuple(cards_dirs())
    # Cache keyed on the files' paths and mtimes, so edited cards are re-read.
    stamp = tuple((str(p), p.stat().st_mtime_ns) for d in dirs for p in _card_files(d))
    return _load_cards(dirs, stamp)


def list_cards() -> list[DatasetCard]:
    """Every registered card, sorted by id."""
    return sorted(_all_cards().values(), key=lambda c: c.id)


def get_card(dataset_id: str) -> DatasetCard:
    """The card with this id; UserError listing close matches if there is none."""
    cards = _all_cards()
    if dataset_id in cards:
        return cards[dataset_id]
    close = difflib.get_close_matches(dataset_id, list(cards), n=5, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    where = ", ".join(str(d) for d in cards_dirs()) or "no cards folder found"
    raise UserError(f"unknown dataset id {dataset_id!r}{hint} (cards read from {where}; "
                    "`offrl datasets list` shows them all)")
