"""Min-min training of a CafeNet supernet: stochastic widths, locally free channels, tf.distribute.

One step (read :meth:`MinMinTrainer.train_step` top to bottom):

1. **Sample** (on the host, numpy; a pure function of ``(seed, step)`` so a resumed run draws the
   same widths): one width per prunable group, uniformly over its bins (``cafe_tf.space``), for
   each of ``num_sampled`` slots; with the **sandwich rule** two more slots, the max net (one
   arrangement: all channels) and the min net (1 bin per group, free bins included). For every
   slot, ``num_candidates`` (K) free-channel arrangements are drawn inside the local zones. The
   slots reach the traced step as fixed-shape padded index tensors, so one trace serves every width.
2. **Select** (the first "min"): each candidate's cross-entropy on the batch (the standard loop's
   loss for the data's task: softmax, or mean sigmoid over the attributes of a multi-label set
   such as CelebA's 40), from a forward pass without a gradient tape, summed over replicas so
   every replica picks the same candidate.
   BN during selection uses **the batch's own statistics and updates no moving statistics** (the
   same normalisation the training pass then uses, so the loss compared is the loss trained; the
   other option, ``selection_bn="moving"``, normalises with the shared moving statistics,
   which are a blend over widths). Dropout is off during selection, so the comparison is
   deterministic. With ``r = 0`` (fixed sharing) or K = 1 there is nothing to select and no
   selection pass runs.
3. **Train** (the second "min"): one forward/backward pass per slot on its chosen candidate (BN in
   training mode: batch statistics, moving statistics of the active channels updated), losses of
   all slots summed, one optimizer step. Weight decay is the standard loop's L2 on every kernel.

Cost per step ~ K cheap forward passes + one forward/backward per slot (``benchmarks/minmin_cost.py``
measures the ratio to a plain step of the max net).

The recipe (optimizer, schedule, epochs, weight decay, mixed precision, checkpoints, seed) is a
``train``-shaped config section (:func:`supernet_section`), built with ``cafe_tf.training.standard``'s
helpers, and everything around the step comes from ``cafe_tf.training.kernel``, so the supernet and the
plain models share one learning-rate schedule, one optimizer builder (with loss scaling under
``mixed_float16``), one progress display, one history and one checkpoint/resume scheme
(``<workdir>/checkpoints``, resumed exactly mid-epoch). Under ``mixed_bfloat16`` /
``mixed_float16`` the supernet computes in half precision; losses, the L2 penalty and the selection
are float32.
:func:`train` ends by writing ``<workdir>/supernet.keras`` (the plain full model holding every
shared weight) and ``<workdir>/supernet.json`` (model, space, settings, summary), both atomically.
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

from cafe_tf import distribute as distribute_lib
from cafe_tf import io
from cafe_tf.config import ConfigError, validate_channel_multiple, validate_train
from cafe_tf.slim import Supernet
from cafe_tf import data as data_lib
from cafe_tf.data import DataSource, calibration_batches, take_batches
from cafe_tf.space import (GRANULARITIES, SHARINGS, SUPERNET_SCHEMA, SUPERNET_VERSION,  # noqa: F401 - re-exported
                           ZONE_UNITS, SearchSpace, read_supernet, space_from_section)
from cafe_tf.training import kernel, standard

SELECTION_BN = ("batch", "moving")
SAMPLINGS = ("uniform", "macs_range")


# -------------------------------------------------------------------------------------------------
# Config section


def supernet_section() -> ml_collections.ConfigDict:
    """Defaults of ``config.supernet``: a ``train`` recipe plus the search space and min-min options."""
    from cafe_tf.config import base_config

    c = base_config().train
    c.eval_splits = ("validation",)  # never the test split: the search reads this supernet
    c.update(dict(
        sharing="locally_free",  # locally_free | fixed (AutoSlim-style baseline)
        granularity="flops_sensitive",  # flops_sensitive | uniform bins
        r=1,  # local-zone offset, in zone_unit (0 = fixed pattern)
        zone_unit="channels",  # channels (blocks of channel_multiple; the paper's Figure 1) | bins: what r counts
        num_bins=20,  # uniform granularity only: bins per group
        max_bin=32,  # flops_sensitive: the largest bin, in channels
        channel_multiple=1,  # bins and zones on multiples of it, or the full width (e.g. 8 for SIMD kernels); 1 = off
        num_candidates=2,  # K free-channel arrangements per sampled width; the min-loss one is trained
        sandwich=False,  # also train the max and min nets every step
        num_sampled=1,  # random widths per step
        sampling="uniform",  # uniform: each group's width uniform over its bins | macs_range: the net's MACs uniform over macs_range
        macs_range=(0.0, 1.0),  # macs_range sampling: (low, high) fractions of the full net's MACs the sampled nets cover
        selection_bn="batch",  # batch: candidates compared with batch statistics (no moving update) | moving
        eval_fractions=(1.0, 0.5),  # uniform width fractions scored on validation at the end (after BN recalibration)
        eval_min=True,  # also score the min net at the end
        calibration_examples=512,  # training images for BN recalibration of each scored width
        eval_examples=2000,  # validation images per scored width (0 = all)
        init_from_model=True,  # a given model's trained weights start the supernet; False: fresh initial weights
    ))
    return c


def validate_supernet(section: ml_collections.ConfigDict) -> None:
    """Checks ``config.supernet``; raises ConfigError naming the key, the value and what is valid."""
    try:
        validate_train(section)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config.train.", "config.supernet.")) from None
    choices = {"sharing": SHARINGS, "granularity": GRANULARITIES, "selection_bn": SELECTION_BN,
               "zone_unit": ZONE_UNITS, "sampling": SAMPLINGS}
    for key, valid in choices.items():
        if section[key] not in valid:
            raise ConfigError(f"config.supernet.{key}={section[key]!r} is invalid; valid values: {list(valid)}")
    for key in ("num_bins", "max_bin", "num_candidates", "num_sampled", "calibration_examples"):
        if section[key] < 1:
            raise ConfigError(f"config.supernet.{key}={section[key]!r} is invalid; it must be >= 1")
    if section.r < 0:
        raise ConfigError(f"config.supernet.r={section.r!r} is invalid; it must be >= 0 ({section.zone_unit})")
    low_high = tuple(section.macs_range)
    if len(low_high) != 2 or not 0 <= low_high[0] < low_high[1] <= 1:
        raise ConfigError(f"config.supernet.macs_range={low_high!r} is invalid; give (low, high) fractions of the full "
                          "net's MACs with 0 <= low < high <= 1")
    validate_channel_multiple("supernet", section.get("channel_multiple", 1))
    if section.eval_examples < 0:
        raise ConfigError(f"config.supernet.eval_examples={section.eval_examples!r} is invalid; "
                          "it must be >= 0 (0 = all)")
    bad = [f for f in section.eval_fractions if not 0 < f <= 1]
    if bad:
        raise ConfigError(f"config.supernet.eval_fractions={tuple(section.eval_fractions)!r} is invalid; "
                          "each must be in (0, 1]")
    if "test" in section.eval_splits:
        raise ConfigError("config.supernet.eval_splits must not contain 'test': the search reads the supernet, "
                          "so its scores stay off the test split; use ('validation',)")


# -------------------------------------------------------------------------------------------------
# Host-side sampling


@dataclasses.dataclass(frozen=True)
class Slot:
    """One width trained this step: its bin widths and the K candidate arrangements (``full``: the max net)."""

    widths: np.ndarray
    arrangements: tuple[tuple[tuple[int, ...], ...], ...]
    full: bool = False


@dataclasses.dataclass(frozen=True)
class MinMinOptions:
    """How a step samples: K candidates, the sandwich rule, random widths per step, BN during selection."""

    num_candidates: int = 2
    sandwich: bool = False
    num_sampled: int = 1
    selection_bn: str = "batch"
    sampling: str = "uniform"
    macs_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if self.num_sampled < 1:
            raise ValueError(f"num_sampled must be >= 1, got {self.num_sampled}")
        if self.selection_bn not in SELECTION_BN:
            raise ValueError(f"selection_bn {self.selection_bn!r} is not one of {SELECTION_BN}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling {self.sampling!r} is not one of {SAMPLINGS}")
        low, high = self.macs_range
        if not 0 <= low < high <= 1:
            raise ValueError(f"macs_range {self.macs_range!r} must be (low, high) with 0 <= low < high <= 1")


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The host RNG of global step ``step``: a pure function of (seed, step), so resuming redraws the same."""
    return np.random.default_rng([int(seed), int(step), 0xCAFE])


