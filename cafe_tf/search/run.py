"""The search job: config section, latency-table loading, and ``run(config, workdir)`` -> ``widths.json``.

``run`` reads the supernet (``search.supernet``, default ``<workdir>/supernet.keras``, with the
``supernet.json`` written beside it by ``cafe_tf.train_supernet``: model, search space), resolves
the budget (``max_macs`` / ``max_params`` / ``max_latency_ms``; with none given,
``macs_ratio`` x the full net's MACs), refuses an infeasible one before touching data, builds the
evaluator on the validation split, runs ``search.method`` and writes ``<workdir>/widths.json``.
Scores go to ``<workdir>/search_cache.json`` and the evolution's state to
``<workdir>/search_state.json`` after every generation, so a killed search resumes where it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import ml_collections
import numpy as np
from absl import logging

from cafe_tf import data as data_lib
from cafe_tf.config import ConfigError, to_dict
from cafe_tf.search import baselines
from cafe_tf.search.budget import Budget, BudgetChecker, LatencyPredictor
from cafe_tf.io import file_sha256
from cafe_tf.search.evaluator import SCORINGS, ScoreCache, SupernetEvaluator
from cafe_tf.search.evolution import EvolutionSettings, SearchResult, evaluated_table, evolve, pareto_front
from cafe_tf.space import SearchSpace, read_supernet, space_from_section, write_widths

METHODS = ("evolution", "random", "greedy", "uniform")


def search_section() -> ml_collections.ConfigDict:
    """Defaults of ``config.search``: the evolution settings."""
    return ml_collections.ConfigDict(dict(
        method="evolution",  # evolution | random | greedy (AutoSlim) | uniform (uniform width scaling)
        max_macs=0,  # budget in multiply-accumulates; 0 = unset
        max_params=0,  # budget in parameters; 0 = unset
        max_latency_ms=0.0,  # budget in ms, predicted by search.latency_table; 0 = unset
        latency_table="",  # a latency table file of deploy.latency_table
        latency_target="",  # the target max_latency_ms is for (host | android); "" = the table's; another is refused
        # After a search under max_latency_ms: export the chosen net (the table's quant), measure it on the
        # table's target, report measured and predicted side by side, and stop when it measures over the
        # budget by more than the table's stated error (its held-out p90 relative error).
        latency_check=True,
        latency_check_rounds=3,  # host: interleaved timing rounds (best of)
        benchmark_binary="",  # android: the benchmark_model binary latency_check runs over adb
        adb_serial="",  # android: the device (default: the only one attached)
        macs_ratio=0.5,  # with no budget given: max_macs = macs_ratio x the full net's MACs
        lower_ratio=0.8,  # candidates are kept in [lower_ratio x budget, budget]
        population=50,
        generations=20,
        parents=10,  # top-k kept as the next generation's elite and bred from
        mutation_prob=0.1,  # per group
        crossover_fraction=0.5,  # share of the children made by crossover (the rest by mutation)
        random_samples=0,  # random search: candidates scored; 0 = population x generations
        greedy_step=0.1,  # greedy slimming: fraction of a group's bins removed per move
        num_candidates=2,  # free-channel arrangements scored per width (the best counts); 1 = leftmost only
        scoring="arrangements",  # arrangements: best of <= K arrangements, one calibration set | equal: exactly K
        # evaluations for every space (fixed sharing too), evaluation i on its own calibration set (compare's rule)
        calibration_examples=256,  # training images for each candidate's BN recalibration
        eval_examples=0,  # validation images per score; 0 = the whole validation split
        screen_fraction=1.0,  # < 1: the K arrangements are ranked on this share of the validation batches and
        #                       only the best runs on the rest (K x fraction + the rest per score); 1 = off
        seed=0,
        supernet="",  # the supernet.keras to search; "" = <workdir>/supernet.keras
    ))


def validate_search(section: ml_collections.ConfigDict) -> None:
    """Checks ``config.search``; raises ConfigError naming the key, the value and what is valid."""
    if section.method not in METHODS:
        raise ConfigError(f"config.search.method={section.method!r} is invalid; valid values: {list(METHODS)}")
    if section.get("scoring", "arrangements") not in SCORINGS:
        raise ConfigError(f"config.search.scoring={section.scoring!r} is invalid; valid values: {list(SCORINGS)}")
    for key in ("max_macs", "max_params", "max_latency_ms", "random_samples", "eval_examples"):
        if section[key] < 0:
            raise ConfigError(f"config.search.{key}={section[key]!r} is invalid; it must be >= 0 (0 = unset)")
    if section.max_latency_ms and not section.latency_table:
        raise ConfigError(f"config.search.max_latency_ms={section.max_latency_ms!r} needs "
                          "config.search.latency_table=FILE (a table from deploy.latency_table)")
    if section.latency_target:
        from deploy.latency_table import TARGETS

        if section.latency_target not in TARGETS:
            raise ConfigError(f"config.search.latency_target={section.latency_target!r} is invalid; valid values: "
                              f"{list(TARGETS)} or '' (the table's)")
    if section.max_latency_ms and section.latency_check and section.latency_target == "android" \
            and not section.benchmark_binary:
        raise ConfigError("config.search.latency_check=True on target 'android' needs config.search.benchmark_binary="
                          "PATH (TFLite's benchmark_model for Android), or latency_check=False")
    if section.latency_check_rounds < 1:
        raise ConfigError(f"config.search.latency_check_rounds={section.latency_check_rounds!r} is invalid; it must be >= 1")
    if not 0 <= section.macs_ratio <= 1:
        raise ConfigError(f"config.search.macs_ratio={section.macs_ratio!r} is invalid; it must be in [0, 1]")
    if not 0 < section.screen_fraction <= 1:
        raise ConfigError(f"config.search.screen_fraction={section.screen_fraction!r} is invalid; it must be in "
                          "(0, 1] (1 = every arrangement on every validation image)")
    if not 0 <= section.lower_ratio <= 1:
        raise ConfigError(f"config.search.lower_ratio={section.lower_ratio!r} is invalid; it must be in [0, 1]")
    for key in ("population", "generations", "parents", "num_candidates", "calibration_examples"):
        if section[key] < 1:
            raise ConfigError(f"config.search.{key}={section[key]!r} is invalid; it must be >= 1")
    if section.population < 2:
        raise ConfigError(f"config.search.population={section.population!r} is invalid; it must be >= 2")
    if section.parents > section.population:
        raise ConfigError(f"config.search.parents={section.parents!r} is invalid; it must be <= population "
                          f"({section.population})")
    if not 0 < section.mutation_prob <= 1:
        raise ConfigError(f"config.search.mutation_prob={section.mutation_prob!r} is invalid; it must be in (0, 1]")
    if not 0 <= section.crossover_fraction <= 1:
        raise ConfigError(f"config.search.crossover_fraction={section.crossover_fraction!r} is invalid; "
                          "it must be in [0, 1]")
    if not 0 < section.greedy_step <= 1:
        raise ConfigError(f"config.search.greedy_step={section.greedy_step!r} is invalid; it must be in (0, 1]")


def budget_from_section(section: ml_collections.ConfigDict, full_macs: int) -> Budget:
    """The budget ``config.search`` asks for (``macs_ratio`` x full MACs when no bound is given)."""
    max_macs = float(section.max_macs) or None
    max_params = float(section.max_params) or None
    max_latency = float(section.max_latency_ms) or None
    if max_macs is None and max_params is None and max_latency is None:
        if not section.macs_ratio:
            raise ConfigError("config.search has no budget: set max_macs, max_params, max_latency_ms or macs_ratio > 0")
        max_macs = float(int(section.macs_ratio * full_macs))
    return Budget(max_macs=max_macs, max_params=max_params, max_latency_ms=max_latency,
                  lower_ratio=float(section.lower_ratio))


def load_latency_predictor(path: str) -> LatencyPredictor:
    """The latency predictor stored in ``path`` (a file of ``deploy.latency_table``)."""
    if not os.path.isfile(path):
        raise ValueError(f"config.search.latency_table={path!r} does not exist; build one with deploy.latency_table")
    try:
        from deploy import latency_table
    except ImportError as e:
        raise ValueError(f"config.search.latency_table={path!r} needs the deploy.latency_table module, which "
                         f"could not be imported ({e})") from None
    for name in ("load", "load_table", "read_table", "read"):
        loader = getattr(latency_table, name, None)
        if callable(loader):
            predictor = loader(path)
            break
    else:
        raise ValueError("deploy.latency_table has no loader (load / load_table / read_table / read)")
    if not callable(getattr(predictor, "predict_ms", None)):
        raise ValueError(f"the latency table loaded from {path!r} has no predict_ms(model)")
    return predictor


def check_table(latency: Any, model: keras.Model, section: ml_collections.ConfigDict) -> None:
    """Refuses a latency table built for another model or target (when the predictor can tell:
    ``deploy.latency_table.LatencyTable.check_model``)."""
    check = getattr(latency, "check_model", None)
    if callable(check):
        check(model, section.latency_target or None, where=f"config.search.latency_table={section.latency_table!r}")


def verify_latency(section: ml_collections.ConfigDict, checker: BudgetChecker, widths: np.ndarray) -> dict[str, Any]:
    """Measures the chosen network on the latency table's target against its prediction (``latency_check``).

    Returns the record widths.json keeps (measured and predicted side by side, the budget, the table's
    stated error); raises ``deploy.latency_table.LatencyBudgetExceeded`` when the network measures over
    the budget by more than the table's error. A predictor that names no target is not measured."""
    table, bound = checker.latency, checker.budget.max_latency_ms
    predicted = checker.latency_ms(widths)
    if not section.latency_check:
        return {"predicted_ms": predicted, "budget_ms": bound, "skipped": "config.search.latency_check=False"}
    info = getattr(table, "info", None) or {}
    if not info.get("target"):
        return {"predicted_ms": predicted, "budget_ms": bound,
                "skipped": "the latency predictor names no target to measure on"}
    if info["target"] == "android" and not section.benchmark_binary:
        raise ConfigError("the latency table is for target 'android': config.search.latency_check needs "
                          "config.search.benchmark_binary=PATH (TFLite's benchmark_model for Android), or set "
                          "config.search.latency_check=False")
    from deploy import latency_table

    model = checker.plain_model(widths)
    measured = latency_table.measure_on_target(
        table, model, rounds=section.latency_check_rounds, benchmark_binary=section.benchmark_binary or None,
        serial=section.adb_serial or None)
    env = measured["environment"]
    where = {"target": measured["target"], "quant": measured["quant"], "threads": measured["threads"],
             "how": measured["how"], "method": info.get("method", "isolated"),
             "device": env.get("cpu") or env.get("model") or env.get("adb_serial"),
             "load_average_1m": env.get("load_average_1m")}
    record = latency_table.check_budget(bound, predicted, measured["measured_ms"], getattr(table, "stated_error_pct", None))
    return {**record, **where}


