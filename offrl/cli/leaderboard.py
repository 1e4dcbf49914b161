"""`offrl submit` (build a submission bundle) and
`offrl leaderboard verify|build|serve|add-token` (check, render and serve the board)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from offrl.errors import UserError

DB_ENV_VAR = "OFFRL_LEADERBOARD_DB"
TOKEN_ENV_VAR = "OFFRL_LEADERBOARD_TOKEN"
DEFAULT_DB = "sqlite:///leaderboard.db"

SUBMIT_EXAMPLES = """\
examples:
  offrl submit runs/td3_bc --name td3_bc-corl --suite mujoco-core
      every complete run directory under runs/td3_bc, bundled into
      leaderboard/submissions/td3_bc-corl/ (open a pull request with it)
  offrl submit runs/iql/hopper-medium-v2/2026* runs/iql/walker2d-medium-v2/2026* \\
      --name iql-mine --suite evaluation/suites/mujoco-core.toml --out /tmp/bundles
  offrl submit runs/iql --name iql-mine --suite mujoco-core --upload https://board.example
      also upload the zipped bundle (token from $OFFRL_LEADERBOARD_TOKEN)

A bundle holds submission.json (suite, datasets and their sha256, algorithm, code version,
full config, protocol and every seed's raw final-evaluation returns), each seed's final policy
as TorchScript (observation normalisation inside), each dataset's config.toml and SHA256SUMS.
The rules are checked before the bundle is kept: every dataset of the suite, at least 5 seeds,
the suite's episodes and steps, finite returns, the registry's dataset hashes, loadable
policies, no duplicate on the board.
"""

VERIFY_EXAMPLES = """\
examples:
  offrl leaderboard verify leaderboard/submissions/td3_bc-corl
      re-run every policy on fresh env seeds; writes verification.json into the bundle
  offrl leaderboard verify BUNDLE --episodes 50 --seed 123 --no-write

Exit status: 0 verified, 1 flagged (claimed returns above what the policies reproduce) or
broken rules.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "submit", help="bundle run directories as a leaderboard submission",
        description="Build a submission bundle from complete run directories of one algorithm "
                    "and check it against the leaderboard's rules.",
        epilog=SUBMIT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUNS",
                   help="run directories, or folders holding them")
    p.add_argument("--name", required=True, help="submission name: letters, digits, . _ -")
    p.add_argument("--suite", required=True,
                   help="benchmark suite: a name in evaluation/suites/ or a TOML file")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the bundle folder DIR/NAME goes (default: the repository's "
                        "leaderboard/submissions)")
    p.add_argument("--description", default="", help="one paragraph shown on the board")
    p.add_argument("--submitter", default="", help="who submits (shown on the board)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--zip", action="store_true", help="also write NAME.zip next to the folder")
    p.add_argument("--upload", metavar="URL",
                   help=f"upload to a leaderboard service (token from ${TOKEN_ENV_VAR})")
    p.set_defaults(func=cmd_submit)

    lb = subparsers.add_parser("leaderboard", help="verify submissions, build or serve the board",
                               description="The leaderboard: verify, build, serve, add-token.")
    sub = lb.add_subparsers(dest="leaderboard_command", metavar="COMMAND")

    v = sub.add_parser("verify", help="re-run a bundle's policies on fresh env seeds",
                       epilog=VERIFY_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("bundle", metavar="BUNDLE", help="a bundle folder (or .zip)")
    v.add_argument("--suite", help="suite name or TOML (default: the one the bundle names)")
    v.add_argument("--episodes", type=int, help="episodes per seed (default: the protocol's)")
    v.add_argument("--seed", type=int, help="verification seed (default: random, secret)")
    v.add_argument("--tolerance", type=float, default=5.0,
                   help="normalised-score points a claim may exceed the re-run by (default 5)")
    v.add_argument("--alpha", type=float, default=1e-3,
                   help="significance level of the one-sided test (default 0.001)")
    v.add_argument("--no-write", action="store_true", help="do not write verification.json")
    v.set_defaults(func=cmd_verify)

    b = sub.add_parser("build", help="render leaderboard/README.md and index.html")
    b.add_argument("--dir", default=None, help="board folder (default: the repository's "
                   "leaderboard/)")
    b.add_argument("--reps", type=int, default=20_000, help="bootstrap replicates")
    b.set_defaults(func=cmd_build)

    s = sub.add_parser("serve", help="run the leaderboard web service")
    s.add_argument("--db", default=None, help=f"SQLAlchemy URL (default ${DB_ENV_VAR} or "
                   f"{DEFAULT_DB}); PostgreSQL: postgresql+psycopg://user@host/db")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--suite", action="append", default=[],
                   help="accepted suite (name or TOML); repeatable (default: every suite in "
                        "evaluation/suites)")
    s.add_argument("--max-upload-mb", type=float, default=20.0)
    s.add_argument("--no-worker", action="store_true", help="accept uploads, verify none")
    s.add_argument("--verify-episodes", type=int, default=None,
                   help="episodes per seed when verifying (default: the protocol's)")
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("add-token", help="make an API token for a user (shown once)")
    t.add_argument("user")
    t.add_argument("--db", default=None, help="SQLAlchemy URL (as for serve)")
    t.set_defaults(func=cmd_add_token)
    lb.set_defaults(func=lambda args: (lb.print_help(), 2)[1])


