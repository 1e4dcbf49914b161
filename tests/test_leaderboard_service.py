"""The leaderboard service against a real server on 127.0.0.1: uploads, auth, oversized,
malformed and hostile bodies, concurrent uploads, the verification worker, a crash mid-upload,
and the HTML board in headless Chromium."""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from offrl.cli import main  # noqa: E402
from offrl.leaderboard.bundle import pack_bundle  # noqa: E402
from offrl.leaderboard.checksums import write_checksums  # noqa: E402
from offrl.leaderboard.service import create_app  # noqa: E402
from offrl.leaderboard.store import Store  # noqa: E402
from offrl.leaderboard.suite import load_suite  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_leaderboard_bundle import make_bundle_copy, tiny_runs  # noqa: E402

MAX_UPLOAD = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 in a thread."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    with pytest.MonkeyPatch.context() as mp:
        setup = tiny_runs(root, mp)
        bundles = root / "bundles"
        assert main(["submit", str(setup["run"]), "--name", "base", "--suite", "tiny",
                     "--out", str(bundles)]) == 0
        store = Store(f"sqlite:///{root / 'board.db'}")
        tokens = {user: store.add_token(user) for user in ("alice", "bob")}
        app = create_app(store, [load_suite("tiny")], max_upload_bytes=MAX_UPLOAD,
                         verify_options={"verification_seed": 5}, board_reps=500)
        with ServerThread(app) as server:
            yield {**setup, "store": store, "tokens": tokens, "url": server.url,
                   "bundle": bundles / "base", "tmp": root, "suite_file": setup["suite"]}
        store.close()


def post(service, data, token="alice", content_type="application/zip", **kwargs):
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {service['tokens'].get(token, token)}"
    return httpx.post(service["url"] + "/api/submissions", content=data, headers=headers,
                      timeout=60, **kwargs)


def variant(service, name, shift=0.0, edit=None) -> bytes:
    folder = make_bundle_copy(service["bundle"], service["tmp"] / "variants" / name, name,
                              shift=shift, edit=edit)
    return pack_bundle(folder)


