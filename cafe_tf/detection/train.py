"""The detector's training loop: keras-hub's RetinaNet losses in the training kernel's plumbing.

Reads top to bottom like the standard loop (``cafe_tf/training/standard.py``), whose recipe pieces
it reuses (``train`` section: optimizer, learning-rate schedule, L2 on kernels, epochs, seed):

1. the data (:mod:`cafe_tf.detection.data`), the backbone's source network and the detector
   (:mod:`cafe_tf.detection.model`), the optimizer;
2. restore the newest checkpoint of ``<workdir>/checkpoints`` (``kernel.Checkpointer``: model,
   optimizer, step, random-seed states, run shape); resume skips the batches already done;
3. each step: ``GradientTape`` over the detector's forward pass and keras-hub's own
   ``compute_loss`` (anchor matching by ``RetinaNetLabelEncoder``, focal + Huber losses) plus the
   L2 penalty; progress, TensorBoard scalars, checkpoints every ``checkpoint_every`` steps;
4. each ``eval_every`` epochs (and the last): COCO mAP on the eval split (pycocotools,
   :mod:`cafe_tf.detection.evaluate`), into ``history.json`` and TensorBoard;
5. ``<workdir>/detector.keras`` and ``<workdir>/metrics.json`` (versioned), written atomically.

The order of the training examples depends only on ``(seed, epoch)``; horizontal flips are drawn
by Keras's ``RandomFlip`` and are not replayed exactly after a resume. One device (the default
strategy): the detector does not take ``config.distribute`` yet.
"""

from __future__ import annotations

import os
import time
from typing import Any

import keras
import ml_collections
import tensorflow as tf
from absl import logging

from cafe_tf import data as data_lib
from cafe_tf import io
from cafe_tf.config import ConfigError, to_dict
from cafe_tf.detection import data as det_data
from cafe_tf.detection import evaluate as det_eval
from cafe_tf.detection import model as det_model
from cafe_tf.training import kernel, standard

METRICS_SCHEMA = "detection_metrics"
METRICS_VERSION = 1


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first invalid detection setting of ``config``."""
    if "detector" not in config:
        raise ConfigError("the config has no 'detector' section; start from cafe_tf.detection.model.detector_section() "
                          "(see configs/detect_offline_mobilenet_v2.py)")
    d, data = config.detector, config.data
    if data.name not in det_data.DATASETS:
        raise ConfigError(f"config.data.name={data.name!r} is not a detection dataset; valid: {list(det_data.DATASETS)}")
    top = 2 ** int(d.backbone_max_level)
    size = image_size(config)
    if size % top:
        raise ConfigError(f"config.data.image_size={size} must divide by {top} (the stride of P{d.backbone_max_level})")
    if not 1 <= int(d.min_level) <= int(d.backbone_max_level) <= int(d.max_level) <= 9:
        raise ConfigError(f"config.detector levels min_level={d.min_level} <= backbone_max_level="
                          f"{d.backbone_max_level} <= max_level={d.max_level} must hold, within 1..9")
    if not 0.0 <= float(d.bn_momentum) < 1.0:
        raise ConfigError(f"config.detector.bn_momentum={d.bn_momentum} must be in [0, 1) (0: keep the backbone's)")
    if int(d.head_convs) < 0 or int(d.max_boxes) < 1:
        raise ConfigError(f"config.detector.head_convs={d.head_convs} must be >= 0 and max_boxes={d.max_boxes} >= 1")
    if not float(d.get("anchor_size", 4.0)) > 0:
        raise ConfigError(f"config.detector.anchor_size={d.anchor_size} must be > 0 (keras-hub's default: 4)")
    det_model.parse_pyramid_layers(d.pyramid_layers)
    kernel.check_mixed_precision(config.train.mixed_precision)
    if config.train.mixed_precision != "none":
        raise ConfigError(f"config.train.mixed_precision={config.train.mixed_precision!r}: the detector trains in "
                          "float32 only (valid: 'none')")


def image_size(config: ml_collections.ConfigDict) -> int:
    """The detector's square input size: ``config.data.image_size``, or 128 (offline set) / 512 (COCO) when 0."""
    return int(config.data.image_size) or (128 if config.data.name == det_data.OFFLINE_NAME else 512)


def _train_batches(ds, info, config, size, channels, epoch: int, skip: int) -> tf.data.Dataset:
    data = config.data
    batches = det_data.detection_pipeline(
        ds, info, size, data.batch_size, training=True, channels=channels, max_boxes=config.detector.max_boxes,
        seed=data_lib.epoch_seed(config.train.seed, epoch), shuffle_buffer=data.shuffle_buffer,
        max_examples=data.max_train_examples)
    return batches.skip(skip)


