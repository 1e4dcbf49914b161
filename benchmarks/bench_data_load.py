"""Dataset load times: D4RL-layout HDF5 and Minari, against D4RL's loop and Minari's reader.

Writes a 1M-transition Hopper-shaped dataset (obs 11, act 3, 1000-step episodes with timeouts,
infos/qpos and infos/qvel) to a temporary folder, then times (best of --repeats):

  read_hdf5              gzip file -> validated Dataset with ready numpy arrays
  read_hdf5 + torch      ... and the qlearning arrays as float32 torch tensors
  qlearning view         Dataset.qlearning() on the loaded Dataset
  read_hdf5 + qlearning  the target: < 1 s (also with load_infos=False, skipping qpos/qvel)
  D4RL loop              a straight port of d4rl.qlearning_dataset (run once)
and for the same data as a Minari dataset (1000 x 1000 steps, and 50k episodes x 20 steps):
  offrl uncached         read_minari(use_cache=False): the h5py fast path (run once)
  offrl cached           read_minari after the flat cache exists; target >= 10x Minari's own
  minari iterate         minari.load_dataset + iterating every episode (run once)

    .venv/bin/python benchmarks/bench_data_load.py            # full sizes (several minutes:
                                                              #   Minari writes ~4 ms/episode)
    .venv/bin/python benchmarks/bench_data_load.py --quick    # 100k rows, 5k short episodes
Results go to benchmarks/results/bench_data_load.json. Wall and CPU seconds are both reported:
on the shared 2-core build machine wall time inflates with other jobs, CPU time much less.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start their thread pools
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from offrl.data.dataset import Dataset  # noqa: E402
from offrl.data.hdf5 import read_hdf5, write_hdf5  # noqa: E402
from offrl.data.minari_io import read_minari, write_minari  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_data_load.json"


def hopper_like(n: int, episode_len: int, seed: int = 0) -> Dataset:
    """Smooth random-walk states (compress like real rollouts, unlike white noise)."""
    rng = np.random.default_rng(seed)
    n_eps = n // episode_len

    def walk(dim: int, dtype: type, extra: int = 0) -> np.ndarray:
        x = np.cumsum(rng.normal(0, 0.05, (n_eps, episode_len + extra, dim)), axis=1)
        return x.astype(dtype)

    states = walk(11, np.float32, extra=1)  # T+1 states per episode
    qpos, qvel = walk(6, np.float64), walk(6, np.float64)
    timeouts = np.zeros(n, bool)
    timeouts[episode_len - 1::episode_len] = True
    return Dataset(
        observations=states[:, :-1].reshape(n, 11), next_observations=states[:, 1:].reshape(n, 11),
        actions=np.tanh(rng.normal(size=(n, 3))).astype(np.float32),
        rewards=(3 + 0.1 * rng.normal(size=n)).astype(np.float32),
        terminals=np.zeros(n, bool), timeouts=timeouts,
        episode_starts=np.arange(0, n, episode_len),
        infos={"qpos": qpos.reshape(n, 6), "qvel": qvel.reshape(n, 6)},
        metadata={"env_id": "Hopper-v4", "has_timeouts": True})


def d4rl_qlearning_loop(path: Path) -> dict[str, np.ndarray]:
    """d4rl.qlearning_dataset's loop, on arrays loaded the way D4RL's get_dataset loads them."""
    with h5py.File(path, "r") as f:
        dataset = {k: f[k][:] for k in ("observations", "actions", "rewards", "terminals",
                                        "timeouts")}
    N = dataset["rewards"].shape[0]
    obs_, next_obs_, action_, reward_, done_ = [], [], [], [], []
    episode_step = 0
    for i in range(N - 1):
        obs = dataset["observations"][i].astype(np.float32)
        new_obs = dataset["observations"][i + 1].astype(np.float32)
        action = dataset["actions"][i].astype(np.float32)
        reward = dataset["rewards"][i].astype(np.float32)
        done_bool = bool(dataset["terminals"][i])
        final_timestep = dataset["timeouts"][i]
        if final_timestep:
            episode_step = 0
            continue
        if done_bool or final_timestep:
            episode_step = 0
        obs_.append(obs)
        next_obs_.append(new_obs)
        action_.append(action)
        reward_.append(reward)
        done_.append(done_bool)
        episode_step += 1
    return {"observations": np.array(obs_), "actions": np.array(action_),
            "next_observations": np.array(next_obs_), "rewards": np.array(reward_),
            "terminals": np.array(done_)}


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(wall, cpu) seconds, each the minimum over `repeats` runs. CPU time is reported too
    because the build machine is shared: under contention wall time inflates, CPU time less."""
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def once(fn: Callable[[], object]) -> tuple[float, float]:
    return best_of(fn, 1)