def candidates_per_slot(space: SearchSpace, options: MinMinOptions) -> int:
    """K actually drawn: 1 when the space has no free channels (r = 0), else ``num_candidates``."""
    return 1 if space.r == 0 else options.num_candidates


def sample_widths(space: SearchSpace, rng: np.random.Generator, options: MinMinOptions) -> np.ndarray:
    """One step's random width assignment (bins per group), as ``options.sampling`` says.

    ``uniform``: each group's width uniform over its bins (the paper's rule; the nets' MACs then
    crowd around a third of the full net's). ``macs_range``: a target T uniform over
    ``options.macs_range`` x the full net's MACs (raised to the smallest net's), a random shape
    u ~ U[0.05, 1) per group, and the widths ceil(s u_g n_g) (clipped to 1..n_g bins) whose MACs
    are nearest T over the scale s (bisection): every MACs level of the range is trained about
    equally often, with random shapes at each level.
    """
    if options.sampling == "uniform":
        return space.sample_widths(rng)
    n = space.num_bins
    full, smallest = float(space.cost.macs()), float(space.macs(np.ones_like(n)))
    target = max(rng.uniform(*options.macs_range) * full, smallest)
    shape = rng.uniform(0.05, 1.0, size=len(n))

    def widths(scale: float) -> np.ndarray:
        return np.clip(np.ceil(scale * shape * n), 1, n).astype(np.int64)

    lo, hi = 0.0, 1.0 / float(shape.min())
    for _ in range(24):
        mid = (lo + hi) / 2
        if space.macs(widths(mid)) <= target:
            lo = mid
        else:
            hi = mid
    below, above = widths(lo), widths(hi)
    return below if target - space.macs(below) <= space.macs(above) - target else above


