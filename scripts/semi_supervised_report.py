"""The semi-supervised benchmark report: evaluation/reports/semi_supervised.md (+ figures).

    offrl sweep semi_supervised --variant cpu --jobs 1 --out SWEEP
    .venv/bin/python scripts/semi_supervised_report.py SWEEP

Reads SWEEP/report-conditions/report.json (written by the sweep: every run as
"<algo> · <condition>" on its [suite] dataset) and SWEEP/sweep.json, and writes a page that
answers SS-ORL's question per algorithm: does training on 10% labelled trajectories plus IDM
proxy labels (labelled-proxy) match training on every true action (all-actions), and does it
beat training on the labelled 10% alone (labelled-10pct)? Both are judged on the probability
of improvement with its 95% stratified-bootstrap interval (rliable's semantics, REFERENCE.md):
"matches" when the interval contains 0.5, "beats" when its lower end is above 0.5.
The report figures (aggregates, profiles, probability of improvement) are copied beside it.
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
from offrl.evaluation.stats import Interval  # noqa: E402

FIGURES = ("aggregates", "probability_of_improvement", "profiles")


def verdict(iv: Interval, better: str, worse: str, same: str) -> str:
    if iv.low > 0.5:
        return better
    if iv.high < 0.5:
        return worse
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="the sweep folder (offrl sweep --out)")
    parser.add_argument("--out", type=Path, default=ROOT / "evaluation" / "reports")
    parser.add_argument("--command", default="offrl sweep semi_supervised --variant cpu --jobs 1")
    args = parser.parse_args(argv)
    source = args.sweep / "report-conditions" / "report.json"
    if not source.is_file():
        print(f"error: {source} not found (run the sweep to the end first)", file=sys.stderr)
        return 2
    report = json.loads(source.read_text())
    manifest = json.loads((args.sweep / "sweep.json").read_text())
    algorithms = list(dict.fromkeys(a.split(" · ")[0] for a in report["algorithms"]))
    # (a) every action, (b) the labelled part only, (c) labelled + proxies: the suite's order
    conditions = list(dict.fromkeys(a.split(" · ")[1] for a in report["algorithms"]))
    if len(conditions) != 3:
        print(f"error: {source}: expected 3 conditions, found {conditions}", file=sys.stderr)
        return 2

    seeds = sorted({s["seed"] for s in report["scores"]})
    steps = sorted({s["step"] for s in report["scores"]})
    lines = [
        "# Semi-supervised offline RL: inverse-dynamics proxy labels (SS-ORL)",
        "",
        f"Suite `{manifest.get('suite')}` ({args.command}); {len(seeds)} seeds per job "
        f"({', '.join(map(str, seeds))}), scores at step {', '.join(map(str, steps))} "
        "(the last evaluation; mean normalised return of its episodes per seed). Datasets: "
        f"{', '.join('`' + d + '`' for d in report['datasets'])} (cards in datasets/offrl/). "
        "Intervals: 95% stratified bootstrap "
        f"({report['settings']['reps']} replicates for IQMs, {report['settings']['profile_reps']} "
        "for probabilities of improvement).",
        "",
        "Conditions, for every dataset and algorithm (the same seeds):",
        "",
        "- **(a) all-actions**: the dataset as published;",
        "- **(b) labelled-10pct**: only 10% of the trajectories keep their actions, drawn from "
        "the lowest-return 50% (SS-ORL's split, seed 0); training samples those rows only;",
        "- **(c) labelled-proxy**: (b)'s labelled rows plus IDM proxy actions for every other "
        "row (the IDM is trained on (b)'s labelled trajectories, early-stopped on 10% of them).",
        "",
        "## Answer",
        "",
    ]
    for algo in algorithms:
        a, b, c = (f"{algo} · {k}" for k in conditions)
        ca, cb, ab = (improvement_from_report(report, x, y) for x, y in ((c, a), (c, b), (a, b)))
        m = verdict(ca, "is better than", "is worse than", "matches")
        n = verdict(cb, "beats", "is worse than", "does not beat (no clear difference from)")
        lines.append(f"- **{algo}**: (c) {m} (a): P(c > a) = {format_interval(ca, 2)}; (c) {n} (b): "
                     f"P(c > b) = {format_interval(cb, 2)}. For reference P(a > b) = {format_interval(ab, 2)}.")
    lines += ["", "## Aggregate scores (IQM over datasets × seeds, 95% intervals)", "",
              "| algorithm | " + " | ".join(f"({k}) {c}" for k, c in zip("abc", conditions)) + " |",
              "|:---|---:|---:|---:|"]
    for algo in algorithms:
        cells = [format_interval(report["aggregates"][f"{algo} · {k}"]["IQM"]) for k in conditions]
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    lines += ["", "## Per dataset (mean normalised score over seeds, 95% intervals)", "",
              "| dataset | algorithm | (a) | (b) | (c) |", "|:---|:---|---:|---:|---:|"]
    for d in report["datasets"]:
        for algo in algorithms:
            cells = [format_interval(report["per_dataset"][f"{algo} · {k}"][d]) for k in conditions]
            lines.append(f"| {d} | {algo} | " + " | ".join(cells) + " |")

    # the IDM's held-out error, from the labelled datasets' metadata
    idm_lines = []
    try:
        from offrl.data.load import load_any_dataset

        for d in report["datasets"]:
            run_dir = next(Path(r["run_dir"]) for r in report["scores"] if r["dataset"] == d
                           and r["algorithm"].endswith(f" · {conditions[2]}"))
            if not (run_dir / "run.json").is_file():  # relative to the sweep, not the cwd
                run_dir = args.sweep / run_dir
            proxy_id = json.loads((run_dir / "run.json").read_text())["dataset_id"]
            labelled = load_any_dataset(proxy_id, progress=False)
            meta = labelled.metadata.get("labelling", {})
            idm_lines.append(
                f"- `{d}`: IDM trained on {meta['train_transitions']:,} labelled transitions "
                f"({meta['train_trajectories']} trajectories), {meta['steps']} steps "
                f"(early stopping at step {meta['best_step']}); held-out action MSE "
                f"{meta['heldout_mse']:.5f} vs action variance {meta['action_variance']:.4f} "
                f"(R² {meta['heldout_r2']:.3f}, {meta['heldout_transitions']} held-out "
                f"transitions); {meta['proxy_transitions']:,} proxy actions written")
    except Exception as exc:  # the report stands without it
        idm_lines.append(f"- (IDM metadata not read: {exc})")
    if idm_lines:
        lines += ["", "## The inverse dynamics model", ""] + idm_lines

    figures_dir = args.out / "semi_supervised"
    figures_dir.mkdir(parents=True, exist_ok=True)
    lines += ["", "## Figures", ""]
    for stem in FIGURES:
        for found in sorted((args.sweep / "report-conditions").glob(f"{stem}*.png")):
            shutil.copyfile(found, figures_dir / found.name)
            lines.append(f"![{found.stem}](semi_supervised/{found.name})")
    for name in ("table.md", "table.csv", "report.json", "probability_of_improvement.csv",
                 "scores.csv"):
        if (args.sweep / "report-conditions" / name).is_file():
            shutil.copyfile(args.sweep / "report-conditions" / name, figures_dir / name)
    lines += ["", "Every run's score: `semi_supervised/scores.csv`; every pairwise probability "
              "of improvement: `semi_supervised/probability_of_improvement.csv`.", "",
              "## Protocol", "",
              f"Suite file: `evaluation/suites/semi_supervised.toml` (run as `{manifest['suite']}`;"
              " the sweep's copy is `suite.toml` in its folder). The standard protocol, for "
              "comparison: " + manifest["protocol"].get("standard", "") + "", "",
              f"Written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by "
              "`scripts/semi_supervised_report.py`.", ""]
    out = args.out / "semi_supervised.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
