"""Sweeps: suite files, expansion into jobs, skip-complete, retries, a killed sweep rerun, and the
Ray backend giving the local backend's layout. Tiny jobs on a tiny generated dataset."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offrl.errors import UserError
from offrl.sweeps import expand_suite, load_suite, run_sweep
from offrl.sweeps.suite import SuiteError

DATASET = "inverted-pendulum-random-sweep-v0"
CARD = f"""\
id = "{DATASET}"
env_id = "InvertedPendulum-v4"
description = "Uniform-random InvertedPendulum steps for the sweep tests."
max_episode_steps = 100

[source.recipe]
policy = "uniform-random"
env_id = "InvertedPendulum-v4"
seed = 0
transitions = 500
max_episode_steps = 100

[scores]
ref_min_score = 0.0
ref_max_score = 50.0
approximate = false

[spaces]
observation_shape = [4]
action_shape = [1]
"""

SUITE = f"""\
[suite]
description = "Two tiny jobs."
datasets = ["{DATASET}"]
seeds = [0, 1]

[training]
steps = 200
batch_size = 32
eval_every = 100
eval_episodes = 2
max_episode_steps = 30
log_every = 50
checkpoint_every = 50
tensorboard = false

[algorithms.td3_bc.algo]
actor_hidden_dims = [32, 32]
critic_hidden_dims = [32, 32]

[algorithms.iql.algo]
actor_hidden_dims = [32, 32]
critic_hidden_dims = [32, 32]
value_hidden_dims = [32, 32]

[report]
reps = 200
figures = false

[protocol]
used = "standard"

[variants.longer]
seeds = [3]
[variants.longer.training]
steps = 400
[variants.longer.algorithms.iql.training]
steps = 600
"""

# Loaded by every Python started with this folder on PYTHONPATH (the job processes): makes
# TD3+BC raise on its 80th update in a process, as long as the count file allows more failures.
FAILURE_INJECTION = """\
import os
if os.environ.get("OFFRL_TEST_FAIL_FILE"):
    import offrl.algos.td3_bc as module
    path, times = os.environ["OFFRL_TEST_FAIL_FILE"], int(os.environ["OFFRL_TEST_FAIL_TIMES"])
    original, calls = module.TD3BC.update, [0]

    def update(self, batch):
        calls[0] += 1
        if calls[0] == 80:
            failed = int(open(path).read()) if os.path.exists(path) else 0
            if failed < times:
                open(path, "w").write(str(failed + 1))
                raise RuntimeError("injected failure")
        return original(self, batch)

    module.TD3BC.update = update
