"""Edge TPU readiness without the compiler, and the compiler's report when it is installed.

:func:`readiness` reads a ``.tflite`` and applies Coral's model requirements: int8/uint8 activation
tensors, static shapes, batch 1; every op in the supported-op list (:data:`SUPPORTED_OPS`) with its
constraints and minimum runtime; the ops that would fall back to the CPU (the compiler makes one
Edge TPU subgraph, so the first op it cannot map and every op after it); and op versions newer than
compiler 16.0 accepts (:data:`COMPILER_16_MAX_OP_VERSIONS`). :func:`run_compiler` runs
``edgetpu_compiler`` when it is on PATH and :func:`parse_compiler_log` turns its report into JSON.
Only numpy and LiteRT's flatbuffer schema are imported. Where the tables come from: docs/papers.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from deploy import tflite_model
from deploy.errors import DeployError
from deploy.tflite_model import ModelSummary, OpInfo

EDGETPU_JSON_SCHEMA = "edgetpu_report"
EDGETPU_JSON_VERSION = 1
DEFAULT_MIN_RUNTIME = 14  # what compiler 15/16 target by default
COMPILER = "edgetpu_compiler"
INTEGER_TYPES = ("int8", "uint8")


@dataclasses.dataclass(frozen=True)
class OpRule:
    """One row of Coral's supported-operations table."""

    coral_name: str
    min_runtime: int  # 1 = "All" runtime versions
    limitations: str = ""


# Coral's table, keyed by TFLite builtin name: https://coral.ai/docs/edgetpu/models-intro/#supported-operations
# (columns: operation, minimum runtime version, known limitations; rows split by runtime are merged
# into one entry whose text says what changed at runtime 13). Checked against that table as
# reproduced for the Edge-TPU-compiled ARTPEC-7 DLPU, which carries the current rows' wording:
# https://developer.axis.com/computer-vision/on-device/system-on-chip/artpec-7/supported-ops/ (the
# stored copy of the Coral page showed only its introduction). The 2019 table (no runtime column)
# had Mean / Pad along x and y only; runtime 13 allowed z.
SUPPORTED_OPS: dict[str, OpRule] = {
    "ADD": OpRule("Add", 1),
    "AVERAGE_POOL_2D": OpRule("AveragePool2d", 1, "No fused activation function."),
    "CONCATENATION": OpRule(
        "Concatenation", 1,
        "No fused activation function. If any input is a compile-time constant tensor, there must be only "
        "2 inputs, and this constant tensor must be all zeroes (effectively, a zero-padding op).",
    ),
    "CONV_2D": OpRule("Conv2d", 1, "Must use the same dilation in x and y dimensions."),
    "DEPTHWISE_CONV_2D": OpRule("DepthwiseConv2d", 1, "Runtime <= 12: dilated conv kernels are not supported. Runtime >= 13: "
                                "must use the same dilation in x and y dimensions."),
    "EXPAND_DIMS": OpRule("ExpandDims", 13),
    "FULLY_CONNECTED": OpRule("FullyConnected", 1, "Only the default format is supported for fully-connected weights. Output tensor is one-dimensional."),
    "L2_NORMALIZATION": OpRule("L2Normalization", 1),
    "LOGISTIC": OpRule("Logistic", 1),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": OpRule("LSTM", 14, "Unidirectional LSTM only."),
    "MAXIMUM": OpRule("Maximum", 1),
    "MAX_POOL_2D": OpRule("MaxPool2d", 1, "No fused activation function."),
    "MEAN": OpRule("Mean", 1, "No reduction in batch dimension. Runtime <= 12: reduction along x- and/or y-dimensions only. "
                   "Runtime >= 13: if a z-reduction, the z-dimension must be a multiple of 4."),
    "MINIMUM": OpRule("Minimum", 1),
    "MUL": OpRule("Mul", 1),
    "PACK": OpRule("Pack", 13, "No packing in batch dimension."),
    "PAD": OpRule("Pad", 1, "Runtime <= 12: padding along x- and/or y-dimensions only. Runtime >= 13: no padding in batch dimension."),
    "PRELU": OpRule("PReLU", 13, "Alpha needs to be 1-dimensional (only the innermost dimension can be >1 size). With Keras "
                    "PReLU on 4D input (batch, height, width, channels), shared_axes must be [1,2]."),
    "QUANTIZE": OpRule("Quantize", 13),
    "REDUCE_MAX": OpRule("ReduceMax", 14, "Cannot operate on batch dimension."),
    "REDUCE_MIN": OpRule("ReduceMin", 14, "Cannot operate on batch dimension."),
    "RELU": OpRule("ReLu", 1),
    "RELU6": OpRule("ReLu6", 1),
    "RELU_N1_TO_1": OpRule("ReLuN1To1", 1),
    "RESHAPE": OpRule("Reshape", 1, "Certain reshapes might not be mapped for large tensor sizes."),
    "RESIZE_BILINEAR": OpRule("ResizeBilinear", 1, "Input/output is a 3-dimensional tensor. Depending on input/output size, this operation may not be mapped to the Edge TPU to avoid loss in precision."),
    "RESIZE_NEAREST_NEIGHBOR": OpRule("ResizeNearestNeighbor", 1, "Input/output is a 3-dimensional tensor. Depending on input/output size, this operation may not be mapped to the Edge TPU to avoid loss in precision."),
    "RSQRT": OpRule("Rsqrt", 14),
    "SLICE": OpRule("Slice", 1),
    "SOFTMAX": OpRule("Softmax", 1, "Supports only 1-D input tensor with a max of 16,000 elements."),
    "SPACE_TO_DEPTH": OpRule("SpaceToDepth", 1),
    "SPLIT": OpRule("Split", 1, "No splitting in batch dimension."),
    "SQUEEZE": OpRule("Squeeze", 1, "Runtime <= 12: only when the input's dimensions have leading 1s (no relayout needed). "
                      "Runtime >= 13: none."),
    "STRIDED_SLICE": OpRule("StridedSlice", 1, "Supported only when all strides are equal to 1 (that is, effectively a Stride op), and with ellipsis-axis-mask == 0, and new-axis-max == 0."),
    "SUB": OpRule("Sub", 1),
    "SUM": OpRule("Sum", 13, "Cannot operate on batch dimension."),
    "SQUARED_DIFFERENCE": OpRule("Squared-difference", 14),
    "TANH": OpRule("Tanh", 1),
    "TRANSPOSE": OpRule("Transpose", 14),
    "TRANSPOSE_CONV": OpRule("TransposeConv", 13),
}

