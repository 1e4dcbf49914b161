"""Semi-supervised datasets: keep the actions of a few trajectories, hide the rest.

SS-ORL (Zheng et al. 2023) sorts trajectories by return and keeps the actions of 10% of all
trajectories, drawn from the lowest-return 50%; every other trajectory loses its actions:

    hidden = hide_actions(dataset, 0.1, by="lowest-50%", seed=0)
    hidden.labelled          # (N,) True on the kept trajectories' rows only
    hidden.metadata["semi_supervised"]   # how the split was made (spec, seed, episodes kept)

Hidden actions become NaN with `labelled` False, so samplers skip those rows and files written
from the result (HDF5, Minari) are action-free there. Fill them with
`offrl.data.labelling.label_actions`.

Where the kept trajectories are drawn from (`by`):
    "random"          any trajectory
    "lowest-P%"       the P% of trajectories with the lowest return (SS-ORL: "lowest-50%")
    "highest-P%"      the P% with the highest return
    "quantile:LO-HI"  return quantiles LO..HI in [0, 1], e.g. "quantile:0.25-0.75"
`fraction` is always a fraction of all trajectories, as in SS-ORL.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from offrl.data.dataset import Dataset, DatasetError

__all__ = ["hide_actions", "parse_split_spec", "SPLIT_SPECS_HELP", "split_id"]

SPLIT_SPECS_HELP = ("'random', 'lowest-P%', 'highest-P%' (P in (0, 100]) or 'quantile:LO-HI' "
                    "(0 <= LO < HI <= 1)")
_PERCENT = re.compile(r"^(lowest|highest)-(\d+(?:\.\d+)?)%$")
_QUANTILE = re.compile(r"^quantile:(\d*\.?\d+)-(\d*\.?\d+)$")
# Infos whose name holds this word describe the action (e.g. D4RL's action_log_probs): they
# would leak the hidden action, so they are hidden with it.
_ACTION_INFO_WORD = "action"


def parse_split_spec(by: str) -> tuple[float, float]:
    """The return-quantile range (lo, hi) in [0, 1] a spec draws from; DatasetError if unknown."""
    text = str(by).strip().lower()
    if text == "random":
        return 0.0, 1.0
    m = _PERCENT.match(text)
    if m:
        p = float(m.group(2)) / 100
        if not 0 < p <= 1:
            raise DatasetError(f"split spec {by!r}: the percentage must be in (0, 100]")
        return (0.0, p) if m.group(1) == "lowest" else (1.0 - p, 1.0)
    m = _QUANTILE.match(text)
    if m:
        lo, hi = float(m.group(1)), float(m.group(2))
        if not 0 <= lo < hi <= 1:
            raise DatasetError(f"split spec {by!r}: needs 0 <= LO < HI <= 1")
        return lo, hi
    raise DatasetError(f"unknown split spec {by!r}; expected {SPLIT_SPECS_HELP}")


def split_id(dataset_id: str, fraction: float, by: str, seed: int) -> str:
    """Id of a derived dataset, e.g. 'hopper-medium-v2-labelled10-lowest50-s0'."""
    pct = f"{fraction * 100:g}".replace(".", "p")
    where = re.sub(r"[^a-z0-9]+", "", str(by).lower().replace(".", "p"))
    return f"{dataset_id}-labelled{pct}-{where}-s{seed}"


def _round(x: float) -> int:
    """Round half up (numpy rounds half to even, which would make 2.5 trajectories 2)."""
    return int(np.floor(x + 0.5 + 1e-9))


def hide_actions(dataset: Dataset, fraction: float, by: str = "lowest-50%",
                 seed: int = 0) -> Dataset:
    """Keep the actions of round(fraction × E) trajectories drawn from the `by` return range.

    dataset: validated first. Only trajectories whose every row has a recorded action (labelled,
        not a proxy) can be kept; the rows of all others lose their actions.
    fraction: in (0, 1], a fraction of all E trajectories.
    by: where to draw from (see the module docstring).
    seed: the draw is `numpy.random.default_rng(seed)`; same inputs, same split.
    Returns a new Dataset: hidden rows get NaN actions and labelled False; float infos whose
    name contains "action" (e.g. D4RL's action_log_probs) get NaN there, other such infos are
    dropped; metadata["semi_supervised"] records the split and the kept episode indices.
    Raises DatasetError on a bad fraction or spec, or when no trajectory would keep its actions.
    """
    dataset.validate()
    where = dataset.name
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)):
        raise DatasetError(f"{where}: fraction must be a number in (0, 1]; got {fraction!r}")
    fraction = float(fraction)
    if not 0 < fraction <= 1:
        raise DatasetError(f"{where}: fraction must be in (0, 1] (a fraction of all "
                           f"trajectories whose actions are kept); got {fraction}")
    lo, hi = parse_split_spec(by)
    n_eps = dataset.num_episodes
    if n_eps == 0:
        raise DatasetError(f"{where}: has no trajectories to split")
    if dataset.action_dim == 0:
        raise DatasetError(f"{where}: has no actions to hide (action width 0)")

    # Candidates: trajectories with every action recorded, ordered by return (ties by index).
    true_rows = dataset.true_labelled
    starts, ends = dataset.episode_starts, dataset.episode_ends
    complete = np.logical_and.reduceat(true_rows, starts) if len(dataset) else np.zeros(0, bool)
    order = np.argsort(dataset.episode_returns, kind="stable")
    pool = order[_round(lo * n_eps):_round(hi * n_eps)]
    pool = pool[complete[pool]]
    n_keep = _round(fraction * n_eps)
    if n_keep == 0:
        raise DatasetError(f"{where}: fraction {fraction} of {n_eps} trajectories rounds to 0, "
                           "so no labelled trajectory would be left; use a larger fraction")
    if n_keep > len(pool):
        raise DatasetError(f"{where}: fraction {fraction} keeps {n_keep} of {n_eps} trajectories "
                           f"but the {by!r} range holds only {len(pool)} with recorded actions; "
                           "use a smaller fraction or a wider range")
    rng = np.random.default_rng(seed)
    kept = np.sort(rng.choice(pool, size=n_keep, replace=False)) if len(pool) else pool

    labelled = np.zeros(len(dataset), dtype=bool)
    episode_of_row = np.repeat(np.arange(n_eps), ends - starts)
    labelled[np.isin(episode_of_row, kept)] = True
    labelled &= dataset.labelled
    actions = dataset.actions.copy()
    actions[~labelled] = np.nan
    infos, hidden_infos, dropped_infos = {}, [], []
    for key, arr in dataset.infos.items():
        if _ACTION_INFO_WORD not in key.lower():
            infos[key] = arr
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.copy()
            arr[~labelled] = np.nan
            infos[key] = arr
            hidden_infos.append(key)
        else:
            dropped_infos.append(key)  # e.g. the proxy flag: no proxies survive a split

    meta = {k: v for k, v in dataset.metadata.items() if k not in ("sha256", "source_path")}
    source_id = dataset.metadata.get("dataset_id") or dataset.name
    meta["dataset_id"] = split_id(str(source_id), fraction, by, seed)
    split: dict[str, Any] = {
        "source_dataset_id": source_id, "source_sha256": dataset.metadata.get("sha256"),
        "fraction": fraction, "by": str(by), "return_quantiles": [lo, hi], "seed": int(seed),
        "episodes": n_eps, "labelled_episodes": int(n_keep),
        "labelled_transitions": int(labelled.sum()), "transitions": len(dataset),
        "labelled_episode_indices": [int(i) for i in kept],
        "hidden_infos": hidden_infos, "dropped_infos": dropped_infos,
    }
    # D4RL files carry the behaviour policy's weights under metadata/policy/: with them the
    # hidden actions could be recomputed, so an action-free split drops them.
    extras = {k: v for k, v in dataset.extras.items() if not k.startswith("metadata/policy/")}
    split["dropped_extras"] = sorted(set(dataset.extras) - set(extras))
    meta["semi_supervised"] = split
    meta.pop("labelling", None)  # a split of a labelled dataset keeps no proxies
    out = dataset.replace(actions=actions, labelled=labelled, infos=infos, extras=extras,
                          metadata=meta)
    return out.validate()
