"""Latency tables: per-layer latencies measured on a target, and an additive predictor a width search
can use as a budget.

What it does (host target: LiteRT with XNNPACK, the same runtime deploy.benchmark's host target uses):

1. samples random sub-networks of the model: every prunable channel group of
   ``cafe_tf.graph.ChannelGraph`` keeps a random fraction of its channels (from ``--fractions``),
   and ``cafe_tf.surgery.extract`` builds the plain model;
2. lists the *layer configurations* of the calibration subnets (:func:`layer_keys`): one
   :class:`LayerKey` per layer that becomes a TFLite op (BatchNormalization and ReLU after a
   convolution, dense layer or add are fused by the converter and cost nothing on their own);
3. measures each configuration alone: a one-layer model converted like deploy.export does (same
   quantization) and timed with the interpreter (median of as many invokes as take about 30 ms, 10 to
   300, best of ``--rounds`` interleaved rounds);
4. measures the calibration subnets whole and fits ``predicted = constant_ms + scale * sum(layer_ms)``
   by least squares (the constant absorbs per-invoke overhead, the scale what isolation misses:
   caches, threading);
5. measures the held-out subnets and reports how many are predicted within +-10%.

A configuration missing from the table is interpolated from the measured ones of the same op,
kernel, stride, padding and input size: piecewise-linear in the channel count when input and output
channels move together (depthwise, add, pooling), a least-squares line of latency against MACs for
convolutions and dense layers, and a MACs-proportional estimate from the nearest entry (or from all
entries of the op) as the last resort.

A table can also be built from per-op profiles of whole subnets taken on the target
(``deploy.op_profile``: ``benchmark_model --enable_op_profiling=true`` on the host or over adb on
Android): each op is timed in place, inside its network, so caches and threading are included.

File format (schema ``latency_table``, version 3, written atomically with ``cafe_tf.io``)::

    {"schema": "latency_table", "schema_version": 3,
     "target": "host" | "android", "quant": "fp32" | "int8", "threads": 1, "delegate": "xnnpack",
     "method": "isolated" | "op_profile",
     "model_fingerprint": "sha256:...",  # model_fingerprint(): the full model's layer configurations
     "entries": [{"op": "CONV_2D", "kernel": [3, 3], "stride": [1, 1], "padding": "same",
                  "in_hw": [32, 32], "cin": 16, "cout": 16, "extra": "", "ms": 0.153}, ...],
     "model": {"constant_ms": float, "scale": float,
               "formula": "predicted_ms = constant_ms + scale * sum(layer_ms)"},
     "fit": {...}, "holdout": {"within_10pct": fraction, "mean_abs_error_pct": .., "p90_abs_error_pct": ..,
                               "max_abs_error_pct": .., "rows": [...]},
     "source": {...}, "environment": {...}, "created": "..."}

Use in a search: ``LatencyTable.load(path).predict_ms(keras_model)`` for any plain Keras model made
of the layers above (others are keyed by class and need an entry of their own). A width search asks
``predict_widths_ms(space, widths)`` instead: for a batch of width assignments of a
``cafe_tf.space.SearchSpace`` it gives the same numbers (to the bit) without building a model, since
only the channel counts of the layer configurations change with the widths (:class:`WidthsPlan`).
The checker's operations under a latency bound get hundreds of times faster than extracting a model
per candidate (``benchmarks/latency_budget_speed.py``).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from deploy.errors import DeployError, UsageError

SCHEMA = "latency_table"
VERSION = 3
QUANTS = ("fp32", "int8")
TARGETS = ("host", "android")
METHODS = ("isolated", "op_profile")
FORMULA = "predicted_ms = constant_ms + scale * sum(layer_ms)"
# Ops the converter fuses into the producing op: they get no entry of their own.
_FUSABLE_ACTIVATIONS = ("relu", "relu6", "linear")


@dataclasses.dataclass(frozen=True, order=True)
class LayerKey:
    """A layer configuration: what its latency depends on."""

    op: str  # TFLite op it becomes: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, MEAN, ...
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: str  # "same" | "valid" | ""
    in_h: int
    in_w: int
    cin: int
    cout: int
    extra: str = ""  # op-specific details (activation name, paddings, a layer config)

    @property
    def group(self) -> tuple:
        """Everything but the channel counts: the entries latency is interpolated within."""
        return (self.op, self.kernel, self.stride, self.padding, self.in_h, self.in_w, self.extra)

    def out_hw(self) -> tuple[int, int]:
        if self.op in ("FULLY_CONNECTED", "MEAN", "REDUCE_MAX"):
            return (1, 1)
        (kh, kw), (sh, sw) = self.kernel, self.stride
        if self.padding == "valid":
            return ((self.in_h - kh) // sh + 1, (self.in_w - kw) // sw + 1)
        return (math.ceil(self.in_h / sh), math.ceil(self.in_w / sw))

    def macs(self) -> int:
        """Multiply-accumulates (element operations for element-wise ops)."""
        oh, ow = self.out_hw()
        kh, kw = self.kernel
        if self.op == "CONV_2D":
            return oh * ow * kh * kw * self.cin * self.cout
        if self.op == "DEPTHWISE_CONV_2D":
            return oh * ow * kh * kw * self.cout
        if self.op == "FULLY_CONNECTED":
            return self.in_h * self.in_w * self.cin * self.cout
        if self.op in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            return oh * ow * kh * kw * self.cout
        return self.in_h * self.in_w * max(self.cin, self.cout)

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op, "kernel": list(self.kernel), "stride": list(self.stride), "padding": self.padding,
            "in_hw": [self.in_h, self.in_w], "cin": self.cin, "cout": self.cout, "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerKey:
        return cls(
            op=str(d["op"]), kernel=tuple(int(v) for v in d["kernel"]), stride=tuple(int(v) for v in d["stride"]),  # type: ignore[arg-type]
            padding=str(d.get("padding", "")), in_h=int(d["in_hw"][0]), in_w=int(d["in_hw"][1]),
            cin=int(d["cin"]), cout=int(d["cout"]), extra=str(d.get("extra", "")),
        )

    def describe(self) -> str:
        k = f" k{self.kernel[0]}x{self.kernel[1]} s{self.stride[0]}" if self.kernel != (1, 1) or self.stride != (1, 1) else ""
        extra = f" [{self.extra[:40]}]" if self.extra else ""
        return f"{self.op}{k} {self.in_h}x{self.in_w} {self.cin}->{self.cout}{extra}"


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _static(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in shape[1:])


def _producer(tensor: Any) -> Any:
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def _fused_into_producer(layer: Any, rule: Any) -> bool:
    """Whether the converter fuses ``layer`` (BN / ReLU) into the op that produces its input."""
    import keras

    from cafe_tf import layers as rules

    if not isinstance(rule, (rules.BatchNorm, rules.Activation)):
        return False
    producer = _producer(layer.input)
    if isinstance(rule, rules.BatchNorm):
        return getattr(rules.resolve(producer), "filtered", False)
    cfg = layer.get_config()
    if isinstance(layer, keras.layers.ReLU):
        if cfg.get("negative_slope") or cfg.get("threshold") or cfg.get("max_value") not in (None, 6.0, 6):
            return False
    elif not isinstance(layer, keras.layers.Activation) or cfg.get("activation") not in _FUSABLE_ACTIVATIONS:
        return False
    while isinstance(rules.resolve(producer), rules.BatchNorm):
        producer = _producer(producer.input)
    return getattr(rules.resolve(producer), "fuses_activation", False)


def _op_shapes(op: Any) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    node = op._inbound_nodes[-1]
    return [_static(t.shape) for t in node.input_tensors], _static(node.outputs[0].shape)


def layer_key(layer: Any) -> LayerKey | None:
    """The configuration of one Keras layer (or operation), or None when it costs nothing on its own.

    The op, kernel, stride, padding and details come from the layer's rule in ``cafe_tf.layers``."""
    from cafe_tf import layers as rules

    import keras

    if isinstance(layer, keras.layers.InputLayer):
        return None
    rule = rules.resolve(layer) or rules.LayerRule()
    if _fused_into_producer(layer, rule):
        return None
    in_shapes, out_shape = _op_shapes(layer)
    spec = rule.latency_key(layer, in_shapes, out_shape)
    if spec is None:
        return None
    op, kernel, stride, padding, extra = spec
    in_shape = in_shapes[0] if in_shapes else out_shape
    h, w = (in_shape[0], in_shape[1]) if len(in_shape) == 3 else (1, 1)
    cin = sum(int(s[-1]) for s in in_shapes) if op == "CONCATENATION" else int(in_shape[-1])
    return LayerKey(op, kernel, stride, padding, h, w, cin, int(out_shape[-1]), extra)


