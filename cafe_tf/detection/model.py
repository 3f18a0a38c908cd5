"""The detector: keras-hub's ``RetinaNetObjectDetector`` on a :mod:`cafe_tf.detection.backbone` pyramid.

``config.detector.backbone`` names where the backbone comes from, as ``config.model.name`` does:

* a built-in architecture (``resnet50``, ``mobilenet_v2``; ``width_mult`` scales it uniformly),
  built at the detector's image size, fresh weights;
* a ``.keras`` file: a classification checkpoint (``model.keras`` of ``cafe-tf train``),
  a Dagger-pruned model (``cafe-tf prune``) or a user's model, weights kept;
* a ``widths.json`` (``python -m cafe_tf.search``): the searched network, fresh weights, or the
  weights of ``config.detector.backbone_checkpoint`` (the checkpoint ``cafe-tf train --widths`` wrote).

The classifier head of the source model is dropped (:func:`backbone.pyramid_trunk` calls only the
layers the levels need). The FPN (P3-P7 from P3-P5, 256 channels) and the heads are keras-hub's
(fixed width, see :mod:`cafe_tf.detection.backbone`); ``head_convs`` sets the 3x3 convolutions
before each head's output (keras-hub's default is 4; fewer for small CPU runs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import ml_collections
import numpy as np

from cafe_tf.config import ConfigError
from cafe_tf.detection import backbone as backbone_lib
from cafe_tf.detection.data import BOX_FORMAT


def detector_section() -> ml_collections.ConfigDict:
    """The ``detector`` config section with its defaults."""
    return ml_collections.ConfigDict(dict(
        backbone="mobilenet_v2",  # built-in name, a .keras file or a widths.json
        backbone_checkpoint="",  # with a widths.json: the checkpoint of its trained network ("" = fresh weights)
        width_mult=1.0,  # built-in backbones: uniform width multiplier
        min_level=3,  # backbone levels P3..P5 feed the FPN, which adds P6, P7
        backbone_max_level=5,
        max_level=7,
        pyramid_layers=(),  # ("P3=layer_name", ...): take these layers instead of finding levels by stride
        head_convs=4,  # 3x3 convolutions before each head's output (keras-hub's default: 4)
        anchor_size=4.0,  # anchor side at level l: anchor_size * 2**l (x 2**(0, 1/3, 2/3)); keras-hub's default: 4
        bn_momentum=0.0,  # > 0: every BatchNormalization of the backbone gets this momentum (0: keep)
        max_boxes=100,  # ground-truth boxes per image (COCO's most is 93)
        score_threshold=0.05,  # NMS: detections below this score are dropped (COCO evaluation practice)
        iou_threshold=0.5,  # NMS
        max_detections=100,  # per image, after NMS
    ))


def parse_pyramid_layers(entries: Sequence[str]) -> dict[str, str]:
    """``("P3=name", ...)`` as ``{"P3": "name"}``; raises ConfigError naming a malformed entry."""
    out = {}
    for e in entries:
        key, sep, name = str(e).partition("=")
        if not sep or not key.startswith("P") or not key[1:].isdigit() or not name:
            raise ConfigError(f"config.detector.pyramid_layers entry {e!r} is invalid; write it as 'P3=layer_name'")
        out[key] = name
    return out


def source_model(detector: ml_collections.ConfigDict, image_size: int, channels: int = 3) -> keras.Model:
    """The classification network the backbone is cut from (see the module doc); built-ins at ``image_size``.

    ``detector.bn_momentum`` > 0 sets every BatchNormalization's momentum: MobileNetV2 and ResNet-50
    use 0.999 (for long ImageNet runs), whose moving statistics a short detection run leaves so far
    from the data that inference-mode features hardly differ between images.
    """
    model = _source_model(detector, image_size, channels)
    if detector.get("bn_momentum", 0.0):
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(detector.bn_momentum)
    return model


def _source_model(detector: ml_collections.ConfigDict, image_size: int, channels: int) -> keras.Model:
    from cafe_tf.models import registry

    spec = str(detector.backbone)
    size = int(image_size)
    if spec in registry.names():
        return registry.build_builtin(spec, input_shape=(size, size, channels), num_classes=10,
                                      width_mult=float(detector.width_mult))
    if spec.endswith(".keras"):
        import os

        if not os.path.isfile(spec):
            raise ConfigError(f"config.detector.backbone={spec!r} does not exist")
        return keras.models.load_model(spec, compile=False)
    if spec.endswith(".json"):
        if detector.backbone_checkpoint:
            from deploy.export import load_widths_checkpoint

            return load_widths_checkpoint(spec, detector.backbone_checkpoint)
        from cafe_tf.training.subnet import build_subnet

        return build_subnet(spec)
    raise ConfigError(f"config.detector.backbone={spec!r} is invalid; valid: a built-in model {registry.names()}, "
                      "a .keras file or a widths.json")


def build_detector(source: keras.Model, num_classes: int, detector: ml_collections.ConfigDict | Mapping[str, Any],
                   image_size: int, optimizer: keras.optimizers.Optimizer | str = "auto"):
    """A ``keras_hub.models.RetinaNetObjectDetector`` on ``source``'s pyramid levels at ``image_size``, compiled with keras-hub's losses.

    The losses are keras-hub's defaults (focal loss for classes, Huber for boxes, summed and divided
    by the number of matched anchors); ``optimizer`` is the training loop's.
    """
    import keras_hub

    d = ml_collections.ConfigDict(dict(detector))
    size = int(image_size)
    channels = int(source.inputs[0].shape[-1])
    levels = tuple(range(int(d.min_level), int(d.backbone_max_level) + 1))
    pyramid = backbone_lib.pyramid_backbone(source, (size, size, channels), levels,
                                            parse_pyramid_layers(d.pyramid_layers) or None)
    retina = keras_hub.models.RetinaNetBackbone(
        image_encoder=pyramid, min_level=int(d.min_level), max_level=int(d.max_level), use_p5=False,
        image_shape=(size, size, channels))
    nms = keras_hub.layers.NonMaxSuppression(
        bounding_box_format=BOX_FORMAT, from_logits=True, iou_threshold=float(d.iou_threshold),
        confidence_threshold=float(d.score_threshold), max_detections=int(d.max_detections))
    # keras-hub's default anchors (3 scales x 3 aspect ratios per level) with the config's anchor_size.
    anchor_generator = keras_hub.layers.AnchorGenerator(
        BOX_FORMAT, min_level=int(d.min_level), max_level=int(d.max_level), num_scales=3,
        aspect_ratios=[0.5, 1.0, 2.0], anchor_size=float(d.get("anchor_size", 4.0)))
    model = keras_hub.models.RetinaNetObjectDetector(
        backbone=retina, num_classes=int(num_classes), bounding_box_format=BOX_FORMAT,
        anchor_generator=anchor_generator, pre_logits_num_conv_layers=int(d.head_convs), prediction_decoder=nms)
    fix_head_priors(model)
    edge_upsampling(model)
    model.compile(optimizer=optimizer)
    return model


@keras.saving.register_keras_serializable(package="cafe_tf")
class NearestUpsampling2x(keras.layers.Layer):
    """``x`` [batch, h, w, c] upsampled 2x by repetition, as TFLite's ``RESIZE_NEAREST_NEIGHBOR`` (version 1).

    For a factor of 2 the classic resize (no half-pixel centres, no corner alignment) picks source
    pixel ``i // 2`` for output pixel ``i``, exactly what ``UpSampling2D``'s repetition picks, so the
    values are identical; the half-pixel form (``keras.ops.image.resize``) raises the op's version to
    3, which edgetpu_compiler has reported as "Operation version not supported" (google-coral/edgetpu#420).
    """

    def call(self, x):
        import tensorflow as tf

        shape = tf.shape(x)
        height = x.shape[1] if x.shape[1] is not None else shape[1]
        width = x.shape[2] if x.shape[2] is not None else shape[2]
        return tf.raw_ops.ResizeNearestNeighbor(images=x, size=[2 * height, 2 * width], align_corners=False,
                                                half_pixel_centers=False)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else 2 * h, None if w is None else 2 * w, c)


def edge_upsampling(detector) -> int:
    """Makes the FPN's top-down 2x upsampling convert to ``RESIZE_NEAREST_NEIGHBOR``; returns how many FPNs changed.

    keras-hub's ``FeaturePyramid`` upsamples with ``UpSampling2D``, which Keras 3 computes as
    ``repeat``: TFLite gets 5-D ``RESHAPE`` + ``TILE`` ops, and ``TILE`` (not an Edge TPU op, on
    tensors with a dimension > 1 outside the 3 innermost) ends the Edge TPU subgraph inside the FPN.
    This replaces the FPN's ``top_down_op`` (no weights; the same layer serves every level) with a
    nearest-neighbour resize whose values are identical (:class:`NearestUpsampling2x`), so the saved weights,
    the training and the outputs do not change. ``FeaturePyramid`` rebuilds ``UpSampling2D`` when a
    ``.keras`` file is loaded, so :func:`cafe_tf.detection.export.load_detector` calls this again.
    """
    import keras_hub

    fpn_class = keras_hub.src.models.retinanet.feature_pyramid.FeaturePyramid
    changed = 0
    for layer in detector._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, fpn_class) and not isinstance(getattr(layer, "top_down_op", None), NearestUpsampling2x):
            # Set past Keras's tracker (locked once built): the new layer has no state, and the saved
            # file's structure stays the one FeaturePyramid rebuilds on load.
            object.__setattr__(layer, "top_down_op", NearestUpsampling2x(dtype=layer.dtype_policy, name="upsampling"))
            changed += 1
    return changed


def fix_head_priors(model, prior_probability: float = 0.01) -> None:
    """Puts RetinaNet's prior where the paper puts it: the class head's output bias, not the box head's.

    keras-hub 0.32's ``RetinaNetObjectDetector`` builds its box head with ``use_prior_probability=True``
    and its class head without, so a fresh detector predicts every class at sigmoid(0) = 0.5 (a
    focal loss in the hundreds at the first step) and every box at exp(-4.6) = 1% of its anchor.
    The RetinaNet paper (Lin et al. 2017, section 4.1) initializes the class bias to
    -log((1 - pi) / pi), pi = 0.01, and the box bias to 0; this sets those two biases (nothing else).
    """
    box = model.box_head.prediction_layer
    cls = model.classification_head.prediction_layer
    box.bias.assign(np.zeros(box.bias.shape, np.float32))
    cls.bias.assign(np.full(cls.bias.shape, -math.log((1 - prior_probability) / prior_probability), np.float32))
