"""The Dagger pruning pipeline behind ``cafe-tf prune``: stages, artifacts, resume.

Stages (each writes its artifact under ``workdir`` and is skipped when that artifact exists and is
valid for the same settings; the training stages also resume from their own checkpoints):

0. ``pretrain/``: only without ``prune.pretrained``: the standard training loop
   (``cafe_tf.training.standard``) trains ``config.model`` with ``config.train`` -> ``model.keras``.
1. ``gates/``: gate training (methods ``dagger`` and ``free``) -> ``gates.json`` (logits per
   group, history) and ``model.keras`` (the main network after joint training).
2. ``prune/``: exact-target selection -> ``widths.json`` (kept channels, MACs) and ``pruned.keras``
   (physical pruning with ``cafe_tf.surgery``, then BN statistics re-estimated on training batches).
3. ``finetune/``: the standard training loop on the pruned model with ``config.finetune`` ->
   ``model.keras`` and ``metrics.json``.
4. ``report.md`` + figures and ``summary.json`` (achieved MACs vs target, accuracies).

Every training stage runs under ``config.distribute``'s strategy: pretraining and fine-tuning in
the standard loop, gate training in ``GateTrainer`` (main network, gate module and optimizers built
under ``strategy.scope()``, the global batch split over the replicas, gradients all-reduced). Gate
training sets no mixed-precision policy of its own (``config.dagger`` has no such option): the main
network runs in the dtype policy it was saved with, without loss scaling. Under multi-worker
training only the chief writes the artifacts; the other workers keep their own copy in
``<workdir>/.scratch_<worker>`` (``distribute.worker_root``) and agree on each stage's resume
decision before it runs (``distribute.all_workers``).

The pretrained model may be any functional Keras model the channel graph understands (a user's
``.keras``), taking images at the dataset's size (``config.data.image_size`` resizes) scaled as
``config.model.input_scaling`` says (``mean_std``, the default: the dataset's mean/std; ``unit``:
[0, 1]; ``raw``: 0..255; ``model``: 0..255 into the model's own Rescaling/Normalization layers), and
outputting logits or softmax probabilities. Before pruning, the pipeline evaluates it (validation
split when evaluated, else the report split) and warns loudly, in the log, ``summary.json`` and
``report.md``, when its accuracy is within ``NEAR_CHANCE_MARGIN`` of chance: the sign of a scaling
mismatch. ``widths.json`` records the file's path and SHA-256 (``model_source``), and a file that
changed under a resumed run is refused, naming both hashes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cafe_tf import data as data_lib
from cafe_tf import io
from cafe_tf import space as space_lib
from cafe_tf.config import ConfigError, to_dict, validate_channel_multiple
from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph
from cafe_tf.models import source as source_lib
from cafe_tf.space import check_channel_multiple
from cafe_tf.slim import Supernet
from cafe_tf.dagger import module as module_lib
from cafe_tf.dagger import prune as prune_lib
from cafe_tf.dagger import report as report_lib
from cafe_tf.dagger import train as train_lib
from cafe_tf.dagger.regularizer import PENALTIES, FlopsRegularizer

SUMMARY_SCHEMA = "cafe_tf.dagger_summary"
SUMMARY_VERSION = 1
# A given model whose accuracy is at most chance + this margin is taken for a scaling mismatch (warned).
NEAR_CHANCE_MARGIN = 0.05


# -------------------------------------------------------------------------------------------------
# Config sections of this program


def prune_section() -> ml_collections.ConfigDict:
    """Defaults of ``config.prune``: what to prune to, and how."""
    return ml_collections.ConfigDict(dict(
        method="dagger",  # dagger | free (ablation: free gate logits) | l1 | uniform (baselines) | dagger_l1_fill
        rank_by="score",  # score | score_per_mac: the exact-target step's ranking of gated filters (logit, or per MAC)
        target_macs_ratio=0.5,  # fraction of the pretrained model's MACs, in (0, 1]
        pretrained="",  # a trained .keras file, fed as config.model.input_scaling says; "" = train config.model first
        min_channels=1,  # floor per channel group
        min_keep_ratio=0.0,  # floor per group as a fraction of its width (held open in gate training too); 0 = off
        tolerance=0.01,  # the pruned MACs land in [(1 - tolerance) * target, target]
        channel_multiple=1,  # every kept group width a multiple of it, or the full width (e.g. 8 for SIMD); 1 = off
        bn_calibration_batches=100,  # re-estimate the pruned model's BN statistics on N training batches; 0 = off
        evaluate_before_finetune=True,  # test accuracy of the pruned model before fine-tuning (one pass)
    ))


def dagger_section() -> ml_collections.ConfigDict:
    """Defaults of ``config.dagger``: the gate module, the regulariser and gate training."""
    return ml_collections.ConfigDict(dict(
        hidden=32,  # width of the Dagger MLP
        normalize="layer_std",  # layer_std | l2_rows: how filter rows are normalised
        use_bn=True,  # append the following BN's scale to each filter's row
        init_logit=3.0,  # gates start open (sigmoid(3) = 0.95)
        group_bias=True,  # a learned logit offset per group; False: one shared bias (logits from the weights alone)
        head_init="zeros",  # zeros (a group's logits start equal) | random (seeded head) | l1 (offset in L1 order)
        head_init_scale=0.5,  # random: the head's std times sqrt(hidden); l1: the offset per standard deviation
        step_scaling="none",  # none | macs: each group's logits move in proportion to one of its channels' MACs
        gate_mode="hard",  # hard (straight-through) | soft (sigmoid(logit / T))
        temperature_start=1.0,  # soft mode: annealed geometrically to temperature_end
        temperature_end=1.0,
        epochs=10.0,  # gate-training epochs (fractions allowed)
        gate_lr=1e-3,  # Adam on the gate module
        main="joint",  # joint (SGD on the main network) | frozen (moving BN stats) | frozen_batch_stats
        main_lr=0.01,  # peak lr of the main network in joint mode (cosine to 0)
        main_momentum=0.9,
        main_weight_decay=5e-4,
        flops_penalty="abs",  # abs | squared | hinge | log_l1
        flops_weight=2.0,  # lambda; 0 = no FLOPs term (ablation: the exact-target step alone)
        flops_tolerance=0.05,  # log_l1's band
        target_ramp=0.0,  # fraction of gate training over which the target falls from full MACs (cubic); 0 = off
        log_every=50,
        checkpoint_every=200,
    ))


def validate_prune(section: ml_collections.ConfigDict) -> None:
    """Checks ``config.prune``; raises ConfigError naming the key, the value and what is valid."""
    if section.method not in prune_lib.METHODS:
        raise ConfigError(f"config.prune.method={section.method!r} is invalid; valid values: {list(prune_lib.METHODS)}")
    if section.rank_by not in prune_lib.RANKINGS:
        raise ConfigError(f"config.prune.rank_by={section.rank_by!r} is invalid; valid values: "
                          f"{list(prune_lib.RANKINGS)}")
    if section.rank_by != "score" and section.method not in prune_lib.GATED_METHODS:
        raise ConfigError(f"config.prune.rank_by={section.rank_by!r} ranks gate logits; config.prune.method="
                          f"{section.method!r} has none (use rank_by='score', or a method of "
                          f"{list(prune_lib.GATED_METHODS)})")
    try:
        prune_lib.check_target_ratio(section.target_macs_ratio)
    except ValueError:
        raise ConfigError(f"config.prune.target_macs_ratio={section.target_macs_ratio!r} is invalid; it must be "
                          "in (0, 1] (a fraction of the pretrained model's MACs)") from None
    if section.pretrained:
        try:
            kind = source_lib.kind_of(section.pretrained)
        except source_lib.ModelSourceError as e:
            raise ConfigError(f"config.prune.pretrained={section.pretrained!r} is invalid: {e}") from None
        if kind != "keras_file":  # a registry or keras.applications name: an architecture, without trained weights
            raise ConfigError(
                f"config.prune.pretrained={section.pretrained!r} names an architecture without trained weights (nothing "
                f"downloads: applications are built with weights=None); set config.model.name={section.pretrained!r} "
                "and leave config.prune.pretrained empty (stage 0 trains it), or give a trained .keras file")
    if section.min_channels < 1:
        raise ConfigError(f"config.prune.min_channels={section.min_channels!r} is invalid; it must be >= 1")
    if not 0 <= section.min_keep_ratio < 1:
        raise ConfigError(f"config.prune.min_keep_ratio={section.min_keep_ratio!r} is invalid; it must be in "
                          "[0, 1) (a fraction of each group's width that is always kept; 0 = off)")
    if not 0 < section.tolerance < 1:
        raise ConfigError(f"config.prune.tolerance={section.tolerance!r} is invalid; it must be in (0, 1)")
    validate_channel_multiple("prune", section.channel_multiple)
    if section.bn_calibration_batches < 0:
        raise ConfigError(f"config.prune.bn_calibration_batches={section.bn_calibration_batches!r} is invalid; "
                          "it must be >= 0 (0 = off)")


def validate_dagger(section: ml_collections.ConfigDict) -> None:
    """Checks ``config.dagger``; raises ConfigError naming the key, the value and what is valid."""
    choices = {"normalize": module_lib.NORMALIZATIONS, "gate_mode": module_lib.GATE_MODES,
               "main": train_lib.MAIN_MODES, "flops_penalty": PENALTIES, "head_init": module_lib.HEAD_INITS,
               "step_scaling": module_lib.STEP_SCALINGS}
    for key, valid in choices.items():
        if section[key] not in valid:
            raise ConfigError(f"config.dagger.{key}={section[key]!r} is invalid; valid values: {list(valid)}")
    positive = ("hidden", "temperature_start", "temperature_end", "epochs", "gate_lr", "main_lr", "log_every",
                "checkpoint_every")
    for key in positive:
        if not section[key] > 0:
            raise ConfigError(f"config.dagger.{key}={section[key]!r} is invalid; it must be > 0")
    for key in ("flops_weight", "main_weight_decay", "head_init_scale"):
        if section[key] < 0:
            raise ConfigError(f"config.dagger.{key}={section[key]!r} is invalid; it must be >= 0")
    if not 0 <= section.main_momentum < 1:
        raise ConfigError(f"config.dagger.main_momentum={section.main_momentum!r} is invalid; it must be in [0, 1)")
    if not 0 <= section.target_ramp <= 1:
        raise ConfigError(f"config.dagger.target_ramp={section.target_ramp!r} is invalid; it must be a fraction "
                          "of the gate-training steps in [0, 1] (0 = the target from the first step)")
    if not 0 <= section.flops_tolerance < 1:
        raise ConfigError(f"config.dagger.flops_tolerance={section.flops_tolerance!r} is invalid; it must be in [0, 1)")


def extra_validators() -> dict[str, Callable[[ml_collections.ConfigDict], None]]:
    """Validators of the sections this program adds (``finetune`` is a ``train`` section)."""
    from cafe_tf.config import validate_train

    return {"prune": validate_prune, "dagger": validate_dagger, "finetune": validate_train}


# -------------------------------------------------------------------------------------------------
# Helpers


def _same_settings(record: dict[str, Any], expected: dict[str, Any], path: str) -> None:
    """Refuses to reuse an artifact written with other settings (a stale workdir)."""
    stored = dict(record.get("settings", {}))
    diff = []
    for k, v in expected.items():
        there = stored.get(k)
        if isinstance(v, dict) and isinstance(there, dict):  # name the nested keys that differ
            diff += [f"{k}.{n}: {there.get(n)!r} there, {v.get(n)!r} now" for n in sorted(set(v) | set(there))
                     if there.get(n) != v.get(n)]
        elif there != v:
            diff.append(f"{k}: {there!r} there, {v!r} now")
    if diff:
        raise ConfigError(f"{path} was written with other settings ({', '.join(diff)}); "
                          "use a new --workdir or delete that stage's folder")


def model_source(config: ml_collections.ConfigDict, image_shape, num_classes: int) -> source_lib.ModelSource:
    """Where the pruned model comes from: the ``prune.pretrained`` file (path and SHA-256), else ``config.model``."""
    if not config.prune.pretrained:
        return source_lib.from_config(config.model, image_shape, num_classes)
    path = os.path.abspath(os.path.expanduser(config.prune.pretrained))
    if not os.path.isfile(path):
        raise ValueError(f"config.prune.pretrained={config.prune.pretrained!r}: model file {path!r} does not exist; "
                         "give a Keras 3 .keras file")
    return source_lib.ModelSource("keras_file", path, tuple(image_shape), int(num_classes), 1.0,
                                  config.model.input_scaling, source_lib.sha256_of(path),
                                  tuple(config.model.boundaries), float(config.model.bn_momentum),
                                  source_lib.saved_fingerprint(path))


def model_info(model: keras.Model, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``widths.json``'s model record: the registry name when we built it, the model's name otherwise, and
    ``source``, the provenance (``cafe_tf.models.source``)."""
    shape = [int(d) for d in model.inputs[0].shape[1:]]
    classes = int(model.outputs[0].shape[-1])
    return {"name": config.model.name if not config.prune.pretrained else model.name, "input_shape": shape,
            "num_classes": classes,
            "width_mult": float(config.model.width_mult) if not config.prune.pretrained else 1.0,
            "source": model_source(config, shape, classes).record()}


