"""Local Minari datasets <-> `Dataset`, with a flat HDF5 cache for fast reloads.

Minari stores one HDF5 group per episode with T+1 observations. We map
    observations[:-1] -> observations, observations[1:] -> next_observations,
    terminations -> terminals, truncations -> timeouts,
    infos/<k> -> infos[<k>] (rows T, or T+1 with the final row dropped; nested names keep '/').
Our own metadata travels JSON-encoded in metadata.json under "offrl_metadata"; the labelled
mask, when some rows are unlabelled, in infos["labelled"]; `Dataset.extras` (e.g. D4RL policy
weights) in a sidecar `data/offrl_extras.hdf5`. So HDF5 -> Dataset -> Minari -> Dataset is
lossless, bit for bit.

Reading Minari episode by episode costs about 0.7 ms per episode, so the first `read_minari`
writes a flat copy to $OFFRL_HOME/cache/minari/<id>/flat.hdf5, keyed by the source files'
size and mtime; later reads load that in one go.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from offrl.data import cache
from offrl.data.dataset import Dataset, DatasetError
from offrl.data.hdf5 import SOURCE_KEYS, _json_default, action_width, file_metadata_summary

OFFRL_METADATA_KEY = "offrl_metadata"
LABELLED_INFO = "labelled"
EXTRAS_FILE = "offrl_extras.hdf5"
MAIN_FILE = "main_data.hdf5"


# ---------------------------------------------------------------------------------------- read
def read_minari(dataset_id_or_path: str | os.PathLike, *, use_cache: bool = True,
                metadata: dict[str, Any] | None = None) -> Dataset:
    """Load a local Minari dataset (an id under $MINARI_DATASETS_PATH, or its directory).

    Uses and refreshes the flat cache unless `use_cache` is False. `metadata` (e.g. a card's
    fields) is merged over what the dataset recorded.
    """
    data_dir = _data_dir(dataset_id_or_path)
    raw_meta = _read_metadata_json(data_dir)
    meta = {**_metadata_from_minari(raw_meta, data_dir), **(metadata or {})}

    sources = [data_dir / "metadata.json", data_dir / MAIN_FILE]
    sources += [data_dir / EXTRAS_FILE] if (data_dir / EXTRAS_FILE).exists() else []
    cache_file = cache.cache_path("minari", str(raw_meta.get("dataset_id") or data_dir.parent.name))
    source_print = cache.fingerprint(sources) if use_cache else {}
    dataset = cache.load_cached(cache_file, source_print) if use_cache else None  # validated
    if dataset is None:
        dataset = _read_uncached(data_dir, raw_meta, meta).validate(source=str(data_dir))
        if use_cache:
            cache.store_cached(dataset, cache_file, source_print)
    if file_metadata_summary(dataset.extras):
        meta["file_metadata"] = file_metadata_summary(dataset.extras)
    return dataset.replace(metadata=meta)


def _data_dir(dataset_id_or_path: str | os.PathLike) -> Path:
    """The `data` folder (holding metadata.json) of a dataset given by id or directory."""
    given = Path(dataset_id_or_path)
    if given.is_dir():
        candidates = [given, given / "data"]
    else:
        from minari.storage import get_dataset_path  # reads $MINARI_DATASETS_PATH at call time
        candidates = [Path(get_dataset_path(str(dataset_id_or_path))) / "data"]
    for path in candidates:
        if (path / "metadata.json").is_file():
            return path
    raise DatasetError(f"Minari dataset '{dataset_id_or_path}' not found (no metadata.json in "
                       f"{' or '.join(str(p) for p in candidates)}); download it with "
                       f"`minari download {dataset_id_or_path}`")


def _read_metadata_json(data_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((data_dir / "metadata.json").read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{data_dir / 'metadata.json'}: unreadable ({e})") from e


def _metadata_from_minari(raw: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """Our metadata dict: what we wrote (offrl_metadata) under the fields Minari owns.

    Minari's own fields win (id, env, reference scores, description), so an edit to
    metadata.json shows; our copy supplies the rest (e.g. has_timeouts, max_episode_steps).
    """
    env_spec = json.loads(raw["env_spec"]) if raw.get("env_spec") else {}
    meta: dict[str, Any] = {"has_timeouts": True}
    if env_spec.get("max_episode_steps"):
        meta["max_episode_steps"] = env_spec["max_episode_steps"]
    if raw.get(OFFRL_METADATA_KEY):
        meta.update(json.loads(raw[OFFRL_METADATA_KEY]))
    meta["dataset_id"] = raw.get("dataset_id")
    if env_spec.get("id"):
        meta["env_id"] = env_spec["id"]
    for key in ("ref_min_score", "ref_max_score", "description"):
        if raw.get(key) is not None:
            meta[key] = raw[key]
    meta["minari_metadata"] = {k: v for k, v in raw.items() if k != OFFRL_METADATA_KEY}
    meta.update(source_path=str(data_dir), source_format="minari")
    return meta


def _read_uncached(data_dir: Path, raw_meta: dict[str, Any], meta: dict[str, Any]) -> Dataset:
    act_dim = action_width(meta)
    for key in ("observation_space", "action_space"):
        space = json.loads(raw_meta.get(key) or "{}")
        if key == "action_space" and not space:
            continue  # an action-free dataset may record no action space
        if space.get("type") != "Box":
            raise DatasetError(f"{data_dir}: {key} is {space.get('type')}; offrl datasets hold "
                               "flat Box observations and actions only")
        if key == "action_space" and space.get("shape") is not None:
            act_dim = int(np.prod(space["shape"]))
    dataset = None
    if raw_meta.get("data_format", "hdf5") == "hdf5":
        episodes = iter_episodes_h5py(data_dir / MAIN_FILE, int(raw_meta["total_episodes"]))
        try:
            dataset = _flatten_episodes(episodes, str(data_dir), meta, act_dim)
        except IrregularEpisodes:
            dataset = None
    if dataset is None:  # arrow/parquet, or irregular infos: let Minari decode
        dataset = _flatten_episodes(iter_episodes_minari(data_dir), str(data_dir), meta, act_dim)
    if (data_dir / EXTRAS_FILE).exists():
        dataset.extras = _read_extras(data_dir / EXTRAS_FILE)
    return dataset


def iter_episodes_h5py(main_file: Path, total_episodes: int) -> Iterator[dict[str, Any]]:
    """Episode dicts read straight from Minari's main_data.hdf5 with h5py's low-level API.

    Per-dataset overhead dominates (Minari writes every episode array as its own small chunked
    dataset), so this skips h5py's high-level objects and Minari's per-episode decoding into
    EpisodeData: about 2x faster than `minari.load_dataset(...).iterate_episodes()`, with
    identical arrays (tested). (Reading raw chunk bytes instead was measured slower.) The info keys
    are those of episode 0; an episode whose infos differ raises `IrregularEpisodes` so the
    caller can fall back to Minari's reader. An episode without `actions` (action-free data)
    yields actions None.
    """
    step_keys = [k.encode() for k in ("observations", "rewards", "terminations", "truncations")]
    try:
        with h5py.File(main_file, "r") as f:
            if total_episodes == 0:
                return
            info_keys = _dataset_names(f["episode_0/infos"]) if "episode_0/infos" in f else []
            info_names = [f"infos/{k}".encode() for k in info_keys]
            layout = None
            for i in range(total_episodes):
                group = h5py.h5g.open(f.id, f"episode_{i}".encode())
                episode = {k.decode(): _read_array(group, k) for k in step_keys}
                episode["actions"] = _read_array(group, b"actions") if b"actions" in group else None
                try:
                    infos_links = h5py.h5g.open(group, b"infos").get_num_objs() if info_keys else 0
                    if layout is None:
                        layout = (group.get_num_objs(), infos_links)
                    if (group.get_num_objs(), infos_links) != layout:
                        raise KeyError
                    episode["infos"] = {k: _read_array(group, name)
                                        for k, name in zip(info_keys, info_names)}
                except KeyError:
                    raise IrregularEpisodes(f"episode {i} has other infos than episode 0") from None
                yield episode
    except (OSError, KeyError, RuntimeError) as e:
        raise DatasetError(f"{main_file}: cannot read Minari episodes ({e}); the file is "
                           "truncated or corrupt") from e


class IrregularEpisodes(Exception):
    """Episodes differ in structure; the h5py fast path hands over to Minari's reader."""


