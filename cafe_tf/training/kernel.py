"""The training kernel the three loops share: everything but their step functions.

The standard loop (``train/standard.py``), min-min supernet training (``train/supernet.py``) and
Dagger's gate training (``dagger/train.py``) each keep only their own step; what they have in
common lives here, once:

* **Task-aware loss and metrics**: softmax cross-entropy and top-1 for classification, mean sigmoid
  cross-entropy and per-attribute accuracy for multi-label data (CelebA's 40 attributes), from
  logits or from a probability head (:func:`per_example_loss`, :func:`per_example_accuracy`).
* **Evaluation**: :func:`make_eval_step` + :func:`evaluate`, for a plain model under a strategy, a
  supernet width or a gated network alike; the search scores widths with it too.
* **The L2 penalty** on conv / dense kernels, in float32 whatever the compute dtype
  (:func:`l2_penalty`).
* **Mixed precision**: the model is built under the policy, float16 gets Keras's dynamic
  ``LossScaleOptimizer`` (:func:`build_model`, :func:`loss_scaled`).
* **Checkpoints**: one key scheme (``rng`` holds Keras's random-seed states, which
  ``tf.train.Checkpoint(model=...)`` does not reach), in ``distribute.worker_root`` (the chief's
  workdir, a scratch copy on the other workers), a checkpoint of another loop refused by name
  (:class:`Checkpointer`).
* **History** (``history.json``, versioned) and **progress** (a Progbar on a terminal, log lines
  otherwise) and TensorBoard scalars.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from cafe_tf import distribute as distribute_lib
from cafe_tf import io
from cafe_tf.config import MIXED_PRECISION, ConfigError

HISTORY_SCHEMA = "train_history"
HISTORY_VERSION = 2
RNG_KEY = "rng"
TASKS = ("classification", "multilabel")


# --------------------------------------------------------------------------------------------
# Task-aware loss and metrics


def label_task(labels) -> str:
    """The task a batch's labels encode: "multilabel" for [batch, attributes] 0/1 vectors, else "classification"."""
    rank = tf.TensorShape(labels.shape).rank
    if rank is None:
        raise ValueError("labels of unknown rank do not tell the task; pass task='classification' or 'multilabel'")
    return "multilabel" if rank == 2 else "classification"


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


def per_example_loss(task: str, labels: tf.Tensor, logits: tf.Tensor, num_classes: int | None = None,
                     smoothing: float = 0.0, from_logits: bool = True) -> tf.Tensor:
    """Cross-entropy per example (float32): softmax for classification, mean sigmoid over labels for multilabel.

    ``from_logits=False``: ``logits`` are the probabilities of a softmax (sigmoid) head instead.
    ``num_classes`` defaults to the outputs' last dimension.
    """
    logits = _logits(task, logits, from_logits)
    if task == "multilabel":
        targets = tf.cast(labels, tf.float32) * (1.0 - smoothing) + 0.5 * smoothing
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=-1)
    num_classes = num_classes or logits.shape[-1]
    targets = tf.one_hot(tf.reshape(labels, [-1]), num_classes) * (1.0 - smoothing) + smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def distillation_loss(task: str, teacher_outputs: tf.Tensor, outputs: tf.Tensor, temperature: float = 1.0,
                      teacher_from_logits: bool = True, from_logits: bool = True) -> tf.Tensor:
    """Per example ``T^2 KL(teacher || model)`` of the outputs softened at temperature ``T`` (Hinton et al. 2015):
    softmax over the classes, or the mean binary KL over the labels of a multi-label task. 0 when they agree."""
    t = _logits(task, teacher_outputs, teacher_from_logits) / temperature
    s = _logits(task, outputs, from_logits) / temperature
    if task == "multilabel":
        kl = (tf.sigmoid(t) * (tf.math.log_sigmoid(t) - tf.math.log_sigmoid(s))
              + tf.sigmoid(-t) * (tf.math.log_sigmoid(-t) - tf.math.log_sigmoid(-s)))
        kl = tf.reduce_mean(kl, axis=-1)
    else:
        log_t = tf.nn.log_softmax(t, axis=-1)
        kl = tf.reduce_sum(tf.exp(log_t) * (log_t - tf.nn.log_softmax(s, axis=-1)), axis=-1)
    return temperature * temperature * kl


