"""The schema of `submission.json` (pydantic v2, strict: unknown keys, wrong types, NaN/inf and
hostile names are rejected; paths inside the bundle are fixed by the dataset id and seed).

Scores are not part of it: the board recomputes every aggregate from the raw per-episode
returns. `claimed_aggregates` may be sent but is never read.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StringConstraints,
                      ValidationError, field_validator, model_validator)

from offrl.errors import UserError

SCHEMA_VERSION = 1
MAX_EPISODES = 10_000
MAX_SEEDS = 1_000
MAX_DATASETS = 200

# Names end up in folder names, URLs and HTML: letters, digits and . _ - only.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
def _no_dot_dot(value: str) -> str:
    if ".." in value:
        raise ValueError("must not contain '..'")
    return value


DatasetId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"),
                      AfterValidator(_no_dot_dot)]
EnvId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
GitCommit = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{7,64}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")]
Timestamp = Annotated[str, StringConstraints(
    pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")]
FreeText = Annotated[str, StringConstraints(max_length=2000)]  # escaped wherever it is shown
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, lt=2**31)]
EnvSeed = Annotated[int, Field(ge=0, lt=2**32)]


class SchemaError(UserError, ValueError):
    """submission.json does not follow the schema; the message lists every problem."""


def dataset_dirname(dataset_id: str) -> str:
    """A dataset id as one path component (Minari ids have slashes)."""
    return dataset_id.replace("/", "--")


def policy_path(dataset_id: str, seed: int) -> str:
    """Where a seed's policy lives inside a bundle."""
    return f"policies/{dataset_dirname(dataset_id)}/seed_{seed}.pt"


def config_path(dataset_id: str) -> str:
    """Where a dataset's config.toml lives inside a bundle."""
    return f"configs/{dataset_dirname(dataset_id)}.toml"


def _check_json_values(value: Any, where: str, depth: int = 0) -> None:
    """Plain JSON only: finite numbers, short strings, at most 8 levels deep."""
    if depth > 8:
        raise ValueError(f"{where}: nested more than 8 levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number")
    if isinstance(value, str) and len(value) > 2000:
        raise ValueError(f"{where}: string longer than 2000 characters")
    if isinstance(value, dict):
        if len(value) > 500:
            raise ValueError(f"{where}: more than 500 keys")
        for k, v in value.items():
            if not isinstance(k, str) or len(k) > 200:
                raise ValueError(f"{where}: keys must be strings of at most 200 characters")
            _check_json_values(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        if len(value) > 10_000:
            raise ValueError(f"{where}: more than 10000 items")
        for i, v in enumerate(value):
            _check_json_values(v, f"{where}[{i}]", depth + 1)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SuiteRef(_Strict):
    name: Name
    version: Name


class Code(_Strict):
    """The code that produced the runs: offrl's version and the git commits of its checkout."""

    offrl_version: Version
    git_commits: list[GitCommit | None] = Field(max_length=100)
    git_dirty: bool | None


class Protocol(_Strict):
    """How scores were measured: gradient steps per seed, final-evaluation episodes per seed,
    and last iterate (the final policy, never the best one seen)."""

    training_steps: Annotated[int, Field(gt=0)]
    evaluation_episodes: Annotated[int, Field(gt=0, le=MAX_EPISODES)]
    last_iterate: bool


class SeedResult(_Strict):
    """One seed (run) on one dataset: its policy and the raw returns of its final evaluation."""

    seed: Seed
    step: Annotated[int, Field(ge=0)]
    policy: str
    returns: list[FiniteFloat] = Field(min_length=1, max_length=MAX_EPISODES)
    lengths: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=MAX_EPISODES)
    env_seeds: list[EnvSeed] = Field(min_length=1, max_length=MAX_EPISODES)

    @model_validator(mode="after")
    def _same_lengths(self) -> "SeedResult":
        if not len(self.returns) == len(self.lengths) == len(self.env_seeds):
            raise ValueError(f"seed {self.seed}: returns, lengths and env_seeds must have one "
                             f"entry per episode (got {len(self.returns)}, {len(self.lengths)}, "
                             f"{len(self.env_seeds)})")
        if len(set(self.env_seeds)) != len(self.env_seeds):
            raise ValueError(f"seed {self.seed}: an env seed repeats; every episode needs its "
                             "own")
        return self


