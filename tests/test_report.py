"""`offrl report` / `offrl compare` on fake-but-valid run directories (docs/run-directory.md)."""

import csv
import json

import numpy as np
import pytest

from offrl.cli import main
from offrl.errors import UserError
from offrl.evaluation import stats
from offrl.evaluation.report import ReportSettings, build_report
from offrl.evaluation.runs import RunDirError, load_runs, read_run_dir

REF_MIN, REF_MAX = -20.0, 3980.0          # normalized = 100 * (return + 20) / 4000
STEPS = (0, 5000, 10000)


def make_run_dir(root, algo, dataset, final_scores, *, seeds=None, episodes=3, metrics=True,
                 status="complete", name=None, normalized=True):
    """A run directory whose seed ``s`` scores ``final_scores[i]`` at the last evaluation.

    Episodes at the last step are the score ± 1 (mean exactly the score); earlier steps ramp up.
    """
    seeds = list(range(len(final_scores))) if seeds is None else list(seeds)
    path = root / algo / dataset / (name or f"20261122-100000-{algo[:4]}{seeds[0]}")
    path.mkdir(parents=True)
    info = {"algo": algo, "dataset_id": dataset, "dataset_sha256": "0" * 64,
            "env_id": "Hopper-v4", "seeds": seeds, "steps": STEPS[-1], "offrl_version": "0.1.0",
            "git_commit": "0123456789abcdef", "started": "2026-11-22T10:00:00Z",
            "finished": "2026-11-22T11:00:00Z", "status": status, "device": "cpu",
            "ref_min_score": REF_MIN, "ref_max_score": REF_MAX}
    (path / "run.json").write_text(json.dumps(info))
    offsets = np.linspace(-1.0, 1.0, episodes)
    with open(path / "evaluations.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "seed", "episode", "env_seed", "return", "length",
                    "normalized_score"])
        for seed, final in zip(seeds, final_scores):
            for step in STEPS:
                for ep, off in enumerate(offsets):
                    score = final * step / STEPS[-1] + off
                    ret = score / 100 * (REF_MAX - REF_MIN) + REF_MIN
                    w.writerow([step, seed, ep, 1000 * seed + ep, ret, 1000,
                                score if normalized else ""])
    if metrics:
        with open(path / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "seed", "critic_loss", "updates_per_s"])
            for seed in seeds:
                for step in (1000, 5000, 10000):
                    w.writerow([step, seed, 1.0 / step * 1000, 250.0])
    return path


@pytest.fixture
def suite(tmp_path):
    """Two algorithms on two datasets, five seeds each, with known per-seed scores."""
    scores = {
        ("td3_bc", "hopper-medium-v2"): [60.0, 62.0, 64.0, 66.0, 68.0],
        ("td3_bc", "walker2d-medium-v2"): [80.0, 81.0, 82.0, 83.0, 84.0],
        ("iql", "hopper-medium-v2"): [50.0, 51.0, 52.0, 53.0, 54.0],
        ("iql", "walker2d-medium-v2"): [70.0, 75.0, 80.0, 85.0, 90.0],
    }
    root = tmp_path / "runs"
    for (algo, dataset), values in scores.items():
        make_run_dir(root, algo, dataset, values)
    return root, scores


def _table(path):
    with open(path) as f:
        return {(r["kind"], r["name"], r["algorithm"]): r for r in csv.DictReader(f)}