def distilled_loss(per_example: tf.Tensor, task: str, teacher_outputs: tf.Tensor | None, outputs: tf.Tensor,
                   weight: float, temperature: float, teacher_from_logits: bool = True,
                   from_logits: bool = True) -> tf.Tensor:
    """``(1 - weight) per_example + weight distillation_loss(...)``; ``per_example`` itself when ``weight`` is 0."""
    if not weight:
        return per_example
    if teacher_outputs is None:
        raise ValueError(f"a distillation weight of {weight} needs the teacher's outputs; got none")
    kd = distillation_loss(task, teacher_outputs, outputs, temperature, teacher_from_logits, from_logits)
    return (1.0 - weight) * per_example + weight * kd


def per_example_accuracy(task: str, labels: tf.Tensor, logits: tf.Tensor, from_logits: bool = True) -> tf.Tensor:
    """1/0 per example (classification) or the fraction of correct labels (multilabel); see :func:`per_example_loss`."""
    if task == "multilabel":
        hits = tf.equal(tf.cast(logits > (0 if from_logits else 0.5), tf.int64), tf.cast(labels, tf.int64))
        return tf.reduce_mean(tf.cast(hits, tf.float32), axis=-1)
    return tf.cast(tf.equal(tf.argmax(logits, axis=-1), tf.cast(tf.reshape(labels, [-1]), tf.int64)), tf.float32)


def batch_sums(task: str, labels: tf.Tensor, outputs: tf.Tensor, from_logits: bool = True) -> tuple[tf.Tensor, ...]:
    """(summed loss, summed accuracy, example count) of one batch, all float32: what :func:`evaluate` adds up."""
    loss = per_example_loss(task, labels, outputs, from_logits=from_logits)
    correct = per_example_accuracy(task, labels, tf.cast(outputs, tf.float32), from_logits)
    return tf.reduce_sum(loss), tf.reduce_sum(correct), tf.cast(tf.shape(labels)[0], tf.float32)


def check_labels(task: str, labels) -> None:
    """Raises ValueError when ``labels``' rank does not fit ``task`` (class ids [batch], 0/1 vectors [batch, n])."""
    rank = tf.TensorShape(labels.shape).rank
    if rank is None:
        return  # known only when the step runs; the loss then fails on its own
    if task == "multilabel" and rank != 2:
        raise ValueError(f"task='multilabel' needs labels of shape [batch, attributes] (0/1 vectors); got shape "
                         f"{list(labels.shape)}: class ids are task='classification'")
    if task == "classification" and rank != 1:
        raise ValueError(f"task='classification' needs labels of shape [batch] (class ids); got shape "
                         f"{list(labels.shape)}: [batch, attributes] 0/1 vectors are task='multilabel'")


def check_task(task: str | None) -> None:
    """Raises ValueError unless ``task`` is None (read from the labels) or one of :data:`TASKS`."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task={task!r} is invalid; valid values: {list(TASKS)} (or None: read from the labels)")


# --------------------------------------------------------------------------------------------
# Evaluation


def make_eval_step(forward: Callable[..., tf.Tensor], task: str | None = None, from_logits: bool = True,
                   strategy: tf.distribute.Strategy | None = None) -> Callable:
    """A traced ``step(batch, *args) -> (loss sum, accuracy sum, count)`` of ``forward(images, *args)``.

    ``task`` None reads it from the labels' rank at trace time (:func:`label_task`). With ``strategy``
    the batch is a distributed one and the sums are reduced over replicas. Build it once: every new
    step traces again; ``reduce_retracing`` lets one trace serve every width of a supernet.
    """
    check_task(task)

    def replica_step(images, labels, *args):
        kind = task or label_task(labels)
        check_labels(kind, labels)
        return batch_sums(kind, labels, forward(images, *args), from_logits)

    @tf.function(reduce_retracing=True)
    def step(batch, *args):
        images, labels = batch
        if strategy is None:
            return replica_step(images, labels, *args)
        per_replica = strategy.run(replica_step, args=(images, labels, *args))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in per_replica]

    return step


def evaluate(eval_step: Callable, batches: Iterable, *args, max_batches: int | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``eval_step`` (:func:`make_eval_step`) over ``batches`` (extra ``args`` passed on)."""
    loss = correct = count = 0.0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        l, c, n = (float(t) for t in eval_step(batch, *args))
        loss, correct, count = loss + l, correct + c, count + n
    if not count:
        raise ValueError("the evaluation batches held no examples; check the eval split and max_eval_examples")
    return {"loss": loss / count, "accuracy": correct / count, "examples": int(count)}


