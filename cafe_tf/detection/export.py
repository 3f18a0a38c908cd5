"""The detector as a ``.tflite`` (fp32, int8): raw head outputs in the model, decoding and NMS in the app.

**What is in the file.** :func:`raw_model` is the detector up to its heads, with two outputs:
``box_deltas`` ``[batch, anchors, 4]`` (keras-hub's ``center_xywh`` encoding) and
``class_scores`` ``[batch, anchors, classes]`` (the sigmoid of the logits). ``deploy.export``
converts it as it converts a classifier (one mechanism): int8 full-integer quantization,
calibrated on training images, float32 or (``io_type`` int8 / uint8, for the Edge TPU) integer
input and outputs, the normalization, labels and output kinds in its metadata. Two outputs,
not one: a single int8 output would share one scale between deltas (a range of several units) and
scores (0..1), so a score would move in steps of several hundredths; apart, the scores get a step
of 1/255. Scores rather than logits: their range, and so their step, is fixed and small.

**NMS is an app-side step**, not in the ``.tflite`` (TFLite's ``TFLite_Detection_PostProcess``
custom op comes from the TF Object Detection API's export tools, not from converting a Keras
graph; see docs/deploy.md). The app splits the output, decodes the deltas against the anchors and applies the sigmoid
and NMS; :func:`decode` does exactly that with the detector's own keras-hub code
(``decode_predictions``: ``AnchorGenerator``, ``decode_deltas_to_boxes``, ``NonMaxSuppression``),
so a Python app, the evaluation of a ``.tflite`` and the Keras model share one decoder. The anchors
depend only on the image size; :func:`anchors` gives them (``[anchors, 4]``, ``yxyx`` pixels) for an
app in another language.

**Parity** (:func:`parity`): on the same images, the class scores of every anchor (absolute
difference), and the boxes decoded from the TFLite deltas against the Keras ones (IoU) at the
:data:`PARITY_TOP_K` anchors per image that Keras scores highest: the candidates NMS sees. (IoU over
all anchors says little: an untrained or background anchor may predict a box a fraction of a pixel
wide, whose IoU a rounding-level delta change halves.) The tolerances :data:`TOLERANCES` are per
quantization: fp32 must agree to float rounding; int8 within what 8-bit activations allow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# Per quantization: the lowest box IoU (mean over the top anchors, and the 1st percentile) and the
# highest score difference (mean, and max over anchors x classes) that parity accepts.
TOLERANCES = {
    "fp32": {"mean_iou": 0.999, "p1_iou": 0.99, "mean_score_diff": 1e-4, "max_score_diff": 1e-3},
    "int8": {"mean_iou": 0.9, "p1_iou": 0.6, "mean_score_diff": 0.02, "max_score_diff": 0.2},
}
PARITY_TOP_K = 100  # anchors per image whose boxes parity compares (keras-hub's NMS keeps up to 100)
_EPS = 1e-7


BOXES, SCORES = "box_deltas", "class_scores"  # the raw outputs' names
OUTPUT_KINDS = {BOXES: "box_deltas_center_xywh", SCORES: "class_scores_sigmoid"}  # in the .tflite metadata


def raw_model(detector) -> keras.Model:
    """``detector``'s image -> ``[box_deltas [batch, anchors, 4], class_scores [batch, anchors, classes]]``, its layers shared."""
    out = detector(detector.inputs[0])
    boxes = keras.layers.Identity(name=BOXES)(out["bbox_regression"])
    scores = keras.layers.Activation("sigmoid", name=SCORES)(out["cls_logits"])
    return keras.Model(detector.inputs[0], [boxes, scores], name=f"{detector.name}_raw")


def keras_raw(detector, images: np.ndarray) -> dict[str, np.ndarray]:
    """The raw outputs (``{BOXES, SCORES}``) of the Keras ``detector`` on ``images``."""
    boxes, scores = raw_model(detector)(np.asarray(images, np.float32), training=False)
    return {BOXES: np.asarray(boxes), SCORES: np.asarray(scores)}


def split_raw(raw: Mapping[str, Any]) -> dict[str, tf.Tensor]:
    """Raw outputs ``{BOXES, SCORES}`` as keras-hub's ``{"bbox_regression", "cls_logits"}``."""
    scores = tf.clip_by_value(tf.convert_to_tensor(raw[SCORES], tf.float32), _EPS, 1.0 - _EPS)  # int8 may round to 0 or 1
    return {"bbox_regression": tf.convert_to_tensor(raw[BOXES], tf.float32),
            "cls_logits": tf.math.log(scores) - tf.math.log1p(-scores)}


def decode(detector, raw: Mapping[str, Any], image_shape: Sequence[int]) -> dict[str, np.ndarray]:
    """Detections (``boxes`` yxyx pixels, ``confidence``, ``labels``; -1 padding) of raw outputs, after NMS.

    The app-side step: the detector's own keras-hub decoding and ``NonMaxSuppression``.
    """
    images = tf.zeros((len(raw[BOXES]), *image_shape), tf.float32)
    out = detector.decode_predictions(split_raw(raw), images)
    return {k: np.asarray(v) for k, v in out.items()}


def anchors(detector, image_shape: Sequence[int]) -> np.ndarray:
    """The detector's anchors for ``image_shape`` (``[anchors, 4]``, ``yxyx`` pixels), in the raw output's order."""
    boxes = detector.anchor_generator(tf.zeros((1, *image_shape), tf.float32))
    return np.concatenate([np.asarray(v) for v in boxes.values()], axis=0)