def near_chance_warning(accuracy: float, num_classes: int, split: str, input_scaling: str) -> str | None:
    """The warning for a given model whose accuracy is near chance (a scaling mismatch), or None."""
    chance = 1.0 / max(num_classes, 1)
    if accuracy > chance + NEAR_CHANCE_MARGIN:
        return None
    others = [s for s in source_lib.INPUT_SCALINGS if s != input_scaling]
    return (f"the model to prune scores {accuracy:.2%} on {split}, within {NEAR_CHANCE_MARGIN:.0%} of chance "
            f"({chance:.2%}): it was probably trained on differently scaled inputs; it is fed "
            f"config.model.input_scaling={input_scaling!r}, the alternatives are {others}")


def _epochs_of(make_train: Callable[[int, int, Any], tf.data.Dataset], steps_per_epoch: int,
               strategy: tf.distribute.Strategy) -> Callable[[int], Iterator]:
    """Distributed batches from global step ``start`` on, chaining the standard loop's seeded per-epoch
    pipelines (one per worker, through ``distribute_datasets_from_function``, as the standard loop)."""
    def batches(start: int) -> Iterator:
        epoch, skip = divmod(start, steps_per_epoch)
        while True:
            yield from strategy.distribute_datasets_from_function(
                lambda ctx, e=epoch, s=skip: make_train(e, s, ctx))
            epoch, skip = epoch + 1, 0

    return batches


