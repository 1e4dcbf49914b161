"""Gradient updates per second of a peer library, d3rlpy 2.8.1, at Hopper shapes.

The peer's side of benchmarks/bench_updates.py and bench_cql.py: observation 11, action 3,
batch 256, CORL's network sizes and hyperparameters (TD3+BC and IQL 2x256 nets; CQL with a
3x256 critic, CORL's, and a 2x256 one, 10 sampled actions, actor 3x256 as CORL's and ours),
a 1M-row random dataset on the CPU. What is timed is the body of d3rlpy's own `fit` loop:
`dataset.sample_transition_batch(256)` from an MDPDataset (d3rlpy's ReplayBuffer) followed by
`algo.update(batch)`, which turns the numpy batch into tensors, applies the scalers, updates
and returns the losses as Python floats (so every update syncs, as in `fit`). Not timed:
fit's logger, tqdm bar and per-epoch bookkeeping.

For every (algorithm, threads) a fresh process of d3rlpy's own venv (so the thread count and
peak memory belong to that configuration alone) builds the dataset and the algorithm, warms
up, then times several blocks of about --block-seconds each and reports the best and the
median block. `sample ms` is d3rlpy's sampler alone (ms per batch of 256, timed apart);
`matmul GF/s` is what a 256x256 @ 256x256 fp32 matmul reaches in the same process at the same
moment, and `% peak` compares the useful matmul FLOPs to it, exactly as bench_updates.py does,
so numbers from a busy machine can be read against each other. Results go to
benchmarks/results/peers.json.

d3rlpy runs in its own venv, .venv-peers, so that it cannot disturb ours:

    python3 -m venv .venv-peers
    .venv-peers/bin/pip install torch==2.13.0      # first: the CPU build from the local wheels
    .venv-peers/bin/pip install d3rlpy==2.8.1

    python3 benchmarks/bench_peers.py              # td3_bc, iql, cql 3x256 and 2x256; 1, 2 threads
    python3 benchmarks/bench_peers.py --algos cql --cql-critic 3 --threads 1
    python3 benchmarks/bench_peers.py --quick      # 3 blocks of 1 s, 100k rows: a smoke test
    python3 benchmarks/bench_peers.py --python /other/venv/bin/python

The driver needs only the standard library; any python3 can run it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "peers.json"
DEFAULT_PYTHON = REPO / ".venv-peers" / "bin" / "python"
D3RLPY_VERSION = "2.8.1"
OBS, ACT, BATCH = 11, 3, 256

SETUP_HINT = f"""\
d3rlpy runs in its own virtual environment, kept apart from .venv. Create it with:

    cd {REPO}
    python3 -m venv .venv-peers
    .venv-peers/bin/pip install torch==2.13.0    # first, or pip pulls a large CUDA build
    .venv-peers/bin/pip install d3rlpy=={D3RLPY_VERSION}

