"""The background verification worker: one thread that takes pending submissions from the
store, one at a time, re-runs their policies (`offrl.leaderboard.verify`) and records the
result. A submission whose verification fails outright (a policy that crashes mid-episode, an
env that cannot be made) gets status "error" with the reason."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

from offrl.errors import UserError
from offrl.leaderboard.bundle import unpack_bundle
from offrl.leaderboard.schema import parse_submission
from offrl.leaderboard.store import Store
from offrl.leaderboard.verify import verify_submission

log = logging.getLogger("offrl.leaderboard.worker")


def verify_one(store: Store, submission_id: int, max_bytes: int,
               verify_options: dict[str, Any]) -> str:
    """Verify one claimed submission and record the outcome; the new status."""
    record = store.get_submission(submission_id)
    bundle = store.get_bundle(submission_id)
    if record is None or bundle is None:
        return "missing"
    try:
        with tempfile.TemporaryDirectory(prefix="offrl-verify-") as tmp:
            unpack_bundle(bundle, tmp, max_bytes=max_bytes)
            submission = parse_submission(record.submission_json)
            result = verify_submission(submission, Path(tmp), **verify_options)
        store.finish_verification(submission_id, result.status, result.to_json())
        return result.status
    except UserError as exc:
        store.finish_verification(submission_id, "error", {"status": "error",
                                                           "message": str(exc)[:2000]})
        return "error"
    except Exception as exc:  # never let one bad submission stop the worker
        log.exception("verification of submission %s failed", submission_id)
        store.finish_verification(submission_id, "error",
                                  {"status": "error", "message": f"internal error: {exc}"[:2000]})
        return "error"


class VerificationWorker:
    """A daemon thread polling the store every `poll_s` seconds (woken early by `notify`)."""

    def __init__(self, store: Store, *, max_bytes: int, poll_s: float = 2.0,
                 verify_options: dict[str, Any] | None = None):
        self.store, self.max_bytes, self.poll_s = store, max_bytes, poll_s
        self.verify_options = dict(verify_options or {})
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "VerificationWorker":
        self.store.reset_interrupted()
        self._thread = threading.Thread(target=self._run, name="offrl-verifier", daemon=True)
        self._thread.start()
        return self

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                submission_id = self.store.claim_pending()
            except Exception:  # the database is briefly unavailable: try again later
                log.exception("cannot read the verification queue")
                submission_id = None
            if submission_id is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            verify_one(self.store, submission_id, self.max_bytes, self.verify_options)
