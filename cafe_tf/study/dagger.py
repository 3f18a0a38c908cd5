"""Cell kinds of the Dagger studies: pretraining in resumable parts, gate training, prune + fine-tune
arms, the budget with headroom, and the pilot's variant choice.

The manifest's ``recipe`` holds everything the cells share::

    {"data": {...config.data keys...}, "model": {...config.model keys...},
     "pretrain": {...config.train keys...}, "finetune": {...}, "prune": {...}, "dagger": {...},
     "variants": {"default": {}, "macs_steps": {"dagger.step_scaling": "macs"}, ...}}

A variant is a set of dotted overrides (``cafe_tf.config.apply_overrides``) of that recipe. Every
kind runs the prune pipeline's own stages (``cafe_tf.dagger.pipeline``), so a study arm is exactly
what ``cafe-tf prune`` does with the same settings. Kinds:

* ``dagger_pretrain`` (a multi-cell unit): the standard loop on ``recipe.pretrain``; a cell with
  ``stop_after_epoch`` below the recipe's epochs leaves its checkpoint for the next cell; the last
  one writes ``model.keras`` and the validation / test accuracy.
* ``dagger_gates``: gate training of a variant on a pretrained net at a budget -> ``gates.json``,
  the jointly trained ``model.keras``, the per-group mean logits at steps 0-64.
* ``dagger_finetune``: one arm (``none``: the unpruned net; ``l1``, ``uniform``, ``dagger``,
  ``dagger_l1_fill``) at a budget, one seed: exact-target selection, physical pruning, BN
  recalibration, fine-tuning; per-group widths, params, accuracies before / after, MACs / target.
* ``dagger_budget``: the first candidate budget at which L1 loses at least ``min_drop`` against the
  unpruned net fine-tuned as long (paired over seeds, 95% t-interval above zero).
* ``dagger_pilot_select``: the variant the manifest's selection rule picks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

import ml_collections

from cafe_tf.study import cells

VALID_ARMS = ("none", "l1", "uniform", "dagger", "dagger_l1_fill")


def recipe_config(recipe: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The prune program's config for ``recipe`` (module docstring) with dotted ``overrides``, validated.

    Args:
      recipe: the manifest's recipe.
      overrides: dotted keys (a variant's, and the cell's method / target / seed).

    Returns:
      The ConfigDict (sections data, model, train, finetune, prune, dagger, distribute).

    Raises:
      cafe_tf.config.ConfigError: a key the config lacks or an invalid value, named.
    """
    from cafe_tf import config as cfg
    from cafe_tf.dagger import pipeline

    c = cfg.base_config()
    c.prune, c.dagger, c.finetune = pipeline.prune_section(), pipeline.dagger_section(), cfg.base_config().train
    for section, key in (("data", "data"), ("model", "model"), ("train", "pretrain"), ("finetune", "finetune"),
                         ("prune", "prune"), ("dagger", "dagger")):
        cfg.apply_overrides(c, {f"{section}.{k}": v for k, v in dict(recipe.get(key, {})).items()})
    cfg.apply_overrides(c, overrides)
    for section, check in pipeline.extra_validators().items():
        check(c[section])
    return c


def _data(config: ml_collections.ConfigDict, seed: int):
    from cafe_tf import data as data_lib

    if config.data.name == "fashion_mnist" and config.data.data_dir:
        data_lib.prepare_fashion_mnist(config.data.data_dir)
    return data_lib.make_data_source(config.data, seed=seed, eval_splits=tuple(config.finetune.eval_splits),
                                     input_scaling=config.model.input_scaling)


def _variant(ctx: cells.CellContext, name: str) -> dict[str, Any]:
    variants = ctx.manifest["recipe"].get("variants", {})
    if name not in variants:
        raise ValueError(f"variant {name!r} is not in the recipe's variants {sorted(variants)}")
    return dict(variants[name])


def _target(params: Mapping[str, Any], ctx: cells.CellContext) -> float:
    """The cell's MACs ratio: ``target_ratio``, or the ``budget`` cell's choice."""
    if "target_ratio" in params:
        return float(params["target_ratio"])
    return float(ctx.result(params["budget"])["target_ratio"])