def test_report_writes_tables_and_figures_with_the_right_numbers(suite, tmp_path):
    root, scores = suite
    runs = load_runs([root])
    assert runs.algorithms == ["iql", "td3_bc"] and not runs.warnings
    out = tmp_path / "report"
    report = build_report(runs, out, ReportSettings(reps=2_000, profile_reps=200, curve_reps=200))

    for stem in ("aggregates", "profiles", "probability_of_improvement", "learning_curves",
                 "metrics_hopper-medium-v2"):
        for ext in ("png", "svg"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000, stem
    for name in ("report.md", "table.md", "table.csv", "scores.csv", "report.json",
                 "probability_of_improvement.csv"):
        assert (out / name).is_file(), name

    table = _table(out / "table.csv")
    for (algo, dataset), values in scores.items():
        row = table[("dataset", dataset, algo)]
        assert float(row["point"]) == pytest.approx(np.mean(values))
        assert float(row["low"]) <= np.mean(values) <= float(row["high"])
        assert int(row["runs"]) == 5
    for algo in ("iql", "td3_bc"):
        matrix = np.array([scores[(algo, d)] for d in ("hopper-medium-v2",
                                                       "walker2d-medium-v2")]).T  # (runs, tasks)
        assert float(table[("aggregate", "IQM", algo)]["point"]) == pytest.approx(stats.iqm(matrix))
        assert float(table[("aggregate", "Median", algo)]["point"]) == pytest.approx(
            stats.median_score(matrix))
        assert float(table[("aggregate", "Optimality Gap", algo)]["point"]) == pytest.approx(
            stats.optimality_gap(matrix))

    # td3_bc beats iql on every hopper seed and on 17 of 25 walker pairs (plus ties)
    poi = report.probability_of_improvement[("iql", "td3_bc")]
    expected = (0.0 + stats.probability_of_improvement(
        np.array(scores[("iql", "walker2d-medium-v2")])[:, None],
        np.array(scores[("td3_bc", "walker2d-medium-v2")])[:, None])) / 2
    assert poi.point == pytest.approx(expected)

    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20
    assert {float(r["score"]) for r in rows if r["algorithm"] == "iql"
            and r["dataset"] == "hopper-medium-v2"} == {50.0, 51.0, 52.0, 53.0, 54.0}
    assert all(r["step"] == "10000" for r in rows)

    markdown = (out / "table.md").read_text()
    assert "| hopper-medium-v2 | 52.0 [" in markdown and "(n=5)" in markdown
    page = (out / "report.md").read_text()
    assert "![Aggregate scores](aggregates.png)" in page and str(root) in page
    summary = json.loads((out / "report.json").read_text())
    assert summary["aggregates"]["td3_bc"]["Mean"]["point"] == pytest.approx(
        (64.0 + 82.0) / 2)


def test_report_and_compare_commands(suite, tmp_path, capsys):
    root, _ = suite
    out = tmp_path / "cli_report"
    assert main(["report", str(root), "--out", str(out), "--reps", "500", "--seed", "3",
                 "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "IQM" in printed and str(out) in printed
    assert (out / "table.md").is_file() and not list(out.glob("*.png"))

    assert main(["compare", str(root), "--alpha", "0.05", "--interims", "2",
                 "--n-per-interim", "5"]) == 0
    printed = capsys.readouterr().out
    # hopper: every td3_bc seed beats every iql seed -> decided at the first interim
    hopper = printed.split("hopper-medium-v2:")[1].split("walker2d-medium-v2:")[0]
    assert "iql" in hopper and "smaller" in hopper and "decided at interim 1" in hopper
    walker = printed.split("walker2d-medium-v2:")[1]
    assert "undecided" in walker and "run 5 more seed(s)" in walker


def test_name_override_and_curves_from_several_run_dirs(tmp_path):
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    make_run_dir(root_a, "td3_bc", "hopper-medium-v2", [10.0, 20.0], seeds=[0, 1])
    make_run_dir(root_a, "td3_bc", "hopper-medium-v2", [30.0], seeds=[2], name="second",
                 metrics=False)
    make_run_dir(root_b, "td3_bc", "hopper-medium-v2", [40.0, 50.0], seeds=[0, 1])
    runs = load_runs([root_a, root_b], labels=["baseline", "tuned"])
    assert runs.algorithms == ["baseline", "tuned"]
    assert runs.seed_scores("baseline", "hopper-medium-v2") == {0: 10.0, 1: 20.0, 2: 30.0}
    curve = runs.evaluation_curve("baseline", "hopper-medium-v2")
    assert curve.values.shape == (len(STEPS), 3)
    assert main(["report", str(root_a), str(root_b), "--name", "baseline", "--name", "-",
                 "--out", str(tmp_path / "r"), "--reps", "200", "--no-figures"]) == 0
    assert "td3_bc" in (tmp_path / "r" / "table.md").read_text()


def test_empty_normalized_score_uses_run_json_references(tmp_path):
    path = make_run_dir(tmp_path, "iql", "hopper-medium-v2", [42.0], normalized=False)
    assert read_run_dir(path).scores[0] == pytest.approx(42.0)
    info = json.loads((path / "run.json").read_text())
    del info["ref_min_score"]
    (path / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunDirError, match="normalized_score is empty"):
        read_run_dir(path)


def test_bad_run_directories_give_clear_errors(tmp_path):
    good = make_run_dir(tmp_path / "x", "iql", "hopper-medium-v2", [1.0, 2.0])
    (good / "evaluations.csv").unlink()
    with pytest.raises(RunDirError, match="missing evaluations.csv"):
        read_run_dir(good)

    empty = make_run_dir(tmp_path / "y", "iql", "hopper-medium-v2", [1.0])
    (empty / "evaluations.csv").write_text(
        "step,seed,episode,env_seed,return,length,normalized_score\n")
    with pytest.raises(RunDirError, match="no evaluation rows"):
        read_run_dir(empty)

    nan = make_run_dir(tmp_path / "z", "iql", "hopper-medium-v2", [1.0])
    text = (nan / "evaluations.csv").read_text().splitlines()
    text[1] = ",".join(text[1].split(",")[:-1] + ["nan"])
    (nan / "evaluations.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(RunDirError, match="line 2.*not finite"):
        read_run_dir(nan)

    broken = make_run_dir(tmp_path / "w", "iql", "hopper-medium-v2", [1.0])
    (broken / "run.json").write_text("{not json")
    with pytest.raises(RunDirError, match="run.json: not valid JSON"):
        read_run_dir(broken)

    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(RunDirError, match="no run directories"):
        load_runs([tmp_path / "nothing_here"])

    running = tmp_path / "running"
    make_run_dir(running, "iql", "hopper-medium-v2", [1.0], status="running")
    with pytest.raises(RunDirError, match="no complete runs.*--include-incomplete"):
        load_runs([running])

    dup = tmp_path / "dup"
    make_run_dir(dup, "iql", "hopper-medium-v2", [1.0, 2.0], name="one")
    make_run_dir(dup, "iql", "hopper-medium-v2", [3.0], seeds=[1], name="two")
    with pytest.raises(RunDirError, match="seed 1 of iql on hopper-medium-v2 appears twice"):
        load_runs([dup])


def test_mismatched_datasets_error_or_common_subset(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run_dir(root, "iql", "hopper-medium-v2", [50.0, 52.0])
    make_run_dir(root, "iql", "walker2d-medium-v2", [70.0, 72.0])
    make_run_dir(root, "td3_bc", "hopper-medium-v2", [60.0, 61.0], status="interrupted")
    # Only complete runs have a final evaluation: the interrupted one is skipped by default.
    skipped = load_runs([root])
    assert skipped.algorithms == ["iql"]
    assert any("skipped, status is 'interrupted'" in w for w in skipped.warnings)
    runs = load_runs([root], include_incomplete=True)
    assert any("status is 'interrupted'; using its latest" in w for w in runs.warnings)
    with pytest.raises(RunDirError, match="td3_bc has no runs on walker2d-medium-v2"):
        build_report(runs, tmp_path / "out", ReportSettings(reps=100))
    report = build_report(runs, tmp_path / "out", ReportSettings(
        reps=200, profile_reps=100, curve_reps=100, common_datasets=True, figures=False))
    assert report.datasets == ["hopper-medium-v2"]
    assert any("walker2d-medium-v2" in w for w in report.warnings)

    # The CLI turns these into one line and exit status 1.
    assert main(["report", str(root), "--out", str(tmp_path / "o2"), "--reps", "50",
                 "--include-incomplete"]) == 1
    err = capsys.readouterr().err
    assert "offrl: error:" in err and "walker2d-medium-v2" in err
    assert main(["compare", str(root), "--name", "a", "--name", "b"]) == 1
    assert "one label per RUNS" in capsys.readouterr().err
    assert issubclass(RunDirError, UserError) and issubclass(RunDirError, ValueError)
