"""Latency tables from per-op profiles of whole subnets, taken on the target.

``deploy.latency_table``'s default method times each layer configuration alone, as a one-layer
model. This module times them *in place*: whole calibration subnets run under TFLite's
``benchmark_model --enable_op_profiling=true``, whose "Operator-wise Profiling Info for Regular
Benchmark Runs" table (parsed by ``deploy.benchmark.android.parse_op_profile``) gives each op's
average time inside its network, caches and threading included. Each profiled op is mapped to the
:class:`~deploy.latency_table.LayerKey` of the Keras layer it came from, so the table has the same
entries, predictor and search interface as an isolated one; its ``method`` is ``op_profile``.

Where profiles come from (a profiler maps ``.tflite`` paths to ``{"latency_ms", "op_profile"}``):

* :class:`HostProfiler`: a ``benchmark_model`` binary for this machine, given by the user
  (``--benchmark_model=/path``). The installed LiteRT Python packages (``ai_edge_litert`` 2.3.0,
  ``tensorflow.lite``) offer no per-op profiler: the ``Interpreter`` has only
  ``experimental_force_delegate_node_profiling``, which feeds a C++ profiler that Python cannot
  attach, and ``litert-benchmark`` (``ai_edge_litert.tools.benchmark_litert_model``) times whole
  runs only.
* :class:`AndroidProfiler`: the same binary for Android, pushed and run over adb by
  ``deploy.benchmark.android.benchmark_android`` with op profiling on.

Mapping a profile to layers, for one subnet:

1. the model's TFLite ops in execution order, with their tensor shapes, are read from the
   flatbuffer (:func:`tflite_ops`), and each is matched to a Keras layer's key by op, input and output
   shape and kernel (:func:`match_keys`; the converter may order parallel branches differently from
   Keras, so matching is by configuration, not by position);
2. the profile's rows are matched to those ops in order (:func:`attribute`): rows of builtin kernels
   name the op (``CONV_2D``); rows of the XNNPACK delegate name XNNPACK operators
   (``Convolution (NHWC, QC8) IGEMM``), which follow the delegated nodes in order and are mapped to the
   builtin ops they implement (:data:`XNNPACK_OPS`). An op without a row (fused or elided by the
   delegate) costs nothing; a row that matches no remaining op is an error naming it.

An entry's latency is the median of its in-place times over the calibration subnets. Ops without a
key (QUANTIZE, RESHAPE, ...) are left to the additive model's constant, fitted as for isolated tables
against the profiled runs' whole latency (``Inference (avg)``); the held-out subnets' errors are
reported the same way.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from deploy import latency_table as lt
from deploy.errors import DeployError, UsageError

# XNNPACK operator names (the profile's node type, up to the first " (") -> the builtin ops they implement.
XNNPACK_OPS: dict[str, tuple[str, ...]] = {
    "Convolution": ("CONV_2D",),
    "Depthwise Convolution": ("DEPTHWISE_CONV_2D",),
    "Fully Connected": ("FULLY_CONNECTED",),
    "Add": ("ADD",),
    "Subtract": ("SUB",),
    "Multiply": ("MUL",),
    "Mean": ("MEAN",),
    "Global Average Pooling": ("MEAN", "AVERAGE_POOL_2D"),
    "Average Pooling": ("AVERAGE_POOL_2D",),
    "Max Pooling": ("MAX_POOL_2D",),
    "Constant Pad": ("PAD",),
    "Copy": ("RESHAPE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION"),
    "Concatenate": ("CONCATENATION",),
    "Convert": ("QUANTIZE", "DEQUANTIZE"),
    "Sigmoid": ("LOGISTIC",),
    "HardSwish": ("HARD_SWISH",),
    "Clamp": ("RELU", "RELU6", "RELU_N1_TO_1"),
    "Softmax": ("SOFTMAX",),
    "Transpose": ("TRANSPOSE",),
    "Maximum": ("MAXIMUM",),
    "Minimum": ("MINIMUM",),
}


def ops_of_row(node_type: str) -> tuple[str, ...]:
    """The builtin TFLite ops a profile row's node type can stand for."""
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", node_type):  # a builtin kernel names its op
        return (node_type,)
    if node_type == "TfLiteXNNPackDelegate":
        raise DeployError(
            "the op profile lists the whole XNNPACK delegate as one node (TfLiteXNNPackDelegate), not its "
            "operators: use a benchmark_model from TensorFlow 2.10 or later, or profile with --use_xnnpack=false"
        )
    name = node_type.split(" (", 1)[0].strip()
    if name == "Convolution" and "DWConv" in node_type:  # XNNPACK runs depthwise convolutions as DWConv
        return ("DEPTHWISE_CONV_2D",)
    if name in XNNPACK_OPS:
        return XNNPACK_OPS[name]
    raise DeployError(
        f"op profile node type {node_type!r} is not one this module maps to a TFLite op; known XNNPACK "
        f"operators: {sorted(XNNPACK_OPS)} (or a builtin op name such as CONV_2D)"
    )


