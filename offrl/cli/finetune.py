"""`offrl finetune RUN_DIR --online-steps N`: continue a complete offline run online."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from offrl.errors import UserError

EXAMPLES = """examples:
  offrl finetune runs/iql/hopper-medium-v2/20261122-100000-abc123 --online-steps 100000
  offrl finetune RUN --online-steps 250000 --utd 1 --mixing-ratio 0.5 --tag mix50
  offrl finetune RUN_OF_CQL --algo cal_ql --online-steps 100000   (Cal-QL online from CQL)
  offrl finetune RUN --online-steps 100000 --stop-after 20000      (the same command resumes)

The config is --config FILE, else baselines/<algo>/<dataset>-finetune.toml, else
baselines/<algo>/default-finetune.toml: tables [algo] (changes for the online phase) and
[finetune] (online_steps, utd, mixing_ratio, ...). Flags override it. Results go to
RUN/finetune-<tag>/ (summary.json: offline score, final score, AUC, regret).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a complete offline run online (offline-to-online)",
        description="Restore RUN_DIR's agent and continue training it with online data from "
                    "its env, mixed with the run's offline data, writing RUN_DIR/finetune-<tag>/.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a complete run directory of `offrl train`")
    p.add_argument("--online-steps", type=int, metavar="N", help="env steps per seed")
    p.add_argument("--utd", type=int, metavar="K", help="gradient updates per env step")
    p.add_argument("--mixing-ratio", metavar="R",
                   help="fraction of each batch from the offline data (e.g. 0.5), or 'uniform' "
                        "(one buffer seeded with the offline data)")
    p.add_argument("--algo", help="continue as this algorithm (default: the run's; a CQL run "
                                  "may be continued as cal_ql)")
    p.add_argument("--config", metavar="FILE", help="fine-tuning config ([algo], [finetune])")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override one value, TABLE algo or finetune, e.g. finetune.utd=2")
    p.add_argument("--tag", help="results go to RUN_DIR/finetune-<tag> (default: the algo)")
    p.add_argument("--dataset", metavar="ID_OR_PATH",
                   help="where to read the run's dataset (default: its dataset_id)")
    p.add_argument("--eval-every", type=int, metavar="N", help="env steps between evaluations")
    p.add_argument("--eval-episodes", type=int, metavar="N", help="episodes per seed per evaluation")
    p.add_argument("--sparse-reward", action="store_true",
                   help="goal-reaching task: report cumulative regret")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop with a checkpoint after N env steps (the same command resumes)")
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: the run's device if "
                                                  "available, else cpu)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)


def default_finetune_config(algo: str, dataset_id: str) -> Path | None:
    """baselines/<algo>/<dataset>-finetune.toml, else baselines/<algo>/default-finetune.toml."""
    from offrl.training.config import baselines_dirs

    for d in baselines_dirs():
        for name in (f"{dataset_id.replace('/', '--')}-finetune.toml", "default-finetune.toml"):
            if (d / algo / name).is_file():
                return d / algo / name
    return None


def _parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    import tomllib

    out: dict[str, dict[str, Any]] = {"algo": {}, "finetune": {}}
    for item in items:
        name, eq, text = item.partition("=")
        table, dot, key = name.strip().partition(".")
        if not eq or not dot or table not in out or not key:
            raise UserError(f"--set {item!r}: expected TABLE.KEY=VALUE with TABLE algo or "
                            "finetune, e.g. --set finetune.utd=2")
        try:
            out[table][key] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[table][key] = text.strip()
    return out


def cmd_finetune(args: argparse.Namespace) -> int:
    from offrl.algos import get_algorithm
    from offrl.cli.train import _load_dataset, resolve_device, set_threads
    from offrl.training.config import dataclass_from_dict
    from offrl.training.finetune import FinetuneConfig, finetune, read_finetune_file
    from offrl.training.run_dir import RunDirectory

    run = RunDirectory(args.run_dir).require()
    info = run.read_info()
    algo = args.algo or info["algo"]
    agent_cls = get_algorithm(algo)
    dataset_id = info.get("dataset_id") or ""
    source = Path(args.config) if args.config else default_finetune_config(algo, dataset_id)
    if source is not None:
        algo_values, config = read_finetune_file(source, agent_cls.config_class)
    else:
        print(f"note: no baselines/{algo}/*-finetune.toml found; using the built-in defaults",
              file=sys.stderr)
        algo_values, config = {}, FinetuneConfig()
    sets = _parse_sets(args.set)
    algo_values.update(sets["algo"])
    changes = dict(sets["finetune"])
    for flag, key in (("online_steps", "online_steps"), ("utd", "utd"),
                      ("eval_every", "eval_every"), ("eval_episodes", "eval_episodes")):
        if getattr(args, flag) is not None:
            changes[key] = getattr(args, flag)
    if args.sparse_reward:
        changes["sparse_reward"] = True
    if args.mixing_ratio is not None:
        if args.mixing_ratio.strip().lower() == "uniform":
            changes["mixing_ratio"] = None
        else:
            try:
                changes["mixing_ratio"] = float(args.mixing_ratio)
            except ValueError:
                raise UserError(f"--mixing-ratio must be a number in [0, 1] or 'uniform'; got "
                                f"{args.mixing_ratio!r}") from None
    if changes:
        config = dataclass_from_dict(FinetuneConfig, changes, source="command line",
                                     table="finetune", base=config)
    set_threads(args.threads)
    device = resolve_device(args.device, info.get("device"))
    progress = None if not args.no_progress else False
    if source is not None:
        print(f"fine-tuning config: {source}")
    dataset = _load_dataset(args.dataset or dataset_id, progress=progress is not False)
    cli_args = {k: v for k, v in vars(args).items() if k != "func"}
    result = finetune(run.path, dataset, config, algo=algo, algo_overrides=algo_values or None,
                      tag=args.tag, device=device, progress=progress, stop_after=args.stop_after,
                      command=cli_args)
    return 0 if result.status == "complete" else 1