def to_tensors(ds: Dataset) -> dict[str, torch.Tensor]:
    q = ds.qlearning()
    return {k: torch.from_numpy(getattr(q, k)) for k in
            ("observations", "actions", "rewards", "next_observations", "dones")}


def iterate_minari(dataset_id: str) -> int:
    import minari
    return sum(len(ep) for ep in minari.load_dataset(dataset_id).iterate_episodes())


def bench_minari(ds: Dataset, dataset_id: str, repeats: int, rows: list, label: str) -> None:
    t_write = once(lambda: write_minari(ds, dataset_id))
    uncached = once(lambda: read_minari(dataset_id, use_cache=False))
    first = once(lambda: read_minari(dataset_id))  # uncached read + cache write
    cached = best_of(lambda: read_minari(dataset_id), repeats)
    minari_iter = once(lambda: iterate_minari(dataset_id))
    assert np.array_equal(read_minari(dataset_id).observations, ds.observations)
    rows += [
        (f"{label}: write_minari (once)", t_write, ""),
        (f"{label}: offrl read_minari uncached (once)", uncached,
         f"{minari_iter[0] / uncached[0]:.1f}x faster than minari"),
        (f"{label}: offrl first read + cache write (once)", first, ""),
        (f"{label}: offrl read_minari cached", cached,
         (f"{minari_iter[0] / cached[0]:.0f}x faster than minari (cpu: "
          f"{minari_iter[1] / cached[1]:.0f}x; target >= 10x)")),
        (f"{label}: minari load_dataset + iterate (once)", minari_iter,
         f"{minari_iter[0] / ds.num_episodes * 1e3:.2f} ms/episode"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--short-episodes", type=int, default=50_000,
                        help="episodes of --short-len steps in the second Minari variant (0: skip)")
    parser.add_argument("--short-len", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100k rows, 5k short episodes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.short_episodes = 100_000, 5_000
    torch.set_num_threads(1)

    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="offrl-bench-") as tmp:
        os.environ["OFFRL_HOME"] = f"{tmp}/offrl_home"
        os.environ["MINARI_DATASETS_PATH"] = f"{tmp}/minari"
        ds = hopper_like(args.rows, 1000)
        path = Path(tmp) / "hopper-like.hdf5"
        # The D4RL layout as the brief describes it: no next_observations in the file.
        t_write = once(lambda: write_hdf5(ds.replace(next_observations=None), path))
        size_mb = path.stat().st_size / 1e6

        t_read = best_of(lambda: read_hdf5(path), args.repeats)
        t_torch = best_of(lambda: to_tensors(read_hdf5(path)), args.repeats)
        loaded = read_hdf5(path)
        t_q = best_of(loaded.qlearning, args.repeats)
        t_total = best_of(lambda: read_hdf5(path).qlearning(), args.repeats)
        t_no_infos = best_of(lambda: read_hdf5(path, load_infos=False).qlearning(), args.repeats)
        reference = {}
        t_loop = once(lambda: reference.update(d4rl_qlearning_loop(path)))
        q = loaded.qlearning()
        same = all(np.array_equal(getattr(q, a), reference[b]) for a, b in [
            ("observations", "observations"), ("next_observations", "next_observations"),
            ("actions", "actions"), ("rewards", "rewards"), ("dones", "terminals")])
        rows += [
            (f"hdf5: write_hdf5 gzip-1+shuffle ({size_mb:.0f} MB, once)", t_write, ""),
            ("hdf5: read_hdf5 -> Dataset", t_read, ""),
            ("hdf5: read_hdf5 + qlearning -> torch", t_torch, ""),
            ("hdf5: qlearning view", t_q, ""),
            ("hdf5: read_hdf5 + qlearning", t_total, "target < 1 s"),
            ("hdf5: read_hdf5(load_infos=False) + qlearning", t_no_infos, "skips qpos/qvel"),
            ("hdf5: D4RL python loop qlearning (once)", t_loop,
             f"{t_loop[0] / t_q[0]:.0f}x slower than ours; identical arrays: {same}"),
        ]
        del loaded, q  # free memory before the Minari part

        bench_minari(ds, "bench/hopper/long-v0", args.repeats, rows,
                     f"minari {ds.num_episodes}x1000")
        if args.short_episodes:
            short = hopper_like(args.short_episodes * args.short_len, args.short_len, seed=1)
            bench_minari(short, "bench/hopper/short-v0", args.repeats, rows,
                         f"minari {args.short_episodes}x{args.short_len}")

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'wall s':>8}  {'cpu s':>8}  notes")
    for name, (wall, cpu), note in rows:
        print(f"{name:<{width}}  {wall:8.3f}  {cpu:8.3f}  {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "bench_data_load", "rows": args.rows, "short_episodes": args.short_episodes,
        "short_len": args.short_len, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "results": [{"measurement": n, "wall_s": round(w, 4), "cpu_s": round(c, 4), "note": note}
                    for n, (w, c), note in rows],
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
