"""Gate training: task loss + FLOPs-aware regulariser, Dagger module and main network together.

The loop (one ``tf.function`` step, read top to bottom in :meth:`GateTrainer.train`):

1. the gate module turns the main network's current weights into one logit per filter;
2. gates (hard straight-through by default) multiply every group's channels after BN, before the
   activation (``Supernet`` mask mode), so the forward pass is the pruned network;
3. loss = cross-entropy + ``lambda * R(F(g) / F_target)`` (``regularizer.py``);
4. Adam updates the gate module; the main network trains jointly with SGD at a small learning rate
   (``main="joint"``, default; BN in training mode) or stays frozen: ``main="frozen"`` (BN in
   inference mode, with the pretrained moving statistics) or ``main="frozen_batch_stats"`` (BN
   normalises with each batch's statistics, as the pruned network will after its BN recalibration,
   and no moving statistic changes). Frozen, the gates rank filters against the pretrained
   network; jointly, the network also adapts to the gates while they are chosen.

Distribution: the step runs under a ``tf.distribute`` strategy (default: the current one) like the
standard loop. The main network and the gate module must be built under ``strategy.scope()`` (the
trainer builds its optimizers and step counter there); each replica runs ``strategy.run`` on its
share of the global batch, the cross-entropy is summed and divided by the *global* example count,
and the batch-independent terms (FLOPs regulariser, L2) go through ``scale_regularization_loss``,
so after the optimizers' all-reduce (sum) they count once, not once per replica: the gradients
equal those of one device on the whole batch. BN batch statistics are per replica, as in the
standard loop (use ``BatchNormalization(synchronized=True)`` for global ones).

Mixed precision: the main network runs in the dtype policy it was built (or saved) with, as the
standard loop built it; under ``mixed_float16`` both optimizers scale the loss (Keras's dynamic
``LossScaleOptimizer``), ``mixed_bfloat16`` needs no scaling. Losses, gates, the FLOPs regulariser
and the L2 penalty are float32.

Task: single-label data (softmax cross-entropy, top-1) or multi-label data (mean sigmoid
cross-entropy over the attributes, per-attribute accuracy), as ``task`` says or, by default, as
the labels' rank says ([batch] class ids or [batch, attributes] 0/1 vectors).

Everything around the step comes from ``cafe_tf.training.kernel``: checkpoints (main network, gate
module, both optimizers, step, random-seed states) in ``<workdir>/ckpt`` every ``checkpoint_every``
steps and at the end (``distribute.worker_root``: the other workers of a multi-worker cluster save
to their scratch folder, as saving is collective); the versioned ``history.json``; TensorBoard
scalars in ``<workdir>/tensorboard``; the progress display. A new trainer on the same workdir
resumes from the latest checkpoint, under any strategy. Given a function of the first step instead
of a fixed iterable, the input pipeline continues exactly where the checkpoint left it (the program
uses the standard loop's seeded per-epoch pipelines for that).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cafe_tf import distribute as distribute_lib
from cafe_tf import io
from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph
from cafe_tf.slim import Supernet
from cafe_tf.training import kernel
from cafe_tf.dagger.module import GATE_MODES, GateModule, gate_masks, gates_from_logits
from cafe_tf.dagger.regularizer import FlopsRegularizer

GATES_SCHEMA = "cafe_tf.dagger_gates"
GATES_VERSION = 2
MAIN_MODES = ("joint", "frozen", "frozen_batch_stats")
# Gate-training steps at which each group's mean logit is recorded (``GateTrainer.logit_trace``): how
# fast each group closes early on, where the allocation is decided.
LOGIT_TRACE_STEPS = (0, 4, 8, 16, 32, 64)


def temperature_at(step: int, total: int, start: float, end: float) -> float:
    """Geometric annealing from ``start`` to ``end`` over ``total`` steps."""
    if total <= 1:
        return end
    frac = min(max(step / (total - 1), 0.0), 1.0)
    return float(start * (end / start) ** frac)


def target_at(step: int, total: int, ramp: float, full_macs: float, target_macs: float) -> float:
    """The MACs target of step ``step``: from ``full_macs`` down to ``target_macs`` over the first
    ``ramp`` fraction of the ``total`` steps on the cubic schedule of gradual pruning (Zhu & Gupta,
    arXiv 1710.01878), then ``target_macs``; ``ramp=0``: ``target_macs`` from the first step."""
    ramp_steps = ramp * total
    if ramp_steps < 1:
        return float(target_macs)
    frac = min(max(step / ramp_steps, 0.0), 1.0)
    return float(target_macs + (full_macs - target_macs) * (1.0 - frac) ** 3)


def _check_built_in_scope(strategy: tf.distribute.Strategy, weights, what: str, kind: str) -> None:
    """Refuses weights created outside ``strategy.scope()`` (they would not be mirrored)."""
    for v in weights[:1]:
        if not strategy.extended.variable_created_in_scope(getattr(v, "value", v)):
            raise ValueError(f"{what} was not built under {type(strategy).__name__}.scope(); build (or load) the "
                             f"{kind} inside the scope")


class GateTrainer:
    """Trains a gate module (and, jointly, the main network) toward a MACs target, under a strategy."""

    def __init__(
        self,
        model: keras.Model,
        module: GateModule,
        regularizer: FlopsRegularizer,
        workdir: str,
        total_steps: int,
        gate_mode: str = "hard",
        temperature: tuple[float, float] = (1.0, 1.0),
        target_ramp: float = 0.0,
        min_open: Sequence[int] | None = None,
        gate_lr: float = 1e-3,
        main: str = "joint",
        main_optimizer: keras.optimizers.Optimizer | None = None,
        weight_decay: float = 5e-4,
        checkpoint_every: int = 200,
        max_to_keep: int = 2,
        strategy: tf.distribute.Strategy | None = None,
        task: str | None = None,
    ):
        """``main_optimizer``: the main network's optimizer in joint mode (default SGD, lr 1e-3, momentum 0.9;
        the program builds it with ``cafe_tf.training.standard.make_optimizer``). ``target_ramp``: the fraction of
        the steps over which the regulariser's target falls from the full MACs to its target (:func:`target_at`;
        0 = the target from the first step). ``min_open``: per group (``module.group_ids`` order), how many
        of its highest-logit gates stay open (the exact-target floor, ``prune.group_floor``; default none).
        ``weight_decay``: L2 on the main network's kernels in the loss, the convention of
        ``cafe_tf.training.standard``. ``strategy``
        (default: the current one): ``model``, ``module`` and ``main_optimizer`` must be built in its scope.
        ``task``: "classification" or "multilabel"; None (default) reads it from the labels' rank."""
        if gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode {gate_mode!r} is not one of {GATE_MODES}")
        if main not in MAIN_MODES:
            raise ValueError(f"main {main!r} is not one of {MAIN_MODES} (joint: SGD on the main network; frozen: "
                             "moving BN statistics; frozen_batch_stats: batch BN statistics)")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if min(temperature) <= 0:
            raise ValueError(f"temperatures must be > 0, got {temperature}")
        if not 0 <= target_ramp <= 1:
            raise ValueError(f"target_ramp must be a fraction of the steps in [0, 1], got {target_ramp!r}")
        self.strategy = strategy or tf.distribute.get_strategy()
        _check_built_in_scope(self.strategy, model.weights, f"the main network {model.name!r}", "model")
        _check_built_in_scope(self.strategy, module.weights, f"the gate module {module.name!r}", "gate module")
        if main_optimizer is not None and getattr(main_optimizer, "_distribution_strategy",
                                                  self.strategy) is not self.strategy:
            raise ValueError(f"main_optimizer was not created under {type(self.strategy).__name__}.scope(); "
                             "create it inside the scope")
        self.model, self.module, self.regularizer = model, module, regularizer
        self.graph: ChannelGraph = module.graph
        self.supernet = Supernet(model, self.graph)
        self.workdir, self.total_steps = workdir, int(total_steps)
        self.gate_mode, self.temperature, self.main = gate_mode, tuple(map(float, temperature)), main
        self.checkpoint_every = int(checkpoint_every)
        # Per-group mean logits at LOGIT_TRACE_STEPS (filled by train(), kept across a resume).
        self.logit_trace: list[dict[str, Any]] = []
        self.target_ramp = float(target_ramp)
        if min_open is not None:
            min_open = [int(k) for k in min_open]
            if len(min_open) != len(module.group_ids) or any(not 0 <= k <= n for k, n in zip(min_open,
                                                                                        module.group_sizes)):
                raise ValueError(f"min_open={min_open} must give one count in [0, size] per group; sizes "
                                 f"{list(module.group_sizes)}")
        self.min_open = min_open
        kernel.check_task(task)
        self.task = task
        self.chief = distribute_lib.is_chief(self.strategy)
        self.policy = kernel.policy_of(model)
        self.main_vars = list(model.trainable_variables) if main == "joint" else []
        # Kernels only (not biases, not BN): the L2 convention of cafe_tf.training.standard.
        self.decayed = kernel.decayed(self.main_vars)
        self.weight_decay = float(weight_decay)
        with self.strategy.scope():  # optimizer slots and the step are mirrored like the weights
            self.gate_opt = kernel.loss_scaled(keras.optimizers.Adam(gate_lr), self.policy)
            self.gate_opt.build(module.trainable_variables)
            self.main_opt = kernel.loss_scaled(main_optimizer or keras.optimizers.SGD(1e-3, momentum=0.9),
                                               self.policy)
            if self.main_vars:
                self.main_opt.build(self.main_vars)  # slots exist before restore, so they are restored too
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.checkpointer = kernel.Checkpointer(
            self.strategy, workdir, "ckpt", max_to_keep=max_to_keep, rng_models=[model, module], model=model,
            module=module, gate_opt=self.gate_opt, main_opt=self.main_opt, step=self.step)
        self.manager = self.checkpointer.manager
        self._step_fn = tf.function(self._distributed_step)

    # ----------------------------------------------------------------------------------------
    def restore(self) -> int:
        """Restores the latest checkpoint in the workdir, if any; returns the step reached."""
        latest = self.checkpointer.restore()
        if latest:
            logging.info("gate training: resumed from %s at step %d", latest, int(self.step.numpy()))
        return int(self.step.numpy())

    def task_of(self, labels: tf.Tensor) -> tuple[str, bool]:
        """(task, whether the model outputs probabilities) for a batch's ``labels`` (at trace time)."""
        task = self.task or kernel.label_task(labels)
        kernel.check_labels(task, labels)
        return task, kernel.outputs_probabilities(self.model, task)

    def per_example_loss(self, outputs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """Cross-entropy per example (float32) of the task, from logits or a probability head."""
        task, probabilities = self.task_of(labels)
        return kernel.per_example_loss(task, labels, outputs, from_logits=not probabilities)

    def _replica_step(self, images, labels, temperature, target_macs):
        gate_vars = self.module.trainable_variables
        ctx = tf.distribute.get_replica_context()
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        # The global batch's size, so each replica's share of the mean is exact (also for an uneven batch).
        global_count = tf.stop_gradient(ctx.all_reduce(tf.distribute.ReduceOp.SUM, count))
        # Persistent only when two loss scales need two gradients of it (float16 with both optimizers).
        with tf.GradientTape(persistent=self.policy == "mixed_float16" and bool(self.main_vars)) as tape:
            gates = gates_from_logits(self.module.logits(), self.gate_mode, temperature, self.min_open)
            masks, widths = gate_masks(self.graph, self.module.group_ids, gates)
            if self.main == "frozen_batch_stats":
                outputs = self.supernet(images, masks=masks, training=False, bn_stats="batch")
            else:
                outputs = self.supernet(images, masks=masks, training=self.main == "joint")
            per_example = self.per_example_loss(outputs, labels)
            task_sum = tf.reduce_sum(per_example)
            reg, macs = self.regularizer(widths, target_macs)
            penalty = reg + kernel.l2_penalty(self.decayed, self.weight_decay)
            # Every replica adds the batch-independent penalty: scaled by 1/replicas, it counts once in the sum.
            loss = task_sum / global_count + tf.nn.scale_regularization_loss(penalty)
            # Each optimizer scales the loss its own way (identity unless float16 needs loss scaling).
            scaled_gate = self.gate_opt.scale_loss(loss)
            scaled_main = self.main_opt.scale_loss(loss) if self.main_vars else None
        # The optimizers all-reduce (sum) the gradients across replicas, unscale them and apply them.
        if scaled_main is None or scaled_main is scaled_gate:
            grads = tape.gradient(scaled_gate, list(gate_vars) + self.main_vars)
            gate_grads, main_grads = grads[: len(gate_vars)], grads[len(gate_vars):]
        else:  # two loss scales: two gradients of one tape
            gate_grads = tape.gradient(scaled_gate, gate_vars)
            main_grads = tape.gradient(scaled_main, self.main_vars)
        self.gate_opt.apply_gradients(zip(gate_grads, gate_vars))
        if self.main_vars:
            self.main_opt.apply_gradients(zip(main_grads, self.main_vars))
        task, probabilities = self.task_of(labels)
        correct = kernel.per_example_accuracy(task, labels, tf.cast(outputs, tf.float32), not probabilities)
        open_gates = tf.add_n([tf.reduce_sum(tf.cast(g > 0.5, tf.float32)) for g in gates])
        return {"task_sum": task_sum, "correct": tf.reduce_sum(correct), "count": count,
                "penalty": penalty, "reg": reg, "macs": macs, "open_gates": open_gates}

    def _distributed_step(self, images, labels, temperature, target_macs):
        out = self.strategy.run(self._replica_step, args=(images, labels, temperature, target_macs))
        total = lambda t: self.strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None)  # noqa: E731
        first = lambda t: self.strategy.experimental_local_results(t)[0]  # noqa: E731 - equal on every replica
        count = total(out["count"])
        task = total(out["task_sum"]) / count
        return {"loss": task + first(out["penalty"]), "task": task, "reg": first(out["reg"]),
                "macs": first(out["macs"]), "accuracy": total(out["correct"]) / count,
                "open_gates": first(out["open_gates"])}

    def distribute(self, batches: Iterable) -> Iterable:
        """``batches`` as the step takes them: a ``tf.data.Dataset`` of global batches through
        ``experimental_distribute_dataset``; other global batches split evenly over the replicas;
        batches already distributed (``distribute_datasets_from_function``) as they are."""
        if self.strategy.num_replicas_in_sync == 1:
            return batches
        if isinstance(batches, tf.data.Dataset):
            return self.strategy.experimental_distribute_dataset(batches)
        if isinstance(batches, (tf.distribute.DistributedDataset, tf.distribute.DistributedIterator)):
            return batches
        return (self._split(b) for b in batches)

    def _split(self, batch):
        if any(isinstance(t, tf.distribute.DistributedValues) for t in tf.nest.flatten(batch)):
            return batch
        batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
        n = self.strategy.num_replicas_in_sync
        size = int(tf.nest.flatten(batch)[0].shape[0])
        if size % n:
            raise ValueError(f"a global batch of {size} examples does not split over {n} replicas; "
                             f"use a multiple of {n}")
        per = size // n

        def share(ctx: tf.distribute.ValueContext):
            i = ctx.replica_id_in_sync_group
            return tf.nest.map_structure(lambda t: t[i * per:(i + 1) * per], batch)

        return self.strategy.experimental_distribute_values_from_function(share)

    # ----------------------------------------------------------------------------------------
    def train(self, batches: Iterable | Callable[[int], Iterable], log_every: int = 50,
              on_log: Callable[[dict[str, float]], None] | None = None, progress: bool = True) -> list[dict]:
        """Runs the remaining steps (resuming if a checkpoint exists); returns the logged history.

        ``batches``: ``(images, labels)`` global batches for at least the remaining steps (a repeated
        ``tf.data.Dataset``, or batches already distributed by the strategy), or a function of the
        first step to run that returns them, so a resumed run can continue the data exactly where
        the checkpoint left it. See :meth:`distribute` for how they reach the replicas.
        """
        start = self.restore()
        history = kernel.History(self.workdir, write=self.chief)
        history.load(start)
        # Its own file (logit_trace/history.json), saved with each checkpoint like the history.
        trace = kernel.History(os.path.join(self.workdir, "logit_trace"), write=self.chief)
        self.logit_trace = trace.load(start)
        if start == 0 and not trace.entries:
            trace.append(self.trace_record(0), save=False)
        if start >= self.total_steps:
            return history.entries
        if callable(batches):
            batches = batches(start)
        progress = kernel.Progress(1, self.total_steps, log_every, enabled=progress and self.chief,
                                   what="gate training")
        progress.start_epoch(0, start)
        writer = kernel.summary_writer(os.path.join(self.workdir, "tensorboard"), self.chief)
        full_macs = float(self.regularizer.cost.macs())
        sums: dict[str, float] = {}
        count, t0, step = 0, time.time(), start
        iterator = iter(self.distribute(batches))
        for step in range(start, self.total_steps):
            try:
                images, labels = next(iterator)
            except StopIteration:
                raise ValueError(
                    f"the input pipeline ran out after {step - start} batches; gate training needs "
                    f"{self.total_steps - start} more (repeat the dataset)"
                ) from None
            t = temperature_at(step, self.total_steps, *self.temperature)
            target = target_at(step, self.total_steps, self.target_ramp, full_macs, self.regularizer.target_macs)
            out = self._step_fn(images, labels, tf.constant(t, tf.float32), tf.constant(target, tf.float32))
            self.step.assign_add(1)
            if step + 1 in LOGIT_TRACE_STEPS:
                trace.append(self.trace_record(step + 1), save=False)
            values = {k: float(v) for k, v in out.items()}
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"gate training diverged at step {step}: loss {values['loss']}")
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            progress.update(step + 1, {"loss": values["loss"], "task": values["task"], "reg": values["reg"],
                                       "acc": values["accuracy"], "macs_ratio": values["macs"] / full_macs,
                                       "open": values["open_gates"]})
            last = step + 1 == self.total_steps
            if (step + 1) % log_every == 0 or last:
                record = {k: v / count for k, v in sums.items()}
                record.update(step=step + 1, temperature=t, macs_ratio=values["macs"] / full_macs,
                              target_ratio=target / full_macs,
                              macs=values["macs"], open_gates=values["open_gates"],
                              seconds=time.time() - t0)
                history.append(record, save=False)  # written with the next checkpoint, so the two agree
                with writer.as_default():
                    for k, v in record.items():
                        kernel.write_scalar(f"gates/{k}", v, step + 1)
                if on_log is not None:
                    on_log(record)
                sums, count = {}, 0
            if (step + 1) % self.checkpoint_every == 0 or last:
                self.checkpointer.save(step + 1)
                history.save()
                trace.save()
        writer.flush()
        return history.entries

    # ----------------------------------------------------------------------------------------
    def logits(self) -> list[np.ndarray]:
        """The current gate logits, one numpy vector per prunable group."""
        return [l.numpy() for l in self.module.logits()]

    def trace_record(self, step: int) -> dict[str, Any]:
        """``{"step": step, "mean_logit": {group name: mean gate logit}}`` at the current weights."""
        names = [self.graph.groups[gid].name for gid in self.module.group_ids]
        return {"step": int(step), "mean_logit": {n: float(np.mean(l)) for n, l in zip(names, self.logits())}}

    def evaluate(self, batches: Iterable, max_batches: int | None = None) -> float:
        """Accuracy of the hard-gated network (BN in inference mode) on ``batches``, as the task defines it."""
        masks, _ = gate_masks(self.graph, self.module.group_ids,
                              gates_from_logits(self.module.logits(), "hard", min_open=self.min_open))
        return accuracy(lambda x: self.supernet(x, masks=masks, training=False), batches, max_batches, self.task)


