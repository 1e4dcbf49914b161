"""Submission bundles: build one from run directories, read one, pack it as zip and unpack it.

`build_bundle(run_dirs, out_dir, name=..., suite=...)` takes complete run directories
(docs/run-directory.md) of one algorithm, the final evaluation of every seed (its raw
per-episode returns, lengths and env seeds), exports every seed's final policy as TorchScript
with its observation normalisation inside (`offrl.training.export`), copies each dataset's
config.toml and writes submission.json and SHA256SUMS. The folder is built next to `out_dir`
and renamed into place, so a half-built bundle never looks like a bundle.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offrl.errors import UserError
from offrl.leaderboard.checksums import NOT_COVERED, check_checksums, write_checksums
from offrl.leaderboard.schema import (SCHEMA_VERSION, Submission, config_path, parse_submission,
                                      policy_path, validate_submission)
from offrl.leaderboard.suite import Suite, load_suite

SUBMISSION_JSON = "submission.json"
VERIFICATION_JSON = "verification.json"
MAX_BUNDLE_FILES = 5_000
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,300}$")


class BundleError(UserError, ValueError):
    """A bundle that cannot be built, read or unpacked. The message names the file."""


# ---------------------------------------------------------------------------------- reading runs
@dataclass
class _Run:
    path: Path
    info: dict[str, Any]
    config_text: str
    config: dict[str, Any]
    results: list[dict[str, Any]]        # SeedResult dicts


def _final_evaluations(run_path: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    """Per seed: the raw returns, lengths and env seeds of its final evaluation episodes."""
    from offrl.training.logging import read_csv_rows
    from offrl.training.run_dir import EVALUATIONS_CSV

    csv_path = run_path / EVALUATIONS_CSV
    rows = read_csv_rows(csv_path)
    steps = int(info["steps"])
    by_seed: dict[int, list[tuple[int, float, int, int]]] = {}
    try:
        for row in rows:
            if int(row["step"]) == steps:
                by_seed.setdefault(int(row["seed"]), []).append(
                    (int(row["episode"]), float(row["return"]), int(row["length"]),
                     int(row["env_seed"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{csv_path}: malformed evaluation row ({exc}); expected the columns "
                          "of docs/run-directory.md") from None
    results = []
    for seed in info.get("seeds", []):
        episodes = sorted(by_seed.get(int(seed), []))
        if not episodes:
            raise BundleError(f"{csv_path}: seed {seed} has no evaluation at the final step "
                              f"{steps}")
        results.append({"seed": int(seed), "step": steps,
                        "policy": policy_path(str(info["dataset_id"]), int(seed)),
                        "returns": [e[1] for e in episodes], "lengths": [e[2] for e in episodes],
                        "env_seeds": [e[3] for e in episodes]})
    return results


def _read_run(path: Path) -> _Run:
    from offrl.training.config import read_config_file
    from offrl.training.run_dir import STATUS_COMPLETE, RunDirectory

    run = RunDirectory(path).require()
    info = run.read_info()
    if info.get("status") != STATUS_COMPLETE:
        raise BundleError(f"{path}: status is {info.get('status')!r}; only complete runs can be "
                          "submitted (their final evaluation is the last iterate)")
    for key in ("algo", "dataset_id", "steps", "seeds", "env_id"):
        if not info.get(key):
            raise BundleError(f"{run.run_json}: missing {key!r}")
    if not info.get("dataset_sha256"):
        raise BundleError(f"{run.run_json}: no dataset_sha256 (trained on an in-memory "
                          "dataset?); submissions need registered datasets")
    if not run.config_toml.is_file():
        raise BundleError(f"{path}: missing config.toml")
    return _Run(path, info, run.config_toml.read_text(), read_config_file(run.config_toml),
                _final_evaluations(path, info))


def _export_run_policies(run: _Run, bundle: Path) -> None:
    """Export every seed of `run` from its latest checkpoint (the final step) into `bundle`."""
    from offrl.algos import get_algorithm
    from offrl.training.checkpoint import load_checkpoint
    from offrl.training.config import build_config
    from offrl.training.export import export_policy
    from offrl.training.run_dir import RunDirectory

    ckpt = RunDirectory(run.path).latest_checkpoint
    state = load_checkpoint(ckpt, map_location="cpu")
    if int(state["step"]) != int(run.info["steps"]):
        raise BundleError(f"{ckpt}: checkpoint at step {state['step']}, but the run's final "
                          f"evaluation is at step {run.info['steps']}; submit the last iterate")
    agent_cls = get_algorithm(state["algo"])
    config = build_config(state["algo"], agent_cls.config_class, state["config"],
                          source=f"{ckpt} (config)")
    seeds = list(config.training.seeds)
    agent = agent_cls(config.algo, int(state["observation_dim"]), int(state["action_dim"]),
                      seeds, device="cpu", max_action=float(state["max_action"]))
    agent.load_state_dict(state["agent"])
    dataset_id = str(run.info["dataset_id"])
    for m, seed in enumerate(seeds):
        export_policy(agent, m, state["normalization"], bundle / policy_path(dataset_id, seed),
                      info={"dataset_id": dataset_id, "step": int(state["step"]),
                            "env_id": run.info.get("env_id")})


def _merge_configs(runs: list[_Run]) -> dict[str, Any]:
    """The config of runs on one dataset; only `training.seeds` may differ (then all seeds)."""
    def without_seeds(cfg: dict[str, Any]) -> dict[str, Any]:
        return {**cfg, "training": {k: v for k, v in cfg.get("training", {}).items()
                                    if k != "seeds"}}

    first = runs[0]
    for other in runs[1:]:
        if without_seeds(other.config) != without_seeds(first.config):
            raise BundleError(f"{first.path} and {other.path} run {first.info['dataset_id']} "
                              "with different configs; a submission uses one config per dataset")
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in first.config.items()}
    merged.setdefault("training", {})["seeds"] = sorted(
        int(r["seed"]) for run in runs for r in run.results)
    return _json_safe(merged)


def _json_safe(value: Any) -> Any:
    """Configs may hold ±inf (CQL's unclipped cql_clip_diff_min/max, TOML's `inf`), which JSON
    cannot: they are written as the strings "inf" / "-inf" (as TOML spells them)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


