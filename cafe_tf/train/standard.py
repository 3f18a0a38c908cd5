"""The standard training loop: a plain Keras model, a dataset, a recipe; resumable and distributed.

Used by ``python -m cafe_tf.train`` and reusable for fine-tuning a pruned model or retraining a
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
import shutil
import sys
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

METRICS_SCHEMA = "metrics"
METRICS_VERSION = 1
HISTORY_SCHEMA = "train_history"
HISTORY_VERSION = 1

ModelFactory = Callable[[], keras.Model]


# --------------------------------------------------------------------------------------------
# Hooks and data


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


@dataclasses.dataclass(frozen=True)
class DataSource:
    """What the loop trains and evaluates on.

    ``make_train(epoch, skip_batches, input_context)`` returns epoch ``epoch``'s batches (one pass,
    per-replica batch size, ``skip_batches`` global steps already done); ``make_eval[split]
    (input_context)`` an eval split's batches. Both are called by
    ``strategy.distribute_datasets_from_function``.
    """

    info: data_lib.DatasetInfo
    image_shape: tuple[int, int, int]
    train_examples: int
    global_batch: int
    make_train: Callable[[int, int, tf.distribute.InputContext | None], tf.data.Dataset]
    make_eval: Mapping[str, Callable[[tf.distribute.InputContext | None], tf.data.Dataset]]


def _num_examples(ds: tf.data.Dataset, info: data_lib.DatasetInfo, split: str) -> int:
    if split in info.split_sizes:
        return int(info.split_sizes[split])
    n = int(ds.cardinality())  # known for mocked data, unknown (-2) for some sources
    if n < 0:
        raise data_lib.DatasetError(f"cannot tell how many examples split {split!r} of {info.name!r} has")
    return n


def make_data_source(
    data: ml_collections.ConfigDict,
    seed: int,
    eval_splits: Sequence[str] = ("validation", "test"),
    drop_eval_remainder: bool = False,
    input_scaling: str = "mean_std",
) -> DataSource:
    """Builds the :class:`DataSource` the ``data`` config section describes (see cafe_tf.config), its
    images scaled as ``input_scaling`` (``config.model.input_scaling``) says."""
    load_kwargs = dict(
        data_dir=data.data_dir or None,
        download=data.download,
        validation_size=None if data.validation_size < 0 else data.validation_size,
        attribute=data.attribute or None,
    )
    train_ds, info = data_lib.load(data.name, "train", **load_kwargs)
    info = dataclasses.replace(info, input_scaling=input_scaling)  # the pipelines read it from info
    n_train = _num_examples(train_ds, info, "train")
    if data.max_train_examples:
        n_train = min(n_train, data.max_train_examples)
        train_ds = train_ds.take(n_train)
    if data.cache:
        train_ds = train_ds.cache()  # one cache shared by every epoch's pipeline
    image_size = data.image_size or None
    image_shape = data_lib.resolve_image_size(info, image_size)
    eval_batch = data.eval_batch_size or data.batch_size

    def make_train(epoch: int, skip_batches: int, ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
        return data_lib.input_pipeline(
            train_ds, info, True, data.batch_size, image_size=image_size, augment=data.augment,
            shuffle_buffer=data.shuffle_buffer, seed=seed, epoch=epoch, skip_batches=skip_batches,
            drop_remainder=True, input_context=ctx,
        )

    def eval_maker(split: str):
        ds, _ = data_lib.load(data.name, split, **load_kwargs)
        if data.max_eval_examples:
            ds = ds.take(data.max_eval_examples)
        if data.cache:
            ds = ds.cache()

        def make_eval(ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
            return data_lib.input_pipeline(
                ds, info, False, eval_batch, image_size=image_size, drop_remainder=drop_eval_remainder,
                input_context=ctx,
            )

        return make_eval

    return DataSource(
        info=info,
        image_shape=image_shape,
        train_examples=n_train,
        global_batch=data.batch_size,
        make_train=make_train,
        make_eval={split: eval_maker(split) for split in eval_splits},
    )


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
    if train.mixed_precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def is_decayed(variable) -> bool:
    """Whether weight decay applies to ``variable``: conv / dense / depthwise kernels, not biases or BatchNorm."""
    return getattr(variable, "path", variable.name).split("/")[-1].split(":")[0].endswith("kernel")


def outputs_probabilities(model: keras.Model, task: str = "classification") -> bool:
    """True if ``model`` ends in the task's probability head (softmax; sigmoid for multilabel), False for logits.

    The head is the operation making the first output: a ``Softmax`` layer or op, or any layer whose
    ``activation`` is softmax / sigmoid (``Activation``, ``Dense``, ...). A model without symbolic
    outputs (a subclassed model) is taken to output logits.
    """
    try:
        head = model.outputs[0]._keras_history.operation
    except (AttributeError, IndexError, TypeError, ValueError):
        return False
    kind = type(head).__name__.lower()  # keras.layers.Softmax and the keras.ops Softmax / Sigmoid nodes
    if kind not in ("softmax", "sigmoid"):
        kind = getattr(getattr(head, "activation", None), "__name__", "")
    expected = "sigmoid" if task == "multilabel" else "softmax"
    if kind in ("softmax", "sigmoid") and kind != expected:
        raise ConfigError(f"model {model.name!r} ends in a {kind} but a {task} task needs logits or a {expected}")
    return kind == expected


def _logits(task: str, outputs: tf.Tensor, from_logits: bool) -> tf.Tensor:
    """float32 logits of a model's outputs; probabilities are clipped as Keras's crossentropies clip them."""
    outputs = tf.cast(outputs, tf.float32)
    if from_logits:
        return outputs
    eps = keras.config.epsilon()
    probs = tf.clip_by_value(outputs, eps, 1.0 - eps)
    # log p is a logit vector of softmax(.) = p; for a sigmoid, log(p / (1 - p)) is the logit itself.
    return tf.math.log(probs) - (tf.math.log1p(-probs) if task == "multilabel" else 0.0)


def per_example_loss(task: str, labels: tf.Tensor, logits: tf.Tensor, num_classes: int, smoothing: float = 0.0,
                     from_logits: bool = True):
    """Cross-entropy per example: softmax for classification, mean sigmoid over labels for multilabel.

    ``from_logits=False``: ``logits`` are the probabilities of a softmax (sigmoid) head instead.
    """
    logits = _logits(task, logits, from_logits)
    if task == "multilabel":
        targets = tf.cast(labels, tf.float32) * (1.0 - smoothing) + 0.5 * smoothing
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=-1)
    targets = tf.one_hot(labels, num_classes) * (1.0 - smoothing) + smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def per_example_accuracy(task: str, labels: tf.Tensor, logits: tf.Tensor, from_logits: bool = True) -> tf.Tensor:
    """1/0 per example (classification) or the fraction of correct labels (multilabel); see :func:`per_example_loss`."""
    if task == "multilabel":
        hits = tf.equal(tf.cast(logits > (0 if from_logits else 0.5), tf.int64), tf.cast(labels, tf.int64))
        return tf.reduce_mean(tf.cast(hits, tf.float32), axis=-1)
    return tf.cast(tf.equal(tf.argmax(logits, axis=-1), tf.cast(labels, tf.int64)), tf.float32)


# --------------------------------------------------------------------------------------------
# TensorBoard and progress


def _scalar_metadata():
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def write_scalar(name: str, value: float, step: int) -> None:
    """Writes a TensorBoard scalar to the default summary writer.

    TensorFlow 2.21 moved ``tf.summary.scalar`` into the ``tensorboard`` package, which we do not
    depend on; this writes the same event (a float32 scalar tagged for the "scalars" plugin) with
    TensorFlow alone. Viewing the curves needs ``pip install tensorboard``.
    """
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=_scalar_metadata())


class Progress:
    """A Progbar (steps/epoch, loss, acc, ETA) on a terminal; a log line every ``log_every`` steps otherwise."""

    def __init__(self, epochs: int, steps_per_epoch: int, log_every: int, enabled: bool):
        self.epochs, self.spe, self.log_every, self.enabled = epochs, steps_per_epoch, log_every, enabled
        self.tty = enabled and sys.stdout.isatty()
        self.bar: keras.utils.Progbar | None = None

    def start_epoch(self, epoch: int, first_step: int) -> None:
        self.epoch, self.first_step, self.t0 = epoch, first_step, time.time()
        if self.tty:
            print(f"Epoch {epoch + 1}/{self.epochs}", flush=True)
            self.bar = keras.utils.Progbar(self.spe, stateful_metrics=["loss", "acc", "lr"], unit_name="step")
            if first_step:
                self.bar.update(first_step)

    def update(self, step_in_epoch: int, loss: float, acc: float, lr: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step_in_epoch, [("loss", loss), ("acc", acc), ("lr", lr)])
        elif step_in_epoch % self.log_every == 0 or step_in_epoch == self.spe:
            done = step_in_epoch - self.first_step
            rate = done / max(time.time() - self.t0, 1e-9)
            eta = (self.spe - step_in_epoch) / max(rate, 1e-9)
            logging.info(
                "epoch %d/%d step %d/%d loss %.4f acc %.4f lr %.4g (%.1f steps/s, epoch ETA %s)",
                self.epoch + 1, self.epochs, step_in_epoch, self.spe, loss, acc, lr, rate, _duration(eta),
            )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


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


def _build_model(model: keras.Model | ModelFactory, strategy: tf.distribute.Strategy, policy: str) -> keras.Model:
    if isinstance(model, keras.Model):
        if policy != "none" and model.dtype_policy.name != policy:
            raise ConfigError(
                f"config.train.mixed_precision={policy!r} but the given model was built with dtype policy "
                f"{model.dtype_policy.name!r}; pass a model factory instead, so fit() builds it under the policy"
            )
        if strategy is not tf.distribute.get_strategy() and model.weights:
            v = model.weights[0]
            if not strategy.extended.variable_created_in_scope(getattr(v, "value", v)):
                raise ValueError(
                    f"the given model was not built under {type(strategy).__name__}.scope(); pass a model "
                    "factory instead (fit() calls it inside the scope)"
                )
        return model
    with strategy.scope():
        built = model()
    if not isinstance(built, keras.Model):
        raise TypeError(f"the model factory must return a keras.Model, got {type(built).__name__}")
    return built


def fit(
    model: keras.Model | ModelFactory,
    data: DataSource,
    train: ml_collections.ConfigDict,
    workdir: str,
    *,
    strategy: tf.distribute.Strategy | None = None,
    hooks: Sequence[Hook] = (),
    config_record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains ``model`` on ``data`` with the ``train`` recipe in ``workdir`` (resuming if it holds a checkpoint).

    Returns the metrics written to ``<workdir>/metrics.json``; the model goes to
    ``<workdir>/model.keras``. ``config_record`` (the full config) is stored in the metrics.
    """
    strategy = strategy or tf.distribute.get_strategy()
    workdir = os.path.abspath(workdir)
    chief = distribute_lib.is_chief(strategy)
    pipelines = distribute_lib.num_input_pipelines(strategy)
    replicas = strategy.num_replicas_in_sync
    info, batch = data.info, data.global_batch
    if batch % replicas:
        raise ConfigError(
            f"config.data.batch_size={batch} must be divisible by the {replicas} replicas; use a multiple of {replicas}"
        )
    spe = data_lib.steps_per_epoch(data.train_examples, batch, pipelines)
    if spe < 1:
        raise ConfigError(
            f"config.data.batch_size={batch} is larger than the {data.train_examples} training examples; "
            "use a smaller batch or more data"
        )
    total_steps = train.epochs * spe
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not chief:  # saving is collective: the others write a scratch copy, removed at the end
        ckpt_dir = os.path.join(workdir, f".scratch_{distribute_lib.worker_id(strategy)}", "checkpoints")

    keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.mixed_precision.dtype_policy()
    if train.mixed_precision != "none":
        keras.mixed_precision.set_dtype_policy(train.mixed_precision)
    try:
        model = _build_model(model, strategy, train.mixed_precision)
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
    num_classes = info.num_classes
    out_dim = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if out_dim is not None and out_dim != num_classes:
        raise ConfigError(
            f"the model outputs {out_dim} logits but {info.name!r} has {num_classes} classes; "
            f"set config.model.num_classes={num_classes} (or 0)"
        )

    schedule = learning_rate(train, spe)
    with strategy.scope():
        optimizer = make_optimizer(train, schedule)
        optimizer.build(model.trainable_variables)  # slots exist before restore, so they are restored too
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        run_shape = tf.Variable([spe, batch], dtype=tf.int64, trainable=False, name="run_shape",
                                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    # Keras's random-seed states (dropout and other random layers) are not TF trackables, so the
    # model alone does not save them; without them a resumed run would draw other dropout masks.
    rng_states = [v.value for v in model.variables if v.name == "seed_generator_state"]
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=global_step, run_shape=run_shape,
                                     rng=rng_states)
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=train.keep_checkpoints)
    resumed_from = restore_checkpoint(checkpoint, manager, run_shape, spe, batch)
    start_step = int(global_step.numpy())
    history = _load_history(workdir, start_step) if resumed_from is not None else []

    tb_dir = os.path.join(workdir, "tensorboard")
    writers = {
        name: tf.summary.create_file_writer(os.path.join(tb_dir, name)) if chief else tf.summary.create_noop_writer()
        for name in ("train", *data.make_eval)
    }
    if chief:
        logging.info("checkpoints: %s", ckpt_dir)
        logging.info("TensorBoard: tensorboard --logdir %s", tb_dir)
        logging.info("%s, %d steps/epoch x %d epochs, global batch %d, %s", info.name, spe, train.epochs, batch,
                     distribute_lib.describe(strategy))
        if resumed_from is not None:
            logging.info("resuming from checkpoint %s at step %d (epoch %d, step %d of it)",
                         resumed_from, start_step, start_step // spe + 1, start_step % spe)

    from_logits = not outputs_probabilities(model, info.task)
    train_step = _train_step_fn(model, optimizer, strategy, info, train, batch, global_step, from_logits)
    eval_step = make_eval_step(model, strategy, info, from_logits)
    context = TrainContext(model, optimizer, strategy, data, workdir, spe, total_steps, start_step, chief)
    for hook in hooks:
        hook.on_train_begin(context)

    progress = Progress(train.epochs, spe, train.log_every, enabled=chief)
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
            progress.update(step_in_epoch, sums[0] / sums[2], sums[1] / sums[2], lr)
            if step % train.log_every == 0 or step_in_epoch == spe:
                with writers["train"].as_default():
                    write_scalar("loss", window[0] / window[2], step)
                    write_scalar("accuracy", window[1] / window[2], step)
                    write_scalar("learning_rate", lr, step)
                window[:] = 0
            for hook in hooks:
                hook.on_step_end(step, logs)
            if train.checkpoint_every and step % train.checkpoint_every == 0 and step < total_steps:
                last_saved = save_checkpoint(manager, step, hooks)
        epoch_logs: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        if sums[2]:
            epoch_logs["train"] = {"loss": sums[0] / sums[2], "accuracy": sums[1] / sums[2]}
        if (epoch + 1) % train.eval_every == 0 or epoch + 1 == train.epochs:
            epoch_logs["eval"] = _evaluate_all(eval_step, strategy, data, writers, step)
            _log_eval(epoch + 1, epoch_logs["eval"], chief)
        history.append(epoch_logs)
        if chief:
            io.write_artifact(os.path.join(workdir, "history.json"), HISTORY_SCHEMA, HISTORY_VERSION,
                              {"entries": history})
        if last_saved != step:
            last_saved = save_checkpoint(manager, step, hooks)
        for hook in hooks:
            hook.on_epoch_end(epoch + 1, epoch_logs)
    train_seconds = time.time() - t_start

    final = history[-1].get("eval") if history and history[-1]["step"] == step else None
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
        "history": history,
        "paths": {"model": "model.keras", "checkpoints": "checkpoints", "tensorboard": "tensorboard"},
        "config": dict(config_record) if config_record is not None else None,
    }
    if chief:
        with io.atomic_path(os.path.join(workdir, "model.keras")) as tmp:
            model.save(tmp)
        io.write_artifact(os.path.join(workdir, "metrics.json"), METRICS_SCHEMA, METRICS_VERSION, metrics)
    else:
        shutil.rmtree(os.path.dirname(ckpt_dir), ignore_errors=True)
    for hook in hooks:
        hook.on_train_end(metrics)
    return metrics


