"""The board's numbers, always recomputed from raw per-episode returns with
`offrl.evaluation.stats` (submitted aggregates are never read).

A run's score is the mean normalised score over its final-evaluation episodes (last iterate);
each submission is an "algorithm" to the statistics engine, each suite dataset a task. Per
suite (name and version): IQM, mean, median and optimality gap with 95% stratified-bootstrap
intervals, per-dataset mean scores with intervals, P(submission > leader) with intervals, and
run-score performance profiles. Ranking: by IQM point estimate, highest first. Flagged
submissions are listed but not ranked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from offrl.evaluation import stats
from offrl.leaderboard.schema import Submission
from offrl.leaderboard.verify import STATUS_FLAGGED

STATUS_PENDING = "pending"


@dataclass
class BoardEntry:
    """One submission as the board sees it. `links`: {label: href} (config files etc.)."""

    submission: Submission
    status: str = STATUS_PENDING          # pending, verified or flagged
    message: str = ""                     # the verification's summary
    links: dict[str, str] = field(default_factory=dict)


@dataclass
class Row:
    rank: int
    entry: BoardEntry
    aggregates: dict[str, stats.Interval]       # IQM, Mean, Median, Optimality Gap
    per_dataset: list[stats.Interval]           # one per suite dataset, in `datasets` order
    improvement_vs_leader: stats.Interval | None   # P(this > leader); None for the leader
    seeds: int                                   # seeds per dataset (the smallest)

    @property
    def name(self) -> str:
        return self.entry.submission.name


@dataclass
class SuiteStandings:
    suite: str
    version: str
    datasets: list[str]
    rows: list[Row]
    flagged: list[BoardEntry]
    profiles: dict[str, stats.Profile]
    confidence: float

    @property
    def leader(self) -> str | None:
        return self.rows[0].name if self.rows else None


def score_columns(submission: Submission, datasets: list[str]) -> list[np.ndarray]:
    """Per dataset, the (seeds,) run scores of a submission."""
    return [np.array(list(submission.dataset(d).seed_scores().values())) for d in datasets]


def compute_standings(entries: list[BoardEntry], *, reps: int = 20_000,
                      profile_reps: int = 2_000, confidence: float = 0.95,
                      seed: int = 0) -> list[SuiteStandings]:
    """Standings of every suite present in `entries`, suites sorted by name and version."""
    by_suite: dict[tuple[str, str], list[BoardEntry]] = {}
    for e in entries:
        s = e.submission.suite
        by_suite.setdefault((s.name, s.version), []).append(e)
    out = []
    for (suite, version), group in sorted(by_suite.items()):
        ranked = [e for e in group if e.status != STATUS_FLAGGED]
        flagged = sorted((e for e in group if e.status == STATUS_FLAGGED),
                         key=lambda e: e.submission.name)
        datasets = sorted({d.dataset_id for e in group for d in e.submission.datasets})
        usable = [e for e in ranked
                  if {d.dataset_id for d in e.submission.datasets} == set(datasets)]
        rows: list[Row] = []
        profiles: dict[str, stats.Profile] = {}
        if usable:
            scores = {e.submission.name: score_columns(e.submission, datasets) for e in usable}
            aggregates = stats.aggregate_intervals(scores, reps=reps, confidence=confidence,
                                                   seed=seed)
            per_dataset = stats.task_mean_intervals(scores, reps=reps, confidence=confidence,
                                                    seed=seed)
            order = sorted(usable, key=lambda e: (-aggregates[e.submission.name]["IQM"].point,
                                                  e.submission.name))
            leader = order[0].submission.name
            pairs = [(e.submission.name, leader) for e in order[1:]]
            poi = (stats.probability_of_improvement_intervals(
                scores, pairs=pairs, reps=profile_reps, confidence=confidence, seed=seed)
                if pairs else {})
            profiles = stats.performance_profiles(scores, stats.default_taus(scores, points=51),
                                                  reps=profile_reps, confidence=confidence,
                                                  seed=seed)
            for rank, e in enumerate(order, start=1):
                name = e.submission.name
                rows.append(Row(rank, e, aggregates[name], per_dataset[name],
                                poi.get((name, leader)),
                                min(len(d.results) for d in e.submission.datasets)))
        out.append(SuiteStandings(suite, version, datasets, rows, flagged, profiles, confidence))
    return out


def _interval(iv: stats.Interval | None) -> dict[str, float] | None:
    return None if iv is None else {"point": iv.point, "low": iv.low, "high": iv.high}


def standings_json(standings: list[SuiteStandings]) -> list[dict[str, Any]]:
    """The standings as plain JSON (for the API and leaderboard.json)."""
    out = []
    for s in standings:
        out.append({
            "suite": s.suite, "version": s.version, "datasets": s.datasets,
            "confidence": s.confidence, "leader": s.leader,
            "rows": [{
                "rank": r.rank, "name": r.name, "algorithm": r.entry.submission.algorithm,
                "status": r.entry.status, "seeds": r.seeds,
                "aggregates": {m: _interval(iv) for m, iv in r.aggregates.items()},
                "per_dataset": {d: _interval(iv) for d, iv in zip(s.datasets, r.per_dataset)},
                "probability_of_improvement_vs_leader": _interval(r.improvement_vs_leader),
                "links": r.entry.links,
            } for r in s.rows],
            "flagged": [{"name": e.submission.name, "algorithm": e.submission.algorithm,
                         "message": e.message, "links": e.links} for e in s.flagged],
        })
    return out
