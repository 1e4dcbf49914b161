"""Offline-to-online comparison report: evaluation/reports/finetune.md (+ figure, CSV).

For every dataset and method: an offline run (`offrl.training.loop.train`, the baselines config
with the steps given here), then `offrl.training.finetune.finetune` with the method's
baselines/<algo>/default-finetune.toml (online steps from the command line). Scores per seed
(offline, final, AUC) are aggregated over datasets with the IQM and 95% stratified-bootstrap
intervals (offrl.evaluation.stats), and P(final > offline) per method.

    # the full study, once the offrl MuJoCo datasets exist:
    python scripts/run_finetune_report.py --datasets hopper-medium-v0 walker2d-medium-v0 \
        --seeds 5 --offline-steps 1000000 --online-steps 1000000
    # the tiny smoke scale (what the current report shows):
    python scripts/run_finetune_report.py --tiny

--tiny: InvertedPendulum-v4, 2000 uniform-random steps generated here (scores: 100 × return /
200, episodes capped at 200 steps), 32 × 32 networks, 300 offline updates, 3000 online env steps.
Datasets given by id are read like `offrl train` reads them. Runs go under --out (kept, so a
second call reuses complete runs and finished fine-tunings, and resumes interrupted ones).

Cal-QL's offline phase needs returns-to-go in its batches (`CalQL.offline_sampler`); where the
offline loop cannot give them, Cal-QL is fine-tuned from the CQL run instead and the report
says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METHODS = [("iql", "iql", "IQL (seeded buffer)"), ("cal_ql", "cal_ql", "Cal-QL (mix 0.5)"),
           ("cql", "cql", "CQL (mix 0.5)"), ("td3_bc", "td3_bc", "TD3+BC (seeded buffer)")]


def tiny_dataset():
    from offrl.data.generate import rollout_uniform_random

    env = "InvertedPendulum-v4"
    data = rollout_uniform_random(env, transitions=2000, seed=0, max_episode_steps=200,
                                  progress=False)
    data.metadata.update(dataset_id="inverted-pendulum-random-2k", env_id=env,
                         sha256=None, ref_min_score=0.0, ref_max_score=200.0,
                         max_episode_steps=200)
    return data


def offline_run(algo, data, out: Path, seeds, steps, tiny, log, hidden=None):
    from offrl.algos import get_algorithm
    from offrl.training.config import default_config_path, load_config
    from offrl.training.loop import train

    cls = get_algorithm(algo)
    run_dir = out / algo / data.metadata["dataset_id"]
    info = run_dir / "run.json"
    if info.is_file() and json.loads(info.read_text()).get("status") == "complete":
        return run_dir
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    dims = [32, 32] if tiny else hidden
    algo_over = {f: list(dims) for f in fields if f.endswith("hidden_dims")} if dims else {}
    if tiny and "cql_n_actions" in fields:
        algo_over["cql_n_actions"] = 4
    training = dict(steps=steps, seeds=list(seeds), tensorboard=False)
    if tiny:
        training.update(batch_size=64, eval_every=steps, eval_episodes=5, log_every=100,
                        checkpoint_every=steps)
    else:  # only the end of the offline phase is scored here
        training.update(eval_every=steps, checkpoint_every=steps)
    source = default_config_path(algo, data.metadata["dataset_id"])
    config = load_config(algo, cls.config_class, source, training_overrides=training,
                         algo_overrides=algo_over)
    t = time.time()
    train(cls, data, config, run_dir=run_dir, progress=False, print_fn=lambda *_: None)
    log(f"  offline {algo}: {time.time() - t:.0f} s")
    return run_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="*", default=[], help="dataset ids (offrl datasets list)")
    p.add_argument("--tiny", action="store_true", help="the InvertedPendulum smoke scale")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--offline-steps", type=int, default=None)
    p.add_argument("--online-steps", type=int, default=None)
    p.add_argument("--methods", nargs="*", default=[m[0] for m in METHODS])
    p.add_argument("--out", default=str(REPO / "runs" / "finetune-report"))
    p.add_argument("--report", default=str(REPO / "evaluation" / "reports" / "finetune.md"))
    p.add_argument("--reps", type=int, default=20_000, help="bootstrap resamples")
    p.add_argument("--hidden", type=int, nargs="+", default=None,
                   help="hidden sizes of every network (default: the baselines' configs)")
    p.add_argument("--online-evals", type=int, default=None,
                   help="evaluations during the online phase (default: the finetune configs)")
    args = p.parse_args(argv)
    if not args.tiny and not args.datasets:
        p.error("give --datasets ID ... or --tiny")
    offline_steps = args.offline_steps or (300 if args.tiny else 1_000_000)
    online_steps = args.online_steps or (3000 if args.tiny else 1_000_000)
    seeds = list(range(args.seeds))
    out = Path(args.out)
    log = lambda s: print(s, flush=True)  # noqa: E731

    from offrl.algos import get_algorithm
    from offrl.errors import UserError
    from offrl.evaluation import stats
    from offrl.training.finetune import finetune, read_finetune_file

    if args.tiny:
        datasets = [tiny_dataset()]
    else:
        from offrl.cli.train import _load_dataset

        datasets = [_load_dataset(d, progress=True) for d in args.datasets]

    results: dict[str, dict[str, dict]] = {}  # method -> dataset -> summary
    notes: list[str] = []
    timings: dict[str, float] = {}
    for data in datasets:
        did = data.metadata["dataset_id"]
        log(f"{did}")
        for method in args.methods:
            algo = method
            try:
                run = offline_run(algo, data, out, seeds, offline_steps, args.tiny, log, args.hidden)
            except UserError as exc:
                if algo != "cal_ql" or "return-to-go" not in str(exc):
                    raise
                run = offline_run("cql", data, out, seeds, offline_steps, args.tiny, log, args.hidden)
                notes.append(f"{did}: Cal-QL's offline phase ran as CQL (the offline loop does not "
                             "supply returns-to-go yet); the online phase is Cal-QL.")
            cls = get_algorithm(algo)
            algo_values, fc = read_finetune_file(REPO / "baselines" / algo / "default-finetune.toml",
                                                 cls.config_class)
            fc = dataclasses.replace(fc, online_steps=online_steps,
                                     eval_every=(max(1, online_steps // 6) if args.tiny else
                                                 max(1, online_steps // args.online_evals)
                                                 if args.online_evals else fc.eval_every),
                                     eval_episodes=5 if args.tiny else fc.eval_episodes,
                                     log_every=500 if args.tiny else fc.log_every,
                                     checkpoint_every=online_steps if args.tiny else fc.checkpoint_every)
            t = time.time()
            res = finetune(run, data, fc, algo=algo, algo_overrides=algo_values or None,
                           tag=f"report-{algo}", progress=False, print_fn=lambda *_: None)
            timings[f"{did}/{algo}"] = time.time() - t
            m = res.summary["mean_over_seeds"]
            log(f"  {algo}: offline {m['offline_score']:.1f} -> final {m['final_score']:.1f}, "
                f"auc {m['auc']:.1f} [{timings[f'{did}/{algo}']:.0f} s]")
            results.setdefault(algo, {})[did] = res.summary

    # ---- aggregate: (runs, tasks) arrays per method, metric
    names = {m[0]: m[2] for m in METHODS}
    dids = [d.metadata["dataset_id"] for d in datasets]

    def matrix(algo, key):
        return np.array([[results[algo][d]["seeds"][str(s)][key] for d in dids] for s in seeds])

    agg = {}
    for key in ("offline_score", "final_score", "auc"):
        scores = {a: matrix(a, key) for a in results}
        agg[key] = stats.aggregate_intervals(scores, metrics=("IQM",), reps=args.reps)
    gain = {a: stats.probability_of_improvement(matrix(a, "final_score"), matrix(a, "offline_score"))
            for a in results}

    lines = ["# Offline-to-online fine-tuning", ""]
    scale = ("**Scale: tiny smoke test** — InvertedPendulum-v4, 2000 uniform-random steps made by "
             f"the script, 32×32 networks, {offline_steps} offline updates, {online_steps} online env "
             f"steps per seed, {len(seeds)} seeds, 5 evaluation episodes. These numbers check the "
             "pipeline; they say nothing about the methods on MuJoCo locomotion."
             if args.tiny else
             f"**Scale:** {', '.join(dids)}; {offline_steps} offline updates, {online_steps} online "
             f"env steps per seed, {len(seeds)} seeds"
             + (f", {'×'.join(map(str, args.hidden))} networks (reduced from CORL's to fit 2 CPU "
                "cores)" if args.hidden else "") + ".")
    lines += [scale, "",
              "Produced by `python scripts/run_finetune_report.py "
              + (" ".join(sys.argv[1:]) if argv is None else " ".join(argv)) + "`.", "",
              "Methods: each method's `baselines/<algo>/default-finetune.toml` (IQL: the IQL paper's "
              "fine-tuning, replay buffer seeded with the offline data, actor lr schedule restarted; "
              "Cal-QL: calibrated CQL, half offline and half online batches; CQL and TD3+BC: plain "
              "continuation). UTD 1. Scores are D4RL-style normalised scores (IQM over seeds × "
              "datasets, 95% stratified-bootstrap intervals). AUC is the mean normalised score over "
              "the online phase (area under the evaluation curve / online steps). P(final > "
              "offline) is the probability that a seed's final score beats a seed's offline score.",
              ""]
    for n in notes:
        lines += [f"- Note: {n}"]
    if notes:
        lines.append("")
    header = ["method", "offline IQM", "final IQM", "AUC IQM", "P(final > offline)",
              "online env steps / seed"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for a in results:
        def iv(key):
            x = agg[key][a]["IQM"]
            return f"{x.point:.1f} [{x.low:.1f}, {x.high:.1f}]"
        lines.append(f"| {names.get(a, a)} | {iv('offline_score')} | {iv('final_score')} | "
                     f"{iv('auc')} | {gain[a]:.2f} | {online_steps} |")
    lines += ["", "Per dataset, mean over seeds (offline → final, AUC):", ""]
    for d in dids:
        for a in results:
            m = results[a][d]["mean_over_seeds"]
            lines.append(f"- {d}, {names.get(a, a)}: {m['offline_score']:.1f} → "
                         f"{m['final_score']:.1f}, AUC {m['auc']:.1f}")
    lines += ["", "Evaluation curves (mean normalised score over seeds, by online env step):", ""]
    for d in dids:
        for a in results:
            curves = [results[a][d]["seeds"][str(s)]["curve"] for s in seeds]
            steps = sorted(curves[0], key=int)
            lines.append(f"- {d}, {names.get(a, a)}: " + ", ".join(
                f"{k}: {np.mean([c[k] for c in curves]):.1f}" for k in steps))
    figure = _figure(results, dids, seeds, names, Path(args.report).parent)
    if figure:
        lines += ["", f"![curves]({figure.name})"]
    lines += ["", "Wall-clock per fine-tuning (2-core CPU machine, 1 torch thread): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), ""]
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))
    (report.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    log(f"wrote {report}")
    return 0


def _figure(results, dids, seeds, names, folder: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(dids), figsize=(5 * len(dids), 3.5), squeeze=False)
    for ax, d in zip(axes[0], dids):
        for a in results:
            curves = [results[a][d]["seeds"][str(s)]["curve"] for s in seeds]
            steps = sorted(curves[0], key=int)
            y = np.array([[c[k] for k in steps] for c in curves])
            x = np.array([int(k) for k in steps])
            ax.plot(x, y.mean(0), label=names.get(a, a))
            ax.fill_between(x, y.min(0), y.max(0), alpha=0.15)
        ax.set_title(d)
        ax.set_xlabel("online env steps")
        ax.set_ylabel("normalised score")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = folder / "finetune-curves.png"
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
