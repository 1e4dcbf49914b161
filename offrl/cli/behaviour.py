"""`offrl behaviour train|status`: train the SAC behaviour policies of the offrl datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from offrl.errors import UserError

EXAMPLES = """\
examples:
  offrl behaviour train Hopper-v5 --out runs/behaviour/hopper-v5-seed0
      1M env steps of SAC (the SAC paper's settings), a policy snapshot and 10+10 evaluation
      episodes every 10k steps, a checkpoint every 25k; run the same command again to resume
  offrl behaviour train Hopper-v5 --out DIR --stop-after 200000
      stop cleanly (with a checkpoint) at 200k steps, e.g. to time-box a session
  offrl behaviour status runs/behaviour/hopper-v5-seed0
      progress and the evaluation curve so far

Training is long on a CPU (about 70 env steps/s with one update each on the 2-core build
machine, 1 thread): run it in the background at low priority, e.g.
  nohup nice -n 15 offrl behaviour train Walker2d-v5 --out runs/behaviour/walker2d-v5-seed0 \\
      --threads 1 > walker.log 2>&1 &
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "behaviour", help="train SAC behaviour policies online (the offrl datasets' policies)",
        description="Train the behaviour policies the offrl MuJoCo datasets are collected with.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="behaviour_command", metavar="COMMAND")

    t = sub.add_parser("train", help="train (or resume) SAC on an env",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("env_id", help="Gymnasium env id, e.g. Hopper-v5")
    t.add_argument("--out", required=True, help="run directory (resumed if it holds a run)")
    t.add_argument("--seed", type=int, action="append", dest="seeds",
                   help="training seed (repeat for several members in one process; default 0)")
    t.add_argument("--steps", type=int, default=1_000_000, help="env steps per seed (default 1M)")
    t.add_argument("--learning-starts", type=int, default=5_000)
    t.add_argument("--eval-every", type=int, default=10_000)
    t.add_argument("--eval-episodes", type=int, default=10)
    t.add_argument("--checkpoint-every", type=int, default=25_000)
    t.add_argument("--stop-after", type=int, default=None,
                   help="stop with a checkpoint after this many env steps (resume later)")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    t.add_argument("--device", default="cpu")
    t.set_defaults(func=_train)

    c = sub.add_parser("select", help="choose the expert and medium snapshots of a run",
                       description="Measure the best snapshots over fresh episodes and write "
                                   "NAME-expert.pt, NAME-medium.pt, NAME-sac.toml, "
                                   "NAME-curve.csv and NAME-selection.json to --out.")
    c.add_argument("run_dir")
    c.add_argument("--name", required=True, help="file prefix, e.g. hopper-v5")
    c.add_argument("--out", default="datasets/policies")
    c.add_argument("--episodes", type=int, default=100)
    c.add_argument("--candidates", type=int, default=3)
    c.set_defaults(func=_select)

    s = sub.add_parser("status", help="progress and evaluation curve of a behaviour run")
    s.add_argument("run_dir")
    s.set_defaults(func=_status)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _train(args: argparse.Namespace) -> int:
    import torch

    from offrl.training.behaviour import BehaviourConfig, train_behaviour

    torch.set_num_threads(max(1, args.threads))
    try:
        config = BehaviourConfig(env_id=args.env_id, steps=args.steps,
                                 learning_starts=args.learning_starts, eval_every=args.eval_every,
                                 eval_episodes=args.eval_episodes,
                                 checkpoint_every=args.checkpoint_every)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    command = {"argv": ["offrl", "behaviour", "train", args.env_id, "--out", args.out,
                        *sum((["--seed", str(s)] for s in (args.seeds or [0])), []),
                        "--steps", str(args.steps), "--learning-starts", str(args.learning_starts),
                        "--eval-every", str(args.eval_every), "--eval-episodes",
                        str(args.eval_episodes), "--checkpoint-every", str(args.checkpoint_every),
                        "--threads", str(args.threads)]}
    run = train_behaviour(args.out, config, seeds=args.seeds or [0], device=args.device,
                          command=command, stop_after=args.stop_after)
    print(f"run directory: {run}")
    return 0


def _select(args: argparse.Namespace) -> int:
    import torch

    from offrl.training.behaviour import select_policies

    torch.set_num_threads(1)
    record = select_policies(args.run_dir, args.out, args.name, episodes=args.episodes,
                             candidates=args.candidates)
    for kind in ("expert", "medium"):
        r = record[kind]
        print(f"{kind}: step {r['step']}, return {r['mean']:.1f} ± {r['std']:.1f} "
              f"({r['episodes']} episodes)")
    print(f"random: {record['random']['mean']:.1f}; files in {args.out}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from offrl.training.behaviour import evaluation_curve

    run = Path(args.run_dir)
    info_file = run / "run.json"
    if not info_file.is_file():
        raise UserError(f"{run} is not a behaviour run directory (no run.json)")
    info = json.loads(info_file.read_text())
    print(f"{run}: {info['env_id']} seeds {info['seeds']}, status {info['status']}")
    for mode in ("stochastic", "deterministic"):
        for seed, curve in evaluation_curve(run, mode).items():
            if not curve:
                continue
            steps = sorted(curve)
            best = max(steps, key=lambda t: curve[t])
            print(f"  seed {seed} {mode}: latest step {steps[-1]} return {curve[steps[-1]]:.1f}; "
                  f"best {curve[best]:.1f} at step {best}")
    return 0
