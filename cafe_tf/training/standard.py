"""The standard training loop: a plain Keras model, a dataset, a recipe; resumable and distributed.

Used by ``cafe-tf train`` and reusable for fine-tuning a pruned model or retraining a
searched network: :func:`fit` takes a model (or a factory building one under the strategy's scope),
a :class:`DataSource` and the ``train`` config section; :func:`run` builds all three from a full
config. The loop reads top to bottom:

1. seeds, mixed-precision policy, the model and optimizer under ``strategy.scope()``;
2. restore the latest checkpoint of ``<workdir>/checkpoints`` if there is one (resume);
3. for each epoch: a fresh input pipeline whose order and augmentation depend only on
   ``(seed, epoch)``, so a resumed run skips the batches already done and sees exactly the data an
   unbroken run would; ``strategy.run`` of a ``tf.function`` step (``tf.GradientTape``);
   progress, TensorBoard, checkpoints every ``checkpoint_every`` steps and at the epoch end;
   evaluation on ``eval_splits``;
4. ``<workdir>/metrics.json`` (versioned artifact) and ``<workdir>/model.keras``, written atomically.

Only the step function is this loop's own; checkpoints, history, progress, the L2 penalty, the
losses and the evaluation come from :mod:`cafe_tf.training.kernel`, shared with the supernet and gate
training loops.

Recipe choices (documented here once):

* **Weight decay** is L2 in the loss on conv / dense kernels only (not biases, not BN):
  ``loss + 0.5 * weight_decay * sum ||W||^2``. Its gradient is ``weight_decay * W``, i.e. exactly
  the coupled weight decay of the classic CIFAR/ImageNet SGD recipes (PyTorch's
  ``SGD(weight_decay=...)``), so "wd 5e-4" means what the papers mean. It is the same L2 for Adam
  (not AdamW's decoupled decay).
* **Learning rate**: linear warm-up from 0 over ``warmup_epochs``, then cosine to 0 / constant /
  step decay (``step_gamma`` at each of ``step_epochs``), evaluated per step.
* **Label smoothing** on the training loss only; reported eval losses are plain cross-entropy.
* **Mixed precision**: ``mixed_float16`` uses Keras's dynamic ``LossScaleOptimizer``;
  ``mixed_bfloat16`` needs no loss scaling. Logits are cast to float32 before the loss.
* **Multi-label** datasets (CelebA's 40 attributes) use sigmoid cross-entropy; "accuracy" is then
  the mean per-attribute accuracy.
* **Probability heads**: a model ending in a softmax (a sigmoid for multi-label) trains as it is,
  its loss taken from the clipped probabilities (``from_logits=False``, as Keras's crossentropies
  and Dagger's gate training do): the same loss as the model without the head, and the saved
  ``model.keras`` keeps the head.

Extension point: the model comes from ``model_fn``. ``--widths=widths.json`` (a searched net) and
``--init_from_supernet`` plug in by passing a ``model_fn`` that builds the slim model (and loads
inherited weights) to :func:`run`; nothing else in the loop changes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cafe_tf import data as data_lib
from cafe_tf import distribute as distribute_lib
from cafe_tf import io
from cafe_tf.config import ConfigError, to_dict
from cafe_tf.data import DataSource
from cafe_tf.training import kernel

METRICS_SCHEMA = "metrics"
METRICS_VERSION = 1

ModelFactory = Callable[[], keras.Model]


# --------------------------------------------------------------------------------------------
# Hooks


class Hook:
    """Callbacks of the loop (all no-ops here): subclass and override what you need.

    They run on every worker; check ``context.is_chief`` before writing files.
    """

    def on_train_begin(self, context: TrainContext) -> None:
        """After the model is built and the checkpoint (if any) restored."""

    def on_step_end(self, step: int, logs: Mapping[str, float]) -> None:
        """After global step ``step`` (1-based count of steps done); logs: loss, accuracy, lr."""

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any]) -> None:
        """After epoch ``epoch`` (1-based) with its train and eval metrics."""

    def on_checkpoint(self, step: int, path: str) -> None:
        """After a checkpoint at ``step`` was written to ``path``."""

    def on_train_end(self, metrics: Mapping[str, Any]) -> None:
        """After metrics.json and model.keras were written."""


# --------------------------------------------------------------------------------------------
# Recipe pieces


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0, then cosine to 0, constant, or step decay; a function of the step."""

    def __init__(
        self,
        peak: float,
        total_steps: int,
        warmup_steps: int = 0,
        schedule: str = "cosine",
        boundaries: Sequence[int] = (),
        gamma: float = 0.1,
    ):
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.boundaries = tuple(int(b) for b in boundaries)
        self.gamma = float(gamma)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak, tf.float32)
        if self.schedule == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
        elif self.schedule == "step":
            passed = tf.add_n([tf.cast(step >= b, tf.float32) for b in self.boundaries] or [tf.constant(0.0)])
            lr = peak * tf.pow(self.gamma, passed)
        else:
            lr = peak
        if self.warmup_steps:
            lr = tf.where(step < self.warmup_steps, peak * step / self.warmup_steps, lr)
        return lr

    def get_config(self) -> dict[str, Any]:
        return dict(peak=self.peak, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                    schedule=self.schedule, boundaries=list(self.boundaries), gamma=self.gamma)


