"""Dataset generation speed: behaviour-policy rollouts against the raw env step rate.

For each env, in this process on one thread:
  raw     a plain loop stepping one env with uniform-random actions (no policy, no recording):
          the physics ceiling
  policy  `offrl.data.generate.rollout_policy` with a 2×256 tanh-Gaussian policy (a SAC actor;
          the shipped policy when datasets/policies/<env>-v5-expert.pt exists, else a freshly
          initialised one), 16 envs, stochastic actions, recording everything a dataset holds
The target (issue 4): policy rollouts within 2× of the raw rate, i.e. ratio raw/policy <= 2.

    .venv/bin/python benchmarks/bench_generate.py                   # 100k steps per env
    .venv/bin/python benchmarks/bench_generate.py --steps 1000000   # a full 1M dataset per env
    .venv/bin/python benchmarks/bench_generate.py --envs Hopper-v5 --steps 20000

Results go to benchmarks/results/generate.json (with the load average, since the build
machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "generate.json"


def raw_rate(env_id: str, steps: int) -> float:
    import numpy as np

    from offrl.evaluation.rollout import make_env

    env = make_env(env_id, 1000)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps,) + env.action_space.shape).astype(np.float32)
    env.reset(seed=0)
    t = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - t)


def policy_for(env_id: str):
    from offrl.algos.sac import SAC, SACConfig
    from offrl.data.policies import TanhGaussianPolicy, load_policy
    from offrl.evaluation.rollout import make_env

    shipped = ROOT / "datasets" / "policies" / f"{env_id.lower()}-expert.pt"
    if shipped.is_file():
        return load_policy(shipped), shipped.name
    env = make_env(env_id, 1000)
    obs, act = env.observation_space.shape[0], env.action_space.shape[0]
    agent = SAC(SACConfig(), obs, act, [0])
    return TanhGaussianPolicy.from_weights(agent.policy_weights(0), env_id), "fresh SAC actor (2x256)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="*", default=["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--vector", type=int, default=16, help="envs side by side in rollout_policy")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from offrl.data.generate import platform_tag, rollout_policy

    rows = []
    print(f"{'env':16} {'raw steps/s':>12} {'policy steps/s':>15} {'raw/policy':>11}  policy")
    for env_id in args.envs:
        raw = raw_rate(env_id, min(args.steps, 50_000))
        policy, name = policy_for(env_id)
        t = time.perf_counter()
        data = rollout_policy(env_id, policy, transitions=args.steps, seed=0, envs=args.vector,
                              progress=False)
        elapsed = time.perf_counter() - t
        rate = len(data) / elapsed
        rows.append({"env_id": env_id, "raw_steps_per_s": raw, "policy_steps_per_s": rate,
                     "ratio": raw / rate, "steps": args.steps, "seconds": elapsed,
                     "episodes": int(data.num_episodes), "policy": name, "vector_envs": args.vector})
        print(f"{env_id:16} {raw:12.0f} {rate:15.0f} {raw / rate:11.2f}  {name}, "
              f"{data.num_episodes} episodes, {elapsed:.1f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"platform": platform_tag(), "load_average": os.getloadavg(),
                                   "command": " ".join([Path(sys.executable).name, *sys.argv]),
                                   "results": rows}, indent=2) + "\n")
    print(f"-> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
