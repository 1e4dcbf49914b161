"""The leaderboard web service (FastAPI): an HTML board, a JSON API and authenticated uploads.

    GET  /                                   the board (HTML; no scripts)
    GET  /api/board                          the standings as JSON
    GET  /api/submissions                    every submission: id, name, status, ...
    GET  /api/submissions/{id}               one submission with its verification record
    GET  /api/submissions/{id}/files/{path}  submission.json or configs/<dataset>.toml
    POST /api/submissions                    upload a bundle (zip; raw body or multipart field
                                             "bundle"), header `Authorization: Bearer TOKEN`
    GET  /healthz

An upload is refused with 401 (no or bad token), 413 (over `max_upload_bytes`, checked on
Content-Length and again while reading), 415 (not zip or multipart), 400 (not a zip, bad
JSON), 422 (schema or rules, with the list of violations) or 409 (duplicate). An accepted one
(202) is stored in one transaction with status pending; the worker verifies it. Only accepted
submissions (pending, verified) are ranked on the board; flagged ones are listed.
"""

from __future__ import annotations

import io
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from offrl.errors import UserError
from offrl.leaderboard.board import bundle_links
from offrl.leaderboard.bundle import SUBMISSION_JSON, BundleError, unpack_bundle
from offrl.leaderboard.checksums import check_checksums
from offrl.leaderboard.render import CSP, render_html
from offrl.leaderboard.rules import (RegistryFacts, RulesError, Violation, check_rules,
                                     registry_facts)
from offrl.leaderboard.schema import SchemaError, parse_submission, submission_fingerprint
from offrl.leaderboard.standings import BoardEntry, compute_standings, standings_json
from offrl.leaderboard.store import DuplicateSubmission, Store
from offrl.leaderboard.suite import Suite
from offrl.leaderboard.worker import VerificationWorker

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
UNPACK_FACTOR = 4          # a bundle may unpack to at most this many times the upload limit


