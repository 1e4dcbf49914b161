"""Gradient updates per second of the offrl agents at Hopper shapes.

Hopper shapes: observation 11, action 3, batch 256, CORL's network sizes, a 1M-row dataset on
the CPU. For every (algorithm, seeds per process, threads, compile, precision) it starts a fresh Python
process (so the thread count, compilation and peak memory belong to that configuration alone),
warms up, then times several blocks of updates including sampling and reports the best block.

    .venv/bin/python benchmarks/bench_updates.py                       # td3_bc, iql; 1 and 5 seeds; 1 and 2 threads
    .venv/bin/python benchmarks/bench_updates.py --algos iql --seeds 5 --threads 2 --compile both
    .venv/bin/python benchmarks/bench_updates.py --quick               # fewer, shorter blocks
    .venv/bin/python benchmarks/bench_updates.py --threads 1 --procs 2   # 2 processes x 1 thread side by side

Per-seed updates/s = process updates/s x seeds: one process training 5 seeds at 60 updates/s
advances each seed 60 steps per second, 300 seed-steps per second in all. With --procs N, N
identical processes run at the same time (how a sweep fills the cores: one 1-thread process per
core) and the table shows their summed rates. `matmul GF/s` is
what a 256x256 @ 256x256 fp32 matmul reaches in the same process at the same moment, and
`% peak` compares the agent's useful matmul FLOPs to it, so numbers from a busy machine can
be read against each other. Results go to benchmarks/results/updates.json.

New algorithms (e.g. CQL) are benchmarked as soon as `offrl.algos.ALGORITHMS` knows them;
give their FLOPs per 1-seed update in FLOPS_PER_UPDATE for the `% peak` column.
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
RESULTS = HERE / "results" / "updates.json"

# Matmul FLOPs of one update of one seed at batch 256 with CORL's sizes (multiply-adds x 2).
FLOPS_PER_UPDATE = {"td3_bc": 0.40e9, "iql": 0.52e9, "cql": 14.8e9}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------- one configuration
def run_one(algo: str, seeds: int, threads: int, compile_: bool, blocks: int, block_steps: int,
            warmup: int, rows: int, precision: str = "fp32") -> dict:
    """Runs in the child process."""
    import resource

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from offrl.algos import TransitionSampler, get_algorithm
    from offrl.data.dataset import Transitions

    rng = np.random.default_rng(0)
    obs_dim, act_dim = 11, 3
    tr = Transitions(
        observations=rng.standard_normal((rows, obs_dim), dtype=np.float32),
        actions=rng.uniform(-1, 1, (rows, act_dim)).astype(np.float32),
        rewards=rng.standard_normal(rows, dtype=np.float32),
        next_observations=rng.standard_normal((rows, obs_dim), dtype=np.float32),
        dones=rng.random(rows) < 0.001, labelled=np.ones(rows, dtype=bool))
    seed_list = list(range(seeds))
    sampler = TransitionSampler(tr, seed_list, 256)
    del tr
    cls = get_algorithm(algo)
    config = cls.adapt_config(cls.config_class(), total_steps=1_000_000)
    kwargs = {"compile": True} if compile_ else {}
    agent = cls(config, obs_dim, act_dim, seed_list, **kwargs)
    agent.set_precision(precision)

    t0 = time.perf_counter()
    for _ in range(warmup):
        metrics = agent.update(sampler.sample())
    first = next(iter(metrics.values()))
    float(first[0])
    warmup_s = time.perf_counter() - t0

    rates, cpu_rates = [], []
    for _ in range(blocks):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(block_steps):
            metrics = agent.update(sampler.sample())
        float(next(iter(metrics.values()))[0])  # one sync per block
        rates.append(block_steps / (time.perf_counter() - t))
        cpu_rates.append(block_steps / (time.process_time() - c))

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
    flops = FLOPS_PER_UPDATE.get(algo)
    return {
        "algo": algo, "seeds": seeds, "threads": threads, "compile": compile_,
        "precision": precision,
        "updates_per_s": rate, "updates_per_s_median": float(np.median(rates)),
        "per_seed_updates_per_s": rate * seeds,
        "updates_per_cpu_s": max(cpu_rates),
        "warmup_s": warmup_s, "peak_rss_mb": peak_rss_mb, "matmul_gflops": gflops,
        "pct_of_matmul_peak": (100 * rate * seeds * flops / (gflops * 1e9)) if flops else None,
        "blocks": blocks, "block_steps": block_steps,
    }


# ---------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algos", default="td3_bc,iql", help="comma-separated names (default td3_bc,iql)")
    p.add_argument("--seeds", default="1,5", help="seeds per process, comma-separated")
    p.add_argument("--threads", default="1,2", help="torch threads, comma-separated")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off",
                   help="torch.compile the agents' loss functions")
    p.add_argument("--precision", choices=["fp32", "bf16", "both"], default="fp32",
                   help="the agents' compute precision ([training] precision)")
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--block-steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--rows", type=int, default=1_000_000, help="dataset rows")
    p.add_argument("--procs", default="1", help="processes run side by side, comma-separated")
    p.add_argument("--quick", action="store_true", help="3 blocks of 30 steps")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_one(**spec)))
        return 0

    if args.quick:
        args.blocks, args.block_steps, args.warmup = 3, 30, 20
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    precisions = {"fp32": ["fp32"], "bf16": ["bf16"], "both": ["fp32", "bf16"]}[args.precision]
    configs = [(a, int(s), int(t), c, int(n), prec) for a in algos for s in args.seeds.split(",")
               for t in args.threads.split(",") for c in compiles for n in args.procs.split(",")
               for prec in precisions]
    load_before = os.getloadavg()
    results = []
    header = (f"{'algorithm':<9} {'seeds':>5} {'thr':>3} {'procs':>5} {'compile':>7} {'prec':>4} "
              f"{'upd/s':>8} "
              f"{'per seed':>9} {'upd/cpu-s':>9} {'matmul GF/s':>11} {'% peak':>6} {'RSS MB':>7}")
    print(header)
    print("-" * len(header))
    for algo, seeds, threads, comp, procs, prec in configs:
        spec = {"algo": algo, "seeds": seeds, "threads": threads, "compile_": comp, "precision": prec,
                "blocks": args.blocks, "block_steps": args.block_steps,
                "warmup": args.warmup if not comp else max(args.warmup, 30), "rows": args.rows}
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        children = [subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env) for _ in range(procs)]
        outs = [(c, *c.communicate()) for c in children]
        failed = [(c, err) for c, _, err in outs if c.returncode != 0]
        if failed:
            c, err = failed[0]
            print(f"{algo:<9} {seeds:>5} {threads:>3} {procs:>5} {str(comp):>7} {prec:>4}  FAILED: "
                  f"{err.strip().splitlines()[-1] if err.strip() else c.returncode}")
            continue
        each = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in outs]
        r = dict(each[0])
        r["procs"] = procs
        if procs > 1:  # rates add up across processes; memory is per process
            for key in ("updates_per_s", "updates_per_s_median", "per_seed_updates_per_s",
                        "updates_per_cpu_s"):
                r[key] = sum(e[key] for e in each)
            r["matmul_gflops"] = sum(e["matmul_gflops"] for e in each)
            flops = FLOPS_PER_UPDATE.get(algo)
            r["pct_of_matmul_peak"] = (100 * r["per_seed_updates_per_s"] * flops
                                       / (r["matmul_gflops"] * 1e9)) if flops else None
            r["per_process"] = each
        results.append(r)
        pct = f"{r['pct_of_matmul_peak']:.0f}" if r["pct_of_matmul_peak"] is not None else "-"
        print(f"{algo:<9} {seeds:>5} {threads:>3} {procs:>5} {str(comp):>7} {prec:>4} "
              f"{r['updates_per_s']:>8.1f} "
              f"{r['per_seed_updates_per_s']:>9.1f} {r['updates_per_cpu_s']:>9.1f} "
              f"{r['matmul_gflops']:>11.0f} {pct:>6} {r['peak_rss_mb']:>7.0f}", flush=True)

    import torch

    out = {
        "benchmark": "updates",
        "shapes": {"observation_dim": 11, "action_dim": 3, "batch_size": 256, "rows": args.rows},
        "machine": {"cpu": _cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"\nload average before/after: {load_before[0]:.2f} / {out['machine']['loadavg_after'][0]:.2f}"
          f"  ->  {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
