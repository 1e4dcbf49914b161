"""A flat HDF5 cache of datasets that are slow to read in their own format (Minari).

A cache file is one `write_hdf5` file (uncompressed, with per-chunk fletcher32 checksums) whose
metadata records a fingerprint of its source. It is used only when the fingerprint still
matches and the file reads back cleanly and validates; otherwise it is ignored and rebuilt.
Nothing in a cache is ever trusted over its source.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py

from offrl.data.dataset import Dataset
from offrl.data.hdf5 import METADATA_JSON_KEY, read_hdf5, write_hdf5

log = logging.getLogger(__name__)

# Bump when the conversion into the cache changes, so old caches are rebuilt.
CACHE_FORMAT = 1
FINGERPRINT_KEY = "cache_fingerprint"


def offrl_home() -> Path:
    """$OFFRL_HOME, default ~/.offrl."""
    return Path(os.environ.get("OFFRL_HOME") or "~/.offrl").expanduser()


def cache_path(kind: str, dataset_id: str) -> Path:
    """$OFFRL_HOME/cache/<kind>/<dataset_id>/flat.hdf5 (ids may contain '/', never '..')."""
    parts = [p if p not in ("", ".", "..") else "_" for p in dataset_id.split("/")]
    return offrl_home().joinpath("cache", kind, *parts, "flat.hdf5")


def fingerprint(files: Iterable[Path]) -> dict[str, Any]:
    """Size and mtime_ns of each source file (absolute paths): cheap, and changes on rewrite."""
    prints: dict[str, Any] = {"cache_format": CACHE_FORMAT}
    for f in files:
        st = Path(f).stat()
        prints[str(Path(f).resolve())] = [st.st_size, st.st_mtime_ns]
    return prints


def load_cached(path: Path, expected: dict[str, Any]) -> Dataset | None:
    """The cached Dataset when `path` exists, matches `expected` and reads cleanly; else None."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:  # peek at the fingerprint before reading the arrays
            stored = json.loads(f[METADATA_JSON_KEY].asstr()[()]).get(FINGERPRINT_KEY)
        if stored != expected:
            log.info("cache %s is stale; rebuilding", path)
            return None
        dataset = read_hdf5(path)
    except Exception as e:  # noqa: BLE001 - whatever is wrong with a cache, rebuilding fixes it
        # Corrupt or half-readable cache: never trusted, rebuilt by the caller.
        log.warning("ignoring unreadable cache %s (%s)", path, e)
        return None
    dataset.metadata.pop(FINGERPRINT_KEY, None)
    return dataset


def store_cached(dataset: Dataset, path: Path, source_fingerprint: dict[str, Any]) -> None:
    """Write the cache atomically; a failure only costs speed, so it is logged, not raised."""
    tagged = dataset.replace(metadata={**dataset.metadata, FINGERPRINT_KEY: source_fingerprint})
    try:
        write_hdf5(tagged, path, compression=None, fletcher32=True)
    except OSError as e:
        log.warning("could not write cache %s (%s)", path, e)