def accuracy(predict: Callable[[tf.Tensor], tf.Tensor], batches: Iterable, max_batches: int | None = None,
             task: str | None = None) -> float:
    """Accuracy of ``predict`` (images -> scores) over ``(images, labels)`` batches (:func:`kernel.evaluate`).

    Top-1 for class ids, per-attribute accuracy for multi-label 0/1 vectors (``task`` None: read from the labels).
    """
    return kernel.evaluate(kernel.make_eval_step(predict, task), batches, max_batches=max_batches)["accuracy"]


# -------------------------------------------------------------------------------------------------
# gates.json: the gate stage's artifact


def write_gates(path: str, graph: ChannelGraph, group_ids: list[int], logits: list[np.ndarray],
                extra: Mapping[str, Any]) -> None:
    """Writes the trained gate logits (per group, by name) with the run's settings and history."""
    cost = CostModel(graph)
    open_sel = {gid: np.flatnonzero(np.asarray(l) > 0) for gid, l in zip(group_ids, logits)}
    widths = cost.full_widths.copy()
    for gid, idx in open_sel.items():
        widths[gid] = len(idx)
    io.write_artifact(path, GATES_SCHEMA, GATES_VERSION, {
        "groups": [{"name": graph.groups[gid].name, "size": graph.groups[gid].size,
                    "logits": [float(x) for x in l]} for gid, l in zip(group_ids, logits)],
        "open_gate_macs": int(cost.macs(widths)),
        "full_macs": int(cost.macs()),
        **dict(extra),
    })