def _fit(model_fn: Callable[[], keras.Model], data, section: ml_collections.ConfigDict, folder: str,
         strategy: tf.distribute.Strategy | None, config: ml_collections.ConfigDict,
         teacher: Callable[[], keras.Model] | None = None) -> dict[str, Any]:
    """``standard.fit`` -> its metrics; ``folder/model.keras`` and ``metrics.json`` on every worker.

    The standard loop writes them on the chief only; the other workers of a cluster save their own
    copy in their scratch root (``distribute.worker_root``), which the next stage reads."""
    from cafe_tf import distribute as distribute_lib
    from cafe_tf.training import standard

    class KeepModel(standard.Hook):
        def on_train_begin(self, context):
            self.model = context.model

    keep = KeepModel()
    metrics = standard.fit(model_fn, data, section, folder, strategy=strategy, hooks=[keep],
                           config_record=to_dict(config), teacher=teacher)
    if not distribute_lib.is_chief(strategy or tf.distribute.get_strategy()):
        prune_lib.save_model(keep.model, os.path.join(folder, "model.keras"))
        io.write_artifact(os.path.join(folder, "metrics.json"), standard.METRICS_SCHEMA, standard.METRICS_VERSION,
                          metrics)
    return metrics


def _done(strategy: tf.distribute.Strategy | None, paths: list[str], stage: str) -> bool:
    """Whether ``paths`` all exist, the same answer on every worker (``distribute.all_workers``)."""
    from cafe_tf import distribute as distribute_lib

    return distribute_lib.all_workers(strategy or tf.distribute.get_strategy(),
                                      all(os.path.isfile(p) for p in paths), f"stage {stage} is done")