"""


@pytest.fixture
def setup(tmp_path, monkeypatch, offrl_home):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / f"{DATASET}.toml").write_text(CARD)
    monkeypatch.setenv("OFFRL_CARDS", str(cards))
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE)
    return tmp_path, suite


def read_json(path):
    return json.loads(Path(path).read_text())


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def quiet(line):
    pass


# ---------------------------------------------------------------------------------- suites
def test_suite_expansion(setup):
    tmp_path, path = setup
    suite = load_suite(path)
    assert suite.name == "tiny" and suite.seeds == (0, 1) and suite.datasets == (DATASET,)
    jobs = expand_suite(suite)
    assert [j.id for j in jobs] == [f"td3_bc/{DATASET}", f"iql/{DATASET}"]
    for job in jobs:  # one job per (algorithm, dataset), every seed in it
        assert job.seeds == (0, 1) and job.steps == 200
        assert job.config["training"]["seeds"] == [0, 1]
        assert job.config["training"]["max_episode_steps"] == 30
        assert job.config["algo"]["critic_hidden_dims"] == [32, 32]
        assert job.config_source.endswith(f"baselines/{job.algo}/default.toml")
        assert job.run_dir == f"runs/{job.algo}/{DATASET}"
    assert jobs[0].config["algo"]["alpha"] == 2.5  # the rest comes from the baseline config

    longer = expand_suite(load_suite(path, variant="longer"))
    assert [(j.algo, j.seeds, j.steps) for j in longer] == [("td3_bc", (3,), 400),
                                                            ("iql", (3,), 600)]
    assert longer[0].config_sha256 != jobs[0].config_sha256


@pytest.mark.parametrize("edit, message", [
    (("[training]\nsteps = 200", "[training]\nstepz = 200"), "stepz"),
    (("[algorithms.iql.algo]", "[algorithms.sac_x.algo]"), "sac_x"),
    (("seeds = [0, 1]", "seeds = []"), "[suite] seeds"),
    (("batch_size = 32", "batch_size = 32\nseeds = [1]"), "[suite] seeds"),
    (("used = \"standard\"", "used = \"huge\""), "[protocol] used"),
    (("[report]\nreps = 200", "[report]\nreps = \"many\""), "[report] reps"),
    (("value_hidden_dims = [32, 32]", "value_hidden_dims = 32"), "value_hidden_dims"),
])
def test_suite_errors_name_file_and_key(setup, edit, message):
    tmp_path, path = setup
    bad = tmp_path / "bad.toml"
    bad.write_text(SUITE.replace(*edit))
    with pytest.raises(SuiteError) as info:
        load_suite(bad)
    assert str(bad) in str(info.value) and message in str(info.value)


def test_unknown_suite_and_variant(setup):
    tmp_path, path = setup
    with pytest.raises(SuiteError, match="known suites: .*quick"):
        load_suite("no-such-suite")
    with pytest.raises(SuiteError, match="no variant 'fast'.*longer"):
        load_suite(path, variant="fast")


def test_shipped_suites():
    quick = load_suite("quick")
    assert len(quick.seeds) == 5 and {a.name for a in quick.algorithms} == {"td3_bc", "iql", "cql"}
    assert len(expand_suite(quick)) == 3 * len(quick.datasets)
    mujoco = load_suite("mujoco")
    assert len(mujoco.datasets) == 9 and len(mujoco.seeds) == 5
    assert {j.steps for j in expand_suite(mujoco)} == {1_000_000}
    assert mujoco.protocol["used"] in ("standard", *mujoco.variants)
    reduced = expand_suite(load_suite("mujoco", variant="reduced"))
    assert all(j.steps < 1_000_000 for j in reduced)


# ---------------------------------------------------------------------------------- local runs
def test_skip_complete_and_retry(setup, monkeypatch):
    tmp_path, path = setup
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FAILURE_INJECTION)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(inject)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    monkeypatch.setenv("OFFRL_TEST_FAIL_FILE", str(tmp_path / "failures"))
    monkeypatch.setenv("OFFRL_TEST_FAIL_TIMES", "1")
    suite, out = load_suite(path), tmp_path / "sweep"
    td3, iql = f"td3_bc/{DATASET}", f"iql/{DATASET}"

    # TD3+BC fails at step 80; its retry resumes from the checkpoint at step 50 and completes.
    lines = []
    first = run_sweep(suite, out, retries=1, progress=False, print_fn=lines.append)
    assert first.complete and first.statuses == {td3: "complete", iql: "complete"}
    assert any(line.startswith(f"failed {td3} at step") and "injected failure" in line
               and "retrying" in line for line in lines)
    info = read_json(out / first.run_dirs[td3] / "run.json")
    assert info["status"] == "complete" and [r["step"] for r in info["resumed"]] == [50]
    evaluations = rows(out / first.run_dirs[td3] / "evaluations.csv")
    assert sorted((r["step"], r["seed"], r["episode"]) for r in evaluations) == sorted(
        (str(s), str(seed), str(e)) for s in (100, 200) for seed in (0, 1) for e in (0, 1))
    manifest = read_json(out / "sweep.json")
    assert manifest["jobs"][td3]["attempts"] == 2 and manifest["jobs"][iql]["attempts"] == 1
    assert manifest["jobs"][td3]["status"] == "complete" and manifest["suite"] == "tiny"
    assert manifest["report"] == "report/report.md"
    table = (out / "report" / "table.md").read_text()
    assert "td3_bc" in table and "iql" in table
    assert "injected failure" in (out / "logs" / f"td3_bc--{DATASET}.log").read_text()

    # Everything complete: a rerun starts nothing and leaves the runs as they were.
    infos = {j: read_json(d / "run.json") for j, d in first.run_dirs.items()}
    lines.clear()
    assert run_sweep(suite, out, progress=False, print_fn=lines.append).complete
    assert not any(line.startswith(("starting", "resuming")) for line in lines)
    assert {j: read_json(d / "run.json") for j, d in first.run_dirs.items()} == infos

    # A changed suite is refused rather than mixed into the old runs.
    path.write_text(SUITE.replace("steps = 200", "steps = 300"))
    with pytest.raises(UserError, match="another config"):
        run_sweep(load_suite(path), out, progress=False, print_fn=quiet)


class FakeBackend:
    """Jobs that end at once: each job fails its first `failures[job id]` attempts."""

    name = "fake"

    def __init__(self, out, failures):
        self.out, self.failures, self.started = out, dict(failures), []

    def log_path(self, job):
        return self.out / "logs" / f"{job.slug}.log"

    def start(self, job, run_dir):
        self.started.append(job.id)
        return job

    def poll(self, job):
        from offrl.sweeps.worker import JobOutcome

        if self.failures.get(job.id, 0) > 0:
            self.failures[job.id] -= 1
            return JobOutcome("failed", 0, "boom")
        return JobOutcome("complete", job.steps)

    def current_step(self, job):
        return 0

    def stop(self, handles, timeout=0):
        pass


def test_retries_then_gives_up(setup, monkeypatch):
    from offrl.sweeps import runner
    from offrl.sweeps.manifest import open_manifest

    monkeypatch.setattr(runner, "POLL_INTERVAL_S", 0.0)
    tmp_path, path = setup
    suite, out = load_suite(path), tmp_path / "sweep"
    jobs = expand_suite(suite)
    td3, iql = (j.id for j in jobs)
    manifest = open_manifest(out, suite.label, str(path), "fake", {}, jobs)
    backend = FakeBackend(out, {td3: 5, iql: 1})
    lines = []
    runner._run_jobs(jobs, jobs, out, backend, manifest, max_jobs=2, retries=2, progress=False,
                     label="tiny", print_fn=lines.append)
    assert backend.started == [td3, iql, td3, iql, td3]  # 1 + 2 attempts at most
    saved = read_json(out / "sweep.json")["jobs"]
    assert (saved[td3]["status"], saved[td3]["attempts"], saved[td3]["error"]) == (
        "failed", 3, "boom")
    assert (saved[iql]["status"], saved[iql]["attempts"]) == ("complete", 2)
    assert any("giving up after 3 attempt(s)" in line for line in lines)


def test_killed_sweep_rerun_finishes_only_what_was_missing(setup, capsys):
    tmp_path, path = setup
    path.write_text(SUITE.replace("[algorithms.iql.algo]",
                                  "[algorithms.iql.training]\nsteps = 2000\neval_every = 500\n\n"
                                  "[algorithms.iql.algo]"))
    out = tmp_path / "sweep"
    td3_run, iql_run = out / f"runs/td3_bc/{DATASET}", out / f"runs/iql/{DATASET}"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "offrl", "sweep", str(path), "--out", str(out), "--jobs", "2",
         "--no-progress", "--no-report"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ((iql_run / "checkpoints" / "latest.pt").is_file()
                   and (td3_run / "run.json").is_file()
                   and read_json(td3_run / "run.json")["status"] == "complete"):
            assert time.monotonic() < deadline and sweep.poll() is None, "sweep did not get going"
            time.sleep(0.05)
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)  # the sweep dies at once; its job is told to stop
        sweep.wait()
    assert read_json(iql_run / "run.json")["status"] != "complete", "killed too late"
    deadline = time.monotonic() + 30
    while read_json(iql_run / "run.json")["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)  # the orphaned job stops with a checkpoint (SIGTERM from the kernel)
    assert read_json(iql_run / "run.json")["status"] == "interrupted"
    td3_info = read_json(td3_run / "run.json")

    lines = []
    result = run_sweep(load_suite(path), out, progress=False, print_fn=lines.append)
    assert result.complete
    assert [line.split()[:2] for line in lines if line.startswith(("starting", "resuming"))] == [
        ["resuming", f"iql/{DATASET}"]]
    assert read_json(td3_run / "run.json") == td3_info  # untouched
    info = read_json(iql_run / "run.json")
    assert info["status"] == "complete" and len(info["resumed"]) == 1
    assert info["resumed"][0]["step"] > 0
    steps = [(r["step"], r["seed"], r["episode"]) for r in rows(iql_run / "evaluations.csv")]
    assert len(steps) == len(set(steps)) == 4 * 2 * 2  # every evaluation once, none repeated


def test_sigterm_stops_a_background_sweep_and_its_jobs(setup):
    """`nohup offrl sweep … &` inherits SIGINT as ignored; SIGTERM to the sweep must still stop
    it like Ctrl-C: its job checkpoints and stops, nothing is left running."""
    tmp_path, path = setup
    path.write_text(SUITE.replace("[algorithms.iql.algo]",
                                  "[algorithms.iql.training]\nsteps = 2000\neval_every = 500\n\n"
                                  "[algorithms.iql.algo]"))
    out = tmp_path / "sweep"
    iql_run = out / f"runs/iql/{DATASET}"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "offrl", "sweep", str(path), "--out", str(out), "--jobs", "2",
         "--no-progress", "--no-report"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 60
        while not (iql_run / "checkpoints" / "latest.pt").is_file():
            assert time.monotonic() < deadline and sweep.poll() is None, "sweep did not get going"
            time.sleep(0.05)
        sweep.send_signal(signal.SIGTERM)  # the sweep only, as `kill PID` does
        assert sweep.wait(timeout=60) != 0
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    assert read_json(iql_run / "run.json")["status"] == "interrupted"
    assert read_json(out / "sweep.json")["jobs"][f"iql/{DATASET}"]["status"] == "interrupted"


# ---------------------------------------------------------------------------------- Ray
def _layout(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in (out / "runs").rglob("*") if p.is_file()}


def test_ray_backend_gives_the_local_layout(setup, monkeypatch):
    ray = pytest.importorskip("ray")
    tmp_path, path = setup
    suite = load_suite(path)
    local = run_sweep(suite, tmp_path / "local", progress=False, print_fn=quiet)
    assert local.complete

    import offrl.sweeps.ray_backend as ray_backend

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        on_ray = run_sweep(suite, tmp_path / "ray", backend="ray", progress=False, print_fn=quiet)
        # As on a cluster without shared storage: run dirs travel back as archives.
        original = ray_backend.RayBackend.__init__
        monkeypatch.setattr(ray_backend.RayBackend, "__init__",
                            lambda self, *a, **k: original(self, *a, **{**k, "ship": "always"}))
        shipped = run_sweep(suite, tmp_path / "shipped", backend="ray", progress=False,
                            print_fn=quiet)
    finally:
        ray.shutdown()
    for result in (on_ray, shipped):
        assert result.complete and result.report_dir is not None
        assert _layout(result.out) == _layout(local.out)
        for job_id, run_dir in local.run_dirs.items():
            other = result.run_dirs[job_id]
            assert rows(other / "evaluations.csv") == rows(run_dir / "evaluations.csv")
            assert read_json(other / "run.json")["command"]["backend"] == "ray"
        assert read_json(result.out / "sweep.json")["backend"] == "ray"
        assert (result.out / "logs" / f"iql--{DATASET}.log").is_file()


def test_sweep_cli_dry_run_and_errors(setup, capsys):
    from offrl.cli import main

    tmp_path, path = setup
    assert main(["sweep", str(path), "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"td3_bc/{DATASET}" in out and f"iql/{DATASET}" in out
    assert main(["sweep", "nope"]) == 1
    assert "known suites" in capsys.readouterr().err
    bad = tmp_path / "missing-card.toml"
    bad.write_text(SUITE.replace(f'datasets = ["{DATASET}"]', 'datasets = ["no-such-data-v0"]'))
    with pytest.raises(UserError, match="no dataset card for no-such-data-v0"):
        run_sweep(load_suite(bad), tmp_path / "s2", progress=False, print_fn=quiet)
    assert main(["sweep", str(path), "--address", "x:1", "--out", str(tmp_path / "s3")]) == 1
    assert "--backend ray" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- conditions
HIDDEN = f"{DATASET}-labelled50-lowest50-s0"
PROXY = f"{HIDDEN}-idm"

TINY_IDM = """\
[idm]
hidden_dims = [32, 32]
dropout = 0.0
batch_size = 64
max_steps = 40
eval_every = 20
"""

SEMI_SUPERVISED = f"""\
[suite]
datasets = ["{DATASET}"]
seeds = [0]