def eval_due(epoch: int, every: int, epochs: int) -> bool:
    """Whether the loop evaluates after 1-based ``epoch``: each ``every`` epochs (0 = none but the last), and always the last."""
    return epoch == epochs or (every > 0 and epoch % every == 0)


# --------------------------------------------------------------------------------------------
# Weight decay


def is_decayed(variable) -> bool:
    """Whether weight decay applies to ``variable``: conv / dense / depthwise kernels, not biases or BatchNorm."""
    return getattr(variable, "path", variable.name).split("/")[-1].split(":")[0].endswith("kernel")


def decayed(variables: Sequence) -> list:
    """The variables of ``variables`` that weight decay applies to (:func:`is_decayed`)."""
    return [v for v in variables if is_decayed(v)]


def l2_penalty(variables: Sequence, weight_decay: float) -> tf.Tensor:
    """``0.5 * weight_decay * sum ||W||^2`` in float32 (its gradient is the classic coupled decay ``wd * W``).

    float32 whatever the variables' dtype, so a half-precision sum of squares cannot overflow.
    """
    if not weight_decay or not variables:
        return tf.constant(0.0, tf.float32)
    return 0.5 * float(weight_decay) * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])


# --------------------------------------------------------------------------------------------
# Mixed precision


def check_mixed_precision(policy: str, key: str = "config.train.mixed_precision") -> None:
    """Raises ConfigError unless ``policy`` is one of :data:`cafe_tf.config.MIXED_PRECISION`."""
    if policy not in MIXED_PRECISION:
        raise ConfigError(f"{key}={policy!r} is invalid; valid values: {list(MIXED_PRECISION)}")


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[None]:
    """Keras's global dtype policy set to ``policy`` ("none": left alone) inside the block, restored after it."""
    check_mixed_precision(policy)
    previous = keras.mixed_precision.dtype_policy()
    if policy != "none":
        keras.mixed_precision.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def build_model(model: keras.Model | Callable[[], keras.Model], strategy: tf.distribute.Strategy,
                policy: str = "none", key: str = "config.train.mixed_precision") -> keras.Model:
    """``model`` itself (checked), or ``model()`` built under ``strategy.scope()`` and the dtype ``policy``."""
    if isinstance(model, keras.Model):
        if policy != "none" and model.dtype_policy.name != policy:
            raise ConfigError(
                f"{key}={policy!r} but the given model was built with dtype policy "
                f"{model.dtype_policy.name!r}; pass a model factory instead, so the loop builds it under the policy"
            )
        if strategy is not tf.distribute.get_strategy() and model.weights:
            v = model.weights[0]
            if not strategy.extended.variable_created_in_scope(getattr(v, "value", v)):
                raise ValueError(
                    f"the given model was not built under {type(strategy).__name__}.scope(); pass a model "
                    "factory instead (the loop calls it inside the scope)"
                )
        return model
    with dtype_policy(policy), strategy.scope():
        built = model()
    if not isinstance(built, keras.Model):
        raise TypeError(f"the model factory must return a keras.Model, got {type(built).__name__}")
    return built


def loss_scaled(optimizer: keras.optimizers.Optimizer, policy: str) -> keras.optimizers.Optimizer:
    """``optimizer`` wrapped in Keras's dynamic ``LossScaleOptimizer`` when ``policy`` computes in float16.

    float16 gradients underflow without loss scaling; bfloat16 has float32's exponent range and needs none.
    """
    if policy == "mixed_float16" and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def policy_of(model: keras.Model) -> str:
    """The mixed-precision policy ``model``'s layers compute in (``mixed_float16`` / ``mixed_bfloat16``), else "none".

    Read from the layers: a model saved under a policy and loaded again keeps it in its layers.
    """
    for layer in model.layers:
        name = layer.dtype_policy.name
        if name in MIXED_PRECISION:
            return name
    return "none"