def _read_array(group: h5py.h5g.GroupID, name: bytes) -> np.ndarray:
    """One dataset, whole, as a numpy array of its stored dtype."""
    ds = h5py.h5d.open(group, name)
    if ds.dtype.kind not in "biuf":  # strings and other exotic infos: the high-level reader
        return h5py.Dataset(ds)[()]
    out = np.empty(ds.shape, dtype=ds.dtype)
    if out.size:
        ds.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def _dataset_names(group: h5py.Group) -> list[str]:
    names: list[str] = []
    group.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def iter_episodes_minari(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Episode dicts through `minari` itself (any storage format; the reference reader)."""
    from minari import MinariDataset
    for ep in MinariDataset(str(data_dir)).iterate_episodes():
        yield {"observations": ep.observations, "actions": ep.actions, "rewards": ep.rewards,
               "terminations": ep.terminations, "truncations": ep.truncations,
               "infos": _flatten_dict(ep.infos or {})}


def _flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten_dict(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def _flatten_episodes(episodes: Iterable[dict[str, Any]], source: str,
                      meta: dict[str, Any], action_dim: int = 0) -> Dataset:
    """Concatenate episode dicts (T+1 observations each) into one flat Dataset.

    Episodes with actions None get NaN actions (T, action_dim): unlabelled rows.
    """
    cols: dict[str, list[np.ndarray]] = {k: [] for k in (
        "observations", "next_observations", "actions", "rewards", "terminals", "timeouts")}
    infos: dict[str, list[np.ndarray]] = {}
    lengths: list[int] = []
    for i, ep in enumerate(episodes):
        t = len(ep["rewards"])
        if t == 0:
            continue  # an empty episode has no steps to keep
        obs = np.asarray(ep["observations"])
        if obs.shape[0] != t + 1:
            raise DatasetError(f"{source}: episode {i} has {obs.shape[0]} observations for {t} "
                               "steps; Minari stores T+1")
        cols["observations"].append(obs[:-1])
        cols["next_observations"].append(obs[1:])
        actions = ep.get("actions")
        cols["actions"].append(np.full((t, action_dim), np.nan, np.float32) if actions is None
                               else np.asarray(actions))
        cols["rewards"].append(np.asarray(ep["rewards"]).reshape(t))
        cols["terminals"].append(np.asarray(ep["terminations"], dtype=bool).reshape(t))
        cols["timeouts"].append(np.asarray(ep["truncations"], dtype=bool).reshape(t))
        for key, value in ep["infos"].items():
            if value.ndim == 0 or value.shape[0] not in (t, t + 1):
                raise DatasetError(f"{source}: infos/{key} of episode {i} has shape {value.shape}; "
                                   f"expected {t} or {t + 1} rows")
            infos.setdefault(key, []).append(value[:t])
        lengths.append(t)
    partial = sorted(k for k, v in infos.items() if len(v) != len(lengths))
    if partial:
        warnings.warn(f"{source}: infos {partial} are missing from some episodes; dropped",
                      stacklevel=3)
    flat_infos = {k: np.concatenate(v) for k, v in infos.items() if k not in partial}
    labelled = flat_infos.pop(LABELLED_INFO, None)
    if not lengths:
        raise DatasetError(f"{source}: the dataset has no steps")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return Dataset(**{k: np.concatenate(v) for k, v in cols.items()}, episode_starts=starts,
                   labelled=None if labelled is None else labelled.astype(bool),
                   infos=flat_infos, metadata=meta)


def _read_extras(path: Path) -> dict[str, np.ndarray]:
    try:
        with h5py.File(path, "r") as f:
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            return {n: np.array(f[n][()], dtype=f[n].dtype) for n in names}
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e}); the file is truncated or corrupt") from e


# --------------------------------------------------------------------------------------- write
def write_minari(dataset: Dataset, dataset_id: str, *, env_id: str | None = None,
                 description: str | None = None, drop_last_step: bool = False,
                 algorithm_name: str | None = None, author: str | None = None,
                 author_email: str | None = None, code_permalink: str | None = None) -> Path:
    """Write `dataset` as a local Minari dataset `dataset_id`; return its directory.

    Needs `next_observations` (Minari keeps each episode's final observation). Without them,
    `drop_last_step=True` drops the last step of every episode (its next observation is
    unknown) and marks the new last step truncated; one-step episodes vanish.
    `env_id` (a Gymnasium id) records the env spec and takes the spaces' bounds from the env;
    otherwise spaces are unbounded Boxes. Spaces always carry the arrays' dtypes and the
    arrays are stored as they are (float64 stays float64). Built on
    `minari.create_dataset_from_buffers` in a temporary root, then moved into place.
    """
    import minari
    import minari.namespace
    from minari.data_collector import EpisodeBuffer
    from minari.storage import get_dataset_path

    dataset.validate()
    target = Path(get_dataset_path(dataset_id))
    if target.exists():
        raise DatasetError(f"Minari dataset '{dataset_id}' already exists at {target}")
    if dataset.infos.get(LABELLED_INFO) is not None:
        raise DatasetError(f"{dataset.name}: infos['{LABELLED_INFO}'] is reserved for the "
                           "labelled mask")
    episodes = list(_episode_slices(dataset, drop_last_step))
    obs_space, act_space = _spaces(dataset, env_id)
    meta = dataset.metadata
    minari_extra = meta.get("minari_metadata") or {}
    ours = {k: v for k, v in meta.items() if k not in SOURCE_KEYS}

    def buffers() -> Iterator[Any]:
        for obs, sl, last_truncated in episodes:
            infos = {k: v[sl] for k, v in dataset.infos.items()}
            if not dataset.fully_labelled:
                infos[LABELLED_INFO] = dataset.labelled[sl]
            truncations = dataset.timeouts[sl].copy()
            if last_truncated:
                truncations[-1] = True
            yield EpisodeBuffer(observations=obs, actions=dataset.actions[sl],
                                rewards=dataset.rewards[sl], terminations=dataset.terminals[sl],
                                truncations=truncations, infos=_nest(infos) or None)

    root = Path(get_dataset_path())
    tmp_root = Path(tempfile.mkdtemp(prefix=".offrl-write-", dir=root))
    previous_root = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = str(tmp_root)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Minari warns for every unset field
            created = minari.create_dataset_from_buffers(
                dataset_id, list(buffers()), env=env_id, observation_space=obs_space,
                action_space=act_space,
                description=(description or meta.get("description")
                             or minari_extra.get("description")),
                algorithm_name=algorithm_name or minari_extra.get("algorithm_name"),
                author=author or _as_set(minari_extra.get("author")),
                author_email=author_email or _as_set(minari_extra.get("author_email")),
                code_permalink=code_permalink or minari_extra.get("code_permalink"))
            extra_meta = {OFFRL_METADATA_KEY: json.dumps(ours, default=_json_default,
                                                         sort_keys=True)}
            for key in ("ref_min_score", "ref_max_score"):
                if meta.get(key) is not None:
                    extra_meta[key] = float(meta[key])
            created.storage.update_metadata(extra_meta)
        if dataset.extras:
            _write_extras(dataset.extras, tmp_root / dataset_id / "data" / EXTRAS_FILE)
        os.environ["MINARI_DATASETS_PATH"] = str(root)
        ns = str(Path(dataset_id).parent)  # create the namespace in the real root, as Minari would
        if ns != "." and ns not in minari.namespace.list_local_namespaces():
            minari.namespace.create_namespace(ns)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp_root / dataset_id, target)
    except DatasetError:
        raise
    except ValueError as e:  # Minari's error type for bad ids and spaces
        raise DatasetError(f"cannot write Minari dataset '{dataset_id}': {e}") from e
    finally:
        if previous_root is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous_root
        shutil.rmtree(tmp_root, ignore_errors=True)
    return target


def _episode_slices(dataset: Dataset,
                    drop_last_step: bool) -> Iterator[tuple[np.ndarray, slice, bool]]:
    """(T+1 observations, row slice, mark-last-step-truncated) per episode."""
    obs, next_obs = dataset.observations, dataset.next_observations
    starts, ends = dataset.episode_starts.tolist(), dataset.episode_ends.tolist()
    if next_obs is None:
        if not drop_last_step:
            raise DatasetError(
                f"{dataset.name}: has no next_observations, so the final observation of each "
                "episode is unknown and Minari cannot store the episode; pass "
                "drop_last_step=True to drop each episode's last step instead")
        for s, e in zip(starts, ends):
            if e - s >= 2:
                yield obs[s:e], slice(s, e - 1), True
        return
    # Minari keeps one observation sequence per episode, so s'_i must equal s_{i+1} inside it.
    # Compared bit for bit (as unsigned ints), so even -0.0 versus 0.0 counts as a difference.
    bits = np.dtype(f"u{obs.dtype.itemsize}")
    same = (np.ascontiguousarray(next_obs[:-1]).view(bits)
            == np.ascontiguousarray(obs[1:]).view(bits))
    inner = np.ones(len(dataset) - 1, dtype=bool)
    inner[np.asarray(ends[:-1], dtype=np.int64) - 1] = False
    mismatch = np.flatnonzero(inner & ~same.all(axis=1))
    if len(mismatch):
        raise DatasetError(f"{dataset.name}: next_observations[{mismatch[0]}] differs from "
                           f"observations[{mismatch[0] + 1}] inside an episode; Minari cannot "
                           "represent that")
    for s, e in zip(starts, ends):
        yield np.concatenate([obs[s:e], next_obs[e - 1:e]]), slice(s, e), False


def _spaces(dataset: Dataset, env_id: str | None) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """Boxes with the arrays' shapes and dtypes; bounds from the env when `env_id` is given."""
    def box(data: np.ndarray, env_space: gym.Space | None, what: str) -> gym.spaces.Box:
        shape = data.shape[1:]
        if env_space is None:
            return gym.spaces.Box(-np.inf, np.inf, shape, dtype=data.dtype)
        if not isinstance(env_space, gym.spaces.Box) or env_space.shape != shape:
            raise DatasetError(f"{dataset.name}: {what} rows have shape {shape}; {env_id}'s "
                               f"{what} space is {env_space}")
        return gym.spaces.Box(env_space.low.astype(data.dtype), env_space.high.astype(data.dtype),
                              shape, dtype=data.dtype)
    if env_id is None:
        return box(dataset.observations, None, "observation"), box(dataset.actions, None, "action")
    try:
        env = gym.make(env_id)
    except gym.error.Error as e:
        raise DatasetError(f"env_id '{env_id}' is not a registered Gymnasium env ({e})") from e
    try:
        return (box(dataset.observations, env.observation_space, "observation"),
                box(dataset.actions, env.action_space, "action"))
    finally:
        env.close()


def _nest(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """{'a/b': x} -> {'a': {'b': x}}: Minari writes nested dicts as nested groups."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _as_set(value: Any) -> set[str] | None:
    return set(value) if value else None


def _write_extras(extras: dict[str, np.ndarray], path: Path) -> None:
    with h5py.File(path, "w") as f:
        for key, value in extras.items():
            f.create_dataset(key, data=value)
