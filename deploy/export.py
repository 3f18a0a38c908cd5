"""Export a plain Keras 3 image classifier to ``.tflite``: fp32, fp16, dynamic-range, full int8, QAT.

:func:`export_tflite` refuses a model with an all-zero filter before integer quantization, converts
it through a SavedModel with a fixed input signature (static batch of 1 by default), checks that
the result loads and runs in LiteRT, records the normalisation and labels as the metadata entry
``cafe_tf.metadata`` and writes the file atomically. :func:`load_widths_checkpoint` rebuilds a
searched network from its widths.json and training checkpoint. Why it converts this way:
docs/deploy.md.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from deploy.errors import DeployError, UsageError

QUANT_MODES = ("fp32", "fp16", "dynamic", "int8", "qat")
IO_TYPES = ("float32", "int8", "uint8")
INTEGER_MODES = ("dynamic", "int8", "qat")
SIGNATURE = "serving_default"


@dataclasses.dataclass(frozen=True)
class ZeroChannels:
    """Output channels of one layer whose weights (or BN gamma) are all zero."""

    layer: str
    kind: str
    channels: tuple[int, ...]

    def describe(self) -> str:
        shown = ", ".join(str(c) for c in self.channels[:10]) + (", ..." if len(self.channels) > 10 else "")
        return f"layer {self.layer!r} ({self.kind}) output channel(s) [{shown}]"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_tflite` wrote."""

    path: str
    quant: str
    io_type: str
    batch_size: int | None
    size_bytes: int
    op_versions: Mapping[str, list[int]]
    metadata: Mapping[str, Any]
    calibration_images: int = 0
    qat_losses: Mapping[str, float] | None = None


def find_zero_channels(model: Any) -> list[ZeroChannels]:
    """Layers with all-zero output channels: their per-channel quantization scale would be 0 (each
    layer's rule in ``cafe_tf.layers`` says which weights become per-channel scales)."""
    from cafe_tf import layers as rules
    from cafe_tf.graph import flatten_model

    found = []
    for layer in flatten_model(model).layers:
        rule = rules.resolve(layer)
        weights = layer.get_weights()
        scales = rule.channel_scales(layer, weights) if rule is not None and weights else None
        if scales is None:
            continue
        zero = np.flatnonzero(scales == 0)
        if zero.size:
            found.append(ZeroChannels(layer.name, type(layer).__name__, tuple(int(c) for c in zero)))
    return found


def check_quantizable(model: Any) -> None:
    """Raises :class:`DeployError` naming every layer and channel whose weight scale would be zero."""
    zero = find_zero_channels(model)
    if zero:
        listing = "; ".join(z.describe() for z in zero)
        raise DeployError(
            f"cannot quantize {model.name!r}: {listing} {'is' if len(zero) == 1 else 'are'} all zero, so the "
            "per-channel weight scale would be 0 (an all-zero filter left by pruning). Remove those channels "
            "first (physical pruning: cafe_tf.surgery.extract / the Dagger prune stage), or export without "
            "integer quantization (--quant fp32 or fp16)."
        )


def _input_spec(model: Any, image: bool = True) -> tuple[str, tuple[int, ...]]:
    if len(model.inputs) != 1:
        raise DeployError(f"export needs a model with one image input; {model.name!r} has {len(model.inputs)} inputs")
    shape = tuple(model.inputs[0].shape)
    if (image and len(shape) != 4) or len(shape) < 2 or any(d is None for d in shape[1:]):
        raise DeployError(
            f"export needs an image input of static shape (batch, height, width, channels); "
            f"{model.name!r} takes {shape}"
        )
    return model.inputs[0].name, tuple(int(d) for d in shape[1:])  # type: ignore[return-value]


def _output_names(model: Any) -> list[str]:
    """The signature's output names: the layer that makes each output (``logits`` for one output without one).

    A classifier has one output (its logits); a model with several (a detector's box deltas and
    class scores) keeps them apart, so int8 quantization gives each its own scale. The names must
    differ: name the output layers.
    """
    if not model.outputs:
        raise DeployError(f"export needs a model with at least one output; {model.name!r} has none")
    names = []
    for i, output in enumerate(model.outputs):
        history = getattr(output, "_keras_history", None)
        names.append(history.operation.name if history is not None else ("logits" if len(model.outputs) == 1 else f"output_{i}"))
    if len(set(names)) != len(names):
        raise DeployError(f"the outputs of {model.name!r} come from layers {names}; a model with several outputs "
                          "needs a distinct output layer for each (e.g. keras.layers.Identity(name=...))")
    return names


