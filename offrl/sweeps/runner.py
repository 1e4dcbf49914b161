"""Run a whole suite: expand it into jobs, run what is missing, retry failures, then report.

    result = run_sweep(load_suite("quick"), "sweeps/quick")

The sweep folder:

    <out>/sweep.json          the manifest: suite, every job's config hash, status, attempts
    <out>/suite.toml          a copy of the suite file as run
    <out>/runs/<algo>/<dataset>/   one run directory per job (docs/run-directory.md); with
                              [conditions], <dataset> is the condition's (derived) id
    <out>/logs/<algo>--<dataset>.log   each job's output, every attempt appended
    <out>/report/             `offrl report` over the complete runs (report.md, table.md, …)
    <out>/report-conditions/  with [conditions]: the same runs as "<algo> · <condition>" on the
                              [suite] datasets, so the conditions are compared over one task set

Derived datasets of the suite's [conditions] are made first (those that unfinished jobs need),
into the dataset cache, and reused when already there (`offrl.sweeps.derived`).

Rerunning the same command skips complete jobs, resumes interrupted or killed ones from their
latest checkpoint, and starts the rest; a job that fails is retried up to `retries` times per
invocation (a retry resumes from the last checkpoint too).
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from offrl.errors import UserError
from offrl.sweeps.derived import build_derived, derived_datasets
from offrl.sweeps.jobs import Job, expand_suite
from offrl.sweeps.manifest import RUNNING, Manifest, SweepLock, open_manifest
from offrl.sweeps.status import logged_step, run_status
from offrl.sweeps.suite import Suite
from offrl.sweeps.worker import raise_interrupt
from offrl.training.run_dir import STATUS_COMPLETE, STATUS_INTERRUPTED, utc_now

BACKENDS = ("local", "ray")
DEFAULT_RETRIES = 2
POLL_INTERVAL_S = 0.5


@dataclass
class SweepResult:
    """How a sweep ended: every job's status, and where the results are."""

    out: Path
    statuses: dict[str, str]          # job id -> "complete", "failed", "interrupted", …
    run_dirs: dict[str, Path]
    report_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(s == STATUS_COMPLETE for s in self.statuses.values())

    @property
    def failed(self) -> list[str]:
        return [j for j, s in self.statuses.items() if s != STATUS_COMPLETE]


def default_out(suite: Suite) -> Path:
    """sweeps/<suite name>[-<variant>]"""
    return Path("sweeps") / (f"{suite.name}-{suite.variant}" if suite.variant else suite.name)


# ---------------------------------------------------------------------------------- datasets
def check_datasets(suite: Suite) -> None:
    """Every dataset of the suite has a card; else one error listing all that have none."""
    from offrl.data.registry import get_card

    missing = []
    for dataset in suite.datasets:
        try:
            get_card(dataset)
        except UserError:
            missing.append(dataset)
    if missing:
        raise UserError(f"{suite.path}: no dataset card for {', '.join(missing)} "
                        "(`offrl datasets list` shows the registered ones)")


def prepare_datasets(datasets: list[str] | tuple[str, ...], *, progress: bool = True,
                     print_fn: Callable[[str], None] = print) -> dict[str, Path]:
    """Make every dataset local before jobs start (build recipes, download files), one at a
    time, so parallel jobs never fetch the same file at once. Returns the local paths."""
    from offrl.data.load import fetch, is_cached
    from offrl.data.registry import RecipeSource, get_card

    paths = {}
    for dataset in datasets:
        card = get_card(dataset)
        if not is_cached(card):
            verb = "building" if isinstance(card.source, RecipeSource) else "downloading"
            print_fn(f"{verb} {dataset} …")
        paths[dataset] = fetch(card, progress=progress)
    return paths


# ---------------------------------------------------------------------------------- backends
def make_backend(name: str, out: Path, *, address: str | None, threads_per_job: int,
                 device: str | None, sweep_label: str):
    if name == "local":
        from offrl.sweeps.local import LocalBackend

        return LocalBackend(out, threads_per_job=threads_per_job, device=device,
                            sweep_label=sweep_label)
    if name == "ray":
        from offrl.sweeps.ray_backend import RayBackend

        return RayBackend(out, address=address, threads_per_job=threads_per_job, device=device,
                          sweep_label=sweep_label)
    raise UserError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


# ---------------------------------------------------------------------------------- scheduling
def _progress_bar(total: int, initial: int, enabled: bool | None, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc=description, dynamic_ncols=True,
                disable=(not enabled) if enabled is not None else None, smoothing=0.05,
                mininterval=1.0)