def _accuracies(metrics: Mapping[str, Any]) -> dict[str, float]:
    final = metrics.get("final") or {}
    return {f"{split}_accuracy": float(r["accuracy"]) for split, r in final.items()}


class _Pause(Exception):
    """Raised by :class:`_StopAfter` to end a unit's cell after its last epoch (checkpoint already saved)."""


def _stop_after(epoch: int):
    from cafe_tf.training import standard

    class StopAfter(standard.Hook):
        def on_epoch_end(self, done: int, logs) -> None:
            if done >= epoch:
                raise _Pause(done)

    return StopAfter()


@cells.register("dagger_pretrain")
def pretrain(params: dict, ctx: cells.CellContext) -> dict:
    """Part of the pretraining unit: epochs up to ``params["stop_after_epoch"]`` of ``recipe.pretrain``.

    Args:
      params: ``seed`` (the pretraining seed), ``stop_after_epoch`` (this cell's last epoch; the
        recipe's epochs for the unit's last cell).
      ctx: the cell's context (the previous cell's checkpoint, if any).

    Returns:
      ``{"epochs_done"}``, plus from the last cell (which writes the artifact ``model.keras``)
      ``validation_accuracy``, ``test_accuracy``, ``params``, ``steps``, ``resumed_from_step`` and
      ``history_epochs`` (the epochs of the unit's history, the earlier cells' included).
    """
    from cafe_tf.training import standard

    seed = int(params.get("seed", 0))
    config = recipe_config(ctx.manifest["recipe"], {"train.seed": seed, "train.keep_checkpoints": 1})
    stop = int(params["stop_after_epoch"])
    if not 1 <= stop <= config.train.epochs:
        raise ValueError(f"stop_after_epoch={stop} must be in [1, {config.train.epochs}] (the recipe's epochs)")
    workdir = os.path.join(ctx.scratch_dir, "pretrain")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    if ctx.resume_dir is not None:
        for name in ctx.records[ctx.manifest_cell()["_previous"]]["checkpoint"]:
            target = os.path.join(workdir if name == "history.json" else ckpt_dir, name)
            shutil.copyfile(ctx.resume_path(name), target)
    data = _data(config, seed)
    factory = standard.model_factory(config.model, data.image_shape, data.info.num_classes)
    try:
        metrics = standard.fit(factory, data, config.train, workdir, hooks=[_stop_after(stop)] if
                               stop < config.train.epochs else [])
    except _Pause as paused:
        for name in os.listdir(ckpt_dir):
            if os.path.isfile(os.path.join(ckpt_dir, name)):
                shutil.copyfile(os.path.join(ckpt_dir, name), ctx.checkpoint_path(name))
        shutil.copyfile(os.path.join(workdir, "history.json"), ctx.checkpoint_path("history.json"))
        return {"epochs_done": int(paused.args[0])}
    shutil.copyfile(os.path.join(workdir, "model.keras"), ctx.artifact_path("model.keras"))
    return {"epochs_done": int(config.train.epochs), **_accuracies(metrics), "params": int(metrics["params"]),
            "steps": int(metrics["steps"]), "resumed_from_step": metrics["resumed_from_step"],
            "history_epochs": [int(e["epoch"]) for e in metrics["history"]]}


