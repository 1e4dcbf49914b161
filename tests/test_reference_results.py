"""The committed reference results (baselines/results/<name>/, scripts/publish_reference_results.py)
are whole and agree with their report: every job of the suite is there with every seed trained to
the end, was trained with the config the committed suite file gives (same config hash), and the
per-seed scores and aggregate point estimates in evaluation/reports/<name>/ follow from the
committed evaluation files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from offrl.evaluation import stats
from offrl.evaluation.runs import load_runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "baselines" / "results"
REPORTS = ROOT / "evaluation" / "reports"
PUBLISHED = sorted(p.parent.name for p in RESULTS.glob("*/sweep.json"))


def test_the_mujoco_reference_results_are_published():
    assert "mujoco-cpu-10k" in PUBLISHED
    manifest = json.loads((RESULTS / "mujoco-cpu-10k" / "sweep.json").read_text())
    algos = {job["algo"] for job in manifest["jobs"].values()}
    datasets = {job["dataset"] for job in manifest["jobs"].values()}
    assert algos == {"td3_bc", "iql", "cql"}
    assert len(datasets) == 9 and len(manifest["jobs"]) == 27
    assert manifest["protocol"]["used"] == "cpu-10k"


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_job_is_complete_and_matches_the_suite(name):
    from offrl.sweeps.jobs import expand_suite
    from offrl.sweeps.suite import load_suite

    folder = RESULTS / name
    manifest = json.loads((folder / "sweep.json").read_text())
    _, _, variant = manifest["suite"].partition(":")
    suite = load_suite(folder / "suite.toml", variant or None)
    expected = {job.id: job for job in expand_suite(suite)}
    assert set(manifest["jobs"]) == set(expected)
    for job_id, job in manifest["jobs"].items():
        assert job["config_sha256"] == expected[job_id].config_sha256, job_id
        run = folder / job["run_dir"]
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "complete", job_id
        assert info["seeds"] == list(suite.seeds), job_id
        with open(run / "evaluations.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        last = max(int(r["step"]) for r in rows)
        assert last == job["steps"] == info["steps"], job_id
        assert {int(r["seed"]) for r in rows if int(r["step"]) == last} == set(suite.seeds)


@pytest.mark.parametrize("name", PUBLISHED)
def test_the_report_follows_from_the_committed_runs(name):
    runs = load_runs([RESULTS / name / "runs"])
    with open(REPORTS / name / "scores.csv", newline="") as f:
        reported = {(r["algorithm"], r["dataset"], int(r["seed"])): float(r["score"])
                    for r in csv.DictReader(f)}
    recomputed = {(a, d, s): v for a in runs.algorithms for d in runs.datasets
                  for s, v in runs.seed_scores(a, d).items()}
    assert recomputed.keys() == reported.keys()
    for key, value in recomputed.items():
        assert value == pytest.approx(reported[key], abs=1e-9), key
    report = json.loads((REPORTS / name / "report.json").read_text())
    columns = runs.score_columns(report["datasets"])
    for algo, cols in columns.items():
        assert stats.iqm(cols) == pytest.approx(report["aggregates"][algo]["IQM"]["point"])
        assert np.mean(np.concatenate(cols)) == pytest.approx(
            report["aggregates"][algo]["Mean"]["point"])
    assert (REPORTS / f"{name}.md").is_file()
