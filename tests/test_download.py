"""Downloads against a local HTTP server (127.0.0.1, port 0) serving files the tests make."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from offrl.data import download as dl
from offrl.data import hashing
from offrl.data.download import DownloadError, download, read_stamp, verified_sha256
from offrl.errors import UserError

BODY = np.random.default_rng(0).bytes(300_000)
SHA = hashlib.sha256(BODY).hexdigest()


class FileServer:
    """Serves `routes[path] = (body, mode)`; records (path, Range header) of every request.

    modes: "good" (Range → 206), "truncate" (always sends half the body, then closes),
    "drop-first" (the first request gets half and a closed connection; Range → 206 after),
    "no-range" (like drop-first, but ignores Range: always 200 with the whole file).
    A path with no route answers 404.
    """

    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path not in server.routes:
                    self.send_error(404, "Not Found")
                    return
                body, mode = server.routes[self.path]
                first_hit = sum(p == self.path for p, _ in server.requests) == 1
                start, rng = 0, self.headers.get("Range")
                if rng and mode in ("good", "drop-first"):
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                if mode != "no-range":
                    self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if mode == "truncate" or (mode in ("drop-first", "no-range") and first_hit):
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def hits(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


def fetch(server, path, dest, **kw):
    kw = {"sha256": SHA, "size": len(BODY), "progress": False, "retries": 2, "retry_wait": 0,
          "timeout": 5, **kw}
    return download(server.url(path), dest, **kw)


def test_good_file_is_verified_and_stamped(server, tmp_path):
    server.routes["/d.hdf5"] = (BODY, "good")
    dest = tmp_path / "cache" / "d.hdf5"
    assert fetch(server, "/d.hdf5", dest) == dest
    assert dest.read_bytes() == BODY and not dest.with_name("d.hdf5.part").exists()
    stamp = read_stamp(dest)
    assert stamp["sha256"] == SHA and stamp["size"] == len(BODY)
    fetch(server, "/d.hdf5", dest)  # cached: no second request
    assert len(server.hits("/d.hdf5")) == 1


def test_wrong_checksum_deletes_the_part_and_names_url(server, tmp_path):
    server.routes["/bad.hdf5"] = (BODY, "good")
    dest = tmp_path / "bad.hdf5"
    with pytest.raises(DownloadError) as err:
        fetch(server, "/bad.hdf5", dest, sha256="0" * 64)
    msg = str(err.value)
    assert server.url("/bad.hdf5") in msg and f"expected sha256 {'0' * 64}, got {SHA}" in msg
    assert not dest.exists() and not dest.with_name("bad.hdf5.part").exists()


def test_wrong_size_is_reported(server, tmp_path):
    server.routes["/short.hdf5"] = (BODY[:-10], "good")
    with pytest.raises(DownloadError, match=f"expected {len(BODY)} bytes, got {len(BODY) - 10}"):
        fetch(server, "/short.hdf5", tmp_path / "short.hdf5")
    assert not (tmp_path / "short.hdf5.part").exists()


def test_truncated_body_retries_then_fails_clearly(server, tmp_path):
    server.routes["/t.hdf5"] = (BODY, "truncate")
    dest = tmp_path / "t.hdf5"
    with pytest.raises(DownloadError) as err:
        fetch(server, "/t.hdf5", dest, retries=2)
    msg = str(err.value)
    assert "failed after 3 attempts" in msg and "connection closed after" in msg
    assert server.url("/t.hdf5") in msg
    assert len(server.hits("/t.hdf5")) == 3 and not dest.exists()


def test_404_names_url_and_status(server, tmp_path):
    with pytest.raises(DownloadError) as err:
        fetch(server, "/missing.hdf5", tmp_path / "m.hdf5")
    assert f"{server.url('/missing.hdf5')}: HTTP 404" in str(err.value)
    assert len(server.hits("/missing.hdf5")) == 1  # a 404 is not retried


def test_dropped_connection_resumes_with_range(server, tmp_path):
    server.routes["/r.hdf5"] = (BODY, "drop-first")
    dest = tmp_path / "r.hdf5"
    fetch(server, "/r.hdf5", dest)
    assert dest.read_bytes() == BODY
    assert server.hits("/r.hdf5") == [None, f"bytes={len(BODY) // 2}-"]


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.routes["/n.hdf5"] = (BODY, "no-range")
    dest = tmp_path / "n.hdf5"
    fetch(server, "/n.hdf5", dest)
    assert dest.read_bytes() == BODY
    assert server.hits("/n.hdf5") == [None, f"bytes={len(BODY) // 2}-"]  # asked, got 200


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    server.routes["/p.hdf5"] = (BODY, "good")
    dest = tmp_path / "p.hdf5"
    dest.with_name("p.hdf5.part").write_bytes(BODY[:1000])
    fetch(server, "/p.hdf5", dest)
    assert dest.read_bytes() == BODY and server.hits("/p.hdf5") == ["bytes=1000-"]


def test_oversized_stale_part_is_discarded(server, tmp_path):
    server.routes["/o.hdf5"] = (BODY, "good")
    dest = tmp_path / "o.hdf5"
    dest.with_name("o.hdf5.part").write_bytes(BODY + b"junk")
    fetch(server, "/o.hdf5", dest)
    assert dest.read_bytes() == BODY and server.hits("/o.hdf5") == [None]


def test_good_cached_copy_survives_failed_redownload(server, tmp_path):
    server.routes["/c.hdf5"] = (BODY, "good")
    dest = tmp_path / "c.hdf5"
    fetch(server, "/c.hdf5", dest)
    stamp = read_stamp(dest)
    server.routes["/c.hdf5"] = (BODY[::-1], "good")  # the server now serves the wrong bytes
    with pytest.raises(DownloadError, match="was kept"):
        fetch(server, "/c.hdf5", dest, force=True)
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server, "/gone.hdf5", dest, force=True)
    server.routes["/c.hdf5"] = (BODY, "truncate")
    with pytest.raises(DownloadError, match="failed after"):
        fetch(server, "/c.hdf5", dest, force=True)
    assert dest.read_bytes() == BODY and read_stamp(dest) == stamp
    assert fetch(server, "/c.hdf5", dest) == dest  # still verifies without the network


def test_offline_message(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "x.hdf5"
    with pytest.raises(UserError) as err:
        download(f"http://127.0.0.1:{port}/x.hdf5", dest, sha256=SHA, size=len(BODY),
                 progress=False, retry_wait=0)
    msg = str(err.value)
    assert f"cannot reach 127.0.0.1:{port}" in msg and "you appear to be offline" in msg
    assert str(dest) in msg and "OFFRL_HOME" in msg


def test_cached_file_is_hashed_once_then_rehashed_when_changed(server, tmp_path, monkeypatch):
    server.routes["/h.hdf5"] = (BODY, "good")
    dest = tmp_path / "h.hdf5"
    fetch(server, "/h.hdf5", dest)
    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        assert verified_sha256(dest, sha256=SHA, size=len(BODY)) == SHA
    assert calls == []  # the stamp matches: no re-hash
    corrupt = bytearray(BODY)
    corrupt[5] ^= 0xFF
    dest.write_bytes(bytes(corrupt))
    os.utime(dest, ns=(1, 1))  # make sure the mtime differs from the stamp's
    with pytest.raises(DownloadError, match="checksum mismatch"):
        verified_sha256(dest, sha256=SHA, size=len(BODY))
    assert len(calls) == 1
    fetch(server, "/h.hdf5", dest)  # a corrupt cached copy is replaced by a good download
    assert dest.read_bytes() == BODY and len(server.hits("/h.hdf5")) == 2


def test_load_dataset_from_a_url_card(server, tmp_path, monkeypatch, offrl_home):
    """End to end: a card in $OFFRL_CARDS → download into $OFFRL_HOME → validated Dataset."""
    from offrl.data.dataset import Dataset
    from offrl.data.hdf5 import write_hdf5
    from offrl.data.load import is_cached, load_dataset, local_path
    from offrl.data.registry import get_card

    rng = np.random.default_rng(1)
    n = 30
    data = Dataset(observations=rng.normal(size=(n, 11)).astype(np.float32),
                   actions=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
                   rewards=rng.normal(size=n).astype(np.float32),
                   terminals=np.eye(1, n, 9, dtype=bool)[0], timeouts=np.eye(1, n, 19, dtype=bool)[0],
                   episode_starts=[0, 10, 20])
    src = tmp_path / "tiny.hdf5"
    write_hdf5(data, src)
    body = src.read_bytes()
    server.routes["/files/tiny_medium-v2.hdf5"] = (body, "drop-first")
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "tiny-medium-v2.toml").write_text(f"""\
id = "tiny-medium-v2"
env_id = "Hopper-v4"
description = "a tiny file served by the test"
max_episode_steps = 1000