@dataclasses.dataclass(frozen=True)
class TfliteOp:
    """One op of a TFLite model's main subgraph, in execution order."""

    index: int
    op: str
    inputs: tuple[tuple[int, ...], ...]  # shapes of its inputs (weights included), batch first
    output: tuple[int, ...]


def tflite_ops(flatbuffer: bytes) -> list[TfliteOp]:
    """The ops of ``flatbuffer`` in execution order (read with the builtin resolver, no delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=flatbuffer,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in interpreter.get_tensor_details()}
    return [
        TfliteOp(int(o["index"]), str(o["op_name"]), tuple(shapes[i] for i in o["inputs"] if i >= 0),
                 shapes[o["outputs"][0]])
        for o in interpreter._get_ops_details()  # the interpreter's only op listing (private API)
    ]


def _hw_c(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(h, w, channels) of a [1, H, W, C] or [1, C] tensor shape."""
    if len(shape) == 4:
        return shape[1], shape[2], shape[3]
    return 1, 1, shape[-1]


def _fits(key: lt.LayerKey, op: TfliteOp) -> bool:
    """Whether ``op`` can be the TFLite op of the layer configuration ``key``."""
    if key.op != op.op or not op.inputs:
        return False
    h, w, c = _hw_c(op.inputs[0])
    cin = sum(_hw_c(s)[2] for s in op.inputs if len(s) == len(op.inputs[0])) if op.op == "CONCATENATION" else c
    oh, ow, cout = _hw_c(op.output)
    if (key.in_h, key.in_w, key.cin, key.cout) != (h, w, cin, cout):
        return False
    if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D") and len(op.inputs) > 1 and len(op.inputs[1]) == 4:
        if key.kernel != (op.inputs[1][1], op.inputs[1][2]):
            return False
    return op.op in ("FULLY_CONNECTED", "MEAN") or key.out_hw() == (oh, ow)


def match_keys(keys: Sequence[lt.LayerKey], ops: Sequence[TfliteOp]) -> list[lt.LayerKey | None]:
    """The layer configuration of each TFLite op (None for ops no Keras layer is keyed to, such as
    QUANTIZE or RESHAPE). Each key is used once; among equal candidates the first in model order."""
    free = list(keys)
    out: list[lt.LayerKey | None] = []
    for op in ops:
        hit = next((i for i, k in enumerate(free) if _fits(k, op)), None)
        out.append(None if hit is None else free.pop(hit))
    return out


