"""The Ray backend: the same jobs as Ray tasks on a cluster, results gathered into the same
layout as the local backend's (`<out>/runs/<algo>/<dataset>/`, `<out>/logs/…`).

    offrl sweep mujoco --backend ray --address HEAD_IP:6379

Each job is one task needing `threads_per_job` CPUs (torch and OpenMP use that many threads).
A task whose node sees the sweep's folder (the same machine, or a shared file system: it finds
the token file the driver wrote there) trains straight into the run directory, so a sweep
stopped midway resumes there. Elsewhere the task gets the run directory so far as a tar archive,
trains in a temporary folder and returns the folder as an archive, which the driver unpacks in
place. Every node needs offrl (the same version) installed; the variables OFFRL_CARDS,
OFFRL_HOME, OFFRL_BASELINES and MINARI_DATASETS_PATH, when set for the driver, are passed on.

Install with `pip install 'offrl[ray]'`.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offrl.errors import UserError
from offrl.sweeps.jobs import Job
from offrl.sweeps.status import logged_step
from offrl.sweeps.worker import JobOutcome, run_job
from offrl.training.run_dir import STATUS_FAILED, STATUS_INTERRUPTED, write_text_atomic

TOKEN_FILE = ".sweep-token"
PASSED_ENV_VARS = ("OFFRL_CARDS", "OFFRL_HOME", "OFFRL_BASELINES", "MINARI_DATASETS_PATH")
PROGRESS_INTERVAL_S = 2.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("the Ray backend needs the ray package: pip install 'offrl[ray]'") from None
    return ray


# ---------------------------------------------------------------------------------- archives
def pack_dir(path: Path) -> bytes:
    """A folder as a gzipped tar archive in memory (paths relative to the folder)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for item in sorted(path.iterdir()):
            tar.add(item, arcname=item.name)
    return buffer.getvalue()


