"""COCO mAP of a detector with pycocotools, the reference implementation, on decoded predictions after NMS.

:func:`coco_map` takes ground truth and detections as plain arrays (boxes in ``yxyx`` pixels, the
pipeline's format) and returns pycocotools' twelve numbers under their names: ``AP`` (IoU
0.50:0.95), ``AP50``, ``AP75``, ``AP_small`` / ``AP_medium`` / ``AP_large`` (areas below 32^2,
up to 96^2, above, in the evaluated image's pixels), and the ``AR`` figures. A figure pycocotools
cannot compute (no ground truth of that size) is -1, as pycocotools reports it.

:func:`evaluate_detector` runs a keras-hub detector over a pipeline, decodes
with the detector's own ``NonMaxSuppression`` (``predict_step``) and scores the result.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

METRICS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
           "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """``yxyx`` boxes as COCO's ``[x, y, width, height]``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], axis=1)


class CocoAccumulator:
    """Collects ground truth and detections image by image, then scores them with pycocotools."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []

    def add(self, height: int, width: int, gt_boxes: np.ndarray, gt_labels: np.ndarray,
            boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> None:
        """One image: its ground truth and its detections (rows with label < 0 are padding and skipped)."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": int(height), "width": int(width)})
        gt_labels = np.asarray(gt_labels).reshape(-1)
        for box, label in zip(_xywh(gt_boxes), gt_labels):
            if label < 0:
                continue
            self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id,
                                     "category_id": int(label) + 1, "bbox": [float(v) for v in box],
                                     "area": float(box[2] * box[3]), "iscrowd": 0})
        labels = np.asarray(labels).reshape(-1)
        for box, score, label in zip(_xywh(boxes), np.asarray(scores).reshape(-1), labels):
            if label < 0:
                continue
            self.detections.append({"image_id": image_id, "category_id": int(label) + 1,
                                    "bbox": [float(v) for v in box], "score": float(score)})

    def result(self) -> dict[str, float]:
        """pycocotools' summary as {metric name: value} (:data:`METRICS`)."""
        return coco_summary(self.images, self.annotations, self.detections, self.num_classes)


def coco_summary(images: Sequence[dict], annotations: Sequence[dict], detections: Sequence[dict],
                 num_classes: int) -> dict[str, float]:
    """pycocotools' ``COCOeval`` (bbox) summary of COCO-format ground truth and detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not images:
        raise ValueError("no images to evaluate; check the eval split and max_eval_examples")
    gt = COCO()
    gt.dataset = {"images": list(images), "annotations": list(annotations),
                  "categories": [{"id": i + 1, "name": str(i)} for i in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
        if not detections:
            return {k: 0.0 for k in METRICS}
        dt = gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(METRICS, ev.stats)}


def coco_map(gt: Iterable[tuple[np.ndarray, np.ndarray]], predictions: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
             num_classes: int, image_size: tuple[int, int]) -> dict[str, float]:
    """COCO metrics of per-image ``(gt boxes, gt labels)`` against ``(boxes, scores, labels)`` (``yxyx`` pixels)."""
    acc = CocoAccumulator(num_classes)
    for (gb, gl), (pb, ps, pl) in zip(gt, predictions):
        acc.add(image_size[0], image_size[1], gb, gl, pb, ps, pl)
    return acc.result()


def evaluate_detector(model, batches: Iterable, num_classes: int, max_batches: int | None = None) -> dict[str, float]:
    """COCO metrics of keras-hub detector ``model`` on ``batches`` of ``(images, {"boxes", "labels"})``.

    Predictions are decoded and NMS'd by the detector's own ``decode_predictions`` (anchors, box
    deltas, then its ``prediction_decoder``: keras-hub's ``NonMaxSuppression``).
    """
    import tensorflow as tf

    predict = tf.function(lambda x: model.decode_predictions(model(x, training=False), x))
    acc = CocoAccumulator(num_classes)
    for i, (images, target) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        out = predict(images)
        h, w = int(images.shape[1]), int(images.shape[2])
        for j in range(int(images.shape[0])):
            acc.add(h, w, np.asarray(target["boxes"][j]), np.asarray(target["labels"][j]),
                    np.asarray(out["boxes"][j]), np.asarray(out["confidence"][j]), np.asarray(out["labels"][j]))
    return acc.result()
