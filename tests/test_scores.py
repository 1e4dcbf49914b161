"""Normalised scores: 100 × (R − min) / (max − min), from cards, metadata or pairs."""

from __future__ import annotations

import numpy as np
import pytest

from offrl.data.registry import get_card
from offrl.data.scores import MissingReferenceScores, normalized_score, reference_scores
from offrl.errors import UserError


def test_d4rl_hopper_numbers():
    card = get_card("hopper-medium-v2")
    assert normalized_score(-20.272305, card) == pytest.approx(0.0)
    assert normalized_score(3234.3, card) == pytest.approx(100.0)
    midpoint = (-20.272305 + 3234.3) / 2
    assert normalized_score(midpoint, card) == pytest.approx(50.0)
    assert isinstance(normalized_score(1000.0, card), float)


def test_vectorised_over_any_shape():
    returns = np.array([[0.0, 50.0, 100.0], [25.0, 75.0, -50.0]])
    scores = normalized_score(returns, (0.0, 100.0))
    assert scores.shape == (2, 3) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, returns)
    np.testing.assert_allclose(normalized_score([10.0, 20.0], (10.0, 30.0)), [0.0, 50.0])


def test_metadata_dict_and_dataset_like():
    meta = {"dataset_id": "x", "ref_min_score": -280.178953, "ref_max_score": 12135.0}
    assert normalized_score(-280.178953, meta) == pytest.approx(0.0)

    class WithMetadata:
        metadata = meta
    assert reference_scores(WithMetadata()) == (-280.178953, 12135.0)


def test_missing_refs_say_why():
    with pytest.raises(MissingReferenceScores, match="unavailable for x: no ref_max_score"):
        normalized_score([1.0], {"dataset_id": "x", "ref_min_score": 0.0})
    with pytest.raises(UserError, match="need min < max"):
        normalized_score(1.0, (5.0, 5.0))
    with pytest.raises(TypeError):
        normalized_score(1.0, 3.0)
