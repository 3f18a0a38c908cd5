"""Parity check: run a ``.tflite`` with LiteRT beside its Keras model on evaluation batches.

The images are the dataset's evaluation split, normalised like training and resized to the model's
input. Both models see the same float images (int8/uint8 inputs are quantized with the input
tensor's scale and zero point, integer outputs dequantized). Criteria:

* fp32: max |logit difference| <= ``atol`` (1e-4);
* every other quantization (fp16, dynamic, int8, qat): top-1 agreement >= ``min_agreement`` (99%).

Top-1 accuracy of both and the drop (percentage points) are reported when labels are known. The
report is ``verify.json`` (schema ``verify`` v1, written atomically); the program exits 1 when the
check fails (after writing the report).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from deploy.errors import DeployError

SCHEMA = "verify"
VERSION = 1
FP32_ATOL = 1e-4
MIN_AGREEMENT = 0.99
REQUIRED = ("tflite", "quant", "num_images", "max_abs_diff", "top1_agreement", "passed", "criterion")


def detect_quant(tflite_path: str) -> str:
    """The quantization recorded by deploy.export, else guessed from the tensor types."""
    from deploy import tflite_model

    metadata = tflite_model.read_metadata(tflite_path)
    if metadata and metadata.get("quant"):
        return str(metadata["quant"])
    summary = tflite_model.summarize(tflite_path)
    activations = {t.dtype for t in summary.tensors if not t.is_constant}
    constants = {t.dtype for t in summary.tensors if t.is_constant}
    if activations <= {"int8", "uint8", "int32"}:
        return "int8"
    if "float16" in constants:
        return "fp16"
    if "int8" in constants:
        return "dynamic"
    return "fp32"


def compare(
    keras_logits: np.ndarray,
    tflite_logits: np.ndarray,
    labels: np.ndarray | None,
    quant: str,
    atol: float = FP32_ATOL,
    min_agreement: float = MIN_AGREEMENT,
) -> dict[str, Any]:
    """The parity metrics and verdict of two sets of logits (N, classes)."""
    if keras_logits.shape != tflite_logits.shape:
        raise DeployError(f"Keras logits {keras_logits.shape} and TFLite logits {tflite_logits.shape} differ in shape")
    diff = np.abs(keras_logits.astype(np.float64) - tflite_logits.astype(np.float64))
    keras_top1 = keras_logits.argmax(axis=-1)
    tflite_top1 = tflite_logits.argmax(axis=-1)
    agreement = float(np.mean(keras_top1 == tflite_top1))
    report: dict[str, Any] = {
        "quant": quant,
        "num_images": int(len(keras_logits)),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "top1_agreement": agreement,
        "keras_accuracy": None,
        "tflite_accuracy": None,
        "accuracy_drop_pt": None,
    }
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        keras_acc = float(np.mean(keras_top1 == labels))
        tflite_acc = float(np.mean(tflite_top1 == labels))
        report.update(keras_accuracy=keras_acc, tflite_accuracy=tflite_acc, accuracy_drop_pt=100.0 * (keras_acc - tflite_acc))
    if quant == "fp32":
        report["criterion"] = f"max_abs_diff <= {atol:g}"
        report["passed"] = report["max_abs_diff"] <= atol
    else:
        report["criterion"] = f"top1_agreement >= {min_agreement:g}"
        report["passed"] = agreement >= min_agreement
    return report


def verify(
    model: Any,
    tflite_path: str,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    quant: str | None = None,
    batch_size: int = 32,
    atol: float = FP32_ATOL,
    min_agreement: float = MIN_AGREEMENT,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Compares ``model`` (Keras) and ``tflite_path`` (LiteRT) on ``images``; returns the report."""
    from deploy import tflite_model

    if len(images) == 0:
        raise DeployError("verification needs at least one image")
    runner = tflite_model.TFLiteRunner(tflite_path, num_threads=num_threads)
    want_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    have_shape = tuple(runner.input_shape[1:])
    if want_shape != have_shape:
        raise DeployError(f"the Keras model takes {want_shape} but {tflite_path!r} takes {have_shape}; are they the same model?")
    quant = quant or detect_quant(tflite_path)
    keras_logits, tflite_logits = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        keras_logits.append(np.asarray(model(batch, training=False)))
        outputs = runner(batch)
        tflite_logits.append(next(iter(outputs.values())))
    report = compare(np.concatenate(keras_logits), np.concatenate(tflite_logits), labels, quant, atol, min_agreement)
    report.update(tflite=os.path.abspath(tflite_path), batch_size=batch_size, signature=runner.signature)
    return report


def write_report(path: str, report: Mapping[str, Any]) -> None:
    """Writes ``verify.json`` atomically."""
    from cafe_tf import io as cafe_io

    cafe_io.write_artifact(path, SCHEMA, VERSION, report)


def _validate(obj: Mapping[str, Any]) -> None:
    if not isinstance(obj["passed"], bool):
        raise ValueError("passed must be true or false")
    if not 0.0 <= float(obj["top1_agreement"]) <= 1.0:
        raise ValueError(f"top1_agreement must lie in [0, 1], got {obj['top1_agreement']!r}")
    if float(obj["max_abs_diff"]) < 0 or int(obj["num_images"]) < 1:
        raise ValueError("max_abs_diff must be >= 0 and num_images >= 1")


def read_report(path: str) -> dict[str, Any]:
    """Reads and validates a ``verify.json``."""
    from cafe_tf import io as cafe_io

    return cafe_io.read_artifact(path, SCHEMA, (VERSION,), REQUIRED, _validate)


if __name__ == "__main__":  # `python -m deploy.verify`: the program is deploy/verify_main.py
    from cafe_tf.programs import forward_to

    forward_to("deploy.verify_main")
