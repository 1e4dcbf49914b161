"""Benchmark suites: which datasets a submission covers, and the protocol it follows.

A suite is a small TOML file (`evaluation/suites/<name>.toml`, or any path) or dict::

    name = "mujoco-core"
    version = "1"
    datasets = ["hopper-medium-v2", "walker2d-medium-v2"]   # or [{id = "…"}, …]
    seeds_min = 5          # seeds per dataset at least (the board never accepts fewer than 5)
    eval_episodes = 10     # final-evaluation episodes per seed, exactly
    steps = 1000000        # gradient steps per seed, exactly

The keys may also sit in a `[suite]` table; `min_seeds`, `episodes` / `evaluation_episodes`
and `training_steps` are accepted as other spellings.

The sweep suites of `evaluation/suites/` (`offrl.sweeps.suite`) are read too: there `[suite]
seeds` (a list) gives seeds_min = its length, `[training]` gives steps and eval_episodes, an
algorithm's own `[algorithms.<name>.training]` overrides them for that algorithm
(`Suite.steps_for`), and version defaults to "1".
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offrl.errors import UserError

SUITES_ENV_VAR = "OFFRL_SUITES"
BOARD_MIN_SEEDS = 5   # the board's floor, whatever a suite says
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ALIASES = {"seeds_min": ("seeds_min", "min_seeds"),
            "eval_episodes": ("eval_episodes", "episodes", "evaluation_episodes"),
            "steps": ("steps", "training_steps")}


class SuiteError(UserError, ValueError):
    """A suite that cannot be read. The message names the file and the key."""


@dataclass(frozen=True)
class Suite:
    """A benchmark suite; `seeds_min` already includes the board's floor of 5."""

    name: str
    version: str
    datasets: tuple[str, ...]
    seeds_min: int
    eval_episodes: int
    steps: int
    source: str = "<dict>"
    algorithm_steps: tuple[tuple[str, int], ...] = ()
    """(algorithm, steps) where an algorithm trains for other than `steps`."""
    algorithm_eval_episodes: tuple[tuple[str, int], ...] = ()

    def steps_for(self, algorithm: str) -> int:
        return dict(self.algorithm_steps).get(algorithm, self.steps)

    def eval_episodes_for(self, algorithm: str) -> int:
        return dict(self.algorithm_eval_episodes).get(algorithm, self.eval_episodes)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "datasets": list(self.datasets),
                "seeds_min": self.seeds_min, "eval_episodes": self.eval_episodes,
                "steps": self.steps}


def _pick(data: dict[str, Any], key: str, source: str) -> Any:
    for spelling in _ALIASES.get(key, (key,)):
        if spelling in data:
            return data[spelling]
    raise SuiteError(f"{source}: missing {key!r}")


def _positive_int(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SuiteError(f"{source}: {key!r} must be a positive integer, got {value!r}")
    return value


def suite_from_dict(data: dict[str, Any], source: str = "<dict>") -> Suite:
    """Check and normalise a suite given as a dict (see the module docstring)."""
    if not isinstance(data, dict):
        raise SuiteError(f"{source}: a suite must be a table, got {type(data).__name__}")
    by_algo_steps: dict[str, int] = {}
    by_algo_episodes: dict[str, int] = {}
    if isinstance(data.get("suite"), dict) and isinstance(data["suite"].get("seeds"), list):
        data, by_algo_steps, by_algo_episodes = _from_sweep_suite(data, source)
    if isinstance(data.get("suite"), dict):
        data = {**data["suite"], **{k: v for k, v in data.items() if k != "suite"}}
    name = str(_pick(data, "name", source))
    if not _NAME.match(name):
        raise SuiteError(f"{source}: name {name!r} must be letters, digits, '.', '_' or '-'")
    version = str(_pick(data, "version", source))
    if not _NAME.match(version):
        raise SuiteError(f"{source}: version {version!r} must be letters, digits, '.', '_' "
                         "or '-'")
    raw = _pick(data, "datasets", source)
    if not isinstance(raw, list) or not raw:
        raise SuiteError(f"{source}: 'datasets' must be a non-empty list of dataset ids")
    datasets = []
    for i, item in enumerate(raw):
        ident = item.get("id") if isinstance(item, dict) else item
        if not isinstance(ident, str) or not ident:
            raise SuiteError(f"{source}: datasets[{i}] must be a dataset id (or a table with "
                             f"'id'), got {item!r}")
        datasets.append(ident)
    if len(set(datasets)) != len(datasets):
        raise SuiteError(f"{source}: 'datasets' lists a dataset twice")
    seeds_min = _positive_int(_pick(data, "seeds_min", source), "seeds_min", source)
    episodes = _positive_int(_pick(data, "eval_episodes", source), "eval_episodes", source)
    steps = _positive_int(_pick(data, "steps", source), "steps", source)
    for algo, value in {**by_algo_steps, **by_algo_episodes}.items():
        _positive_int(value, f"algorithms.{algo}.training", source)
    return Suite(name, version, tuple(datasets), max(seeds_min, BOARD_MIN_SEEDS), episodes,
                 steps, source, tuple(sorted(by_algo_steps.items())),
                 tuple(sorted(by_algo_episodes.items())))


def _from_sweep_suite(data: dict[str, Any], source: str
                      ) -> tuple[dict[str, Any], dict[str, int], dict[str, int]]:
    """A sweep suite's facts in this module's keys, plus per-algorithm steps and episodes."""
    head = data["suite"]
    training = data.get("training", {}) if isinstance(data.get("training"), dict) else {}
    flat = {"name": head.get("name", Path(source).stem), "version": str(head.get("version", "1")),
            "datasets": head.get("datasets"), "seeds_min": len(head["seeds"]),
            "steps": training.get("steps", 1_000_000),
            "eval_episodes": training.get("eval_episodes", 10)}
    steps, episodes = {}, {}
    for algo, table in (data.get("algorithms") or {}).items():
        own = table.get("training", {}) if isinstance(table, dict) else {}
        if "steps" in own and own["steps"] != flat["steps"]:
            steps[algo] = own["steps"]
        if "eval_episodes" in own and own["eval_episodes"] != flat["eval_episodes"]:
            episodes[algo] = own["eval_episodes"]
    return flat, steps, episodes


def suites_dirs() -> list[Path]:
    """Folders searched for `<name>.toml`: each `$OFFRL_SUITES` entry, then evaluation/suites."""
    dirs = [Path(p) for p in os.environ.get(SUITES_ENV_VAR, "").split(os.pathsep) if p]
    builtin = Path(__file__).resolve().parent.parent.parent / "evaluation" / "suites"
    if builtin.is_dir():
        dirs.append(builtin)
    return dirs


def load_suite(suite: str | os.PathLike | dict[str, Any] | Suite) -> Suite:
    """A Suite from a dict, a TOML path, or a suite name looked up in `suites_dirs()`."""
    if isinstance(suite, Suite):
        return suite
    if isinstance(suite, dict):
        return suite_from_dict(suite)
    path = Path(suite)
    if not path.is_file():
        name = str(suite)
        found = [d / f"{name}.toml" for d in suites_dirs() if (d / f"{name}.toml").is_file()]
        if not found or not _NAME.match(name):
            where = ", ".join(str(d) for d in suites_dirs()) or "no suites folder"
            raise SuiteError(f"no suite {name!r}: not a file, and no {name}.toml in {where}")
        path = found[0]
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML ({exc})") from None
    return suite_from_dict(data, str(path))
