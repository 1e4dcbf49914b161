"""What a job's run directory says about it: its status and how far it got.

The run directory is the truth (docs/run-directory.md): run.json `status` is "complete" only
when every step is done; anything else with a run.json is resumed from checkpoints/latest.pt.
"""

from __future__ import annotations

import json
from pathlib import Path

from offrl.training.run_dir import METRICS_CSV, RUN_JSON, STATUS_COMPLETE

MISSING = "missing"  # no run.json yet: the job has not started


def run_status(run_dir: str | Path) -> str:
    """run.json's status ("running", "interrupted", "failed", "complete"), or "missing"."""
    try:
        info = json.loads((Path(run_dir) / RUN_JSON).read_text())
    except FileNotFoundError:
        return MISSING
    except (OSError, json.JSONDecodeError):
        return "unreadable"
    return str(info.get("status", "unknown"))


def run_error(run_dir: str | Path) -> str | None:
    """run.json's "error" (set when training raised), if any."""
    try:
        return json.loads((Path(run_dir) / RUN_JSON).read_text()).get("error")
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(run_dir: str | Path) -> bool:
    return run_status(run_dir) == STATUS_COMPLETE


def logged_step(run_dir: str | Path) -> int:
    """The step of the last metrics.csv row (0 if none): how far training got, to within
    `log_every` steps. Reads only the end of the file."""
    path = Path(run_dir) / METRICS_CSV
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return 0
    for line in reversed(tail.strip().splitlines()):
        head = line.split(",", 1)[0]
        if head.isdigit():
            return int(head)
    return 0


def tail_text(path: str | Path, lines: int = 5) -> str:
    """The last `lines` lines of a text file ('' if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
