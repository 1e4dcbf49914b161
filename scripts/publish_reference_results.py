"""Publish a finished sweep as reference results: per-seed results in baselines/results/<name>/,
the report in evaluation/reports/<name>/ and its front page evaluation/reports/<name>.md.

    offrl sweep mujoco --variant cpu-10k --jobs 2
    .venv/bin/python scripts/publish_reference_results.py sweeps/mujoco-cpu-10k --name mujoco-cpu-10k

What is committed of each run directory: run.json (dataset id and sha256, seeds, git commit,
versions, start and end), config.toml, evaluations.csv (every evaluation episode's return and
normalised score), metrics.csv (losses) and normalization.json; not the checkpoints. With the
sweep's manifest (sweep.json: every job's config hash and wall time) and suite.toml, that is
everything `offrl report` needs, and the report is built from the copied files, so

    offrl report baselines/results/<name>/runs --out REPORT

reproduces evaluation/reports/<name>/ from what is in git (tests/test_reference_results.py
checks it). The new results are written beside the old and swapped in at the end: a failure
midway leaves what was published before untouched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from offrl.evaluation.report import format_interval, improvement_from_report  # noqa: E402

RUN_FILES = ("run.json", "config.toml", "evaluations.csv", "metrics.csv", "normalization.json")
REPORT_FILES = ("report.md", "table.md", "table.csv", "report.json", "scores.csv",
                "probability_of_improvement.csv")
FIGURES = ("aggregates", "profiles", "probability_of_improvement", "learning_curves")


def minutes(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    parse = lambda t: dt.datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds() / 60


def job_minutes(job: dict, results: Path) -> float | None:
    """A job's wall time: from the manifest, else (a run made by another sweep with the same
    config, copied in) from its run.json."""
    took = minutes(job.get("started"), job.get("finished"))
    if took is None and (results / job["run_dir"] / "run.json").is_file():
        info = json.loads((results / job["run_dir"] / "run.json").read_text())
        took = minutes(info.get("started"), info.get("finished"))
    return took


def swap_in(new: Path, final: Path) -> None:
    """Replace `final` by `new` (both folders), keeping the old one until the new is in place."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    new.rename(final)
    if old.exists():
        shutil.rmtree(old)


def copy_runs(sweep: Path, manifest: dict, dest: Path, allow_incomplete: bool) -> list[Path]:
    """Copy every job's run files into dest/runs/<algo>/<dataset>/; returns the copied dirs."""
    from offrl.sweeps.status import run_status

    statuses = {job_id: run_status(sweep / job["run_dir"])
                for job_id, job in manifest["jobs"].items()}
    missing = {job_id: s for job_id, s in statuses.items() if s != "complete"}
    if missing and not allow_incomplete:
        raise SystemExit(f"error: {sweep}: {len(missing)} job(s) not complete: "
                         + ", ".join(f"{j} ({s})" for j, s in missing.items())
                         + "; finish the sweep (rerun it) or pass --allow-incomplete")
    copied = []
    for job_id, job in manifest["jobs"].items():
        if job_id in missing:
            continue
        source = sweep / job["run_dir"]
        target = dest / job["run_dir"]
        target.mkdir(parents=True)
        for name in RUN_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, target / name)
        copied.append(target)
    return copied