def learning_rate(train: ml_collections.ConfigDict, steps_per_epoch: int) -> LearningRate:
    """The learning-rate schedule of the ``train`` config for ``steps_per_epoch``."""
    return LearningRate(
        peak=train.lr,
        total_steps=train.epochs * steps_per_epoch,
        warmup_steps=int(round(train.warmup_epochs * steps_per_epoch)),
        schedule=train.schedule,
        boundaries=[int(e * steps_per_epoch) for e in train.step_epochs],
        gamma=train.step_gamma,
    )


def make_optimizer(train: ml_collections.ConfigDict, schedule: LearningRate) -> keras.optimizers.Optimizer:
    """SGD (momentum, Nesterov) or Adam on ``schedule``; wrapped for loss scaling under mixed_float16."""
    if train.optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=schedule, momentum=train.momentum, nesterov=train.nesterov)
    elif train.optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate=schedule)
    else:
        raise ConfigError(f"config.train.optimizer={train.optimizer!r} is invalid; valid values: ['sgd', 'adam']")
    return kernel.loss_scaled(opt, train.mixed_precision)


# --------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class TrainContext:
    """What hooks can see: the live objects of the run."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    strategy: tf.distribute.Strategy
    data: DataSource
    workdir: str
    steps_per_epoch: int
    total_steps: int
    start_step: int
    is_chief: bool


def fit(
    model: keras.Model | ModelFactory,
    data: DataSource,
    train: ml_collections.ConfigDict,
    workdir: str,
    *,
    strategy: tf.distribute.Strategy | None = None,
    hooks: Sequence[Hook] = (),
    config_record: Mapping[str, Any] | None = None,
    teacher: keras.Model | ModelFactory | None = None,
) -> dict[str, Any]:
    """Trains ``model`` on ``data`` with the ``train`` recipe in ``workdir`` (resuming if it holds a checkpoint).

    Returns the metrics written to ``<workdir>/metrics.json``; the model goes to
    ``<workdir>/model.keras``. ``config_record`` (the full config) is stored in the metrics.
    ``teacher`` (a model or factory, run in inference mode, never trained) is distilled from with
    ``train.distill_weight`` and ``train.distill_temperature`` (:func:`kernel.distilled_loss`).
    """
    strategy = strategy or tf.distribute.get_strategy()
    workdir = os.path.abspath(workdir)
    chief = distribute_lib.is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    info, batch = data.info, data.global_batch
    spe = steps_per_epoch(data, strategy)
    total_steps = train.epochs * spe

    keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        tf.config.experimental.enable_op_determinism()
    model = kernel.build_model(model, strategy, train.mixed_precision)
    num_classes = info.num_classes
    out_dim = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if out_dim is not None and out_dim != num_classes:
        raise ConfigError(
            f"the model outputs {out_dim} logits but {info.name!r} has {num_classes} classes; "
            f"set config.model.num_classes={num_classes} (or 0)"
        )

    distill = float(train.get("distill_weight", 0.0))
    if distill and teacher is None:
        raise ConfigError(f"config.train.distill_weight={distill} needs a teacher, and this program has none; only "
                          "the prune program's finetune stage distills (from the unpruned model); use 0 here")
    teacher = kernel.build_model(teacher, strategy, train.mixed_precision) if distill else None

    schedule, optimizer, global_step, ckpt = training_state(train, model, strategy, workdir, spe, batch)
    resumed_from = ckpt.restore()
    start_step = int(global_step.numpy())
    history = kernel.History(workdir, write=chief)
    if resumed_from is not None:
        history.load(start_step)

    tb_dir = os.path.join(workdir, "tensorboard")
    writers = {name: kernel.summary_writer(os.path.join(tb_dir, name), chief) for name in ("train", *data.make_eval)}
    if chief:
        logging.info("checkpoints: %s", ckpt.directory)
        logging.info("TensorBoard: tensorboard --logdir %s", tb_dir)
        logging.info("%s, %d steps/epoch x %d epochs, global batch %d, %s", info.name, spe, train.epochs, batch,
                     distribute_lib.describe(strategy))
        if resumed_from is not None:
            logging.info("resuming from checkpoint %s at step %d (epoch %d, step %d of it)",
                         resumed_from, start_step, start_step // spe + 1, start_step % spe)

    from_logits = not kernel.outputs_probabilities(model, info.task)
    train_step = _train_step_fn(model, optimizer, strategy, info, train, batch, global_step, from_logits, teacher)
    eval_step = make_eval_step(model, strategy, info, from_logits)
    context = TrainContext(model, optimizer, strategy, data, workdir, spe, total_steps, start_step, chief)
    for hook in hooks:
        hook.on_train_begin(context)

    progress = kernel.Progress(train.epochs, spe, train.log_every, enabled=chief)
    t_start = time.time()
    step = start_step
    last_saved = start_step if resumed_from is not None else -1
    for epoch in range(start_step // spe, train.epochs):
        skip = step - epoch * spe
        dist_ds = strategy.distribute_datasets_from_function(
            lambda ctx, e=epoch, s=skip: data.make_train(e, s, ctx))
        iterator = iter(dist_ds)
        progress.start_epoch(epoch, skip)
        sums = np.zeros(3)  # loss sum, correct sum, examples, since the epoch (re)started
        window = np.zeros(3)
        for step_in_epoch in range(skip + 1, spe + 1):
            loss_sum, correct, count = (float(t) for t in train_step(next(iterator)))
            step += 1
            sums += (loss_sum, correct, count)
            window += (loss_sum, correct, count)
            lr = float(schedule(step - 1))
            logs = {"loss": loss_sum / count, "accuracy": correct / count, "lr": lr}
            progress.update(step_in_epoch, {"loss": sums[0] / sums[2], "acc": sums[1] / sums[2], "lr": lr})
            if step % train.log_every == 0 or step_in_epoch == spe:
                with writers["train"].as_default():
                    kernel.write_scalar("loss", window[0] / window[2], step)
                    kernel.write_scalar("accuracy", window[1] / window[2], step)
                    kernel.write_scalar("learning_rate", lr, step)
                window[:] = 0
            for hook in hooks:
                hook.on_step_end(step, logs)
            if train.checkpoint_every and step % train.checkpoint_every == 0 and step < total_steps:
                last_saved = save_checkpoint(ckpt, step, hooks)
        epoch_logs: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        if sums[2]:
            epoch_logs["train"] = {"loss": sums[0] / sums[2], "accuracy": sums[1] / sums[2]}
        if kernel.eval_due(epoch + 1, train.eval_every, train.epochs):
            epoch_logs["eval"] = _evaluate_all(eval_step, strategy, data, writers, step)
            _log_eval(epoch + 1, epoch_logs["eval"], chief)
        history.append(epoch_logs)
        if last_saved != step:
            last_saved = save_checkpoint(ckpt, step, hooks)
        for hook in hooks:
            hook.on_epoch_end(epoch + 1, epoch_logs)
    train_seconds = time.time() - t_start

    entries = history.entries
    final = entries[-1].get("eval") if entries and entries[-1]["step"] == step else None
    if final is None:  # nothing left to train (a finished run restarted): evaluate the restored model
        final = _evaluate_all(eval_step, strategy, data, writers, step)
    for writer in writers.values():
        writer.flush()
    metrics = {
        "dataset": info.name,
        "task": info.task,
        "model": model.name,
        "params": int(model.count_params()),
        "image_shape": list(data.image_shape),
        "num_classes": num_classes,
        "normalization": info.normalization(),
        "epochs": train.epochs,
        "steps": step,
        "steps_per_epoch": spe,
        "global_batch": batch,
        "replicas": replicas,
        "resumed_from_step": start_step if resumed_from is not None else None,
        "train_seconds_this_run": round(train_seconds, 3),
        "final": final,
        "history": entries,
        "paths": {"model": "model.keras", "checkpoints": "checkpoints", "tensorboard": "tensorboard"},
        "config": dict(config_record) if config_record is not None else None,
    }
    if chief:
        with io.atomic_path(os.path.join(workdir, "model.keras")) as tmp:
            model.save(tmp)
        io.write_artifact(os.path.join(workdir, "metrics.json"), METRICS_SCHEMA, METRICS_VERSION, metrics)
    ckpt.discard_scratch()
    for hook in hooks:
        hook.on_train_end(metrics)
    return metrics


def training_state(train: ml_collections.ConfigDict, model: keras.Model, strategy: tf.distribute.Strategy,
                   workdir: str, spe: int, batch: int
                   ) -> tuple[LearningRate, keras.optimizers.Optimizer, tf.Variable, kernel.Checkpointer]:
    """The ``train`` recipe's schedule, optimizer and global step under ``strategy``, and the
    :class:`kernel.Checkpointer` of ``<workdir>/checkpoints`` that holds them with ``model``."""
    schedule = learning_rate(train, spe)
    with strategy.scope():
        optimizer = make_optimizer(train, schedule)
        optimizer.build(model.trainable_variables)  # slots exist before restore, so they are restored too
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    ckpt = kernel.Checkpointer(strategy, workdir, "checkpoints", max_to_keep=train.keep_checkpoints,
                               rng_models=[model], run_shape=(spe, batch), model=model, optimizer=optimizer,
                               step=global_step)
    return schedule, optimizer, global_step, ckpt


def steps_per_epoch(data: DataSource, strategy: tf.distribute.Strategy) -> int:
    """Global steps per epoch of ``data`` under ``strategy``; ConfigError when the batch does not fit."""
    replicas = strategy.num_replicas_in_sync
    batch = data.global_batch
    if batch % replicas:
        raise ConfigError(
            f"config.data.batch_size={batch} must be divisible by the {replicas} replicas; use a multiple of {replicas}"
        )
    spe = data_lib.steps_per_epoch(data.train_examples, batch, distribute_lib.num_input_pipelines(strategy))
    if spe < 1:
        raise ConfigError(
            f"config.data.batch_size={batch} is larger than the {data.train_examples} training examples; "
            "use a smaller batch or more data"
        )
    return spe


def save_checkpoint(ckpt: kernel.Checkpointer, step: int, hooks: Sequence[Hook]) -> int:
    """Writes checkpoint number ``step``, tells each hook's ``on_checkpoint``; returns ``step``."""
    path = ckpt.save(step)
    for hook in hooks:
        hook.on_checkpoint(step, path)
    return step