# --------------------------------------------------------------------------------------------
# Checkpoints


class CheckpointMismatchError(ValueError):
    """A checkpoint in the workdir was written by another loop, model or optimizer; the message says which."""


def rng_states(models: Iterable[keras.Model]) -> list:
    """Keras's random-seed state variables (dropout and other random layers) of ``models``.

    They are not TF trackables, so ``tf.train.Checkpoint(model=...)`` does not save them; without
    them a resumed run would draw other dropout masks than an unbroken one.
    """
    return [v.value for m in models for v in m.variables if v.path.endswith("seed_generator_state")]


class Checkpointer:
    """Saves and restores one loop's state under one key scheme in ``worker_root(strategy, workdir)/folder``.

    ``objects`` are the loop's trackables by key (``model``, ``optimizer``, ``step``, ...);
    ``rng_models`` adds their random-seed states under ``rng``. ``run_shape`` (steps per epoch,
    global batch), when given, is saved too and checked on restore: resuming under another data or
    batch setting would not continue the same run.
    """

    def __init__(self, strategy: tf.distribute.Strategy, workdir: str, folder: str, *, max_to_keep: int = 3,
                 rng_models: Sequence[keras.Model] = (), run_shape: tuple[int, int] | None = None, **objects):
        self.strategy = strategy
        self.root = distribute_lib.worker_root(strategy, os.path.abspath(workdir))
        self.directory = os.path.join(self.root, folder)
        self.run_shape_value = run_shape
        if run_shape is not None:
            with strategy.scope():
                objects["run_shape"] = tf.Variable(list(run_shape), dtype=tf.int64, trainable=False, name="run_shape",
                                                   aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.objects = dict(objects)
        self.rng = rng_states(rng_models)
        if self.rng:
            self.objects[RNG_KEY] = self.rng
        self.checkpoint = tf.train.Checkpoint(**self.objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=max_to_keep)

    @property
    def latest(self) -> str | None:
        """The newest checkpoint's path prefix, or None."""
        return self.manager.latest_checkpoint

    def restore(self) -> str | None:
        """Restores the newest checkpoint (None when there is none).

        Raises CheckpointMismatchError when it lacks a part of this loop's state (another loop's
        checkpoint) or does not match the model / optimizer, and ConfigError when it was written
        under another run shape; each names the checkpoint and what to do.
        """
        latest = self.latest
        if latest is None:
            return None
        saved = saved_keys(latest)
        objects = dict(self.objects)
        missing = sorted(k for k in objects if k not in saved and _has_variables(objects[k]))
        if missing:
            raise CheckpointMismatchError(
                f"checkpoint {latest} lacks {missing} (it holds {sorted(saved - {'save_counter'})}): it was written "
                f"by another training loop or model; use a new --workdir or remove {self.directory}")
        try:
            tf.train.Checkpoint(**objects).restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise CheckpointMismatchError(
                f"checkpoint {latest} does not match this model / optimizer ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); use a new --workdir or remove {self.directory}"
            ) from None
        if self.run_shape_value is not None:
            saved_spe, saved_batch = (int(v) for v in self.objects["run_shape"].numpy())
            spe, batch = self.run_shape_value
            if (saved_spe, saved_batch) != (spe, batch):
                raise ConfigError(
                    f"checkpoint {latest} was written with {saved_spe} steps/epoch at global batch {saved_batch}; "
                    f"this run has {spe} steps/epoch at batch {batch}. Resume with the same data and batch settings, "
                    "or use a new --workdir")
        return latest

    def save(self, step: int) -> str:
        """Writes checkpoint number ``step`` (every worker must call it: saving is collective); returns its path."""
        return self.manager.save(checkpoint_number=int(step))

    def discard_scratch(self) -> None:
        """Removes a non-chief worker's scratch copy once the run is over (the chief keeps its checkpoints)."""
        if not distribute_lib.is_chief(self.strategy):
            shutil.rmtree(self.root, ignore_errors=True)


def saved_keys(path: str) -> set[str]:
    """The top-level keys of the checkpoint ``path`` (``model``, ``optimizer``, ...), from its object graph.

    Read from the graph, not from the variable names: a variable is stored under the first path that
    reaches it, which may run through another key (the optimizer tracks the model's variables).
    """
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return {child.local_name for child in graph.nodes[0].children}


def _has_variables(obj: Any) -> bool:
    return not isinstance(obj, (list, tuple)) or bool(obj)


# --------------------------------------------------------------------------------------------
# History, TensorBoard, progress


class History:
    """The logged records of a run (each with its ``step``), kept in a versioned ``history.json``.

    ``load(step)`` drops the records after a resumed checkpoint's step (they are logged again).
    """

    def __init__(self, workdir: str, write: bool = True):
        self.path = os.path.join(workdir, "history.json")
        self.write_enabled = write
        self.entries: list[dict[str, Any]] = []

    def load(self, step: int) -> list[dict[str, Any]]:
        """The stored records up to ``step`` (none without a file); they become this history's entries."""
        entries: list = []
        if os.path.isfile(self.path):
            entries = io.read_artifact(self.path, HISTORY_SCHEMA, (HISTORY_VERSION,), ("entries",),
                                       writer="the training stage")["entries"]
        self.entries = [e for e in entries if e.get("step", 0) <= step]
        return self.entries

    def append(self, record: Mapping[str, Any], save: bool = True) -> None:
        """Adds ``record``; ``save`` writes the file (atomically, on the chief only)."""
        self.entries.append(dict(record))
        if save:
            self.save()

    def save(self) -> None:
        """Writes ``history.json`` atomically (the chief only)."""
        if self.write_enabled:
            io.write_artifact(self.path, HISTORY_SCHEMA, HISTORY_VERSION, {"entries": self.entries})


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


def summary_writer(folder: str, chief: bool):
    """A TensorBoard writer for ``folder`` on the chief; a no-op writer on the other workers."""
    return tf.summary.create_file_writer(folder) if chief else tf.summary.create_noop_writer()


class Progress:
    """A Progbar (steps/epoch, the logged values, ETA) on a terminal; a log line every ``log_every`` steps otherwise."""

    def __init__(self, epochs: int, steps_per_epoch: int, log_every: int, enabled: bool, what: str = "epoch"):
        self.epochs, self.spe, self.log_every, self.enabled, self.what = epochs, steps_per_epoch, log_every, enabled, what
        self.tty = enabled and sys.stdout.isatty()
        self.bar: keras.utils.Progbar | None = None

    def start_epoch(self, epoch: int, first_step: int) -> None:
        """Before the first step of ``epoch`` (0-based) to run, ``first_step`` steps of it already done."""
        self.epoch, self.first_step, self.t0 = epoch, first_step, time.time()
        if self.tty:
            print(f"{self.what.capitalize()} {epoch + 1}/{self.epochs}", flush=True)
            self.bar = keras.utils.Progbar(self.spe, unit_name="step")
            if first_step:
                self.bar.update(first_step)

    def update(self, step_in_epoch: int, logs: Mapping[str, float]) -> None:
        """After step ``step_in_epoch`` (1-based) with the values to show (``loss``, ``acc``, ``lr``, ...)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.stateful_metrics = set(logs)  # shown as given: the running means are the caller's
            self.bar.update(step_in_epoch, list(logs.items()))
        elif step_in_epoch % self.log_every == 0 or step_in_epoch == self.spe:
            done = step_in_epoch - self.first_step
            rate = done / max(time.time() - self.t0, 1e-9)
            eta = (self.spe - step_in_epoch) / max(rate, 1e-9)
            values = " ".join(f"{k} {v:.4g}" for k, v in logs.items())
            logging.info("%s %d/%d step %d/%d %s (%.1f steps/s, %s ETA %s)", self.what, self.epoch + 1, self.epochs,
                         step_in_epoch, self.spe, values, rate, self.what, _duration(eta))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"