def _db_url(arg: str | None) -> str:
    return arg or os.environ.get(DB_ENV_VAR) or DEFAULT_DB


def _board_existing(board_dir: Path, exclude: Path | None) -> tuple[set[str], set[str]]:
    """(names, fingerprints) of the bundles already on the static board."""
    from offrl.leaderboard.board import load_board_entries
    from offrl.leaderboard.schema import submission_fingerprint

    entries, _ = load_board_entries(board_dir)
    names, prints = set(), set()
    for e in entries:
        if exclude is not None and e.submission.name == exclude.name:
            continue
        names.add(e.submission.name)
        prints.add(submission_fingerprint(e.submission))
    return names, prints


# ---------------------------------------------------------------------------------- submit
def cmd_submit(args: argparse.Namespace) -> int:
    import shutil

    from offrl.leaderboard.board import SUBMISSIONS_DIR, default_board_dir
    from offrl.leaderboard.bundle import build_bundle, pack_bundle, read_bundle
    from offrl.leaderboard.rules import RulesError, check_rules
    from offrl.leaderboard.suite import load_suite

    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", args.name):
        raise UserError(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' "
                        "(at most 64, starting with a letter or digit)")
    suite = load_suite(args.suite)
    out_root = Path(args.out) if args.out else default_board_dir() / SUBMISSIONS_DIR
    target = out_root / args.name
    existed = target.exists()
    build_bundle(args.runs, target, name=args.name, suite=suite, description=args.description,
                 submitter=args.submitter, overwrite=args.overwrite)
    submission = read_bundle(target)
    names, prints = _board_existing(default_board_dir(), target)  # the accepted board
    violations = check_rules(submission, suite, bundle_dir=target, existing_names=names,
                             existing_fingerprints=prints)
    if violations:
        if not existed:
            shutil.rmtree(target, ignore_errors=True)
        raise RulesError(violations, f"the submission {args.name}")
    print(f"bundle {target}: {submission.algorithm} on {len(submission.datasets)} dataset(s), "
          f"{sum(len(d.results) for d in submission.datasets)} run(s); the rules pass")
    for d in submission.datasets:
        scores = d.seed_scores()
        mean = sum(scores.values()) / len(scores)
        print(f"  {d.dataset_id}: {len(scores)} seeds, mean score {mean:.2f}")
    data = None
    if args.zip or args.upload:
        data = pack_bundle(target)
    if args.zip:
        zip_path = target.with_name(target.name + ".zip")
        zip_path.write_bytes(data)
        print(f"zip: {zip_path} ({len(data)} bytes)")
    if args.upload:
        _upload(args.upload, data)
    print("next: `offrl leaderboard verify " + str(target) + "`, then open a pull request "
          "with the bundle (or upload it with --upload)")
    return 0


def _upload(url: str, data: bytes) -> None:
    import httpx

    token = os.environ.get(TOKEN_ENV_VAR)
    if not token:
        raise UserError(f"--upload needs an API token in ${TOKEN_ENV_VAR} (ask the board's "
                        "admin: `offrl leaderboard add-token USER`)")
    try:
        response = httpx.post(url.rstrip("/") + "/api/submissions", content=data,
                              headers={"Authorization": f"Bearer {token}",
                                       "Content-Type": "application/zip"}, timeout=120)
    except httpx.HTTPError as exc:
        raise UserError(f"cannot upload to {url}: {exc}") from None
    if response.status_code != 202:
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text
        raise UserError(f"upload refused ({response.status_code}): {detail}")
    print(f"uploaded: {response.json()}")


