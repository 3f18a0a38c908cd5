"""Cell kinds of the CafeNet studies, and the pilot's plan.

Every cell starts from one config file (``recipe["config"]``, a path relative to the repository
root of the pinned code, e.g. ``configs/fashion_mnist_resnet20.py``) with the recipe's dotted
overrides (``recipe["overrides"]``) and the cell's own overrides applied, so the manifest's recipe
hash covers every setting. Nets are named by id in the manifest's ``pool``
(``{"id", "bins": [...], "macs", "params", "kind"}``, bin widths in the study's space); the full net
is ``"full"``. Results are on the validation split unless a cell asks for the test split.

Kinds:

* ``cafenet_train_net``: a pool net trained from scratch (``{"net", "seed", "epochs"}``, optionally
  ``"splits"``, default ``["validation"]``) -> ``{"val_accuracy", "val_loss", "macs", "params"}``
  (``test_accuracy`` too when ``"test"`` is among the splits).
* ``cafenet_supernet``: a supernet variant (``{"overrides": {"supernet.<key>": ...}, "seed", "epochs"}``)
  -> artifacts ``supernet.keras`` and ``supernet.json``; result: its settings and end-of-training
  validation scores. In a multi-cell unit, ``"stop_after_epoch"`` ends a cell after that epoch and
  the unit's next cell resumes the run from its checkpoint.
* ``cafenet_score``: every net of ``{"nets": [ids]}`` scored by the supernet of ``{"supernet": cell
  id}`` (validation accuracy after BN recalibration, the search's equal rule; ``recipe["scoring"]``)
  -> ``{"scores": {net: accuracy}, "losses": {net: loss}}``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cafe_tf.study import cells
from cafe_tf.study.cells import CellContext

CODE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -------------------------------------------------------------------------------------------------
# Config, space and nets


def make_config(recipe: Mapping[str, Any], overrides: Mapping[str, Any] | None = None):
    """The config ``recipe`` describes (its config file with its overrides), then ``overrides``.

    Args:
      recipe: ``{"config": path relative to the code root, "overrides": {dotted key: value}}``.
      overrides: the cell's own dotted overrides, applied last.

    Returns:
      A locked ``ml_collections.ConfigDict``.
    """
    from cafe_tf import config as cfg

    path = recipe["config"]
    config = cfg.load_config(path if os.path.isabs(path) else os.path.join(CODE_ROOT, path))
    return cfg.apply_overrides(config, {**recipe.get("overrides", {}), **(overrides or {})})


def model_source(config):
    """The ``ModelSource`` of ``config.model`` for ``config.data``'s images and classes."""
    from cafe_tf import data as data_lib
    from cafe_tf.models import source as source_lib

    data = data_lib.make_data_source(config.data, seed=0, eval_splits=("validation",),
                                     input_scaling=config.model.input_scaling)
    return source_lib.from_config(config.model, data.image_shape, data.info.num_classes)


def make_space(config, model=None):
    """(model, SearchSpace) of ``config.supernet``'s bins for the full network (``model`` if given)."""
    from cafe_tf.graph import ChannelGraph
    from cafe_tf.space import space_from_section

    model = model if model is not None else model_source(config).build()
    return model, space_from_section(ChannelGraph.from_model(model), config.supernet)


def uniform_bins(space, target: float, tolerance: float) -> np.ndarray:
    """Bin widths of the uniformly scaled net within ``tolerance`` of ``target`` MACs, on ``space``'s bins.

    Bisection on the width factor (each group at the bin bound nearest ``factor x`` its channels)
    finds the largest factor at or under the target; then, while under the band, the group furthest
    below the factor grows one bin if the net stays under the band's top.

    Raises:
      ValueError: no such net lies in the band (names the target and the nearest MACs).
    """
    lo, hi = 1e-3, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if space.macs(space.uniform_widths(mid)) <= target:
            lo = mid
        else:
            hi = mid
    widths = space.uniform_widths(lo)
    low, high = (1 - tolerance) * target, (1 + tolerance) * target
    while space.macs(widths) < low:
        options = []
        for i, g in enumerate(space.groups):
            if widths[i] < g.num_bins:
                trial = widths.copy()
                trial[i] += 1
                if space.macs(trial) <= high:
                    options.append((g.bounds[widths[i]] / g.size, i, trial))
        if not options:
            break
        widths = min(options, key=lambda o: o[:2])[2]
    got = int(space.macs(widths))
    if not low <= got <= high:
        raise ValueError(f"no uniform net of this space lies within {100 * tolerance:g}% of {int(target):,} MACs; "
                         f"the nearest is {got:,}")
    return widths


