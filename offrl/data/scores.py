"""Normalised scores: 100 × (return − ref_min) / (ref_max − ref_min), as papers report D4RL.

0 is the reference minimum (usually a uniform-random policy), 100 the reference maximum
(usually an expert policy). D4RL's own `get_normalized_score` returns the fraction; offrl
returns the percentage everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from offrl.errors import UserError


class MissingReferenceScores(UserError, ValueError):
    """The card or metadata has no reference min/max return, so scores cannot be normalised."""


def reference_scores(refs: Any) -> tuple[float, float]:
    """(ref_min, ref_max) from a DatasetCard, a Dataset, a metadata dict or a (min, max) pair."""
    name = "the given references"
    if hasattr(refs, "metadata") and not callable(refs.metadata):  # a Dataset
        refs = refs.metadata
    if isinstance(refs, Mapping):
        name = str(refs.get("dataset_id") or name)
        lo, hi = refs.get("ref_min_score"), refs.get("ref_max_score")
    elif hasattr(refs, "ref_min_score"):  # a DatasetCard
        name = f"dataset {refs.id!r} (card {refs.path})" if hasattr(refs, "id") else name
        lo, hi = refs.ref_min_score, refs.ref_max_score
    elif isinstance(refs, (tuple, list)) and len(refs) == 2:
        lo, hi = refs
    else:
        raise TypeError(f"expected a DatasetCard, Dataset, metadata dict or (min, max); got "
                        f"{type(refs).__name__}")
    missing = [k for k, v in (("ref_min_score", lo), ("ref_max_score", hi)) if v is None]
    if missing:
        raise MissingReferenceScores(
            f"normalised scores are unavailable for {name}: no {' or '.join(missing)}; "
            "report raw returns, or add the reference returns to the card's [scores] table")
    lo, hi = float(lo), float(hi)
    if not np.isfinite([lo, hi]).all() or hi <= lo:
        raise MissingReferenceScores(f"reference scores for {name} are unusable: "
                                     f"ref_min_score={lo}, ref_max_score={hi} (need min < max)")
    return lo, hi


def normalized_score(returns: Any, refs: Any) -> Any:
    """100 × (returns − ref_min) / (ref_max − ref_min).

    returns: a float or an array of any shape (per-episode returns, per-seed means, …);
    the result has the same shape (a float for a scalar input), float64.
    refs: see `reference_scores`.
    """
    lo, hi = reference_scores(refs)
    scores = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
    return float(scores) if scores.ndim == 0 else scores