or point --python at another interpreter that has d3rlpy {D3RLPY_VERSION}."""


def _mlp_macs(inp: int, hidden: int, depth: int, out: int) -> int:
    return inp * hidden + (depth - 1) * hidden * hidden + hidden * out


def flops_per_update(algo: str, critic_depth: int, actor_depth: int) -> float:
    """Matmul FLOPs of one update at batch 256 (multiply-adds x 2; backward = 2 x forward)."""
    if algo == "td3_bc":
        return 0.40e9  # as bench_updates.py
    if algo == "iql":
        return 0.52e9
    # CQL, two critics. Rows through each critic with backward: data actions (256) and the
    # 3 x 10 sampled actions per state (7680) of the conservative term, plus the actor loss's
    # Q(s, pi(s)) (256, backward to the input); forward only: the target (256).
    critic = _mlp_macs(OBS + ACT, 256, critic_depth, 1)
    actor = _mlp_macs(OBS, 256, actor_depth, 2 * ACT)
    critic_rows = 3 * (BATCH + 30 * BATCH) + 3 * BATCH + BATCH
    actor_rows = 20 * BATCH + BATCH + 3 * BATCH  # sampled actions, target action, actor loss
    return 2.0 * (2 * critic_rows * critic + actor_rows * actor)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------- one configuration
def _make_algo(algo: str, critic_depth: int, actor_depth: int, obs_mean, obs_std, ret_range):
    """The d3rlpy algorithm with CORL's hyperparameters (REFERENCE.md, baseline hyperparameters).

    Common: batch 256, gamma 0.99, tau 0.005, 2 critics, states normalised by the dataset's
    mean/std (eps 1e-3; d3rlpy's StandardObservationScaler, applied to every batch inside
    `update`). The scaler statistics are computed with numpy and handed over: fitting them
    through d3rlpy's transition picker walks all 1M rows in Python, setup that is not timed.
    """
    import d3rlpy
    from d3rlpy.models.encoders import VectorEncoderFactory
    from d3rlpy.optimizers import AdamFactory
    from d3rlpy.optimizers.lr_schedulers import CosineAnnealingLRFactory
    from d3rlpy.preprocessing import ReturnBasedRewardScaler, StandardObservationScaler

    def enc(depth: int = 2) -> VectorEncoderFactory:
        return VectorEncoderFactory(hidden_units=[256] * depth)

    scaler = StandardObservationScaler(mean=obs_mean, std=obs_std, eps=1e-3)
    common = dict(batch_size=BATCH, gamma=0.99, tau=0.005, n_critics=2, observation_scaler=scaler)
    if algo == "td3_bc":
        # CORL td3_bc.py: lr 3e-4, alpha 2.5, policy noise 0.2, noise clip 0.5, policy delay 2
        settings = dict(actor_learning_rate=3e-4, critic_learning_rate=3e-4, alpha=2.5,
                        target_smoothing_sigma=0.2, target_smoothing_clip=0.5,
                        update_actor_interval=2)
        config = d3rlpy.algos.TD3PlusBCConfig(actor_encoder_factory=enc(),
                                              critic_encoder_factory=enc(), **common, **settings)
    elif algo == "iql":
        # CORL iql.py (MuJoCo): lr 3e-4, actor lr cosine decay over 1M steps, beta 3,
        # expectile 0.7, exp-advantage clip 100, rewards x 1000 / (max - min episode return)
        settings = dict(actor_learning_rate=3e-4, critic_learning_rate=3e-4, weight_temp=3.0,
                        expectile=0.7, max_weight=100.0, actor_lr_cosine_T_max=1_000_000,
                        reward_scale="1000 / (max - min episode return)")
        config = d3rlpy.algos.IQLConfig(
            actor_encoder_factory=enc(), critic_encoder_factory=enc(), value_encoder_factory=enc(),
            actor_optim_factory=AdamFactory(
                lr_scheduler_factory=CosineAnnealingLRFactory(T_max=1_000_000)),
            reward_scaler=ReturnBasedRewardScaler(return_max=ret_range[1], return_min=ret_range[0],
                                                  multiplier=1000.0),
            actor_learning_rate=3e-4, critic_learning_rate=3e-4, weight_temp=3.0,
            expectile=0.7, max_weight=100.0, **common)
    elif algo == "cql":
        # CORL cql.py (MuJoCo): policy lr 3e-5 (also the entropy temperature's), Q lr 3e-4,
        # cql_alpha 10 without the Lagrangian (d3rlpy: conservative_weight 10, alpha fixed at 1
        # by alpha_learning_rate 0), 10 sampled actions, importance sampling (always on in
        # d3rlpy), automatic entropy tuning from temperature 1, no max-target backup.
        settings = dict(actor_learning_rate=3e-5, critic_learning_rate=3e-4,
                        temp_learning_rate=3e-5, alpha_learning_rate=0.0,
                        initial_temperature=1.0, initial_alpha=1.0,
                        conservative_weight=10.0, n_action_samples=10, soft_q_backup=False,
                        max_q_backup=False)
        config = d3rlpy.algos.CQLConfig(actor_encoder_factory=enc(actor_depth),
                                        critic_encoder_factory=enc(critic_depth),
                                        **common, **settings)
    else:
        raise ValueError(f"unknown algorithm {algo!r}")
    return config.create(device="cpu:0"), settings


def run_one(algo: str, critic_depth: int, actor_depth: int, threads: int, blocks: int,
            block_seconds: float, warmup_seconds: float, rows: int, seed: int) -> dict:
    """Runs in the child process, under d3rlpy's python."""
    import resource

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    import d3rlpy
    from d3rlpy.dataset import MDPDataset

    d3rlpy.seed(seed)
    rng = np.random.default_rng(seed)
    t_setup = time.perf_counter()
    observations = rng.standard_normal((rows, OBS), dtype=np.float32)
    actions = rng.uniform(-1, 1, (rows, ACT)).astype(np.float32)
    rewards = rng.standard_normal((rows, 1), dtype=np.float32)
    terminals = (rng.random(rows) < 0.001).astype(np.float32)
    timeouts = np.zeros(rows, dtype=np.float32)
    timeouts[999::1000] = 1.0  # 1000-step episodes, as Hopper's time limit
    timeouts[terminals == 1.0] = 0.0
    timeouts[-1] = 0.0 if terminals[-1] else 1.0
    # episode returns, for IQL's reward scaler
    ends = np.flatnonzero((terminals + timeouts) > 0)
    returns = np.add.reduceat(rewards[:, 0], np.r_[0, ends[:-1] + 1])
    dataset = MDPDataset(observations, actions, rewards, terminals, timeouts=timeouts,
                         action_space=d3rlpy.ActionSpace.CONTINUOUS, action_size=ACT)
    agent, settings = _make_algo(algo, critic_depth, actor_depth, observations.mean(0),
                                 observations.std(0), (float(returns.min()), float(returns.max())))
    agent.build_with_dataset(dataset)  # what fit does before its loop (scalers are prebuilt)
    setup_s = time.perf_counter() - t_setup

    def step() -> dict:  # the body of d3rlpy's fit loop (QLearningAlgoBase.fitter)
        batch = dataset.sample_transition_batch(agent.config.batch_size)
        return agent.update(batch)

    t0 = time.perf_counter()
    n_warm = 0
    while n_warm < 3 or time.perf_counter() - t0 < warmup_seconds:
        step()
        n_warm += 1
    warmup_s = time.perf_counter() - t0

    rates, cpu_rates, steps = [], [], []
    for _ in range(blocks):
        t, c, n = time.perf_counter(), time.process_time(), 0
        while n < 2 or time.perf_counter() - t < block_seconds:
            metrics = step()  # losses come back as floats: each update already syncs
            n += 1
        rates.append(n / (time.perf_counter() - t))
        cpu_rates.append(n / (time.process_time() - c))
        steps.append(n)

    # d3rlpy's sampler alone: its share of a step
    n_sample = max(10, min(100, int(np.median(rates) * block_seconds / 2)))
    sample_times = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n_sample):
            dataset.sample_transition_batch(BATCH)
        sample_times.append((time.perf_counter() - t) / n_sample)

    # the machine's matmul rate right now, same threads: the yardstick for `% peak`
    a = torch.randn(256, 256)
    b = torch.randn(256, 256)
    for _ in range(20):
        a @ b
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(100):
            a @ b
        best = min(best, (time.perf_counter() - t) / 100)
    gflops = 2 * 256 ** 3 / best / 1e9

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rate = max(rates)
    flops = flops_per_update(algo, critic_depth, actor_depth)
    return {
        "peer": "d3rlpy", "algo": algo, "threads": threads,
        "critic": f"{critic_depth}x256" if algo == "cql" else "2x256",
        "actor": f"{actor_depth}x256" if algo == "cql" else "2x256",
        "updates_per_s": rate, "updates_per_s_median": float(np.median(rates)),
        "updates_per_cpu_s": max(cpu_rates),
        "sample_ms": 1e3 * min(sample_times),
        "sample_share": min(sample_times) * rate,
        "warmup_s": warmup_s, "warmup_updates": n_warm, "setup_s": setup_s,
        "peak_rss_mb": peak_rss_mb, "matmul_gflops": gflops,
        "flops_per_update": flops, "pct_of_matmul_peak": 100 * rate * flops / (gflops * 1e9),
        "blocks": blocks, "block_seconds": block_seconds, "block_updates": steps,
        "last_metrics": {k: float(v) for k, v in metrics.items()},
        "hyperparameters": settings,
        "versions": {"d3rlpy": d3rlpy.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }


# ---------------------------------------------------------------------- driver
_PROBE = ("import json, platform, d3rlpy, torch, numpy; print(json.dumps({"
          "'d3rlpy': d3rlpy.__version__, 'torch': torch.__version__, "
          "'numpy': numpy.__version__, 'python': platform.python_version()}))")


def check_python(python: Path) -> dict | None:
    """Versions in the peer venv, or None after printing how to create it."""
    if not python.exists():
        print(f"bench_peers: no interpreter at {python}.\n\n{SETUP_HINT}", file=sys.stderr)
        return None
    out = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        err = out.stderr.strip()
        last = err.splitlines()[-1] if err else f"exit {out.returncode}"
        print(f"bench_peers: {python} cannot import d3rlpy and torch ({last}).\n\n{SETUP_HINT}",
              file=sys.stderr)
        return None
    versions = json.loads(out.stdout.strip().splitlines()[-1])
    if versions["d3rlpy"] != D3RLPY_VERSION:
        print(f"bench_peers: warning: {python} has d3rlpy {versions['d3rlpy']}, not "
              f"{D3RLPY_VERSION}; the numbers are for that version.", file=sys.stderr)
    return versions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--python", type=Path, default=DEFAULT_PYTHON,
                   help="interpreter with d3rlpy (default .venv-peers/bin/python)")
    p.add_argument("--algos", default="td3_bc,iql,cql", help="comma-separated: td3_bc, iql, cql")
    p.add_argument("--cql-critic", default="3,2",
                   help="CQL critic depths in layers of 256, comma-separated (default 3,2)")
    p.add_argument("--cql-actor", type=int, default=3,
                   help="CQL actor depth in layers of 256 (default 3, CORL's and offrl's)")
    p.add_argument("--threads", default="1,2", help="torch threads, comma-separated")
    p.add_argument("--blocks", type=int, default=7, help="timed blocks (best and median)")
    p.add_argument("--block-seconds", type=float, default=4.0, help="length of one timed block")
    p.add_argument("--warmup-seconds", type=float, default=3.0)
    p.add_argument("--rows", type=int, default=None,
                   help="dataset rows (default 1M; 100k with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="3 blocks of 1 s, 0.5 s warm-up, 100k rows: a smoke test only")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print(json.dumps(run_one(**json.loads(args.child))))
        return 0

    if args.quick:
        args.blocks, args.block_seconds, args.warmup_seconds = 3, 1.0, 0.5
    if args.rows is None:
        args.rows = 100_000 if args.quick else 1_000_000
    python = args.python if args.python.is_absolute() else Path.cwd() / args.python
    versions = check_python(python)
    if versions is None:
        return 2
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    unknown = set(algos) - {"td3_bc", "iql", "cql"}
    if unknown:
        p.error(f"unknown algorithm(s) {', '.join(sorted(unknown))}; known: td3_bc, iql, cql")
    configs = []
    for a in algos:
        depths = [int(d) for d in args.cql_critic.split(",") if d] if a == "cql" else [2]
        configs += [(a, d, int(t)) for d in depths for t in args.threads.split(",") if t]

    load_before = os.getloadavg()
    print(f"d3rlpy {versions['d3rlpy']}, torch {versions['torch']} ({python}); batch {BATCH}, "
          f"obs {OBS}, act {ACT}, {args.rows:,} rows; "
          f"{args.blocks} blocks of {args.block_seconds:g} s")
    header = (f"{'algorithm':<9} {'critic':>6} {'thr':>3} {'upd/s':>8} {'median':>8} "
              f"{'upd/cpu-s':>9} {'sample ms':>9} {'matmul GF/s':>11} {'% peak':>6} {'RSS MB':>7}")
    print(header)
    print("-" * len(header))
    results, failures = [], []
    for algo, depth, threads in configs:
        spec = {"algo": algo, "critic_depth": depth,
                "actor_depth": args.cql_actor if algo == "cql" else 2, "threads": threads,
                "blocks": args.blocks, "block_seconds": args.block_seconds,
                "warmup_seconds": args.warmup_seconds, "rows": args.rows, "seed": args.seed}
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        cmd = [str(python), str(Path(__file__).resolve()), "--child", json.dumps(spec)]
        child = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        critic = f"{depth}x256"
        if child.returncode != 0:
            err = child.stderr.strip()
            print(f"{algo:<9} {critic:>6} {threads:>3}  FAILED: "
                  f"{err.splitlines()[-1] if err else child.returncode}", flush=True)
            failures.append({"config": spec, "stderr": err[-4000:]})
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{algo:<9} {critic:>6} {threads:>3} {r['updates_per_s']:>8.1f} "
              f"{r['updates_per_s_median']:>8.1f} {r['updates_per_cpu_s']:>9.1f} "
              f"{r['sample_ms']:>9.2f} {r['matmul_gflops']:>11.0f} "
              f"{r['pct_of_matmul_peak']:>6.0f} {r['peak_rss_mb']:>7.0f}", flush=True)

    out = {
        "benchmark": "peers",
        "peer": "d3rlpy",
        "timed": "dataset.sample_transition_batch(256) + algo.update(batch), "
                 "the body of d3rlpy's fit loop",
        "shapes": {"observation_dim": OBS, "action_dim": ACT, "batch_size": BATCH,
                   "rows": args.rows},
        "quick": args.quick, "blocks": args.blocks, "block_seconds": args.block_seconds,
        "warmup_seconds": args.warmup_seconds,
        "machine": {"cpu": _cpu_model(), "cpus": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "versions": versions,
        "python": str(python),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
        "failures": failures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"\n`sample ms`: d3rlpy's sampler alone per batch; `% peak`: useful matmul FLOPs / the "
          f"256x256 matmul rate.\nload average before/after: {load_before[0]:.2f} / "
          f"{out['machine']['loadavg_after'][0]:.2f}  ->  {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