def restore_checkpoint(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager, run_shape: tf.Variable,
                       spe: int, batch: int) -> str | None:
    """Restores the latest checkpoint (None if there is none); refuses one of another model or data shape."""
    latest = manager.latest_checkpoint
    if latest is None:
        return None
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise ValueError(
            f"checkpoint {latest} does not match this model / optimizer ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); use a new --workdir or remove {os.path.dirname(latest)}"
        ) from None
    saved_spe, saved_batch = (int(v) for v in run_shape.numpy())
    if (saved_spe, saved_batch) != (spe, batch):
        raise ConfigError(
            f"checkpoint {latest} was written with {saved_spe} steps/epoch at global batch {saved_batch}; this run has "
            f"{spe} steps/epoch at batch {batch}. Resume with the same data and batch settings, or use a new --workdir"
        )
    return latest


def _load_history(workdir: str, start_step: int) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "history.json")
    if not os.path.exists(path):
        return []
    entries = io.read_artifact(path, HISTORY_SCHEMA, (HISTORY_VERSION,), required=("entries",))["entries"]
    return [e for e in entries if e.get("step", 0) <= start_step]


def save_checkpoint(manager: tf.train.CheckpointManager, step: int, hooks: Sequence[Hook]) -> int:
    """Writes checkpoint number ``step`` with ``manager``, tells each hook's ``on_checkpoint``; returns ``step``."""
    path = manager.save(checkpoint_number=step)
    for hook in hooks:
        hook.on_checkpoint(step, path)
    return step


