"""Jobs: a suite expanded into one job per (algorithm, dataset), all seeds in one process.

A job is self-contained and JSON-able (its fully resolved config travels with it), so a worker
needs neither the suite file nor the config files, which is what a Ray node on another machine
needs. Its run directory is `<sweep out>/runs/<algo>/<dataset>/` (the layout of
docs/run-directory.md, with a fixed last part so that a rerun finds it).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from offrl.sweeps.suite import Suite, SuiteError
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
    """sha256 of the resolved config's TOML: a rerun refuses a run dir made with another."""

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


def resolve_job(suite: Suite, algorithm_name: str, dataset: str) -> Job:
    """The job for one (algorithm, dataset) of `suite`, its config resolved and checked."""
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
    return Job(algo=entry.name, dataset=dataset, seeds=tuple(config.training.seeds),
               steps=config.training.steps, config=config.to_dict(),
               config_source=str(Path(path).resolve()) if path is not None else None,
               config_sha256=hashlib.sha256(text.encode()).hexdigest())


def expand_suite(suite: Suite) -> list[Job]:
    """Every (algorithm, dataset) job of the suite, algorithms in the file's order, then
    datasets: the jobs start in this order (put the slowest algorithm first)."""
    return [resolve_job(suite, a.name, d) for a in suite.algorithms for d in suite.datasets]