def decoded_boxes(detector, raw: Mapping[str, Any], image_shape: Sequence[int]) -> np.ndarray:
    """Every anchor's box (``[batch, anchors, 4]`` yxyx pixels) decoded from raw deltas, before NMS."""
    return np.asarray(keras.utils.bounding_boxes.decode_deltas_to_boxes(
        anchors=tf.constant(anchors(detector, image_shape)), boxes_delta=split_raw(raw)["bbox_regression"],
        encoded_format="center_xywh", anchor_format=detector.anchor_generator.bounding_box_format,
        box_format=detector.bounding_box_format, image_shape=tuple(image_shape)))


def _area(x: np.ndarray) -> np.ndarray:
    return np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of ``yxyx`` boxes ``a`` and ``b`` (same shape ``[..., 4]``); 1 where both are empty and equal."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    inter_h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_h * inter_w
    union = _area(a) + _area(b) - inter
    same = np.all(np.isclose(a, b), axis=-1)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.where(same, 1.0, 0.0))


def tflite_raw(path_or_bytes: str | bytes, images: np.ndarray, threads: int = 1) -> dict[str, np.ndarray]:
    """The raw outputs (``{BOXES, SCORES}``, float) of a ``.tflite`` from :func:`export_detector` on ``images``.

    ``deploy.tflite_model.TFLiteRunner`` runs it: integer (Edge TPU) input and outputs are quantized /
    dequantized with their tensors' scales, so float and integer I/O give the same kind of result.
    """
    from deploy.errors import DeployError
    from deploy.tflite_model import TFLiteRunner

    runner = TFLiteRunner(path_or_bytes, num_threads=threads)
    if set(runner.output_details) != {BOXES, SCORES}:
        raise DeployError(f"the .tflite has outputs {sorted(runner.output_details)}; a detector export has "
                          f"{[BOXES, SCORES]} (re-export it with python -m cafe_tf.export_detector)")
    return runner(np.asarray(images, np.float32))


def parity(detector, tflite: str | bytes, images: np.ndarray, quant: str) -> dict[str, Any]:
    """Box IoU and score differences of the ``.tflite`` against the Keras detector on ``images``, per anchor.

    Returns the figures, the tolerances of ``quant`` (:data:`TOLERANCES`) and ``ok``.
    """
    images = np.asarray(images, np.float32)
    shape = images.shape[1:]
    reference = keras_raw(detector, images)
    lite = tflite_raw(tflite, images)
    top = np.argsort(-reference[SCORES].max(axis=-1), axis=1)[:, :PARITY_TOP_K]
    keras_boxes = np.take_along_axis(decoded_boxes(detector, reference, shape), top[..., None], axis=1)
    lite_boxes = np.take_along_axis(decoded_boxes(detector, lite, shape), top[..., None], axis=1)
    iou = box_iou(keras_boxes, lite_boxes)
    score_diff = np.abs(reference[SCORES] - lite[SCORES])
    figures = {"mean_iou": float(iou.mean()), "p1_iou": float(np.percentile(iou, 1)),
               "mean_score_diff": float(score_diff.mean()), "max_score_diff": float(score_diff.max())}
    tol = TOLERANCES[quant]
    ok = (figures["mean_iou"] >= tol["mean_iou"] and figures["p1_iou"] >= tol["p1_iou"]
          and figures["mean_score_diff"] <= tol["mean_score_diff"] and figures["max_score_diff"] <= tol["max_score_diff"])
    return {"quant": quant, "images": len(images), **figures, "tolerances": tol, "ok": bool(ok)}


def export_detector(detector, out_path: str, quant: str, calibration: Iterable[Any] | None = None,
                    normalization: Mapping[str, Any] | None = None, label_names: Sequence[str] | None = None,
                    num_calibration: int = 100, io_type: str = "float32"):
    """:func:`raw_model` of ``detector`` through ``deploy.export.export_tflite`` (returns its ``ExportResult``).

    ``calibration``: normalized training images (int8), e.g. the detection pipeline's batches;
    ``io_type``: ``float32``, or ``int8`` / ``uint8`` (int8 only; what the Edge TPU needs).
    """
    from deploy.export import export_tflite

    return export_tflite(raw_model(detector), quant, out_path, representative_data=calibration, io_type=io_type,
                         normalization=normalization, label_names=label_names, num_calibration=num_calibration,
                         source=detector.name, output_kinds=OUTPUT_KINDS)


def evaluate_tflite(detector, tflite: str | bytes, batches: Iterable, num_classes: int) -> dict[str, float]:
    """COCO metrics of a ``.tflite`` from :func:`export_detector` on ``batches``, decoded by :func:`decode` (app-side NMS)."""
    from cafe_tf.detection.evaluate import CocoAccumulator

    acc = CocoAccumulator(num_classes)
    for images, target in batches:
        images = np.asarray(images, np.float32)
        out = decode(detector, tflite_raw(tflite, images), images.shape[1:])
        for j in range(len(images)):
            acc.add(images.shape[1], images.shape[2], np.asarray(target["boxes"][j]), np.asarray(target["labels"][j]),
                    out["boxes"][j], out["confidence"][j], out["labels"][j])
    return acc.result()


def load_detector(path: str):
    """A ``detector.keras`` written by ``python -m cafe_tf.train_detector`` (its backbone class registered first)."""
    from cafe_tf.detection.backbone import backbone_class
    from cafe_tf.detection.model import edge_upsampling

    backbone_class()
    detector = keras.models.load_model(path, compile=False)
    edge_upsampling(detector)
    return detector