[training]
steps = 40
batch_size = 32
eval_every = 40
eval_episodes = 1
max_episode_steps = 20
log_every = 20
checkpoint_every = 40
tensorboard = false

[algorithms.td3_bc.algo]
actor_hidden_dims = [16, 16]
critic_hidden_dims = [16, 16]

[conditions.all-actions]

[conditions.labelled-half]
hide_actions = {{ fraction = 0.5, from = "lowest-50%", seed = 0 }}

[conditions.labelled-proxy]
hide_actions = {{ fraction = 0.5, from = "lowest-50%", seed = 0 }}
label = {{ idm_config = "idm.toml" }}

[report]
reps = 100
figures = false
"""


@pytest.fixture
def semi_supervised(setup):
    tmp_path, _ = setup
    (tmp_path / "idm.toml").write_text(TINY_IDM)
    path = tmp_path / "semi.toml"
    path.write_text(SEMI_SUPERVISED)
    return tmp_path, path


def test_shipped_semi_supervised_suite():
    suite = load_suite("semi_supervised")
    assert len(suite.datasets) == 6 and len(suite.seeds) == 5
    assert {a.name for a in suite.algorithms} == {"td3_bc", "iql"}
    assert [c.name for c in suite.conditions] == ["all-actions", "labelled-10pct",
                                                  "labelled-proxy"]
    jobs = expand_suite(suite)
    assert len(jobs) == 2 * 6 * 3 and {j.steps for j in jobs} == {1_000_000}
    hopper = [j for j in jobs if j.algo == "td3_bc" and j.dataset.startswith("hopper-medium-v0")]
    assert [j.dataset for j in hopper] == ["hopper-medium-v0",
                                           "hopper-medium-v0-labelled10-lowest50-s0",
                                           "hopper-medium-v0-labelled10-lowest50-s0-idm"]
    assert all(j.config == hopper[0].config for j in hopper)  # the source dataset's config
    assert len({j.config_sha256 for j in hopper}) == 3        # the derivation is hashed in
    cpu = load_suite("semi_supervised", variant="cpu")
    assert len(expand_suite(cpu)) == 2 * 2 * 3 and {j.steps for j in expand_suite(cpu)} == {10_000}
    small = load_suite("semi_supervised", variant="small")
    assert small.datasets == ("hopper-random-100k-v0",) and len(expand_suite(small)) == 2 * 3
    label = small.conditions[2].steps[1]
    assert label.idm["max_steps"] == 2000 and label.idm["history"] == 1  # override + file


@pytest.mark.parametrize("edit, message", [
    (("[conditions.all-actions]", "[conditions.all-actions]\nhide = 1"), "hide"),
    (("fraction = 0.5, from", "fraction = 1.5, from"), "hide_actions fraction"),
    (("from = \"lowest-50%\", seed = 0 }}\nlabel", "from = \"middle\", seed = 0 }}\nlabel"),
     "hide_actions from"),
    (("idm_config = \"idm.toml\"", "idm_config = \"idm.toml\", idm = {{ max_stepz = 3 }}"),
     "max_stepz"),
    (("idm_config = \"idm.toml\"", "idm_config = \"no-idm.toml\""), "no-idm.toml"),
    (("[conditions.labelled-half]\nhide_actions", "[conditions.labelled-half]\nhide_actionz"),
     "hide_actionz"),
])
def test_condition_errors_name_file_and_key(semi_supervised, edit, message):
    tmp_path, _ = semi_supervised
    bad = tmp_path / "bad.toml"
    bad.write_text(SEMI_SUPERVISED.replace(*(e.replace("{{", "{").replace("}}", "}")
                                             for e in edit)))
    with pytest.raises(SuiteError) as info:
        load_suite(bad)
    assert str(bad) in str(info.value) and message in str(info.value)


def test_semi_supervised_sweep_end_to_end(semi_supervised, offrl_home):
    from offrl.data.load import derived_dataset_path, load_any_dataset

    tmp_path, path = semi_supervised
    out = tmp_path / "sweep"
    lines = []
    result = run_sweep(load_suite(path), out, progress=False, print_fn=lines.append)
    jobs = [f"td3_bc/{d}" for d in (DATASET, HIDDEN, PROXY)]
    assert result.complete and list(result.statuses) == jobs
    for job, dataset in zip(jobs, (DATASET, HIDDEN, PROXY)):  # a run per condition
        info = read_json(result.run_dirs[job] / "run.json")
        assert info["status"] == "complete" and info["dataset_id"] == dataset
    made = [line for line in lines if "making it" in line]
    assert len(made) == 2 and "hide-actions" in made[0] and "label" in made[1]
    assert any(PROXY in line and "IDM held-out action MSE" in line for line in lines)
    table = (out / "report" / "table.md").read_text()
    assert all(d in table for d in (DATASET, HIDDEN, PROXY))  # side by side in the report
    # ... and as conditions of one algorithm on the source dataset, compared pairwise
    by_condition = read_json(out / "report-conditions" / "report.json")
    assert by_condition["datasets"] == [DATASET]
    assert by_condition["algorithms"] == [f"td3_bc · {c}" for c in
                                          ("all-actions", "labelled-half", "labelled-proxy")]
    assert len(by_condition["probability_of_improvement"]) == 3

    hidden, proxy = (load_any_dataset(d, progress=False) for d in (HIDDEN, PROXY))
    assert 0 < hidden.labelled.mean() < 1 and proxy.action_is_proxy.any()
    assert proxy.metadata["labelling"]["idm_config"]["max_steps"] == 40
    # a registered id still loads with its card, although its recipe file sits in the cache
    assert load_any_dataset(DATASET, progress=False).metadata["ref_max_score"] == 50.0

    # A rerun skips everything: no job starts and no dataset is made again.
    stamps = {d: derived_dataset_path(d).stat().st_mtime_ns for d in (HIDDEN, PROXY)}
    lines.clear()
    assert run_sweep(load_suite(path), out, progress=False, print_fn=lines.append).complete
    assert not any(line.startswith(("starting", "resuming")) or "making it" in line
                   for line in lines)
    assert {d: derived_dataset_path(d).stat().st_mtime_ns for d in stamps} == stamps

    # Another sweep reuses the derived datasets, but not one made with other IDM settings.
    lines.clear()
    (tmp_path / "idm.toml").write_text(TINY_IDM.replace("max_steps = 40", "max_steps = 30"))
    with pytest.raises(UserError, match="other IDM settings.*max_steps"):
        run_sweep(load_suite(path), tmp_path / "other", progress=False, print_fn=lines.append)
    assert any("reusing" in line and HIDDEN in line for line in lines)
