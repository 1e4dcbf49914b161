"""Minari I/O: lossless round trips, the h5py fast path against Minari's own reader, and the
flat cache (hit, invalidation, corruption)."""

import json
import os
import warnings

import h5py
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer
from test_hdf5 import assert_same_dataset, d4rl_arrays, write_raw

from offrl.data import minari_io
from offrl.data.cache import cache_path
from offrl.data.dataset import Dataset, DatasetError
from offrl.data.hdf5 import SOURCE_KEYS, read_hdf5
from offrl.data.minari_io import read_minari, write_minari

N = 60


def d4rl_file(tmp_path, dtype=np.float32, next_obs=True, **changes):
    """A D4RL-layout file whose next_observations follow observations inside episodes."""
    raw = d4rl_arrays(dtype)
    if next_obs:
        nxt = np.roll(raw["observations"], -1, axis=0)
        ends = np.array([19, 33, 53, 59])  # each episode's last row gets its own final obs
        nxt[ends] = np.random.default_rng(1).normal(size=(len(ends), 5)).astype(dtype)
        raw["next_observations"] = nxt
    raw.update(changes)
    return write_raw(tmp_path / "d4rl.hdf5", raw, compression="gzip")


def ours(metadata):
    """Metadata that travels with the data (the Minari id replaces the source's dataset_id)."""
    return {k: v for k, v in metadata.items() if k not in SOURCE_KEYS and k != "dataset_id"}


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hdf5_to_minari_round_trip_is_lossless(tmp_path, offrl_home, dtype):
    src = read_hdf5(d4rl_file(tmp_path, dtype), metadata={
        "env_id": "Hopper-v4", "ref_min_score": -20.272305, "ref_max_score": 3234.3,
        "description": "test data"})
    # Mixed labels: NaN (action-free) rows, and finite actions marked unlabelled, stay unlabelled.
    actions = src.actions.copy()
    actions[5:9] = np.nan
    labelled = ~np.isnan(actions).any(axis=1)
    labelled[40:44] = False
    src = src.replace(actions=actions, labelled=labelled)

    path = write_minari(src, "offrl-test/hopper/rt-v0")
    assert path == offrl_home.parent / "minari" / "offrl-test" / "hopper" / "rt-v0"
    back = read_minari("offrl-test/hopper/rt-v0", use_cache=False)
    assert_same_dataset(src, back, metadata=False)
    assert ours(back.metadata) == ours(src.metadata)
    assert back.observations.dtype == dtype and back.actions.dtype == dtype

    # What Minari itself sees: T+1 observations, flags, spaces with our dtype, ref scores.
    mds = minari.load_dataset("offrl-test/hopper/rt-v0")
    assert mds.total_episodes == 4 and mds.total_steps == N
    assert mds.observation_space.dtype == dtype
    assert mds.storage.metadata["ref_max_score"] == 3234.3
    assert mds.storage.metadata["description"] == "test data"
    first = next(mds.iterate_episodes())
    assert first.observations.shape == (21, 5) and first.truncations[-1]


def test_minari_to_minari_copy(tmp_path, offrl_home):
    src = read_hdf5(d4rl_file(tmp_path))
    write_minari(src, "offrl-test/a-v0")
    write_minari(read_minari("offrl-test/a-v0"), "offrl-test/b-v0")
    assert_same_dataset(read_minari("offrl-test/a-v0"), read_minari("offrl-test/b-v0"),
                        metadata=False)


def test_no_timeouts_file_round_trip(tmp_path, offrl_home):
    raw_path = d4rl_file(tmp_path)
    with h5py.File(raw_path, "a") as f:
        del f["timeouts"]
    src = read_hdf5(raw_path, max_episode_steps=20)  # same boundaries as the timeouts gave
    write_minari(src, "offrl-test/nt-v0")
    back = read_minari("offrl-test/nt-v0")
    assert_same_dataset(src, back, metadata=False)
    assert back.metadata["has_timeouts"] is False and back.metadata["max_episode_steps"] == 20
    np.testing.assert_array_equal(back.qlearning().observations, src.qlearning().observations)


def test_writing_needs_next_observations(tmp_path, offrl_home):
    src = read_hdf5(d4rl_file(tmp_path, next_obs=False))
    with pytest.raises(DatasetError, match="final observation of each episode is unknown"):
        write_minari(src, "offrl-test/nn-v0")
    assert not (offrl_home.parent / "minari" / "offrl-test" / "nn-v0").exists()

    write_minari(src, "offrl-test/nn-v0", drop_last_step=True)
    back = read_minari("offrl-test/nn-v0")
    np.testing.assert_array_equal(back.episode_lengths, src.episode_lengths - 1)
    keep = np.ones(N, bool)
    keep[src.episode_ends - 1] = False
    np.testing.assert_array_equal(back.observations, src.observations[keep])
    np.testing.assert_array_equal(back.actions, src.actions[keep])
    # The next observation of a kept step is the dataset's next row.
    np.testing.assert_array_equal(back.next_observations,
                                  src.observations[np.flatnonzero(keep) + 1])
    assert back.timeouts[back.episode_ends - 1].all()  # the cut episodes end truncated