@cells.register("dagger_gates")
def gates(params: dict, ctx: cells.CellContext) -> dict:
    """Gate training of a variant on a pretrained net.

    Args:
      params: ``pretrained`` (the pretraining unit's last cell), ``variant``, ``target_ratio`` or
        ``budget`` (a ``dagger_budget`` cell), ``seed`` (gate-training seed, default 0), ``method``
        (``dagger`` by default; the settings the gates are recorded with).
      ctx: the cell's context.

    Returns:
      ``{"target_ratio", "steps", "final_macs_ratio", "logit_trace"}``; artifacts ``gates.json`` and
      ``model.keras`` (the main network after joint training).
    """
    from cafe_tf.dagger import pipeline
    from cafe_tf.dagger import prune as prune_lib

    seed, ratio = int(params.get("seed", 0)), _target(params, ctx)
    config = recipe_config(ctx.manifest["recipe"], {**_variant(ctx, params["variant"]),
                                                    "prune.method": params.get("method", "dagger"),
                                                    "prune.target_macs_ratio": ratio, "train.seed": seed})
    source = ctx.input(params["pretrained"], "model.keras")
    data = _data(config, seed)
    workdir = os.path.join(ctx.scratch_dir, "run")
    _, _, history = pipeline.stage_gates(config, workdir, data, prune_lib.load_model(source), source)
    for name in ("gates.json", "model.keras"):
        shutil.copyfile(os.path.join(workdir, "gates", name), ctx.artifact_path(name))
    from cafe_tf.dagger.train import read_gates

    record = read_gates(ctx.artifact_path("gates.json"))
    return {"target_ratio": ratio, "steps": int(record["steps"]),
            "final_macs_ratio": float(history[-1]["macs_ratio"]) if history else None,
            "open_gate_macs_ratio": record["open_gate_macs"] / record["full_macs"],
            "logit_trace": record.get("logit_trace", [])}


@cells.register("dagger_finetune")
def finetune(params: dict, ctx: cells.CellContext) -> dict:
    """One arm at one seed: selection at the budget, pruning, BN recalibration, fine-tuning.

    Args:
      params: ``pretrained`` (cell), ``arm`` (one of ``VALID_ARMS``), ``seed`` (fine-tuning seed),
        ``target_ratio`` or ``budget`` (not for ``none``), ``gates`` (a ``dagger_gates`` cell, for the
        gated arms), ``variant`` (default ``"default"``).
      ctx: the cell's context.

    Returns:
      ``{"arm", "seed", "target_ratio", "macs_ratio", "macs_over_target", "params", "widths",
      "before_finetune_accuracy", "validation_accuracy", "test_accuracy"}``.
    """
    from cafe_tf.dagger import pipeline
    from cafe_tf.dagger import prune as prune_lib
    from cafe_tf.dagger.train import read_gates
    from cafe_tf.flops import CostModel
    from cafe_tf.graph import ChannelGraph

    arm, seed = params["arm"], int(params["seed"])
    if arm not in VALID_ARMS:
        raise ValueError(f"arm {arm!r} is not one of {VALID_ARMS}")
    ratio = 1.0 if arm == "none" else _target(params, ctx)
    overrides = {**_variant(ctx, params.get("variant", "default")), "train.seed": seed, "finetune.seed": seed,
                 "prune.method": "l1" if arm == "none" else arm, "prune.target_macs_ratio": ratio}
    config = recipe_config(ctx.manifest["recipe"], overrides)
    source = ctx.input(params["pretrained"], "model.keras")
    data = _data(config, seed)
    workdir = os.path.join(ctx.scratch_dir, "run")
    pretrained = prune_lib.load_model(source)
    full = CostModel(ChannelGraph.from_model(pretrained))
    out: dict[str, Any] = {"arm": arm, "seed": seed, "target_ratio": ratio, "full_macs": int(full.macs())}
    if arm == "none":
        path = source
        out.update(macs_ratio=1.0, macs_over_target=1.0, params=int(full.params()), widths={
            g.name: g.size for g in full.graph.prunable_groups}, before_finetune_accuracy=None)
    else:
        if arm in prune_lib.GATED_METHODS:
            trained = prune_lib.load_model(ctx.input(params["gates"], "model.keras"))
            logits = read_gates(ctx.input(params["gates"], "gates.json"), ChannelGraph.from_model(trained))
            model, logits = trained, logits["logits_by_id"]
        else:
            model, logits = pretrained, None
        pruned, selection, info = pipeline.stage_prune(config, workdir, model, source, logits, data)
        graph = ChannelGraph.from_model(model)
        out.update(macs_ratio=info["achieved_ratio"], macs_over_target=info["achieved_macs"] / info["target_macs"],
                   params=int(info["params"]), widths={g.name: int(len(selection.get(g.id, range(g.size))))
                                                       for g in graph.prunable_groups},
                   before_finetune_accuracy=(info.get("accuracy_before_finetune") or {}).get("accuracy"))
        path = os.path.join(workdir, "prune", "pruned.keras")
    metrics = pipeline.stage_finetune(config, workdir, data, path)
    out.update(_accuracies(metrics))
    return out