# Highest op version edgetpu_compiler 16.0 accepts, and where that number comes from.
_REPORTED = "a compiler-16.0 failure on the next version is reported on GitHub"
_ASSUMED = "TFLite kernel registrations of the compiler's era (~TF 2.5); not confirmed against the compiler"
COMPILER_16_MAX_OP_VERSIONS: dict[str, tuple[int, str]] = {
    "CONV_2D": (5, _REPORTED + " (google-coral/edgetpu#631: CONV_2D v6)"),
    "QUANTIZE": (2, _REPORTED + " (google-coral/edgetpu#879: QUANTIZE v3)"),
    "TRANSPOSE_CONV": (3, _REPORTED + " (google-coral/edgetpu#845: TRANSPOSE_CONV v4)"),
    "EXP": (1, _REPORTED + " (google-coral/libedgetpu#71: EXP v2)"),
    **{
        op: (version, _ASSUMED)
        for op, version in {
            "ADD": 4, "AVERAGE_POOL_2D": 3, "CONCATENATION": 3, "DEPTHWISE_CONV_2D": 6, "DEQUANTIZE": 4,
            "EXPAND_DIMS": 1, "FULLY_CONNECTED": 9, "GATHER": 4, "HARD_SWISH": 1, "L2_NORMALIZATION": 2,
            "LEAKY_RELU": 2, "LOGISTIC": 3, "MAXIMUM": 4, "MAX_POOL_2D": 3, "MEAN": 3, "MINIMUM": 4, "MUL": 4,
            "PACK": 3, "PAD": 3, "PADV2": 3, "PRELU": 1, "REDUCE_MAX": 2, "REDUCE_MIN": 2, "RELU": 2,
            "RELU6": 2, "RELU_N1_TO_1": 1, "RESHAPE": 1, "RESIZE_BILINEAR": 4, "RESIZE_NEAREST_NEIGHBOR": 3,
            "RSQRT": 2, "SLICE": 4, "SOFTMAX": 3, "SPACE_TO_DEPTH": 2, "SPLIT": 4, "SQUARED_DIFFERENCE": 2,
            "SQUEEZE": 1, "STRIDED_SLICE": 5, "SUB": 3, "SUM": 2, "TANH": 3, "TRANSPOSE": 5,
        }.items()
    },
}