def _report_split(data) -> str:
    """The split the summary's before/after accuracies are measured on (test when it is evaluated)."""
    return "test" if "test" in data.make_eval else list(data.make_eval)[-1]


def _accuracy(model: keras.Model, make_eval: Callable[[Any], tf.data.Dataset]) -> float:
    fn = tf.function(lambda x: model(x, training=False))
    return train_lib.accuracy(fn, make_eval(None))


def _check_pretrained(config: ml_collections.ConfigDict, data, model: keras.Model, source: str, split: str,
                      split_accuracy: float, previous: dict[str, Any]) -> dict[str, Any]:
    """Accuracy of the model to prune before pruning (validation when evaluated), and the near-chance warning."""
    check_split = "validation" if "validation" in data.make_eval else split
    done = previous.get("pretrained_check") or {}
    if previous.get("pretrained") == source and done.get("split") == check_split:
        accuracy = done["accuracy"]  # one eval pass saved on a rerun
    else:
        accuracy = split_accuracy if check_split == split else _accuracy(model, data.make_eval[check_split])
    warning = near_chance_warning(accuracy, data.info.num_classes, check_split, config.model.input_scaling)
    if warning:
        logging.warning("*" * 20 + " WARNING: %s " + "*" * 20, warning)
    return {"split": check_split, "accuracy": accuracy, "input_scaling": config.model.input_scaling,
            "warning": warning}