def run_search(method: str, checker: BudgetChecker, cache: ScoreCache, section: ml_collections.ConfigDict,
               state_path: str | None = None) -> SearchResult:
    """Runs ``method`` (see METHODS) with the settings of ``section`` on one budget checker and cache."""
    if method == "evolution":
        settings = EvolutionSettings(population=section.population, generations=section.generations,
                                     parents=section.parents, mutation_prob=section.mutation_prob,
                                     crossover_fraction=section.crossover_fraction, seed=section.seed)
        return evolve(checker, cache, settings, state_path=state_path)
    if method == "random":
        n = section.random_samples or section.population * section.generations
        return baselines.random_search(checker, cache, n, seed=section.seed)
    if method == "greedy":
        return baselines.greedy_slimming(checker, cache, step=section.greedy_step)
    if method == "uniform":
        return baselines.uniform_scaling(checker, cache)
    raise ConfigError(f"config.search.method={method!r} is invalid; valid values: {list(METHODS)}")


def load_supernet(path: str) -> tuple[str, dict[str, Any], keras.Model, Any, SearchSpace]:
    """(absolute path, supernet.json record, Keras model, Supernet, SearchSpace) of a trained supernet.keras."""
    from cafe_tf.slim import Supernet

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ValueError(f"supernet {path!r} does not exist; train one with "
                         "`python -m cafe_tf.train_supernet` or set config.search.supernet")
    record = read_supernet(os.path.join(os.path.dirname(path), "supernet.json"))
    model = keras.models.load_model(path, compile=False)
    supernet = Supernet(model)
    return path, record, model, supernet, space_from_section(supernet.graph, record["space"])


