"""Quantization-aware training through tensorflow-model-optimization: the only tf-keras code in cafe-tf.

tfmot's ``quantize_model`` only takes tf-keras (Keras 2) models, so this adapter:

1. rebuilds the plain functional Keras 3 model in tf-keras, layer by layer from the Keras 3 layer
   configs and the functional graph's inbound nodes (:func:`to_tf_keras`), copies every layer's
   weights and checks the two models agree on a random batch;
2. wraps it with ``tfmot.quantization.keras.quantize_model`` (fake-quant nodes) and fine-tunes it for
   N steps (:func:`finetune`) on labelled images, or, without labels, on the float model's own
   softmax outputs (self-distillation). BatchNormalization stays frozen in inference mode: a few
   hundred small-batch steps would otherwise move its statistics more than they teach the weights;
3. converts it to a full-integer TFLite model with a fixed input signature (:func:`convert`).

Importing tfmot sets ``TF_USE_LEGACY_KERAS=1`` in the process environment (its compat module does
so to pick tf-keras). Both imports happen lazily inside this module and the variable is restored
right after, so Keras 3 code running later in the same process keeps working (tested in a
subprocess in tests/test_deploy_qat.py).

Initializers, regularizers and constraints of the Keras 3 layers are not carried over: weights are
copied, and the short fine-tune does not use weight decay.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from deploy.errors import DeployError

# Base-layer arguments every tf-keras layer accepts through **kwargs.
_BASE_KWARGS = ("name", "trainable", "dtype")
# Call arguments recorded by Keras 3 that tf-keras layers either do not take or must not be fixed.
_DROPPED_CALL_KWARGS = ("mask", "training")


@contextlib.contextmanager
def _legacy_keras_env() -> Iterator[None]:
    previous = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = previous


def _imports() -> tuple[Any, Any]:
    """``(tf_keras, tfmot)``, imported without leaving ``TF_USE_LEGACY_KERAS`` set behind."""
    with _legacy_keras_env():
        import tensorflow_model_optimization as tfmot
        import tf_keras
    return tf_keras, tfmot


def _layer_config(layer_name: str, class_name: str, config: dict[str, Any], tfk_cls) -> dict[str, Any]:
    config = dict(config)
    dtype = config.get("dtype")
    if isinstance(dtype, dict):  # Keras 3 DTypePolicy -> its name ("float32", "mixed_float16")
        config["dtype"] = dtype.get("config", {}).get("name", "float32")
    accepted = set(_BASE_KWARGS)
    for cls in tfk_cls.__mro__:  # subclasses pass **kwargs on to their bases' __init__
        if "__init__" in vars(cls):
            accepted |= set(inspect.signature(cls.__init__).parameters)
    out = {}
    for key, value in config.items():
        if key.endswith(("_initializer", "_regularizer", "_constraint")):
            continue  # weights are copied; see the module docstring
        if key in accepted:
            out[key] = value
        elif value not in (None, 0, False, [], {}):
            raise DeployError(
                f"layer {layer_name!r} ({class_name}) sets {key}={value!r}, which tf-keras {class_name} does not "
                "support; QAT needs a model of standard layers (export with --quant int8 instead)"
            )
    return out


def to_tf_keras(model: keras.Model) -> Any:
    """The plain functional Keras 3 ``model`` rebuilt in tf-keras with the same layer names and weights.

    Raises:
      DeployError: a layer tf-keras does not have (custom layers, nested models), or outputs that
        differ after the copy.
    """
    tf_keras, _ = _imports()
    if not isinstance(model, keras.Model) or not hasattr(model, "get_config"):
        raise DeployError(f"QAT needs a functional Keras 3 model, got {type(model).__name__}")
    try:
        config = model.get_config()
    except NotImplementedError:
        config = None
    if not config or "layers" not in config:
        raise DeployError(
            f"QAT needs a functional Keras model; {model.name!r} is {type(model).__name__} without a functional config"
        )
    tensors: dict[tuple[str, int], Any] = {}

    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            name, node, index = value["config"]["keras_history"]
            out = tensors[(name, node)]
            return out[index] if isinstance(out, (list, tuple)) else out
        if isinstance(value, (list, tuple)):
            return [resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    for spec in config["layers"]:
        class_name, layer_config = spec["class_name"], spec["config"]
        name = layer_config["name"]
        if class_name == "InputLayer":
            shape = layer_config.get("batch_shape") or layer_config.get("batch_input_shape")
            tensors[(name, 0)] = tf_keras.Input(batch_shape=tuple(shape), name=name, dtype=layer_config.get("dtype"))
            continue
        tfk_cls = getattr(tf_keras.layers, class_name, None)
        if tfk_cls is None or spec.get("module", "keras.layers") not in ("keras.layers", None):
            raise DeployError(
                f"layer {name!r} is a {class_name} ({spec.get('module')}), which has no tf-keras equivalent; "
                "QAT supports models of standard keras.layers (Conv2D, DepthwiseConv2D, BatchNormalization, "
                "ReLU, Add, pooling, Dense, ...)"
            )
        layer = tfk_cls.from_config(_layer_config(name, class_name, layer_config, tfk_cls))
        for index, node in enumerate(spec["inbound_nodes"]):
            args = resolve(list(node["args"]))
            kwargs = {k: resolve(v) for k, v in node["kwargs"].items() if k not in _DROPPED_CALL_KWARGS}
            tensors[(name, index)] = layer(*args, **kwargs)

    def endpoints(entries) -> list[Any]:
        if entries and isinstance(entries[0], str):
            entries = [entries]
        return [resolve({"class_name": "__keras_tensor__", "config": {"keras_history": e}}) for e in entries]

    inputs, outputs = endpoints(config["input_layers"]), endpoints(config["output_layers"])
    rebuilt = tf_keras.Model(
        inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs, name=model.name
    )
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            rebuilt.get_layer(layer.name).set_weights(weights)
    _check_same_outputs(model, rebuilt)
    return rebuilt


def _check_same_outputs(model: keras.Model, rebuilt: Any) -> None:
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    want = np.asarray(model(x, training=False))
    got = np.asarray(rebuilt(x, training=False))
    diff = float(np.max(np.abs(want - got)))
    if diff > 1e-4 * max(1.0, float(np.max(np.abs(want)))):
        raise DeployError(f"the tf-keras rebuild of {model.name!r} differs from the Keras 3 model by {diff:.3g}")


def quantize_aware(model: keras.Model, freeze_batchnorm: bool = True) -> Any:
    """The tf-keras rebuild of ``model`` wrapped with tfmot's default 8-bit QAT (fake-quant) scheme."""
    tf_keras, tfmot = _imports()
    rebuilt = to_tf_keras(model)
    if freeze_batchnorm:
        for layer in rebuilt.layers:
            if isinstance(layer, tf_keras.layers.BatchNormalization):
                layer.trainable = False
    try:
        with _legacy_keras_env():
            return tfmot.quantization.keras.quantize_model(rebuilt)
    except (ValueError, RuntimeError, TypeError) as e:
        raise DeployError(f"tfmot cannot quantize {model.name!r}: {str(e).splitlines()[0]}") from None