def layer_keys(model: Any) -> list[LayerKey]:
    """The configurations of ``model``'s cost-bearing layers, in model order."""
    if len(model.inputs) != 1:
        raise DeployError(f"latency tables take single-input models; {model.name!r} has {len(model.inputs)} inputs")
    keys = []
    for layer in _operations(model):
        key = layer_key(layer)
        if key is not None:
            keys.append(key)
    return keys


def model_fingerprint(model: Any) -> str:
    """The fingerprint of ``model``'s width space: a hash of its input shape and its full-width layer
    configurations (weights and names do not enter), so a table is refused for another architecture,
    input size or class count (:meth:`LatencyTable.check_model`)."""
    import hashlib
    import json

    payload = {"input_shape": [int(d) for d in model.inputs[0].shape[1:]],
               "layers": [k.to_dict() for k in layer_keys(model)]}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"sha256:{digest[:16]}"


class TableMismatchError(DeployError):
    """A latency table from another model or target than the one it is used for."""


class LatencyBudgetExceeded(DeployError):
    """The network a search chose under ``max_latency_ms`` measures over the budget by more than the table's error."""


def _operations(model: Any) -> list:
    """The model's layers and Keras operations, in model order."""
    return list(getattr(model, "operations", model.layers))


def build_layer_model(key: LayerKey) -> Any:
    """A one-layer Keras model with configuration ``key`` (random weights: latency does not care),
    built by the rule that owns the key's op (``cafe_tf.layers``)."""
    import keras

    from cafe_tf import layers as rules

    try:
        rule = rules.rule_for_latency_op(key.op)
        body = rule.latency_layer(key)
    except rules.UnsupportedModelError as e:
        raise DeployError(str(e)) from None
    if key.op == "FULLY_CONNECTED" and (key.in_h, key.in_w) == (1, 1):
        inputs = keras.Input((key.cin,), name="x")
    else:
        inputs = keras.Input((key.in_h, key.in_w, rule.latency_input_channels(key)), name="x")
    return keras.Model(inputs, body(inputs))