def plan_step(space: SearchSpace, rng: np.random.Generator, options: MinMinOptions) -> list[Slot]:
    """The slots of one step: [max, min] (sandwich) then ``num_sampled`` random widths, K arrangements each."""
    k = candidates_per_slot(space, options)
    slots = []
    widths_list = []
    if options.sandwich:
        full = space.num_bins.copy()
        slots.append(Slot(full, (tuple(space.fixed(full)),), full=True))
        widths_list.append(np.ones_like(space.num_bins))
    widths_list += [sample_widths(space, rng, options) for _ in range(options.num_sampled)]
    for widths in widths_list:
        arrangements = tuple(tuple(space.sample_arrangement(widths, rng)) for _ in range(k))
        slots.append(Slot(np.asarray(widths), arrangements))
    return slots


class CandidateEncoder:
    """Turns arrangements into fixed-shape tensors (so the step never retraces) and back into selections."""

    def __init__(self, supernet: Supernet, space: SearchSpace):
        self.supernet, self.space = supernet, space
        self.positions = {g.group_id: i for i, g in enumerate(space.groups)}
        self.max_size = max(g.size for g in space.groups)

    def encode(self, arrangements: Sequence[Sequence[Sequence[int]]]) -> tuple[np.ndarray, np.ndarray]:
        """(padded channel indices [K, G, max_size] int32, lengths [K, G] int32) of K arrangements."""
        k, g = len(arrangements), len(self.space.groups)
        padded = np.zeros((k, g, self.max_size), np.int32)
        lengths = np.zeros((k, g), np.int32)
        for i, arrangement in enumerate(arrangements):
            for gid, idx in self.space.channels(arrangement).items():
                p = self.positions[gid]
                padded[i, p, : len(idx)] = idx
                lengths[i, p] = len(idx)
        return padded, lengths

    def selection(self, padded: tf.Tensor, lengths: tf.Tensor) -> list[tf.Tensor | None]:
        """The supernet selection (every group; None where not prunable) of one encoded arrangement [G, S], [G]."""
        out: list[tf.Tensor | None] = [None] * self.supernet.num_groups
        for gid, p in self.positions.items():
            out[gid] = padded[p, : lengths[p]]
        return out


