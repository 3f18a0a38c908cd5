"""Baseline searches on the same code path as the evolution (same budget checker, scorer and cache).

* :func:`random_search`: ``num_samples`` candidates drawn in the budget's window (seeded, so a rerun
  draws the same ones and the cache makes resuming free); the best one wins.
* :func:`uniform_scaling`: every group scaled by one fraction, the largest fraction within the
  budget (the usual "0.5x width" baseline at the same MACs); one candidate, scored for the record.
* :func:`uniform_at`: the uniformly scaled net (in channels, off the bin grid) within a relative
  :func:`band` of a MACs target, such as a searched net's MACs: equal-MACs comparisons use it.
* :func:`greedy_slimming`: AutoSlim's greedy search. Start from the full net; each round, shrink
  each group in turn by ``step`` of its bins, score every such neighbour and keep the best one;
  stop at the first net within the budget. Its path passes through nets above the budget (that is
  the method), so unlike the others it scores candidates outside the window.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from cafe_tf.search.budget import BudgetChecker
from cafe_tf.search.evaluator import ScoreCache
from cafe_tf.search.evolution import SearchResult
from cafe_tf.space import SearchSpace


def random_search(checker: BudgetChecker, cache: ScoreCache, num_samples: int, seed: int = 0) -> SearchResult:
    """Scores ``num_samples`` random candidates from the window and returns the best."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    rng = np.random.default_rng([seed, 0x5EA4C4])
    candidates = checker.sample(rng, num_samples)
    if not candidates:
        raise ValueError("no candidate in the budget's window could be sampled; relax the budget")
    history, ranked = [], []
    for i, w in enumerate(candidates, 1):
        # Only this run's candidates compete (the cache may hold other methods' scores); ties: fewer MACs.
        ranked.append((cache(w), -int(checker.space.macs(w)), i - 1))
        if i % 10 == 0 or i == len(candidates):
            history.append({"scored": i, "best": float(max(r[0] for r in ranked))})
            logging.info("random search: %d/%d scored, best %.4f", i, len(candidates), history[-1]["best"])
    widths = candidates[max(ranked)[2]]
    return SearchResult("random", widths, cache.get(widths), history, len(candidates))


def uniform_widths_within(checker: BudgetChecker, resolution: int = 2000) -> np.ndarray:
    """The uniformly scaled widths with the largest fraction that still meets every bound."""
    space = checker.space
    best = None
    for fraction in np.linspace(1.0, 1.0 / resolution, resolution):
        w = space.uniform_widths(float(fraction))
        if best is not None and np.array_equal(w, best):
            continue
        if checker.within(w):
            return w
        best = w
    raise ValueError("no uniformly scaled network meets the budget; the smallest uniform net is still over it")


def band(target: float, tolerance: float) -> tuple[float, float]:
    """(lowest, highest) MACs within ``tolerance`` (relative) of ``target``: the band equal-MACs comparisons use."""
    return (1.0 - tolerance) * target, (1.0 + tolerance) * target


def uniform_channels(space: SearchSpace, fraction: float, multiple: int) -> np.ndarray:
    """Channel widths (all groups, by id) of one width factor: each prunable group at ``fraction`` of its
    channels, rounded to ``multiple`` (at least one multiple, at most the group)."""
    widths = np.array(space.cost.full_widths, dtype=np.int64)
    for g in space.groups:
        widths[g.group_id] = int(np.clip(multiple * np.round(fraction * g.size / multiple), min(multiple, g.size),
                                         g.size))
    return widths


def uniform_at(space: SearchSpace, target: float, tolerance: float,
               multiple: int = 1) -> tuple[float, dict[int, np.ndarray]]:
    """(width factor, channel selection) of the uniformly scaled net within ``tolerance`` of ``target`` MACs.

    Bisection finds the largest factor whose rounded widths stay at or under the target. Rounding to
    ``multiple`` moves every group at once, so the MACs can jump past the band; an exact-fit step then
    grows, one multiple at a time, the group furthest below the factor (smallest width / size) while
    the net stays under the band's top, until it reaches the band. Raises ValueError naming the
    target and the nearest MACs reached when it cannot.
    """
    def macs(widths) -> int:
        return int(space.cost.macs(widths))

    lo, hi = 0.0, 1.0
    if macs(uniform_channels(space, hi, multiple)) <= target:
        lo = hi
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            if macs(uniform_channels(space, mid, multiple)) <= target:
                lo = mid
            else:
                hi = mid
    widths = uniform_channels(space, lo, multiple)
    low, high = band(target, tolerance)
    while macs(widths) < low:
        options = []
        for g in space.groups:
            trial = widths.copy()
            trial[g.group_id] = min(g.size, widths[g.group_id] + multiple)
            if trial[g.group_id] > widths[g.group_id] and macs(trial) <= high:
                options.append((widths[g.group_id] / g.size, g.group_id, trial))
        if not options:
            break
        widths = min(options, key=lambda o: o[:2])[2]
    got = macs(widths)
    if not low <= got <= high:
        raise ValueError(f"no uniform width factor reaches {int(target):,} MACs within {100 * tolerance:g}%: the "
                         f"nearest is {got:,} (factor {lo:.4f}); widen the tolerance or lower "
                         f"supernet.channel_multiple ({multiple})")
    return lo, {g.group_id: np.arange(int(widths[g.group_id])) for g in space.groups}


def uniform_scaling(checker: BudgetChecker, cache: ScoreCache) -> SearchResult:
    """The uniform-width baseline at the budget (scored for the comparison)."""
    widths = uniform_widths_within(checker)
    rec = cache.record(widths)
    return SearchResult("uniform", widths, rec, [{"scored": 1, "best": rec["score"]}], 1)


def greedy_slimming(checker: BudgetChecker, cache: ScoreCache, step: float = 0.1) -> SearchResult:
    """AutoSlim's greedy slimming from the full net down to the budget; see the module doc."""
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1] (a fraction of each group's bins), got {step}")
    space = checker.space
    widths = space.num_bins.copy()
    decrement = np.maximum(1, np.round(step * space.num_bins)).astype(np.int64)
    history = []
    while not checker.within(widths):
        best = None
        for i in range(len(widths)):
            if widths[i] <= 1:
                continue
            trial = widths.copy()
            trial[i] = max(1, trial[i] - decrement[i])
            key = (cache(trial), -int(space.macs(trial)))
            if best is None or key > best[0]:
                best = (key, trial)
        if best is None:
            raise ValueError("greedy slimming reached the smallest net without meeting the budget")
        widths = best[1]
        history.append({"round": len(history) + 1, "score": float(best[0][0]), "macs": int(space.macs(widths)),
                        "widths": widths.tolist(), "scored": len(cache)})
        logging.info("greedy slimming round %d: %d MACs, score %.4f", len(history), history[-1]["macs"],
                     history[-1]["score"])
    return SearchResult("greedy", widths, cache.record(widths), history, len(cache))  # scored unless at the start


__all__ = ["random_search", "uniform_scaling", "uniform_widths_within", "greedy_slimming"]
