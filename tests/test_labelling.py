"""Semi-supervised splits (hide_actions) and inverse dynamics labelling (label_actions), on
small linear systems made here: s' = A s + B a + noise, where a is identifiable from (s, s')."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from offrl.data.dataset import PROXY_INFO, Dataset, DatasetError
from offrl.data.hdf5 import read_hdf5, write_hdf5
from offrl.data.labelling import (IDMConfig, IDMConfigError, _StateWindows, fit_idm,
                                  label_actions)
from offrl.data.semi_supervised import hide_actions, parse_split_spec
from offrl.errors import UserError

OBS_DIM, ACT_DIM = 4, 2
REPO = Path(__file__).resolve().parents[1]


def linear_dataset(episodes=40, length=25, *, seed=0, next_observations=True,
                   dtype=np.float32) -> Dataset:
    """Random actions in [-1, 1] driving a stable linear system; returns vary by episode."""
    rng = np.random.default_rng(seed)
    a_mat = 0.9 * np.linalg.qr(rng.normal(size=(OBS_DIM, OBS_DIM)))[0]
    b_mat = rng.normal(size=(OBS_DIM, ACT_DIM))
    obs, acts, nxt, rews = [], [], [], []
    for _ in range(episodes):
        s = rng.normal(size=OBS_DIM)
        for _ in range(length):
            a = rng.uniform(-1, 1, size=ACT_DIM)
            s2 = a_mat @ s + b_mat @ a + 0.01 * rng.normal(size=OBS_DIM)
            obs.append(s), acts.append(a), nxt.append(s2), rews.append(-float(s @ s))
            s = s2
    n = episodes * length
    timeouts = np.zeros(n, bool)
    timeouts[length - 1::length] = True
    return Dataset(
        observations=np.array(obs, dtype), actions=np.array(acts, dtype),
        rewards=np.array(rews, dtype), terminals=np.zeros(n, bool), timeouts=timeouts,
        next_observations=np.array(nxt, dtype) if next_observations else None,
        episode_starts=np.arange(0, n, length),
        metadata={"dataset_id": "linear-test", "env_id": "none", "ref_min_score": 0.0,
                  "ref_max_score": 1.0, "sha256": "0" * 64})


def small_config(**changes) -> IDMConfig:
    values = dict(hidden_dims=[64, 64], dropout=0.0, batch_size=128, max_steps=600,
                  eval_every=100, patience=3, learning_rate=3e-3, seed=0)
    values.update(changes)
    return IDMConfig(**values).validate()


@pytest.fixture(scope="module")
def data() -> Dataset:
    return linear_dataset()


# ---------------------------------------------------------------------------------- the IDM
@pytest.mark.parametrize("head", ["tanh_gaussian", "deterministic"])
def test_idm_recovers_identifiable_actions(data, head):
    model = fit_idm(data, small_config(head=head, holdout_fraction=0.2))
    r = model.report
    assert r["heldout_trajectories"] == 8 and r["train_trajectories"] == 32
    # Uniform(-1, 1) actions have variance 1/3; the held-out error must be far below it.
    assert r["action_variance"] == pytest.approx(1 / 3, rel=0.2)
    assert r["heldout_mse"] < 0.02 * r["action_variance"], r
    assert ("heldout_nll" in r) == (head == "tanh_gaussian")


def test_ensemble_with_history_trains_members_side_by_side(data):
    model = fit_idm(data, small_config(ensemble_size=3, history=2, max_steps=300,
                                       dropout=0.1, holdout_fraction=0.1))
    windows = model.windows(data)
    members = model.predict_windows(windows, np.arange(10), members=True)
    assert members.shape == (3, 10, ACT_DIM)
    assert not np.allclose(members[0], members[1])  # own init, batches and dropout per member
    np.testing.assert_allclose(model.predict(data, np.arange(10)), members.mean(0), atol=1e-6)
    assert model.report["heldout_mse"] < 0.1 * model.report["action_variance"]


def test_history_slots_are_zero_before_the_episode_start(data):
    mean, std = np.zeros(OBS_DIM), np.ones(OBS_DIM)
    w = _StateWindows(data, mean, std, history=2, device=torch.device("cpu"))
    x = w(torch.tensor([25, 26, 27])).numpy()  # rows 0, 1, 2 of episode 1
    d = OBS_DIM
    assert x.shape == (3, 4 * d)
    assert (x[0, :2 * d] == 0).all()                                   # both slots padded
    assert (x[1, :d] == 0).all() and np.allclose(x[1, d:2 * d], data.observations[25])
    np.testing.assert_allclose(x[2, :2 * d], data.observations[25:27].reshape(-1))
    np.testing.assert_allclose(x[2, 2 * d:3 * d], data.observations[27])
    np.testing.assert_allclose(x[2, 3 * d:], data.next_observations[27])


def test_without_next_observations_the_last_rows_stay_unlabelled():
    data = linear_dataset(next_observations=False)
    hidden = hide_actions(data, 0.5, by="random", seed=1)
    out = label_actions(hidden, small_config(max_steps=200, holdout_fraction=0))
    last_rows = data.episode_ends - 1
    hidden_last = last_rows[~hidden.labelled[last_rows]]
    assert not out.labelled[hidden_last].any() and np.isnan(out.actions[hidden_last]).all()
    assert out.metadata["labelling"]["unlabellable_transitions"] == len(hidden_last)
    assert out.metadata["labelling"]["heldout_mse"] is None
    assert out.labelled.sum() == len(data) - len(hidden_last)


# ---------------------------------------------------------------------------------- splits
def test_lowest_half_split_keeps_ten_percent_of_trajectories(data):
    hidden = hide_actions(data, 0.1, by="lowest-50%", seed=0)
    split = hidden.metadata["semi_supervised"]
    kept = np.array(split["labelled_episode_indices"])
    assert len(kept) == 4 and split["labelled_episodes"] == 4 and split["episodes"] == 40
    lowest_half = np.argsort(data.episode_returns, kind="stable")[:20]
    assert set(kept) <= set(lowest_half)
    rows_kept = np.concatenate([np.arange(s, s + 25) for s in data.episode_starts[kept]])
    expected = np.zeros(len(data), bool)
    expected[rows_kept] = True
    np.testing.assert_array_equal(hidden.labelled, expected)
    assert np.isnan(hidden.actions[~expected]).all()
    np.testing.assert_array_equal(hidden.actions[expected], data.actions[expected])
    for key in ("observations", "rewards", "terminals", "timeouts", "next_observations"):
        np.testing.assert_array_equal(getattr(hidden, key), getattr(data, key))
    assert hidden.metadata["dataset_id"] == "linear-test-labelled10-lowest50-s0"
    assert split["source_dataset_id"] == "linear-test" and split["seed"] == 0
    assert "sha256" not in hidden.metadata and data.fully_labelled  # the input is untouched


def test_splits_are_reproducible_from_the_seed(data):
    a, b = hide_actions(data, 0.1, seed=3), hide_actions(data, 0.1, seed=3)
    np.testing.assert_array_equal(a.labelled, b.labelled)
    np.testing.assert_array_equal(a.actions, b.actions)  # NaN compares equal here
    masks = {tuple(hide_actions(data, 0.1, seed=s).labelled) for s in range(5)}
    assert len(masks) > 1


@pytest.mark.parametrize("by, lo, hi", [("random", 0, 1), ("lowest-50%", 0, .5),
                                        ("highest-25%", .75, 1), ("quantile:0.2-0.6", .2, .6),
                                        ("Lowest-12.5%", 0, .125)])
def test_split_specs(data, by, lo, hi):
    assert parse_split_spec(by) == pytest.approx((lo, hi))
    hidden = hide_actions(data, 0.1, by=by, seed=0)
    order = list(np.argsort(data.episode_returns, kind="stable"))
    ranks = [order.index(e) for e in hidden.metadata["semi_supervised"]["labelled_episode_indices"]]
    assert all(round(lo * 40) <= r < round(hi * 40) for r in ranks)


def test_action_infos_are_hidden_with_the_actions(data):
    logp = np.arange(len(data), dtype=np.float32)
    ds = data.replace(infos={"action_log_probs": logp, "qpos": data.observations.copy()})
    hidden = hide_actions(ds, 0.1, seed=0)
    assert np.isnan(hidden.infos["action_log_probs"][~hidden.labelled]).all()
    np.testing.assert_array_equal(hidden.infos["qpos"], data.observations)
    assert hidden.metadata["semi_supervised"]["hidden_infos"] == ["action_log_probs"]


# ---------------------------------------------------------------------------------- round trip
@pytest.fixture(scope="module")
def hidden_and_labelled(data):
    hidden = hide_actions(data, 0.2, by="lowest-50%", seed=0)
    labelled = label_actions(hidden, small_config(holdout_fraction=0.25))
    return hidden, labelled


def test_hide_then_label_round_trip_keeps_true_actions_and_flags(data, hidden_and_labelled):
    hidden, labelled = hidden_and_labelled
    proxy = labelled.infos[PROXY_INFO]
    np.testing.assert_array_equal(proxy, ~hidden.labelled)       # exactly the hidden rows
    np.testing.assert_array_equal(labelled.action_is_proxy, proxy)
    assert labelled.fully_labelled and np.isfinite(labelled.actions).all()
    true_rows = ~proxy
    np.testing.assert_array_equal(labelled.actions[true_rows], data.actions[true_rows])
    np.testing.assert_array_equal(labelled.true_labelled, hidden.labelled)
    # Proxies are good guesses of the hidden actions (variance 1/3).
    assert ((labelled.actions[proxy] - data.actions[proxy]) ** 2).mean() < 0.05
    info = labelled.metadata["labelling"]
    assert info["proxy_transitions"] == int(proxy.sum())
    assert info["idm_config"]["hidden_dims"] == [64, 64] and info["heldout_mse"] < 0.02
    assert labelled.metadata["dataset_id"] == hidden.metadata["dataset_id"] + "-idm"
    assert labelled.metadata["semi_supervised"] == hidden.metadata["semi_supervised"]
    # The split, re-made from the original with the recorded spec and seed, is the same.
    split = labelled.metadata["semi_supervised"]
    again = hide_actions(data, split["fraction"], by=split["by"], seed=split["seed"])
    np.testing.assert_array_equal(again.labelled, hidden.labelled)


def test_labelling_is_deterministic_given_the_seed(hidden_and_labelled):
    hidden, labelled = hidden_and_labelled
    again = label_actions(hidden, small_config(holdout_fraction=0.25))
    np.testing.assert_array_equal(again.actions, labelled.actions)


def test_proxy_flag_survives_hdf5(tmp_path, hidden_and_labelled):
    hidden, labelled = hidden_and_labelled
    path = write_hdf5(labelled, tmp_path / "labelled.hdf5")
    with h5py.File(path) as f:
        assert f[f"infos/{PROXY_INFO}"].dtype == np.bool_
    back = read_hdf5(path)
    np.testing.assert_array_equal(back.action_is_proxy, labelled.action_is_proxy)
    np.testing.assert_array_equal(back.actions, labelled.actions)
    assert back.metadata["labelling"] == json.loads(json.dumps(labelled.metadata["labelling"]))
    hidden_back = read_hdf5(write_hdf5(hidden, tmp_path / "hidden.hdf5"))
    np.testing.assert_array_equal(hidden_back.labelled, hidden.labelled)
    assert np.isnan(hidden_back.actions[~hidden.labelled]).all()


def test_proxy_flag_and_hidden_actions_survive_minari(offrl_home, hidden_and_labelled):
    from offrl.data.minari_io import read_minari, write_minari

    hidden, labelled = hidden_and_labelled
    back = read_minari(write_minari(labelled, "test/linear/labelled-v0"), use_cache=False)
    np.testing.assert_array_equal(back.action_is_proxy, labelled.action_is_proxy)
    np.testing.assert_array_equal(back.actions, labelled.actions)
    assert back.metadata["labelling"]["proxy_transitions"] == int(labelled.action_is_proxy.sum())
    back = read_minari(write_minari(hidden, "test/linear/hidden-v0"))
    np.testing.assert_array_equal(back.labelled, hidden.labelled)
    assert np.isnan(back.actions[~hidden.labelled]).all()


def test_sampler_uses_proxy_rows_and_never_action_free_ones(hidden_and_labelled):
    from offrl.algos.sampler import TransitionSampler

    hidden, labelled = hidden_and_labelled
    assert TransitionSampler(hidden.transitions(), [0], 8).size == hidden.labelled.sum()
    assert TransitionSampler(labelled.transitions(), [0], 8).size == len(labelled)


def test_label_an_action_free_dataset_with_a_model_trained_elsewhere(data):
    model = fit_idm(data, small_config(max_steps=300))
    free = data.replace(actions=np.zeros((len(data), 0), np.float32),
                        labelled=np.zeros(len(data), bool))
    out = label_actions(free, model=model)
    assert out.actions.shape == data.actions.shape and out.action_is_proxy.all()
    assert ((out.actions - data.actions) ** 2).mean() < 0.05


# ------------------------------------------------------------------------------ action-free files
def test_action_free_hdf5_takes_its_width_from_the_card(tmp_path, data):
    path = write_hdf5(data.replace(actions=np.zeros((len(data), 0), np.float32),
                                   labelled=np.zeros(len(data), bool), metadata={}),
                      tmp_path / "free.hdf5")
    with h5py.File(path) as f:
        assert "actions" not in f
    ds = read_hdf5(path, metadata={"action_shape": [ACT_DIM]})
    assert ds.actions.shape == (len(data), ACT_DIM) and not ds.labelled.any()


def test_minari_without_actions_loads_as_unlabelled(offrl_home, data):
    from offrl.data.minari_io import read_minari, write_minari

    folder = write_minari(data, "test/linear/free-v0")
    with h5py.File(folder / "data" / "main_data.hdf5", "a") as f:
        for name in list(f):
            del f[name]["actions"]
    ds = read_minari("test/linear/free-v0", use_cache=False)
    assert ds.actions.shape == data.actions.shape and np.isnan(ds.actions).all()
    assert not ds.labelled.any()
    np.testing.assert_array_equal(ds.observations, data.observations)


# ---------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("fraction, by, fragment", [
    (0, "lowest-50%", "fraction must be in (0, 1]"),
    (1.5, "random", "fraction must be in (0, 1]"),
    (-0.1, "random", "fraction must be in (0, 1]"),
    ("0.1", "random", "fraction must be a number"),
    (0.1, "bottom-half", "unknown split spec 'bottom-half'"),
    (0.1, "lowest-0%", "percentage must be in (0, 100]"),
    (0.1, "quantile:0.6-0.2", "needs 0 <= LO < HI <= 1"),
    (0.01, "random", "no labelled trajectory would be left"),
    (0.6, "lowest-50%", "holds only 20 with recorded actions"),
])
def test_bad_split_inputs_name_the_problem(data, fraction, by, fragment):
    with pytest.raises(DatasetError) as info:
        hide_actions(data, fraction, by=by)
    assert fragment in str(info.value)


def test_bad_label_inputs_name_the_problem(data):
    cfg = small_config(max_steps=50)
    with pytest.raises(DatasetError, match="every row already has an action"):
        label_actions(data, cfg)
    free = data.replace(actions=np.full_like(data.actions, np.nan),
                        labelled=np.zeros(len(data), bool))
    with pytest.raises(DatasetError, match="no labelled trajectory left"):
        label_actions(free, cfg)
    one = hide_actions(data, 1 / 40, by="random")
    with pytest.raises(DatasetError, match="leaves none to train on"):
        label_actions(one, small_config(holdout_fraction=0.1))
    model = fit_idm(data, cfg)
    wide = hide_actions(linear_dataset(episodes=10), 0.5, by="random")
    wide = wide.replace(observations=np.hstack([wide.observations, wide.observations[:, :1]]),
                        next_observations=np.hstack([wide.next_observations,
                                                     wide.next_observations[:, :1]]))
    with pytest.raises(DatasetError, match="observations have 5 columns.*trained on 4"):
        label_actions(wide, model=model)
    narrow = hide_actions(data, 0.5, by="random")
    narrow = narrow.replace(actions=narrow.actions[:, :1])
    with pytest.raises(DatasetError, match="actions have 1 columns.*predicts 2"):
        label_actions(narrow, model=model)
    bad_obs = hide_actions(data, 0.5, by="random")
    bad_obs.observations = bad_obs.observations.copy()
    bad_obs.observations[7, 0] = np.nan
    with pytest.raises(DatasetError, match="'observations' has 1 row.*NaN.*row 7"):
        label_actions(bad_obs, cfg)
    with pytest.raises(UserError, match="exactly one of config"):
        label_actions(bad_obs)


def test_nan_in_a_labelled_row_is_rejected(data):
    actions = data.actions.copy()
    actions[3] = np.nan
    with pytest.raises(DatasetError, match="NaN or inf in 1 labelled row"):
        hide_actions(data.replace(actions=actions, labelled=np.ones(len(data), bool)), 0.1)


def test_proxy_flag_must_be_on_labelled_rows(data):
    flag = np.zeros(len(data), bool)
    flag[0] = True
    ds = data.replace(labelled=~flag, actions=np.where(flag[:, None], np.nan, data.actions),
                      infos={PROXY_INFO: flag})
    with pytest.raises(DatasetError, match="marks 1 unlabelled row"):
        ds.validate()


def test_idm_config_from_toml(tmp_path):
    good = tmp_path / "idm.toml"
    good.write_text("[idm]\nhistory = 2\nhidden_dims = [32]\nlearning_rate = 1\n")
    cfg = IDMConfig.from_toml(good)
    assert cfg.history == 2 and cfg.hidden_dims == [32] and cfg.learning_rate == 1.0
    assert IDMConfig.from_toml(REPO / "baselines" / "idm" / "default.toml") == IDMConfig()
    for text, fragment in [("[idm]\nhistroy = 2\n", "histroy is not an IDM setting"),
                           ("[idm]\nhistory = 1.5\n", "history has float value 1.5"),
                           ("[idm]\nhead = 'gauss'\n", "head is 'gauss'"),
                           ("[idm]\ndropout = 1.0\n", "dropout must be in [0, 1)"),
                           ("history = 1\n", "unexpected top-level key"),
                           ("[idm\n", "not valid TOML")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(IDMConfigError) as info:
            IDMConfig.from_toml(bad)
        assert fragment in str(info.value) and str(bad) in str(info.value)
    json.dumps(IDMConfig().to_dict())  # goes into metadata as JSON