[source]
url = "{server.url('/files/tiny_medium-v2.hdf5')}"
bytes = {len(body)}
sha256 = "{hashlib.sha256(body).hexdigest()}"

[scores]
ref_min_score = -20.272305
ref_max_score = 3234.3
approximate = false

[spaces]
observation_shape = [11]
action_shape = [3]
""")
    monkeypatch.setenv("OFFRL_CARDS", str(cards))
    card = get_card("tiny-medium-v2")
    assert not is_cached(card)
    monkeypatch.setattr(dl, "download", lambda *a, **k: download(*a, **{**k, "retry_wait": 0}))
    loaded = load_dataset("tiny-medium-v2", progress=False)
    assert local_path(card) == offrl_home / "datasets" / "tiny-medium-v2" / "tiny_medium-v2.hdf5"
    assert is_cached(card) and local_path(card).read_bytes() == body
    np.testing.assert_array_equal(loaded.observations, data.observations)
    np.testing.assert_array_equal(loaded.episode_starts, [0, 10, 20])
    assert loaded.metadata["dataset_id"] == "tiny-medium-v2"
    assert loaded.metadata["ref_max_score"] == 3234.3
    assert loaded.metadata["sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.skipif(importlib.util.find_spec("huggingface_hub") is not None,
                    reason="Minari's remote support is installed; this checks the message without it")
def test_minari_remote_without_its_extra_says_what_to_install(offrl_home):
    from offrl.data.load import fetch_minari

    with pytest.raises(UserError, match=r"pip install 'minari\[hf\]'"):
        fetch_minari("mujoco/hopper/medium-v0")


def test_minari_card_loads_a_local_dataset_and_checks_its_arrays(tmp_path, monkeypatch,
                                                                 offrl_home):
    """A Minari-source card whose data is already local: no network, sha256 of the arrays."""
    from offrl.data.dataset import Dataset
    from offrl.data.load import arrays_sha256, is_cached, load_dataset
    from offrl.data.minari_io import write_minari
    from offrl.data.registry import get_card

    rng = np.random.default_rng(2)
    obs = rng.normal(size=(21, 11))
    data = Dataset(observations=obs[:-1], next_observations=obs[1:],
                   actions=rng.uniform(-1, 1, (20, 3)), rewards=rng.normal(size=20),
                   terminals=np.eye(1, 20, 19, dtype=bool)[0], timeouts=np.zeros(20, bool),
                   episode_starts=[0])
    write_minari(data, "test/tiny/local-v0")
    sha = arrays_sha256(data)
    cards = tmp_path / "cards"
    cards.mkdir()
    card_text = """\
id = "{id}"
env_id = "Hopper-v5"
description = "a local Minari dataset"
max_episode_steps = 1000

[source]
minari_id = "test/tiny/local-v0"
sha256 = "{sha}"

[scores]
approximate = false

[spaces]
observation_shape = [11]
action_shape = [3]
"""
    (cards / "tiny-minari-v0.toml").write_text(card_text.format(id="tiny-minari-v0", sha=sha))
    (cards / "tiny-minari-bad-v0.toml").write_text(
        card_text.format(id="tiny-minari-bad-v0", sha="0" * 64))
    monkeypatch.setenv("OFFRL_CARDS", str(cards))
    assert is_cached(get_card("tiny-minari-v0"))
    loaded = load_dataset("tiny-minari-v0", progress=False)
    np.testing.assert_array_equal(loaded.observations, data.observations)
    assert loaded.metadata["dataset_id"] == "tiny-minari-v0" and loaded.metadata["sha256"] == sha
    assert loaded.metadata["ref_min_score"] is None
    with pytest.raises(UserError, match=f"expected sha256 {'0' * 64}, got {sha}"):
        load_dataset("tiny-minari-bad-v0", progress=False)