# --------------------------------------------------------------------------------------------
# Readiness


def _tensor(summary: ModelSummary, index: int):
    return summary.tensors[index] if 0 <= index < len(summary.tensors) else None


def _axis_values(data: bytes, summary: ModelSummary, index: int) -> list[int] | None:
    tensor = _tensor(summary, index)
    if tensor is None or not tensor.is_constant:
        return None
    raw = tflite_model.constant_data(data, index)
    if raw is None:
        return None
    dtype = {"int32": np.int32, "int64": np.int64}.get(tensor.dtype)
    if dtype is None:
        return None
    return [int(v) for v in np.frombuffer(bytes(raw), dtype=dtype)]


def _normalize_axes(axes: list[int], rank: int) -> list[int]:
    return sorted({a % rank for a in axes}) if rank else axes


def _op_constraints(op: OpInfo, summary: ModelSummary, data: bytes, min_runtime: int) -> list[str]:
    """Problems with ``op``'s constraints from Coral's table (empty: none found)."""
    problems = []
    options = op.options
    fused = options.get("fused_activation_function", "NONE")
    if op.op in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION") and fused not in ("NONE", 0):
        problems.append(f"fused activation {fused} (the Edge TPU takes none on this op)")
    if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        dw, dh = options.get("dilation_w_factor", 1), options.get("dilation_h_factor", 1)
        if dw != dh:
            problems.append(f"dilation {dh}x{dw} differs between y and x")
        if op.op == "DEPTHWISE_CONV_2D" and (dw, dh) != (1, 1) and min_runtime < 13:
            problems.append(f"dilated depthwise convolution needs runtime >= 13 (targeting {min_runtime})")
    if op.op == "FULLY_CONNECTED":
        if options.get("weights_format", "DEFAULT") != "DEFAULT":
            problems.append(f"weights format {options.get('weights_format')} (only DEFAULT)")
        out = _tensor(summary, op.outputs[0]) if op.outputs else None
        if out is not None and int(np.prod(out.shape[:-1] or (1,))) != 1:
            problems.append(f"output {list(out.shape)} is not one-dimensional")
    if op.op in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN") and len(op.inputs) > 1:
        source = _tensor(summary, op.inputs[0])
        axes = _axis_values(data, summary, op.inputs[1])
        rank = len(source.shape) if source is not None else 0
        if axes is None:
            problems.append("reduction axes are not a compile-time constant")
        else:
            axes = _normalize_axes(axes, rank)
            allowed = {rank - 3, rank - 2} if op.op == "MEAN" and min_runtime < 13 else {rank - 3, rank - 2, rank - 1}
            if rank >= 3 and not set(axes) <= allowed:
                problems.append(f"reduces over axes {axes} of a rank-{rank} tensor (only the spatial / channel axes, never batch)")
            elif op.op == "MEAN" and rank >= 3 and rank - 1 in axes and source.shape[-1] % 4:
                problems.append(f"reduces the z (channel) dimension of size {source.shape[-1]}, which must be a multiple of 4")
    if op.op == "PAD" and len(op.inputs) > 1:
        source = _tensor(summary, op.inputs[0])
        pads = _axis_values(data, summary, op.inputs[1])
        if pads is None:
            problems.append("paddings are not a compile-time constant")
        elif source is not None and len(source.shape) == 4 and (pads[0] or pads[1] or (min_runtime < 13 and (pads[6] or pads[7]))):
            problems.append(f"pads the batch{'' if min_runtime >= 13 else ' or channel'} dimension (paddings {pads})")
    if op.op == "PRELU" and len(op.inputs) > 1:
        alpha = _tensor(summary, op.inputs[1])
        if alpha is not None and any(d > 1 for d in alpha.shape[:-1]):
            problems.append(f"alpha of shape {list(alpha.shape)} is not 1-dimensional (only its innermost dimension may "
                            "be > 1: Keras PReLU(shared_axes=[1, 2]) on images)")
    if op.op == "SOFTMAX" and op.inputs:
        source = _tensor(summary, op.inputs[0])
        if source is not None:
            if int(np.prod(source.shape[:-1] or (1,))) != 1:
                problems.append(f"input {list(source.shape)} is not one-dimensional")
            if source.shape and source.shape[-1] > 16000:
                problems.append(f"input has {source.shape[-1]} elements (max 16,000)")
    if op.op == "STRIDED_SLICE":
        strides = _axis_values(data, summary, op.inputs[3]) if len(op.inputs) > 3 else None
        if strides is None or any(s != 1 for s in strides):
            problems.append(f"strides {strides} (only all-1 strides are mapped)")
        if options.get("ellipsis_mask", 0) or options.get("new_axis_mask", 0):
            problems.append("ellipsis or new-axis mask set")
    if op.op in ("SPLIT", "PACK"):
        axis = options.get("axis")
        if op.op == "SPLIT" and op.inputs:
            values = _axis_values(data, summary, op.inputs[0])
            axis = values[0] if values else None
        if axis == 0:
            problems.append("splits / packs along the batch dimension")
    if op.op in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR") and op.inputs:
        source = _tensor(summary, op.inputs[0])
        if source is not None and len(source.shape) == 4 and source.shape[0] != 1:
            problems.append(f"input {list(source.shape)} is not 3-dimensional (batch must be 1)")
    return problems