# --------------------------------------------------------------------------------------------
# Measuring


def to_tflite(model: Any, quant: str) -> bytes:
    """Converts ``model`` the way deploy.export does (static batch 1; int8 calibrated on random data)."""
    from deploy import export

    if quant not in QUANTS:
        raise UsageError(f"quant must be one of {list(QUANTS)}, got {quant!r}")
    calibration = None
    if quant == "int8":
        shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        calibration = np.random.default_rng(0).standard_normal((16, *shape)).astype(np.float32)
    return export.convert_keras(model, quant, batch_size=1, calibration=calibration, io_type="float32", image_input=False)


def _median_ms(interpreter, runs: int) -> float:
    samples = np.empty(runs)
    invoke = interpreter.invoke
    clock = time.perf_counter_ns
    for i in range(runs):
        start = clock()
        invoke()
        samples[i] = clock() - start
    return float(np.median(samples)) / 1e6


def measure_flatbuffers(
    flatbuffers: Sequence[bytes], threads: int = 1, runs: int = 30, warmup: int = 5, rounds: int = 2
) -> list[float]:
    """Median invoke latency (ms) of each model, best of ``rounds`` rounds interleaved over all models
    so that background load affects them alike."""
    from deploy.benchmark import host

    interpreters = []
    for data in flatbuffers:
        interpreter = host.make_interpreter(data, threads, use_xnnpack=True)
        host.fill_inputs(interpreter)
        for _ in range(warmup):
            interpreter.invoke()
        interpreters.append(interpreter)
    best = np.full(len(interpreters), np.inf)
    for _ in range(rounds):
        for i, interpreter in enumerate(interpreters):
            best[i] = min(best[i], _median_ms(interpreter, runs))
    return best.tolist()


def _runs_for(data: bytes, threads: int, target_ms: float = 30.0, minimum: int = 10, maximum: int = 300) -> int:
    """Enough runs for about ``target_ms`` of timing per round."""
    one = measure_flatbuffers([data], threads, runs=3, warmup=2, rounds=1)[0]
    return int(np.clip(target_ms / max(one, 1e-3), minimum, maximum))


