"""`offrl train` (offline training into a run directory) and `offrl evaluate` (re-evaluate one)."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from offrl.errors import UserError

TRAIN_EXAMPLES = """\
examples:
  offrl train td3_bc hopper-medium-v2 --seeds 5
      5 seeds side by side in one process, CORL's settings (baselines/td3_bc/…), 1M steps
  offrl train iql hopper-random-10k-v0 --steps 20000 --eval-every 5000 --seed-list 3,4
  offrl train iql hopper-medium-v2 --set algo.beta=10 --set training.eval_episodes=20
  offrl train iql hopper-medium-v2 --seeds 5 --precision bf16 --compile
      the fastest CPU path: bf16 compute (fp32 master weights) and torch.compile
  offrl train td3_bc hopper-medium-v2 --run-dir runs/td3_bc-hopper-seed0
      an exact folder: created if new, resumed if it already holds a run
  offrl train --resume runs/td3_bc/hopper-medium-v2/20261122-101500-3fa2c1
      continue from its latest checkpoint; the numbers equal an uninterrupted run's

config: --config FILE, else baselines/<algo>/<dataset>.toml if it exists, else
baselines/<algo>/default.toml ([algo] the algorithm's hyperparameters, [training] the loop's;
see baselines/README.md). Flags override the file. The resolved config is printed first and
saved as config.toml in the run directory (layout: docs/run-directory.md).

threads: --threads sets torch's CPU threads; the default is every core this process may use.
Running several jobs side by side? Give each --threads (cores / jobs): two 2-thread jobs on 2
cores can run 60x slower than two 1-thread jobs.

Ctrl-C stops at the end of the current step with a checkpoint; resume with --resume.
"""

EVALUATE_EXAMPLES = """\
examples:
  offrl evaluate runs/td3_bc/hopper-medium-v2/20261122-101500-3fa2c1
      the latest checkpoint, 10 fresh episodes per seed, into posthoc_evaluations.csv
  offrl evaluate RUN_DIR --episodes 100 --checkpoint RUN_DIR/checkpoints/step_500000.pt
  offrl evaluate RUN_DIR --episodes 90 --into-evaluations
      add the episodes to evaluations.csv at the checkpoint's step (more episodes for the
      run's score; only sensible for the final checkpoint)

Every call draws env seeds never used before in this run (its own seed stream, counted in
run.json), so repeated calls add independent episodes.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train an offline RL algorithm on a dataset (several seeds at once)",
        description="Train ALGO on DATASET for every seed in one process, writing a run "
                    "directory with config, metrics, evaluations and checkpoints.",
        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("algo", nargs="?", help="algorithm: td3_bc, iql, cql, …")
    p.add_argument("dataset", nargs="?", help="dataset id, e.g. hopper-medium-v2 "
                   "(`offrl datasets list`)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, metavar="N", help="train seeds 0..N-1")
    seeds.add_argument("--seed-list", metavar="S,S,…", help="train these seeds, e.g. 0,1,2")
    p.add_argument("--steps", type=int, metavar="N", help="gradient steps per seed")
    p.add_argument("--config", metavar="FILE", help="config TOML ([algo] and [training])")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override one config value (TOML syntax), e.g. algo.beta=10; repeatable")
    p.add_argument("--eval-every", type=int, metavar="N",
                   help="gradient steps between evaluations (0: only at the end)")
    p.add_argument("--eval-episodes", type=int, metavar="N",
                   help="episodes per seed per evaluation")
    p.add_argument("--precision", choices=("fp32", "bf16"),
                   help="fp32 (default), or bf16 compute with fp32 master weights: ~1.7x faster "
                        "on CPUs with AVX512-BF16/AMX ([training] precision)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the losses: faster after 20-60 s of compilation, results "
                        "equal within float rounding (a resumed run keeps its own setting)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, … (default: cuda if available, else cpu; a resumed "
                        "run keeps its device)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: all cores available to this process)")
    p.add_argument("--out", default="runs", metavar="DIR",
                   help="root of new run directories: DIR/<algo>/<dataset>/<time>-<hash> "
                        "(default: runs)")
    p.add_argument("--run-dir", metavar="DIR",
                   help="use exactly this run directory (created, or resumed if it holds a run)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue this run from its latest checkpoint (ALGO and DATASET optional)")
    p.add_argument("--eval-backend", choices=["sync", "async"], default="sync",
                   help="sync: envs stepped in this process (default, fastest on few cores); "
                        "async: one process per env")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "evaluate", help="evaluate a run's checkpoint on fresh env seeds",
        description="Load a checkpoint of RUN_DIR (default: checkpoints/latest.pt), play fresh "
                    "episodes for every seed, print per-seed mean normalised scores and append "
                    "the episodes to posthoc_evaluations.csv.",
        epilog=EVALUATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `offrl train`")
    p.add_argument("--episodes", type=int, default=10, metavar="N",
                   help="episodes per seed (default: 10)")
    p.add_argument("--checkpoint", metavar="PATH", help="checkpoint file (default: latest.pt)")
    p.add_argument("--into-evaluations", action="store_true",
                   help="append to evaluations.csv (at the checkpoint's step) instead")
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: the run's device if "
                   "available, else cpu)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    p.add_argument("--eval-backend", choices=["sync", "async"], default="sync")
    p.set_defaults(func=cmd_evaluate)


# ---------------------------------------------------------------------------------- helpers
def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> None:
    import torch

    if threads is not None and threads <= 0:
        raise UserError(f"--threads must be positive; got {threads}")
    torch.set_num_threads(threads or available_cores())


def resolve_device(device: str | None, default: str | None = None) -> str:
    import torch

    device = device or default
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for, but torch sees no CUDA device")
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"unknown device {device!r}: {exc}") from None
    return device