def attribute(per_op: Sequence[Mapping[str, Any]], ops: Sequence[TfliteOp]) -> list[float]:
    """Average ms of each TFLite op from a profile's run-order rows (``parse_op_profile``'s ``per_op``).

    Rows are taken in order; each goes to the next op it can stand for (:func:`ops_of_row`), ops passed
    over get 0 (fused or elided by the delegate)."""
    ms = [0.0] * len(ops)
    j = 0
    for i, row in enumerate(per_op):
        allowed = ops_of_row(row["node_type"])
        while j < len(ops) and ops[j].op not in allowed:
            j += 1
        if j == len(ops):
            raise DeployError(
                f"op profile row {i} ({row['node_type']!r}, {row.get('name', '')!r}) matches no remaining op of the "
                f"model (ops: {[o.op for o in ops]}); was the profile taken on this .tflite file?"
            )
        ms[j] += float(row["avg_ms"])
        j += 1
    return ms


def layer_times(model: Any, flatbuffer: bytes, profile: Mapping[str, Any]) -> tuple[dict[lt.LayerKey, list[float]], float]:
    """In-place times of ``model``'s layer configurations from a profile of its ``flatbuffer``:
    ``({key: [ms, ...]}, ms of the ops no layer is keyed to)``.

    Raises DeployError when a keyed layer of the model got no op (the profile cannot price it)."""
    if not profile or not profile.get("per_op"):
        raise DeployError("the benchmark_model output has no per-op profile: run it with --enable_op_profiling=true")
    keys = lt.layer_keys(model)
    ops = tflite_ops(flatbuffer)
    matched = match_keys(keys, ops)
    missing = list(keys)
    for key in matched:
        if key is not None:
            missing.remove(key)
    if missing:
        raise DeployError(f"model {model.name!r}: layer configurations without a TFLite op to profile them: "
                          f"{sorted({k.describe() for k in missing})}")
    times: dict[lt.LayerKey, list[float]] = {}
    rest = 0.0
    for key, ms in zip(matched, attribute(profile["per_op"], ops)):
        if key is None:
            rest += ms
        else:
            times.setdefault(key, []).append(ms)
    return times, rest


# --------------------------------------------------------------------------------------------
# Profilers: ``profiler(list of .tflite paths) -> list of {"latency_ms": mean ms, "op_profile": ...}``


def _benchmark_args(graph: str, threads: int, runs: int, warmup: int, use_xnnpack: bool) -> list[str]:
    return [f"--graph={graph}", f"--num_threads={threads}", f"--num_runs={runs}", f"--warmup_runs={warmup}",
            f"--use_xnnpack={'true' if use_xnnpack else 'false'}", "--enable_op_profiling=true"]


@dataclasses.dataclass
class HostProfiler:
    """Runs a ``benchmark_model`` binary for this machine on each model, op profiling on."""

    binary: str
    threads: int = 1
    runs: int = 50
    warmup: int = 5
    use_xnnpack: bool = True
    timeout_s: float = 600.0
    target: str = "host"

    def __post_init__(self):
        if not os.path.isfile(self.binary) or not os.access(self.binary, os.X_OK):
            raise UsageError(f"--benchmark_model={self.binary!r} is not an executable file: pass TFLite's "
                             "benchmark_model for this machine (bazel build -c opt //tensorflow/lite/tools/benchmark:benchmark_model)")

    def command(self, model_path: str) -> list[str]:
        return [self.binary, *_benchmark_args(model_path, self.threads, self.runs, self.warmup, self.use_xnnpack)]

    def __call__(self, model_paths: Sequence[str]) -> list[dict[str, Any]]:
        from deploy.benchmark import android, schema

        out = []
        for path in model_paths:
            command = self.command(path)
            try:
                proc = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s, check=False)
            except subprocess.TimeoutExpired:
                raise DeployError(f"`{shlex.join(command)}` did not finish within {self.timeout_s:.0f} s") from None
            parsed = android.parse_benchmark_output(proc.stdout + "\n" + proc.stderr)
            out.append({"latency_ms": parsed["inference_avg_ms"], "op_profile": parsed["op_profile"],
                        "command": shlex.join(command), "environment": schema.host_environment()})
        return out