# -------------------------------------------------------------------------------------------------
# Stages


def stage_pretrain(config: ml_collections.ConfigDict, workdir: str, data,
                   strategy: tf.distribute.Strategy | None = None) -> tuple[keras.Model, str]:
    """Stage 0: the pretrained model (the user's file, or ours trained with the standard loop)."""
    from cafe_tf.training import standard

    if config.prune.pretrained:
        source = model_source(config, data.image_shape, data.info.num_classes)
        return source.build(), source.name  # build() checks the shape, classes and input_scaling="model"
    folder = os.path.join(workdir, "pretrain")
    path = os.path.join(folder, "model.keras")
    metrics = os.path.join(folder, "metrics.json")
    if _done(strategy, [path, metrics], "pretrain"):
        io.read_artifact(metrics, standard.METRICS_SCHEMA, (standard.METRICS_VERSION,))
        logging.info("stage pretrain: done already (%s)", path)
    else:
        logging.info("stage pretrain: training %s with the standard loop in %s", config.model.name, folder)
        model_fn = standard.model_factory(config.model, data.image_shape, data.info.num_classes)
        _fit(model_fn, data, config.train, folder, strategy, config)
    return _load_model(config, path), path


def _load_model(config: ml_collections.ConfigDict, path: str) -> keras.Model:
    """A stage's saved model, with config.model.boundaries recorded on it (every graph of it keeps them)."""
    from cafe_tf.graph import set_boundaries

    boundaries = tuple(config.model.get("boundaries", ())) if "model" in config else ()
    return set_boundaries(prune_lib.load_model(path), boundaries)


def _pretrained_model(config: ml_collections.ConfigDict, source: str, like: keras.Model) -> keras.Model:
    """The pretrained model again (the ``prune.pretrained`` file as fed, or stage 0's ``model.keras``),
    for the methods that prune it instead of the gate-trained network; ``like`` gives its input shape."""
    if config.prune.pretrained:
        shape = [int(d) for d in like.inputs[0].shape[1:]]
        return model_source(config, shape, int(like.outputs[0].shape[-1])).build()
    return _load_model(config, source)


def _gate_settings(config: ml_collections.ConfigDict, source: str) -> dict[str, Any]:
    settings = {"method": config.prune.method, "target_macs_ratio": float(config.prune.target_macs_ratio),
                "pretrained": source, "dagger": to_dict(config.dagger)}
    if os.path.isfile(source):  # a changed file under a resumed run is refused, naming both hashes
        settings["pretrained_sha256"] = source_lib.sha256_of(source)
    settings["min_keep_ratio"] = float(config.prune.min_keep_ratio)
    settings["channel_multiple"] = int(config.prune.channel_multiple)
    settings["rank_by"] = str(config.prune.rank_by)
    return settings


def _check_channel_multiple(config: ml_collections.ConfigDict, model: keras.Model,
                            graph: ChannelGraph | None = None) -> None:
    """Raises ConfigError when ``config.prune.channel_multiple`` is wider than a prunable group of ``model``."""
    try:
        check_channel_multiple(config.prune.channel_multiple, (graph or ChannelGraph.from_model(model)).prunable_groups,
                               "config.prune.channel_multiple")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _built_in_scope(model: keras.Model, strategy: tf.distribute.Strategy) -> bool:
    """Whether ``model``'s variables were created under ``strategy`` (plain variables: the default strategy)."""
    return all(strategy.extended.variable_created_in_scope(getattr(v, "value", v)) for v in model.weights[:1])