def _run_jobs(jobs: list[Job], todo: list[Job], out: Path, backend: Any, manifest: Manifest, *,
              max_jobs: int, retries: int, progress: bool | None, label: str,
              print_fn: Callable[[str], None]) -> None:
    """Run `todo` on `backend`, at most `max_jobs` at once, retrying failures; keeps the
    manifest current and shows one progress bar over all the sweep's gradient steps."""
    todo_ids = {j.id for j in todo}
    done_steps = {j.id: (logged_step(out / j.run_dir) if j.id in todo_ids else j.steps)
                  for j in jobs}
    total = sum(j.steps for j in jobs)
    bar = _progress_bar(total, sum(done_steps.values()), progress, f"sweep {label}")

    def say(line: str) -> None:
        if bar.disable:
            print_fn(line)
        else:
            bar.write(line)

    queue, running = deque(todo), {}
    tries: dict[str, int] = {}
    counts = {"complete": len(jobs) - len(todo), "failed": 0}

    def show() -> None:
        bar.n = min(total, sum(done_steps.values()))
        bar.set_postfix_str(f"{counts['complete']}/{len(jobs)} jobs done, {len(running)} "
                            f"running, {counts['failed']} failed", refresh=False)
        bar.refresh()

    try:
        while queue or running:
            while queue and len(running) < max_jobs:
                job = queue.popleft()
                record = manifest.jobs[job.id]
                tries[job.id] = tries.get(job.id, 0) + 1
                record.attempts += 1
                record.status, record.started, record.finished = RUNNING, utc_now(), None
                record.log = str(backend.log_path(job).relative_to(out))
                manifest.save()
                resume = run_status(out / job.run_dir) != "missing"
                say(f"{'resuming' if resume else 'starting'} {job.id} "
                    f"(seeds {list(job.seeds)}, {job.steps} steps"
                    f"{f', attempt {tries[job.id]}' if tries[job.id] > 1 else ''})")
                running[job.id] = (job, backend.start(job, out / job.run_dir), time.monotonic())
            show()
            time.sleep(POLL_INTERVAL_S)
            for job_id, (job, handle, started) in list(running.items()):
                outcome = backend.poll(handle)
                if outcome is None:
                    done_steps[job_id] = max(done_steps[job_id], backend.current_step(handle))
                    continue
                del running[job_id]
                record = manifest.jobs[job_id]
                record.status, record.error, record.finished = (outcome.status, outcome.error,
                                                                utc_now())
                minutes = (time.monotonic() - started) / 60
                if outcome.status == STATUS_COMPLETE:
                    counts["complete"] += 1
                    done_steps[job_id] = job.steps
                    say(f"done {job_id} in {minutes:.1f} min")
                elif tries[job_id] <= retries:
                    say(f"{outcome.status} {job_id} at step {outcome.step}: {outcome.error or ''}"
                        f" — retrying (attempt {tries[job_id] + 1} of {retries + 1}); log: "
                        f"{out / record.log}")
                    queue.append(job)
                else:
                    counts["failed"] += 1
                    say(f"{outcome.status} {job_id} at step {outcome.step}, giving up after "
                        f"{tries[job_id]} attempt(s): {outcome.error or ''}; log: "
                        f"{out / record.log}")
                manifest.save()
        show()
    except KeyboardInterrupt:
        say(f"stopping: {len(running)} running job(s) save a checkpoint and stop …")
        backend.stop([handle for _, handle, _ in running.values()])
        for job_id, (job, handle, _) in running.items():
            outcome = backend.poll(handle)
            record = manifest.jobs[job_id]
            record.status = outcome.status if outcome is not None else STATUS_INTERRUPTED
            record.finished = utc_now()
        manifest.save()
        raise
    finally:
        bar.close()


# ---------------------------------------------------------------------------------- report
def condition_labels(suite: Suite) -> dict[str, tuple[str, str]]:
    """{dataset id a job trains on: ([suite] dataset it comes from, condition name)}; empty
    when the suite has no [conditions]."""
    return {c.dataset_id(source): (source, c.name)
            for source, c in suite.dataset_conditions() if c is not None}


def write_report(run_dirs: list[Path], out_dir: Path, *, reps: int, figures: bool,
                 common_datasets: bool = False,
                 conditions: dict[str, tuple[str, str]] | None = None) -> Path:
    """`offrl report` over `run_dirs` into `out_dir`; returns the path of report.md.

    conditions: from `condition_labels`; each run on a condition's dataset is reported as
    algorithm "<algo> · <condition>" on its source dataset, so that aggregates, profiles and
    probabilities of improvement compare the conditions over the same tasks."""
    import dataclasses

    from offrl.evaluation.report import ReportSettings, build_report
    from offrl.evaluation.runs import load_runs

    runs = load_runs(run_dirs)
    if conditions:
        runs.runs = [dataclasses.replace(r, algo=f"{r.algo} · {conditions[r.dataset_id][1]}",
                                         dataset_id=conditions[r.dataset_id][0])
                     if r.dataset_id in conditions else r for r in runs.runs]
    build_report(runs, out_dir, ReportSettings(reps=reps, figures=figures,
                                               common_datasets=common_datasets))
    return out_dir / "report.md"