def _tensor_problems(op: OpInfo, summary: ModelSummary) -> list[str]:
    """Type and shape problems of the tensors ``op`` reads and writes."""
    problems = []
    for position, index in enumerate(op.inputs + op.outputs):
        tensor = _tensor(summary, index)
        if tensor is None:
            continue
        is_output = position >= len(op.inputs)
        if tensor.is_constant and not is_output:
            if tensor.dtype not in INTEGER_TYPES + ("int32", "int64"):
                problems.append(f"constant {tensor.name!r} is {tensor.dtype}")
        elif tensor.dtype not in INTEGER_TYPES:
            problems.append(f"tensor {tensor.name!r} is {tensor.dtype} (must be int8/uint8)")
        if tensor.is_dynamic:
            problems.append(f"tensor {tensor.name!r} has a dynamic shape {list(tensor.shape_signature)}")
        if not tensor.is_constant and len(tensor.shape) > 3 and any(d > 1 for d in tensor.shape[:-3]):
            problems.append(
                f"tensor {tensor.name!r} of shape {list(tensor.shape)} has a dimension > 1 outside its 3 innermost (batch must be 1)"
            )
    return problems


def readiness(source: str | os.PathLike | bytes, min_runtime: int = DEFAULT_MIN_RUNTIME) -> dict[str, Any]:
    """The Edge TPU readiness report of a ``.tflite`` (path or bytes), without the compiler.

    Keys: ``ready`` (every op maps and the compiler can parse every op version), ``model_checks``
    (types, static shapes, batch), ``ops`` (one entry per op: name, version, supported, problems,
    placement ``edgetpu``/``cpu``), ``cpu_ops`` (those falling back and why), ``op_versions``.
    """
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else tflite_model.read_model_bytes(source)
    summary = tflite_model.summarize(data)
    model_checks = _model_checks(summary)
    ops = []
    first_blocker: int | None = None
    prologue = True
    for op in summary.ops:
        rule = SUPPORTED_OPS.get(op.op)
        problems = []
        if op.custom:
            problems.append(f"custom op {op.op!r}" + (" (already compiled for the Edge TPU)" if op.op == "edgetpu-custom-op" else ""))
        elif rule is None:
            problems.append(f"{op.op} is not in the Edge TPU's supported operations")
        else:
            if rule.min_runtime > min_runtime:
                problems.append(f"{rule.coral_name} needs Edge TPU runtime >= {rule.min_runtime} (targeting {min_runtime})")
            problems += _op_constraints(op, summary, data, min_runtime)
        problems += _tensor_problems(op, summary)
        mappable = not problems
        # A QUANTIZE turning the float input into int8 at the very start runs on the CPU without
        # splitting the Edge TPU subgraph; anything else unmappable ends the subgraph.
        if not mappable and prologue and op.op == "QUANTIZE" and set(op.inputs) <= set(summary.inputs):
            placement, reason = "cpu", "converts the float model input before the Edge TPU subgraph"
        elif not mappable and first_blocker is None:
            first_blocker = op.index
            placement, reason = "cpu", _short(problems)
        elif first_blocker is not None:
            placement = "cpu"
            reason = _short(problems) if problems else f"after op {first_blocker} ({summary.ops[first_blocker].op}), the first op the Edge TPU cannot map (the compiler makes one Edge TPU subgraph)"
        else:
            placement, reason = "edgetpu", ""
        if placement == "edgetpu":
            prologue = False
        ops.append(
            {
                "index": op.index,
                "op": op.op,
                "version": op.version,
                "coral_name": rule.coral_name if rule else None,
                "supported": rule is not None and not op.custom,
                "limitations": rule.limitations if rule else None,
                "problems": problems,
                "placement": placement,
                "reason": reason,
            }
        )
    versions = op_version_report(summary)
    cpu_ops = [{"index": o["index"], "op": o["op"], "reason": o["reason"]} for o in ops if o["placement"] == "cpu"]
    blocking_versions = [v for v in versions if v["status"] == "too_new"]
    ready = model_checks["ok"] and not cpu_ops and not blocking_versions
    return {
        "ready": ready,
        "min_runtime": min_runtime,
        "model_checks": model_checks,
        "num_ops": len(ops),
        "ops_on_edgetpu": sum(o["placement"] == "edgetpu" for o in ops),
        "ops_on_cpu": len(cpu_ops),
        "cpu_ops": cpu_ops,
        "ops": ops,
        "op_versions": versions,
        "compiler_would_reject": [f"{v['op']} v{v['version']} (compiler 16.0 knows up to v{v['max_version']})" for v in blocking_versions],
    }


