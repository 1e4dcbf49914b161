"""The service's database (SQLAlchemy 2): users, API tokens, submissions with their bundles.

SQLite by default (`sqlite:///leaderboard.db`, WAL journal), PostgreSQL by URL
(`postgresql+psycopg://user@host/db`). Every change is one transaction: a submission row and
its bundle bytes are committed together or not at all, so a crash mid-upload loses nothing
already accepted. Tokens are stored only as sha256 hashes (they are 256-bit random strings,
so a plain hash is enough); the token itself is shown once, when it is made.

Submission status: pending → verifying → verified | flagged | error. A worker that dies
leaves "verifying"; `reset_interrupted` puts those back to pending at start-up.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (Boolean, ForeignKey, Integer, LargeBinary, String, Text, create_engine,
                        event, func, select, update)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from offrl.errors import UserError

STATUSES = ("pending", "verifying", "verified", "flagged", "error")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class DuplicateSubmission(UserError, ValueError):
    """A submission whose name or results are already stored."""


class _Base(DeclarativeBase):
    pass


class User(_Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_ns: Mapped[int] = mapped_column(Integer)


class ApiToken(_Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_ns: Mapped[int] = mapped_column(Integer)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class StoredSubmission(_Base):
    __tablename__ = "submissions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    suite_name: Mapped[str] = mapped_column(String(64))
    suite_version: Mapped[str] = mapped_column(String(64))
    algorithm: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    submission_json: Mapped[str] = mapped_column(Text)
    bundle: Mapped[bytes] = mapped_column(LargeBinary)
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    verification_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_ns: Mapped[int] = mapped_column(Integer)
    updated_ns: Mapped[int] = mapped_column(Integer, index=True)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass
class SubmissionRecord:
    """A stored submission without its bundle bytes."""

    id: int
    name: str
    user: str
    suite_name: str
    suite_version: str
    algorithm: str
    status: str
    submission_json: str
    verification: dict[str, Any] | None
    created_ns: int
    updated_ns: int

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "user": self.user,
                "suite": {"name": self.suite_name, "version": self.suite_version},
                "algorithm": self.algorithm, "status": self.status,
                "message": (self.verification or {}).get("message", ""),
                "created": self.created_ns / 1e9, "updated": self.updated_ns / 1e9}


class Store:
    """All database access of the service. Thread-safe (one session per call)."""

    def __init__(self, url: str = "sqlite:///leaderboard.db"):
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        try:
            self.engine = create_engine(url, **kwargs)
        except Exception as exc:  # a bad URL or a missing driver
            raise UserError(f"cannot open database {url!r}: {exc}") from None
        if self.is_sqlite:
            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_connection, _record):  # noqa: ANN001
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=FULL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()
        _Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- users and tokens
    def add_token(self, user: str) -> str:
        """A new API token for `user` (created if new). Only its hash is stored."""
        if not _USER.match(user):
            raise UserError(f"user name {user!r} must be letters, digits, '.', '_' or '-' "
                            "(at most 64)")
        token = "offrl_" + secrets.token_urlsafe(32)
        now = time.time_ns()
        with self._sessions.begin() as session:
            row = session.scalar(select(User).where(User.name == user))
            if row is None:
                row = User(name=user, created_ns=now)
                session.add(row)
                session.flush()
            session.add(ApiToken(user_id=row.id, token_sha256=hash_token(token),
                                 created_ns=now))
        return token

    def user_for_token(self, token: str) -> tuple[int, str] | None:
        """(user id, name) of a valid token, else None."""
        if not token or len(token) > 200:
            return None
        with self._sessions() as session:
            row = session.execute(
                select(User.id, User.name).join(ApiToken, ApiToken.user_id == User.id)
                .where(ApiToken.token_sha256 == hash_token(token), ApiToken.revoked.is_(False))
            ).first()
        return (row[0], row[1]) if row else None

    # ---------------------------------------------------------------- submissions
    def has_name(self, name: str) -> bool:
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(StoredSubmission)
                                  .where(StoredSubmission.name == name)) > 0

    def has_fingerprint(self, fingerprint: str) -> bool:
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(StoredSubmission)
                                  .where(StoredSubmission.fingerprint == fingerprint)) > 0

    def add_submission(self, *, user_id: int, name: str, fingerprint: str, suite_name: str,
                       suite_version: str, algorithm: str, submission_json: str,
                       bundle: bytes) -> int:
        """Store an accepted submission (status pending) in one transaction; its id."""
        now = time.time_ns()
        row = StoredSubmission(name=name, fingerprint=fingerprint, user_id=user_id,
                               suite_name=suite_name, suite_version=suite_version,
                               algorithm=algorithm, status="pending",
                               submission_json=submission_json, bundle=bundle,
                               bundle_sha256=hashlib.sha256(bundle).hexdigest(),
                               created_ns=now, updated_ns=now)
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            raise DuplicateSubmission(f"a submission named {name!r} or with the same results "
                                      "is already stored") from None
        return row.id

    def _record(self, row: StoredSubmission, user: str) -> SubmissionRecord:
        return SubmissionRecord(row.id, row.name, user, row.suite_name, row.suite_version,
                                row.algorithm, row.status, row.submission_json,
                                json.loads(row.verification_json) if row.verification_json
                                else None, row.created_ns, row.updated_ns)

    def list_submissions(self) -> list[SubmissionRecord]:
        with self._sessions() as session:
            rows = session.execute(
                select(StoredSubmission, User.name).join(User)
                .order_by(StoredSubmission.id)).all()
            return [self._record(r, u) for r, u in rows]

    def get_submission(self, submission_id: int) -> SubmissionRecord | None:
        with self._sessions() as session:
            row = session.execute(select(StoredSubmission, User.name).join(User)
                                  .where(StoredSubmission.id == submission_id)).first()
            return self._record(row[0], row[1]) if row else None

    def get_bundle(self, submission_id: int) -> bytes | None:
        with self._sessions() as session:
            return session.scalar(select(StoredSubmission.bundle)
                                  .where(StoredSubmission.id == submission_id))

    def revision(self) -> tuple[int, int]:
        """Changes whenever a submission is added or its status changes (for caches)."""
        with self._sessions() as session:
            count, latest = session.execute(
                select(func.count(), func.max(StoredSubmission.updated_ns))).one()
        return int(count), int(latest or 0)

    # ---------------------------------------------------------------- verification queue
    def claim_pending(self) -> int | None:
        """Atomically move the oldest pending submission to "verifying"; its id, or None."""
        with self._sessions.begin() as session:
            for sid in session.scalars(select(StoredSubmission.id)
                                       .where(StoredSubmission.status == "pending")
                                       .order_by(StoredSubmission.id).limit(5)):
                claimed = session.execute(
                    update(StoredSubmission)
                    .where(StoredSubmission.id == sid, StoredSubmission.status == "pending")
                    .values(status="verifying", updated_ns=time.time_ns()))
                if claimed.rowcount == 1:
                    return sid
        return None

    def finish_verification(self, submission_id: int, status: str,
                            verification: dict[str, Any]) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._sessions.begin() as session:
            session.execute(update(StoredSubmission)
                            .where(StoredSubmission.id == submission_id)
                            .values(status=status, verification_json=json.dumps(verification),
                                    updated_ns=time.time_ns()))

    def reset_interrupted(self) -> int:
        """Put submissions left "verifying" by a stopped worker back to pending; how many."""
        with self._sessions.begin() as session:
            result = session.execute(update(StoredSubmission)
                                     .where(StoredSubmission.status == "verifying")
                                     .values(status="pending", updated_ns=time.time_ns()))
            return int(result.rowcount or 0)

    def integrity_ok(self) -> bool:
        """SQLite's own integrity check (True for other databases)."""
        if not self.is_sqlite:
            return True
        with self.engine.connect() as conn:
            return conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
