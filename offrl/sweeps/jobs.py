"""Jobs: a suite expanded into one job per (algorithm, dataset[, condition]), all seeds in one
process. With [conditions], a job trains on the condition's dataset id (e.g. a derived
`<id>-labelled10-lowest50-s0`) with the config of the [suite] dataset it is made from.

A job is self-contained and JSON-able (its fully resolved config travels with it), so a worker
needs neither the suite file nor the config files, which is what a Ray node on another machine
needs. Its run directory is `<sweep out>/runs/<algo>/<dataset>/` (the layout of
docs/run-directory.md, with a fixed last part so that a rerun finds it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from offrl.sweeps.suite import Condition, Suite, SuiteError
from offrl.training.run_dir import safe_dataset_dirname

RUNS_DIR = "runs"


@dataclass(frozen=True)
class Job:
    """One `offrl train` run of a sweep: every seed of `algo` on `dataset`."""

    algo: str
    dataset: str
    seeds: tuple[int, ...]
    steps: int
    config: dict[str, dict[str, Any]]
    """The resolved config ({"algo": …, "training": …}), exactly what the worker trains with."""
    config_source: str | None
    """The config file it was read from (for the record), None for built-in defaults."""
    config_sha256: str
    """sha256 of the resolved config's TOML (and, on a derived dataset, of how it is made): a
    rerun refuses a run dir made with another."""

    @property
    def id(self) -> str:
        return f"{self.algo}/{self.dataset}"

    @property
    def slug(self) -> str:
        """The id as one file name (logs, job files)."""
        return f"{self.algo}--{safe_dataset_dirname(self.dataset)}"

    @property
    def run_dir(self) -> str:
        """The run directory, relative to the sweep's output folder."""
        return f"{RUNS_DIR}/{self.algo}/{safe_dataset_dirname(self.dataset)}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Job":
        return cls(algo=data["algo"], dataset=data["dataset"], seeds=tuple(data["seeds"]),
                   steps=int(data["steps"]), config=data["config"],
                   config_source=data.get("config_source"),
                   config_sha256=data["config_sha256"])


def resolve_job(suite: Suite, algorithm_name: str, dataset: str,
                condition: Condition | None = None) -> Job:
    """The job for one (algorithm, dataset) of `suite`, its config resolved and checked; with
    a `condition`, on that condition's dataset made from `dataset` (with `dataset`'s config)."""
    from offrl.algos import get_algorithm
    from offrl.training.config import (ConfigError, SECTIONS, build_config,
                                       default_config_path, read_config_file)

    entry = next(a for a in suite.algorithms if a.name == algorithm_name)
    agent_cls = get_algorithm(entry.name)
    path = entry.config_for(dataset) or default_config_path(entry.name, dataset)
    tables = read_config_file(path) if path is not None else {k: {} for k in SECTIONS}
    source = str(path) if path is not None else "<defaults>"
    try:
        config = build_config(entry.name, agent_cls.config_class, tables, source=source,
                              training_overrides=suite.training_overrides(entry),
                              algo_overrides=entry.algo)
    except ConfigError as exc:
        raise SuiteError(f"{suite.path}: {entry.name} on {dataset}: {exc}") from None
    text = config.to_toml()
    recipe = condition.recipe() if condition is not None else []
    if recipe:
        text += f"\n# dataset {dataset}: {json.dumps(recipe, sort_keys=True)}\n"
    train_on = condition.dataset_id(dataset) if condition is not None else dataset
    return Job(algo=entry.name, dataset=train_on, seeds=tuple(config.training.seeds),
               steps=config.training.steps, config=config.to_dict(),
               config_source=str(Path(path).resolve()) if path is not None else None,
               config_sha256=hashlib.sha256(text.encode()).hexdigest())


def expand_suite(suite: Suite) -> list[Job]:
    """Every (algorithm, dataset[, condition]) job of the suite, algorithms in the file's
    order, then datasets, then conditions: the jobs start in this order (put the slowest
    algorithm first)."""
    return [resolve_job(suite, a.name, d, c) for a in suite.algorithms
            for d, c in suite.dataset_conditions()]