def stage_gates(config: ml_collections.ConfigDict, workdir: str, data, model: keras.Model, source: str,
                strategy: tf.distribute.Strategy | None = None
                ) -> tuple[keras.Model, dict[int, np.ndarray] | None, list[dict]]:
    """Stage 1: gate training under ``strategy`` (default: the current one) -> (main network after it,
    {group id: logits}, history); baselines skip it."""
    from cafe_tf import distribute as distribute_lib
    from cafe_tf.training import standard

    if config.prune.method not in prune_lib.GATED_METHODS:
        return model, None, []
    d = config.dagger
    folder = os.path.join(workdir, "gates")
    gates_path, model_path = os.path.join(folder, "gates.json"), os.path.join(folder, "model.keras")
    graph = ChannelGraph.from_model(model)
    settings = _gate_settings(config, source)
    if _done(strategy, [gates_path, model_path], "gates"):
        record = train_lib.read_gates(gates_path, graph)
        _same_settings(record, settings, gates_path)
        logging.info("stage gates: done already (%s)", gates_path)
        trained = _load_model(config, model_path)
        return trained, record["logits_by_id"], record.get("history", [])
    strategy = strategy or tf.distribute.get_strategy()
    if not _built_in_scope(model, strategy):  # mirrored variables: reload the pretrained model in the scope
        with strategy.scope():
            model = _load_model(config, source)
        graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        if config.prune.method != "free":
            module = module_lib.DaggerModule(graph, hidden=d.hidden, normalize=d.normalize, use_bn=d.use_bn,
                                             group_bias=d.group_bias, head_init=d.head_init,
                                             head_init_scale=d.head_init_scale, step_scaling=d.step_scaling,
                                             init_logit=d.init_logit, seed=config.train.seed)
        else:
            module = module_lib.FreeGates(graph, init_logit=d.init_logit)
    target = float(config.prune.target_macs_ratio) * cost.macs()
    regularizer = FlopsRegularizer(cost, target, kind=d.flops_penalty, weight=d.flops_weight,
                                   tolerance=d.flops_tolerance)
    replicas = strategy.num_replicas_in_sync
    if data.global_batch % replicas:
        raise ConfigError(f"config.data.batch_size={data.global_batch} must be divisible by the {replicas} "
                          f"replicas; use a multiple of {replicas}")
    spe = data_lib.steps_per_epoch(data.train_examples, data.global_batch,
                                   distribute_lib.num_input_pipelines(strategy))
    if spe < 1:
        raise ConfigError(f"config.data.batch_size={data.global_batch} is larger than the {data.train_examples} "
                          "training examples; use a smaller batch or more data")
    total = max(1, int(round(d.epochs * spe)))
    # The main network's optimizer and schedule come from the standard loop's builders (one recipe style).
    main_recipe = ml_collections.ConfigDict(dict(optimizer="sgd", momentum=d.main_momentum, nesterov=False,
                                                 mixed_precision="none"))
    schedule = standard.LearningRate(d.main_lr, total, schedule="cosine")
    with strategy.scope():
        main_optimizer = standard.make_optimizer(main_recipe, schedule)
    trainer = train_lib.GateTrainer(
        model, module, regularizer, folder, total_steps=total, gate_mode=d.gate_mode,
        temperature=(d.temperature_start, d.temperature_end), target_ramp=d.target_ramp,
        min_open=[prune_lib.group_floor(n, config.prune.min_channels, config.prune.min_keep_ratio)
                  for n in module.group_sizes], gate_lr=d.gate_lr,
        main=d.main, main_optimizer=main_optimizer, weight_decay=d.main_weight_decay,
        checkpoint_every=d.checkpoint_every, strategy=strategy)
    logging.info("stage gates: %d steps (%d per epoch), target %.0f MACs (%.3f of %d), %s", total, spe, target,
                 config.prune.target_macs_ratio, cost.macs(), distribute_lib.describe(strategy))
    history = trainer.train(_epochs_of(data.make_train, spe, strategy), log_every=d.log_every)
    logits = trainer.logits()
    prune_lib.save_model(model, model_path)
    train_lib.write_gates(gates_path, graph, module.group_ids, logits,
                          {"settings": settings, "history": history, "target_macs": target, "steps": total,
                           "logit_trace": trainer.logit_trace})
    return model, prune_lib.logits_by_group(module.group_ids, logits), history


def calibrate_bn(model: keras.Model, batches, num_batches: int) -> int:
    """Sets every BN's moving statistics to the average batch statistics over ``num_batches`` batches.

    Removing channels changes what every later BN sees, so the inherited statistics are stale; the
    core's ``Supernet.calibrate_bn`` at the full (already pruned) width re-estimates them, the
    same for every method. Returns the number of batches used.
    """
    if not any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers):
        return 0
    supernet = Supernet(model)
    return supernet.calibrate_bn([None] * supernet.num_groups, batches, num_batches=num_batches)