def unpack_dir(data: bytes, path: Path) -> None:
    """Replace folder `path` by the archive's contents (unpacked beside it, then swapped in)."""
    incoming = path.with_name(f".{path.name}.incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(incoming, filter="data")
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(incoming, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(incoming, path)


# ---------------------------------------------------------------------------------- the task
class ProgressBoard:
    """A Ray actor the tasks report their logged step to (the driver's progress bar reads it)."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def report(self, job_id: str, step: int) -> None:
        self.steps[job_id] = step

    def snapshot(self) -> dict[str, int]:
        return dict(self.steps)


def run_job_task(job_json: dict[str, Any], run_dir: str, out: str, token: str,
                 archive: bytes | None, threads: int, device: str | None, sweep: str,
                 board: Any, ship: str) -> dict[str, Any]:
    """Body of the Ray task (runs on a worker node): train one job, report progress, and
    return {"status", "step", "error", "log", "archive"} (archive: the run dir, when shipped)."""
    job = Job.from_json(job_json)
    token_path = Path(out) / TOKEN_FILE
    shared = ship != "always" and token_path.is_file() and token_path.read_text() == token
    tmp = None
    if shared:
        target = Path(run_dir)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="offrl-sweep-"))
        target = tmp / "run"
        if archive is not None:
            unpack_dir(archive, target)
    lines: list[str] = []
    done = threading.Event()

    def report_progress() -> None:
        while not done.wait(PROGRESS_INTERVAL_S):
            board.report.remote(job.id, logged_step(target))

    reporter = threading.Thread(target=report_progress, daemon=True)
    reporter.start()
    try:
        outcome = run_job(job, target, threads=threads, device=device,
                          command={"sweep": sweep, "job": job.id, "backend": "ray"},
                          print_fn=lines.append)
    finally:
        done.set()
        reporter.join()
    result = {"status": outcome.status, "step": outcome.step, "error": outcome.error,
              "log": "\n".join(lines), "archive": None}
    if tmp is not None:
        if target.is_dir():
            result["archive"] = pack_dir(target)
        shutil.rmtree(tmp, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------- the backend
@dataclass
class RayHandle:
    job: Job
    run_dir: Path
    ref: Any
    log_path: Path


class RayBackend:
    """Jobs as Ray tasks; see the module docstring.

    address: the cluster ("HOST:PORT", "auto", "local"); None: an already initialised Ray, else
    a new local instance. ship: "auto" (archives only where the folder is not shared) or
    "always" (always archive the run directory back, as on a cluster without shared storage).
    """

    name = "ray"

    def __init__(self, out: str | Path, *, address: str | None = None, threads_per_job: int = 1,
                 device: str | None = None, sweep_label: str = "", ship: str = "auto"):
        if ship not in ("auto", "always"):
            raise UserError(f"ship must be 'auto' or 'always'; got {ship!r}")
        ray = import_ray()
        self.ray = ray
        self.out = Path(out)
        self.threads_per_job, self.device = threads_per_job, device
        self.sweep_label, self.ship = sweep_label, ship
        self._owns_ray = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False, include_dashboard=False,
                         configure_logging=False)
            except Exception as exc:  # ConnectionError, a bad address, …
                raise UserError(f"cannot connect to Ray at {address or 'a new local instance'}: "
                                f"{exc}") from exc
            self._owns_ray = True
        self.out.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(16)
        write_text_atomic(self.out / TOKEN_FILE, self.token)
        env_vars = {k: os.environ[k] for k in PASSED_ENV_VARS if k in os.environ}
        threads = str(threads_per_job)
        env_vars.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        self._task = ray.remote(max_retries=0)(run_job_task).options(
            num_cpus=threads_per_job, runtime_env={"env_vars": env_vars})
        self.board = ray.remote(num_cpus=0)(ProgressBoard).remote()
        self._steps: dict[str, int] = {}
        self._steps_read = 0.0

    def capacity(self) -> int:
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        return max(1, cpus // self.threads_per_job)

    def log_path(self, job: Job) -> Path:
        return self.out / "logs" / f"{job.slug}.log"

    def start(self, job: Job, run_dir: Path) -> RayHandle:
        archive = None
        if run_dir.is_dir() and (run_dir / "run.json").is_file():
            archive = pack_dir(run_dir)  # used only where the task cannot see the folder
        ref = self._task.remote(job.to_json(), str(run_dir.resolve()), str(self.out.resolve()),
                                self.token, archive, self.threads_per_job, self.device,
                                self.sweep_label, self.board, self.ship)
        return RayHandle(job, run_dir, ref, self.log_path(job))

    def poll(self, handle: RayHandle) -> JobOutcome | None:
        ready, _ = self.ray.wait([handle.ref], timeout=0)
        if not ready:
            return None
        try:
            result = self.ray.get(handle.ref)
        except self.ray.exceptions.TaskCancelledError:
            return JobOutcome(STATUS_INTERRUPTED, logged_step(handle.run_dir))
        except Exception as exc:  # the task or its worker died
            return JobOutcome(STATUS_FAILED, logged_step(handle.run_dir),
                              f"Ray task failed: {type(exc).__name__}: {exc}")
        if result["archive"] is not None:
            unpack_dir(result["archive"], handle.run_dir)
        handle.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(handle.log_path, "a") as log:
            log.write(f"\n===== offrl sweep (ray): {handle.job.id} =====\n{result['log']}\n")
        return JobOutcome(result["status"], result["step"], result["error"])

    def current_step(self, handle: RayHandle) -> int:
        if time.monotonic() - self._steps_read > 1.0:
            try:
                self._steps = self.ray.get(self.board.snapshot.remote(), timeout=5)
            except Exception:  # progress is best effort
                pass
            self._steps_read = time.monotonic()
        return self._steps.get(handle.job.id, 0)

    def stop(self, handles: list[RayHandle], timeout: float = 120.0) -> None:
        """Cancel running tasks (a task stops like Ctrl-C: with a checkpoint) and wait."""
        for h in handles:
            self.ray.cancel(h.ref)
        if handles:
            self.ray.wait([h.ref for h in handles], num_returns=len(handles), timeout=timeout)

    def close(self) -> None:
        (self.out / TOKEN_FILE).unlink(missing_ok=True)
        if self._owns_ray:
            self.ray.shutdown()