def front_page(name: str, manifest: dict, report: dict, suite_file: str, command: str,
               results: Path) -> str:
    """evaluation/reports/<name>.md: protocol, aggregate and per-dataset tables, costs."""
    protocol = manifest.get("protocol", {})
    algorithms, datasets = report["algorithms"], report["datasets"]
    seeds = sorted({s["seed"] for s in report["scores"]})
    steps = {a: sorted({s["step"] for s in report["scores"] if s["algorithm"] == a})
             for a in algorithms}
    lines = [
        f"# Reference results: `{manifest['suite']}`",
        "",
        f"TD3+BC, IQL and CQL with CORL's hyperparameters on the {len(datasets)} offrl MuJoCo "
        f"datasets, {len(seeds)} seeds each ({', '.join(map(str, seeds))}). Score of a run: the "
        "mean normalised return (×100, reference returns from the dataset card) of its last "
        "evaluation, 10 episodes per seed. Intervals: 95% stratified-bootstrap percentile "
        f"intervals ({report['settings']['reps']} replicates; {report['settings']['profile_reps']}"
        " for probabilities of improvement), rliable's semantics (REFERENCE.md).",
        "",
        "**Budget: " + "; ".join(f"{a} {', '.join(map(str, steps[a]))} gradient steps"
                                  for a in algorithms)
        + "** per seed, far short of the standard 1M-step protocol. These numbers rank the "
        "algorithms' early learning on a CPU budget; they are not converged scores and are not "
        "comparable with published 1M-step D4RL tables.",
        "",
        "## Aggregate (IQM over datasets × seeds)",
        "",
        "| algorithm | IQM | mean | median | optimality gap |",
        "|:---|---:|---:|---:|---:|",
    ]
    for a in algorithms:
        agg = report["aggregates"][a]
        lines.append(f"| {a} | {format_interval(agg['IQM'])} | {format_interval(agg['Mean'])} | {format_interval(agg['Median'])} | "
                     f"{format_interval(agg['Optimality Gap'])} |")
    lines += ["", "## Probability of improvement (row over column)", "",
              "| P(X > Y) | " + " | ".join(algorithms) + " |",
              "|:---|" + "---:|" * len(algorithms)]
    for x in algorithms:
        cells = ["—" if x == y else format_interval(improvement_from_report(report, x, y), 2)
                 for y in algorithms]
        lines.append(f"| {x} | " + " | ".join(cells) + " |")
    lines += ["", "## Per dataset (mean over seeds)", "",
              "| dataset | " + " | ".join(algorithms) + " |",
              "|:---|" + "---:|" * len(algorithms)]
    for d in datasets:
        lines.append(f"| {d} | " + " | ".join(
            format_interval(report["per_dataset"][a][d]) if d in report["per_dataset"].get(a, {}) else "—"
            for a in algorithms) + " |")
    lines += ["", "## Figures", ""]
    lines += [f"![{stem}]({name}/{stem}.png)" for stem in FIGURES]
    lines += ["", "## Cost", "",
              "Wall time per job (all seeds in one process), from the sweep manifest (for runs "
              "copied in from another sweep with the same config: their run.json); the machine "
              "and threads are in the protocol below:", "",
              "| algorithm | jobs | minutes per job (min–max) | total job-minutes |",
              "|:---|---:|---:|---:|"]
    for a in algorithms:
        times = [m for j in manifest["jobs"].values() if j["algo"] == a
                 if (m := job_minutes(j, results)) is not None]
        if times:
            lines.append(f"| {a} | {len(times)} | {min(times):.1f}–{max(times):.1f} | "
                         f"{sum(times):.0f} |")
    lines += [
        "", "## Protocol", "",
        f"Suite `{suite_file}`, run as `{manifest['suite']}`: `{command}`.", "",
        f"- used: {protocol.get('used', '?')}",
    ]
    lines += [f"- {key}: {value}" for key, value in protocol.items() if key != "used"]
    lines += [
        "",
        f"Per-seed results (run.json, config, every evaluation episode, losses): "
        f"`baselines/results/{name}/runs/<algo>/<dataset>/`; the sweep manifest "
        f"(config hashes, wall times): `baselines/results/{name}/sweep.json`. Rebuild this "
        f"report from them: `offrl report baselines/results/{name}/runs --out REPORT`.",
        "",
        f"Written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by "
        "`scripts/publish_reference_results.py`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="the sweep folder (offrl sweep --out)")
    parser.add_argument("--name", required=True, help="results name, e.g. mujoco-cpu-10k")
    parser.add_argument("--results", type=Path, default=ROOT / "baselines" / "results")
    parser.add_argument("--reports", type=Path, default=ROOT / "evaluation" / "reports")
    parser.add_argument("--command", default=None,
                        help="the sweep command, for the page (default: from the manifest)")
    parser.add_argument("--reps", type=int, default=None, help="bootstrap replicates "
                        "(default: the suite's [report] reps)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="publish the complete jobs of an unfinished sweep")
    args = parser.parse_args(argv)

    from offrl.evaluation.report import ReportSettings, build_report
    from offrl.evaluation.runs import load_runs
    from offrl.sweeps.suite import load_suite

    manifest_path = args.sweep / "sweep.json"
    if not manifest_path.is_file():
        print(f"error: {manifest_path} not found: not a sweep folder", file=sys.stderr)
        return 2
    manifest = json.loads(manifest_path.read_text())
    label = manifest["suite"]
    suite_name, _, variant = label.partition(":")
    # the suite file as it is now: its [protocol] records what was actually run
    suite = load_suite(manifest["suite_file"], variant or None)
    reps = args.reps or suite.report.reps
    command = args.command or (f"offrl sweep {suite_name}"
                               + (f" --variant {variant}" if variant else "") + " --jobs 2")

    results = args.results / args.name
    staging = args.results / f".{args.name}.new"
    report_dir = args.reports / args.name
    report_staging = args.reports / f".{args.name}.new"
    for folder in (staging, report_staging):
        if folder.exists():
            shutil.rmtree(folder)
    try:
        staging.mkdir(parents=True)
        copied = copy_runs(args.sweep, manifest, staging, args.allow_incomplete)
        shutil.copyfile(suite.path, staging / "suite.toml")
        manifest_copy = dict(manifest, protocol=suite.protocol,
                             suite_file=f"baselines/results/{args.name}/suite.toml")
        (staging / "sweep.json").write_text(json.dumps(manifest_copy, indent=1) + "\n")
        # the report from the copied files: what is committed is what is reported
        scratch = report_staging / "_build"
        build_report(load_runs(copied), scratch, ReportSettings(reps=reps, figures=True))
        report_staging.mkdir(exist_ok=True)
        for name in REPORT_FILES:
            shutil.copyfile(scratch / name, report_staging / name)
        for stem in FIGURES:
            for found in scratch.glob(f"{stem}.png"):
                shutil.copyfile(found, report_staging / found.name)
        shutil.rmtree(scratch)
        # run_dir paths in the report's tables: relative to the repository, not this machine
        for name in ("scores.csv", "report.json", "report.md"):
            path = report_staging / name
            path.write_text(path.read_text().replace(str(staging.resolve()) + "/",
                                                     f"baselines/results/{args.name}/")
                            .replace(str(staging) + "/", f"baselines/results/{args.name}/"))
        report = json.loads((report_staging / "report.json").read_text())
        page = front_page(args.name, manifest_copy, report, str(suite.path.relative_to(ROOT))
                          if suite.path.is_relative_to(ROOT) else str(suite.path), command,
                          staging)
    except BaseException:
        for folder in (staging, report_staging):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    swap_in(staging, results)
    swap_in(report_staging, report_dir)
    (args.reports / f"{args.name}.md").write_text(page)
    print(f"wrote {results} ({len(copied)} run directories), {report_dir}, "
          f"{args.reports / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