def check_input_shape(model: keras.Model, data: Any) -> None:
    """Raises ValueError when ``data``'s images do not fit the supernet's input."""
    model_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    if tuple(data.image_shape) != model_shape:
        raise ValueError(f"the supernet takes inputs of shape {model_shape}, but config.data yields "
                         f"{tuple(data.image_shape)}; use the data settings the supernet was trained with")


def make_evaluator(config: ml_collections.ConfigDict, supernet: Any, space: SearchSpace, supernet_path: str,
                   data: Any) -> tuple[SupernetEvaluator, dict[str, Any]]:
    """The supernet evaluator ``config.search`` describes on ``data``'s validation split, and its cache fingerprint."""
    section = config.search
    check_input_shape(supernet.model, data)
    scoring = section.get("scoring", "arrangements")
    sets = section.num_candidates if scoring == "equal" else 1
    calibration = [x for x, _ in data_lib.calibration_batches(data, sets * section.calibration_examples)]
    validation = data_lib.take_batches(data.make_eval["validation"], section.eval_examples)
    evaluator = SupernetEvaluator(supernet, space, calibration, validation, section.num_candidates, seed=section.seed,
                                  scoring=scoring, screen_fraction=section.screen_fraction)
    fingerprint = {"scoring": scoring,
        "supernet_sha256": file_sha256(supernet_path), "space": space.describe(),
        "num_candidates": section.num_candidates, "calibration_examples": section.calibration_examples,
        "eval_examples": section.eval_examples, "seed": section.seed, "data": config.data.name,
        "validation_size": config.data.validation_size, "screen_fraction": section.screen_fraction,
    }
    return evaluator, fingerprint