class DatasetResult(_Strict):
    """Every seed on one dataset, with the dataset's identity and the config as run."""

    dataset_id: DatasetId
    sha256: Sha256
    env_id: EnvId
    max_episode_steps: Annotated[int, Field(gt=0)]
    ref_min_score: FiniteFloat | None
    ref_max_score: FiniteFloat | None
    config: str
    hyperparameters: dict[str, Any]
    results: list[SeedResult] = Field(min_length=1, max_length=MAX_SEEDS)

    @field_validator("hyperparameters")
    @classmethod
    def _plain_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json_values(value, "hyperparameters")
        return value

    @model_validator(mode="after")
    def _paths_and_seeds(self) -> "DatasetResult":
        if self.config != config_path(self.dataset_id):
            raise ValueError(f"{self.dataset_id}: config must be "
                             f"{config_path(self.dataset_id)!r}, got {self.config!r}")
        seeds = [r.seed for r in self.results]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{self.dataset_id}: a seed appears twice in {seeds}")
        for r in self.results:
            if r.policy != policy_path(self.dataset_id, r.seed):
                raise ValueError(f"{self.dataset_id} seed {r.seed}: policy must be "
                                 f"{policy_path(self.dataset_id, r.seed)!r}, got {r.policy!r}")
        if (self.ref_min_score is None) != (self.ref_max_score is None) or (
                self.ref_min_score is not None and not self.ref_max_score > self.ref_min_score):
            raise ValueError(f"{self.dataset_id}: ref_min_score and ref_max_score must both be "
                             "null, or numbers with max > min")
        return self

    def normalized(self, returns: list[float]) -> list[float]:
        """100 × (return − ref_min) / (ref_max − ref_min); raw returns without references."""
        if self.ref_min_score is None or self.ref_max_score is None:
            return list(returns)
        span = self.ref_max_score - self.ref_min_score
        return [100.0 * (r - self.ref_min_score) / span for r in returns]

    def seed_scores(self) -> dict[int, float]:
        """{seed: mean normalised score over its final-evaluation episodes}."""
        return {r.seed: float(sum(self.normalized(r.returns)) / len(r.returns))
                for r in self.results}


class Submission(_Strict):
    """submission.json."""

    schema_version: Literal[1]
    name: Name
    description: FreeText = ""
    submitter: Annotated[str, StringConstraints(max_length=200)] = ""
    created: Timestamp
    suite: SuiteRef
    algorithm: Name
    code: Code
    protocol: Protocol
    datasets: list[DatasetResult] = Field(min_length=1, max_length=MAX_DATASETS)
    claimed_aggregates: dict[str, FiniteFloat] | None = None   # never read: recomputed

    @model_validator(mode="after")
    def _distinct_datasets(self) -> "Submission":
        ids = [d.dataset_id for d in self.datasets]
        if len(set(ids)) != len(ids):
            raise ValueError(f"a dataset appears twice in {ids}")
        names = [dataset_dirname(i) for i in ids]
        if len(set(names)) != len(names):
            raise ValueError(f"two dataset ids map to the same folder name: {ids}")
        return self

    def dataset(self, dataset_id: str) -> DatasetResult:
        for d in self.datasets:
            if d.dataset_id == dataset_id:
                return d
        raise KeyError(dataset_id)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON (numbers must be finite)")


def parse_submission(text: str | bytes, source: str = "submission.json") -> Submission:
    """Parse and validate submission.json text; SchemaError listing every problem."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise SchemaError(f"{source}: not valid JSON ({exc})") from None
    return validate_submission(data, source)


def validate_submission(data: Any, source: str = "submission.json") -> Submission:
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: expected a JSON object, got {type(data).__name__}")
    try:
        return Submission.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:20]:
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"{where}: {err['msg']}")
        more = f" (and {exc.error_count() - 20} more)" if exc.error_count() > 20 else ""
        raise SchemaError(f"{source} does not follow the submission schema: "
                          + "; ".join(problems) + more) from None


def submission_fingerprint(submission: Submission) -> str:
    """sha256 of the results alone (dataset, seed, returns, env seeds): the same results
    submitted again under another name or description have the same fingerprint."""
    import hashlib

    results = sorted(
        (d.dataset_id, r.seed, [float(x).hex() for x in r.returns], list(r.env_seeds))
        for d in submission.datasets for r in d.results)
    payload = json.dumps(results, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def printable(text: str, limit: int = 200) -> str:
    """A string safe to print on a terminal: control characters replaced, cut at `limit`."""
    text = _CONTROL.sub("?", text)
    return text if len(text) <= limit else text[:limit] + "…"