def stage_prune(config: ml_collections.ConfigDict, workdir: str, model: keras.Model, source: str,
                logits: dict[int, np.ndarray] | None, data=None, strategy: tf.distribute.Strategy | None = None
                ) -> tuple[keras.Model, dict[int, np.ndarray], dict[str, Any]]:
    """Stage 2: exact-target selection, physical pruning and BN recalibration -> (pruned model, selection, info)."""
    folder = os.path.join(workdir, "prune")
    widths_path, pruned_path = os.path.join(folder, "widths.json"), os.path.join(folder, "pruned.keras")
    graph = ChannelGraph.from_model(model)
    settings = {**_gate_settings(config, source), "min_channels": int(config.prune.min_channels),
                "tolerance": float(config.prune.tolerance),
                "bn_calibration_batches": int(config.prune.bn_calibration_batches)}
    if _done(strategy, [widths_path, pruned_path], "prune"):
        record = space_lib.read_widths(widths_path)
        _same_settings(record, settings, widths_path)
        logging.info("stage prune: done already (%s)", widths_path)
        return (_load_model(config, pruned_path), space_lib.selection_from_record(graph, record),
                record["exact_target"])
    cost = CostModel(graph)
    selection, info = prune_lib.select_channels(config.prune.method, cost, config.prune.target_macs_ratio,
                                                logits=logits, min_channels=config.prune.min_channels,
                                                min_keep_ratio=config.prune.min_keep_ratio,
                                                tolerance=config.prune.tolerance,
                                                channel_multiple=config.prune.channel_multiple,
                                                rank_by=config.prune.get("rank_by", "score"))
    if config.prune.method == "dagger_l1_fill":  # Dagger's widths, the pretrained network's top-L1 filters
        model = _pretrained_model(config, source, model)
        graph = ChannelGraph.from_model(model)
        selection = prune_lib.l1_fill(graph, {gid: len(idx) for gid, idx in selection.items()})
        info["filled_from"] = "pretrained weights, L1 order within each group"
    logging.info("stage prune: %s -> %d MACs for a target of %.0f (%+.3f%%)", config.prune.method,
                 info["achieved_macs"], info["target_macs"], 100 * info["relative_error"])
    pruned = prune_lib.prune_model(model, selection, graph)
    if config.prune.bn_calibration_batches and data is not None:
        used = calibrate_bn(pruned, data.make_train(0, 0, None), config.prune.bn_calibration_batches)
        info["bn_calibration_batches"] = used
        logging.info("stage prune: BN statistics re-estimated on %d training batches", used)
    if config.prune.evaluate_before_finetune and data is not None:
        split = _report_split(data)
        info["accuracy_before_finetune"] = {"split": split, "accuracy": _accuracy(pruned, data.make_eval[split])}
    prune_lib.save_model(pruned, pruned_path)
    space_lib.write_widths(widths_path, graph, selection, model_info(model, config),
                           {"settings": settings, "exact_target": info, "source": source,
                            "config": to_dict(config)})
    return pruned, selection, info


def stage_finetune(config: ml_collections.ConfigDict, workdir: str, data, pruned_path: str,
                   strategy: tf.distribute.Strategy | None = None,
                   teacher: Callable[[], keras.Model] | None = None) -> dict[str, Any]:
    """Stage 3: the standard training loop on the pruned model -> its metrics (final eval per split).

    With ``finetune.distill_weight`` > 0 the loop distills from ``teacher()`` (the unpruned model),
    the same for every prune.method (dagger, l1, uniform, free)."""
    from cafe_tf.training import standard

    folder = os.path.join(workdir, "finetune")
    metrics_path = os.path.join(folder, "metrics.json")
    model_path = os.path.join(folder, "model.keras")
    if _done(strategy, [metrics_path, model_path], "finetune"):
        logging.info("stage finetune: done already (%s)", metrics_path)
        return io.read_artifact(metrics_path, standard.METRICS_SCHEMA, (standard.METRICS_VERSION,))
    # A factory, so the standard loop builds the model under its strategy's scope. A softmax head
    # is trained as it is (the standard loop's from_logits=False) and saved with the model.
    return _fit(lambda: _load_model(config, pruned_path), data, config.finetune, folder, strategy, config,
                teacher if config.finetune.get("distill_weight", 0.0) else None)