def _train_step_fn(model, optimizer, strategy, info, train, global_batch: int, global_step, from_logits: bool,
                   teacher: keras.Model | None = None):
    task, num_classes = info.task, info.num_classes
    smoothing, weight_decay = float(train.label_smoothing), float(train.weight_decay)
    distill, temperature = float(train.get("distill_weight", 0.0)), float(train.get("distill_temperature", 1.0))
    teacher_from_logits = teacher is None or not kernel.outputs_probabilities(teacher, task)
    decayed = kernel.decayed(model.trainable_variables)

    def replica_step(images, labels):
        teacher_outputs = tf.stop_gradient(tf.cast(teacher(images, training=False), tf.float32)) if distill else None
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            per_example = kernel.per_example_loss(task, labels, logits, num_classes, smoothing, from_logits)
            objective = kernel.distilled_loss(per_example, task, teacher_outputs, logits, distill, temperature,
                                              teacher_from_logits, from_logits)
            loss = tf.nn.compute_average_loss(objective, global_batch_size=global_batch)
            regularization = [tf.cast(l, tf.float32) for l in model.losses]
            if weight_decay and decayed:
                regularization.append(kernel.l2_penalty(decayed, weight_decay))
            if regularization:
                loss += tf.nn.scale_regularization_loss(tf.add_n(regularization))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = kernel.per_example_accuracy(task, labels, logits, from_logits)
        return tf.reduce_sum(per_example), tf.reduce_sum(correct), tf.cast(tf.shape(labels)[0], tf.float32)

    if train.jit_compile:  # XLA compiles the replica's step, as Keras's own jit_compile does
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_step(batch):
        per_replica = strategy.run(replica_step, args=batch)
        global_step.assign_add(1)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in per_replica]

    return train_step