def convert_keras(
    model: Any,
    quant: str,
    batch_size: int | None = 1,
    calibration: np.ndarray | None = None,
    io_type: str = "float32",
    image_input: bool = True,
) -> bytes:
    """The TFLite flatbuffer of ``model`` for ``quant`` in fp32/fp16/dynamic/int8 (not qat).

    ``image_input=False`` accepts any static input shape (one-layer models of latency tables).
    """
    import keras
    import tensorflow as tf

    from deploy.representative import representative_dataset

    input_name, input_shape = _input_spec(model, image=image_input)
    output_names = _output_names(model)
    spec = tf.TensorSpec((batch_size, *input_shape), tf.float32, name=input_name)

    def endpoint(x):
        out = model(x, training=False)
        return dict(zip(output_names, out if len(output_names) > 1 else [out]))

    with tempfile.TemporaryDirectory() as folder:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE, endpoint, input_signature=[spec])
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SIGNATURE])
        if quant != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quant == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        elif quant == "int8":
            if calibration is None or not len(calibration):
                raise DeployError("int8 quantization needs representative images (pass a dataset name or images)")
            converter.representative_dataset = representative_dataset(calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if io_type != "float32":
                converter.inference_input_type = {"int8": tf.int8, "uint8": tf.uint8}[io_type]
                converter.inference_output_type = converter.inference_input_type
        try:
            return bytes(converter.convert())
        except Exception as e:  # ConverterError and friends: keep the first line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DeployError(f"the TFLite converter failed on {model.name!r} ({quant}): {first}") from None


def _tensor_record(summary, index: int, name: str) -> dict[str, Any]:
    tensor = summary.tensors[index]
    quantization = None
    if tensor.num_scales == 1 and tensor.dtype in ("int8", "uint8"):
        quantization = {"scale": tensor.scales[0], "zero_point": tensor.zero_points[0] if tensor.zero_points else 0}
    return {
        "name": name,
        "shape": list(tensor.shape_signature),
        "dtype": tensor.dtype,
        "quantization": quantization,
    }


def build_metadata(
    flatbuffer: bytes,
    quant: str,
    io_type: str,
    normalization: Mapping[str, Any] | None,
    label_names: Sequence[str] | None = None,
    source: str | None = None,
    calibration_images: int = 0,
    output_kinds: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON document :func:`export_tflite` stores in the model (see the module docstring).

    ``output_kinds``: what each output holds, by output name (default: ``logits``).
    """
    import tensorflow as tf

    from deploy import tflite_model

    summary = tflite_model.summarize(flatbuffer)
    signature = summary.signatures.get(SIGNATURE, {"inputs": {}, "outputs": {}})
    inputs = [_tensor_record(summary, i, n) | {"layout": "NHWC"} for n, i in signature["inputs"].items()]
    kinds = dict(output_kinds or {})
    outputs = [_tensor_record(summary, i, n) | {"kind": kinds.get(n, "logits")} for n, i in signature["outputs"].items()]
    if normalization is not None:
        normalization = {
            "scale": float(normalization.get("scale", 1.0 / 255.0)),
            "mean": [float(v) for v in normalization["mean"]],
            "std": [float(v) for v in normalization["std"]],
            **({"dataset": normalization["dataset"]} if normalization.get("dataset") else {}),
            **({"input_scaling": normalization["input_scaling"]} if normalization.get("input_scaling") else {}),
            "formula": "x = (pixel * scale - mean) / std, pixels in [0, 255], per channel (NHWC)",
        }
    return {
        "producer": "cafe_tf deploy.export",
        "signature": SIGNATURE,
        "quant": quant,
        "io_type": io_type,
        "inputs": inputs,
        "outputs": outputs,
        "normalization": normalization,
        "label_names": list(label_names) if label_names else None,
        "source_model": source,
        "calibration_images": int(calibration_images),
        "converter": {"tensorflow": tf.__version__},
    }


def export_tflite(
    model: Any,
    quant: str,
    out_path: str | os.PathLike,
    representative_data: str | Iterable[Any] | None = None,
    io_type: str = "float32",
    batch_size: int | None = 1,
    normalization: Mapping[str, Any] | None = None,
    num_calibration: int = 200,
    data_dir: str | None = None,
    label_names: Sequence[str] | None = None,
    qat_steps: int = 100,
    qat_batch_size: int = 32,
    qat_learning_rate: float = 1e-5,
    qat_labels: np.ndarray | None = None,
    source: str | None = None,
    input_scaling: str = "mean_std",
    output_kinds: Mapping[str, str] | None = None,
) -> ExportResult:
    """Converts the plain Keras 3 classifier ``model`` to ``out_path`` (``.tflite``) with quantization ``quant``.

    ``representative_data`` (int8 and qat): a dataset name (``"fashion_mnist"``, read through
    cafe_tf.data and normalised like training) or any iterable of float images / batches /
    ``(image, label)`` pairs, resized to the model's input. ``normalization`` ({"mean", "std",
    "scale"}) is recorded in the metadata; a dataset name supplies it when not given, scaled as
    ``input_scaling`` says (``config.model.input_scaling``: mean_std, unit, raw or model).
    A model with several outputs (e.g. a detector's box deltas and class scores) keeps them as
    separate outputs named by their layers, each quantized with its own scale; ``output_kinds``
    records what each holds in the metadata (default ``logits``). ``qat`` takes one-output classifiers only.

    Raises:
      UsageError: an invalid ``quant`` / ``io_type`` / ``batch_size`` combination.
      DeployError: a zero-scale channel, a converter failure, or a result LiteRT cannot load.
    """
    from cafe_tf import io as cafe_io
    from deploy import tflite_model

    if quant not in QUANT_MODES:
        raise UsageError(f"quant must be one of {list(QUANT_MODES)}, got {quant!r}")
    if io_type not in IO_TYPES:
        raise UsageError(f"io_type must be one of {list(IO_TYPES)}, got {io_type!r}")
    if io_type != "float32" and quant not in ("int8", "qat"):
        raise UsageError(f"io_type {io_type!r} needs quant 'int8' or 'qat'; {quant} models keep float32 inputs and outputs")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch_size must be >= 1 (static) or None (dynamic), got {batch_size!r}")
    if not os.fspath(out_path).endswith(".tflite"):
        raise UsageError(f"the output path must end with .tflite, got {os.fspath(out_path)!r}")
    _, input_shape = _input_spec(model)
    if quant == "qat" and len(model.outputs) != 1:
        raise UsageError(f"quant 'qat' trains a classifier (one logits output); {model.name!r} has {len(model.outputs)} "
                         "outputs: use --quant int8")
    if quant in INTEGER_MODES:
        check_quantizable(model)

    calibration = None
    labels = qat_labels
    if quant in ("int8", "qat"):
        if representative_data is None:
            raise UsageError(
                f"--quant {quant} needs representative data: a dataset name (e.g. 'fashion_mnist') or an iterable of images"
            )
        calibration, labels_found, data_normalization = _calibration_images(
            representative_data, input_shape, num_calibration, data_dir, input_scaling
        )
        if labels is None:
            labels = labels_found
        if label_names is None and data_normalization:
            label_names = data_normalization.get("label_names")
        if normalization is None:
            normalization = data_normalization
    elif normalization is None and isinstance(representative_data, str):
        from cafe_tf import data

        if data.is_builtin(representative_data):
            mean, std = data.normalization(representative_data)
        else:  # folder: / tfds: data: its training split's statistics, as training computed them
            info = data.load(representative_data, "train", data_dir=data_dir)[1]
            mean, std = info.mean, info.std
        normalization = dict(data.scaled_normalization(mean, std, input_scaling), dataset=representative_data)

    qat_losses = None
    if quant == "qat":
        from deploy import qat

        flatbuffer, qat_losses = qat.qat_tflite(
            model,
            calibration,
            labels,
            steps=qat_steps,
            batch_size=qat_batch_size,
            learning_rate=qat_learning_rate,
            io_type=io_type,
            export_batch_size=batch_size,
        )
    else:
        flatbuffer = convert_keras(model, quant, batch_size=batch_size, calibration=calibration, io_type=io_type)

    metadata = build_metadata(
        flatbuffer,
        quant,
        io_type,
        normalization,
        label_names=label_names,
        source=source or model.name,
        calibration_images=0 if calibration is None else len(calibration),
        output_kinds=output_kinds,
    )
    flatbuffer = tflite_model.add_metadata(flatbuffer, metadata)
    tflite_model.check_loads(flatbuffer, os.fspath(out_path))
    _smoke_run(flatbuffer, input_shape, os.fspath(out_path))
    cafe_io.write_bytes(out_path, flatbuffer)
    summary = tflite_model.summarize(flatbuffer)
    return ExportResult(
        path=os.fspath(out_path),
        quant=quant,
        io_type=io_type,
        batch_size=batch_size,
        size_bytes=len(flatbuffer),
        op_versions=summary.op_versions(),
        metadata=metadata,
        calibration_images=0 if calibration is None else len(calibration),
        qat_losses=qat_losses,
    )


def _calibration_images(source, input_shape, num_images, data_dir, input_scaling: str = "mean_std"):
    from deploy import representative

    if isinstance(source, str):
        images, labels, normalization = representative.dataset_images(
            source, input_shape, num_images, split="train", data_dir=data_dir, input_scaling=input_scaling
        )
        return images, labels, normalization
    images, labels = representative.collect_images(source, input_shape, num_images)
    return images, labels, None


def _smoke_run(flatbuffer: bytes, input_shape: Sequence[int], what: str) -> None:
    from deploy import tflite_model

    runner = tflite_model.TFLiteRunner(flatbuffer)
    x = np.zeros((runner.static_batch or 1, *input_shape), np.float32)
    try:
        out = runner(x)
    except (ValueError, RuntimeError) as e:
        raise DeployError(f"the converted model {what!r} does not run in LiteRT: {str(e).splitlines()[0]}") from None
    for name, value in out.items():
        if not np.all(np.isfinite(value)):
            raise DeployError(f"the converted model {what!r} outputs non-finite values in {name!r}")


def load_keras_model(path: str) -> Any:
    """Loads a ``.keras`` file (compile=False), turning load failures into :class:`DeployError`."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeployError(f"cannot load the Keras model {path!r}: {first}") from None


_DATA_SHARD = re.compile(r"\.data-\d+-of-\d+$")


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file or folder, or a checkpoint prefix (a data shard or ``.index`` names one too)."""
    path = os.path.expanduser(os.fspath(path))
    return os.path.exists(path) or os.path.isfile(_DATA_SHARD.sub("", path) + ".index")
_SHAPE_MISMATCH = re.compile(
    r"incompatible tensor with shape (\([^)]*\)|\[[^\]]*\]) when attempting to restore variable with shape "
    r"(\([^)]*\)|\[[^\]]*\]) and name (\S+?)(?::0)?\.?$"
)


def resolve_checkpoint(path: str | os.PathLike) -> str:
    """The checkpoint prefix ``path`` names: a prefix, a checkpoints folder, or a `cafe-tf train` workdir (latest).

    Raises:
      DeployError: nothing at ``path``, or a folder holding no checkpoint (naming the path).
    """
    import tensorflow as tf

    path = os.path.expanduser(os.fspath(path)).rstrip(os.sep) or os.sep
    prefix = _DATA_SHARD.sub("", path[: -len(".index")] if path.endswith(".index") else path)
    if os.path.isfile(prefix + ".index"):
        return prefix
    if os.path.isdir(path):
        for folder in (path, os.path.join(path, "checkpoints")):
            latest = tf.train.latest_checkpoint(folder) if os.path.isdir(folder) else None
            if latest:
                return latest
        raise DeployError(
            f"no checkpoint in {path!r}: pass the `cafe-tf train` workdir (holding checkpoints/), its checkpoints "
            f"folder, or one checkpoint prefix such as {os.path.join(path, 'checkpoints', 'ckpt-100')}"
        )
    raise DeployError(f"checkpoint {path!r} does not exist (neither a folder nor a checkpoint prefix with {prefix}.index)")


def load_widths_checkpoint(widths_path: str | os.PathLike, checkpoint: str | os.PathLike) -> Any:
    """The slim model of ``widths_path`` (rebuilt as `cafe-tf train` built it) with the weights of ``checkpoint``.

    Raises:
      DeployError: a missing checkpoint, or one of other widths / another model (naming the variable and
        both shapes where the shapes differ). ArtifactError / ValueError: an invalid widths.json.
    """
    import tensorflow as tf

    from cafe_tf.training.subnet import build_subnet

    prefix = resolve_checkpoint(checkpoint)
    widths_path = os.fspath(widths_path)
    model = build_subnet(widths_path)
    checkpoint_ = tf.train.Checkpoint(model=model)
    retry = "pass the checkpoint that `cafe-tf train --widths` wrote for these widths"
    try:
        status = checkpoint_.restore(prefix)
        status.expect_partial()  # training also saved the optimizer, step and RNG states: not needed here
        status.assert_existing_objects_matched()
        return model
    except ValueError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        mismatch = _SHAPE_MISMATCH.search(first)
        if mismatch:
            saved, built, name = mismatch.groups()
            problem = (f"checkpoint {prefix!r} does not match {widths_path!r}: variable {name!r} has shape {built} in "
                       f"the model built from the widths but {saved} in the checkpoint; {retry}")
        else:
            problem = f"cannot restore {prefix!r} into the model of {widths_path!r}: {first}"
    except AssertionError as e:
        unbound = re.search(r"Found (\d+) Python objects", str(e))
        what = f"{unbound.group(1)} of the model's variables have no value in it" if unbound else "its variables do not match"
        problem = f"checkpoint {prefix!r} does not hold the weights of the model of {widths_path!r} ({what}); {retry}"
    except tf.errors.OpError as e:
        problem = f"cannot read checkpoint {prefix!r}: {e.message.splitlines()[0]}"
    # A failed restore leaves TF's restore bookkeeping alive; collected later it logs a page of "unrestored
    # value" warnings under the one-line error. Collect it now, quietly.
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")
    try:
        del checkpoint_, model
        gc.collect()
    finally:
        logger.setLevel(level)
    raise DeployError(problem)


if __name__ == "__main__":  # `python -m deploy.export`: the program is deploy/export_main.py
    from cafe_tf.programs import forward_to

    forward_to("deploy.export_main")
