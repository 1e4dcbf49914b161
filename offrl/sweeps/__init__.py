"""Sweeps: whole benchmark suites (every algorithm × dataset × seed) in one command.

    suite = load_suite("quick")               # evaluation/suites/quick.toml
    jobs = expand_suite(suite)                # one job per (algorithm, dataset), all seeds
    result = run_sweep(suite, "sweeps/quick")  # local subprocesses (or backend="ray"), resumable

Modules: `suite` (suite files), `jobs` (expansion), `manifest` (sweep.json and the folder lock),
`status` (what a run directory says), `derived` (the derived datasets of [conditions]), `worker`
(one job in one process), `local` and `ray_backend` (where jobs run), `runner` (scheduling,
retries, progress, the report).
"""

from offrl.sweeps.jobs import Job, expand_suite
from offrl.sweeps.runner import SweepResult, run_sweep
from offrl.sweeps.suite import Suite, SuiteError, load_suite

__all__ = ["Job", "Suite", "SuiteError", "SweepResult", "expand_suite", "load_suite",
           "run_sweep"]
