"""The sweep manifest, `<out>/sweep.json`: which suite the folder holds, every job's config hash,
status, attempts and last error. It is rewritten atomically after every change, so a sweep
killed at any moment leaves a readable manifest, and a rerun finishes only what is missing.

The run directories stay the truth about progress (run.json `status`); the manifest adds what
they cannot say: that a folder belongs to this suite, and which config each run must match.

`<out>/sweep.lock` is held (flock) while a sweep runs, so two sweeps never share a folder; the
lock goes with the process, however it ends.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from offrl.errors import UserError
from offrl.sweeps.jobs import Job
from offrl.training.run_dir import utc_now, write_json_atomic

MANIFEST = "sweep.json"
LOCK = "sweep.lock"
MANIFEST_FORMAT = 1

PENDING, RUNNING = "pending", "running"


@dataclass
class JobRecord:
    """One job as the manifest records it."""

    algo: str
    dataset: str
    seeds: list[int]
    steps: int
    run_dir: str
    config_sha256: str
    status: str = PENDING
    attempts: int = 0
    """Attempts started over all invocations of the sweep."""
    error: str | None = None
    log: str | None = None
    started: str | None = None
    finished: str | None = None


@dataclass
class Manifest:
    suite: str
    suite_file: str
    backend: str
    created: str
    updated: str
    protocol: dict[str, Any] = field(default_factory=dict)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    report: str | None = None
    path: Path | None = None

    def save(self) -> None:
        self.updated = utc_now()
        data = {"format": MANIFEST_FORMAT, **{k: v for k, v in asdict(self).items()
                                               if k not in ("path", "jobs")},
                "jobs": {k: asdict(v) for k, v in self.jobs.items()}}
        write_json_atomic(self.path, data)

    def record(self, job: Job) -> JobRecord:
        """The job's record, added (pending) if the manifest has none yet."""
        if job.id not in self.jobs:
            self.jobs[job.id] = JobRecord(algo=job.algo, dataset=job.dataset,
                                          seeds=list(job.seeds), steps=job.steps,
                                          run_dir=job.run_dir, config_sha256=job.config_sha256)
        return self.jobs[job.id]


def read_manifest(out: str | Path) -> Manifest | None:
    """The manifest in `out`, or None if there is none."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        jobs = {k: JobRecord(**v) for k, v in data.pop("jobs", {}).items()}
        data.pop("format", None)
        return Manifest(**data, jobs=jobs, path=path)
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise UserError(f"{path}: not a readable sweep manifest ({exc}); move it away to start "
                        "the sweep afresh in this folder") from exc


def open_manifest(out: Path, suite_label: str, suite_file: str, backend: str,
                  protocol: dict[str, Any], jobs: list[Job]) -> Manifest:
    """The folder's manifest for this suite, created if new. Refuses a folder that holds
    another suite, or a job whose config changed since its run directory was made."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    if manifest is None:
        now = utc_now()
        manifest = Manifest(suite=suite_label, suite_file=suite_file, backend=backend,
                            created=now, updated=now, protocol=protocol, path=out / MANIFEST)
    elif manifest.suite != suite_label:
        raise UserError(f"{out} holds a sweep of suite {manifest.suite!r}, not {suite_label!r}; "
                        "give another --out")
    manifest.backend, manifest.suite_file, manifest.protocol = backend, suite_file, protocol
    for job in jobs:
        old = manifest.jobs.get(job.id)
        if old is not None and old.config_sha256 != job.config_sha256:
            if (out / old.run_dir / "run.json").is_file():
                raise UserError(
                    f"{out / old.run_dir} was trained with another config than the suite now "
                    f"gives for {job.id} (the suite or its config files changed); give another "
                    "--out, or remove that run directory to train it again")
            del manifest.jobs[job.id]
        manifest.record(job)
    manifest.save()
    return manifest


class SweepLock:
    """An exclusive lock on a sweep folder for as long as this process holds it."""

    def __init__(self, out: Path):
        self.path = out / LOCK
        self._file: IO[str] | None = None

    def __enter__(self) -> "SweepLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UserError(f"{self.path.parent} is in use by another sweep (pid {holder}); "
                            "wait for it, or give another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
