"""Download one file into the cache, resuming and checking its size and sha256.

The cache is `$OFFRL_HOME` (default `~/.offrl`); a dataset's files live in
`$OFFRL_HOME/datasets/<dataset id>/`. A download streams into `<dest>.part`, resumes that
file with an HTTP Range request when the server allows it, and is moved onto `dest` with
`os.replace` only after its size and sha256 match, so a good cached copy is never lost to a
failed download and a half-written file is never mistaken for a dataset.

A verified file gets a small `<dest>.verified` stamp (size, mtime, sha256) so that later loads
re-hash it only when the file changed.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from offrl.data.cache import offrl_home
from offrl.errors import UserError

CHUNK_BYTES = 1 << 20
HOME_ENV_VAR = "OFFRL_HOME"  # the cache root; see `offrl.data.cache.offrl_home`


class DownloadError(UserError):
    """A download failed or its file did not match the card. The message names the URL."""


class _Retryable(Exception):
    """The connection broke mid-transfer; try again (resuming where possible)."""


# ---------------------------------------------------------------------------------- cache paths
def dataset_cache_dir(dataset_id: str) -> Path:
    """`$OFFRL_HOME/datasets/<dataset_id>` (not created)."""
    return offrl_home() / "datasets" / dataset_id


# ---------------------------------------------------------------------------------- verification
def _sha256(path: Path) -> str:
    from offrl.data import hashing

    return hashing.sha256_file(path)


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def read_stamp(path: str | os.PathLike) -> dict | None:
    """The `.verified` stamp of `path` ({"size", "mtime_ns", "sha256"}), or None."""
    try:
        stamp = json.loads(_stamp_path(Path(path)).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(path: str | os.PathLike, sha256: str) -> None:
    """Record that `path`, as it is now (size, mtime), has this sha256."""
    path = Path(path)
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    tmp = _stamp_path(path).with_suffix(".verified.tmp")
    tmp.write_text(json.dumps(stamp) + "\n")
    os.replace(tmp, _stamp_path(path))


def verified_sha256(path: str | os.PathLike, *, sha256: str | None = None,
                    size: int | None = None) -> str:
    """Check a cached file against its expected size and sha256; return its sha256.

    The file is hashed only if its stamp is missing or its size or mtime changed since the
    stamp was written. With `sha256=None` the expected hash is the one the stamp recorded
    (files we generated); a file with neither is hashed and stamped as it is.
    Raises DownloadError naming the file, expected vs got.
    """
    path = Path(path)
    st = path.stat()
    if size is not None and st.st_size != size:
        raise DownloadError(f"{path}: size mismatch: expected {size} bytes, got {st.st_size}")
    stamp = read_stamp(path)
    expected = sha256 or (stamp or {}).get("sha256")
    if (stamp and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns
            and stamp.get("sha256") == expected):
        return expected
    got = _sha256(path)
    if expected and got != expected:
        raise DownloadError(f"{path}: checksum mismatch: expected sha256 {expected}, got {got}")
    write_stamp(path, got)
    return got


# ---------------------------------------------------------------------------------- download
def download(url: str, dest: str | os.PathLike, *, sha256: str, size: int, progress: bool = True,
             timeout: float = 30, retries: int = 3, retry_wait: float = 1.0,
             force: bool = False) -> Path:
    """Fetch `url` to `dest` unless a verified copy is there; return `dest`.

    size: expected bytes; sha256: expected hex digest. A broken connection is retried up to
    `retries` times (waiting `retry_wait` × attempt seconds), resuming from the `.part` file
    when the server answers Range requests with 206. `force` downloads again even when the
    cached copy is good; the cached copy is replaced only by a verified new one.
    """
    dest = Path(dest)
    if dest.exists() and not force:
        try:
            verified_sha256(dest, sha256=sha256, size=size)
            return dest
        except DownloadError as exc:
            print(f"offrl: cached copy fails its check ({exc}); downloading again",
                  file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    last_problem = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(retry_wait * attempt)
        try:
            _fetch_into_part(url, part, dest, size=size, timeout=timeout, progress=progress)
            break
        except _Retryable as exc:
            last_problem = str(exc)
    else:
        have = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            f"downloading {url} failed after {retries + 1} attempts: {last_problem}; "
            f"{part} keeps the {have} bytes received and the next try resumes from there")

    got_size = part.stat().st_size
    if got_size != size:
        part.unlink()
        raise DownloadError(f"{url}: size mismatch: expected {size} bytes, got {got_size}; "
                            "the partial download was deleted")
    got_sha = _sha256(part)
    if got_sha != sha256:
        part.unlink()
        kept = f"; the cached copy at {dest} was kept" if dest.exists() else ""
        raise DownloadError(f"{url}: checksum mismatch: expected sha256 {sha256}, got {got_sha}; "
                            f"the download was deleted{kept}")
    os.replace(part, dest)
    write_stamp(dest, got_sha)
    return dest


def _offline_error(url: str, dest: Path, reason: object) -> DownloadError:
    host = urlparse(url).netloc or url
    return DownloadError(f"cannot reach {host}: {reason}; you appear to be offline; put the file "
                         f"at {dest} or set {HOME_ENV_VAR} to a cache that has it")


def _fetch_into_part(url: str, part: Path, dest: Path, *, size: int, timeout: float,
                     progress: bool) -> None:
    """One attempt: append to (206) or rewrite (200) `part` until the body ends."""
    from tqdm.auto import tqdm

    from offrl import __version__

    offset = part.stat().st_size if part.exists() else 0
    if offset > size:  # not a prefix of the file we want
        part.unlink()
        offset = 0
    if offset == size:
        return  # complete already; the caller verifies it
    headers = {"User-Agent": f"offrl/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # our .part is not something the server can resume
            part.unlink()
            raise _Retryable(f"{url}: server refused to resume at byte {offset}") from exc
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retryable(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:  # no connection at all (refused, DNS, unreachable)
        raise _offline_error(url, dest, exc.reason) from exc
    except (ConnectionError, TimeoutError, http.client.HTTPException) as exc:
        raise _Retryable(f"{url}: connection lost before the response: {exc!r}") from exc

    with resp:
        if resp.status == 206:
            content_range = resp.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                part.unlink()
                raise _Retryable(f"{url}: server resumed at the wrong place ({content_range!r})")
            mode = "ab"
        else:  # 200: the server sent the whole file (no Range support); start again
            offset, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        with open(part, mode) as f, tqdm(total=size, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=dest.name, disable=not progress,
                                         leave=False) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retryable(f"{url}: connection lost after {offset + received} of "
                                     f"{size} bytes: {exc!r}") from exc
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if offset + received > size:
                    break  # too long: stop reading; the size check reports it
        if expected is not None and received < expected:
            raise _Retryable(f"{url}: connection closed after {offset + received} of {size} bytes")