BASELINE_MACS_TOLERANCE = 0.01  # the uniform baseline lies within this relative distance of the chosen net's MACs


def baseline_records(checker: BudgetChecker, cache: ScoreCache, method: str, macs: float) -> list[dict[str, Any]]:
    """The uniform-width net at the chosen net's MACs, scored by the same supernet (the report draws it).

    Args:
      checker: the search's budget checker (its space).
      cache: the search's score cache; its scorer scores the net when it can score a channel selection
        (:meth:`SupernetEvaluator.score_channels`), else the record has no score.
      method: the search method (``uniform``: no baseline, the result is one).
      macs: the chosen net's MACs; the baseline lies within ``BASELINE_MACS_TOLERANCE`` of them
        (:func:`baselines.uniform_at`, as ``cafe_tf.compare``'s uniform arm).

    Returns:
      ``[{"name", "width_factor", "channels" (per prunable group), "macs", "params", "score"}]``, or
      ``[]`` when the method is ``uniform`` or no uniformly scaled net reaches the band.
    """
    if method == "uniform":
        return []
    space = checker.space
    try:
        factor, selection = baselines.uniform_at(space, float(macs), BASELINE_MACS_TOLERANCE, space.channel_multiple)
    except ValueError as e:
        logging.warning("no uniform-width baseline: %s", e)
        return []
    full = space.graph.validate_selection(selection)
    widths = space.cost.widths_of(full)
    score_channels = getattr(cache.scorer, "score_channels", None)
    score = score_channels(full)["accuracy"] if score_channels is not None else None
    return [{"name": "uniform width", "width_factor": float(factor),
             "channels": [int(len(selection[g.group_id])) for g in space.groups],
             "macs": int(space.cost.macs(widths)), "params": int(space.cost.params(widths)), "score": score}]


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    data: Any = None,
    evaluator_factory: Callable[..., Callable] | None = None,
    latency: LatencyPredictor | None = None,
) -> dict[str, Any]:
    """Searches widths under ``config.search``'s budget; writes and returns ``<workdir>/widths.json``'s record.

    ``data`` (a ``cafe_tf.data.DataSource``) replaces the one ``config.data`` describes;
    ``evaluator_factory(supernet, space, data)`` replaces the supernet evaluator; ``latency``
    replaces the predictor loaded from ``search.latency_table``.
    """
    section = config.search
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    supernet_path, record, model, supernet, space = load_supernet(section.supernet or os.path.join(workdir, "supernet.keras"))
    if latency is None and section.latency_table:
        latency = load_latency_predictor(os.path.expanduser(section.latency_table))
    if latency is not None:
        check_table(latency, space.graph.model, section)
    budget = budget_from_section(section, space.cost.macs())
    checker = BudgetChecker(space, budget, latency)
    checker.check_feasible()  # before any data is read: a bad budget fails at once
    logging.info("search: %s on %s (%s), budget %s, space of 10^%.1f width assignments", section.method,
                 record["model"]["name"], supernet_path, budget.bounds(), space.size_log10)

    if data is None:
        data = data_lib.make_data_source(config.data, seed=section.seed, eval_splits=("validation",),
                                         input_scaling=config.model.input_scaling, workdir=workdir)
    if evaluator_factory is not None:
        check_input_shape(model, data)
        evaluator = evaluator_factory(supernet, space, data)
        fingerprint = {"evaluator": "custom"}
    else:
        evaluator, fingerprint = make_evaluator(config, supernet, space, supernet_path, data)
    cache = ScoreCache(evaluator, path=os.path.join(workdir, "search_cache.json"), fingerprint=fingerprint)
    result = run_search(section.method, checker, cache, section, os.path.join(workdir, "search_state.json"))

    arrangement = result.record.get("arrangement") or [list(b) for b in space.fixed(result.widths)]
    channels = space.channels(arrangement)
    measured = checker.measure(result.widths)
    # before anything is written: a network over the budget on the target stops the run here
    latency_check = verify_latency(section, checker, result.widths) if budget.max_latency_ms is not None else None
    extra = {
        "baselines": baseline_records(checker, cache, result.method, measured["macs"]),
        "method": result.method,
        "score": result.record["score"],
        "score_metric": "validation_accuracy (supernet, BN recalibrated)",
        "score_record": result.record,
        "bins": result.widths.tolist(),
        "arrangement": arrangement,
        "latency_ms": measured.get("latency_ms"),
        "latency_check": latency_check,
        "budget": {**budget.describe(), "resolved": budget.bounds(), "feasible_range": checker.feasible_range()},
        "in_window": bool(checker.in_window(result.widths)),
        "window_relaxed": result.window_relaxed,
        "space": space.describe(),
        "search": to_dict(section),
        "supernet": {"path": supernet_path, "summary": record.get("settings", {})},
        "pareto": pareto_front(cache, checker),
        "evaluated": evaluated_table(cache, checker),
        "history": result.history,
        "scored_this_run": cache.misses,
        "cache_hits_this_run": cache.hits,
        "seconds_this_run": round(time.time() - t0, 3),
        "config": to_dict(config),
    }
    out = write_widths(os.path.join(workdir, "widths.json"), supernet.graph, channels, record["model"], extra)
    logging.info("search done: %s, score %.4f, %d MACs (%.1f%% of full), %d params; %d scored (%d from cache)",
                 result.method, out["score"], out["macs"], 100.0 * out["macs"] / out["full_macs"], out["params"],
                 cache.misses, cache.hits)
    return out