def _train_step_fn(model, optimizer, strategy, info, train, global_batch: int, global_step, from_logits: bool):
    task, num_classes = info.task, info.num_classes
    smoothing, weight_decay = float(train.label_smoothing), float(train.weight_decay)
    decayed = [v for v in model.trainable_variables if is_decayed(v)]

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            per_example = per_example_loss(task, labels, logits, num_classes, smoothing, from_logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            regularization = [tf.cast(l, tf.float32) for l in model.losses]
            if weight_decay and decayed:
                regularization.append(
                    0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in decayed]))
            if regularization:
                loss += tf.nn.scale_regularization_loss(tf.add_n(regularization))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = per_example_accuracy(task, labels, logits, from_logits)
        return tf.reduce_sum(per_example), tf.reduce_sum(correct), tf.cast(tf.shape(labels)[0], tf.float32)

    @tf.function
    def train_step(batch):
        per_replica = strategy.run(replica_step, args=batch)
        global_step.assign_add(1)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in per_replica]

    return train_step


def make_eval_step(model: keras.Model, strategy: tf.distribute.Strategy, info: data_lib.DatasetInfo,
                   from_logits: bool | None = None) -> Callable:
    """A ``tf.function`` evaluating one distributed batch: summed loss, correct and example count.

    ``from_logits=None`` asks :func:`outputs_probabilities` whether the model ends in a softmax.
    """
    task, num_classes = info.task, info.num_classes
    if from_logits is None:
        from_logits = not outputs_probabilities(model, task)

    def replica_step(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        loss = per_example_loss(task, labels, logits, num_classes, from_logits=from_logits)
        correct = per_example_accuracy(task, labels, logits, from_logits)
        return tf.reduce_sum(loss), tf.reduce_sum(correct), tf.cast(tf.shape(labels)[0], tf.float32)

    @tf.function
    def eval_step(batch):
        per_replica = strategy.run(replica_step, args=batch)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in per_replica]

    return eval_step


