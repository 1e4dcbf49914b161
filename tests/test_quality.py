"""Dataset quality measures (TQ, SACo, return statistics) and the dataset report."""

import json

import numpy as np
import pytest

from offrl.data.dataset import Dataset
from offrl.data.quality import complete_episode_returns, dataset_quality, saco, trajectory_quality
from offrl.evaluation.dataset_report import write_dataset_report


def _dataset(obs, act, rewards, starts, last_flag=True):
    n = len(rewards)
    ends = np.append(np.asarray(starts[1:], dtype=np.int64) - 1, n - 1).astype(np.int64)
    timeouts = np.zeros(n, bool)
    timeouts[ends if last_flag else ends[:-1]] = True
    return Dataset(observations=np.asarray(obs, np.float32), actions=np.asarray(act, np.float32),
                   rewards=np.asarray(rewards, np.float32), terminals=np.zeros(n, bool),
                   timeouts=timeouts, episode_starts=np.asarray(starts))


def test_complete_episode_returns_skip_the_cut_last_episode():
    d = _dataset(np.zeros((6, 2)), np.zeros((6, 1)), [1, 1, 2, 2, 5, 5], [0, 2, 4], last_flag=False)
    np.testing.assert_array_equal(complete_episode_returns(d), [2, 4])


def test_trajectory_quality():
    assert trajectory_quality(50, 0, 100) == 0.5
    assert trajectory_quality(-10, 0, 100) == -0.1
    with pytest.raises(ValueError, match="must exceed"):
        trajectory_quality(1, 5, 5)


def test_saco_counts_discretised_pairs():
    rng = np.random.default_rng(0)
    ref_obs = rng.uniform(-1, 1, (4000, 2))
    ref = _dataset(ref_obs, rng.uniform(-1, 1, (4000, 1)), np.zeros(4000), [0])
    narrow = _dataset(ref_obs[:, :] * 0.1, np.zeros((4000, 1)), np.zeros(4000), [0])
    assert saco(ref, ref) == 1.0
    assert 0 < saco(narrow, ref) < 0.1  # a tenth of the range in every coordinate
    repeated = _dataset(np.repeat(ref_obs[:10], 400, axis=0), np.zeros((4000, 1)), np.zeros(4000), [0])
    ref_cells = round(1 / saco(_dataset(ref_obs[:1], np.zeros((1, 1)), [0.0], [0]), ref))
    assert ref_cells > 100 and saco(repeated, ref) * ref_cells <= 10  # at most 10 distinct pairs


def test_report_files(tmp_path):
    class Card:
        ref_min_score, ref_max_score = 0.0, 10.0

    d = _dataset(np.zeros((6, 2)), np.zeros((6, 1)), [1, 1, 2, 2, 5, 5], [0, 2, 4])
    md = write_dataset_report(d, tmp_path, dataset_id="x/y-v0", card=Card(), reference=d,
                              reference_id="x/y-v0")
    record = json.loads((tmp_path / "x--y-v0.json").read_text())
    assert record["mean_return"] == pytest.approx(16 / 3) and record["tq"] == pytest.approx(16 / 30)
    assert record["saco"] == 1.0 and (tmp_path / "x--y-v0_returns.png").stat().st_size > 1000
    assert "| TQ | 0.533 |" in md.read_text()
    q = dataset_quality(d)
    assert q.tq is None and q.saco is None and q.episodes == 3
