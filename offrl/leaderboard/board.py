"""The static board in the repository: `leaderboard/submissions/<name>/` bundles (accepted by
pull request) rendered to `leaderboard/README.md`, `leaderboard/index.html`,
`leaderboard/leaderboard.json` and one `profiles-<suite>-<version>.svg` per suite.

A bundle's status comes from its `verification.json` (written by `offrl leaderboard verify`):
verified or flagged; without one it is pending. A folder that is not a valid bundle (bad
checksums or schema) is left off the board with a warning, never half-read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from offrl.errors import UserError
from offrl.leaderboard.bundle import VERIFICATION_JSON, read_bundle
from offrl.leaderboard.render import profiles_svg, render_html, render_markdown
from offrl.leaderboard.schema import config_path
from offrl.leaderboard.standings import (STATUS_PENDING, BoardEntry, compute_standings,
                                         standings_json)

SUBMISSIONS_DIR = "submissions"


def default_board_dir() -> Path:
    """The repository's `leaderboard/` folder (next to the offrl package)."""
    return Path(__file__).resolve().parent.parent.parent / "leaderboard"


def read_status(bundle_dir: Path) -> tuple[str, str]:
    """(status, message) from a bundle's verification.json; pending if there is none."""
    path = bundle_dir / VERIFICATION_JSON
    if not path.is_file():
        return STATUS_PENDING, "not verified yet"
    try:
        data = json.loads(path.read_text())
        status, message = str(data["status"]), str(data.get("message", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a verification record ({exc})") from None
    if status not in ("verified", "flagged"):
        raise UserError(f"{path}: unknown status {status!r}")
    return status, message


def bundle_links(prefix: str, entry_datasets: list[str]) -> dict[str, str]:
    """{label: href} for a bundle at URL/path `prefix` (ending in '/')."""
    links = {"submission.json": f"{prefix}submission.json"}
    for dataset_id in entry_datasets:
        links[f"config {dataset_id}"] = prefix + config_path(dataset_id)
    return links


def load_board_entries(board_dir: Path) -> tuple[list[BoardEntry], list[str]]:
    """(entries, warnings) for every bundle under `board_dir/submissions/`."""
    entries, warnings = [], []
    folder = board_dir / SUBMISSIONS_DIR
    if not folder.is_dir():
        return entries, warnings
    for bundle in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            submission = read_bundle(bundle)
            status, message = read_status(bundle)
        except UserError as exc:
            warnings.append(f"{bundle}: left off the board: {exc}")
            continue
        if submission.name != bundle.name:
            warnings.append(f"{bundle}: left off the board: the folder must be named after the "
                            f"submission ({submission.name!r})")
            continue
        prefix = f"{SUBMISSIONS_DIR}/{bundle.name}/"
        entries.append(BoardEntry(submission, status, message,
                                  bundle_links(prefix, [d.dataset_id
                                                        for d in submission.datasets])))
    return entries, warnings


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


@dataclass
class BoardBuild:
    files: list[Path]
    warnings: list[str]
    submissions: int


def build_board(board_dir: str | os.PathLike | None = None, *, reps: int = 20_000,
                profile_reps: int = 2_000) -> BoardBuild:
    """Render the board of `board_dir` (default: the repository's leaderboard/)."""
    board_dir = Path(board_dir) if board_dir is not None else default_board_dir()
    board_dir.mkdir(parents=True, exist_ok=True)
    entries, warnings = load_board_entries(board_dir)
    standings = compute_standings(entries, reps=reps, profile_reps=profile_reps)
    files, images = [], {}
    for s in standings:
        if s.rows:
            key = f"{s.suite}-{s.version}"
            images[key] = f"profiles-{key}.svg"
            files.append(_write(board_dir / images[key], profiles_svg(s) + "\n"))
    files.append(_write(board_dir / "README.md", render_markdown(standings,
                                                                 profile_images=images)))
    files.append(_write(board_dir / "index.html", render_html(standings)))
    files.append(_write(board_dir / "leaderboard.json",
                        json.dumps(standings_json(standings), indent=2) + "\n"))
    return BoardBuild(files, warnings, len(entries))
