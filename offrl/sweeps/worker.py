"""Run one sweep job in this process: load the dataset, train every seed, record the run dir.

The local backend starts `python -m offrl.sweeps.worker JOB_FILE` per job (JOB_FILE: JSON with
"job", "run_dir", "threads", "device", "sweep"); the Ray backend calls `run_job` inside a task.
A run directory that already exists is resumed from its latest checkpoint.

Exit codes: 0 complete, 1 failed, 130 interrupted (SIGINT or SIGTERM: the run stops at the end
of the current step with a checkpoint, status "interrupted").
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from offrl.sweeps.jobs import Job
from offrl.sweeps.status import logged_step, run_error, run_status
from offrl.training.run_dir import STATUS_COMPLETE, STATUS_FAILED, STATUS_INTERRUPTED

EXIT_COMPLETE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class JobOutcome:
    """How one attempt at a job ended."""

    status: str          # "complete", "interrupted" or "failed"
    step: int            # the last logged step
    error: str | None = None


def set_threads(threads: int) -> None:
    """Torch's CPU threads for this process (and its intra-op pool): 1 for parallel jobs."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def run_job(job: Job, run_dir: str | Path, *, threads: int = 1, device: str | None = None,
            command: Any = None, print_fn: Callable[[str], None] = print) -> JobOutcome:
    """Train `job` into `run_dir` (resumed if it holds a run). Never raises for a failed run:
    the outcome says what happened; KeyboardInterrupt gives an "interrupted" outcome."""
    set_threads(threads)
    try:
        import torch

        from offrl.algos import get_algorithm
        from offrl.data.load import load_any_dataset
        from offrl.training.config import build_config
        from offrl.training.loop import train

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        agent_cls = get_algorithm(job.algo)
        config = build_config(job.algo, agent_cls.config_class, job.config,
                              source=f"sweep job {job.id}")
        dataset = load_any_dataset(job.dataset, progress=False)  # registered or derived id
        result = train(agent_cls, dataset, config, run_dir=run_dir, device=device,
                       progress=False, config_source=job.config_source, command=command,
                       print_fn=print_fn)
        return JobOutcome(result.status, result.step)
    except KeyboardInterrupt:
        return JobOutcome(STATUS_INTERRUPTED, logged_step(run_dir))
    except Exception as exc:  # recorded in the outcome (and run.json when training started)
        print_fn(traceback.format_exc().rstrip())
        status = run_status(run_dir)
        error = run_error(run_dir) if status == STATUS_FAILED else None
        return JobOutcome(STATUS_FAILED, logged_step(run_dir),
                          error or f"{type(exc).__name__}: {exc}")


def raise_interrupt(signum: int, frame: Any) -> None:
    """A signal handler that stops whatever runs as Ctrl-C does (KeyboardInterrupt)."""
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_gracefully_on_sigterm() -> None:
    """SIGTERM (e.g. the sweep that started us died) and SIGINT stop like Ctrl-C: with a
    checkpoint."""
    # Raise directly rather than re-sending SIGINT: a job started from a background shell
    # inherits SIGINT as ignored, and the sweep's stop() sends SIGINT, so handle both.
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, raise_interrupt)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m offrl.sweeps.worker JOB_FILE", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    _stop_gracefully_on_sigterm()
    job = Job.from_json(spec["job"])
    outcome = run_job(job, spec["run_dir"], threads=spec.get("threads", 1),
                      device=spec.get("device"),
                      command={"sweep": spec.get("sweep"), "job": job.id},
                      print_fn=lambda line: print(line, flush=True))
    print(f"offrl sweep worker: {job.id} {outcome.status} at step {outcome.step}"
          + (f": {outcome.error}" if outcome.error else ""), flush=True)
    if outcome.status == STATUS_COMPLETE:
        return EXIT_COMPLETE
    return EXIT_INTERRUPTED if outcome.status == STATUS_INTERRUPTED else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
