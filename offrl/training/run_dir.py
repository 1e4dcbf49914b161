"""Run directories: where one `offrl train` run (all its seeds) keeps everything it produces.

Layout and file formats: docs/run-directory.md. Everything downstream (`offrl evaluate`,
reports, submissions, sweeps) reads only these files.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from offrl.errors import UserError

RUN_JSON = "run.json"
CONFIG_TOML = "config.toml"
METRICS_CSV = "metrics.csv"
EVALUATIONS_CSV = "evaluations.csv"
POSTHOC_EVALUATIONS_CSV = "posthoc_evaluations.csv"
NORMALIZATION_JSON = "normalization.json"
CHECKPOINTS = "checkpoints"
LATEST_CHECKPOINT = "latest.pt"
TENSORBOARD = "tensorboard"

STATUS_RUNNING, STATUS_INTERRUPTED, STATUS_FAILED, STATUS_COMPLETE = (
    "running", "interrupted", "failed", "complete")


def utc_now() -> str:
    """The current UTC time as ISO 8601 with a Z, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_commit(path: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the work tree has uncommitted changes) of the git repository that
    holds `path` (default: the offrl package), or (None, None) outside a repository."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=where, capture_output=True, text=True, timeout=30)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return commit.stdout.strip() or None, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to path.tmp then rename over `path`, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def safe_dataset_dirname(dataset_id: str) -> str:
    """A dataset id as one folder name (Minari ids have slashes: mujoco/hopper/medium-v0)."""
    return dataset_id.replace("/", "--").replace("\\", "--")


class RunDirectory:
    """One run directory. `create` makes a new one; `RunDirectory(path)` opens an existing one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # ---------------------------------------------------------------- paths
    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def config_toml(self) -> Path:
        return self.path / CONFIG_TOML

    @property
    def metrics_csv(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def evaluations_csv(self) -> Path:
        return self.path / EVALUATIONS_CSV

    @property
    def posthoc_evaluations_csv(self) -> Path:
        return self.path / POSTHOC_EVALUATIONS_CSV

    @property
    def normalization_json(self) -> Path:
        return self.path / NORMALIZATION_JSON

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def latest_checkpoint(self) -> Path:
        return self.checkpoints_dir / LATEST_CHECKPOINT

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints_dir / f"step_{step}.pt"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    # ---------------------------------------------------------------- creation
    @staticmethod
    def new_path(root: str | os.PathLike, algo: str, dataset_id: str, config_text: str) -> Path:
        """<root>/<algo>/<dataset_id>/<YYYYmmdd-HHMMSS>-<6 hex of the config's sha256>.

        A second run started in the same second with the same config gets a -2, -3… suffix."""
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        short = hashlib.sha256(config_text.encode()).hexdigest()[:6]
        base = Path(root) / algo / safe_dataset_dirname(dataset_id) / f"{stamp}-{short}"
        path, k = base, 1
        while path.exists():
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        return path

    @classmethod
    def create(cls, path: str | os.PathLike, *, info: dict[str, Any], config_text: str,
               normalization: dict[str, Any]) -> "RunDirectory":
        """Make the folder and write run.json, config.toml and normalization.json."""
        run = cls(path)
        if run.run_json.exists():
            raise UserError(f"{run.path} already holds a run (run.json exists); resume it with "
                            f"`offrl train --resume {run.path}` or choose another folder")
        run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.config_toml, config_text)
        write_json_atomic(run.normalization_json, normalization)
        write_json_atomic(run.run_json, info)
        return run

    # ---------------------------------------------------------------- reading
    def exists(self) -> bool:
        return self.run_json.is_file()

    def require(self) -> "RunDirectory":
        if not self.path.is_dir():
            raise UserError(f"run directory {self.path} does not exist")
        if not self.exists():
            raise UserError(f"{self.path} is not a run directory (it has no {RUN_JSON})")
        return self

    def read_info(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_json.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {self.run_json}: {exc}") from exc

    def update_info(self, **changes: Any) -> dict[str, Any]:
        info = self.read_info()
        info.update(changes)
        write_json_atomic(self.run_json, info)
        return info

    def read_normalization(self) -> dict[str, Any]:
        try:
            return json.loads(self.normalization_json.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {self.normalization_json}: {exc}") from exc

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"


def run_info(*, algo: str, dataset: Any, seeds: list[int], steps: int, device: str,
             config_source: str | None, command: Any,
             max_episode_steps: int | None) -> dict[str, Any]:
    """The initial run.json: identity and provenance of a run (see docs/run-directory.md)."""
    import torch

    from offrl import __version__

    meta = dataset.metadata
    commit, dirty = git_commit()
    return {
        "algo": algo,
        "dataset_id": meta.get("dataset_id") or dataset.name,
        "dataset_sha256": meta.get("sha256"),
        "env_id": meta.get("env_id"),
        "seeds": list(seeds),
        "steps": int(steps),
        "offrl_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "started": utc_now(),
        "finished": None,
        "status": STATUS_RUNNING,
        "device": str(device),
        "ref_min_score": meta.get("ref_min_score"),
        "ref_max_score": meta.get("ref_max_score"),
        "max_episode_steps": max_episode_steps,
        "config_source": config_source,
        "command": command,
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "platform": f"{platform.system()} {platform.machine()}",
    }
