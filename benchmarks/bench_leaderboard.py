"""Load test of the leaderboard service, loopback only and bounded: board reads/s and
uploads/s, then a check that nothing accepted was lost.

A child process serves `offrl.leaderboard.service` (uvicorn, SQLite in a temporary folder, no
verification worker: uploads are measured up to "accepted and stored", which includes unzipping,
checksums, the schema, every rule and loading every TorchScript policy). The bundles are
synthetic: a 2-dataset suite, 5 seeds each, policies exported from untrained TD3+BC agents at
Hopper shapes (obs 11, act 3, actor 256×256), about 2.7 MB zipped.

Phases (each bounded by a request count and a time limit, --concurrency client threads):
  reads   GET / (HTML board) and GET /api/board, alternating, on an empty board;
  uploads POST distinct bundles (plus one racing duplicate of every fifth);
  reads   again, on the board with every accepted submission;
  check   every accepted id is listed once, duplicates were refused, SQLite integrity is ok.

    .venv/bin/python benchmarks/bench_leaderboard.py
    .venv/bin/python benchmarks/bench_leaderboard.py --reads 200 --uploads 20 --concurrency 2

Writes benchmarks/results/leaderboard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "leaderboard.json"
DATASETS = ("bench-a-v0", "bench-b-v0")
SHA = {"bench-a-v0": "a" * 64, "bench-b-v0": "b" * 64}
SUITE = {"name": "bench", "version": "1", "datasets": list(DATASETS), "seeds_min": 5,
         "eval_episodes": 10, "steps": 1000}

_SERVER = r"""
import json, sys
import uvicorn
from offrl.leaderboard.rules import RegistryFacts
from offrl.leaderboard.service import create_app
from offrl.leaderboard.store import Store
from offrl.leaderboard.suite import suite_from_dict
db, port = sys.argv[1], int(sys.argv[2])
suite, sha = json.loads(sys.argv[3]), json.loads(sys.argv[4])
store = Store(db)
print(json.dumps({"token": store.add_token("bench")}), flush=True)
facts = lambda d: RegistryFacts(sha[d], "Hopper-v4", 1000, -20.0, 3000.0)
app = create_app(store, [suite_from_dict(suite)], facts_of=facts, run_worker=False,
                 max_upload_bytes=20 * 1024 * 1024, board_reps=2000)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_bundle(folder: Path) -> Path:
    """A synthetic bundle folder (submission.json, configs, policies, SHA256SUMS)."""
    from offrl.algos import TD3BC, TD3BCConfig
    from offrl.leaderboard.checksums import write_checksums
    from offrl.leaderboard.schema import config_path, policy_path
    from offrl.training.export import export_policy

    seeds = list(range(5))
    agent = TD3BC(TD3BCConfig(), 11, 3, seeds, max_action=1.0)
    norm = {"observation_mean": [0.0] * 11, "observation_std": [1.0] * 11}
    datasets = []
    for ds in DATASETS:
        for m, seed in enumerate(seeds):
            export_policy(agent, m, norm, folder / policy_path(ds, seed),
                          info={"dataset_id": ds, "step": 1000})
        (folder / config_path(ds)).parent.mkdir(parents=True, exist_ok=True)
        (folder / config_path(ds)).write_text("[algo]\nalpha = 2.5\n")
        datasets.append({
            "dataset_id": ds, "sha256": SHA[ds], "env_id": "Hopper-v4", "max_episode_steps": 1000,
            "ref_min_score": -20.0, "ref_max_score": 3000.0, "config": config_path(ds),
            "hyperparameters": {"algo": {"alpha": 2.5}, "training": {"steps": 1000}},
            "results": [{"seed": s, "step": 1000, "policy": policy_path(ds, s),
                         "returns": [1000.0 + 10 * s + e for e in range(10)],
                         "lengths": [1000] * 10,
                         "env_seeds": [100 * s + e for e in range(10)]} for s in seeds]})
    data = {"schema_version": 1, "name": "base", "created": "2026-01-01T00:00:00Z",
            "suite": {"name": "bench", "version": "1"}, "algorithm": "td3_bc",
            "code": {"offrl_version": "0.1.0", "git_commits": [None], "git_dirty": None},
            "protocol": {"training_steps": 1000, "evaluation_episodes": 10,
                         "last_iterate": True},
            "datasets": datasets}
    (folder / "submission.json").write_text(json.dumps(data))
    write_checksums(folder)
    return folder


