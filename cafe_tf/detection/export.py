"""The detector as a ``.tflite`` (fp32, int8): raw head outputs in the model, decoding and NMS in the app.

**What is in the file.** :func:`raw_model` is the detector up to its heads, with one output
``[batch, anchors, 4 + classes]``: per anchor the 4 box deltas (keras-hub's ``center_xywh``
encoding) then the class scores (the sigmoid of the logits), concatenated so that
``deploy.export`` (one image input, one output) converts it unchanged: int8 full-integer
quantization with float32 input and output, calibrated on training images, the normalization and
the labels in its metadata. Scores rather than logits: the int8 output has one scale for deltas
and scores, and scores in [0, 1] keep that range (and so its step) small.

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


def raw_model(detector) -> keras.Model:
    """``detector``'s image -> ``[batch, anchors, 4 + classes]`` (box deltas, then class scores), its layers shared."""
    out = detector(detector.inputs[0])
    scores = keras.layers.Activation("sigmoid", name="class_scores")(out["cls_logits"])
    raw = keras.layers.Concatenate(axis=-1, name="raw_detections")([out["bbox_regression"], scores])
    return keras.Model(detector.inputs[0], raw, name=f"{detector.name}_raw")


def split_raw(raw: np.ndarray | tf.Tensor) -> dict[str, tf.Tensor]:
    """A raw output ``[batch, anchors, 4 + classes]`` as keras-hub's ``{"bbox_regression", "cls_logits"}``."""
    raw = tf.convert_to_tensor(raw, tf.float32)
    scores = tf.clip_by_value(raw[..., 4:], _EPS, 1.0 - _EPS)  # an int8 output may round to exactly 0 or 1
    return {"bbox_regression": raw[..., :4], "cls_logits": tf.math.log(scores) - tf.math.log1p(-scores)}


def decode(detector, raw: np.ndarray | tf.Tensor, image_shape: Sequence[int]) -> dict[str, np.ndarray]:
    """Detections (``boxes`` yxyx pixels, ``confidence``, ``labels``; -1 padding) of raw outputs, after NMS.

    The app-side step: the detector's own keras-hub decoding and ``NonMaxSuppression``.
    """
    raw = tf.convert_to_tensor(raw, tf.float32)
    images = tf.zeros((raw.shape[0], *image_shape), tf.float32)
    out = detector.decode_predictions(split_raw(raw), images)
    return {k: np.asarray(v) for k, v in out.items()}


def anchors(detector, image_shape: Sequence[int]) -> np.ndarray:
    """The detector's anchors for ``image_shape`` (``[anchors, 4]``, ``yxyx`` pixels), in the raw output's order."""
    boxes = detector.anchor_generator(tf.zeros((1, *image_shape), tf.float32))
    return np.concatenate([np.asarray(v) for v in boxes.values()], axis=0)


def decoded_boxes(detector, raw: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
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


def tflite_raw(path_or_bytes: str | bytes, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """The raw outputs of a ``.tflite`` from :func:`export_detector` on ``images`` (one at a time, float32 I/O)."""
    from deploy.benchmark.host import make_interpreter

    interpreter = make_interpreter(path_or_bytes, threads)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for image in np.asarray(images, np.float32):
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        results.append(np.array(interpreter.get_tensor(out["index"]))[0])
    return np.stack(results)


def parity(detector, tflite: str | bytes, images: np.ndarray, quant: str) -> dict[str, Any]:
    """Box IoU and score differences of the ``.tflite`` against the Keras detector on ``images``, per anchor.

    Returns the figures, the tolerances of ``quant`` (:data:`TOLERANCES`) and ``ok``.
    """
    images = np.asarray(images, np.float32)
    shape = images.shape[1:]
    keras_raw = np.asarray(raw_model(detector)(images, training=False))
    lite_raw = tflite_raw(tflite, images)
    top = np.argsort(-keras_raw[..., 4:].max(axis=-1), axis=1)[:, :PARITY_TOP_K]
    keras_boxes = np.take_along_axis(decoded_boxes(detector, keras_raw, shape), top[..., None], axis=1)
    lite_boxes = np.take_along_axis(decoded_boxes(detector, lite_raw, shape), top[..., None], axis=1)
    iou = box_iou(keras_boxes, lite_boxes)
    score_diff = np.abs(keras_raw[..., 4:] - lite_raw[..., 4:])
    figures = {"mean_iou": float(iou.mean()), "p1_iou": float(np.percentile(iou, 1)),
               "mean_score_diff": float(score_diff.mean()), "max_score_diff": float(score_diff.max())}
    tol = TOLERANCES[quant]
    ok = (figures["mean_iou"] >= tol["mean_iou"] and figures["p1_iou"] >= tol["p1_iou"]
          and figures["mean_score_diff"] <= tol["mean_score_diff"] and figures["max_score_diff"] <= tol["max_score_diff"])
    return {"quant": quant, "images": len(images), **figures, "tolerances": tol, "ok": bool(ok)}


def export_detector(detector, out_path: str, quant: str, calibration: Iterable[Any] | None = None,
                    normalization: Mapping[str, Any] | None = None, label_names: Sequence[str] | None = None,
                    num_calibration: int = 100):
    """:func:`raw_model` of ``detector`` through ``deploy.export.export_tflite`` (returns its ``ExportResult``).

    ``calibration``: normalized training images (int8), e.g. the detection pipeline's batches.
    """
    from deploy.export import export_tflite

    return export_tflite(raw_model(detector), quant, out_path, representative_data=calibration,
                         normalization=normalization, label_names=label_names, num_calibration=num_calibration,
                         source=detector.name)


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

    backbone_class()
    return keras.models.load_model(path, compile=False)
