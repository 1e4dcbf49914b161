"""The rules every submission must pass before it reaches the board.

Each rule has a name; `check_rules` returns every violation (rule, message), and
`enforce_rules` raises RulesError listing them all. The rules:

- suite:          the submission names this suite and version;
- datasets:       every dataset of the suite is present, and no other;
- seeds:          at least `suite.seeds_min` seeds (never fewer than 5) per dataset;
- episodes:       exactly `suite.eval_episodes` final-evaluation episodes for every seed;
- protocol:       `suite.steps` gradient steps, last iterate, every seed evaluated at that step;
- finite:         every return finite (the schema already refuses NaN and inf);
- registry:       dataset sha256, env, episode limit and reference scores equal the registry's
                  cards (so nobody normalises with their own references);
- policies:       every seed's policy is in the bundle, loads as TorchScript, is the policy of
                  that dataset and seed, and maps observations to finite actions of the right
                  shape;
- duplicate:      no submission with the same name or the same results exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from offrl.errors import UserError
from offrl.leaderboard.schema import Submission, submission_fingerprint
from offrl.leaderboard.suite import Suite

RULES = ("suite", "datasets", "seeds", "episodes", "protocol", "finite", "registry",
         "policies", "duplicate")


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"


class RulesError(UserError, ValueError):
    """A submission that breaks rules; `violations` lists them."""

    def __init__(self, violations: list[Violation], source: str = "the submission"):
        self.violations = violations
        super().__init__(f"{source} breaks {len(violations)} rule(s): "
                         + "; ".join(str(v) for v in violations))


@dataclass(frozen=True)
class RegistryFacts:
    """What the registry says about a dataset (None: unknown)."""

    sha256: str | None
    env_id: str
    max_episode_steps: int
    ref_min_score: float | None
    ref_max_score: float | None


@lru_cache(maxsize=256)
def _registry_facts_cached(dataset_id: str, card_path: str, mtime_ns: int) -> RegistryFacts:
    from offrl.data.download import verified_sha256
    from offrl.data.load import fetch, load_dataset
    from offrl.data.registry import RecipeSource, get_card

    card = get_card(dataset_id)
    sha = card.metadata().get("sha256")
    if sha is None and isinstance(card.source, RecipeSource):
        # A recipe is deterministic: the registry's hash is that of the data it builds.
        sha = verified_sha256(fetch(card, progress=False))
    elif sha is None:
        sha = load_dataset(card, progress=False).metadata.get("sha256")
    return RegistryFacts(sha, card.env_id, card.max_episode_steps, card.ref_min_score,
                         card.ref_max_score)


def registry_facts(dataset_id: str) -> RegistryFacts:
    """The registry's facts for a dataset id (UserError for an unknown id). Recipe datasets
    are built if they are not cached, to know their sha256."""
    from offrl.data.registry import get_card

    card = get_card(dataset_id)
    return _registry_facts_cached(dataset_id, str(card.path), card.path.stat().st_mtime_ns)


def _check_registry(submission: Submission,
                    facts_of: Callable[[str], RegistryFacts]) -> list[Violation]:
    out = []
    for d in submission.datasets:
        try:
            facts = facts_of(d.dataset_id)
        except UserError as exc:
            out.append(Violation("registry", f"{d.dataset_id}: {exc}"))
            continue
        if facts.sha256 is None or d.sha256 != facts.sha256:
            out.append(Violation("registry", f"{d.dataset_id}: dataset sha256 {d.sha256[:12]}… "
                                 f"is not the registry's ({(facts.sha256 or 'unknown')[:12]}…)"))
        if d.env_id != facts.env_id:
            out.append(Violation("registry", f"{d.dataset_id}: env {d.env_id!r} is not the "
                                 f"card's {facts.env_id!r}"))
        if d.max_episode_steps != facts.max_episode_steps:
            out.append(Violation("registry", f"{d.dataset_id}: episodes of at most "
                                 f"{d.max_episode_steps} steps, the card says "
                                 f"{facts.max_episode_steps}"))
        if (d.ref_min_score, d.ref_max_score) != (facts.ref_min_score, facts.ref_max_score):
            out.append(Violation("registry", f"{d.dataset_id}: reference scores "
                                 f"({d.ref_min_score}, {d.ref_max_score}) are not the card's "
                                 f"({facts.ref_min_score}, {facts.ref_max_score})"))
    return out


def _check_policies(submission: Submission, bundle_dir: Path) -> list[Violation]:
    import torch

    from offrl.training.export import ExportError, load_policy

    out = []
    for d in submission.datasets:
        for r in d.results:
            where = f"{d.dataset_id} seed {r.seed}"
            path = bundle_dir / r.policy
            if not path.is_file():
                out.append(Violation("policies", f"{where}: {r.policy} is missing"))
                continue
            try:
                module, info = load_policy(path)
            except ExportError as exc:
                out.append(Violation("policies", f"{where}: {exc}"))
                continue
            if info.get("seed") != r.seed or info.get("dataset_id") != d.dataset_id:
                out.append(Violation("policies", f"{where}: {r.policy} is the policy of "
                                     f"{info.get('dataset_id')!r} seed {info.get('seed')!r}"))
                continue
            obs_dim, act_dim = info.get("observation_dim"), info.get("action_dim")
            if not isinstance(obs_dim, int) or not isinstance(act_dim, int) or not (
                    0 < obs_dim <= 100_000 and 0 < act_dim <= 100_000):
                out.append(Violation("policies", f"{where}: bad dimensions in the policy file"))
                continue
            try:
                with torch.no_grad():
                    actions = module(torch.zeros(2, obs_dim))
                ok = (isinstance(actions, torch.Tensor) and tuple(actions.shape) == (2, act_dim)
                      and bool(torch.isfinite(actions).all()))
            except Exception as exc:  # a policy that fails to run
                out.append(Violation("policies", f"{where}: the policy fails to run ({exc})"))
                continue
            if not ok:
                out.append(Violation("policies", f"{where}: the policy does not map (N, "
                                     f"{obs_dim}) observations to finite (N, {act_dim}) actions"))
    return out


def check_rules(submission: Submission, suite: Suite, *, bundle_dir: str | Path | None,
                existing_names: Collection[str] = (),
                existing_fingerprints: Collection[str] = (),
                facts_of: Callable[[str], RegistryFacts] = registry_facts,
                check_policies: bool = True) -> list[Violation]:
    """Every violation of the rules (empty: the submission passes). bundle_dir holds the
    policies (None skips the policy rule, e.g. for a bare submission.json)."""
    out: list[Violation] = []
    if (submission.suite.name, submission.suite.version) != (suite.name, suite.version):
        out.append(Violation("suite", f"the submission is for suite {submission.suite.name} "
                             f"version {submission.suite.version}, not {suite.name} version "
                             f"{suite.version}"))
    present = [d.dataset_id for d in submission.datasets]
    missing = [d for d in suite.datasets if d not in present]
    extra = [d for d in present if d not in suite.datasets]
    if missing:
        out.append(Violation("datasets", f"missing dataset(s) of suite {suite.name}: "
                             f"{', '.join(missing)}"))
    if extra:
        out.append(Violation("datasets", f"dataset(s) not in suite {suite.name}: "
                             f"{', '.join(extra)}"))
    p = submission.protocol
    steps = suite.steps_for(submission.algorithm)
    episodes = suite.eval_episodes_for(submission.algorithm)
    if p.training_steps != steps:
        out.append(Violation("protocol", f"trained for {p.training_steps} steps; the suite "
                             f"says {steps}"))
    if not p.last_iterate:
        out.append(Violation("protocol", "scores must be of the last iterate, not the best one"))
    if p.evaluation_episodes != episodes:
        out.append(Violation("episodes", f"protocol says {p.evaluation_episodes} evaluation "
                             f"episodes; the suite says {episodes}"))
    for d in submission.datasets:
        if len(d.results) < suite.seeds_min:
            out.append(Violation("seeds", f"{d.dataset_id}: {len(d.results)} seed(s); at least "
                                 f"{suite.seeds_min} are needed"))
        for r in d.results:
            if len(r.returns) != p.evaluation_episodes:
                out.append(Violation("episodes", f"{d.dataset_id} seed {r.seed}: "
                                     f"{len(r.returns)} episode(s), the protocol says "
                                     f"{p.evaluation_episodes}"))
            if r.step != p.training_steps:
                out.append(Violation("protocol", f"{d.dataset_id} seed {r.seed}: evaluated at "
                                     f"step {r.step}, not the final step {p.training_steps}"))
            if not all(math.isfinite(x) for x in r.returns):
                out.append(Violation("finite", f"{d.dataset_id} seed {r.seed}: a return is "
                                     "not finite"))
            if any(length > d.max_episode_steps for length in r.lengths):
                out.append(Violation("episodes", f"{d.dataset_id} seed {r.seed}: an episode is "
                                     f"longer than {d.max_episode_steps} steps"))
    out += _check_registry(submission, facts_of)
    if check_policies and bundle_dir is not None:
        out += _check_policies(submission, Path(bundle_dir))
    if submission.name in existing_names:
        out.append(Violation("duplicate", f"a submission named {submission.name!r} exists"))
    if submission_fingerprint(submission) in existing_fingerprints:
        out.append(Violation("duplicate", "a submission with exactly these results exists"))
    return out


def enforce_rules(submission: Submission, suite: Suite, source: str = "the submission",
                  **kwargs: Any) -> None:
    """check_rules, raising RulesError if anything is broken."""
    violations = check_rules(submission, suite, **kwargs)
    if violations:
        raise RulesError(violations, source)