def summary_lines(record: Mapping[str, Any]) -> list[str]:
    """A few lines describing a widths.json record, for the program's output."""
    lines = [
        f"method {record['method']}: validation score {record['score']:.4f} (supernet)",
        f"  MACs   {record['macs']:>14,} of {record['full_macs']:,} "
        f"({100.0 * record['macs'] / record['full_macs']:.1f}%)",
        f"  params {record['params']:>14,} of {record['full_params']:,} "
        f"({100.0 * record['params'] / record['full_params']:.1f}%)",
    ]
    check = record.get("latency_check") or {}
    if check.get("measured_ms") is not None:
        error = check.get("stated_error_pct")
        lines.append(f"  latency {check['predicted_ms']:.3f} ms predicted, {check['measured_ms']:.3f} ms measured on "
                     f"{check['target']} ({check.get('device') or '?'}); budget {check['budget_ms']:g} ms, table error "
                     f"{'none stated' if error is None else f'{error:.1f}%'} (p90 held-out), limit {check['limit_ms']:.3f} ms")
    elif record.get("latency_ms") is not None:
        lines.append(f"  latency {record['latency_ms']:.3f} ms (predicted"
                     f"{'; not measured: ' + check['skipped'] if check.get('skipped') else ''})")
    widths = ", ".join(f"{g['width']}/{g['size']}" for g in record["groups"])
    lines.append(f"  widths per group: {widths}")
    lines.append(f"  scored {record['scored_this_run']} candidates ({record['cache_hits_this_run']} cache hits) "
                 f"in {record['seconds_this_run']:.0f} s; Pareto set of {len(record['pareto'])}")
    return lines


__all__ = ["METHODS", "search_section", "validate_search", "budget_from_section", "load_latency_predictor",
           "check_table", "verify_latency",
           "load_supernet", "check_input_shape", "make_evaluator", "run_search", "baseline_records", "run",
           "summary_lines"]