def run(config: ml_collections.ConfigDict, workdir: str, *, data: Any = None) -> dict[str, Any]:
    """Runs (or resumes) every stage; returns the summary also written to ``<workdir>/summary.json``.

    ``data`` (a ``cafe_tf.data.DataSource``) replaces the one ``config.data`` describes.

    Under multi-worker training every worker runs every stage (training is synchronous); the chief
    writes the artifacts to ``workdir``, each other worker keeps its own copy under
    ``<workdir>/.scratch_<worker>`` (so the workers need no shared filesystem; keep that folder to
    resume), and only the chief writes the report.
    """
    from cafe_tf.training import standard

    from cafe_tf import distribute as distribute_lib

    strategy = distribute_lib.strategy_from_config(config.distribute)
    chief = distribute_lib.is_chief(strategy)
    workdir = distribute_lib.worker_root(strategy, workdir)
    eval_splits = tuple(config.finetune.eval_splits)
    if data is None:
        data = data_lib.make_data_source(config.data, seed=config.train.seed, eval_splits=eval_splits,
                                         drop_eval_remainder=not distribute_lib.supports_partial_batches(strategy),
                                         input_scaling=config.model.input_scaling, workdir=workdir)
    if not config.prune.pretrained:  # fail on a channel_multiple wider than a group before pretraining, not after
        _check_channel_multiple(config, standard.model_factory(config.model, data.image_shape,
                                                               data.info.num_classes)())
    model, source = stage_pretrain(config, workdir, data, strategy)
    graph = ChannelGraph.from_model(model)
    _check_channel_multiple(config, model, graph)
    full_cost = CostModel(graph)
    split = _report_split(data)
    summary_path = os.path.join(workdir, "summary.json")
    previous = (io.read_artifact(summary_path, SUMMARY_SCHEMA, (SUMMARY_VERSION,))
                if os.path.isfile(summary_path) else {})
    metrics: dict[str, Any] = {}
    if previous.get("pretrained") == source and "pretrained" in previous.get("accuracy", {}):
        metrics["pretrained"] = previous["accuracy"]["pretrained"]  # one eval pass saved on a rerun
    else:
        metrics["pretrained"] = _accuracy(model, data.make_eval[split])
    check = _check_pretrained(config, data, model, source, split, metrics["pretrained"], previous)
    trained, logits, history = stage_gates(config, workdir, data, model, source, strategy)
    _, selection, info = stage_prune(config, workdir, trained, source, logits, data, strategy)
    if "accuracy_before_finetune" in info:
        metrics["pruned_before_finetune"] = info["accuracy_before_finetune"]["accuracy"]
    if config.prune.pretrained:
        def teacher() -> keras.Model:
            return model_source(config, data.image_shape, data.info.num_classes).build()
    else:
        def teacher() -> keras.Model:
            return _load_model(config, source)
    final = stage_finetune(config, workdir, data, os.path.join(workdir, "prune", "pruned.keras"),
                           strategy, teacher)["final"] or {}
    metrics.update({f"finetuned_{s}": r["accuracy"] for s, r in final.items()})
    summary = {
        "method": config.prune.method,
        "eval_split": split,
        "target_macs_ratio": float(config.prune.target_macs_ratio),
        "full_macs": int(full_cost.macs()),
        "full_params": int(full_cost.params()),
        "exact_target": info,
        "accuracy": metrics,
        "pretrained": source,
        "pretrained_check": check,
        "warnings": [check["warning"]] if check["warning"] else [],
        "paths": {"pruned_model": "finetune/model.keras", "widths": "prune/widths.json", "report": "report.md"},
    }
    io.write_artifact(summary_path, SUMMARY_SCHEMA, SUMMARY_VERSION, summary)
    if not chief:
        return summary
    shown = {f"accuracy: {k.replace('_', ' ')}" + ("" if k.startswith("finetuned_") else f" ({split})"): v
             for k, v in metrics.items()}
    if check["warning"]:
        shown["WARNING"] = check["warning"]
    report_lib.write_report(workdir, graph, selection, {**info, "method": config.prune.method}, logits=logits,
                            history=history, metrics=shown,
                            title=f"Dagger pruning report: {config.prune.method}, "
                                  f"{config.prune.target_macs_ratio:.2f} of the MACs")
    return summary