def _short(problems: list[str], keep: int = 2) -> str:
    more = len(problems) - keep
    return "; ".join(problems[:keep]) + (f" (+{more} more)" if more > 0 else "")


def _model_checks(summary: ModelSummary) -> dict[str, Any]:
    problems = []
    for index in summary.inputs + summary.outputs:
        tensor = summary.tensors[index]
        role = "input" if index in summary.inputs else "output"
        if tensor.dtype not in INTEGER_TYPES:
            problems.append(f"model {role} {tensor.name!r} is {tensor.dtype}; export with --quant int8 --io_type int8 (or uint8)")
        if tensor.is_dynamic:
            problems.append(f"model {role} {tensor.name!r} has a dynamic shape {list(tensor.shape_signature)}; export with --batch_size 1")
        elif tensor.shape and len(tensor.shape) >= 2 and tensor.shape[0] != 1:
            problems.append(f"model {role} {tensor.name!r} has batch {tensor.shape[0]}; export with --batch_size 1")
    float_tensors = [t.name for t in summary.tensors if t.dtype.startswith("float") and not t.is_constant]
    dynamic = [t.name for t in summary.tensors if t.is_dynamic]
    if float_tensors:
        problems.append(f"{len(float_tensors)} float activation tensor(s), e.g. {float_tensors[0]!r}; the Edge TPU needs full-integer quantization")
    if dynamic:
        problems.append(f"{len(dynamic)} tensor(s) with dynamic shapes, e.g. {dynamic[0]!r}")
    if summary.num_subgraphs > 1:
        problems.append(f"the model has {summary.num_subgraphs} subgraphs; the Edge TPU compiler maps only the main one")
    return {"ok": not problems, "problems": problems, "float_tensors": len(float_tensors), "dynamic_tensors": len(dynamic)}