# ---------------------------------------------------------------------------------- the sweep
@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Inside: SIGINT and SIGTERM stop the sweep like Ctrl-C (running jobs checkpoint and stop).

    A sweep started in the background (`nohup offrl sweep … &`) inherits SIGINT as *ignored*,
    and SIGTERM's default would kill it without stopping its jobs. The previous handlers are
    restored on the way out; a no-op off the main thread (signals cannot be set there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_sweep(suite: Suite, out: str | Path | None = None, *, backend: str = "local",
              address: str | None = None, max_jobs: int | None = None,
              retries: int = DEFAULT_RETRIES, threads_per_job: int = 1,
              device: str | None = None, report: bool = True, progress: bool | None = None,
              print_fn: Callable[[str], None] = print) -> SweepResult:
    """Run every job of `suite` that is not complete in `out`, then write the report.

    backend: "local" (subprocesses; at most `max_jobs` at once, default the cores) or "ray"
    (`address` of the cluster; at most `max_jobs` at once, default the cluster's CPUs).
    retries: extra attempts for a job that fails, per invocation.
    Returns every job's status; a KeyboardInterrupt stops the running jobs with a checkpoint
    (rerun to continue) and propagates.
    """
    if retries < 0:
        raise UserError(f"retries must be 0 or more; got {retries}")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if address is not None and backend != "ray":
        raise UserError("--address is for the Ray backend; add --backend ray")
    if max_jobs is not None and max_jobs <= 0:
        raise UserError(f"--jobs must be positive; got {max_jobs}")
    out = Path(out) if out is not None else default_out(suite)
    jobs = expand_suite(suite)
    check_datasets(suite)
    with interrupt_on_signals(), SweepLock(out):
        manifest = open_manifest(out, suite.label, str(suite.path), backend, suite.protocol,
                                 jobs)
        shutil.copyfile(suite.path, out / "suite.toml")
        todo = []
        for job in jobs:
            status = run_status(out / job.run_dir)
            if status == STATUS_COMPLETE:
                manifest.jobs[job.id].status = STATUS_COMPLETE
            else:
                todo.append(job)
        manifest.save()
        runner = (make_backend(backend, out, address=address, threads_per_job=threads_per_job,
                               device=device, sweep_label=suite.label) if todo else None)
        try:
            if runner is not None:
                getattr(runner, "warm_up", lambda: None)()  # overlaps with the dataset builds
            prepare_datasets(suite.datasets, progress=progress is not False, print_fn=print_fn)
            build_derived(derived_datasets(suite, needed={j.dataset for j in todo}),
                          device=device, progress=progress is not False, print_fn=print_fn)
            resuming = sum(run_status(out / j.run_dir) != "missing" for j in todo)
            conditions = (f" × {len(suite.conditions)} conditions" if suite.conditions else "")
            print_fn(f"sweep {suite.label}: {len(jobs)} job(s) ({len(suite.algorithms)} "
                     f"algorithms × {len(suite.datasets)} datasets{conditions}, seeds "
                     f"{list(suite.seeds)} in each job); {len(jobs) - len(todo)} complete, "
                     f"{resuming} to resume, {len(todo) - resuming} to start; folder {out}")
            if runner is not None:
                limit = min(max_jobs or runner.capacity(), len(todo))
                print_fn(f"backend {backend}: up to {limit} job(s) at once, "
                         f"{threads_per_job} thread(s) each")
                _run_jobs(jobs, todo, out, runner, manifest, max_jobs=limit, retries=retries,
                          progress=progress, label=suite.label, print_fn=print_fn)
        finally:
            if runner is not None:
                runner.close()

        statuses = {j.id: run_status(out / j.run_dir) for j in jobs}
        for job in jobs:  # the run directories are the truth
            record = manifest.jobs[job.id]
            if statuses[job.id] == STATUS_COMPLETE or record.status == RUNNING:
                record.status = statuses[job.id]
        result = SweepResult(out, statuses, {j.id: out / j.run_dir for j in jobs})
        complete = [out / j.run_dir for j in jobs if statuses[j.id] == STATUS_COMPLETE]
        if report and complete:
            try:
                manifest.report = str(write_report(
                    complete, out / "report", reps=suite.report.reps,
                    figures=suite.report.figures,
                    common_datasets=len(complete) < len(jobs)).relative_to(out))
                result.report_dir = out / "report"
                if suite.conditions:  # the conditions side by side over the same datasets
                    write_report(complete, out / "report-conditions", reps=suite.report.reps,
                                 figures=suite.report.figures, common_datasets=True,
                                 conditions=condition_labels(suite))
            except UserError as exc:
                result.warnings.append(f"no report: {exc}")
        manifest.save()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    not_done = result.failed
    if not_done:
        print_fn(f"{len(not_done)} job(s) not complete: "
                 + ", ".join(f"{j} ({statuses[j]})" for j in not_done)
                 + "; rerun the same command to resume them")
    return result