def measure_keys(
    keys: Iterable[LayerKey], quant: str = "fp32", threads: int = 1, rounds: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict[LayerKey, float]:
    """Measures every configuration in ``keys`` alone; returns ``{key: ms}``."""
    keys = sorted(set(keys))
    flatbuffers = []
    for i, key in enumerate(keys):
        if progress:
            progress(f"converting layer {i + 1}/{len(keys)}: {key.describe()}")
        flatbuffers.append(to_tflite(build_layer_model(key), quant))
    runs = max(_runs_for(f, threads) for f in flatbuffers[:3]) if flatbuffers else 10
    if progress:
        progress(f"timing {len(keys)} layer models ({runs} runs x {rounds} rounds each)")
    times = measure_flatbuffers(flatbuffers, threads, runs=runs, rounds=rounds)
    return dict(zip(keys, times))


def measure_models(models: Sequence[Any], quant: str = "fp32", threads: int = 1, rounds: int = 3) -> list[float]:
    """Whole-model latencies (ms) of plain Keras models, interleaved."""
    flatbuffers = [to_tflite(m, quant) for m in models]
    runs = min(_runs_for(f, threads) for f in flatbuffers) if flatbuffers else 10
    return measure_flatbuffers(flatbuffers, threads, runs=runs, rounds=rounds)


# --------------------------------------------------------------------------------------------
# Layer configurations as functions of the group widths


_ELEMENTWISE_OPS = ("ADD", "SUB", "MUL")


@dataclasses.dataclass
class WidthsPlan:
    """How the layer configurations of a channel graph's model follow its group widths.

    Only the channel counts of a :class:`LayerKey` change with the widths (kernel, stride, padding
    and spatial size do not), and each is a tensor's channel count: ``repeat * sum`` of the widths
    of the groups laid along its last axis (``cafe_tf.graph.TensorSpace``). So ``cin`` and ``cout``
    of every layer are one integer matrix product of the widths, batched.
    """

    graph: Any
    keys: tuple[LayerKey, ...]  # at full width, in model order
    cin_matrix: np.ndarray  # (groups + 1, layers) int64: cin = [widths, 1] @ cin_matrix
    cout_matrix: np.ndarray
    cout_span: np.ndarray  # (layers,) a layer's code is offset + cin * cout_span + cout
    offsets: np.ndarray
    full_widths: np.ndarray
    memo: dict[int, float] = dataclasses.field(default_factory=dict)  # code -> layer ms

    @classmethod
    def of(cls, graph: Any) -> WidthsPlan:
        """The plan of a ``cafe_tf.graph.ChannelGraph`` (its model's layers, in model order)."""
        model, num_groups = graph.model, len(graph.groups)
        if len(model.inputs) != 1:
            raise DeployError(f"latency tables take single-input models; {model.name!r} has {len(model.inputs)} inputs")

        def counts(space) -> np.ndarray:
            column = np.zeros(num_groups + 1, np.int64)
            for g, _ in space.segments:
                column[g] += space.repeat
            return column

        keys, cin_cols, cout_cols = [], [], []
        for layer in _operations(model):
            key = layer_key(layer)
            if key is None:
                continue
            node = graph.node_by_name[layer.name]
            if key.op.startswith(("LAYER:", "OP:")) and node.rule is not None and node.rule.producer:
                raise NotImplementedError(f"layer {layer.name!r} is keyed by its config, which holds its width")
            cout = counts(node.out_space)
            inputs = [counts(graph.node_by_name[i].out_space) for i in node.inputs]
            cin = cout if key.op in _ELEMENTWISE_OPS else sum(inputs) if key.op == "CONCATENATION" else inputs[0]
            full = np.append(graph.full_widths(), 1)
            if (int(full @ cin), int(full @ cout)) != (key.cin, key.cout):
                raise NotImplementedError(f"the channel counts of layer {layer.name!r} do not follow its groups' widths")
            keys.append(key)
            cin_cols.append(cin)
            cout_cols.append(cout)
        cin_matrix = np.stack(cin_cols, axis=1)
        cout_matrix = np.stack(cout_cols, axis=1)
        cout_span = np.array([k.cout + 1 for k in keys], np.int64)  # widths never exceed the full model's
        sizes = np.array([k.cin + 1 for k in keys], np.int64) * cout_span
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return cls(graph, tuple(keys), cin_matrix, cout_matrix, cout_span, offsets, graph.full_widths())

    def channels(self, channel_widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cin, cout) of every layer, [N, layers], for group widths [N, groups]; checks the widths."""
        w = np.atleast_2d(np.asarray(channel_widths))
        if w.ndim != 2 or w.shape[1] != len(self.full_widths) or not np.issubdtype(w.dtype, np.integer):
            raise ValueError(f"channel widths must be integers of shape [N, {len(self.full_widths)}], got {w.dtype} {w.shape}")
        if ((w < 1) | (w > self.full_widths)).any():
            raise ValueError("channel widths must lie in 1..each group's size")
        w_ext = np.concatenate([w.astype(np.int64), np.ones((len(w), 1), np.int64)], axis=1)
        return w_ext @ self.cin_matrix, w_ext @ self.cout_matrix

    def key_of(self, code: int) -> LayerKey:
        """The layer configuration a code stands for."""
        layer = int(np.searchsorted(self.offsets, code, side="right")) - 1
        cin, cout = divmod(code - int(self.offsets[layer]), int(self.cout_span[layer]))
        return dataclasses.replace(self.keys[layer], cin=cin, cout=cout)


# --------------------------------------------------------------------------------------------
# The table


class LatencyTable:
    """Per-layer latencies and the additive model; ``predict_ms(model)`` is the search's budget."""

    def __init__(
        self,
        entries: Mapping[LayerKey, float],
        constant_ms: float = 0.0,
        scale: float = 1.0,
        info: Mapping[str, Any] | None = None,
    ):
        self.entries = dict(entries)
        self.constant_ms = float(constant_ms)
        self.scale = float(scale)
        self.info = dict(info or {})
        self._plans: dict[int, WidthsPlan] = {}  # by id(graph); the plan holds its graph, so the id stays its own
        self._groups: dict[tuple, list[tuple[LayerKey, float]]] = {}
        self._by_op: dict[str, list[tuple[LayerKey, float]]] = {}
        for key, ms in self.entries.items():
            self._groups.setdefault(key.group, []).append((key, ms))
            self._by_op.setdefault(key.op, []).append((key, ms))

    # -- lookup -------------------------------------------------------------------------------

    def layer_ms(self, key: LayerKey) -> float:
        """The latency of one configuration: measured, else interpolated (see the module docstring)."""
        if key in self.entries:
            return self.entries[key]
        group = self._groups.get(key.group, [])
        if group:
            return _interpolate(key, group)
        same_op = self._by_op.get(key.op, [])
        if not same_op:
            raise DeployError(
                f"the latency table has no measurement of op {key.op} ({key.describe()}); rebuild it with a model that has such a layer"
            )
        macs = np.array([k.macs() for k, _ in same_op], dtype=np.float64)
        ms = np.array([v for _, v in same_op])
        if len(same_op) >= 2 and np.ptp(macs) > 0:
            slope, intercept = np.polyfit(macs, ms, 1)
            return float(max(intercept + slope * key.macs(), ms.min() * 0.5))
        nearest = int(np.argmin(np.abs(np.log((macs + 1) / (key.macs() + 1)))))
        return float(ms[nearest] * (key.macs() + 1) / (macs[nearest] + 1))

    def sum_layers_ms(self, model: Any) -> float:
        """Sum of ``model``'s layer latencies (unscaled)."""
        # Added one by one in model order: predict_channel_widths_ms adds in the same order, so the
        # two paths agree to the bit and a search decides alike on either.
        total = 0.0
        for key in layer_keys(model):
            total += self.layer_ms(key)
        return total

    def predict_ms(self, model: Any) -> float:
        """Predicted latency (ms) of the plain Keras model ``model`` on this table's target."""
        return self.constant_ms + self.scale * self.sum_layers_ms(model)

    def predict_channel_widths_ms(self, graph: Any, channel_widths: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of ``graph``'s sub-networks with these group widths ([N, groups]
        channels, all groups by id), without building them: equal to ``predict_ms`` of each extracted model.

        Raises NotImplementedError when a layer's configuration depends on the widths in a way
        the plan cannot follow (then build the model and call ``predict_ms``).
        """
        plan = self._plans.get(id(graph))
        if plan is None or plan.graph is not graph:
            plan = self._plans[id(graph)] = WidthsPlan.of(graph)
        cin, cout = plan.channels(channel_widths)
        codes = plan.offsets + cin * plan.cout_span + cout
        unique, inverse = np.unique(codes, return_inverse=True)
        values = np.empty(len(unique))
        memo = plan.memo
        for i, code in enumerate(unique.tolist()):
            ms = memo.get(code)
            if ms is None:
                ms = memo[code] = self.layer_ms(plan.key_of(code))
            values[i] = ms
        layer_ms = values[inverse.reshape(codes.shape)]
        total = np.zeros(len(codes))
        for column in layer_ms.T:  # sequential, in model order, as sum_layers_ms adds
            total += column
        return self.constant_ms + self.scale * total

    def predict_widths_ms(self, space: Any, widths: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of a batch of bin widths [N, G] of a ``cafe_tf.space.SearchSpace``
        (leftmost bins, as the search extracts them): one vectorised call, no Keras model built."""
        return self.predict_channel_widths_ms(space.graph, space.channel_widths(np.atleast_2d(widths)))

    def within_budget(self, model: Any, budget_ms: float) -> bool:
        """Whether ``model``'s predicted latency is at most ``budget_ms``."""
        return self.predict_ms(model) <= budget_ms

    def breakdown(self, model: Any) -> list[dict[str, Any]]:
        """Per-layer predicted contribution (ms, after scaling) and whether it was measured."""
        return [
            {"layer": k.describe(), "ms": self.scale * self.layer_ms(k), "measured": k in self.entries}
            for k in layer_keys(model)
        ]

    # -- what the table is for ----------------------------------------------------------------

    @property
    def stated_error_pct(self) -> float | None:
        """The table's stated error: the 90th percentile of |predicted - measured| / measured (%) over
        its held-out subnets, or None when it has none (a table made in code)."""
        held = self.info.get("holdout") or {}
        if held.get("p90_abs_error_pct") is not None:
            return float(held["p90_abs_error_pct"])
        rows = held.get("rows") or []  # version 1 files: from the rows
        return error_stats([r["error_pct"] for r in rows])["p90_abs_error_pct"] if rows else None

    def describe(self) -> str:
        """One line naming what the table was built for."""
        source = self.info.get("source") or {}
        return (f"model {source.get('model', '?')!r} (fingerprint {self.info.get('model_fingerprint', 'none')}, "
                f"input {source.get('input_shape', '?')}), target {self.info.get('target', '?')!r}, "
                f"{self.info.get('quant', '?')}, {self.info.get('threads', '?')} thread(s), "
                f"method {self.info.get('method', 'isolated')!r}")

    def check_model(self, model: Any, target: str | None = None, where: str = "the latency table") -> None:
        """Raises :class:`TableMismatchError`, naming both sides, when the table was built for another
        model (fingerprint) or, with ``target`` given, another target. A table without a fingerprint
        (version 1, or made in code) is only checked against ``target``."""
        if target and self.info.get("target") and self.info["target"] != target:
            raise TableMismatchError(
                f"{where} was built for target {self.info['target']!r}, but this run budgets latency on "
                f"target {target!r}; build a table on {target!r} (deploy.latency_table --target {target}) "
                f"or set the target to {self.info['target']!r}. The table: {self.describe()}"
            )
        expected = self.info.get("model_fingerprint")
        if not expected:
            return
        actual = model_fingerprint(model)
        if actual != expected:
            shape = [int(d) for d in model.inputs[0].shape[1:]]
            raise TableMismatchError(
                f"{where} was built for another model: the table is for {self.describe()}; this run's model "
                f"is {model.name!r} (fingerprint {actual}, input {shape}, {len(layer_keys(model))} layer "
                f"configurations). Build a table for this model: python -m deploy.latency_table --model MODEL.keras"
            )

    # -- files ----------------------------------------------------------------------------------

    def to_payload(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.info.items() if k not in ("entries", "model")},
            "entries": [{**k.to_dict(), "ms": ms} for k, ms in sorted(self.entries.items())],
            "model": {"constant_ms": self.constant_ms, "scale": self.scale, "formula": FORMULA},
        }

    def save(self, path: str | os.PathLike) -> None:
        from cafe_tf import io as cafe_io

        payload = self.to_payload()
        _validate({"schema": SCHEMA, "schema_version": VERSION, **payload})
        cafe_io.write_artifact(path, SCHEMA, VERSION, payload)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Reads and validates a table file (raises ``cafe_tf.io.ArtifactError`` naming the problem)."""
        from cafe_tf import io as cafe_io

        obj = cafe_io.read_artifact(path, SCHEMA, (VERSION,), ("target", "quant", "threads", "method", "model_fingerprint",
                                                        "entries", "model"), _validate,
                                    writer="python -m deploy.latency_table (or deploy.op_profile)")
        entries = {LayerKey.from_dict(e): float(e["ms"]) for e in obj["entries"]}
        info = {k: v for k, v in obj.items() if k not in ("schema", "schema_version", "entries", "model")}
        return cls(entries, obj["model"]["constant_ms"], obj["model"]["scale"], info)


def load(path: str | os.PathLike) -> LatencyTable:
    """Loads a latency table file (the loader cafe_tf.search looks for)."""
    return LatencyTable.load(path)


def _validate(obj: Mapping[str, Any]) -> None:
    if obj.get("method") not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {obj.get('method')!r}")
    if "model_fingerprint" in obj and not str(obj["model_fingerprint"]).startswith("sha256:"):
        raise ValueError(f"model_fingerprint must be 'sha256:<hex>', got {obj['model_fingerprint']!r}")
    if obj["quant"] not in QUANTS:
        raise ValueError(f"quant must be one of {list(QUANTS)}, got {obj['quant']!r}")
    if not isinstance(obj["threads"], int) or obj["threads"] < 1:
        raise ValueError(f"threads must be an integer >= 1, got {obj['threads']!r}")
    if not isinstance(obj["entries"], list) or not obj["entries"]:
        raise ValueError("entries must be a non-empty list")
    for i, entry in enumerate(obj["entries"]):
        try:
            LayerKey.from_dict(entry)
            ms = float(entry["ms"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"entry {i} is malformed ({e}): {entry!r}") from None
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"entry {i} has ms {entry['ms']!r}; must be a finite number >= 0")
    model = obj["model"]
    if not all(isinstance(model.get(k), (int, float)) and math.isfinite(model[k]) for k in ("constant_ms", "scale")):
        raise ValueError(f"model must hold finite constant_ms and scale, got {model!r}")


# Ops whose cost follows one channel count (input and output channels move together).
_COUPLED_OPS = ("ADD", "SUB", "MUL", "MEAN", "REDUCE_MAX", "MAX_POOL_2D", "AVERAGE_POOL_2D", "DEPTHWISE_CONV_2D",
                "CONCATENATION", "ACTIVATION", "BATCH_NORM", "PAD")


def _interpolate(key: LayerKey, group: list[tuple[LayerKey, float]]) -> float:
    """Estimate within one (op, kernel, stride, padding, input size) group of measured entries."""
    cout = np.array([k.cout for k, _ in group], dtype=np.float64)
    ms = np.array([v for _, v in group])
    if key.op in _COUPLED_OPS:  # one channel count drives the cost: piecewise-linear, linear beyond the ends
        order = np.argsort(cout)
        x, y = cout[order], ms[order]
        x, idx = np.unique(x, return_index=True)
        y = y[idx]
        if len(x) == 1:
            return float(y[0] * key.cout / x[0])
        if key.cout < x[0]:
            slope = (y[1] - y[0]) / (x[1] - x[0])
            return float(max(y[0] + slope * (key.cout - x[0]), y[0] * 0.25))
        if key.cout > x[-1]:
            slope = (y[-1] - y[-2]) / (x[-1] - x[-2])
            return float(y[-1] + slope * (key.cout - x[-1]))
        return float(np.interp(key.cout, x, y))
    # Convolutions and dense layers: latency against MACs within the group (same op, kernel, stride,
    # input size), a straight line fitted by least squares: the intercept carries the fixed cost of
    # the op, the slope its throughput. (A bilinear fit in (cin, cout) extrapolated badly from the
    # few points random subnets leave in a group.)
    macs = np.array([k.macs() for k, _ in group], dtype=np.float64)
    if np.ptp(macs) > 0:
        slope, intercept = np.polyfit(macs, ms, 1)
        if slope > 0:
            return float(max(intercept + slope * key.macs(), float(ms.min()) * 0.25))
    nearest = int(np.argmin([abs(np.log(k.cin / key.cin)) + abs(np.log(k.cout / key.cout)) for k, _ in group]))
    return float(ms[nearest] * key.macs() / max(macs[nearest], 1.0))


def fit_additive(layer_sums: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(constant_ms, scale)`` of ``measured ~ constant + scale * layer_sum``.

    With fewer than two distinct sums only the scale is fitted (constant 0).
    """
    x = np.asarray(layer_sums, dtype=np.float64)
    y = np.asarray(measured, dtype=np.float64)
    if len(x) == 0:
        raise DeployError("fitting the additive model needs at least one measured subnet")
    if len(x) < 2 or np.ptp(x) < 1e-12:
        return 0.0, float(np.sum(x * y) / max(np.sum(x * x), 1e-12))
    scale, constant = np.polyfit(x, y, 1)
    if scale <= 0:  # noise swamped the spread: fall back to a pure scale
        return 0.0, float(np.sum(x * y) / max(np.sum(x * x), 1e-12))
    return float(constant), float(scale)