def make_eval_step(model: keras.Model, strategy: tf.distribute.Strategy, info: data_lib.DatasetInfo,
                   from_logits: bool | None = None) -> Callable:
    """The kernel's eval step for ``model`` on distributed batches of ``info``'s task (:func:`kernel.make_eval_step`).

    ``from_logits=None`` asks :func:`kernel.outputs_probabilities` whether the model ends in a softmax.
    """
    if from_logits is None:
        from_logits = not kernel.outputs_probabilities(model, info.task)
    return kernel.make_eval_step(lambda images: model(images, training=False), info.task, from_logits, strategy)


def evaluate(
    eval_step: Callable, strategy: tf.distribute.Strategy, make_dataset: Callable[[Any], tf.data.Dataset]
) -> dict[str, float]:
    """Mean loss and accuracy of one pass over ``make_dataset`` (a distribute_datasets_from_function fn)."""
    return kernel.evaluate(eval_step, strategy.distribute_datasets_from_function(make_dataset))


def _evaluate_all(eval_step, strategy, data: DataSource, writers, step: int) -> dict[str, dict[str, float]]:
    results = {}
    for split, make in data.make_eval.items():
        results[split] = evaluate(eval_step, strategy, make)
        with writers[split].as_default():
            kernel.write_scalar("loss", results[split]["loss"], step)
            kernel.write_scalar("accuracy", results[split]["accuracy"], step)
    return results