@dataclasses.dataclass
class AndroidProfiler:
    """Runs ``benchmark_model`` on an Android device over adb (``deploy.benchmark.android``), op profiling on."""

    binary: str | None
    serial: str | None = None
    adb: str | None = None
    threads: int = 1
    runs: int = 50
    warmup: int = 5
    use_xnnpack: bool = True
    taskset: str | None = None
    env: Mapping[str, str] | None = None
    target: str = "android"

    def __call__(self, model_paths: Sequence[str]) -> list[dict[str, Any]]:
        from deploy.benchmark import android

        out = []
        for path in model_paths:
            record = android.benchmark_android(
                path, self.binary, serial=self.serial, threads=self.threads, runs=self.runs, warmup=self.warmup,
                use_xnnpack=self.use_xnnpack, op_profiling=True, taskset=self.taskset, adb=self.adb, env=self.env)
            out.append({"latency_ms": float(record["latency_ms"]["mean"]), "op_profile": record["op_profile"],
                        "command": record["environment"].get("command"), "environment": record["environment"]})
        return out


# --------------------------------------------------------------------------------------------
# The table


def build_profiled_table(
    model: Any,
    profiler: Callable[[Sequence[str]], list[dict[str, Any]]],
    target: str,
    quant: str = "fp32",
    threads: int = 1,
    calibration_subnets: int = 6,
    holdout_subnets: int = 8,
    fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    seed: int = 0,
    channel_multiple: int = 1,
    progress: Callable[[str], None] | None = None,
) -> lt.LatencyTable:
    """A latency table for ``model``'s width space from per-op profiles of whole subnets on ``target``
    (``threads`` and the delegate are the profiler's when it names them)."""
    threads = int(getattr(profiler, "threads", threads))
    if target not in lt.TARGETS:
        raise UsageError(f"target must be one of {list(lt.TARGETS)}, got {target!r}")
    say = progress or (lambda message: None)
    started = time.time()
    calibration, holdout = lt.draw_subnets(model, calibration_subnets, holdout_subnets, fractions, seed,
                                           channel_multiple)
    nets = calibration + holdout
    with tempfile.TemporaryDirectory() as tmp:
        flatbuffers, paths = [], []
        for i, net in enumerate(nets):
            say(f"converting subnet {i + 1}/{len(nets)} ({net.name}, {quant})")
            flatbuffers.append(lt.to_tflite(net, quant))
            paths.append(os.path.join(tmp, f"{net.name}_{quant}.tflite"))
            with open(paths[-1], "wb") as f:
                f.write(flatbuffers[-1])
        say(f"profiling {len(nets)} subnets on {target}")
        profiles = profiler(paths)
    if len(profiles) != len(nets):
        raise DeployError(f"the profiler returned {len(profiles)} profiles for {len(nets)} models")
    samples: dict[lt.LayerKey, list[float]] = {}
    unkeyed = []
    for net, data, profile in zip(calibration, flatbuffers, profiles):
        times, rest = layer_times(net, data, profile["op_profile"])
        unkeyed.append(rest)
        for key, values in times.items():
            samples.setdefault(key, []).extend(values)
    table = lt.LatencyTable({k: float(np.median(v)) for k, v in samples.items()})
    first = profiles[0]
    return lt.finish_table(
        table, model, calibration, holdout, [float(p["latency_ms"]) for p in profiles], target=target, quant=quant,
        threads=threads, delegate="xnnpack" if getattr(profiler, "use_xnnpack", True) else "none",
        method="op_profile", fractions=fractions, seed=seed, channel_multiple=channel_multiple, started=started,
        environment=first.get("environment") or {},
        source={"profiler": type(profiler).__name__, "command": first.get("command"),
                "unkeyed_ops_ms": unkeyed})  # per calibration subnet: ops no layer is keyed to (left to the constant)