def evaluate(
    eval_step: Callable, strategy: tf.distribute.Strategy, make_dataset: Callable[[Any], tf.data.Dataset]
) -> dict[str, float]:
    """Mean loss and accuracy of one pass over ``make_dataset`` (a distribute_datasets_from_function fn).

    ``eval_step`` comes from :func:`make_eval_step` (build it once: each new one traces again).
    """
    sums = np.zeros(3)
    for batch in strategy.distribute_datasets_from_function(make_dataset):
        sums += [float(t) for t in eval_step(batch)]
    if not sums[2]:
        raise data_lib.DatasetError("the evaluation split yielded no examples")
    return {"loss": sums[0] / sums[2], "accuracy": sums[1] / sums[2], "examples": int(sums[2])}


def _evaluate_all(eval_step, strategy, data: DataSource, writers, step: int) -> dict[str, dict[str, float]]:
    results = {}
    for split, make in data.make_eval.items():
        results[split] = evaluate(eval_step, strategy, make)
        with writers[split].as_default():
            write_scalar("loss", results[split]["loss"], step)
            write_scalar("accuracy", results[split]["accuracy"], step)
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
) -> dict[str, Any]:
    """Trains what ``config`` describes in ``workdir``; ``model_fn`` replaces the registry model (searched widths)."""
    strategy = strategy or distribute_lib.strategy_from_config(config.distribute)
    data = make_data_source(
        config.data, seed=config.train.seed, eval_splits=tuple(config.train.eval_splits),
        drop_eval_remainder=not distribute_lib.supports_partial_batches(strategy),
        input_scaling=config.model.input_scaling,
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

