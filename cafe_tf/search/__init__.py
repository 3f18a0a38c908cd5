"""Width search with a trained supernet: evaluator, budgets, evolution and baselines.

* :mod:`~cafe_tf.search.evaluator`: a width's score (best of K free-channel arrangements, BN
  recalibrated, validation accuracy) and the score cache every search shares;
* :mod:`~cafe_tf.search.budget`: MACs / params / latency bounds, the feasible range, sampling in the
  window ``[0.8 x budget, budget]``;
* :mod:`~cafe_tf.search.evolution`: the evolutionary search (resumable) and the Pareto set;
* :mod:`~cafe_tf.search.baselines`: random search, uniform width scaling, greedy slimming (AutoSlim);
* :mod:`~cafe_tf.search.run`: the job behind ``python -m cafe_tf.search`` (config section, ``run``).
"""

from cafe_tf.search.baselines import greedy_slimming, random_search, uniform_scaling, uniform_widths_within
from cafe_tf.search.budget import Budget, BudgetChecker, BudgetError, LatencyPredictor
from cafe_tf.search.evaluator import ScoreCache, SupernetEvaluator, widths_key
from cafe_tf.search.evolution import EvolutionSettings, SearchResult, evolve, pareto_front
from cafe_tf.search.run import METHODS, search_section, validate_search

__all__ = [
    "Budget", "BudgetChecker", "BudgetError", "LatencyPredictor", "ScoreCache", "SupernetEvaluator", "widths_key",
    "EvolutionSettings", "SearchResult", "evolve", "pareto_front", "random_search", "uniform_scaling",
    "uniform_widths_within", "greedy_slimming", "METHODS", "search_section", "validate_search",
]