# -------------------------------------------------------------------------------------------------
# The traced step


class MinMinTrainer:
    """The min-min step of a supernet under a strategy; the loop around it is :func:`train`."""

    def __init__(
        self,
        supernet: Supernet,
        space: SearchSpace,
        optimizer: keras.optimizers.Optimizer,
        options: MinMinOptions = MinMinOptions(),
        *,
        num_classes: int,
        global_batch: int,
        task: str = "classification",
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.supernet, self.space, self.optimizer, self.options = supernet, space, optimizer, options
        self.encoder = CandidateEncoder(supernet, space)
        self.num_classes, self.global_batch, self.task = int(num_classes), int(global_batch), task
        self.weight_decay, self.label_smoothing = float(weight_decay), float(label_smoothing)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.variables = list(supernet.model.trainable_variables)
        self.decayed = kernel.decayed(self.variables)
        self.traces = 0  # how many times the step was traced (tests: once for every width)
        self._step_fn = tf.function(self._distributed_step)
        self._probe_fn = tf.function(self._distributed_probe)

    # ----------------------------------------------------------------------------------------
    def _candidate_loss(self, images, labels, selection) -> tf.Tensor:
        """Summed cross-entropy of one candidate, no tape, no BN statistics updated."""
        bn_stats = "batch" if self.options.selection_bn == "batch" else None
        logits = self.supernet(images, selection=selection, training=False, bn_stats=bn_stats)
        per_example = kernel.per_example_loss(self.task, labels, logits, self.num_classes, self.label_smoothing)
        return tf.reduce_sum(per_example)

    def _replica_step(self, images, labels, slots):
        ctx = tf.distribute.get_replica_context()
        chosen, candidate_losses, best_index = [], [], []
        for slot in slots:
            if slot is None:  # the max net: one arrangement, all channels, no gather
                chosen.append([None] * self.supernet.num_groups)
                candidate_losses.append(tf.zeros([1]))
                best_index.append(tf.constant(0, tf.int64))
                continue
            padded, lengths = slot
            k = padded.shape[0]
            if k > 1:
                losses = tf.stack([
                    tf.stop_gradient(
                        self._candidate_loss(images, labels, self.encoder.selection(padded[i], lengths[i])))
                    for i in range(k)
                ])
                losses = ctx.all_reduce(tf.distribute.ReduceOp.SUM, losses)  # one global decision
                best = tf.argmin(losses)
            else:
                losses, best = tf.zeros([1]), tf.constant(0, tf.int64)
            chosen.append(self.encoder.selection(tf.gather(padded, best), tf.gather(lengths, best)))
            candidate_losses.append(losses)
            best_index.append(best)
        with tf.GradientTape() as tape:
            total = tf.constant(0.0)
            slot_loss, slot_correct = [], []
            for selection in chosen:
                logits = tf.cast(self.supernet(images, selection=selection, training=True), tf.float32)
                per_example = kernel.per_example_loss(self.task, labels, logits, self.num_classes,
                                                      self.label_smoothing)
                total += tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
                slot_loss.append(tf.reduce_sum(per_example))
                slot_correct.append(tf.reduce_sum(kernel.per_example_accuracy(self.task, labels, logits)))
            if self.weight_decay and self.decayed:
                total += tf.nn.scale_regularization_loss(kernel.l2_penalty(self.decayed, self.weight_decay))
            scaled = self.optimizer.scale_loss(total)
        grads = tape.gradient(scaled, self.variables)
        self.optimizer.apply_gradients(zip(grads, self.variables))
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return {"loss": tf.stack(slot_loss), "correct": tf.stack(slot_correct), "count": count,
                "candidate_losses": candidate_losses, "chosen": tf.stack(best_index)}

    def _distributed_step(self, batch, slots):
        self.traces += 1
        images, labels = batch
        out = self.strategy.run(self._replica_step, args=(images, labels, slots))
        red = tf.distribute.ReduceOp.SUM
        return {
            "loss": self.strategy.reduce(red, out["loss"], axis=None),
            "correct": self.strategy.reduce(red, out["correct"], axis=None),
            "count": self.strategy.reduce(red, out["count"], axis=None),
            # already identical on every replica (all-reduced inside): take the first
            "candidate_losses": [self.strategy.experimental_local_results(c)[0] for c in out["candidate_losses"]],
            "chosen": self.strategy.experimental_local_results(out["chosen"])[0],
        }

    def slot_tensors(self, slots: Sequence[Slot]) -> list:
        """The traced step's fixed-structure argument for ``slots`` (None for the max net)."""
        return [None if s.full else tuple(tf.constant(a) for a in self.encoder.encode(s.arrangements)) for s in slots]

    def train_step(self, batch, slots: Sequence[Slot]) -> dict[str, np.ndarray]:
        """Runs one min-min step on ``batch`` (a distributed or plain (images, labels)) for ``slots``.

        Returns numpy: per-slot mean training loss and accuracy of the chosen candidate, every
        candidate's mean selection loss and the chosen candidate's index.
        """
        out = self._step_fn(batch, self.slot_tensors(slots))
        count = float(out["count"])
        return {
            "loss": out["loss"].numpy() / count,
            "accuracy": out["correct"].numpy() / count,
            "candidate_losses": [c.numpy() / count for c in out["candidate_losses"]],
            "chosen": out["chosen"].numpy(),
        }

    # ----------------------------------------------------------------------------------------
    def _replica_probe(self, images, labels, slots):
        out = []
        for slot in slots:
            if slot is None:
                selection = [None] * self.supernet.num_groups
            else:
                selection = self.encoder.selection(slot[0][0], slot[1][0])
            out.append(self._candidate_loss(images, labels, selection))
        return tf.stack(out), tf.cast(tf.shape(labels)[0], tf.float32)

    def _distributed_probe(self, batch, slots):
        images, labels = batch
        losses, count = self.strategy.run(self._replica_probe, args=(images, labels, slots))
        red = tf.distribute.ReduceOp.SUM
        return self.strategy.reduce(red, losses, axis=None) / self.strategy.reduce(red, count, axis=None)

    def probe_max_min(self, batch) -> tuple[float, float]:
        """Selection-mode losses of the max net and the min net (leftmost bins) on ``batch``, no update."""
        full = Slot(self.space.num_bins, (), full=True)
        ones = np.ones_like(self.space.num_bins)
        smallest = Slot(ones, (tuple(self.space.fixed(ones)),))
        losses = self._probe_fn(batch, self.slot_tensors([full, smallest])).numpy()
        return float(losses[0]), float(losses[1])


# -------------------------------------------------------------------------------------------------
# Scoring a width on validation (also used by the search's evaluator)


def make_eval_fn(supernet: Supernet, task: str | None = None) -> Callable:
    """The kernel's eval step of ``supernet`` at a width: ``step((images, labels), selection)``.

    One trace serves every width (``Supernet.trace_selection``). ``task`` None reads it from the
    labels' rank at trace time (:func:`kernel.label_task`).
    """
    return kernel.make_eval_step(lambda images, selection: supernet(images, selection=selection, training=False),
                                 task)


def accuracy_of(supernet: Supernet, selection: Sequence, batches: Sequence[tuple[tf.Tensor, tf.Tensor]],
                eval_fn: Callable | None = None, task: str | None = None) -> tuple[float, float]:
    """(accuracy, mean loss) of ``selection`` (BN in inference mode) over in-memory batches (:func:`kernel.evaluate`)."""
    result = kernel.evaluate(eval_fn or make_eval_fn(supernet, task), batches, list(selection))
    return result["accuracy"], result["loss"]


# -------------------------------------------------------------------------------------------------
# The loop


def _options(section) -> MinMinOptions:
    return MinMinOptions(num_candidates=int(section.num_candidates), sandwich=bool(section.sandwich),
                         num_sampled=int(section.num_sampled), selection_bn=section.selection_bn,
                         sampling=str(section.get("sampling", "uniform")),
                         macs_range=tuple(float(x) for x in section.get("macs_range", (0.0, 1.0))))


def settings_of(section: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings that define a supernet run (a resumed run must match them)."""
    keys = ("sharing", "granularity", "r", "num_bins", "max_bin", "num_candidates", "sandwich", "num_sampled",
            "selection_bn", "epochs", "lr", "optimizer", "schedule", "weight_decay", "seed", "init_from_model")
    if section.get("sampling", "uniform") != "uniform":  # recorded when not the default, so older runs still resume
        keys += ("sampling", "macs_range")
    return {k: (list(section[k]) if isinstance(section[k], tuple) else section[k]) for k in keys if k in section}


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    data: DataSource | None = None,
    source: Any = None,
    strategy: tf.distribute.Strategy | None = None,
    hooks: Sequence[standard.Hook] = (),
) -> dict[str, Any]:
    """Trains (or resumes) the supernet ``config`` describes in ``workdir``; returns ``supernet.json``'s record.

    Args:
      config: a config with ``data``, ``model``, ``supernet`` and ``distribute`` sections.
      workdir: the run's folder (checkpoints, ``supernet.keras``, ``supernet.json``).
      data: replaces the data source ``config.data`` describes.
      source: a ``cafe_tf.models.source.ModelSource`` that replaces ``config.model``.
      strategy: replaces ``config.distribute``'s strategy.
      hooks: the loop's callbacks (``cafe_tf.training.standard.Hook``), as :func:`train` takes them.

    Returns:
      The supernet summary (model, space, settings, validation accuracy of a few widths).
    """
    from cafe_tf import distribute as distribute_lib
    from cafe_tf.config import to_dict
    from cafe_tf.models import source as source_lib

    if "supernet" not in config:
        raise ConfigError("the config has no 'supernet' section; start from cafe_tf.training.supernet.supernet_section() "
                          "(see configs/fashion_mnist_resnet20.py)")
    section = config.supernet
    strategy = strategy or distribute_lib.strategy_from_config(config.distribute)
    if data is None:
        data = data_lib.make_data_source(
            config.data, seed=section.seed, eval_splits=tuple(section.eval_splits),
            drop_eval_remainder=not distribute_lib.supports_partial_batches(strategy),
            input_scaling=config.model.input_scaling, workdir=workdir)
    if source is None:
        source = source_lib.from_config(config.model, data.image_shape, data.info.num_classes)
    model_fn = source.build
    if not section.get("init_from_model", True):
        def model_fn() -> keras.Model:  # the same architecture with its layers' initial weights
            from cafe_tf.graph import model_boundaries, set_boundaries

            built = source.build()
            return set_boundaries(keras.models.clone_model(built), model_boundaries(built))
    return train(model_fn, data, section, workdir, model_info=source.model_info(), strategy=strategy,
                 config_record=to_dict(config), hooks=hooks)


def train(
    model_fn: Callable[[], keras.Model],
    data: DataSource,
    section: ml_collections.ConfigDict,
    workdir: str,
    *,
    model_info: Mapping[str, Any],
    strategy: tf.distribute.Strategy | None = None,
    config_record: Mapping[str, Any] | None = None,
    hooks: Sequence[standard.Hook] = (),
) -> dict[str, Any]:
    """Min-min trains the supernet of ``model_fn()`` on ``data`` with ``section`` (see :func:`supernet_section`).

    Resumes from ``<workdir>/checkpoints``; writes ``supernet.keras`` and ``supernet.json`` (returned).
    ``hooks`` get ``on_step_end`` (logs: loss, accuracy, lr of the sampled net) and ``on_checkpoint``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    workdir = os.path.abspath(workdir)
    chief = distribute_lib.is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    batch = data.global_batch
    spe = standard.steps_per_epoch(data, strategy)
    total_steps = int(section.epochs) * spe

    keras.utils.set_random_seed(int(section.seed))
    if section.deterministic:
        tf.config.experimental.enable_op_determinism()
    model = kernel.build_model(model_fn, strategy, section.mixed_precision, key="config.supernet.mixed_precision")
    with strategy.scope():
        supernet = Supernet(model)
    space = space_from_section(supernet.graph, section)
    options = _options(section)
    schedule, optimizer, global_step, ckpt = standard.training_state(section, model, strategy, workdir, spe, batch)
    settings = settings_of(section)
    settings_path = os.path.join(workdir, "supernet_settings.json")
    if ckpt.latest and os.path.isfile(settings_path):
        stored = io.read_artifact(settings_path, "cafe_tf.supernet_settings", (1,))["settings"]
        diff = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
        if diff:
            raise ConfigError(
                f"{ckpt.directory} holds a supernet trained with other settings ("
                + ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
                + "); use a new --workdir or delete it")
    resumed_from = ckpt.restore()
    if chief:
        io.write_artifact(settings_path, "cafe_tf.supernet_settings", 1, {"settings": settings})
    start_step = int(global_step.numpy())
    history = kernel.History(workdir, write=chief)
    if resumed_from is not None:
        history.load(start_step)

    trainer = MinMinTrainer(
        supernet, space, optimizer, options, num_classes=data.info.num_classes, global_batch=batch,
        task=data.info.task, weight_decay=section.weight_decay, label_smoothing=section.label_smoothing,
        strategy=strategy)
    slot_names = (["max", "min"] if options.sandwich else []) + [
        "sampled" if options.num_sampled == 1 else f"sampled{i}" for i in range(options.num_sampled)]
    tb_dir = os.path.join(workdir, "tensorboard")
    writer = kernel.summary_writer(os.path.join(tb_dir, "supernet"), chief)
    if chief:
        logging.info("supernet: %d prunable groups, 10^%.1f width assignments (%s bins, %s sharing, r=%d %s), K=%d%s",
                     len(space.groups), space.size_log10, space.granularity, space.sharing, space.r, space.zone_unit,
                     candidates_per_slot(space, options), ", sandwich" if options.sandwich else "")
        logging.info("%s, %d steps/epoch x %d epochs, global batch %d, %s, %s; checkpoints %s; tensorboard --logdir %s",
                     data.info.name, spe, section.epochs, batch, distribute_lib.describe(strategy),
                     model.dtype_policy.name, ckpt.directory, tb_dir)
        if resumed_from is not None:
            logging.info("resuming from %s at step %d", resumed_from, start_step)

    progress = kernel.Progress(int(section.epochs), spe, section.log_every, enabled=chief)
    window: dict[str, float] = {}
    window_count = 0
    step = start_step
    t0 = time.time()
    last_saved = start_step if resumed_from is not None else -1
    for epoch in range(start_step // spe, int(section.epochs)):
        skip = step - epoch * spe
        iterator = iter(strategy.distribute_datasets_from_function(
            lambda ctx, e=epoch, s=skip: data.make_train(e, s, ctx)))
        progress.start_epoch(epoch, skip)
        epoch_sum, epoch_n = np.zeros(2), 0
        for step_in_epoch in range(skip + 1, spe + 1):
            batch_value = next(iterator)
            slots = plan_step(space, step_rng(section.seed, step), options)
            out = trainer.train_step(batch_value, slots)
            global_step.assign_add(1)
            step += 1
            loss = float(out["loss"][-1])
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"supernet training diverged at step {step}: loss {loss}. Lower config.supernet.lr (now "
                    f"{section.lr}), add warm-up (config.supernet.warmup_epochs, now {section.warmup_epochs}) or "
                    f"train the max and min nets every step (config.supernet.sandwich=True, now {section.sandwich}); "
                    "narrow nets such as MobileNetV2-0.35 needed all three (docs/width-search.md)")
            epoch_sum += (loss, float(out["accuracy"][-1]))
            epoch_n += 1
            lr = float(schedule(step - 1))
            progress.update(step_in_epoch, {"loss": epoch_sum[0] / epoch_n, "acc": epoch_sum[1] / epoch_n, "lr": lr})
            for name, l, a in zip(slot_names, out["loss"], out["accuracy"]):
                window[f"loss/{name}"] = window.get(f"loss/{name}", 0.0) + float(l)
                window[f"accuracy/{name}"] = window.get(f"accuracy/{name}", 0.0) + float(a)
            sampled_losses = out["candidate_losses"][-1]
            if len(sampled_losses) > 1:
                window["selection/candidate_gap"] = window.get("selection/candidate_gap", 0.0) + float(
                    np.max(sampled_losses) - np.min(sampled_losses))
            window_count += 1
            for hook in hooks:
                hook.on_step_end(step, {"loss": loss, "accuracy": float(out["accuracy"][-1]), "lr": lr})
            if step % section.log_every == 0 or step_in_epoch == spe:
                record = {k: v / window_count for k, v in window.items()}
                if not options.sandwich:  # max / min losses come from a cheap probe on this batch
                    record["loss/max_probe"], record["loss/min_probe"] = trainer.probe_max_min(batch_value)
                record.update(step=step, lr=lr)
                history.append(record, save=False)  # written with the next checkpoint, so the two agree
                with writer.as_default():
                    for k, v in record.items():
                        if k != "step":
                            kernel.write_scalar(k, v, step)
                window, window_count = {}, 0
            if section.checkpoint_every and step % section.checkpoint_every == 0 and step < total_steps:
                last_saved = standard.save_checkpoint(ckpt, step, hooks)
                history.save()
        if last_saved != step:
            last_saved = standard.save_checkpoint(ckpt, step, hooks)
        history.save()
    writer.flush()
    train_seconds = time.time() - t0

    summary = {
        "model": dict(model_info),
        "space": space.describe(),
        "settings": settings,
        "steps": step,
        "steps_per_epoch": spe,
        "global_batch": batch,
        "replicas": replicas,
        "train_seconds_this_run": round(train_seconds, 3),
        "resumed_from_step": start_step if resumed_from is not None else None,
        "full_macs": int(space.cost.macs()),
        "full_params": int(space.cost.params()),
        "history": history.entries,
        "paths": {"model": "supernet.keras", "checkpoints": "checkpoints", "tensorboard": "tensorboard"},
        "config": dict(config_record) if config_record is not None else None,
    }
    if chief:
        # BN recalibration while scoring rewrites moving statistics: score on a snapshot, then put it back.
        trained = model.get_weights()
        summary["validation"] = score_widths(supernet, space, data, section)
        model.set_weights(trained)
        io.write_artifact(os.path.join(workdir, "supernet.json"), SUPERNET_SCHEMA, SUPERNET_VERSION, summary)
        # Last: supernet.keras is the stage's artifact, so it must not exist before supernet.json does.
        with io.atomic_path(os.path.join(workdir, "supernet.keras")) as tmp:
            model.save(tmp)
    ckpt.discard_scratch()
    return {"schema": SUPERNET_SCHEMA, "schema_version": SUPERNET_VERSION, **summary}


def score_widths(supernet: Supernet, space: SearchSpace, data: DataSource,
                 section: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """Validation accuracy of uniform widths (and the min net) after BN recalibration, leftmost channels.

    Accuracy as the data's task defines it (multi-label: mean per-attribute accuracy).
    """
    if "validation" not in data.make_eval or not (section.eval_fractions or section.eval_min):
        return []
    calib = calibration_batches(data, int(section.calibration_examples))
    val = take_batches(data.make_eval["validation"], int(section.eval_examples))
    eval_fn = make_eval_fn(supernet, data.info.task)
    targets = [(f"uniform_{f:g}", space.uniform_widths(f)) for f in section.eval_fractions]
    if section.eval_min:
        targets.append(("min", np.ones_like(space.num_bins)))
    out = []
    for name, widths in targets:
        selection = supernet.trace_selection(space.channels(space.fixed(widths)))
        supernet.calibrate_bn(selection, [x for x, _ in calib])
        acc, loss = accuracy_of(supernet, selection, val, eval_fn)
        out.append({"name": name, "widths": widths.tolist(), "macs": int(space.macs(widths)),
                    "accuracy": acc, "loss": loss})
        logging.info("supernet %s (%d MACs): validation accuracy %.4f loss %.4f", name, out[-1]["macs"], acc, loss)
    return out