def _validate_gates(obj: dict[str, Any]) -> None:
    if not isinstance(obj["groups"], list) or not obj["groups"]:
        raise ValueError("'groups' must be a non-empty list")
    for i, g in enumerate(obj["groups"]):
        if not {"name", "size", "logits"} <= set(g):
            raise ValueError(f"groups[{i}] needs name, size and logits")
        if len(g["logits"]) != g["size"]:
            raise ValueError(f"groups[{i}] ({g['name']!r}) has {len(g['logits'])} logits for {g['size']} channels")


def read_gates(path: str, graph: ChannelGraph | None = None) -> dict[str, Any]:
    """Reads ``gates.json``; with ``graph``, adds ``logits_by_id`` ({group id: logits}) after checking the groups."""
    obj = io.read_artifact(path, GATES_SCHEMA, (GATES_VERSION,), ("groups",), _validate_gates,
                           writer="the Dagger gates stage")
    if graph is not None:
        by_id = {}
        for g in obj["groups"]:
            if g["name"] not in graph.group_by_name or graph.group_by_name[g["name"]].size != g["size"]:
                raise io.ArtifactError(
                    f"{path!r} holds gates for group {g['name']!r} ({g['size']} channels), which the model lacks; "
                    "it was written for another model"
                )
            by_id[graph.group_by_name[g["name"]].id] = np.asarray(g["logits"], np.float64)
        obj["logits_by_id"] = by_id
    return obj