def op_version_report(summary: ModelSummary) -> list[dict[str, Any]]:
    """One entry per (op, version) with what edgetpu_compiler 16.0 is known to accept."""
    out = []
    for op, versions in summary.op_versions().items():
        for version in versions:
            known = COMPILER_16_MAX_OP_VERSIONS.get(op)
            if known is None:
                status, max_version, evidence = "unknown", None, "no record of this op for compiler 16.0"
            else:
                max_version, evidence = known
                status = "ok" if version <= max_version else "too_new"
            out.append({"op": op, "version": version, "max_version": max_version, "status": status, "evidence": evidence})
    return out


# --------------------------------------------------------------------------------------------
# The compiler

_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_SIZE = r"([0-9.]+)\s*(B|KiB|MiB|GiB)"


def _bytes(value: str, unit: str) -> int:
    return int(round(float(value) * _SIZE_UNITS[unit]))


_FIELDS: dict[str, tuple[str, Callable[[re.Match], Any]]] = {
    "compiler_version": (r"Edge TPU Compiler version (\S+)", lambda m: m.group(1)),
    "compile_ms": (r"Model compiled successfully in (\d+) ms", lambda m: int(m.group(1))),
    "input_model": (r"^Input model: (.+)$", lambda m: m.group(1).strip()),
    "input_size_bytes": (r"^Input size: " + _SIZE, lambda m: _bytes(m.group(1), m.group(2))),
    "output_model": (r"^Output model: (.+)$", lambda m: m.group(1).strip()),
    "output_size_bytes": (r"^Output size: " + _SIZE, lambda m: _bytes(m.group(1), m.group(2))),
    "on_chip_memory_used_bytes": (r"On-chip memory used for caching model parameters: " + _SIZE, lambda m: _bytes(m.group(1), m.group(2))),
    "on_chip_memory_remaining_bytes": (r"On-chip memory remaining for caching model parameters: " + _SIZE, lambda m: _bytes(m.group(1), m.group(2))),
    "off_chip_memory_used_bytes": (r"Off-chip memory used for streaming uncached model parameters: " + _SIZE, lambda m: _bytes(m.group(1), m.group(2))),
    "edgetpu_subgraphs": (r"Number of Edge TPU subgraphs: (\d+)", lambda m: int(m.group(1))),
    "total_ops": (r"Total number of operations: (\d+)", lambda m: int(m.group(1))),
    "ops_on_edgetpu": (r"Number of operations that will run on Edge TPU: (\d+)", lambda m: int(m.group(1))),
    "ops_on_cpu": (r"Number of operations that will run on CPU: (\d+)", lambda m: int(m.group(1))),
    "operation_log": (r"^Operation log: (.+)$", lambda m: m.group(1).strip()),
}
_OP_ROW = re.compile(r"^([A-Za-z][A-Za-z0-9_\-]*)\s{2,}(\d+)\s{2,}(\S.*?)\s*$")