# ---------------------------------------------------------------------------------- building
def build_bundle(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 name: str, suite: str | os.PathLike | dict[str, Any] | Suite,
                 description: str = "", submitter: str = "", overwrite: bool = False) -> Path:
    """Build the bundle `out_dir` from run directories (or folders holding them).

    Every run must be complete and of the same algorithm; several runs of one dataset (e.g.
    seeds 0-4 and 5-9) are merged. Returns `out_dir`. The rules (`offrl.leaderboard.rules`)
    are not applied here; `offrl submit` applies them after building.
    """
    from offrl import __version__
    from offrl.evaluation.runs import find_run_dirs
    from offrl.training.run_dir import utc_now

    suite = load_suite(suite)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} already exists; choose another --out/--name or pass "
                          "--overwrite")
    paths = []
    for p in run_dirs:
        paths += [q for q in find_run_dirs(p) if q.resolve() not in {x.resolve() for x in paths}]
    if not paths:
        raise BundleError("no run directories given")
    runs = [_read_run(p) for p in paths]
    algos = sorted({str(r.info["algo"]) for r in runs})
    if len(algos) != 1:
        raise BundleError(f"the runs are of several algorithms ({', '.join(algos)}); a "
                          "submission is one algorithm")
    steps = sorted({int(r.info["steps"]) for r in runs})
    if len(steps) != 1:
        raise BundleError(f"the runs trained for different numbers of steps {steps}; the "
                          "protocol fixes one")
    episodes = sorted({len(res["returns"]) for r in runs for res in r.results})
    if len(episodes) != 1:
        raise BundleError(f"seeds were evaluated on different numbers of final episodes "
                          f"{episodes}; use `offrl evaluate --into-evaluations` to even them")
    versions = sorted({str(r.info.get("offrl_version") or __version__) for r in runs})
    if len(versions) != 1:
        raise BundleError(f"the runs come from different offrl versions {versions}")

    by_dataset: dict[str, list[_Run]] = {}
    for run in runs:
        by_dataset.setdefault(str(run.info["dataset_id"]), []).append(run)
    datasets = []
    for dataset_id, group in sorted(by_dataset.items()):
        facts = {(r.info["dataset_sha256"], r.info["env_id"], r.info.get("max_episode_steps"),
                  r.info.get("ref_min_score"), r.info.get("ref_max_score")) for r in group}
        if len(facts) != 1:
            raise BundleError(f"the runs on {dataset_id} disagree on the dataset's sha256, env, "
                              "episode limit or reference scores: "
                              + ", ".join(str(r.path) for r in group))
        seen: dict[int, Path] = {}
        for run in group:
            for res in run.results:
                if res["seed"] in seen:
                    raise BundleError(f"seed {res['seed']} on {dataset_id} appears in "
                                      f"{seen[res['seed']]} and {run.path}; pass each seed once")
                seen[res["seed"]] = run.path
        info = group[0].info
        datasets.append({
            "dataset_id": dataset_id, "sha256": info["dataset_sha256"], "env_id": info["env_id"],
            "max_episode_steps": info.get("max_episode_steps"),
            "ref_min_score": info.get("ref_min_score"), "ref_max_score": info.get("ref_max_score"),
            "config": config_path(dataset_id), "hyperparameters": _merge_configs(group),
            "results": sorted((res for r in group for res in r.results),
                              key=lambda res: res["seed"])})
    commits = sorted({r.info.get("git_commit") for r in runs}, key=lambda c: c or "")
    data = {
        "schema_version": SCHEMA_VERSION, "name": name, "description": description,
        "submitter": submitter, "created": utc_now(),
        "suite": {"name": suite.name, "version": suite.version}, "algorithm": algos[0],
        "code": {"offrl_version": versions[0], "git_commits": commits,
                 "git_dirty": any(bool(r.info.get("git_dirty")) for r in runs)},
        "protocol": {"training_steps": steps[0], "evaluation_episodes": episodes[0],
                     "last_iterate": True},
        "datasets": datasets,
    }
    submission = validate_submission(data, source=f"the submission built from {len(runs)} run(s)")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for dataset_id, group in by_dataset.items():
            target = tmp / config_path(dataset_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(group[0].config_text)
            for run in group:
                _export_run_policies(run, tmp)
        (tmp / SUBMISSION_JSON).write_text(submission.to_json())
        write_checksums(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ---------------------------------------------------------------------------------- reading
def read_bundle(folder: str | os.PathLike) -> Submission:
    """Check a bundle folder's SHA256SUMS and parse its submission.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a bundle folder")
    if not (folder / SUBMISSION_JSON).is_file():
        raise BundleError(f"{folder}: no {SUBMISSION_JSON}")
    check_checksums(folder)
    return parse_submission((folder / SUBMISSION_JSON).read_bytes(),
                            source=str(folder / SUBMISSION_JSON))


def pack_bundle(folder: str | os.PathLike) -> bytes:
    """The bundle as zip bytes (every file but verification.json), for upload."""
    folder = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and not path.is_symlink() and rel != VERIFICATION_JSON:
                archive.write(path, rel)
    return buffer.getvalue()


def unpack_bundle(data: bytes, dest: str | os.PathLike, *, max_bytes: int) -> Path:
    """Unpack zip bytes into the empty folder `dest`, refusing anything unsafe.

    Refused: names that are absolute, contain `..`, backslashes or odd characters; links and
    special files; more than MAX_BUNDLE_FILES entries; more than `max_bytes` unpacked (counted
    while reading, so a zip bomb stops early). Raises BundleError.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise BundleError(f"the upload is not a zip archive ({exc})") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_BUNDLE_FILES:
            raise BundleError(f"the bundle has {len(entries)} entries; at most "
                              f"{MAX_BUNDLE_FILES}")
        total = 0
        for entry in entries:
            name = entry.filename
            if entry.is_dir():
                continue
            parts = name.split("/")
            if (not _MEMBER_NAME.match(name) or ".." in parts or "" in parts
                    or parts[0] in (".", "")):
                raise BundleError(f"the bundle holds a file with an unsafe name: {name[:80]!r}")
            mode = entry.external_attr >> 16
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                raise BundleError(f"the bundle entry {name!r} is not a plain file (a link?)")
            if name in NOT_COVERED - {"SHA256SUMS"}:
                continue   # verification results are the verifier's to write
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(entry) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > max_bytes:
                            raise BundleError(f"the bundle unpacks to more than {max_bytes} "
                                              "bytes")
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError,
                    NotImplementedError, RuntimeError, zlib.error) as exc:
                raise BundleError(f"the bundle entry {name!r} cannot be read ({exc})") from None
    return dest