class _TooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the upload is larger than {limit} bytes")


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, from the
    Content-Length header when there is one, else while the body streams in."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    response = JSONResponse({"error": f"the upload is larger than {self.limit} "
                                                      "bytes"}, status_code=413,
                                            headers={"Connection": "close"})
                    await response(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class Suites:
    """The suites the service accepts, by (name, version)."""

    def __init__(self, suites: list[Suite]):
        self.by_key = {(s.name, s.version): s for s in suites}

    def get(self, name: str, version: str) -> Suite | None:
        return self.by_key.get((name, version))


class _NameIndex:
    """`name in index` / `fingerprint in index` answered by the database."""

    def __init__(self, lookup: Callable[[str], bool]):
        self.lookup = lookup

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and self.lookup(item)

    def __iter__(self):  # pragma: no cover - never iterated
        return iter(())

    def __len__(self) -> int:  # pragma: no cover
        return 0


def create_app(store: Store, suites: list[Suite], *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               facts_of: Callable[[str], RegistryFacts] = registry_facts,
               run_worker: bool = True, verify_options: dict[str, Any] | None = None,
               board_reps: int = 10_000, title: str = "offrl leaderboard") -> FastAPI:
    """The service's ASGI app. The worker (if any) starts and stops with the app."""
    accepted_suites = Suites(suites)
    worker = (VerificationWorker(store, max_bytes=max_upload_bytes * UNPACK_FACTOR,
                                 verify_options=verify_options) if run_worker else None)
    cache: dict[str, Any] = {"revision": None}
    cache_lock = threading.Lock()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(BodySizeLimit, limit=max_upload_bytes)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    # ---------------------------------------------------------------- the board
    def board() -> tuple[list, str]:
        """(standings JSON, HTML), recomputed only when the database changed."""
        revision = store.revision()
        with cache_lock:
            if cache["revision"] == revision:
                return cache["json"], cache["html"]
            entries = []
            for record in store.list_submissions():
                if record.status == "error":
                    continue
                submission = parse_submission(record.submission_json)
                status = {"verifying": "pending"}.get(record.status, record.status)
                prefix = f"/api/submissions/{record.id}/files/"
                entries.append(BoardEntry(
                    submission, status, (record.verification or {}).get("message", ""),
                    bundle_links(prefix, [d.dataset_id for d in submission.datasets])))
            standings = compute_standings(entries, reps=board_reps)
            cache.update(revision=revision, json=standings_json(standings),
                         html=render_html(standings, title=title))
            return cache["json"], cache["html"]

    @app.get("/", response_class=HTMLResponse)
    async def board_html() -> HTMLResponse:
        _, page = await run_in_threadpool(board)
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP,
                                           "X-Content-Type-Options": "nosniff"})

    @app.get("/api/board")
    async def board_json() -> JSONResponse:
        data, _ = await run_in_threadpool(board)
        return JSONResponse(data)

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # ---------------------------------------------------------------- submissions
    @app.get("/api/submissions")
    async def list_submissions() -> JSONResponse:
        records = await run_in_threadpool(store.list_submissions)
        return JSONResponse([r.summary() for r in records])

    @app.get("/api/submissions/{submission_id}")
    async def get_submission(submission_id: int) -> JSONResponse:
        record = await run_in_threadpool(store.get_submission, submission_id)
        if record is None:
            return _error(404, f"no submission {submission_id}")
        return JSONResponse({**record.summary(), "verification": record.verification})

    @app.get("/api/submissions/{submission_id}/files/{path:path}")
    async def get_file(submission_id: int, path: str) -> Response:
        record = await run_in_threadpool(store.get_submission, submission_id)
        if record is None:
            return _error(404, f"no submission {submission_id}")
        if path == SUBMISSION_JSON:
            return Response(record.submission_json, media_type="application/json")
        submission = parse_submission(record.submission_json)
        wanted = {d.config: d for d in submission.datasets}
        if path not in wanted:
            return _error(404, "only submission.json and configs/<dataset>.toml are served")
        bundle = await run_in_threadpool(store.get_bundle, submission_id)
        with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
            text = archive.read(path).decode("utf-8", "replace")
        return PlainTextResponse(text, headers={"X-Content-Type-Options": "nosniff"})

    def accept(body: bytes, user_id: int) -> dict[str, Any]:
        """Validate an uploaded bundle and store it; raises on any problem."""
        with tempfile.TemporaryDirectory(prefix="offrl-upload-") as tmp:
            folder = unpack_bundle(body, Path(tmp) / "bundle",
                                   max_bytes=max_upload_bytes * UNPACK_FACTOR)
            if not (folder / SUBMISSION_JSON).is_file():
                raise BundleError(f"the bundle has no {SUBMISSION_JSON}")
            check_checksums(folder)
            text = (folder / SUBMISSION_JSON).read_bytes()
            submission = parse_submission(text)
            suite = accepted_suites.get(submission.suite.name, submission.suite.version)
            if suite is None:
                known = ", ".join(f"{n} {v}" for n, v in accepted_suites.by_key) or "none"
                raise RulesError([Violation(
                    "suite", f"suite {submission.suite.name} version "
                             f"{submission.suite.version} is not on this board (known: {known})")])
            violations = check_rules(
                submission, suite, bundle_dir=folder,
                existing_names=_NameIndex(store.has_name),
                existing_fingerprints=_NameIndex(store.has_fingerprint), facts_of=facts_of)
            if violations:
                raise RulesError(violations)
            sid = store.add_submission(
                user_id=user_id, name=submission.name,
                fingerprint=submission_fingerprint(submission),
                suite_name=submission.suite.name, suite_version=submission.suite.version,
                algorithm=submission.algorithm, submission_json=submission.to_json(),
                bundle=body)
        if worker is not None:
            worker.notify()
        return {"id": sid, "name": submission.name, "status": "pending",
                "url": f"/api/submissions/{sid}"}

    @app.post("/api/submissions")
    async def upload(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        user = (await run_in_threadpool(store.user_for_token, token.strip())
                if scheme.lower() == "bearer" else None)
        if user is None:
            return JSONResponse({"error": "missing or invalid API token (send "
                                          "'Authorization: Bearer TOKEN')"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in ("application/zip", "application/octet-stream"):
            body = await request.body()
        elif content_type == "multipart/form-data":
            await request.body()  # read (and size-check) the whole body first
            try:
                form = await request.form(max_files=1, max_fields=5)
            except Exception as exc:  # malformed multipart
                return _error(400, f"malformed multipart body ({exc})")
            upload_file = form.get("bundle")
            if upload_file is None or isinstance(upload_file, str):
                return _error(400, "the multipart body needs a file field named 'bundle'")
            body = await upload_file.read()
        else:
            return _error(415, "send the bundle as application/zip (or multipart/form-data "
                               "with a file field 'bundle')")
        try:
            result = await run_in_threadpool(accept, body, user[0])
        except RulesError as exc:
            return _error(422, str(exc), violations=[
                {"rule": v.rule, "message": v.message} for v in exc.violations])
        except SchemaError as exc:
            return _error(422, str(exc))
        except DuplicateSubmission as exc:
            return _error(409, str(exc))
        except BundleError as exc:
            return _error(400, str(exc))
        except UserError as exc:  # checksums and the like
            return _error(400, str(exc))
        return JSONResponse(result, status_code=202)

    app.state.store = store
    app.state.worker = worker
    return app