def parse_compiler_log(text: str) -> dict[str, Any]:
    """Parses edgetpu_compiler's console output (or its ``*_edgetpu.log`` operation log) into a dict.

    ``status`` is ``"compiled"`` (every op on the Edge TPU), ``"partially_mapped"`` (some ops on the
    CPU), or ``"failed"`` (the compiler refused the model: ``errors`` and ``op_version_errors`` say why).
    """
    report: dict[str, Any] = {}
    for key, (pattern, convert) in _FIELDS.items():
        match = re.search(pattern, text, re.MULTILINE)
        report[key] = convert(match) if match else None
    operators = []
    in_table = False
    for line in text.splitlines():
        if re.match(r"^\s*Operator\s+Count\s+Status\s*$", line):
            in_table = True
            continue
        if in_table:
            row = _OP_ROW.match(line.strip()) if line.strip() else None
            if row:
                status = row.group(3)
                operators.append(
                    {"op": row.group(1), "count": int(row.group(2)), "status": status, "mapped": status.startswith("Mapped to Edge TPU")}
                )
            elif line.strip() and operators:
                in_table = False
    report["operators"] = operators
    report["errors"] = [line.strip()[len("ERROR:"):].strip() for line in text.splitlines() if line.strip().startswith("ERROR:")]
    for line in text.splitlines():
        if line.strip() in ("Internal compiler error. Aborting!", "Model could not be parsed") or line.startswith("Invalid model:"):
            report["errors"].append(line.strip())
    report["op_version_errors"] = [
        {"op": m.group(1), "version": int(m.group(2))}
        for m in re.finditer(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'", text)
    ]
    if operators:
        mapped = sum(o["count"] for o in operators if o["mapped"])
        unmapped = sum(o["count"] for o in operators if not o["mapped"])
        report["ops_on_edgetpu"] = report["ops_on_edgetpu"] if report["ops_on_edgetpu"] is not None else mapped
        report["ops_on_cpu"] = report["ops_on_cpu"] if report["ops_on_cpu"] is not None else unmapped
    elif report["total_ops"] is not None and report["ops_on_cpu"] is None and report["compile_ms"] is not None:
        report["ops_on_edgetpu"], report["ops_on_cpu"] = report["total_ops"], 0  # the short "all mapped" report
    report["cpu_operators"] = [o for o in operators if not o["mapped"]]
    if report["compile_ms"] is None or report["errors"]:
        report["status"] = "failed"
    elif report["ops_on_cpu"]:
        report["status"] = "partially_mapped"
    else:
        report["status"] = "compiled"
    return report


def compiler_path() -> str | None:
    """Where ``edgetpu_compiler`` is, or None when it is not on PATH."""
    return shutil.which(COMPILER)


def run_compiler(model_path: str, out_dir: str, timeout_s: float = 600, extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Runs ``edgetpu_compiler -s -o out_dir model`` when installed and parses its report.

    Returns ``{"available": False, "message": ...}`` when the compiler is not on PATH.
    """
    path = compiler_path()
    if path is None:
        return {
            "available": False,
            "message": (
                f"{COMPILER} is not on PATH, so only the readiness check ran. It installs from Coral's apt "
                "repository on x86-64 Debian/Ubuntu (`apt-get install edgetpu-compiler`, see "
                "https://coral.ai/docs/edgetpu/compiler/); it is not in Debian's or PyPI's registries."
            ),
        }
    os.makedirs(out_dir, exist_ok=True)
    command = [path, "-s", "-o", out_dir, *extra_args, model_path]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise DeployError(f"{COMPILER} did not finish within {timeout_s:.0f} s on {model_path!r}") from None
    text = proc.stdout + "\n" + proc.stderr
    report = parse_compiler_log(text)
    log_path = report.get("operation_log")
    if log_path and not os.path.isabs(log_path):
        log_path = os.path.join(out_dir, os.path.basename(log_path))
    if log_path and os.path.isfile(log_path) and not report["operators"]:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            from_log = parse_compiler_log(f.read())
        report["operators"], report["cpu_operators"] = from_log["operators"], from_log["cpu_operators"]
    return {"available": True, "command": command, "returncode": proc.returncode, "report": report, "output": text[-8000:]}


def write_report(path: str, payload: Mapping[str, Any]) -> None:
    """Writes ``edgetpu.json`` (schema ``edgetpu_report`` v1) atomically."""
    from cafe_tf import io as cafe_io

    cafe_io.write_artifact(path, EDGETPU_JSON_SCHEMA, EDGETPU_JSON_VERSION, payload)


def read_report(path: str) -> dict[str, Any]:
    """Reads and validates an ``edgetpu.json``."""
    from cafe_tf import io as cafe_io

    def validate(obj: dict[str, Any]) -> None:
        if not isinstance(obj["readiness"].get("ready"), bool):
            raise ValueError("readiness.ready must be true or false")
        if not isinstance(obj["compiler"].get("available"), bool):
            raise ValueError("compiler.available must be true or false")

    return cafe_io.read_artifact(path, EDGETPU_JSON_SCHEMA, (EDGETPU_JSON_VERSION,), ("model", "readiness", "compiler"), validate)


if __name__ == "__main__":  # `python -m deploy.edgetpu`: the program is deploy/edgetpu_main.py
    from cafe_tf.programs import forward_to

    forward_to("deploy.edgetpu_main")