def accuracy_rows(table: LatencyTable, models: Sequence[Any], measured: Sequence[float]) -> dict[str, Any]:
    """Predicted vs measured latency of ``models``: rows, share within +-10%, mean absolute % error."""
    rows = []
    for model, real in zip(models, measured):
        predicted = table.predict_ms(model)
        rows.append({
            "name": model.name, "measured_ms": real, "predicted_ms": predicted,
            "error_pct": 100.0 * (predicted - real) / real, "layers": len(layer_keys(model)),
            "unmeasured_layers": sum(k not in table.entries for k in layer_keys(model)),
        })
    return {"subnets": len(rows), **error_stats([r["error_pct"] for r in rows]), "rows": rows}


def error_stats(error_pct: Sequence[float]) -> dict[str, float | None]:
    """Relative-error statistics of predictions, from their signed errors in %: share within +-10%,
    mean, 90th percentile (linear interpolation) and max of the absolute error, and the mean signed error."""
    errors = np.abs(np.asarray(error_pct, dtype=np.float64))
    if not errors.size:
        return dict.fromkeys(("within_10pct", "mean_abs_error_pct", "p90_abs_error_pct", "max_abs_error_pct",
                              "mean_error_pct"))
    return {
        "within_10pct": float(np.mean(errors <= 10.0)),
        "mean_abs_error_pct": float(errors.mean()),
        "p90_abs_error_pct": float(np.percentile(errors, 90)),
        "max_abs_error_pct": float(errors.max()),
        "mean_error_pct": float(np.mean(error_pct)),
    }


