"""`offrl sweep` (a whole suite: every algorithm × dataset × seed, then the report) and
`offrl quickstart` (the quick suite end to end: datasets, training, report)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from offrl.errors import UserError

SWEEP_EXAMPLES = """\
examples:
  offrl sweep quick                       evaluation/suites/quick.toml into sweeps/quick/
  offrl sweep mujoco --variant reduced    the suite's reduced-budget variant
  offrl sweep mujoco --backend ray --address 10.0.0.1:6379 --out /shared/sweeps/mujoco
  offrl sweep path/to/suite.toml --out my-sweep --jobs 4 --retries 1
  offrl sweep quick --dry-run             list the jobs and what is already done

One job per (algorithm, dataset) trains all the suite's seeds in one process. Rerun the same
command after a crash or Ctrl-C: complete jobs are skipped, stopped ones resume from their
latest checkpoint. A failed job is retried (--retries). The report over the complete runs is
written to OUT/report/ at the end. Suite format: offrl/sweeps/suite.py.

threads: every job uses --threads torch threads (default 1) and at most cores / threads jobs
run at once (--jobs to change): oversubscribed cores can make training 60x slower.
"""

QUICK_SUITE = "quick"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help="run a benchmark suite (all algorithms × datasets × seeds), then report",
        description="Expand SUITE into one job per (algorithm, dataset), run the jobs that are "
                    "not complete (locally or on Ray), retry failures, and write the report.",
        epilog=SWEEP_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", metavar="SUITE",
                   help="suite name (evaluation/suites/<name>.toml) or path to a suite file")
    p.add_argument("--variant", metavar="NAME", help="a [variants.NAME] of the suite")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: subprocesses on this machine (default); ray: Ray tasks")
    p.add_argument("--address", metavar="ADDR",
                   help="Ray cluster address (HOST:PORT or auto; default: a local Ray)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="sweep folder (default: sweeps/<suite>[-<variant>])")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="jobs at once (default: cores / threads locally, cluster CPUs on Ray)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads per job (default 1)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="extra attempts for a failed job (default 2)")
    p.add_argument("--device", help="cpu, cuda, … (default: cuda if available, else cpu)")
    p.add_argument("--no-report", action="store_true", help="do not write the report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="print the jobs and their state, run nothing")
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser(
        "quickstart", help="the quick suite end to end: datasets, 3 algorithms × 3 seeds, report",
        description="Build the quick suite's small datasets locally, train TD3+BC, IQL and CQL "
                    "on them (3 seeds each, short runs), write the report and print where every "
                    "artefact is. About 10 minutes on 2 CPU cores; rerun to resume.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("quickstart"),
                   help="folder for everything it writes (default: ./quickstart)")
    p.add_argument("--jobs", type=int, metavar="N", help="jobs at once (default: the cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_quickstart)


# ---------------------------------------------------------------------------------- sweep
def _dry_run(suite, out: Path) -> int:
    from offrl.sweeps.jobs import expand_suite
    from offrl.sweeps.status import logged_step, run_status

    jobs = expand_suite(suite)
    print(f"suite {suite.label} ({suite.path}): {len(jobs)} job(s), seeds {list(suite.seeds)}, "
          f"folder {out}")
    for job in jobs:
        status = run_status(out / job.run_dir)
        where = "" if status == "missing" else f" [{status}, step {logged_step(out / job.run_dir)}]"
        print(f"  {job.id:<45} {job.steps:>9} steps  config {job.config_source or '<defaults>'}"
              f"{where}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from offrl.sweeps.runner import default_out, run_sweep
    from offrl.sweeps.suite import load_suite

    if args.threads <= 0:
        raise UserError(f"--threads must be positive; got {args.threads}")
    suite = load_suite(args.suite, variant=args.variant)
    out = args.out or default_out(suite)
    if args.dry_run:
        return _dry_run(suite, out)
    started = time.perf_counter()
    result = run_sweep(suite, out, backend=args.backend, address=args.address,
                       max_jobs=args.jobs, retries=args.retries, threads_per_job=args.threads,
                       device=args.device, report=not args.no_report,
                       progress=False if args.no_progress else None)
    print(f"\nsweep {suite.label} finished in {(time.perf_counter() - started) / 60:.1f} min: "
          f"{sum(s == 'complete' for s in result.statuses.values())}/{len(result.statuses)} "
          f"jobs complete")
    print(f"  runs     : {out / 'runs'}")
    print(f"  manifest : {out / 'sweep.json'}")
    if result.report_dir is not None:
        print((result.report_dir / "table.md").read_text())
        print(f"  report   : {result.report_dir / 'report.md'}")
    return 0 if result.complete else 1


# ---------------------------------------------------------------------------------- quickstart
def leaderboard_step(result, out: Path, suite_path: Path) -> dict[str, Path]:
    """Bundle each algorithm's complete runs as a submission to a local board under
    `out/leaderboard`, check them against the suite's rules, verify them on fresh env seeds and
    render the board. Returns {artefact name: path} to print."""
    import json
    import shutil

    from offrl.leaderboard.board import SUBMISSIONS_DIR, build_board
    from offrl.leaderboard.bundle import build_bundle, read_bundle
    from offrl.leaderboard.rules import check_rules
    from offrl.leaderboard.suite import load_suite
    from offrl.leaderboard.bundle import VERIFICATION_JSON
    from offrl.leaderboard.verify import verify_submission
    from offrl.training.run_dir import write_json_atomic

    board = out / "leaderboard"
    suite = load_suite(suite_path)
    runs_by_algo: dict[str, list[Path]] = {}
    for job_id, run_dir in result.run_dirs.items():
        if result.statuses.get(job_id) == "complete":
            algo = json.loads((Path(run_dir) / "run.json").read_text())["algo"]
            runs_by_algo.setdefault(algo, []).append(Path(run_dir))
    artefacts: dict[str, Path] = {}
    for algo, runs in sorted(runs_by_algo.items()):
        name = f"quickstart-{algo}"
        target = board / SUBMISSIONS_DIR / name
        try:
            build_bundle(runs, target, name=name, suite=suite, overwrite=True,
                         description=f"{algo} on the quick suite, made by `offrl quickstart`")
            submission = read_bundle(target)
        except UserError as exc:  # one algorithm's problem must not hide the others' entries
            print(f"  {name}: not on the board: {exc}")
            shutil.rmtree(target, ignore_errors=True)
            continue
        violations = check_rules(submission, suite, bundle_dir=target)
        if violations:
            print(f"  {name}: not on the board: " + "; ".join(str(v) for v in violations))
            shutil.rmtree(target, ignore_errors=True)
            continue
        verification = verify_submission(submission, target)  # fresh, secret env seeds
        write_json_atomic(target / VERIFICATION_JSON, verification.to_json())
        print(f"  {name}: rules pass; {verification.message}")
        artefacts[f"entry:{algo}"] = target
    build = build_board(board, reps=2_000, profile_reps=500)
    artefacts["board"] = board / "index.html"
    artefacts["board-md"] = board / "README.md"
    for warning in getattr(build, "warnings", []):
        print(f"  warning: {warning}")
    return artefacts


def cmd_quickstart(args: argparse.Namespace) -> int:
    from offrl.data.load import local_path
    from offrl.data.registry import get_card
    from offrl.sweeps.runner import prepare_datasets, run_sweep
    from offrl.sweeps.suite import load_suite

    started = time.perf_counter()
    suite = load_suite(QUICK_SUITE)
    out: Path = args.out
    progress = False if args.no_progress else None
    print(f"offrl quickstart: suite {suite.name} ({suite.path})\n  {suite.description}\n")
    print(f"1/4 datasets: {', '.join(suite.datasets)}")
    prepare_datasets(suite.datasets, progress=progress is not False)
    print(f"\n2/4 training: {', '.join(a.name for a in suite.algorithms)} × "
          f"{len(suite.datasets)} datasets × {len(suite.seeds)} seeds")
    result = run_sweep(suite, out, max_jobs=args.jobs, progress=progress)
    print("\n3/4 report" + ("" if result.report_dir else ": none (no complete runs)"))
    print("\n4/4 leaderboard entries and board")
    artefacts = leaderboard_step(result, out, suite.path) if result.run_dirs else {}

    minutes = (time.perf_counter() - started) / 60
    if result.report_dir is not None:
        print((result.report_dir / "table.md").read_text())
    print(f"quickstart {'finished' if result.complete else 'stopped'} in {minutes:.1f} min. "
          "Artefacts:")
    for dataset in suite.datasets:
        print(f"  dataset   {dataset:<33} {local_path(get_card(dataset))}")
    for job_id, run_dir in result.run_dirs.items():
        print(f"  run       {job_id:<33} {run_dir}  [{result.statuses[job_id]}]")
    print(f"  logs      {'':<33} {out / 'logs'}")
    print(f"  manifest  {'':<33} {out / 'sweep.json'}")
    if result.report_dir is not None:
        print(f"  report    {'':<33} {result.report_dir / 'report.md'}")
    for name, path in artefacts.items():
        print(f"  {name:<9} {'':<33} {path}")
    if not result.complete:
        print("Some jobs did not finish; run `offrl quickstart` again to resume them.",
              file=sys.stderr)
        return 1
    return 0
