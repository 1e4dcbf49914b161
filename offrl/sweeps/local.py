"""The local backend: each job is a process on this machine running `offrl.sweeps.worker`.

Job processes are forked from a multiprocessing fork server that has imported torch, the
agents and the training loop once (about 4 CPU-seconds saved per job), or spawned where fork
servers do not exist. Every job gets OMP_NUM_THREADS / MKL_NUM_THREADS and torch's thread count
set to `threads_per_job` (1 by default), and the runner starts at most `capacity()` (the cores
this process may use, divided by that) at once: two 2-thread jobs on 2 busy cores can run 60×
slower than two 1-thread jobs. A job's output goes to `<out>/logs/<algo>--<dataset>.log`.

Job processes run in their own session, so a Ctrl-C reaches only the sweep, which passes one
SIGINT on to each job (it stops with a checkpoint). On Linux a job also gets SIGTERM when the
fork server dies with the sweep (it then stops the same way), so a killed sweep leaves no
orphans training on.

As with any multiprocessing code, a script that calls `run_sweep` must do so under
`if __name__ == "__main__":` (job processes import the main script); the `offrl` command does.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from offrl.sweeps.jobs import Job
from offrl.sweeps.status import logged_step, run_error, run_status, tail_text
from offrl.sweeps.worker import EXIT_COMPLETE, EXIT_INTERRUPTED, JobOutcome
from offrl.training.run_dir import (STATUS_COMPLETE, STATUS_FAILED, STATUS_INTERRUPTED,
                                    utc_now, write_json_atomic)

JOBS_DIR, LOGS_DIR = "jobs", "logs"
PRELOAD = ["torch", "torch._dynamo", "gymnasium", "gymnasium.envs.mujoco", "h5py",
           "offrl.sweeps.worker", "offrl.algos", "offrl.training.loop", "offrl.data.load"]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when our parent dies (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def job_process_main(spec_path: str, log_path: str, env: dict[str, str]) -> None:
    """Entry point of a job process: own session, the sweep's environment, output to the log."""
    if hasattr(os, "setsid"):
        os.setsid()
    _die_with_parent()
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    from offrl.sweeps import worker

    code = worker.main([spec_path])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_fork_server_environment: dict[str, str] | None = None


def _fresh_fork_server(thread_env: dict[str, str]) -> None:
    """Make sure the fork server runs with this process's environment plus `thread_env`
    (restarting one that a previous sweep in this process started with another), and let it
    preload its modules while the caller goes on."""
    global _fork_server_environment
    from multiprocessing import forkserver

    environment = {**os.environ, **thread_env}
    server = forkserver._forkserver
    if environment != _fork_server_environment and getattr(server, "_forkserver_pid", None):
        stop = getattr(server, "_stop", None)  # private, but long-standing
        if stop is not None:
            stop()
    server.set_forkserver_preload(PRELOAD)
    with _environment(thread_env):
        server.ensure_running()
    _fork_server_environment = environment


@dataclass
class LocalHandle:
    job: Job
    run_dir: Path
    process: Any  # multiprocessing.Process
    log_path: Path


class LocalBackend:
    """Jobs as subprocesses of this one; see the module docstring."""

    name = "local"

    def __init__(self, out: str | Path, *, threads_per_job: int = 1, device: str | None = None,
                 sweep_label: str = ""):
        self.out = Path(out)
        self.threads_per_job = threads_per_job
        self.device, self.sweep_label = device, sweep_label
        self._thread_env = {k: str(threads_per_job) for k in THREAD_VARIABLES}
        self._mp = None

    def capacity(self) -> int:
        """How many jobs may run at once: the cores divided by the threads per job."""
        return max(1, available_cores() // self.threads_per_job)

    def log_path(self, job: Job) -> Path:
        return self.out / LOGS_DIR / f"{job.slug}.log"

    def start(self, job: Job, run_dir: Path) -> LocalHandle:
        (self.out / JOBS_DIR).mkdir(parents=True, exist_ok=True)
        (self.out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
        spec_path = self.out / JOBS_DIR / f"{job.slug}.json"
        write_json_atomic(spec_path, {"job": job.to_json(), "run_dir": str(run_dir.resolve()),
                                      "threads": self.threads_per_job, "device": self.device,
                                      "sweep": self.sweep_label})
        log_path = self.log_path(job)
        with open(log_path, "a") as log:
            log.write(f"\n===== {utc_now()} offrl sweep: starting {job.id} "
                      f"(run dir {run_dir}) =====\n")
        env = {**os.environ, **self._thread_env, "PYTHONUNBUFFERED": "1"}
        process = self._context().Process(target=job_process_main, name=job.id,
                                           args=(str(spec_path), str(log_path), env))
        with _environment(self._thread_env):  # the fork server starts with these
            process.start()
        return LocalHandle(job, run_dir, process, log_path)

    def _context(self):
        if self._mp is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                self._mp = multiprocessing.get_context("forkserver")
                _fresh_fork_server(self._thread_env)
            else:
                self._mp = multiprocessing.get_context("spawn")
        return self._mp

    def warm_up(self) -> None:
        """Start the fork server now (it imports torch in the background meanwhile)."""
        self._context()

    def poll(self, handle: LocalHandle) -> JobOutcome | None:
        """None while the job runs; its outcome once the process has exited."""
        code = handle.process.exitcode
        if code is None:
            return None
        status, step = run_status(handle.run_dir), logged_step(handle.run_dir)
        if code == EXIT_COMPLETE and status == STATUS_COMPLETE:
            return JobOutcome(STATUS_COMPLETE, step)
        if code == EXIT_INTERRUPTED:
            return JobOutcome(STATUS_INTERRUPTED, step)
        why = (f"killed by signal {-code}" if code < 0 else f"exit code {code}")
        error = run_error(handle.run_dir) or tail_text(handle.log_path, 3)
        return JobOutcome(STATUS_FAILED, step, f"{why}: {error}" if error else why)

    def current_step(self, handle: LocalHandle) -> int:
        return logged_step(handle.run_dir)

    def stop(self, handles: list[LocalHandle], timeout: float = 120.0) -> None:
        """Ask running jobs to stop (SIGINT: checkpoint, status "interrupted") and wait;
        kill what is still running after `timeout` seconds."""
        for h in handles:
            if h.process.exitcode is None:
                try:
                    os.kill(h.process.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for h in handles:
            h.process.join(max(0.1, deadline - time.monotonic()))
            if h.process.exitcode is None:
                h.process.kill()
                h.process.join()

    def close(self) -> None:
        pass
