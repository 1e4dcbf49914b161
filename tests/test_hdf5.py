"""D4RL-layout HDF5 read/write: every real variant, lossless round trips, clear errors, atomic
writes."""

import hashlib
import os

import h5py
import numpy as np
import pytest

from offrl.data.dataset import Dataset, DatasetError
from offrl.data.hashing import sha256_file
from offrl.data.hdf5 import EPISODE_STARTS_KEY, SOURCE_KEYS, read_hdf5, write_hdf5

N = 60


def d4rl_arrays(dtype=np.float32, seed=0, n=N):
    """Arrays of a small D4RL-style file: episodes of 20 steps, a terminal at row 33."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, bool)
    terminals[33] = True
    timeouts = np.zeros(n, bool)
    timeouts[[19, 53]] = True  # episodes: 0-19 (timeout), 20-33 (terminal), 34-53, 54-59
    return {
        "observations": rng.normal(size=(n, 5)).astype(dtype),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(dtype),
        "rewards": rng.normal(size=n).astype(dtype),
        "terminals": terminals,
        "timeouts": timeouts,
        "infos/qpos": rng.normal(size=(n, 3)),
        "infos/qvel": rng.normal(size=(n, 3)),
        "infos/action_log_probs": rng.normal(size=n).astype(np.float32),
        "metadata/algorithm": "SAC",  # h5py writes a variable-length UTF-8 string
        "metadata/iteration": np.int64(7),
        "metadata/fixed_label": np.bytes_("medium"),
        "metadata/policy/fc0/weight": rng.normal(size=(4, 5)).astype(np.float32),
        "metadata/policy/nonlinearity": "relu",
    }


def write_raw(path, arrays, **options):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, **(options if np.ndim(value) else {}))
    return path


def assert_same_dataset(a: Dataset, b: Dataset, metadata=True):
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "episode_starts",
                "labelled", "next_observations"):
        x, y = getattr(a, key), getattr(b, key)
        if x is None or y is None:
            assert x is None and y is None, key
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, key
        np.testing.assert_array_equal(x, y, err_msg=key)  # NaN == NaN here
    assert sorted(a.infos) == sorted(b.infos)
    for key in a.infos:
        assert a.infos[key].dtype == b.infos[key].dtype
        np.testing.assert_array_equal(a.infos[key], b.infos[key], err_msg=key)
    assert sorted(a.extras) == sorted(b.extras)
    for key in a.extras:
        assert a.extras[key].dtype == b.extras[key].dtype, key
        np.testing.assert_array_equal(a.extras[key], b.extras[key], err_msg=key)
    if metadata:
        strip = lambda m: {k: v for k, v in m.items() if k not in SOURCE_KEYS}
        assert strip(a.metadata) == strip(b.metadata)


# --------------------------------------------------------------------------------- variants
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reads_d4rl_file_keeping_dtypes(tmp_path, dtype):
    raw = d4rl_arrays(dtype)
    ds = read_hdf5(write_raw(tmp_path / "d.hdf5", raw, compression="gzip"))
    for key in ("observations", "actions", "rewards"):
        assert getattr(ds, key).dtype == dtype
        np.testing.assert_array_equal(getattr(ds, key), raw[key])
    np.testing.assert_array_equal(ds.episode_starts, [0, 20, 34, 54])
    np.testing.assert_array_equal(ds.infos["qpos"], raw["infos/qpos"])
    assert ds.infos["action_log_probs"].dtype == np.float32
    assert ds.next_observations is None and ds.fully_labelled
    assert ds.metadata["has_timeouts"] is True and ds.metadata["source_format"] == "hdf5"
    assert ds.metadata["file_metadata"] == {"algorithm": "SAC", "iteration": 7,
                                            "fixed_label": "medium",
                                            "policy/nonlinearity": "relu"}
    np.testing.assert_array_equal(ds.extras["metadata/policy/fc0/weight"],
                                  raw["metadata/policy/fc0/weight"])


def test_skipping_infos(tmp_path):
    ds = read_hdf5(write_raw(tmp_path / "d.hdf5", d4rl_arrays()), load_infos=False)
    assert ds.infos == {} and len(ds) == N and "metadata/algorithm" in ds.extras


def test_column_arrays_and_numeric_flags(tmp_path):
    """medium-replay style: float64, rewards and terminals as (N, 1), terminals as 0./1."""
    raw = d4rl_arrays(np.float64)
    raw["rewards"] = raw["rewards"][:, None]
    raw["terminals"] = raw["terminals"].astype(np.float64)[:, None]
    raw["timeouts"] = raw["timeouts"].astype(np.int8)
    ds = read_hdf5(write_raw(tmp_path / "d.hdf5", raw))
    assert ds.rewards.shape == (N,) and ds.terminals.dtype == np.bool_
    assert ds.terminals[33] and ds.terminals.sum() == 1
    assert ds.timeouts.dtype == np.bool_ and ds.timeouts.sum() == 2


def test_int_terminals(tmp_path):
    raw = d4rl_arrays()
    raw["terminals"] = raw["terminals"].astype(np.int64)
    ds = read_hdf5(write_raw(tmp_path / "d.hdf5", raw))
    assert ds.terminals.dtype == np.bool_ and ds.terminals[33]


def test_no_timeouts_uses_step_limit(tmp_path):
    raw = d4rl_arrays()
    del raw["timeouts"]
    path = write_raw(tmp_path / "d.hdf5", raw)
    ds = read_hdf5(path, max_episode_steps=25)
    assert not ds.timeouts.any()
    assert ds.metadata["has_timeouts"] is False and ds.metadata["max_episode_steps"] == 25
    np.testing.assert_array_equal(ds.episode_starts, [0, 25, 34, 59])
    np.testing.assert_array_equal(read_hdf5(path).episode_starts, [0, 34])  # default 1000
    # The written copy has no timeouts key either and remembers its step limit.
    copy = read_hdf5(write_hdf5(ds, tmp_path / "copy.hdf5"))
    with h5py.File(tmp_path / "copy.hdf5") as f:
        assert "timeouts" not in f
    assert_same_dataset(ds, copy)
    np.testing.assert_array_equal(copy.qlearning().observations, ds.qlearning().observations)


def test_next_observations_kept(tmp_path):
    raw = d4rl_arrays(np.float64)
    raw["next_observations"] = raw["observations"] + 1
    ds = read_hdf5(write_raw(tmp_path / "d.hdf5", raw))
    np.testing.assert_array_equal(ds.next_observations, raw["observations"] + 1)
    assert ds.next_observations.dtype == np.float64


def test_action_free_file(tmp_path):
    raw = d4rl_arrays()
    del raw["actions"]
    ds = read_hdf5(write_raw(tmp_path / "d.hdf5", raw))
    assert not ds.labelled.any() and ds.actions.shape == (N, 0)
    ds = read_hdf5(tmp_path / "d.hdf5", metadata={"action_dim": 2})
    assert ds.actions.shape == (N, 2) and np.isnan(ds.actions).all() and not ds.labelled.any()


def test_nan_action_rows_are_unlabelled_and_round_trip(tmp_path):
    raw = d4rl_arrays()
    raw["actions"][10:20] = np.nan
    ds = read_hdf5(write_raw(tmp_path / "d.hdf5", raw))
    assert not ds.labelled[10:20].any() and ds.labelled[:10].all() and ds.labelled[20:].all()
    copy = read_hdf5(write_hdf5(ds, tmp_path / "copy.hdf5"))
    with h5py.File(tmp_path / "copy.hdf5") as f:
        assert f["labelled"].dtype == np.bool_ and f["labelled"].shape == (N,)
    assert_same_dataset(ds, copy)


def test_labelled_flags_survive_a_round_trip(tmp_path):
    """Rows marked unlabelled keep that mark even where a finite action is stored (proxy labels
    themselves are labelled rows with infos["action_is_proxy"]; see test_labelling.py)."""
    ds = read_hdf5(write_raw(tmp_path / "d.hdf5", d4rl_arrays()))
    labelled = np.ones(N, bool)
    labelled[::3] = False
    ds = ds.replace(labelled=labelled)
    copy = read_hdf5(write_hdf5(ds, tmp_path / "copy.hdf5"))
    np.testing.assert_array_equal(copy.labelled, labelled)
    fully = read_hdf5(write_hdf5(ds.replace(labelled=np.ones(N, bool)), tmp_path / "full.hdf5"))
    with h5py.File(tmp_path / "full.hdf5") as f:
        assert "labelled" not in f  # only written when some rows are unlabelled
    assert fully.fully_labelled


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_round_trip_is_lossless(tmp_path, dtype, compression):
    raw = d4rl_arrays(dtype)
    raw["next_observations"] = raw["observations"][::-1].copy()
    ds = read_hdf5(write_raw(tmp_path / "d.hdf5", raw),
                   metadata={"env_id": "Hopper-v4", "ref_min_score": -20.272305})
    copy = read_hdf5(write_hdf5(ds, tmp_path / "copy.hdf5", compression=compression))
    assert_same_dataset(ds, copy)
    assert copy.metadata["env_id"] == "Hopper-v4"
    assert copy.metadata["file_metadata"] == ds.metadata["file_metadata"]


def test_written_metadata_groups_reproduce_the_original(tmp_path):
    raw = d4rl_arrays()
    write_raw(tmp_path / "d.hdf5", raw)
    write_hdf5(read_hdf5(tmp_path / "d.hdf5"), tmp_path / "copy.hdf5")
    with h5py.File(tmp_path / "d.hdf5") as a, h5py.File(tmp_path / "copy.hdf5") as b:
        for key in [k for k in raw if k.startswith(("metadata/", "infos/"))]:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert h5py.check_string_dtype(a[key].dtype) == h5py.check_string_dtype(b[key].dtype)
            np.testing.assert_array_equal(a[key][()], b[key][()])
        assert b["observations"].compression == "gzip"  # plain h5py can read what we write


def test_boundaries_the_flags_cannot_imply_are_stored(tmp_path):
    ds = read_hdf5(write_raw(tmp_path / "d.hdf5", d4rl_arrays()))
    ds = ds.replace(episode_starts=np.array([0, 20, 30, 34, 54]))  # a cut at 30 with no flag
    copy = read_hdf5(write_hdf5(ds, tmp_path / "copy.hdf5"))
    np.testing.assert_array_equal(copy.episode_starts, [0, 20, 30, 34, 54])
    write_hdf5(read_hdf5(tmp_path / "d.hdf5"), tmp_path / "plain.hdf5")
    with h5py.File(tmp_path / "plain.hdf5") as f:
        assert EPISODE_STARTS_KEY not in f  # implied by the flags: not written


# ---------------------------------------------------------------------------------- errors
def expect_error(path, *fragments, **kwargs):
    with pytest.raises(DatasetError) as info:
        read_hdf5(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("key", ["observations", "rewards", "terminals"])
def test_missing_required_key(tmp_path, key):
    raw = d4rl_arrays()
    del raw[key]
    expect_error(write_raw(tmp_path / "d.hdf5", raw), f"'{key}'", "missing")


@pytest.mark.parametrize("key, value, fragments", [
    ("actions", np.zeros((N - 1, 2), np.float32), ["'actions'", "(59, 2)", "60 rows"]),
    ("rewards", np.zeros(N + 1, np.float32), ["'rewards'", "(61,)", "(60,)"]),
    ("timeouts", np.zeros(N - 5, bool), ["'timeouts'", "(55,)"]),
    ("next_observations", np.zeros((N, 4), np.float32), ["'next_observations'", "(60, 4)"]),
    ("infos/qpos", np.zeros((N - 1, 3)), ["'infos/qpos'", "60 rows"]),
    ("labelled", np.ones(3, bool), ["'labelled'"]),
])
def test_mismatched_lengths(tmp_path, key, value, fragments):
    raw = d4rl_arrays()
    raw[key] = value
    expect_error(write_raw(tmp_path / "d.hdf5", raw), *fragments)


@pytest.mark.parametrize("key, value, fragments", [
    ("observations", np.zeros(N, np.float32), ["'observations'", "(60,)", "(N, obs_dim)"]),
    ("observations", np.zeros((N, 2, 2), np.float32), ["'observations'", "(N, obs_dim)"]),
    ("rewards", np.zeros((N, 2), np.float32), ["'rewards'", "(60, 2)"]),
    ("actions", np.zeros(N, np.float32), ["'actions'", "(N, act_dim)"]),
    ("observations", np.zeros((N, 5), np.int32), ["'observations'", "int32", "float"]),
    ("rewards", np.zeros(N, np.int64), ["'rewards'", "int64", "float"]),
    ("terminals", np.full(N, 0.5), ["'terminals'", "0 and 1"]),
])
def test_wrong_shapes_and_dtypes(tmp_path, key, value, fragments):
    raw = d4rl_arrays()
    raw[key] = value
    expect_error(write_raw(tmp_path / "d.hdf5", raw), *fragments)


@pytest.mark.parametrize("key, bad", [("observations", np.nan), ("rewards", np.inf),
                                      ("next_observations", -np.inf)])
def test_non_finite_values(tmp_path, key, bad):
    raw = d4rl_arrays()
    raw["next_observations"] = raw["observations"].copy()
    raw[key][7] = bad
    expect_error(write_raw(tmp_path / "d.hdf5", raw), f"'{key}'", "NaN or inf", "row 7")


def test_missing_path_and_directory(tmp_path):
    expect_error(tmp_path / "nope.hdf5", "no such file")
    expect_error(tmp_path, "directory")


def test_not_hdf5(tmp_path):
    (tmp_path / "d.hdf5").write_text("observations,actions\n1,2\n")
    expect_error(tmp_path / "d.hdf5", "cannot open as HDF5")


def test_truncated_file(tmp_path):
    path = write_hdf5(read_hdf5(write_raw(tmp_path / "src.hdf5", d4rl_arrays(n=2000))),
                      tmp_path / "d.hdf5")
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    expect_error(path, "truncated")


def test_corrupt_header(tmp_path):
    path = write_raw(tmp_path / "d.hdf5", d4rl_arrays())
    with open(path, "r+b") as f:
        f.seek(0)
        f.write(b"\x00" * 64)
    expect_error(path, "cannot open as HDF5")


def test_corrupt_compressed_chunk_names_the_key(tmp_path):
    path = write_hdf5(read_hdf5(write_raw(tmp_path / "src.hdf5", d4rl_arrays(n=2000))),
                      tmp_path / "d.hdf5")
    with h5py.File(path) as f:
        chunk = f["observations"].id.get_chunk_info(0)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + 8)
        f.write(b"\xff" * 64)
    expect_error(path, "'observations'", "corrupt")


def test_checksummed_file_detects_flipped_bytes(tmp_path):
    ds = read_hdf5(write_raw(tmp_path / "src.hdf5", d4rl_arrays(n=2000)))
    path = write_hdf5(ds, tmp_path / "d.hdf5", compression=None, fletcher32=True)
    with h5py.File(path) as f:
        chunk = f["rewards"].id.get_chunk_info(0)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + 100)
        f.write(b"\x01\x02\x03\x04")
    expect_error(path, "'rewards'")


# ----------------------------------------------------------------------------- atomic write
def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    ds = read_hdf5(write_raw(tmp_path / "src.hdf5", d4rl_arrays()))
    path = write_hdf5(ds, tmp_path / "out" / "d.hdf5")
    before = sha256_file(path)

    real_create = h5py.Group.create_dataset

    def failing_create(self, name, *args, **kwargs):
        if name == "rewards":
            raise OSError("disk full (simulated)")
        return real_create(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create)
    with pytest.raises(OSError, match="simulated"):
        write_hdf5(ds.replace(rewards=ds.rewards * 2), path)
    monkeypatch.undo()
    assert sha256_file(path) == before
    assert sorted(os.listdir(path.parent)) == ["d.hdf5"]  # no temp file left behind
    assert_same_dataset(read_hdf5(path), ds)


def test_write_rejects_invalid_dataset_without_touching_disk(tmp_path):
    ds = read_hdf5(write_raw(tmp_path / "src.hdf5", d4rl_arrays()))
    ds.observations[3, 0] = np.nan
    with pytest.raises(DatasetError, match="'observations'"):
        write_hdf5(ds, tmp_path / "out" / "d.hdf5")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_sha256_file_matches_hashlib(tmp_path):
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # spans several 1 MiB chunks
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