def parse_seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise UserError(f"--seed-list must be comma-separated integers, e.g. 0,1,2; "
                        f"got {text!r}") from None
    if not seeds:
        raise UserError("--seed-list is empty")
    return seeds


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """--set TABLE.KEY=VALUE items as {"algo": {...}, "training": {...}}, values parsed as TOML."""
    out: dict[str, dict[str, Any]] = {"algo": {}, "training": {}}
    for item in items:
        name, eq, text = item.partition("=")
        table, dot, key = name.strip().partition(".")
        if not eq or not dot or table not in out or not key:
            raise UserError(f"--set {item!r}: expected TABLE.KEY=VALUE with TABLE algo or "
                            "training, e.g. --set algo.beta=10")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word: a string
        out[table][key] = value
    return out


def _load_dataset(dataset_id: str, progress: bool):
    """A registered id, an id written by `offrl datasets hide-actions|label`, an .hdf5 file, a
    Minari dataset folder or minari:ID."""
    from offrl.data.load import load_any_dataset

    return load_any_dataset(dataset_id, progress=progress)


# ---------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from offrl.algos import get_algorithm
    from offrl.training.config import default_config_path, load_config
    from offrl.training.loop import train
    from offrl.training.run_dir import RunDirectory

    if args.resume and args.run_dir:
        raise UserError("give --resume RUN_DIR or --run-dir DIR, not both")
    run_dir = args.resume or args.run_dir
    existing = RunDirectory(run_dir) if run_dir else None
    if args.resume:
        existing.require()
    resuming = existing is not None and existing.exists()
    info = existing.read_info() if resuming else {}
    algo = args.algo or info.get("algo")
    dataset_id = args.dataset or info.get("dataset_id")
    if not algo or not dataset_id:
        raise UserError("give ALGO and DATASET, e.g. `offrl train td3_bc hopper-medium-v2`, or "
                        "--resume RUN_DIR")
    if resuming and (algo, dataset_id) != (info.get("algo"), info.get("dataset_id")):
        raise UserError(f"{existing.path} is a run of {info.get('algo')} on "
                        f"{info.get('dataset_id')}, not {algo} on {dataset_id}")
    agent_cls = get_algorithm(algo)

    training: dict[str, Any] = {}
    if args.seeds is not None:
        if args.seeds <= 0:
            raise UserError(f"--seeds must be positive; got {args.seeds}")
        training["seeds"] = list(range(args.seeds))
    if args.seed_list is not None:
        training["seeds"] = parse_seed_list(args.seed_list)
    for flag, key in (("steps", "steps"), ("eval_every", "eval_every"),
                      ("eval_episodes", "eval_episodes"), ("precision", "precision")):
        if getattr(args, flag) is not None:
            training[key] = getattr(args, flag)
    sets = parse_set(args.set)
    training.update(sets["training"])

    set_threads(args.threads)
    device = resolve_device(args.device, info.get("device") if resuming else None)
    progress = None if not args.no_progress else False

    if resuming and not (args.config or training or sets["algo"]):
        config, source = None, None  # the run's own config.toml
    else:
        if args.config:
            source = Path(args.config)
        elif resuming:
            source = existing.config_toml
        else:
            source = default_config_path(algo, dataset_id)
        config = load_config(algo, agent_cls.config_class, source, training_overrides=training,
                             algo_overrides=sets["algo"])
        source = str(source) if source is not None else None
        if source is None:
            print(f"note: no baselines/{algo}/ config found; using the built-in defaults",
                  file=sys.stderr)

    dataset = _load_dataset(dataset_id, progress=progress is not False)
    cli_args = {k: v for k, v in vars(args).items() if k != "func"}
    result = train(agent_cls, dataset, config, run_dir=run_dir, out=args.out, device=device,
                   progress=progress, config_source=source, command=cli_args,
                   compile=args.compile)
    return 0 if result.status == "complete" else 1


