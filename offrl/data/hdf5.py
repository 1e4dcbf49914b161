"""D4RL-layout HDF5 files <-> `Dataset`.

File layout (every key is a plain HDF5 dataset, readable with nothing but h5py):

    observations       (N, obs_dim) float32/float64    required
    actions            (N, act_dim) float              absent in action-free files
    rewards            (N,) or (N, 1) float            required
    terminals          (N,) or (N, 1) bool or 0/1      required
    timeouts           (N,) bool or 0/1                optional (older D4RL files lack it)
    next_observations  (N, obs_dim) float              optional
    labelled           (N,) bool                       optional; written only when some rows are not
    infos/<name>       (N, ...)                        -> Dataset.infos[<name>] (nested: 'a/b')
    anything else      e.g. metadata/algorithm, metadata/policy/fc0/weight
                       -> Dataset.extras[<path>], exact dtype and shape (0-d for scalars)
    metadata/offrl/metadata_json     our Dataset.metadata as a JSON string (written by us)
    metadata/offrl/episode_starts    (E,) int64, written only when the flags cannot imply them

Scalars and strings under `metadata/` are also shown, decoded, in
`Dataset.metadata["file_metadata"]` (a read-only summary: `extras` is what gets written back).
Everything under `metadata/` is skipped by D4RL's own `sequence_dataset`, so files we write stay
usable by D4RL code. HDF5 attributes are not carried over.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from offrl.data.dataset import Dataset, DatasetError
from offrl.data.hashing import atomic_output

OFFRL_GROUP = "metadata/offrl"
METADATA_JSON_KEY = f"{OFFRL_GROUP}/metadata_json"
EPISODE_STARTS_KEY = f"{OFFRL_GROUP}/episode_starts"
STEP_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations",
             "labelled")
# Metadata that describes the file a Dataset was read from, not the data: writers drop it.
SOURCE_KEYS = frozenset({"source_path", "source_format", "sha256", "file_metadata",
                         "minari_metadata"})
DEFAULT_MAX_EPISODE_STEPS = 1000


# ---------------------------------------------------------------------------------------- read
def read_hdf5(path: str | os.PathLike, *, max_episode_steps: int | None = None,
              metadata: dict[str, Any] | None = None, load_infos: bool = True) -> Dataset:
    """Load a D4RL-layout HDF5 file, validated, keeping the stored dtypes.

    `max_episode_steps` splits episodes in files without `timeouts` (D4RL's fallback); None
    means the value the file recorded, else 1000. `metadata` (e.g. a card's fields) is merged
    over what the file recorded. `load_infos=False` skips `infos/*` (in Hopper-shaped files
    qpos/qvel are float64 and about 60% of the bytes to decompress); training does not need
    them, but a Dataset read that way writes back without them.
    Raises DatasetError naming the file and key on bad input.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "no such file"
        raise DatasetError(f"{path}: {what}")
    try:
        with h5py.File(path, "r") as f:
            raw = _read_all_datasets(f, path, load_infos)
    except (OSError, RuntimeError) as e:  # h5py's errors for truncated, corrupt or non-HDF5 files
        raise DatasetError(f"{path}: cannot open as HDF5 ({e}); the file is truncated, corrupt "
                           "or not an HDF5 file") from e
    return _dataset_from_arrays(raw, path, max_episode_steps, metadata)


def _read_all_datasets(f: h5py.File, path: Path, load_infos: bool = True) -> dict[str, Any]:
    """{path in file: numpy array (0-d for scalars)} for every dataset, read whole (no row loop)."""
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    if not load_infos:
        names = [n for n in names if not n.startswith("infos/")]
    out: dict[str, Any] = {}
    for name in names:
        ds = f[name]
        if ds.shape is None:  # HDF5 empty (null) dataspace: nothing to keep
            continue
        try:
            value = ds[()]
        except (OSError, RuntimeError, ValueError) as e:
            raise DatasetError(f"{path}: key '{name}' cannot be read ({e}); the file is truncated "
                               "or corrupt") from e
        # Scalars come back as numpy scalars or bytes; keep them as 0-d arrays of the stored
        # dtype (h5py's string dtypes included) so that writing back reproduces them exactly.
        out[name] = value if isinstance(value, np.ndarray) else np.array(value, dtype=ds.dtype)
    return out


def _dataset_from_arrays(raw: dict[str, Any], path: Path, max_episode_steps: int | None,
                         metadata: dict[str, Any] | None) -> Dataset:
    def fail(key: str, problem: str) -> None:
        raise DatasetError(f"{path}: '{key}' {problem}")

    missing = [k for k in ("observations", "rewards", "terminals") if k not in raw]
    if missing:
        names = ", ".join(repr(k) for k in missing)
        raise DatasetError(f"{path}: missing required key(s) {names}; "
                           "a D4RL-layout file needs 'observations' (N, obs_dim), 'rewards' (N,) "
                           "and 'terminals' (N,)")
    obs = raw.pop("observations")
    if obs.ndim != 2:
        fail("observations", f"has shape {obs.shape}; expected (N, obs_dim)")
    _require_float(path, "observations", obs)
    n = obs.shape[0]

    rewards = _column(path, "rewards", raw.pop("rewards"), n)
    _require_float(path, "rewards", rewards)
    terminals = _flags(path, "terminals", raw.pop("terminals"), n)
    has_timeouts = "timeouts" in raw
    timeouts = (_flags(path, "timeouts", raw.pop("timeouts"), n) if has_timeouts
                else np.zeros(n, dtype=bool))
    labelled = _flags(path, "labelled", raw.pop("labelled"), n) if "labelled" in raw else None
    next_obs = raw.pop("next_observations", None)
    if next_obs is not None:
        if next_obs.shape != obs.shape:
            fail("next_observations", f"has shape {next_obs.shape}; expected {obs.shape} like "
                 "'observations'")
        _require_float(path, "next_observations", next_obs)

    meta: dict[str, Any] = {}
    if METADATA_JSON_KEY in raw:
        meta.update(_decode_metadata_json(path, raw.pop(METADATA_JSON_KEY)))
    meta.update(metadata or {})

    actions = raw.pop("actions", None)
    if actions is None:
        # Action-free file: every row unlabelled (NaN actions); the width comes from metadata
        # ("action_dim", or a card's "action_shape") when recorded, else it is 0.
        actions = np.full((n, action_width(meta)), np.nan, dtype=np.float32)
        labelled = np.zeros(n, dtype=bool)
    elif actions.ndim != 2 or actions.shape[0] != n:
        fail("actions", f"has shape {actions.shape}; expected (N, act_dim) with N = {n} rows "
             "like 'observations'")
    _require_float(path, "actions", actions)

    episode_starts = raw.pop(EPISODE_STARTS_KEY, None)
    if not has_timeouts:
        meta["max_episode_steps"] = int(max_episode_steps or meta.get("max_episode_steps")
                                        or DEFAULT_MAX_EPISODE_STEPS)
    if episode_starts is None:
        episode_starts = Dataset.episode_starts_from_flags(
            terminals, timeouts, None if has_timeouts else meta["max_episode_steps"])
    elif episode_starts.ndim != 1 or not np.issubdtype(episode_starts.dtype, np.integer):
        fail(EPISODE_STARTS_KEY, f"has shape {episode_starts.shape} and dtype "
             f"{episode_starts.dtype}; expected (E,) integers")

    infos, extras = {}, {}
    for key, value in raw.items():
        if key.startswith("infos/"):
            if value.ndim == 0 or value.shape[0] != n:
                fail(key, f"has shape {value.shape}; expected {n} rows like 'observations'")
            infos[key[len("infos/"):]] = value
        else:
            extras[key] = value
    file_metadata = file_metadata_summary(extras)
    meta.update(source_path=str(path), source_format="hdf5", has_timeouts=has_timeouts)
    if file_metadata:
        meta["file_metadata"] = file_metadata

    dataset = Dataset(observations=obs, actions=actions, rewards=rewards, terminals=terminals,
                      timeouts=timeouts, episode_starts=episode_starts, next_observations=next_obs,
                      labelled=labelled, infos=infos, extras=extras, metadata=meta)
    return dataset.validate(source=str(path))


def action_width(meta: dict[str, Any]) -> int:
    """Columns of the action rows of an action-free source: metadata "action_dim", else the
    product of "action_shape" (a card's), else 0."""
    if meta.get("action_dim") is not None:
        return int(meta["action_dim"])
    shape = meta.get("action_shape")
    return int(np.prod(shape)) if shape else 0


def file_metadata_summary(extras: dict[str, np.ndarray]) -> dict[str, Any]:
    """{name: value} of the scalars and strings under `metadata/`, decoded for people to read."""
    return {k[len("metadata/"):]: _plain(v) for k, v in extras.items()
            if k.startswith("metadata/") and (v.ndim == 0 or _is_string(v))}


def _require_float(path: Path, key: str, arr: np.ndarray) -> None:
    if not np.issubdtype(arr.dtype, np.floating):
        raise DatasetError(f"{path}: '{key}' has dtype {arr.dtype}; expected float32 or float64")


def _column(path: Path, key: str, arr: np.ndarray, n: int) -> np.ndarray:
    """(N,) view of a per-step scalar stored as (N,) or (N, 1)."""
    if arr.shape == (n, 1):
        return arr.reshape(n)
    if arr.shape != (n,):
        raise DatasetError(f"{path}: '{key}' has shape {arr.shape}; expected ({n},) or ({n}, 1) "
                           "(one value per row of 'observations')")
    return arr


def _flags(path: Path, key: str, arr: np.ndarray, n: int) -> np.ndarray:
    """(N,) bool from flags stored as bool or as 0/1 numbers (float or int files exist)."""
    arr = _column(path, key, arr, n)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.number) and np.isin(arr, (0, 1)).all()):
        raise DatasetError(f"{path}: '{key}' has dtype {arr.dtype} with values other than 0 and 1; "
                           "expected bool flags")
    return arr != 0


