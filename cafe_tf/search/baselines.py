"""Baseline searches on the same code path as the evolution (same budget checker, scorer and cache).

* :func:`random_search`: ``num_samples`` candidates drawn in the budget's window (seeded, so a rerun
  draws the same ones and the cache makes resuming free); the best one wins.
* :func:`uniform_scaling`: every group scaled by one fraction, the largest fraction within the
  budget (the usual "0.5x width" baseline at the same MACs); one candidate, scored for the record.
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
