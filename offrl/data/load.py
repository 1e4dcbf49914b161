"""`load_dataset(id)`: card → local file (downloaded, fetched from Minari or built) → Dataset.

Where things live in the cache (`$OFFRL_HOME`, see `offrl.data.download`):
  url cards     $OFFRL_HOME/datasets/<id>/<file name from the URL>
  recipe cards  $OFFRL_HOME/datasets/<id>/<id>.hdf5
  minari cards  Minari's own folder ($MINARI_DATASETS_PATH), read through offrl's flat cache
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from offrl.data.download import DownloadError, dataset_cache_dir, download, verified_sha256
from offrl.data.registry import DatasetCard, MinariSource, RecipeSource, UrlSource, get_card
from offrl.errors import UserError

if TYPE_CHECKING:
    from offrl.data.dataset import Dataset


# ---------------------------------------------------------------------------------- local files
def local_path(card: DatasetCard) -> Path:
    """Where the card's data lives (or will live) on this machine."""
    src = card.source
    if isinstance(src, UrlSource):
        return dataset_cache_dir(card.id) / src.filename
    if isinstance(src, RecipeSource):
        return dataset_cache_dir(card.id) / f"{card.id}.hdf5"
    from minari.storage.datasets_root_dir import get_dataset_path

    return Path(get_dataset_path(src.minari_id))


def is_cached(card: DatasetCard) -> bool:
    """True if the card's data is on this machine (not re-verified here)."""
    path = local_path(card)
    if isinstance(card.source, MinariSource):
        return (path / "data" / "main_data.hdf5").is_file() and (path / "data" / "metadata.json").is_file()
    return path.is_file()


def require_local(card: DatasetCard) -> Path:
    """The local path, or a UserError saying how to get the data."""
    if not is_cached(card):
        verb = "build" if isinstance(card.source, RecipeSource) else "download"
        raise UserError(f"{card.id} is not on this machine (expected at {local_path(card)}); "
                        f"run `offrl datasets {verb} {card.id}`")
    return local_path(card)


def _verify_local(card: DatasetCard, path: Path) -> str:
    """The sha256 of a cached file, checked against the card (url) or its build stamp (recipe);
    hashes only a file that changed since it was last verified."""
    src = card.source
    try:
        return verified_sha256(path, sha256=getattr(src, "sha256", None),
                               size=getattr(src, "bytes", None))
    except DownloadError as exc:
        verb = "build" if isinstance(src, RecipeSource) else "download"
        raise DownloadError(f"{exc}; the cached file was changed or damaged: run "
                            f"`offrl datasets {verb} {card.id} --force`") from exc


# ---------------------------------------------------------------------------------- fetching
def fetch(card: DatasetCard, *, progress: bool = True, force: bool = False) -> Path:
    """Make the card's data local: download (url), fetch from Minari, or build (recipe).

    A cached copy is re-verified (cheaply, via its `.verified` stamp) and reused unless `force`.
    Returns the local path.
    """
    src = card.source
    path = local_path(card)
    if isinstance(src, UrlSource):
        return download(src.url, path, sha256=src.sha256, size=src.bytes, progress=progress,
                        force=force)
    if isinstance(src, RecipeSource):
        if path.is_file() and not force:
            _verify_local(card, path)
            return path
        from offrl.data.generate import build_recipe

        return build_recipe(card, path, progress=progress)
    return fetch_minari(src.minari_id, force=force)


def fetch_minari(minari_id: str, *, force: bool = False) -> Path:
    """`minari.download_dataset(minari_id)` unless present; return Minari's dataset folder.

    Minari checks no hash; `load_dataset` checks the card's sha256 of the flattened arrays.
    """
    from minari.storage.datasets_root_dir import get_dataset_path

    path = Path(get_dataset_path(minari_id))
    if (path / "data" / "main_data.hdf5").is_file() and not force:
        return path
    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    try:
        import minari

        minari.download_dataset(minari_id, force_download=force)
    except ImportError as exc:
        raise UserError(f"cannot download Minari dataset {minari_id!r} from {remote}: Minari's "
                        f"remote support is not installed ({exc.name or exc}); install it with "
                        "`pip install 'minari[hf]'`, or put the dataset under "
                        f"{path.parent} (MINARI_DATASETS_PATH)") from exc
    except OSError as exc:  # urllib, requests and socket errors all derive from it
        raise UserError(f"cannot reach the Minari remote {remote}: {exc}; you appear to be "
                        f"offline; put the dataset under {path.parent} or set "
                        "MINARI_DATASETS_PATH") from exc
    except ValueError as exc:
        raise UserError(f"Minari dataset {minari_id!r}: {exc}") from exc
    return path