def variant(base: Path, i: int) -> bytes:
    """Zip bytes of the base bundle under another name, with distinct returns."""
    from offrl.leaderboard.bundle import pack_bundle
    from offrl.leaderboard.checksums import write_checksums

    data = json.loads((base / "submission.json").read_text())
    data["name"] = f"load-{i}"
    for d in data["datasets"]:
        for r in d["results"]:
            r["returns"] = [x + 0.5 * i for x in r["returns"]]
    (base / "submission.json").write_text(json.dumps(data))
    write_checksums(base)
    return pack_bundle(base)


def run_phase(jobs, call, concurrency: int, time_limit: float) -> dict:
    """Run `call(job)` for each job on a thread pool until done or `time_limit` s passed."""
    latencies, results = [], []
    deadline = time.perf_counter() + time_limit

    def one(job):
        if time.perf_counter() > deadline:
            return None
        t = time.perf_counter()
        out = call(job)
        latencies.append(time.perf_counter() - t)
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = [r for r in pool.map(one, jobs) if r is not None]
    seconds = time.perf_counter() - start
    lat = sorted(latencies) or [0.0]
    return {"requests": len(results), "seconds": round(seconds, 3),
            "per_s": round(len(results) / seconds, 2) if seconds else None,
            "p50_ms": round(1000 * statistics.median(lat), 1),
            "p95_ms": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1), "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=400, help="read requests per read phase")
    parser.add_argument("--uploads", type=int, default=30, help="distinct uploads")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import httpx

    with tempfile.TemporaryDirectory(prefix="offrl-bench-lb-") as tmp:
        tmp = Path(tmp)
        base = make_base_bundle(tmp / "base")
        bodies = [variant(base, i) for i in range(args.uploads)]
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, f"sqlite:///{tmp / 'bench.db'}", str(port),
             json.dumps(SUITE), json.dumps(SHA)], env=env, stdout=subprocess.PIPE, text=True)
        try:
            token = json.loads(server.stdout.readline())["token"]
            url = f"http://127.0.0.1:{port}"
            client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=32))
            deadline = time.time() + 60
            while True:
                try:
                    client.get(url + "/healthz")
                    break
                except httpx.HTTPError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.2)

            def read(i):
                return client.get(url + ("/" if i % 2 else "/api/board")).status_code

            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/zip"}

            def upload(job):
                name, body = job
                response = client.post(url + "/api/submissions", content=body, headers=headers)
                sid = response.json().get("id") if response.status_code == 202 else None
                return name, response.status_code, sid

            reads_empty = run_phase(range(args.reads), read, args.concurrency, args.time_limit)
            jobs = []
            for i, body in enumerate(bodies):
                jobs.append((f"load-{i}", body))
                if i % 5 == 0:
                    jobs.append((f"load-{i}", body))     # a racing duplicate
            uploads = run_phase(jobs, upload, args.concurrency, args.time_limit)
            client.get(url + "/")                        # recompute the board once
            reads_full = run_phase(range(args.reads), read, args.concurrency, args.time_limit)

            accepted = {sid: name for name, code, sid in uploads["results"] if code == 202}
            refused = [code for _, code, _ in uploads["results"] if code != 202]
            listed = client.get(url + "/api/submissions").json()
            listed_ids = [s["id"] for s in listed]
            lost = [sid for sid in accepted if listed_ids.count(sid) != 1]
            distinct_sent = len({name for name, _, _ in uploads["results"]})
            board_rows = len(client.get(url + "/api/board").json()[0]["rows"]) if listed else 0
            from offrl.leaderboard.store import Store

            integrity = Store(f"sqlite:///{tmp / 'bench.db'}").integrity_ok()
        finally:
            server.terminate()
            server.wait(30)

    read_errors = sum(1 for code in reads_empty["results"] + reads_full["results"]
                      if code != 200)
    report = {
        "benchmark": "leaderboard service, loopback",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "settings": {"reads": args.reads, "uploads": args.uploads,
                     "concurrency": args.concurrency, "time_limit_s": args.time_limit,
                     "bundle_bytes": len(bodies[0]), "database": "sqlite (WAL)",
                     "verification_worker": False},
        "reads_empty_board": {k: v for k, v in reads_empty.items() if k != "results"},
        "uploads": {k: v for k, v in uploads.items() if k != "results"},
        "reads_full_board": {k: v for k, v in reads_full.items() if k != "results"},
        "check": {"accepted": len(accepted), "distinct_sent": distinct_sent,
                  "refused_duplicates": len(refused),
                  "refused_codes": sorted(set(refused)), "listed": len(listed),
                  "board_rows": board_rows, "lost": len(lost), "read_errors": read_errors,
                  "sqlite_integrity_ok": integrity},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    ok = not lost and len(accepted) == distinct_sent and read_errors == 0 and integrity
    print("nothing lost" if ok else "PROBLEM: see check", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