def measure_on_target(
    table: LatencyTable, model: Any, rounds: int = 3, benchmark_binary: str | None = None,
    serial: str | None = None, adb: str | None = None,
) -> dict[str, Any]:
    """Exports the plain Keras ``model`` with the table's quantization and measures it on the table's
    target with the table's thread count: ``{"measured_ms", "target", "quant", "threads", "how", "environment"}``.

    host: the LiteRT interpreter with XNNPACK, as deploy.benchmark's host target (median of interleaved
    rounds, best round). android: ``benchmark_model`` over adb (``deploy.benchmark.android``; needs
    ``benchmark_binary``), its mean latency."""
    import tempfile

    from deploy.benchmark import schema

    target, quant, threads = table.info.get("target"), table.info.get("quant", "fp32"), int(table.info.get("threads", 1))
    if target == "host":
        ms = measure_models([model], quant, threads, rounds=rounds)[0]
        return {"measured_ms": ms, "target": target, "quant": quant, "threads": threads,
                "how": f"LiteRT interpreter + XNNPACK, median invoke, best of {rounds} rounds",
                "environment": schema.host_environment()}
    if target == "android":
        from deploy.benchmark import android

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{model.name}_{quant}.tflite")
            with open(path, "wb") as f:
                f.write(to_tflite(model, quant))
            record = android.benchmark_android(path, benchmark_binary, serial=serial, threads=threads, adb=adb,
                                               op_profiling=False)
        return {"measured_ms": float(record["latency_ms"]["mean"]), "target": target, "quant": quant,
                "threads": threads, "how": "benchmark_model over adb, mean latency",
                "environment": record["environment"]}
    raise DeployError(f"cannot measure on target {target!r}: the table names no target this module measures "
                      f"(valid: {list(TARGETS)})")


