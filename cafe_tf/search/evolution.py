"""Evolutionary width search under a budget (resumable after a kill).

Each generation (SPOS/OFA-style, with these numbers by default):

1. score the population (through a :class:`~cafe_tf.search.evaluator.ScoreCache`: nothing is
   scored twice, across generations or across a kill);
2. keep the ``parents`` best as the next generation's elite;
3. fill the rest with ``mutation`` children (a random parent; each group's width redrawn uniformly
   with probability ``mutation_prob``) and ``crossover`` children (each group's width from one of two
   random parents), in the ratio ``crossover_fraction``. A child is kept only if it lies in the
   budget's window ``[lower_ratio x budget, budget]`` and is not already in the population; failed
   tries are redrawn (bounded), and any shortfall is topped up with fresh samples from the window.

The initial population is sampled in the window (:meth:`BudgetChecker.sample`). After every
generation the state (generation, population, RNG state, history) is written atomically to
``state_path``; a new call with the same path continues from there.

The result is the best-scoring candidate of everything scored in the window, with the per-generation
history; :func:`pareto_front` gives the non-dominated (MACs, score) set of all scored candidates.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

from cafe_tf import io
from cafe_tf.search.budget import BudgetChecker
from cafe_tf.search.evaluator import ScoreCache, widths_key

STATE_SCHEMA = "cafe_tf.search_state"
STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class EvolutionSettings:
    """Population, generations, parents (top-k), mutation probability per group, share of crossover children."""

    population: int = 50
    generations: int = 20
    parents: int = 10
    mutation_prob: float = 0.1
    crossover_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}")
        if self.generations < 1:
            raise ValueError(f"generations must be >= 1, got {self.generations}")
        if not 1 <= self.parents <= self.population:
            raise ValueError(f"parents must be in [1, population={self.population}], got {self.parents}")
        if not 0 < self.mutation_prob <= 1:
            raise ValueError(f"mutation_prob must be in (0, 1], got {self.mutation_prob}")
        if not 0 <= self.crossover_fraction <= 1:
            raise ValueError(f"crossover_fraction must be in [0, 1], got {self.crossover_fraction}")


@dataclasses.dataclass
class SearchResult:
    """The chosen widths, its record, and what the search went through."""

    method: str
    widths: np.ndarray
    record: dict[str, Any]
    history: list[dict[str, Any]]
    evaluated: int
    window_relaxed: bool = False


def _key(w: np.ndarray) -> tuple[int, ...]:
    return tuple(int(x) for x in w)


def mutate(parent: np.ndarray, num_bins: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Each group's width redrawn uniformly over its bins with probability ``prob``."""
    child = parent.copy()
    hit = rng.random(len(child)) < prob
    child[hit] = rng.integers(1, num_bins[hit] + 1)
    return child


def crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each group's width from ``a`` or ``b`` with equal probability."""
    return np.where(rng.random(len(a)) < 0.5, a, b)


def best_of(cache: ScoreCache, checker: BudgetChecker, candidates: Sequence[np.ndarray] | None = None,
            window: bool = True) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The best-scoring scored candidate (of ``candidates``, default all cached) in the window, or only
    within the bounds with ``window=False``; ties go to fewer MACs."""
    best = None
    pool = cache.items() if candidates is None else ((w, cache.get(w)) for w in candidates)
    for widths, rec in pool:
        if rec is None or not (checker.in_window(widths) if window else checker.within(widths)):
            continue
        key = (rec["score"], -int(checker.space.macs(widths)))
        if best is None or key > best[0]:
            best = (key, widths, rec)
    return None if best is None else (best[1], best[2])


def evolve(
    checker: BudgetChecker,
    cache: ScoreCache,
    settings: EvolutionSettings = EvolutionSettings(),
    state_path: str | None = None,
    on_generation: Callable[[dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Runs (or resumes, from ``state_path``) the evolutionary search; see the module doc."""
    space = checker.space
    num_bins = space.num_bins
    rng = np.random.default_rng(settings.seed)
    start, population, history, members = 0, None, [], {}
    if state_path and os.path.isfile(state_path):
        state = io.read_artifact(state_path, STATE_SCHEMA, (STATE_VERSION,), ("generation", "population", "rng"))
        if state.get("settings") != dataclasses.asdict(settings):
            raise ValueError(f"{state_path} was written by a search with other settings ({state.get('settings')}); "
                             f"now {dataclasses.asdict(settings)}. Use a new --workdir or delete it")
        start, history = int(state["generation"]), list(state.get("history", []))
        population = [np.asarray(p, np.int64) for p in state["population"]]
        members = {widths_key(m): np.asarray(m, np.int64) for m in state.get("members", [])}
        rng.bit_generator.state = state["rng"]
        window_relaxed = bool(state.get("window_relaxed", False))
        logging.info("evolution: resuming at generation %d/%d from %s", start + 1, settings.generations, state_path)
    if population is None:
        window_relaxed = False
        population = checker.sample(rng, settings.population)
        if not population:
            window_relaxed = True
            logging.warning("no candidate found in the window [%g x budget, budget]; keeping candidates under the "
                            "budget instead", checker.budget.lower_ratio)
            population = _sample_within(checker, rng, settings.population)
        if not population:
            raise ValueError("no sub-network within the budget could be sampled; relax the budget")

    for generation in range(start, settings.generations):
        scores = np.asarray([cache(w) for w in population])
        members.update((widths_key(w), w) for w in population)
        order = np.argsort(-scores, kind="stable")
        entry = {"generation": generation + 1, "best": float(scores[order[0]]), "mean": float(scores.mean()),
                 "best_widths": population[order[0]].tolist(), "scored": len(cache),
                 "best_macs": int(space.macs(population[order[0]]))}
        history.append(entry)
        logging.info("generation %d/%d: best %.4f mean %.4f (%d candidates scored so far)", generation + 1,
                     settings.generations, entry["best"], entry["mean"], len(cache))
        if on_generation is not None:
            on_generation(entry)
        if generation + 1 < settings.generations:  # the last generation is scored; nothing to breed
            parents = [population[i] for i in order[: settings.parents]]
            population = _next_generation(parents, settings, checker, num_bins, rng, window_relaxed)
        if state_path:
            io.write_artifact(state_path, STATE_SCHEMA, STATE_VERSION, {
                "generation": generation + 1, "population": [p.tolist() for p in population],
                "rng": rng.bit_generator.state, "history": history, "settings": dataclasses.asdict(settings),
                "window_relaxed": window_relaxed, "members": [m.tolist() for m in members.values()]})

    # Only this search's candidates compete (a shared cache may hold other methods' scores).
    pool = list(members.values())
    chosen = best_of(cache, checker, pool, window=not window_relaxed) or best_of(cache, checker, pool, window=False)
    if chosen is None:
        raise ValueError("the search scored no candidate within the budget")
    widths, rec = chosen
    return SearchResult("evolution", widths, rec, history, len(cache), window_relaxed)