# ---------------------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    import tempfile

    from offrl.leaderboard.bundle import VERIFICATION_JSON, read_bundle, unpack_bundle
    from offrl.leaderboard.rules import enforce_rules
    from offrl.leaderboard.suite import load_suite
    from offrl.leaderboard.verify import STATUS_VERIFIED, verify_submission
    from offrl.training.run_dir import write_json_atomic

    bundle = Path(args.bundle)
    with tempfile.TemporaryDirectory(prefix="offrl-verify-") as tmp:
        if bundle.is_file() and bundle.suffix == ".zip":
            folder = unpack_bundle(bundle.read_bytes(), Path(tmp) / "bundle",
                                   max_bytes=1 << 32)
            writable = False
        else:
            folder, writable = bundle, True
        submission = read_bundle(folder)
        suite = load_suite(args.suite or submission.suite.name)
        enforce_rules(submission, suite, source=str(bundle), bundle_dir=folder)
        print(f"verifying {submission.name} ({submission.algorithm}, suite {suite.name} "
              f"{suite.version}): re-running every policy on fresh env seeds")
        result = verify_submission(submission, folder, episodes=args.episodes,
                                   verification_seed=args.seed, tolerance=args.tolerance,
                                   alpha=args.alpha)
    for d in result.datasets:
        mark = "FLAGGED" if d.flagged else "ok"
        print(f"  {d.dataset_id}: claimed {d.claimed_mean:8.2f}, re-run {d.verified_mean:8.2f} "
              f"({d.units}; difference {d.difference:+.2f}, tolerance {d.tolerance:.2f}, "
              f"p = {d.p_value:.2g})  {mark}")
        for s in d.seeds:
            if s.seed in d.flagged_seeds:
                print(f"    seed {s.seed}: claimed {s.claimed:.2f}, re-run {s.verified:.2f}")
    print(result.message)
    if writable and not args.no_write:
        path = folder / VERIFICATION_JSON
        write_json_atomic(path, result.to_json())
        print(f"wrote {path}")
    return 0 if result.status == STATUS_VERIFIED else 1


# ---------------------------------------------------------------------------------- build
def cmd_build(args: argparse.Namespace) -> int:
    from offrl.leaderboard.board import build_board

    result = build_board(args.dir, reps=args.reps)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"board built from {result.submissions} submission(s): "
          + ", ".join(str(f) for f in result.files))
    return 0


# ---------------------------------------------------------------------------------- serve
def _server_suites(names: list[str]):
    from offrl.leaderboard.suite import load_suite, suites_dirs

    if names:
        return [load_suite(n) for n in names]
    files = sorted(p for d in suites_dirs() for p in d.glob("*.toml"))
    if not files:
        raise UserError("no suites to accept: give --suite NAME_OR_TOML (evaluation/suites is "
                        "empty)")
    return [load_suite(p) for p in files]


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from offrl.leaderboard.service import create_app
    except ImportError as exc:
        raise UserError(f"the leaderboard service needs its extra: pip install "
                        f"'offrl[leaderboard]' ({exc.name} is missing)") from None
    from offrl.leaderboard.store import Store

    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be positive; got {args.max_upload_mb}")
    suites = _server_suites(args.suite)
    store = Store(_db_url(args.db))
    options = {"episodes": args.verify_episodes} if args.verify_episodes else {}
    app = create_app(store, suites, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                     run_worker=not args.no_worker, verify_options=options)
    print(f"offrl leaderboard on http://{args.host}:{args.port} (database {_db_url(args.db)}; "
          f"suites: {', '.join(f'{s.name} {s.version}' for s in suites)})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_add_token(args: argparse.Namespace) -> int:
    from offrl.leaderboard.store import Store

    store = Store(_db_url(args.db))
    token = store.add_token(args.user)
    store.close()
    print(json.dumps({"user": args.user, "token": token}))
    print("the token is shown only now; the database keeps only its hash", file=sys.stderr)
    return 0