def check_budget(budget_ms: float, predicted_ms: float, measured_ms: float, error_pct: float | None) -> dict[str, Any]:
    """Measured against predicted latency of a network chosen under ``budget_ms``.

    Returns the record (measured, predicted, budget, the table's stated error, the limit
    ``budget * (1 + error)``); raises :class:`LatencyBudgetExceeded`, naming all of them, when the
    measured latency is over the limit. A table without a stated error allows no excess."""
    error = float(error_pct or 0.0)
    limit = budget_ms * (1.0 + error / 100.0)
    record = {
        "budget_ms": float(budget_ms), "predicted_ms": float(predicted_ms), "measured_ms": float(measured_ms),
        "measured_over_predicted": float(measured_ms / predicted_ms) if predicted_ms > 0 else None,
        "stated_error_pct": error_pct, "limit_ms": limit, "within_limit": bool(measured_ms <= limit),
    }
    if measured_ms > limit:
        stated = f"{error:.1f}%" if error_pct is not None else "none stated (0%)"
        raise LatencyBudgetExceeded(
            f"the chosen network measures {measured_ms:.4f} ms against a predicted {predicted_ms:.4f} ms: over the "
            f"budget max_latency_ms={budget_ms:g} by more than the table's error ({stated}; limit {limit:.4f} ms). "
            "The table does not hold on this target now: rebuild it (deploy.latency_table, e.g. --method "
            "op_profile), lower the budget, or run on a quieter machine"
        )
    return record