# ---------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from offrl.algos import get_algorithm
    from offrl.evaluation.rollout import VectorEvaluator, episode_seeds
    from offrl.training.checkpoint import load_checkpoint
    from offrl.training.config import build_config
    from offrl.training.logging import EVALUATION_COLUMNS, CsvLog, read_csv_rows
    from offrl.training.loop import AgentPolicy, Normalization, env_facts
    from offrl.training.run_dir import RunDirectory

    if args.episodes <= 0:
        raise UserError(f"--episodes must be positive; got {args.episodes}")
    run = RunDirectory(args.run_dir).require()
    info = run.read_info()
    set_threads(args.threads)
    import torch

    run_device = info.get("device")
    if (args.device is None and run_device and run_device.startswith("cuda")
            and not torch.cuda.is_available()):
        run_device = "cpu"
    device = resolve_device(args.device, run_device or "cpu")
    ckpt_path = Path(args.checkpoint) if args.checkpoint else run.latest_checkpoint
    state = load_checkpoint(ckpt_path, map_location=device)
    agent_cls = get_algorithm(state["algo"])
    config = build_config(state["algo"], agent_cls.config_class, state["config"],
                          source=f"{ckpt_path} (config)")
    normalization = Normalization.from_json(state["normalization"])
    seeds = list(config.training.seeds)
    env_id = info.get("env_id")

    max_action, env_limit = env_facts(env_id, info.get("dataset_id") or str(run.path))
    max_steps = info.get("max_episode_steps") or env_limit
    agent = agent_cls(config.algo, int(state["observation_dim"]), int(state["action_dim"]), seeds,
                      device=device, max_action=float(state.get("max_action", max_action)))
    agent.load_state_dict(state["agent"])

    index = int(info.get("posthoc_evaluations", 0))
    env_seeds = episode_seeds(config.training.eval_seed, seeds, args.episodes,
                              evaluation_index=index, stream=1)
    with VectorEvaluator(env_id, len(seeds), args.episodes, max_episode_steps=max_steps,
                         backend=args.eval_backend) as evaluator:
        rollouts = evaluator.run(AgentPolicy(agent, normalization, device), env_seeds)
    refs = (info.get("ref_min_score"), info.get("ref_max_score"))
    scores = rollouts.normalized_scores(refs) if None not in refs else None
    step = int(state["step"])

    if args.into_evaluations:
        log = CsvLog(run.evaluations_csv, EVALUATION_COLUMNS)
        done = [r for r in read_csv_rows(run.evaluations_csv) if int(r["step"]) == step]
        first = {s: 1 + max([int(r["episode"]) for r in done if int(r["seed"]) == s], default=-1)
                 for s in seeds}
        target, extra = run.evaluations_csv, {}
    else:
        log = CsvLog(run.posthoc_evaluations_csv, ["evaluation", "checkpoint", *EVALUATION_COLUMNS])
        first = {s: 0 for s in seeds}
        target, extra = run.posthoc_evaluations_csv, {"evaluation": index,
                                                      "checkpoint": str(ckpt_path)}
    rows = []
    for m, seed in enumerate(seeds):
        for e in range(args.episodes):
            rows.append({**extra, "step": step, "seed": seed, "episode": first[seed] + e,
                         "env_seed": int(rollouts.env_seeds[m, e]),
                         "return": float(rollouts.returns[m, e]),
                         "length": int(rollouts.lengths[m, e]),
                         "normalized_score": None if scores is None else float(scores[m, e])})
    log.write_rows(rows)
    run.update_info(posthoc_evaluations=index + 1)

    shown = scores if scores is not None else rollouts.returns
    what = "normalized score" if scores is not None else "return (no reference scores)"
    print(f"{info.get('algo')} on {info.get('dataset_id')}, checkpoint at step {step}, "
          f"{args.episodes} episode(s) per seed: mean {what}")
    for seed, v, sd in zip(seeds, shown.mean(axis=1), shown.std(axis=1)):
        print(f"  seed {seed}: {v:8.2f}  (std over episodes {sd:.2f})")
    print(f"  all seeds: {float(np.mean(shown)):8.2f}")
    print(f"episodes appended to {target}")
    return 0
