"""The bundle's checksum file, `SHA256SUMS`: one `<sha256>  <relative path>` line per file,
sorted by path, in the format `sha256sum -c` reads."""

from __future__ import annotations

import re
from pathlib import Path

from offrl.data.hashing import sha256_file
from offrl.errors import UserError

CHECKSUM_FILE = "SHA256SUMS"
NOT_COVERED = {CHECKSUM_FILE, "verification.json"}
_LINE = re.compile(r"^([0-9a-f]{64})  ([A-Za-z0-9._/-]{1,300})$")


class ChecksumError(UserError, ValueError):
    """A bundle whose files do not match its SHA256SUMS."""


def bundle_files(folder: Path) -> list[str]:
    """Relative paths (with /) of every regular file under `folder` that SHA256SUMS covers."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise ChecksumError(f"{folder}: {rel} is a symbolic link; bundles hold plain files")
        if path.is_file() and rel not in NOT_COVERED and not rel.endswith(".tmp"):
            out.append(rel)
    return out


def write_checksums(folder: Path) -> Path:
    """Write `folder/SHA256SUMS` for every file in the bundle."""
    lines = [f"{sha256_file(folder / rel)}  {rel}" for rel in bundle_files(folder)]
    path = folder / CHECKSUM_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def read_checksums(folder: Path) -> dict[str, str]:
    """{relative path: sha256} from `folder/SHA256SUMS`."""
    path = folder / CHECKSUM_FILE
    if not path.is_file():
        raise ChecksumError(f"{folder}: no {CHECKSUM_FILE} (every bundle has one)")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if not match or ".." in match.group(2).split("/"):
            raise ChecksumError(f"{path}, line {number}: expected '<sha256>  <relative path>'")
        sums[match.group(2)] = match.group(1)
    return sums


def check_checksums(folder: Path) -> dict[str, str]:
    """Check every file against SHA256SUMS, and that no file is missing or unlisted."""
    sums = read_checksums(folder)
    present = set(bundle_files(folder))
    missing = sorted(set(sums) - present)
    extra = sorted(present - set(sums))
    if missing:
        raise ChecksumError(f"{folder}: file(s) listed in {CHECKSUM_FILE} are missing: "
                            f"{', '.join(missing[:10])}")
    if extra:
        raise ChecksumError(f"{folder}: file(s) not listed in {CHECKSUM_FILE}: "
                            f"{', '.join(extra[:10])}")
    bad = [rel for rel, digest in sums.items() if sha256_file(folder / rel) != digest]
    if bad:
        raise ChecksumError(f"{folder}: sha256 differs from {CHECKSUM_FILE} for "
                            f"{', '.join(sorted(bad)[:10])} (the bundle was changed or damaged)")
    return sums