def random_subnets(
    model: Any, count: int, rng: np.random.Generator, fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0), prefix: str = "subnet",
    channel_multiple: int = 1,
) -> list[Any]:
    """``count`` sub-networks of ``model``: each prunable channel group keeps a random fraction of
    its channels (the first ones), rounded to a multiple of ``channel_multiple`` (or the full width,
    the widths a search with that multiple produces), built with ``cafe_tf.surgery.extract`` (fresh weights)."""
    from cafe_tf import graph as channel_graph
    from cafe_tf import surgery
    from cafe_tf.space import check_channel_multiple

    if any(not 0 < f <= 1 for f in fractions):
        raise UsageError(f"fractions must lie in (0, 1], got {list(fractions)}")
    g = channel_graph.ChannelGraph.from_model(model)
    groups = g.prunable_groups
    try:
        m = check_channel_multiple(channel_multiple, groups)
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = []
    for i in range(count):
        selection = {}
        for group in groups:
            fraction = float(rng.choice(fractions))
            keep = group.size if fraction >= 1 else min(group.size, max(m, m * int(round(group.size * fraction / m))))
            selection[group.id] = np.arange(keep)
        out.append(surgery.extract(model, selection, graph=g, name=f"{prefix}_{i}", copy_weights=False))
    return out


def draw_subnets(
    model: Any, calibration_subnets: int, holdout_subnets: int, fractions: Sequence[float], seed: int,
    channel_multiple: int = 1,
) -> tuple[list[Any], list[Any]]:
    """The networks a table is built from: ``model`` and ``calibration_subnets - 1`` random subnets
    (the additive fit's), then ``holdout_subnets`` held-out ones (its stated error), all from ``seed``."""
    if calibration_subnets < 2:
        raise UsageError(f"calibration_subnets must be >= 2 to fit the additive model, got {calibration_subnets!r}")
    rng = np.random.default_rng(seed)
    calibration = [model] + random_subnets(model, calibration_subnets - 1, rng, fractions, "calibration",
                                           channel_multiple)
    return calibration, random_subnets(model, holdout_subnets, rng, fractions, "holdout", channel_multiple)


def finish_table(
    table: LatencyTable, model: Any, calibration: Sequence[Any], holdout: Sequence[Any], measured: Sequence[float], *,
    target: str, quant: str, threads: int, delegate: str, method: str, fractions: Sequence[float], seed: int,
    channel_multiple: int, started: float, environment: Mapping[str, Any], source: Mapping[str, Any] | None = None,
) -> LatencyTable:
    """Fits ``table``'s constant and scale on the calibration nets' ``measured`` latencies (calibration
    first, then hold-out, in ms) and records its provenance and its error on both sets in ``table.info``."""
    cal_measured, hold_measured = list(measured[: len(calibration)]), list(measured[len(calibration) :])
    table.constant_ms, table.scale = fit_additive([table.sum_layers_ms(m) for m in calibration], cal_measured)
    table.info = {
        "target": target,
        "quant": quant,
        "threads": int(threads),
        "delegate": delegate,
        "method": method,
        "model_fingerprint": model_fingerprint(model),
        "source": {
            "model": model.name,
            "input_shape": [int(d) for d in model.inputs[0].shape[1:]],
            "fractions": list(fractions),
            "channel_multiple": int(channel_multiple),
            "calibration_subnets": len(calibration),
            "holdout_subnets": len(holdout),
            "seed": seed,
            **dict(source or {}),
        },
        "fit": accuracy_rows(table, calibration, cal_measured),
        "holdout": accuracy_rows(table, holdout, hold_measured),
        "measurement_s": round(time.time() - started, 1),
        "environment": dict(environment),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return table


def build_table(
    model: Any,
    quant: str = "fp32",
    threads: int = 1,
    calibration_subnets: int = 6,
    holdout_subnets: int = 8,
    fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    seed: int = 0,
    rounds: int = 2,
    progress: Callable[[str], None] | None = None,
    channel_multiple: int = 1,
) -> LatencyTable:
    """Measures a table for ``model``'s width space on the host and evaluates it on held-out subnets."""
    from deploy.benchmark import schema

    if threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads!r}")
    say = progress or (lambda message: None)
    started = time.time()
    calibration, holdout = draw_subnets(model, calibration_subnets, holdout_subnets, fractions, seed, channel_multiple)
    keys = {k for m in calibration for k in layer_keys(m)}
    say(f"{len(keys)} layer configurations in {len(calibration)} calibration subnets")
    entries = measure_keys(keys, quant, threads, rounds=rounds, progress=say)
    say(f"timing {len(calibration) + len(holdout)} whole subnets")
    measured = measure_models(calibration + holdout, quant, threads, rounds=max(rounds, 2))
    return finish_table(LatencyTable(entries), model, calibration, holdout, measured, target="host", quant=quant,
                        threads=threads, delegate="xnnpack", method="isolated", fractions=fractions, seed=seed,
                        channel_multiple=channel_multiple, started=started, environment=schema.host_environment())


if __name__ == "__main__":  # `python -m deploy.latency_table`: the program is deploy/latency_table_main.py
    from cafe_tf.programs import forward_to

    forward_to("deploy.latency_table_main")
