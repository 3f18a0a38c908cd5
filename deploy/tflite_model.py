"""Read, check and run ``.tflite`` files without TensorFlow: LiteRT's flatbuffer schema and interpreter.

* :func:`read_model_bytes` refuses a file that is not a TFLite flatbuffer (garbage, another format)
  and :func:`check_loads` one that LiteRT cannot load (truncated, corrupt), each with a message that
  names the file and what was wrong.
* :func:`summarize` lists the operators (with their **op versions**), tensors (types, static and
  signature shapes, constant or not), signatures and metadata entries: what the Edge TPU readiness
  check and the benchmarks read.
* :func:`add_metadata` / :func:`read_metadata` store and read a JSON document in the model's own
  ``metadata`` list (a named buffer of the TFLite schema, which every LiteRT runtime keeps and C++
  exposes through ``FlatBufferModel::ReadAllMetadata()``). deploy.export records the input
  normalisation there under :data:`METADATA_NAME`.
* :class:`TFLiteRunner` runs a signature on float inputs and returns float outputs, quantizing and
  dequantizing int8/uint8 inputs and outputs with the tensors' own scales and zero points.

Only ``ai_edge_litert`` and numpy are imported, so the Android/Coral benchmark paths and the Edge TPU
check start in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deploy.errors import DeployError

TFLITE_IDENTIFIER = b"TFL3"
METADATA_NAME = "cafe_tf.metadata"  # our entry in the model's metadata list (JSON, UTF-8)
METADATA_SCHEMA = "cafe_tf.tflite_metadata"
METADATA_VERSION = 1


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of the main subgraph."""

    index: int
    name: str
    dtype: str  # "float32", "int8", "uint8", "int32", ...
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]  # -1 marks a dynamic dimension
    is_constant: bool  # holds data in the file (weights, biases, shapes, axes)
    num_scales: int  # 0 = not quantized, 1 = per tensor, >1 = per channel
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()

    @property
    def is_dynamic(self) -> bool:
        return any(d < 0 for d in self.shape_signature)


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """One operator of the main subgraph, in execution order."""

    index: int
    op: str  # builtin name ("CONV_2D") or the custom code of a custom op
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Mapping[str, Any]
    custom: bool = False


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """What a ``.tflite`` file holds (subgraph 0, the one signatures and the Edge TPU use)."""

    ops: tuple[OpInfo, ...]
    tensors: tuple[TensorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    signatures: Mapping[str, Mapping[str, Mapping[str, int]]]
    metadata_names: tuple[str, ...]
    num_subgraphs: int
    description: str
    size_bytes: int

    def op_versions(self) -> dict[str, list[int]]:
        """``{op name: sorted distinct versions}``."""
        out: dict[str, set[int]] = {}
        for op in self.ops:
            out.setdefault(op.op, set()).add(op.version)
        return {k: sorted(v) for k, v in sorted(out.items())}


def read_model_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of ``path`` after checking it is a TFLite flatbuffer (identifier ``TFL3``).

    Raises:
      DeployError: the file is missing, too short or of another format.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DeployError(f"TFLite model {path!r} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    check_identifier(data, path)
    return data


def check_identifier(data: bytes, what: str = "model") -> None:
    """Raises :class:`DeployError` unless ``data`` starts like a TFLite flatbuffer."""
    if len(data) < 16:
        raise DeployError(
            f"{what!r} is not a TFLite model: {len(data)} bytes is too short to hold a flatbuffer "
            "(the file is empty or truncated)"
        )
    if data[4:8] != TFLITE_IDENTIFIER:
        raise DeployError(
            f"{what!r} is not a TFLite model: file identifier {data[4:8]!r}, expected {TFLITE_IDENTIFIER!r} "
            "(a .tflite written by the TFLite converter / deploy.export)"
        )
    (root,) = struct.unpack_from("<I", data, 0)
    if root >= len(data):
        raise DeployError(f"{what!r} is truncated: its root table offset {root} lies past its {len(data)} bytes")


def check_loads(data: bytes, what: str = "model") -> None:
    """Raises :class:`DeployError` unless LiteRT's interpreter can load and allocate ``data``.

    A model using Edge TPU custom ops (``edgetpu-custom-op``) only loads with the Edge TPU delegate,
    so for those only the flatbuffer structure is checked.
    """
    check_identifier(data, what)
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=bytes(data))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "custom op" in str(e).lower() and "edgetpu" in str(e).lower():
            return
        raise DeployError(f"LiteRT cannot load {what!r} (truncated or corrupt .tflite?): {message}") from None


def summarize(source: str | os.PathLike | bytes) -> ModelSummary:
    """Parses a ``.tflite`` (path or bytes) into a :class:`ModelSummary`.

    Raises:
      DeployError: the file is not a TFLite flatbuffer or its structure cannot be read.
    """
    if isinstance(source, (bytes, bytearray)):
        data, what = bytes(source), "model bytes"
        check_identifier(data, what)
    else:
        what = os.fspath(source)
        data = read_model_bytes(source)
    try:
        return _summarize(data)
    except (struct.error, IndexError, UnicodeDecodeError, ValueError, TypeError) as e:
        raise DeployError(f"cannot read the TFLite flatbuffer {what!r} (truncated or corrupt): {e}") from None


def _summarize(data: bytes) -> ModelSummary:
    s = _schema()
    model = s.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() < 1:
        raise ValueError("the model has no subgraph")
    op_names = _enum_names(s.BuiltinOperator)
    type_names = {k: v.lower() for k, v in _enum_names(s.TensorType).items()}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        custom = oc.CustomCode()
        if code == s.BuiltinOperator.CUSTOM:
            codes.append(((custom or b"").decode("utf-8", "replace") or "CUSTOM", oc.Version(), True))
        else:
            codes.append((op_names.get(code, f"BUILTIN_{code}"), oc.Version(), False))

    graph = model.Subgraphs(0)
    tensors = []
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        signature = tuple(int(d) for d in tensor.ShapeSignatureAsNumpy()) if tensor.ShapeSignatureLength() else shape
        buffer_index = tensor.Buffer()
        constant = False
        if 0 < buffer_index < model.BuffersLength():
            buffer = model.Buffers(buffer_index)
            constant = buffer.DataLength() > 0 or buffer.Size() > 0
        q = tensor.Quantization()
        scales: tuple[float, ...] = ()
        zero_points: tuple[int, ...] = ()
        if q is not None and q.ScaleLength():
            scales = tuple(float(v) for v in q.ScaleAsNumpy())
            zero_points = tuple(int(v) for v in q.ZeroPointAsNumpy()) if q.ZeroPointLength() else ()
        tensors.append(
            TensorInfo(
                index=t,
                name=(tensor.Name() or b"").decode("utf-8", "replace"),
                dtype=type_names.get(tensor.Type(), f"type_{tensor.Type()}"),
                shape=shape,
                shape_signature=signature,
                is_constant=constant,
                num_scales=len(scales),
                scales=scales,
                zero_points=zero_points,
            )
        )
    options_classes = {v: k for k, v in vars(s.BuiltinOptions).items() if not k.startswith("_") and isinstance(v, int)}
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name, version, custom = codes[op.OpcodeIndex()]
        ops.append(
            OpInfo(
                index=i,
                op=name,
                version=int(version),
                inputs=tuple(int(v) for v in op.InputsAsNumpy()) if op.InputsLength() else (),
                outputs=tuple(int(v) for v in op.OutputsAsNumpy()) if op.OutputsLength() else (),
                options=_options(s, op, options_classes),
                custom=custom,
            )
        )
    signatures: dict[str, dict[str, dict[str, int]]] = {}
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        key = (sig.SignatureKey() or b"").decode()
        signatures[key] = {
            "inputs": {sig.Inputs(j).Name().decode(): int(sig.Inputs(j).TensorIndex()) for j in range(sig.InputsLength())},
            "outputs": {sig.Outputs(j).Name().decode(): int(sig.Outputs(j).TensorIndex()) for j in range(sig.OutputsLength())},
        }
    metadata_names = tuple((model.Metadata(i).Name() or b"").decode() for i in range(model.MetadataLength()))
    return ModelSummary(
        ops=tuple(ops),
        tensors=tuple(tensors),
        inputs=tuple(int(v) for v in graph.InputsAsNumpy()) if graph.InputsLength() else (),
        outputs=tuple(int(v) for v in graph.OutputsAsNumpy()) if graph.OutputsLength() else (),
        signatures=signatures,
        metadata_names=metadata_names,
        num_subgraphs=int(model.SubgraphsLength()),
        description=(model.Description() or b"").decode("utf-8", "replace"),
        size_bytes=len(data),
    )


# Option fields the Edge TPU check and the latency tools read, when an op's options table has them.
_OPTION_FIELDS = (
    "Padding", "StrideW", "StrideH", "DilationWFactor", "DilationHFactor", "FusedActivationFunction",
    "DepthMultiplier", "FilterWidth", "FilterHeight", "Axis", "WeightsFormat", "KeepNumDims",
    "KeepDims", "Beta", "NewAxisMask", "EllipsisMask", "AlignCorners", "HalfPixelCenters",
)


def _options(s, op, options_classes: Mapping[int, str]) -> dict[str, Any]:
    kind = op.BuiltinOptionsType()
    table = op.BuiltinOptions()
    if not kind or table is None or kind not in options_classes:
        return {}
    cls = getattr(s, options_classes[kind], None)
    if cls is None:
        return {}
    obj = cls()
    obj.Init(table.Bytes, table.Pos)
    out: dict[str, Any] = {}
    activations = _enum_names(s.ActivationFunctionType)
    paddings = _enum_names(s.Padding)
    weights_formats = _enum_names(s.FullyConnectedOptionsWeightsFormat)
    for field in _OPTION_FIELDS:
        getter = getattr(obj, field, None)
        if getter is None:
            continue
        value = getter()
        if field == "FusedActivationFunction":
            value = activations.get(value, value)
        elif field == "Padding":
            value = paddings.get(value, value)
        elif field == "WeightsFormat":
            value = weights_formats.get(value, value)
        elif isinstance(value, (bool, np.bool_)):
            value = bool(value)
        out[_snake(field)] = value
    return out


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def constant_data(source: bytes, tensor_index: int) -> np.ndarray | None:
    """The raw bytes of a constant tensor of subgraph 0 as a uint8 array, or None."""
    s = _schema()
    model = s.Model.GetRootAs(source, 0)
    tensor = model.Subgraphs(0).Tensors(tensor_index)
    buffer = model.Buffers(tensor.Buffer())
    if buffer.DataLength() > 0:
        return buffer.DataAsNumpy()
    if buffer.Size() > 0:  # large models keep data after the flatbuffer, addressed by offset
        return np.frombuffer(source, np.uint8, count=buffer.Size(), offset=buffer.Offset())
    return None


# --------------------------------------------------------------------------------------------
# Metadata


def add_metadata(data: bytes, payload: Mapping[str, Any], name: str = METADATA_NAME) -> bytes:
    """Returns ``data`` with ``payload`` (JSON) stored as metadata entry ``name`` (replacing one of that name)."""
    s = _schema()
    import flatbuffers

    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    text = json.dumps(
        {"schema": METADATA_SCHEMA, "schema_version": METADATA_VERSION, **payload}, sort_keys=True, default=_json_default
    ).encode("utf-8")
    buffer = s.BufferT()
    buffer.data = np.frombuffer(text, dtype=np.uint8)
    model.buffers = list(model.buffers or [])
    model.metadata = [m for m in (model.metadata or []) if (m.name.decode() if isinstance(m.name, bytes) else m.name) != name]
    entry = s.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers)
    model.buffers.append(buffer)
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(data) + len(text) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_metadata(source: str | os.PathLike | bytes, name: str = METADATA_NAME) -> dict[str, Any] | None:
    """The JSON metadata entry ``name`` of a ``.tflite`` (path or bytes), or None when it has none."""
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else read_model_bytes(source)
    check_identifier(data)
    s = _schema()
    model = s.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if (entry.Name() or b"").decode() == name:
            raw = model.Buffers(entry.Buffer()).DataAsNumpy()
            try:
                return json.loads(bytes(raw).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DeployError(f"metadata entry {name!r} is not valid JSON: {e}") from None
    return None


# --------------------------------------------------------------------------------------------
# Running


def load_interpreter(
    source: str | os.PathLike | bytes, num_threads: int | None = None, delegates: Sequence[Any] | None = None
):
    """An allocated ``ai_edge_litert`` interpreter for a ``.tflite`` path or bytes.

    Raises:
      DeployError: the file is not a loadable TFLite model (names the file and LiteRT's reason).
    """
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(source, (bytes, bytearray)):
        data, what = bytes(source), "model bytes"
    else:
        what = os.fspath(source)
        data = read_model_bytes(source)
    check_identifier(data, what)
    if num_threads is not None and num_threads < 1:
        raise DeployError(f"num_threads must be >= 1, got {num_threads!r}")
    try:
        interpreter = Interpreter(
            model_content=data, num_threads=num_threads, experimental_delegates=list(delegates) if delegates else None
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeployError(f"LiteRT cannot load {what!r} (truncated or corrupt .tflite?): {message}") from None
    return interpreter


class TFLiteRunner:
    """Runs one signature of a ``.tflite`` on float inputs; returns float outputs.

    Inputs of type int8/uint8 are quantized with the input tensor's scale and zero point, outputs
    dequantized, so callers always compare floats. A static batch of 1 runs the batch one image at
    a time; a dynamic batch runs it at once.

    Example: ``TFLiteRunner("m.tflite")(images)`` -> ``{"logits": array (N, classes)}``.
    """

    def __init__(
        self,
        source: str | os.PathLike | bytes,
        num_threads: int | None = None,
        signature: str | None = None,
        delegates: Sequence[Any] | None = None,
    ):
        self.interpreter = load_interpreter(source, num_threads=num_threads, delegates=delegates)
        signatures = self.interpreter.get_signature_list()
        if not signatures:
            raise DeployError("the model has no signature; export it with deploy.export (signature 'serving_default')")
        if signature is None:
            signature = "serving_default" if "serving_default" in signatures else next(iter(signatures))
        if signature not in signatures:
            raise DeployError(f"signature {signature!r} not in the model; it has {sorted(signatures)}")
        self.signature = signature
        self.runner = self.interpreter.get_signature_runner(signature)
        self.input_details = self.runner.get_input_details()
        self.output_details = self.runner.get_output_details()

    @property
    def input_name(self) -> str:
        return next(iter(self.input_details))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input_details[self.input_name]["shape"])

    @property
    def static_batch(self) -> int | None:
        signature = self.input_details[self.input_name].get("shape_signature")
        if signature is None or len(signature) == 0 or int(signature[0]) < 0:
            return None
        return int(signature[0])

    def __call__(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = dict(x) if isinstance(x, Mapping) else {self.input_name: x}
        unknown = sorted(set(inputs) - set(self.input_details))
        if unknown:
            raise DeployError(f"unknown inputs {unknown}; the signature takes {sorted(self.input_details)}")
        batch = len(next(iter(inputs.values())))
        if self.static_batch is not None and batch != self.static_batch:
            step = self.static_batch
            parts = [self._run({k: v[i : i + step] for k, v in inputs.items()}) for i in range(0, batch, step)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._run(inputs)

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: quantize(np.asarray(v), self.input_details[name]) for name, v in inputs.items()}
        out = self.runner(**feed)
        return {name: dequantize(v, self.output_details[name]) for name, v in out.items()}


def quantize(x: np.ndarray, details: Mapping[str, Any]) -> np.ndarray:
    """``x`` (float) in the tensor's type: quantized with its scale/zero point when int8/uint8."""
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero_point = _qparams(details)
    if not scale:
        raise DeployError(f"input {details.get('name')!r} is {dtype.name} without quantization parameters")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(x: np.ndarray, details: Mapping[str, Any]) -> np.ndarray:
    """``x`` as float32, dequantized when the tensor is int8/uint8."""
    if np.dtype(details["dtype"]).kind == "f":
        return x.astype(np.float32)
    scale, zero_point = _qparams(details)
    if not scale:
        return x.astype(np.float32)
    return ((x.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _qparams(details: Mapping[str, Any]) -> tuple[float, int]:
    params = details.get("quantization_parameters") or {}
    scales = params.get("scales")
    if scales is not None and len(scales):
        return float(scales[0]), int(params["zero_points"][0])
    scale, zero_point = details.get("quantization", (0.0, 0))
    return float(scale), int(zero_point)
