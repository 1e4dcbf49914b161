"""CQL updates per second at Hopper shapes (obs 11, act 3, batch 256, 10 sampled actions).

For every (threads, seeds, critic depth, variant) a fresh subprocess builds `CQL` with CORL's
defaults (critic_hidden_dims = depth × 256) and times `update` on random batches already on
the device: best and median of --repeats blocks of --updates updates, after two warm-up
updates. Rates are per seed (a 5-seed agent doing 2 updates/s counts 10). Wall and CPU time are
both reported: on the shared 2-core build machine wall time inflates with other jobs, CPU time
(process time / threads used) much less; with 2 threads only wall time shows the parallel gain.

Variants: fused (default: the critics' loss and gradients by hand, a chunk of states at a
time), autograd (the same math through autograd), compile (autograd + torch.compile).

    .venv/bin/python benchmarks/bench_cql.py                      # 1 and 2 threads, 1 and 5 seeds, 3×256 and 2×256
    .venv/bin/python benchmarks/bench_cql.py --threads 1 --seeds 1 --depth 3 --variants fused,autograd

Peers measured on this machine are not run here (neither CORL nor JAX-CORL is installable as a
package); REFERENCE.md has their numbers. Writes benchmarks/results/bench_cql.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_cql.json"
VARIANTS = {"fused": {"critic_backward": "fused"}, "autograd": {"critic_backward": "autograd"},
            "compile": {"critic_backward": "autograd", "compile": True}}

_CHILD = r"""
import json, sys, time
import torch
threads, seeds, depth, variant, updates, repeats, kwargs = json.loads(sys.argv[1])
torch.set_num_threads(threads)
from offrl.algos.base import Batch
from offrl.algos.cql import CQL, CQLConfig
S, B, O, A = seeds, 256, 11, 3
g = torch.Generator().manual_seed(0)
def batch():
    return Batch(torch.randn(S, B, O, generator=g), torch.rand(S, B, A, generator=g) * 2 - 1,
                 torch.randn(S, B, generator=g), torch.randn(S, B, O, generator=g),
                 (torch.rand(S, B, generator=g) < 0.01).float())
batches = [batch() for _ in range(4)]
agent = CQL(CQLConfig(critic_hidden_dims=(256,) * depth), O, A, list(range(S)), **kwargs)
for i in range(2):
    agent.update(batches[i])
wall, cpu = [], []
for r in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    for i in range(updates):
        metrics = agent.update(batches[i % 4])
    float(metrics["critic_loss"].sum())  # one host sync per block
    wall.append((time.perf_counter() - t) / updates)
    cpu.append((time.process_time() - c) / updates / threads)
print(json.dumps({"wall": wall, "cpu": cpu}))
"""


def run_one(threads: int, seeds: int, depth: int, variant: str, updates: int, repeats: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    args = json.dumps([threads, seeds, depth, variant, updates, repeats, VARIANTS[variant]])
    out = subprocess.run([sys.executable, "-c", _CHILD, args], env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({variant}, {threads} threads):\n{out.stderr}")
    times = json.loads(out.stdout.strip().splitlines()[-1])
    wall, cpu = sorted(times["wall"]), sorted(times["cpu"])
    return {"threads": threads, "seeds": seeds, "critic": f"{depth}x256", "variant": variant,
            "updates_per_s_best": seeds / wall[0], "updates_per_s_median": seeds / wall[len(wall) // 2],
            "updates_per_cpu_s_best": seeds / cpu[0], "updates_per_cpu_s_median": seeds / cpu[len(cpu) // 2],
            "raw_wall_s": times["wall"], "raw_cpu_s": times["cpu"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seeds", default="1,5")
    parser.add_argument("--depth", default="3,2", help="critic hidden layers of 256")
    parser.add_argument("--variants", default="fused")
    parser.add_argument("--updates", type=int, default=5, help="updates per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks (best and median)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    rows = []
    print("| variant | threads | seeds | critic | updates/s per seed (wall, best / median) "
          "| per CPU-second (best / median) |")
    print("|---|---|---|---|---|---|")
    for depth in ints(args.depth):
        for seeds in ints(args.seeds):
            for threads in ints(args.threads):
                for variant in args.variants.split(","):
                    if variant not in VARIANTS:
                        parser.error(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
                    # a 5-seed update takes about 5x longer: fewer updates per block
                    updates = max(1, args.updates // seeds) if seeds > 1 else args.updates
                    r = run_one(threads, seeds, depth, variant, updates, args.repeats)
                    rows.append(r)
                    print(f"| {variant} | {threads} | {seeds} | {r['critic']} "
                          f"| {r['updates_per_s_best']:.2f} / {r['updates_per_s_median']:.2f} "
                          f"| {r['updates_per_cpu_s_best']:.2f} / {r['updates_per_cpu_s_median']:.2f} |",
                          flush=True)
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                    "cpus": os.cpu_count(), "load_average_at_end": load,
                                    "python": platform.python_version(), "results": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