def finetune(
    qat_model: Any,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    teacher_logits: np.ndarray | None = None,
    steps: int = 100,
    batch_size: int = 32,
    learning_rate: float = 1e-5,
    seed: int = 0,
) -> dict[str, float]:
    """Fine-tunes ``qat_model`` for ``steps`` steps; returns the first and last training loss.

    Trains on ``labels`` (sparse cross-entropy on logits) or, without them, on ``teacher_logits``
    (cross-entropy to the float model's softmax).
    """
    tf_keras, _ = _imports()
    if steps < 0:
        raise DeployError(f"QAT steps must be >= 0, got {steps!r}")
    if steps == 0:
        return {"first_loss": float("nan"), "last_loss": float("nan")}
    if labels is None and teacher_logits is None:
        raise DeployError("QAT fine-tuning needs labels or the float model's logits")
    if labels is not None:
        targets = np.asarray(labels).astype(np.int64).reshape(len(images))
        loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        targets = tf.nn.softmax(np.asarray(teacher_logits, np.float32)).numpy()
        loss = tf_keras.losses.CategoricalCrossentropy(from_logits=True)
    ds = (
        tf.data.Dataset.from_tensor_slices((images.astype(np.float32), targets))
        .shuffle(len(images), seed=seed)
        .repeat()
        .batch(min(batch_size, len(images)), drop_remainder=True)
    )
    qat_model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss=loss)
    history = qat_model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    losses = history.history.get("loss", [float("nan")])
    return {"first_loss": float(losses[0]), "last_loss": float(losses[-1])}


def convert(
    qat_model: Any,
    input_shape: Sequence[int],
    io_type: str = "int8",
    batch_size: int | None = 1,
    input_name: str = "image",
    output_name: str = "logits",
    signature_name: str = "serving_default",
) -> bytes:
    """The full-integer TFLite flatbuffer of a fine-tuned QAT model with a named, fixed-shape signature."""
    types = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}
    if io_type not in types:
        raise DeployError(f"io_type must be one of {sorted(types)}, got {io_type!r}")
    spec = tf.TensorSpec((batch_size, *[int(d) for d in input_shape]), tf.float32, name=input_name)

    @tf.function(input_signature=[spec])
    def serve(x):
        return {output_name: qat_model(x, training=False)}

    with tempfile.TemporaryDirectory() as folder:
        tf.saved_model.save(qat_model, folder, signatures={signature_name: serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[signature_name])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if io_type != "float32":
            converter.inference_input_type = types[io_type]
            converter.inference_output_type = types[io_type]
        try:
            return bytes(converter.convert())
        except Exception as e:
            raise DeployError(f"the TFLite converter failed on the QAT model: {str(e).strip().splitlines()[0]}") from None


def qat_tflite(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    steps: int = 100,
    batch_size: int = 32,
    learning_rate: float = 1e-5,
    io_type: str = "int8",
    export_batch_size: int | None = 1,
) -> tuple[bytes, dict[str, float]]:
    """QAT end to end: rebuild, wrap, fine-tune ``steps`` steps, convert. Returns the flatbuffer and the losses."""
    qat_model = quantize_aware(model)
    teacher = None if labels is not None else np.asarray(model.predict(images, batch_size=64, verbose=0))
    losses = finetune(qat_model, images, labels, teacher, steps=steps, batch_size=batch_size, learning_rate=learning_rate)
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    output_name = model.outputs[0]._keras_history.operation.name if hasattr(model.outputs[0], "_keras_history") else "logits"
    flatbuffer = convert(
        qat_model,
        input_shape,
        io_type=io_type,
        batch_size=export_batch_size,
        input_name=model.inputs[0].name,
        output_name=output_name,
    )
    return flatbuffer, losses