def test_next_observation_mismatch_inside_episode_is_refused(tmp_path, offrl_home):
    src = read_hdf5(d4rl_file(tmp_path))
    src.next_observations[3] += 1
    with pytest.raises(DatasetError,
                       match=r"next_observations\[3\] differs from observations\[4\]"):
        write_minari(src, "offrl-test/mm-v0")


def test_existing_dataset_is_not_overwritten(tmp_path, offrl_home):
    src = read_hdf5(d4rl_file(tmp_path))
    write_minari(src, "offrl-test/x-v0")
    with pytest.raises(DatasetError, match="already exists"):
        write_minari(src, "offrl-test/x-v0")


def test_malformed_id_is_a_dataset_error(tmp_path, offrl_home):
    with pytest.raises(DatasetError, match="cannot write Minari dataset 'offrl-test/no version'"):
        write_minari(read_hdf5(d4rl_file(tmp_path)), "offrl-test/no version")


def test_failed_write_leaves_nothing(tmp_path, offrl_home, monkeypatch):
    src = read_hdf5(d4rl_file(tmp_path))

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(minari_io, "_write_extras", boom)
    with pytest.raises(OSError):
        write_minari(src, "offrl-test/f-v0")
    root = offrl_home.parent / "minari"
    assert not (root / "offrl-test" / "f-v0").exists()
    assert not [p for p in os.listdir(root) if p.startswith(".offrl-write-")]
    with pytest.raises(DatasetError, match="not found"):
        read_minari("offrl-test/f-v0")


def test_env_id_records_spec_and_bounds(tmp_path, offrl_home):
    rng = np.random.default_rng(0)
    n = 30
    obs = rng.normal(size=(n + 1, 3)).astype(np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[-1] = True
    ds = Dataset(observations=obs[:-1], next_observations=obs[1:],
                 actions=rng.uniform(-2, 2, size=(n, 1)).astype(np.float32),
                 rewards=rng.normal(size=n).astype(np.float32), terminals=np.zeros(n, bool),
                 timeouts=timeouts, episode_starts=[0])
    write_minari(ds, "offrl-test/pendulum/e-v0", env_id="Pendulum-v1")
    mds = minari.load_dataset("offrl-test/pendulum/e-v0")
    assert mds.env_spec.id == "Pendulum-v1"
    assert mds.action_space.high[0] == 2.0 and mds.action_space.dtype == np.float32
    back = read_minari("offrl-test/pendulum/e-v0")
    assert back.metadata["env_id"] == "Pendulum-v1"
    with pytest.raises(DatasetError, match="observation"):
        write_minari(ds, "offrl-test/pendulum/bad-v0", env_id="CartPole-v1")


# ----------------------------------------------------------------- native Minari datasets
def native_minari(dataset_id, episodes=5, steps=7, irregular_infos=False):
    """A dataset as Minari's DataCollector writes it: T+1 infos rows, float64 Box spaces."""
    import gymnasium as gym

    rng = np.random.default_rng(3)
    buffers = []
    for e in range(episodes):
        t = steps + e
        infos = {"qpos": rng.normal(size=(t + 1, 2)), "nested": {"x": np.arange(t + 1)}}
        if irregular_infos and e == 2:
            del infos["qpos"]
        buffers.append(EpisodeBuffer(
            observations=rng.normal(size=(t + 1, 4)), actions=rng.normal(size=(t, 2)),
            rewards=rng.normal(size=t), terminations=np.arange(t) == t - 1 if e % 2 else
            np.zeros(t, bool), truncations=np.zeros(t, bool) if e % 2 else np.arange(t) == t - 1,
            infos=infos))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            dataset_id, buffers, observation_space=gym.spaces.Box(-np.inf, np.inf, (4,)),
            action_space=gym.spaces.Box(-1, 1, (2,)), ref_min_score=1.0, ref_max_score=None)
    return buffers


def test_fast_path_equals_minari_reader(offrl_home):
    buffers = native_minari("native/flat-v0")
    fast = read_minari("native/flat-v0", use_cache=False)
    mds = minari.load_dataset("native/flat-v0")
    episodes = list(mds.iterate_episodes())
    np.testing.assert_array_equal(fast.observations,
                                  np.concatenate([e.observations[:-1] for e in episodes]))
    np.testing.assert_array_equal(fast.next_observations,
                                  np.concatenate([e.observations[1:] for e in episodes]))
    np.testing.assert_array_equal(fast.actions, np.concatenate([e.actions for e in episodes]))
    np.testing.assert_array_equal(fast.rewards, np.concatenate([e.rewards for e in episodes]))
    np.testing.assert_array_equal(fast.terminals,
                                  np.concatenate([e.terminations for e in episodes]))
    np.testing.assert_array_equal(fast.timeouts, np.concatenate([e.truncations for e in episodes]))
    np.testing.assert_array_equal(fast.episode_lengths, [len(b.rewards) for b in buffers])
    # Infos come with T+1 rows from Minari's collector; the row after the last step is dropped.
    np.testing.assert_array_equal(fast.infos["qpos"],
                                  np.concatenate([e.infos["qpos"][:-1] for e in episodes]))
    np.testing.assert_array_equal(fast.infos["nested/x"],
                                  np.concatenate([e.infos["nested"]["x"][:-1] for e in episodes]))
    # ...and the same Dataset as the generic reader built on minari.load_dataset.
    reference = minari_io._flatten_episodes(
        minari_io.iter_episodes_minari(offrl_home.parent / "minari" / "native/flat-v0" / "data"),
        "ref", {})
    assert_same_dataset(fast, reference, metadata=False)
    assert fast.metadata["dataset_id"] == "native/flat-v0"
    assert fast.metadata["has_timeouts"] and "env_id" not in fast.metadata