def near_uniform_bins(space, target: float, tolerance: float, rng: np.random.Generator, count: int,
                      exclude: Sequence[Sequence[int]] = ()) -> list[np.ndarray]:
    """``count`` distinct nets in the band with every group within one bin of the uniform net (rejection)."""
    base = uniform_bins(space, target, tolerance)
    low, high = (1 - tolerance) * target, (1 + tolerance) * target
    seen = {tuple(int(x) for x in e) for e in exclude} | {tuple(int(x) for x in base)}
    out = []
    for _ in range(200000):
        if len(out) >= count:
            break
        w = np.clip(base + rng.integers(-1, 2, size=len(base)), 1, space.num_bins)
        key = tuple(int(x) for x in w)
        if key not in seen and low <= space.macs(w) <= high:
            seen.add(key)
            out.append(w)
    if len(out) < count:
        raise ValueError(f"found {len(out)} of {count} near-uniform nets within {100 * tolerance:g}% of "
                         f"{int(target):,} MACs")
    return out


def random_bins(space, target: float, tolerance: float, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """``count`` distinct random nets in the band (the search's sampler: rejection, then repair)."""
    from cafe_tf.search.budget import Budget, BudgetChecker

    high = (1 + tolerance) * target
    found = BudgetChecker(space, Budget(max_macs=high, lower_ratio=(1 - tolerance) / (1 + tolerance))).sample(rng, count)
    if len(found) < count:
        raise ValueError(f"found {len(found)} of {count} random nets within {100 * tolerance:g}% of {int(target):,} MACs")
    return [np.asarray(w, np.int64) for w in found]


def pool_entry(space, net_id: str, bins: Sequence[int], kind: str, budget: float | None) -> dict[str, Any]:
    """A manifest pool entry: id, kind, budget, bin widths, channels per group, MACs and params."""
    bins = np.asarray(bins, np.int64)
    full = float(space.cost.macs())
    return {"id": net_id, "kind": kind, "budget": budget, "bins": [int(b) for b in bins],
            "channels": [int(g.bounds[b]) for g, b in zip(space.groups, bins)],
            "macs": int(space.macs(bins)), "macs_ratio": float(space.macs(bins)) / full, "params": int(space.params(bins))}


def pool_net(manifest: Mapping[str, Any], net_id: str) -> dict[str, Any]:
    """The pool entry ``net_id`` of ``manifest`` (``"full"`` included).

    Raises:
      KeyError: naming the id and the pool's ids.
    """
    for entry in manifest.get("pool", []):
        if entry["id"] == net_id:
            return dict(entry)
    raise KeyError(f"net {net_id!r} is not in the manifest's pool; pool: {[e['id'] for e in manifest.get('pool', [])]}")


def selection_of(space, bins: Sequence[int]) -> dict[int, np.ndarray]:
    """Channel selection (leftmost channels) of bin widths."""
    return space.channels(space.fixed(np.asarray(bins, np.int64)))


# -------------------------------------------------------------------------------------------------
# Cell kinds


@cells.register("cafenet_train_net")
def train_net(params: dict, ctx: CellContext) -> dict:
    """Trains pool net ``params["net"]`` from scratch for ``params["epochs"]`` with ``params["seed"]``.

    ``params["splits"]`` (default ``["validation"]``) are the splits evaluated at the end; each
    gives ``<split>_accuracy`` and ``<split>_loss`` in the result.
    """
    from cafe_tf import surgery
    from cafe_tf.training import standard

    splits = tuple(params.get("splits", ["validation"]))
    config = make_config(ctx.manifest["recipe"], {"train.epochs": int(params["epochs"]), "train.seed": int(params["seed"]),
                                                  "train.eval_splits": splits, "train.eval_every": 0})
    net = pool_net(ctx.manifest, params["net"])
    source = model_source(config)

    def model_fn():
        model, space = make_space(config, source.build())
        if np.array_equal(np.asarray(net["bins"]), space.num_bins):
            return model
        return surgery.extract(model, selection_of(space, net["bins"]), copy_weights=False, name=f"net_{net['id']}")

    metrics = standard.run(config, os.path.join(ctx.scratch_dir, "train"), model_fn=model_fn)
    out = {"net": net["id"], "seed": int(params["seed"]), "epochs": int(params["epochs"]),
           "macs": net["macs"], "params": net["params"]}
    for split in splits:
        short = "val" if split == "validation" else split
        out[f"{short}_accuracy"] = float(metrics["final"][split]["accuracy"])
        out[f"{short}_loss"] = float(metrics["final"][split]["loss"])
    return out


class _Pause(Exception):
    """Raised after the checkpoint at which a cell of a multi-cell supernet unit stops."""


class _PauseAt:
    """A loop hook that stops training after the checkpoint of global step ``step`` (an epoch's end)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_begin(self, context) -> None:
        pass

    def on_step_end(self, step, logs) -> None:
        pass

    def on_epoch_end(self, epoch, logs) -> None:
        pass

    def on_checkpoint(self, step, path) -> None:
        if step >= self.step:
            raise _Pause(step)


# The files of a supernet run that carry it from one cell to the next: weights, the optimizer's
# momentum and the step (the kernel's checkpoint, so the resumed run is the uninterrupted one), the
# settings it checks on resuming, and the history.
_RESUME_FILES = ("supernet_settings.json", "history.json")


@cells.register("cafenet_supernet")
def supernet(params: dict, ctx: CellContext) -> dict:
    """Trains the supernet variant ``params`` describes; ``supernet.keras`` and ``supernet.json`` are the artifacts.

    Inside a multi-cell unit, ``params["stop_after_epoch"]`` ends the cell after that epoch with the
    run's checkpoint as the unit's checkpoint (no artifacts); the unit's next cell resumes it.
    """
    from cafe_tf.training import supernet as supernet_lib

    overrides = {**params.get("overrides", {}), "supernet.epochs": int(params["epochs"]),
                 "supernet.seed": int(params["seed"])}
    config = make_config(ctx.manifest["recipe"], overrides)
    supernet_lib.validate_supernet(config.supernet)
    workdir = os.path.join(ctx.scratch_dir, "supernet")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    previous = ctx.manifest_cell()["_previous"]
    if previous is not None:  # resume the unit's previous cell's run, every file SHA-256 verified
        for name in ctx.record(previous)["checkpoint"]:
            folder = workdir if name in _RESUME_FILES else ckpt_dir
            shutil.copy(ctx.resume_path(name), os.path.join(folder, name))
    stop = params.get("stop_after_epoch")
    hooks = []
    if stop is not None:
        import tensorflow as tf

        from cafe_tf import data as data_lib
        from cafe_tf.training.standard import steps_per_epoch

        data = data_lib.make_data_source(config.data, seed=config.supernet.seed,
                                         eval_splits=tuple(config.supernet.eval_splits),
                                         input_scaling=config.model.input_scaling)
        hooks.append(_PauseAt(int(stop) * steps_per_epoch(data, tf.distribute.get_strategy())))
    try:
        record = supernet_lib.run(config, workdir, hooks=hooks)
    except _Pause as paused:
        import tensorflow as tf

        latest = os.path.basename(tf.train.latest_checkpoint(ckpt_dir))  # only the latest of the kept ones
        for name in ["checkpoint"] + [n for n in os.listdir(ckpt_dir) if n.startswith(latest + ".")]:
            shutil.copy(os.path.join(ckpt_dir, name), ctx.checkpoint_path(name))
        for name in _RESUME_FILES:
            if os.path.isfile(os.path.join(workdir, name)):
                shutil.copy(os.path.join(workdir, name), ctx.checkpoint_path(name))
        return {"paused_at_step": int(paused.args[0]), "epochs_done": int(stop), "epochs": int(params["epochs"]),
                "seed": int(params["seed"]), "overrides": params.get("overrides", {})}
    for name in ("supernet.keras", "supernet.json"):
        shutil.copy(os.path.join(workdir, name), ctx.artifact_path(name))
    return {"epochs": int(params["epochs"]), "seed": int(params["seed"]), "overrides": params.get("overrides", {}),
            "resumed_from": previous,
            "summary": {k: record[k] for k in ("space", "settings", "validation", "steps", "train_seconds") if k in record}}


@cells.register("cafenet_score")
def score(params: dict, ctx: CellContext) -> dict:
    """Scores the pool nets ``params["nets"]`` with the supernet of cell ``params["supernet"]``."""
    from cafe_tf import data as data_lib
    from cafe_tf.search import run as search_run
    from cafe_tf.search.evaluator import ScoreCache

    ctx.input(params["supernet"], "supernet.json")  # verified; load_supernet reads it beside the .keras
    path = ctx.input(params["supernet"], "supernet.keras")
    scoring = {"search.scoring": "equal", **ctx.manifest["recipe"].get("scoring", {})}
    config = make_config(ctx.manifest["recipe"], scoring)
    path, _, _, net, space = search_run.load_supernet(path)
    data = data_lib.make_data_source(config.data, seed=config.search.seed, eval_splits=("validation",),
                                     input_scaling=config.model.input_scaling)
    evaluator, _ = search_run.make_evaluator(config, net, space, path, data)
    cache = ScoreCache(evaluator)
    scores, losses = {}, {}
    for net_id in params["nets"]:
        rec = cache.record(pool_net(ctx.manifest, net_id)["bins"])
        scores[net_id], losses[net_id] = float(rec["score"]), float(rec["loss"])
    return {"supernet": params["supernet"], "scores": scores, "losses": losses,
            "mean_score": float(np.mean(list(scores.values())))}


# -------------------------------------------------------------------------------------------------
# The pilot's plan

PILOT_BUDGETS = (0.2, 0.1)  # tried in this order: the first with headroom is the study's budget
PILOT_SEEDS = (0, 1, 2)
PILOT_TRAIN_EPOCHS = 6  # the study's retraining length
PILOT_SUPERNET_EPOCHS = 3
PILOT_MACS_RANGE = (0.05, 0.3)  # covers both candidate budgets with room on each side
PILOT_ZONES = {"channels": {"supernet.zone_unit": "channels"}, "bins": {"supernet.zone_unit": "bins"}}
PILOT_SAMPLINGS = {"uniform": {"supernet.sampling": "uniform"},
                   "range": {"supernet.sampling": "macs_range", "supernet.macs_range": list(PILOT_MACS_RANGE)}}
PILOT_RECIPE = {
    "config": "configs/fashion_mnist_resnet20.py",
    "overrides": {
        # Every arm on the same bins: FLOPs-sensitive, at most 8 channels each; locally free, r = 1.
        "supernet.granularity": "flops_sensitive", "supernet.max_bin": 8, "supernet.sharing": "locally_free",
        "supernet.r": 1, "supernet.num_candidates": 2, "supernet.sandwich": False, "supernet.checkpoint_every": 0,
        # Scoring: the search's equal rule, K = 2 evaluations, each on all 5,000 validation images
        # after BN recalibration on its own 1,024 training images; no screening.
        "search.scoring": "equal", "search.num_candidates": 2, "search.calibration_examples": 1024,
        "search.eval_examples": 0, "search.screen_fraction": 1.0,
        "train.eval_every": 0,
    },
}


def _pct(b: float) -> str:
    return f"b{round(100 * b)}"


def pilot_pool(space, rng: np.random.Generator, per_budget: int = 12, tolerance: float = 0.01) -> list[dict]:
    """The pilot's pool: the full net, then per budget the uniform net, near-uniform and random nets in the band."""
    full = float(space.cost.macs())
    pool = [pool_entry(space, "full", space.num_bins, "full", None)]
    for b in PILOT_BUDGETS:
        target, key = b * full, _pct(b)
        u = uniform_bins(space, target, tolerance)
        near = near_uniform_bins(space, target, tolerance, rng, per_budget // 2 - 1)
        rand = random_bins(space, target, tolerance, rng, per_budget - per_budget // 2)
        pool.append(pool_entry(space, f"{key}_uniform", u, "uniform", b))
        pool += [pool_entry(space, f"{key}_near{i}", w, "near_uniform", b) for i, w in enumerate(near)]
        pool += [pool_entry(space, f"{key}_random{i}", w, "random", b) for i, w in enumerate(rand)]
    return pool


def pilot_manifest(commit: str, space=None, seed: int = 0) -> dict[str, Any]:
    """The CafeNet pilot's manifest (pinned to ``commit``): pool, cells, claims and selection rules.

    Args:
      commit: the code commit every cell runs.
      space: the study's search space (default: built from :data:`PILOT_RECIPE`'s config).
      seed: seeds the pool.

    Returns:
      The manifest dict (write it with ``cafe_tf.io.write_json``).
    """
    from cafe_tf.study import manifest as manifest_lib

    if space is None:
        _, space = make_space(make_config(PILOT_RECIPE))
    pool = pilot_pool(space, np.random.default_rng([seed, 0x9110]))
    cells_: list[dict] = []
    claims: list[dict] = []
    for s in PILOT_SEEDS:  # the cheapest cells first
        for b in sorted(PILOT_BUDGETS):
            cells_.append({"id": f"train_{_pct(b)}_uniform_s{s}", "kind": "cafenet_train_net",
                           "params": {"net": f"{_pct(b)}_uniform", "seed": s, "epochs": PILOT_TRAIN_EPOCHS}})
        cells_.append({"id": f"train_full_s{s}", "kind": "cafenet_train_net",
                       "params": {"net": "full", "seed": s, "epochs": PILOT_TRAIN_EPOCHS}})
    arms = [(z, m) for z in PILOT_ZONES for m in PILOT_SAMPLINGS]
    for z, m in arms:
        cells_.append({"id": f"supernet_{z}_{m}", "kind": "cafenet_supernet",
                       "params": {"overrides": {**PILOT_ZONES[z], **PILOT_SAMPLINGS[m]}, "seed": 0,
                                  "epochs": PILOT_SUPERNET_EPOCHS}})
    for b in PILOT_BUDGETS:
        nets = [e["id"] for e in pool if e["budget"] == b]
        for z, m in arms:
            cells_.append({"id": f"score_{z}_{m}_{_pct(b)}", "kind": "cafenet_score",
                           "params": {"supernet": f"supernet_{z}_{m}", "nets": nets},
                           "after": [f"supernet_{z}_{m}"]})
    for b in PILOT_BUDGETS:
        key = _pct(b)
        nets = [e["id"] for e in pool if e["budget"] == b]
        claims.append({
            "id": f"headroom_{key}", "statistic": "paired_difference",
            "description": f"full net minus the uniform net at {b:.0%} of the MACs, validation accuracy after "
                           f"{PILOT_TRAIN_EPOCHS} epochs from scratch, paired by seed",
            "pairs": [[f"train_full_s{s}:val_accuracy", f"train_{key}_uniform_s{s}:val_accuracy"] for s in PILOT_SEEDS],
            "rule": {"estimate_at_least": 0.01, "ci_low_above": 0.0}})

        def pairs(a: str, c: str, key=key, nets=nets) -> list[list[str]]:
            return [[f"score_{a}_{key}:scores.{n}", f"score_{c}_{key}:scores.{n}"] for n in nets]

        claims.append({
            "id": f"zone_{key}", "statistic": "paired_difference",
            "description": f"moderate zone (r = 1 bin of at most 8 channels) minus the one-channel zone: supernet "
                           f"validation score of the {len(nets)} pool nets at {b:.0%}, paired by net, both samplings",
            "pairs": pairs("bins_uniform", "channels_uniform") + pairs("bins_range", "channels_range"),
            "rule": {"estimate_above": 0.0}})
        claims.append({
            "id": f"sampling_{key}", "statistic": "paired_difference",
            "description": f"MACs-range sampling {PILOT_MACS_RANGE} minus uniform-over-bins sampling: supernet "
                           f"validation score of the {len(nets)} pool nets at {b:.0%}, paired by net, both zones",
            "pairs": pairs("channels_range", "channels_uniform") + pairs("bins_range", "bins_uniform"),
            "rule": {"estimate_above": 0.0}})
        for z, m in arms:
            claims.append({"id": f"score_{z}_{m}_{key}", "statistic": "mean",
                           "description": f"mean supernet score of the pool nets at {b:.0%} ({z} zone, {m} sampling)",
                           "values": [f"score_{z}_{m}_{key}:scores.{n}" for n in nets]})
    recipe = PILOT_RECIPE
    return {
        "schema": manifest_lib.SCHEMA, "schema_version": manifest_lib.VERSION, "name": "cafenet_pilot",
        "commit": commit, "modules": ["cafe_tf.study.cafenet"],
        "question": "Which budget has headroom, which local zone and which width sampling the CafeNet study uses "
                    "(decided on validation accuracy; the test split is not read).",
        "recipe": recipe, "recipe_sha256": manifest_lib.recipe_sha256(recipe),
        "space": space.describe() | {"groups": [{"name": g.name, "channels": g.size, "bounds": list(g.bounds)}
                                                 for g in space.groups], "full_macs": int(space.cost.macs())},
        "arms": {"zones": PILOT_ZONES, "samplings": PILOT_SAMPLINGS, "budgets": list(PILOT_BUDGETS),
                 "seeds": list(PILOT_SEEDS), "train_epochs": PILOT_TRAIN_EPOCHS,
                 "supernet_epochs": PILOT_SUPERNET_EPOCHS, "supernet_seed": 0},
        "pool": pool,
        "cells": cells_,
        "claims": claims,
        "selection_rules": {
            "budget": "B = 0.2 if claim headroom_b20 passes (full minus uniform >= 1 pt and the 95% t-interval "
                      "above 0); else B = 0.1 if headroom_b10 passes; else no budget has headroom under this "
                      "recipe, and the study is not built on either (the pilot's report says so).",
            "zone": "At B: the moderate zone (zone_unit=bins, r = 1 bin, max_bin = 8) if claim zone_b<B> passes "
                    "(mean paired difference above 0), else the one-channel zone (zone_unit=channels, r = 1).",
            "sampling": f"At B: macs_range sampling over {PILOT_MACS_RANGE} of the full MACs if claim "
                        "sampling_b<B> passes (mean paired difference above 0), else uniform sampling over bins.",
            "bins": "FLOPs-sensitive bins of at most 8 channels for every arm of the study, whatever the zone.",
            "cafenet": "The study's CafeNet arm is the locally free supernet with the chosen zone and sampling; the "
                       "other zone is reported beside it; the fixed supernet uses the chosen sampling.",
            "n": "Every planned cell runs; nothing is decided before the last cell of a claim is in.",
        },
        "expected_cpu_hours": "about 1.5 on 2 cores: 9 nets x 6 epochs (full ~100 s an epoch, the small nets "
                              "faster), 4 supernets x 3 epochs, 8 scoring cells of 12 nets",
    }