def _accept(checker: BudgetChecker, w: np.ndarray, relaxed: bool) -> bool:
    return checker.within(w) if relaxed else checker.in_window(w)


def _sample_within(checker: BudgetChecker, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    found: dict[tuple[int, ...], np.ndarray] = {}
    for _ in range(50):
        for w in checker.propose(rng, 1024):
            if len(found) >= n:
                break
            if checker.within(w):
                found.setdefault(_key(w), w)
    return list(found.values())


def _next_generation(parents: Sequence[np.ndarray], settings: EvolutionSettings, checker: BudgetChecker,
                     num_bins: np.ndarray, rng: np.random.Generator, relaxed: bool) -> list[np.ndarray]:
    population = [p.copy() for p in parents]
    seen = {_key(p) for p in population}
    n_children = settings.population - len(parents)
    n_cross = int(round(n_children * settings.crossover_fraction)) if len(parents) > 1 else 0
    plan = ["crossover"] * n_cross + ["mutation"] * (n_children - n_cross)
    for kind in plan:
        for _ in range(100):  # bounded retries: a tight window rejects many children
            if kind == "crossover":
                i, j = rng.choice(len(parents), size=2, replace=False)
                child = crossover(parents[i], parents[j], rng)
            else:
                child = mutate(parents[rng.integers(len(parents))], num_bins, settings.mutation_prob, rng)
            if _key(child) not in seen and _accept(checker, child, relaxed):
                population.append(child)
                seen.add(_key(child))
                break
    if len(population) < settings.population:  # top up with fresh samples from the window
        fresh = _sample_within(checker, rng, 4 * settings.population) if relaxed else \
            checker.sample(rng, 4 * settings.population)
        for w in fresh:
            if len(population) >= settings.population:
                break
            if _key(w) not in seen:
                population.append(w)
                seen.add(_key(w))
    return population


def pareto_front(cache: ScoreCache, checker: BudgetChecker) -> list[dict[str, Any]]:
    """Non-dominated scored candidates (fewer MACs, higher score), sorted by MACs, with params and scores."""
    rows = []
    for widths, rec in cache.items():
        macs, params = checker.measure_cheap(widths)
        rows.append({"widths": widths.tolist(), "macs": int(macs[0]), "params": int(params[0]),
                     "score": float(rec["score"])})
    rows.sort(key=lambda r: (r["macs"], -r["score"]))
    front, best = [], -np.inf
    for r in rows:
        if r["score"] > best:
            front.append(r)
            best = r["score"]
    return front


def evaluated_table(cache: ScoreCache, checker: BudgetChecker) -> list[dict[str, Any]]:
    """Every scored candidate: widths, MACs, params, score (for plots and the report)."""
    out = []
    for widths, rec in cache.items():
        macs, params = checker.measure_cheap(widths)
        out.append({"widths": widths.tolist(), "macs": int(macs[0]), "params": int(params[0]),
                    "score": float(rec["score"])})
    return out


__all__ = ["EvolutionSettings", "SearchResult", "evolve", "mutate", "crossover", "pareto_front", "evaluated_table",
           "best_of"]