def wait_for_status(service, sid, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = httpx.get(f"{service['url']}/api/submissions/{sid}").json()["status"]
        if status not in ("pending", "verifying"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"submission {sid} still {status} after {timeout} s")


def test_upload_verify_and_board(service):
    response = post(service, pack_bundle(service["bundle"]))
    assert response.status_code == 202, response.text
    sid = response.json()["id"]
    assert wait_for_status(service, sid) == "verified"
    detail = httpx.get(f"{service['url']}/api/submissions/{sid}").json()
    assert detail["user"] == "alice" and detail["verification"]["status"] == "verified"
    board = httpx.get(service["url"] + "/api/board").json()
    assert board[0]["suite"] == "tiny" and board[0]["rows"][0]["name"] == "base"
    page = httpx.get(service["url"] + "/")
    assert 'class="ranked"' in page.text and "script-src" not in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    config_link = f"/api/submissions/{sid}/files/configs/inverted-pendulum-random-lb-v0.toml"
    assert config_link in page.text
    assert httpx.get(service["url"] + config_link).text.startswith("[algo]")
    assert httpx.get(f"{service['url']}/api/submissions/{sid}/files/../../etc/passwd"
                     ).status_code == 404
    # The same bundle again (any name) is a duplicate.
    again = post(service, variant(service, "base-again"), token="bob")
    assert again.status_code == 422 and "duplicate" in again.text


def test_auth_failures(service):
    data = variant(service, "auth-test", shift=0.001)
    assert post(service, data, token=None).status_code == 401
    assert post(service, data, token="offrl_wrong").status_code == 401
    response = httpx.post(service["url"] + "/api/submissions", content=data, headers={
        "Authorization": f"Basic {service['tokens']['alice']}",
        "Content-Type": "application/zip"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    names = [s["name"] for s in httpx.get(service["url"] + "/api/submissions").json()]
    assert "auth-test" not in names


def test_oversized_bodies(service):
    big = b"\0" * (MAX_UPLOAD + 1)
    assert post(service, big).status_code == 413                      # by Content-Length

    def chunks():
        for _ in range(40):
            yield b"\0" * 50_000
    response = post(service, chunks())                                # streamed, no length
    assert response.status_code == 413


def _zip(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
    return buffer.getvalue()


def _raw_submission(service, name, text):
    folder = service["tmp"] / "raw" / name
    shutil.copytree(service["bundle"], folder)
    (folder / "submission.json").write_text(text)
    write_checksums(folder)
    return pack_bundle(folder)


def test_malformed_bodies(service):
    assert post(service, b"this is not a zip").status_code == 400
    assert post(service, _zip([("hello.txt", b"hi")])).status_code == 400   # no submission
    assert post(service, b"{}", content_type="application/json").status_code == 415
    broken = _raw_submission(service, "broken", "{not json")
    response = post(service, broken)
    assert response.status_code == 422 and "not valid JSON" in response.text
    good = json.loads((service["bundle"] / "submission.json").read_text())
    good["name"] = "nan-returns"
    text = json.dumps(good).replace(str(good["datasets"][0]["results"][0]["returns"][0]),
                                    "NaN", 1)
    assert post(service, _raw_submission(service, "nan", text)).status_code == 422
    # A checksum mismatch: submission.json changed after SHA256SUMS was written.
    folder = service["tmp"] / "raw" / "tampered"
    shutil.copytree(service["bundle"], folder)
    good["name"] = "tampered"
    (folder / "submission.json").write_text(json.dumps(good))
    response = post(service, pack_bundle(folder))
    assert response.status_code == 400 and "sha256" in response.text
    # multipart without the 'bundle' field, then with it
    files = {"other": ("b.zip", b"x", "application/zip")}
    assert httpx.post(service["url"] + "/api/submissions", files=files, headers={
        "Authorization": f"Bearer {service['tokens']['bob']}"}).status_code == 400
    files = {"bundle": ("b.zip", variant(service, "via-multipart", shift=0.002),
                        "application/zip")}
    response = httpx.post(service["url"] + "/api/submissions", files=files, headers={
        "Authorization": f"Bearer {service['tokens']['bob']}"}, timeout=60)
    assert response.status_code == 202, response.text
    # The server is still healthy, and nothing malformed was stored.
    names = {s["name"] for s in httpx.get(service["url"] + "/api/submissions").json()}
    assert "via-multipart" in names and not names & {"broken", "nan-returns", "tampered"}


def test_hostile_names_and_strings(service):
    def rename(data):
        data["name"] = "<script>alert(1)</script>"
    response = post(service, variant(service, "hostile-name", shift=0.003, edit=rename))
    assert response.status_code == 422 and "name" in response.text
    assert post(service, _zip([("../../evil.txt", b"x")])).status_code == 400

    def describe(data):
        data["description"] = '<img src=x onerror="alert(1)"> "quoted" & <b>bold</b>'
        data["submitter"] = "</td><script>steal()</script>"
    response = post(service, variant(service, "hostile-text", shift=0.004, edit=describe))
    assert response.status_code == 202, response.text
    page = httpx.get(service["url"] + "/").text
    assert "<img src=x" not in page and "<script>steal" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page


def test_concurrent_uploads_lose_nothing(service):
    bodies = {f"conc-{i}": variant(service, f"conc-{i}", shift=0.01 * (i + 1)) for i in range(6)}
    jobs = [(name, body, "alice" if i % 2 else "bob")
            for i, (name, body) in enumerate(bodies.items())]
    jobs += [("conc-0", bodies["conc-0"], "alice")] * 3          # racing duplicates
    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(lambda job: (job[0], post(service, job[1], token=job[2])
                                           .status_code), jobs))
    accepted = [name for name, code in codes if code == 202]
    assert sorted(accepted) == sorted(bodies)                     # each exactly once
    assert all(code in (202, 409, 422) for _, code in codes)
    names = [s["name"] for s in httpx.get(service["url"] + "/api/submissions").json()]
    assert all(names.count(n) == 1 for n in bodies)
    assert service["store"].integrity_ok()


def test_inflated_upload_is_flagged_not_ranked(service):
    response = post(service, variant(service, "inflated", shift=25.0))
    assert response.status_code == 202, response.text
    assert wait_for_status(service, response.json()["id"]) == "flagged"
    board = httpx.get(service["url"] + "/api/board").json()[0]
    assert "inflated" not in [r["name"] for r in board["rows"]]
    assert "inflated" in [f["name"] for f in board["flagged"]]


def test_board_in_headless_chromium(service):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    # Self-contained under any test order or worker split: the board must hold "base".
    board = httpx.get(service["url"] + "/api/board").json()
    if not any(r["name"] == "base" for b in board for r in b["rows"]):
        response = post(service, pack_bundle(service["bundle"]))
        assert response.status_code == 202, response.text
        assert wait_for_status(service, response.json()["id"]) == "verified"
    profile = service["tmp"] / "chromium-profile"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--dump-dom", service["url"] + "/"],
        capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert 'class="ranked"' in dom, result.stderr[-2000:]
    assert 'data-rank="1"' in dom and 'data-name="base"' in dom
    assert "<script" not in dom.lower()


@pytest.mark.slow
def test_crash_mid_upload_loses_nothing(service, tmp_path):
    """kill -9 the server while an upload streams in; what was accepted survives."""
    db = f"sqlite:///{tmp_path / 'crash.db'}"
    token = Store(db).add_token("carol")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start():
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "offrl", "leaderboard", "serve", "--db", db, "--port",
             str(port), "--suite", str(service["suite_file"]), "--no-worker"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.kill()
        raise AssertionError(proc.stdout.read().decode()[-2000:])

    proc, url = start()
    try:
        first = httpx.post(url + "/api/submissions", content=pack_bundle(service["bundle"]),
                           headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": "application/zip"}, timeout=60)
        assert first.status_code == 202, first.text
        second = variant(service, "crash-second", shift=0.05)
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
            sock.sendall(b"POST /api/submissions HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer " + token.encode() + b"\r\n"
                         b"Content-Type: application/zip\r\n"
                         + f"Content-Length: {len(second)}\r\n\r\n".encode()
                         + second[: len(second) // 2])
            time.sleep(0.3)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, url = start()
    try:
        listed = httpx.get(url + "/api/submissions").json()
        assert [s["name"] for s in listed] == ["base"]
        assert Store(db).integrity_ok()
        retry = httpx.post(url + "/api/submissions", content=second,
                           headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": "application/zip"}, timeout=60)
        assert retry.status_code == 202
        assert len(httpx.get(url + "/api/submissions").json()) == 2
    finally:
        proc.terminate()
        proc.wait(30)