def _decode_metadata_json(path: Path, value: np.ndarray) -> dict[str, Any]:
    try:
        decoded = json.loads(_plain(value))
        if not isinstance(decoded, dict):
            raise TypeError("not a JSON object")
        return decoded
    except (ValueError, TypeError) as e:
        raise DatasetError(f"{path}: '{METADATA_JSON_KEY}' is not a JSON object ({e})") from e


def _is_string(arr: np.ndarray) -> bool:
    return h5py.check_string_dtype(arr.dtype) is not None or arr.dtype.kind in "SU"


def _plain(value: np.ndarray) -> Any:
    """JSON-able Python value of a scalar or string array (bytes decoded as UTF-8)."""
    obj = value.tolist()

    def decode(x: Any) -> Any:
        if isinstance(x, bytes):
            return x.decode("utf-8", errors="replace")
        if isinstance(x, list):
            return [decode(v) for v in x]
        return x
    return decode(obj)


# --------------------------------------------------------------------------------------- write
def write_hdf5(dataset: Dataset, path: str | os.PathLike, *, compression: str | None = "gzip",
               compression_level: int = 1, chunk_bytes: int = 1 << 20,
               fletcher32: bool = False) -> Path:
    """Write `dataset` in D4RL layout, atomically (temp file in the same folder + os.replace).

    compression: "gzip" (level `compression_level`, with the byte-shuffle filter, the default),
    "lzf", or None. Step arrays are chunked by rows, about `chunk_bytes` per chunk: with gzip
    level 1 + shuffle a 1M-row Hopper file reads about 2x faster than h5py's default gzip.
    `fletcher32` adds per-chunk checksums so corrupt bytes fail loudly on read (used by caches).
    """
    path = Path(path)
    dataset.validate(source=str(path))
    if compression not in ("gzip", "lzf", None):
        raise ValueError(f"compression must be 'gzip', 'lzf' or None, not {compression!r}")
    n = len(dataset)

    def put_rows(f: h5py.File, key: str, arr: np.ndarray) -> None:
        """A per-step (N, ...) array, chunked by rows and compressed."""
        if n == 0:
            f.create_dataset(key, data=arr)
            return
        row_bytes = max(1, arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
        chunks = (int(min(n, max(1, chunk_bytes // row_bytes))),) + arr.shape[1:]
        options: dict[str, Any] = {"chunks": chunks, "fletcher32": fletcher32}
        if compression == "gzip":
            options.update(compression="gzip", compression_opts=compression_level, shuffle=True)
        elif compression == "lzf":
            options.update(compression="lzf")
        f.create_dataset(key, data=arr, **options)

    has_timeouts = bool(dataset.metadata.get("has_timeouts", True)) or bool(dataset.timeouts.any())
    limit = dataset.metadata.get("max_episode_steps", DEFAULT_MAX_EPISODE_STEPS)
    implied_starts = Dataset.episode_starts_from_flags(
        dataset.terminals, dataset.timeouts, None if has_timeouts else int(limit))
    reserved = [k for k in dataset.extras
                if k in STEP_KEYS or k.startswith(("infos/", OFFRL_GROUP + "/"))]
    if reserved:
        raise DatasetError(f"{path}: extras key(s) {reserved} collide with keys the writer owns")
    metadata_json = json.dumps({k: v for k, v in dataset.metadata.items() if k not in SOURCE_KEYS},
                               default=_json_default, sort_keys=True)

    # h5py closes the file before atomic_output moves it into place (contexts exit inner first).
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        put_rows(f, "observations", dataset.observations)
        if dataset.action_dim > 0:
            put_rows(f, "actions", dataset.actions)
        put_rows(f, "rewards", dataset.rewards)
        put_rows(f, "terminals", dataset.terminals)
        if has_timeouts:
            put_rows(f, "timeouts", dataset.timeouts)
        if dataset.next_observations is not None:
            put_rows(f, "next_observations", dataset.next_observations)
        if not dataset.fully_labelled:
            put_rows(f, "labelled", dataset.labelled)
        for name, arr in dataset.infos.items():
            put_rows(f, f"infos/{name}", np.asarray(arr))
        for key, value in dataset.extras.items():
            f.create_dataset(key, data=value)  # keeps h5py string dtypes and 0-d scalars
        f.create_dataset(METADATA_JSON_KEY, data=metadata_json, dtype=h5py.string_dtype("utf-8"))
        if not np.array_equal(implied_starts, dataset.episode_starts):
            f.create_dataset(EPISODE_STARTS_KEY, data=dataset.episode_starts.astype(np.int64))
    return path


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays and sets in metadata become plain JSON values."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return sorted(obj) if isinstance(obj, (set, frozenset)) else list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-able")