# ---------------------------------------------------------------------------------- loading
ARRAY_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def arrays_sha256(dataset: Dataset) -> str:
    """sha256 of the flattened step arrays: what a Minari card's `sha256` records.

    Covers, in ARRAY_KEYS order, each array's name, dtype, shape and C-order bytes (an absent
    `next_observations` counts as its name alone), so it does not depend on how a file was
    written or compressed. `offrl datasets info` prints it for cached Minari datasets.
    """
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for key in ARRAY_KEYS:
        arr = getattr(dataset, key)
        digest.update(key.encode())
        if arr is not None:
            digest.update(f"{arr.dtype.str}{arr.shape}".encode())
            digest.update(np.ascontiguousarray(arr).data)
    return digest.hexdigest()


def load_dataset(dataset: str | DatasetCard, *, progress: bool = True,
                 fetch_missing: bool = True) -> Dataset:
    """Load a registered dataset, fetching it first if needed; validated, with card metadata.

    dataset: a card id (e.g. "hopper-medium-v2") or a DatasetCard.
    fetch_missing: download / build data that is not cached (else raise UserError).
    The returned Dataset's metadata holds the card's fields (`DatasetCard.metadata`) and the
    file's sha256.
    """
    card = dataset if isinstance(dataset, DatasetCard) else get_card(dataset)
    path = fetch(card, progress=progress) if fetch_missing else require_local(card)
    meta = card.metadata()
    src = card.source
    if isinstance(src, MinariSource):
        from offrl.data.minari_io import read_minari

        data = read_minari(src.minari_id)
        got = arrays_sha256(data) if src.sha256 else None
        if src.sha256 and got != src.sha256:
            raise UserError(f"{card.id}: the arrays of Minari dataset {src.minari_id!r} do not "
                            f"match the card: expected sha256 {src.sha256}, got {got}")
        if got:
            meta["sha256"] = got
        data.metadata.update(meta)
    else:
        from offrl.data.hdf5 import read_hdf5

        meta["sha256"] = _verify_local(card, path)  # after `fetch` this only reads the stamp
        meta["source_path"] = str(path)
        data = read_hdf5(path, max_episode_steps=card.max_episode_steps, metadata=meta)
        data.metadata.update(meta)
    return data.validate(source=f"{card.id} ({path})", observation_shape=card.observation_shape,
                         action_shape=card.action_shape)


# ---------------------------------------------------------------------------------- any source
HDF5_SUFFIXES = (".hdf5", ".h5")
MINARI_PREFIX = "minari:"


def derived_dataset_path(dataset_id: str) -> Path:
    """Where a derived dataset (made by `offrl datasets hide-actions|label` or a sweep) lives:
    `$OFFRL_HOME/datasets/<id>/<id>.hdf5`."""
    return dataset_cache_dir(dataset_id) / f"{dataset_id}.hdf5"


def load_any_dataset(source: str, *, progress: bool = True, derived: bool = True) -> Dataset:
    """A dataset from wherever `source` names it: minari:ID, a Minari dataset folder, an .hdf5
    file, a registered dataset id, or (if `derived`) the id of a derived dataset in the cache.

    Registered ids are loaded with their card (`load_dataset`); files and derived datasets
    carry their own metadata. Raises UserError when `source` names none of these.
    """
    import difflib

    from offrl.data.registry import list_cards

    path = Path(source).expanduser()
    if source.startswith(MINARI_PREFIX):
        from offrl.data.minari_io import read_minari

        return read_minari(source[len(MINARI_PREFIX):])
    if path.is_dir():
        from offrl.data.minari_io import read_minari

        return read_minari(str(path))
    if path.is_file():
        if path.suffix not in HDF5_SUFFIXES:
            raise UserError(f"{source}: not an .hdf5 file; expected an .hdf5 file, minari:ID, a "
                            "Minari dataset folder or a dataset id")
        from offrl.data.hdf5 import read_hdf5

        return read_hdf5(path).validate(source=str(path))
    ids = [c.id for c in list_cards()]
    if source in ids:
        return load_dataset(source, progress=progress)
    if derived and "/" not in source and derived_dataset_path(source).is_file():
        from offrl.data.hdf5 import read_hdf5

        return read_hdf5(derived_dataset_path(source))
    if path.suffix in HDF5_SUFFIXES:
        raise UserError(f"{source}: no such file")
    close = difflib.get_close_matches(source, ids, n=3)
    hint = f" (did you mean: {', '.join(close)}?)" if close else ""
    also = (f", nor a derived dataset (no {derived_dataset_path(source)})"
            if derived and "/" not in source else "")
    raise UserError(f"{source!r} is not a file, a folder, minari:ID or a registered dataset "
                    f"id{also}{hint}")