def _log_eval(epoch: int, results: Mapping[str, Mapping[str, float]], chief: bool) -> None:
    if chief:
        parts = [f"{s} loss {r['loss']:.4f} acc {r['accuracy']:.4f}" for s, r in results.items()]
        logging.info("epoch %d: %s", epoch, "; ".join(parts))


# --------------------------------------------------------------------------------------------
# From a config


def model_factory(model: ml_collections.ConfigDict, image_shape: Sequence[int], num_classes: int) -> ModelFactory:
    """A factory for the model the ``model`` config section names (registry, ``.keras`` or application), sized
    for the data; a bad name or file fails here, before any training."""
    from cafe_tf.models import source

    return source.from_config(model, image_shape, num_classes).build


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model_fn: ModelFactory | None = None,
    hooks: Sequence[Hook] = (),
    strategy: tf.distribute.Strategy | None = None,
    data: DataSource | None = None,
) -> dict[str, Any]:
    """Trains what ``config`` describes in ``workdir``; ``model_fn`` replaces the registry model (searched widths),
    ``data`` the data source ``config.data`` describes."""
    strategy = strategy or distribute_lib.strategy_from_config(config.distribute)
    data = data or data_lib.make_data_source(
        config.data, seed=config.train.seed, eval_splits=tuple(config.train.eval_splits),
        drop_eval_remainder=not distribute_lib.supports_partial_batches(strategy),
        input_scaling=config.model.input_scaling, workdir=workdir,
    )
    if tuple(config.model.input_shape) and tuple(config.model.input_shape) != tuple(data.image_shape):
        raise ConfigError(
            f"config.model.input_shape={tuple(config.model.input_shape)!r} differs from the {data.image_shape!r} "
            f"images the pipeline makes for {data.info.name!r}; set config.data.image_size to match, or leave "
            "config.model.input_shape=() to follow the data"
        )
    if model_fn is None:
        model_fn = model_factory(config.model, data.image_shape, data.info.num_classes)
    if distribute_lib.is_chief(strategy):
        io.write_json(os.path.join(workdir, "config.json"), to_dict(config))
    return fit(model_fn, data, config.train, workdir, strategy=strategy, hooks=hooks, config_record=to_dict(config))