def eval_batches(config: ml_collections.ConfigDict, channels: int) -> tf.data.Dataset:
    """The eval split of ``config``'s dataset as detection batches (no flips)."""
    data = config.data
    ds, info = det_data.load(data.name, det_data.SPLITS[data.name][1], data.data_dir or None, data.download)
    return det_data.detection_pipeline(ds, info, image_size(config), data.eval_batch_size or data.batch_size,
                                       training=False, channels=channels, max_boxes=config.detector.max_boxes,
                                       max_examples=data.max_eval_examples)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains the detector of ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns metrics.json's content."""
    validate(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    t, data = config.train, config.data
    keras.utils.set_random_seed(t.seed)
    train_ds, info = det_data.load(data.name, info_split := det_data.SPLITS[data.name][0], data.data_dir or None,
                                   data.download)
    size = image_size(config)
    source = det_model.source_model(config.detector, size, 3)
    channels = int(source.inputs[0].shape[-1])
    examples = data.max_train_examples or info.split_sizes.get(info_split, 0)
    if not examples:
        raise ConfigError(f"the size of {data.name!r} {info_split!r} is unknown; set config.data.max_train_examples")
    spe = examples // data.batch_size
    if spe < 1:
        raise ConfigError(f"config.data.batch_size={data.batch_size} exceeds the {examples} training examples")
    total_steps = t.epochs * spe
    model = det_model.build_detector(source, info.num_classes, config.detector, size)
    # The standard loop's optimizer (built, so its slots are restored too), step and checkpointer.
    schedule, optimizer, global_step, ckpt = standard.training_state(
        t, model, tf.distribute.get_strategy(), workdir, spe, data.batch_size)
    model.compile(optimizer=optimizer)  # keras-hub's losses with the loop's optimizer (saved with the model)
    resumed_from = ckpt.restore()
    start_step = int(global_step.numpy())
    history = kernel.History(workdir)
    if resumed_from is not None:
        history.load(start_step)
        logging.info("resuming from checkpoint %s at step %d", resumed_from, start_step)
    tb_dir = os.path.join(workdir, "tensorboard")
    writers = {k: kernel.summary_writer(os.path.join(tb_dir, k), True) for k in ("train", "eval")}
    logging.info("%s: %d steps/epoch x %d epochs, batch %d, images %dx%d; detector %s, %s params",
                 data.name, spe, t.epochs, data.batch_size, size, size, model.name, f"{model.count_params():,}")
    logging.info("checkpoints: %s; TensorBoard: tensorboard --logdir %s", ckpt.directory, tb_dir)

    decayed = kernel.decayed(model.trainable_variables)

    @tf.function
    def train_step(images, target):
        with tf.GradientTape() as tape:
            y_pred = model(images, training=True)
            loss = model.compute_loss(x=images, y=target, y_pred=y_pred, sample_weight=None, training=True)
            total = tf.cast(loss, tf.float32) + kernel.l2_penalty(decayed, t.weight_decay)
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        global_step.assign_add(1)
        return loss

    progress = kernel.Progress(t.epochs, spe, t.log_every, enabled=True)
    step, t0 = start_step, time.time()
    last_saved = start_step if resumed_from is not None else -1
    for epoch in range(start_step // spe, t.epochs):
        skip = step - epoch * spe
        iterator = iter(_train_batches(train_ds, info, config, size, channels, epoch, skip))
        progress.start_epoch(epoch, skip)
        loss_sum, count = 0.0, 0
        for step_in_epoch in range(skip + 1, spe + 1):
            images, target = next(iterator)
            loss = float(train_step(images, target))
            step += 1
            loss_sum, count = loss_sum + loss, count + 1
            lr = float(schedule(step - 1))
            progress.update(step_in_epoch, {"loss": loss_sum / count, "lr": lr})
            if step % t.log_every == 0 or step_in_epoch == spe:
                with writers["train"].as_default():
                    kernel.write_scalar("loss", loss, step)
                    kernel.write_scalar("learning_rate", lr, step)
            if t.checkpoint_every and step % t.checkpoint_every == 0 and step < total_steps:
                ckpt.save(step)
                last_saved = step
        logs: dict[str, Any] = {"epoch": epoch + 1, "step": step, "train": {"loss": loss_sum / max(count, 1)}}
        if kernel.eval_due(epoch + 1, t.eval_every, t.epochs):
            logs["eval"] = det_eval.evaluate_detector(model, eval_batches(config, channels), info.num_classes)
            with writers["eval"].as_default():
                for k in ("AP", "AP50", "AP75"):
                    kernel.write_scalar(k, logs["eval"][k], step)
            logging.info("epoch %d: AP %.4f AP50 %.4f AP75 %.4f", epoch + 1, logs["eval"]["AP"], logs["eval"]["AP50"],
                         logs["eval"]["AP75"])
        history.append(logs)
        if last_saved != step:
            ckpt.save(step)
            last_saved = step
    final = history.entries[-1].get("eval") if history.entries else None
    if final is None:
        final = det_eval.evaluate_detector(model, eval_batches(config, channels), info.num_classes)
    for w in writers.values():
        w.flush()
    metrics = {
        "dataset": data.name, "num_classes": info.num_classes, "image_size": size, "backbone": config.detector.backbone,
        "params": int(model.count_params()), "backbone_params": int(source_params(model)),
        "backbone_macs": int(source_macs(model)),
        "epochs": t.epochs, "steps": step, "steps_per_epoch": spe, "batch": data.batch_size,
        "resumed_from_step": start_step if resumed_from is not None else None,
        "train_seconds_this_run": round(time.time() - t0, 3), "final": final, "history": history.entries,
        "normalization": {"mean": list(info.mean), "std": list(info.std)},
        "paths": {"model": "detector.keras", "checkpoints": "checkpoints", "tensorboard": "tensorboard"},
        "config": to_dict(config),
    }
    with io.atomic_path(os.path.join(workdir, "detector.keras")) as tmp:
        model.save(tmp)
    io.write_artifact(os.path.join(workdir, "metrics.json"), METRICS_SCHEMA, METRICS_VERSION, metrics)
    return metrics


def source_params(model) -> int:
    """Parameters of the detector's backbone (the pyramid levels' network, without FPN and heads)."""
    return int(model.backbone.image_encoder.count_params())


def source_macs(model) -> int:
    """MACs of the detector's backbone at its image size (the layers up to P3-P5; not the FPN and heads)."""
    from cafe_tf.flops import count_keras_model

    return count_keras_model(model.backbone.image_encoder)["macs"]