def _paired(ctx: cells.CellContext, a: list[str], b: list[str], key: str) -> dict | None:
    from cafe_tf import stats

    return stats.paired_difference({i: ctx.result(c)[key] for i, c in enumerate(a)},
                                   {i: ctx.result(c)[key] for i, c in enumerate(b)})


@cells.register("dagger_budget")
def budget(params: dict, ctx: cells.CellContext) -> dict:
    """The budget with headroom: the first candidate whose L1 arm trails the unpruned net by at least
    ``min_drop`` (mean of the paired differences) with a 95% t-interval above zero.

    Args:
      params: ``unpruned`` (``dagger_finetune`` cells of arm ``none``, one per seed), ``candidates``
        (``[{"target_ratio", "l1": [cells, seed order as unpruned]}]``, largest budget first),
        ``min_drop`` (accuracy, e.g. 0.01), ``key`` (default ``validation_accuracy``).
      ctx: the cell's context.

    Returns:
      ``{"target_ratio", "headroom_found", "candidates": [{"target_ratio", "difference", "passes"}]}``;
      without a passing candidate, the last (smallest) one with ``headroom_found`` False.
    """
    key, min_drop = params.get("key", "validation_accuracy"), float(params["min_drop"])
    rows, chosen = [], None
    for cand in params["candidates"]:
        diff = _paired(ctx, params["unpruned"], cand["l1"], key)
        passes = bool(diff and diff["mean"] >= min_drop and diff["low"] is not None and diff["low"] > 0)
        rows.append({"target_ratio": float(cand["target_ratio"]), "difference": diff, "passes": passes})
        if passes and chosen is None:
            chosen = float(cand["target_ratio"])
    found = chosen is not None
    return {"target_ratio": chosen if found else rows[-1]["target_ratio"], "headroom_found": found,
            "candidates": rows}


@cells.register("dagger_pilot_select")
def pilot_select(params: dict, ctx: cells.CellContext) -> dict:
    """The pilot's choice: among the variants, the one with the largest mean paired gain over
    ``default`` (same seeds); a variant other than ``default`` is chosen only when that gain is at
    least ``min_gain``; ties go to the variant listed first.

    Args:
      params: ``arms`` (``{variant: [dagger_finetune cells, one per seed, the same seed order]}``,
        ``default`` among them), ``min_gain``, ``key`` (default ``validation_accuracy``); optionally
        ``budget`` (a ``dagger_budget`` cell) and ``l1`` (``{str(target ratio): [L1 cells]}``) for
        each variant against L1 at the chosen budget (reported, not part of the choice).
      ctx: the cell's context.

    Returns:
      ``{"chosen", "overrides", "differences": {variant: paired difference vs default}, "means",
      "vs_l1": {variant: paired difference vs L1}}``.
    """
    key, min_gain = params.get("key", "validation_accuracy"), float(params["min_gain"])
    arms = params["arms"]
    if "default" not in arms:
        raise ValueError(f"arms must include 'default'; got {sorted(arms)}")
    diffs = {v: _paired(ctx, c, arms["default"], key) for v, c in arms.items() if v != "default"}
    means = {v: sum(ctx.result(c)[key] for c in cs) / len(cs) for v, cs in arms.items()}
    chosen, best = "default", None
    for v, d in diffs.items():
        if d is not None and d["mean"] >= min_gain and (best is None or d["mean"] > best):
            chosen, best = v, d["mean"]
    vs_l1 = {}
    if "budget" in params:  # each variant against L1 at the budget the budget cell chose
        l1 = params["l1"][str(_target({"budget": params["budget"]}, ctx))]
        vs_l1 = {v: _paired(ctx, c, l1, key) for v, c in arms.items()}
    return {"chosen": chosen, "overrides": _variant(ctx, chosen), "differences": diffs, "means": means,
            "vs_l1": vs_l1}