def test_irregular_infos_fall_back_to_minari_reader(offrl_home):
    native_minari("native/irregular-v0", irregular_infos=True)
    with pytest.warns(UserWarning, match="qpos"):
        ds = read_minari("native/irregular-v0", use_cache=False)
    assert "qpos" not in ds.infos and "nested/x" in ds.infos


def test_read_by_directory_and_missing_id(offrl_home):
    native_minari("native/dir-v0")
    root = offrl_home.parent / "minari" / "native" / "dir-v0"
    a, b = read_minari(root), read_minari(root / "data")
    assert_same_dataset(a, b, metadata=False)
    with pytest.raises(DatasetError, match="minari download native/none-v0"):
        read_minari("native/none-v0")


# ---------------------------------------------------------------------------------- cache
def test_cache_hit_skips_the_episode_reader(tmp_path, offrl_home, monkeypatch):
    src = read_hdf5(d4rl_file(tmp_path))
    write_minari(src, "offrl-test/c-v0")
    first = read_minari("offrl-test/c-v0")
    cached = cache_path("minari", "offrl-test/c-v0")
    assert cached == offrl_home / "cache" / "minari" / "offrl-test" / "c-v0" / "flat.hdf5"
    assert cached.is_file()

    def no_uncached(*args, **kwargs):
        raise AssertionError("cache not used")

    monkeypatch.setattr(minari_io, "_read_uncached", no_uncached)
    second = read_minari("offrl-test/c-v0")
    assert_same_dataset(first, second)
    assert second.metadata == first.metadata


def count_uncached_reads(monkeypatch):
    calls = []
    real = minari_io._read_uncached

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(minari_io, "_read_uncached", counting)
    return calls


def test_changed_source_invalidates_cache(tmp_path, offrl_home, monkeypatch):
    src = read_hdf5(d4rl_file(tmp_path))
    path = write_minari(src, "offrl-test/inv-v0")
    read_minari("offrl-test/inv-v0")
    calls = count_uncached_reads(monkeypatch)
    # Rewrite the rewards of episode 0 in Minari's own file.
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        f["episode_0/rewards"][...] = 123.0
    changed = read_minari("offrl-test/inv-v0")
    assert calls == [1] and (changed.rewards[:20] == 123.0).all()
    read_minari("offrl-test/inv-v0")
    assert calls == [1]  # the rebuilt cache is used again
    # metadata.json counts too (e.g. updated reference scores).
    meta_file = path / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["ref_max_score"] = 1.0  # Minari's field wins over our JSON copy of the metadata
    meta_file.write_text(json.dumps(meta))
    assert read_minari("offrl-test/inv-v0").metadata["ref_max_score"] == 1.0
    assert calls == [1, 1]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_chunk", "empty"])
def test_corrupt_cache_is_ignored_and_rebuilt(tmp_path, offrl_home, monkeypatch, damage):
    src = read_hdf5(d4rl_file(tmp_path))
    write_minari(src, "offrl-test/cor-v0")
    good = read_minari("offrl-test/cor-v0")
    cached = cache_path("minari", "offrl-test/cor-v0")
    if damage == "truncate":
        with open(cached, "r+b") as f:
            f.truncate(cached.stat().st_size // 2)
    elif damage == "garbage":
        cached.write_bytes(b"not hdf5 at all" * 100)
    elif damage == "empty":
        cached.write_bytes(b"")
    else:  # a flipped byte inside the observations data: caught by the fletcher32 checksum
        with h5py.File(cached) as f:
            chunk = f["observations"].id.get_chunk_info(0)
        with open(cached, "r+b") as f:
            f.seek(chunk.byte_offset + 16)
            f.write(b"\x7f\x7f\x7f\x7f")
    calls = count_uncached_reads(monkeypatch)
    again = read_minari("offrl-test/cor-v0")
    assert calls == [1]
    assert_same_dataset(good, again)
    read_hdf5(cached)  # rebuilt and readable


def test_use_cache_false_writes_nothing(tmp_path, offrl_home):
    write_minari(read_hdf5(d4rl_file(tmp_path)), "offrl-test/nc-v0")
    read_minari("offrl-test/nc-v0", use_cache=False)
    assert not cache_path("minari", "offrl-test/nc-v0").exists()
