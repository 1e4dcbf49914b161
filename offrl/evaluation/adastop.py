"""How many seeds? An adaptive group-sequential comparison of algorithms (AdaStop-style).

Instead of fixing the number of seeds in advance, seeds are run in interims: ``n`` more seeds
of every algorithm still in play, then a test, at most ``K`` times. After each interim every
pair of algorithms is either decided ("larger" / "smaller": the first one's mean score is
significantly higher / lower) or "undecided"; an algorithm whose comparisons are all decided
stops getting seeds. The family-wise error over all pairs and all interims stays ≤ α.

The procedure (after Mathieu et al., 2023, "AdaStop"), for pairs c = (i, j):

1. Statistic. ``T_c = (mean_i - mean_j) / se_c`` over all seeds so far, where ``se_c`` is the
   standard error of a difference of means computed from the pooled scores of i and j (the
   same for every reassignment below, so it does not change the test of the pair, it only
   puts all pairs on one scale). ``statistic="mean"`` gives AdaStop's plain difference.
2. Null distribution. Under H_c (i and j have the same score distribution) the 2n scores of
   one interim can be reassigned between i and j at random. A "permutation path" picks one
   reassignment per interim and per pair; ``S_c(path)`` is ``T_c`` recomputed on it. Pairs get
   independent reassignments, so each pair's reference is exact under its own null whatever
   the other algorithms do (pooling all algorithms' scores instead is exact when all are equal,
   but a low-variance third algorithm then narrows the reference of two noisy ones and the
   error doubles). Paths are enumerated exactly while their number is ≤ B, and sampled at random
   beyond (B paths, seeded, the identity path always included).
3. Spending. Interim k may have spent ``α_k = α (k + 1) / K`` in total (linear spending).
   Paths whose max statistic crossed an earlier boundary are removed (their mass is spent), so
   the level used at interim k is P(cross now and not before).
4. Boundary and step-down. Over the undecided pairs, ``M(path) = max_c |S_c(path)|``; the
   boundary ``b_k`` is the smallest value with ``spent + P(M > b_k, not crossed before) ≤ α_k``.
   If ``max_c |T_c| > b_k`` the arg-max pair is decided with the sign of its mean difference,
   removed, and the boundary is recomputed over the pairs left (step-down), until none crosses.

Why |·| on both sides: the published ``adastop`` package (0.1.3) compares ``max_c |T_c|`` with
the distribution of ``max_c`` of *signed* permuted differences, a one-sided threshold for a
two-sided statistic, and so rejects identical agents about 2α of the time.

Why scale each pair: independent per-pair references treat the pairs' statistics as
independent. For large n that is conservative (their |T| are positively dependent), but with
plain differences and n = 5 the max is ruled by the pairs whose pooled scores happen to spread
widest, and identical agents were rejected 5.5% (3 algorithms) to 6% (5 algorithms) of the time
at α = 5%. Scaled, it is 3.7-4.8% for 3 and 5 algorithms and 4.9% for 2 (simulations of
2,000-31,000 experiments, n = 5, B = 10,000, K = 1 and 4); power on a 1-sd gap between two
algorithms is 0.80 (n = 5, K = 4). With two algorithms both statistics give the same decisions.

A pair is decided when its two score distributions differ; the direction reported is that of
the means, so two algorithms with equal means but very different spreads can (rarely) be told
apart.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from offrl.errors import UserError

DECISIONS = ("larger", "smaller", "undecided")
STATISTICS = ("z", "mean")      # scaled mean difference (default), AdaStop's plain one
_MAX_PATH_ELEMENTS = 2_000_000  # experiments × paths × pairs held at once, per array


class SequentialTestError(UserError, ValueError):
    """Bad input to the sequential comparison; the message says what."""


@dataclass(frozen=True)
class PairDecision:
    """Outcome for one pair; ``decision`` reads "first is <decision> than second"."""

    first: str
    second: str
    decision: str                # "larger" | "smaller" | "undecided"
    interim: int | None          # 1-based interim at which it was decided, None if undecided
    seeds: int                   # seeds per algorithm used at its last test
    mean_first: float            # mean score over those seeds
    mean_second: float


@dataclass(frozen=True)
class SequentialResult:
    """State of a sequential comparison after the interims the available seeds allow."""

    names: list[str]
    pairs: list[PairDecision]
    interims_done: int           # interims tested so far (0 = not enough seeds for the first)
    interims: int                # K, the most interims allowed
    n_per_interim: int
    alpha: float
    seeds_available: dict[str, int]
    seeds_used: dict[str, int]   # seeds each algorithm contributed to the tests
    seeds_needed: dict[str, int]  # more seeds to run before the next interim (0: none/stopped)
    finished: bool               # every pair decided, or all K interims done
    boundaries: list[float]      # rejection threshold of each interim done (after step-down)
    level_spent: float           # family-wise error spent so far (≤ alpha)

    def still_running(self) -> list[str]:
        """Algorithms that take part in an undecided comparison and so need more seeds."""
        return [name for name, more in self.seeds_needed.items() if more > 0]


@dataclass(frozen=True)
class BatchResult:
    """Outcome of many independent experiments run at once (see ``sequential_test_batch``)."""

    pairs: list[tuple[int, int]]  # (i, j) algorithm indices, i < j
    decisions: np.ndarray        # (experiments, pairs) int8: +1 larger, -1 smaller, 0 undecided
    decided_at: np.ndarray       # (experiments, pairs) 0-based interim, -1 if undecided
    seeds_used: np.ndarray       # (experiments, algorithms)
    interims_done: np.ndarray    # (experiments,)
    boundaries: np.ndarray       # (experiments, K), NaN where not tested
    level_spent: np.ndarray      # (experiments,)


# ----------------------------------------------------------------------------- engine


def _combination_masks(n: int) -> np.ndarray:
    """All ways to give ``n`` of ``2n`` pooled scores to the first algorithm: ``(comb, 2n)`` 0/1.

    Row 0 is the identity (the first n positions), as ``itertools.combinations`` starts there.
    """
    rows = list(itertools.combinations(range(2 * n), n))
    masks = np.zeros((len(rows), 2 * n))
    masks[np.repeat(np.arange(len(rows)), n), np.array(rows).ravel()] = 1.0
    return masks


def _random_masks(rng: np.random.Generator, pairs: int, paths: int, n: int) -> np.ndarray:
    """Random reassignments ``(pairs, paths, 2n)`` 0/1 with n ones; path 0 is the identity."""
    chosen = np.argsort(rng.random((pairs, paths, 2 * n)), axis=-1)[..., :n]
    masks = np.zeros((pairs, paths, 2 * n))
    np.put_along_axis(masks, chosen, 1.0, axis=-1)
    masks[:, 0] = 0.0
    masks[:, 0, :n] = 1.0
    return masks


def _boundary(path_max: np.ndarray, budget_paths: np.ndarray) -> np.ndarray:
    """Smallest threshold b per experiment with #{paths: path_max > b} ≤ budget_paths.

    ``path_max``: ``(experiments, paths)``, -inf on removed paths; every remaining path carries
    the same probability mass, so the level condition is a count. The answer is the
    (budget+1)-th largest value; only the top values are sorted (np.partition first), since
    the budget is a few percent of the paths. Counting strictly larger values means tied
    values are never split.
    """
    n_paths = path_max.shape[1]
    top = int(min(n_paths, budget_paths.max() + 1))
    largest = np.partition(path_max, n_paths - top, axis=1)[:, n_paths - top:]
    largest = -np.sort(-largest, axis=1)                           # descending, (E, top)
    rows = np.arange(path_max.shape[0])
    bound = largest[rows, np.minimum(budget_paths, top - 1)]
    # Fewer remaining paths than the budget: the threshold is the smallest remaining value.
    lowest_alive = np.where(np.isfinite(path_max), path_max, np.inf).min(axis=1)
    return np.where(np.isfinite(bound), bound, lowest_alive)


def _pair_statistic(given_sum, total_sum, total_sq, seeds, statistic):
    """The statistic of pair (i, j) on every path: ``(E, C, P)``.

    ``given_sum``: sum of the scores a path gives to i, ``(E, C, P)``; ``total_*``: sum and sum
    of squares over both algorithms' seeds so far, ``(E, C)``; ``seeds``: seeds per algorithm.
    """
    s = total_sum[..., None] / seeds
    d = 2.0 * given_sum / seeds - s                      # mean_i - mean_j
    if statistic == "mean":
        return d
    # "z": divided by the standard error computed from the pooled scores of the pair, which
    # every path of the pair shares, so each pair's test is unchanged and only pairs are
    # put on one scale. The floor keeps two constant, equal samples at 0 instead of 0/0.
    pooled_var = np.maximum(total_sq[..., None] - 0.5 * seeds * s * s, 0.0) / (2 * seeds - 1)
    floor = 1e-20 * (1.0 + total_sq[..., None] / (2 * seeds))
    return d / np.sqrt(2.0 * pooled_var / seeds + floor)


def _run_chunk(data, available, pairs, n, K, alpha, B, rng, signed, statistic):
    """The procedure on ``data`` ``(E, A, K*n)`` (NaN past what is available); see module doc."""
    E, A, _ = data.shape
    C = len(pairs)
    pi = np.array([p[0] for p in pairs])
    pj = np.array([p[1] for p in pairs])
    involves = np.zeros((C, A), dtype=bool)
    involves[np.arange(C), pi] = True
    involves[np.arange(C), pj] = True

    decisions = np.zeros((E, C), dtype=np.int8)
    decided_at = np.full((E, C), -1)
    last_tested = np.full((E, C), -1)
    active = np.ones((E, C), dtype=bool)
    running = np.ones(E, dtype=bool)
    seeds_used = np.zeros((E, A), dtype=int)
    interims_done = np.zeros(E, dtype=int)
    boundaries = np.full((E, K), np.nan)
    spent = np.zeros(E)
    # Per path and pair: sum of the scores the path gave to i (one empty path to start).
    given_sum = np.zeros((E, C, 1))
    total_sum = np.zeros((E, C))
    total_sq = np.zeros((E, C))
    alive = np.ones((E, 1), dtype=bool)            # not crossed an earlier boundary
    mass = 1.0                                     # probability of each path (all equal)
    combos = _combination_masks(n) if math.comb(2 * n, n) <= B else None

    def path_max(ex):
        """max over the undecided pairs of |S_c| per path, -inf on removed paths: (ex, P)."""
        every = ex.size == E                      # avoid copying the paths when all are asked
        values = magnitude if every else magnitude[ex]
        m = np.where(active[ex][:, :, None], values, -np.inf).max(axis=1)
        return np.where(alive if every else alive[ex], m, -np.inf)

    for k in range(K):
        agents_in_play = (active[:, :, None] & involves[None]).any(axis=1)       # (E, A)
        has_seeds = (~agents_in_play | (available[None, :] >= (k + 1) * n)).all(axis=1)
        running &= has_seeds & active.any(axis=1)
        if not running.any():
            break
        interims_done[running] = k + 1
        seeds_used[running] = np.where(agents_in_play[running], (k + 1) * n, seeds_used[running])
        last_tested[running[:, None] & active] = k

        block = data[:, :, k * n:(k + 1) * n]                                     # (E, A, n)
        pooled = np.concatenate([block[:, pi], block[:, pj]], axis=-1)           # (E, C, 2n)
        total_sum += pooled.sum(axis=-1)
        total_sq += (pooled ** 2).sum(axis=-1)

        # Extend every path by one reassignment of this block per pair.
        n_paths = given_sum.shape[2]
        exact = combos is not None and n_paths * len(combos) ** C <= B
        if exact:
            grid = np.indices([len(combos)] * C).reshape(C, -1)                  # (C, Q)
            Q = grid.shape[1]

            def extend(cumulative, values):
                per_pair = values @ combos.T                                     # (E, C, comb)
                block_part = per_pair[:, np.arange(C)[:, None], grid]            # (E, C, Q)
                return (cumulative[:, :, :, None] + block_part[:, :, None, :]).reshape(E, C, -1)

            alive = np.repeat(alive, Q, axis=1)
            mass /= Q
        else:
            copies = max(1, B // n_paths)
            masks = _random_masks(rng, C, n_paths * copies, n).transpose(0, 2, 1)  # (C, 2n, P)

            def extend(cumulative, values):
                block_part = np.matmul(values.transpose(1, 0, 2), masks)          # (C, E, P)
                if copies > 1:
                    cumulative = np.repeat(cumulative, copies, axis=2)
                return cumulative + block_part.transpose(1, 0, 2)

            if copies > 1:
                alive = np.repeat(alive, copies, axis=1)
            mass /= copies
        given_sum = extend(given_sum, pooled)
        paths = _pair_statistic(given_sum, total_sum, total_sq, (k + 1) * n, statistic)
        magnitude = paths if signed else np.abs(paths)
        # T_c is path 0 (the identity), computed by the same arithmetic as every other path,
        # so rounding cannot lift it above a permuted copy of itself.
        observed = paths[:, :, 0]

        # Step-down: reject the largest |T_c| while it crosses the boundary of the pairs left.
        # Paths this interim may still cross: (alpha_k - spent) / mass, rounded down.
        budget_paths = np.floor((alpha * (k + 1) / K - spent) / mass + 1e-9).astype(int)
        bound = np.full(E, np.inf)
        todo = running.copy()
        while todo.any():
            ex = np.flatnonzero(todo)
            b = _boundary(path_max(ex), budget_paths[ex])
            bound[ex] = b
            abs_t = np.where(active[ex], np.abs(observed[ex]), -np.inf)
            top = abs_t.argmax(axis=1)
            reject = abs_t[np.arange(ex.size), top] > b + 1e-9 * (1.0 + np.abs(b))  # ties: keep
            ex, top = ex[reject], top[reject]
            decisions[ex, top] = np.where(observed[ex, top] > 0, 1, -1)
            decided_at[ex, top] = k
            active[ex, top] = False
            todo[:] = False
            todo[ex] = active[ex].any(axis=1)

        # Spend the level of the final boundary; remove the paths that crossed it.
        boundaries[running, k] = bound[running]
        ex = np.flatnonzero(running & active.any(axis=1))
        crossed = path_max(ex) > bound[ex, None]
        spent[ex] += mass * crossed.sum(axis=1)
        alive[ex] &= ~crossed

    return decisions, decided_at, last_tested, seeds_used, interims_done, boundaries, spent


def _check_params(n_per_interim, interims, alpha, permutations, statistic="z"):
    if int(n_per_interim) != n_per_interim or n_per_interim < 1:
        raise SequentialTestError(
            f"n_per_interim must be a positive integer, got {n_per_interim!r}")
    if statistic not in STATISTICS:
        raise SequentialTestError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if int(interims) != interims or interims < 1:
        raise SequentialTestError(f"interims must be a positive integer, got {interims!r}")
    if not 0.0 < alpha < 1.0:
        raise SequentialTestError(f"alpha must be in (0, 1), got {alpha!r}")
    if int(permutations) != permutations or permutations < 2:
        raise SequentialTestError(f"permutations must be an integer ≥ 2, got {permutations!r}")


def _run(data, available, n, K, alpha, B, seed, signed=False, statistic="z"):
    E, A, _ = data.shape
    pairs = list(itertools.combinations(range(A), 2))
    rng = np.random.default_rng(seed)
    # Location does not matter to either statistic; centring keeps sums of squares accurate.
    # Centre on the first interim only, so that replaying with more seeds changes nothing.
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # an experiment with no seeds yet
        centre = np.nanmean(data[:, :, :n], axis=(1, 2), keepdims=True)
    data = data - np.where(np.isfinite(centre), centre, 0.0)
    chunk = max(1, _MAX_PATH_ELEMENTS // (max(B, 1) * len(pairs)))
    parts = [_run_chunk(data[s:s + chunk], available, pairs, n, K, alpha, B, rng, signed,
                        statistic) for s in range(0, E, chunk)]
    return pairs, [np.concatenate(p) for p in zip(*parts)]


# ----------------------------------------------------------------------------- public API


def sequential_test_batch(
    data: np.ndarray,
    n_per_interim: int = 5,
    interims: int = 4,
    alpha: float = 0.05,
    permutations: int = 10_000,
    seed: int = 0,
    statistic: str = "z",
    signed_permutations: bool = False,
) -> BatchResult:
    """Run many independent experiments at once, each with all its seeds available up front.

    ``data``: ``(experiments, algorithms, interims * n_per_interim)`` scores; experiment e uses
    its seeds in order and stops early like a real one would. Used to measure the error rate
    and power in simulation. ``signed_permutations=True`` reproduces the published package's
    flaw (signed permuted differences against |T|), for comparison only.
    """
    _check_params(n_per_interim, interims, alpha, permutations, statistic)
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 3 or data.shape[1] < 2 or data.shape[2] < n_per_interim * interims:
        raise SequentialTestError(
            f"data must be (experiments, algorithms ≥ 2, ≥ {n_per_interim * interims} seeds), "
            f"got shape {data.shape}")
    if not np.isfinite(data).all():
        raise SequentialTestError("data holds NaN or infinite scores")
    data = data[:, :, :n_per_interim * interims]
    available = np.full(data.shape[1], data.shape[2])
    pairs, (dec, at, _, used, done, bounds, spent) = _run(
        data, available, n_per_interim, interims, alpha, permutations, seed, signed_permutations,
        statistic)
    return BatchResult(pairs, dec, at, used, done, bounds, spent)


def sequential_compare(
    scores: Mapping[str, Sequence[float]],
    n_per_interim: int = 5,
    interims: int = 4,
    alpha: float = 0.05,
    permutations: int = 10_000,
    seed: int = 0,
    statistic: str = "z",
) -> SequentialResult:
    """Replay the sequential test on the seeds run so far and say what to do next.

    ``scores``: ``{algorithm: per-seed scores}`` in the order the seeds were run (interim 1 uses
    the first n of each, interim 2 the next n, ...). The result gives each pair's decision and
    how many more seeds each algorithm needs before the next interim (0 once it is decided
    against everyone). Replaying is deterministic under ``seed``, so re-running with more seeds
    repeats the earlier interims exactly and continues from there.
    """
    _check_params(n_per_interim, interims, alpha, permutations, statistic)
    names = [str(name) for name in scores]
    if len(names) < 2:
        raise SequentialTestError(f"need at least two algorithms to compare, got {names}")
    arrays = []
    for name, values in scores.items():
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.size == 0:
            raise SequentialTestError(f"algorithm {name!r} has no scores")
        if not np.isfinite(x).all():
            raise SequentialTestError(f"algorithm {name!r} has NaN or infinite scores")
        arrays.append(x)
    n, K = n_per_interim, interims
    available = np.array([min(x.size, n * K) for x in arrays])
    data = np.full((1, len(arrays), n * K), np.nan)
    for a, x in enumerate(arrays):
        data[0, a, :available[a]] = x[:n * K]
    pairs, (dec, at, last, used, done, bounds, spent) = _run(
        data, available, n, K, alpha, permutations, seed, statistic=statistic)

    dec, at, last, used, done = dec[0], at[0], last[0], used[0], int(done[0])
    undecided = dec == 0
    finished = bool(not undecided.any() or done == K)
    needed = {}
    for a, name in enumerate(names):
        in_play = any(undecided[c] and a in pair for c, pair in enumerate(pairs))
        needed[name] = 0 if finished or not in_play else max(0, (done + 1) * n - int(available[a]))
    pair_results = []
    for c, (i, j) in enumerate(pairs):
        seeds = (int(last[c]) + 1) * n if last[c] >= 0 else 0
        pair_results.append(PairDecision(
            first=names[i], second=names[j],
            decision={1: "larger", -1: "smaller", 0: "undecided"}[int(dec[c])],
            interim=int(at[c]) + 1 if at[c] >= 0 else None,
            seeds=seeds,
            mean_first=float(arrays[i][:seeds].mean()) if seeds else float("nan"),
            mean_second=float(arrays[j][:seeds].mean()) if seeds else float("nan"),
        ))
    return SequentialResult(
        names=names, pairs=pair_results, interims_done=done, interims=K, n_per_interim=n,
        alpha=alpha,
        seeds_available={name: int(x.size) for name, x in zip(names, arrays)},
        seeds_used={name: int(u) for name, u in zip(names, used)},
        seeds_needed=needed, finished=finished,
        boundaries=[float(b) for b in bounds[0, :done]], level_spent=float(spent[0]),
    )
