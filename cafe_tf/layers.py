"""The layer-rule registry: what every kind of Keras layer (or Keras 3 operation) does to channels.

A :class:`LayerRule` describes one layer kind once:

* **wiring**: how the layer couples the channels of its inputs and its output (``wire``);
* **cost**: its MAC and parameter terms as a polynomial in the group widths (``terms``), and the
  same figure read off the built layer's weights (``layer_macs``), which cross-checks the terms;
* **slicing**: how its weights are cut to a channel selection (``slice_weights``), one function
  that extraction (numpy indices) and the supernet (TensorFlow index tensors) both call;
* **rebuilding**: the config of the narrower layer (``rebuild_config``), and how the supernet
  runs it on compact tensors (``apply``);
* **latency**: its latency-table key and a one-layer model to measure it (``latency_key``,
  ``latency_layer``).

``cafe_tf.graph``, ``cafe_tf.flops``, ``cafe_tf.slim``, ``cafe_tf.surgery``, Dagger and
``deploy.latency_table`` ask this registry and switch on no layer type themselves. Rules are looked
up by the layer's exact type, so a subclass with its own ``call`` is never mistaken for its base.

A layer the registry does not know can be given a rule (``register(MyLayer, MyRule())``) or be
declared a fixed-width boundary (``ChannelGraph.from_model(model, boundaries=["name", MyLayer])``):
its input and output channels are then kept whole.

Example::

    from cafe_tf import layers
    layers.register(MyScale, layers.PerChannelWeights("gamma"))   # a layer with one weight per channel
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

L = keras.layers


class UnsupportedModelError(ValueError):
    """The model holds a layer or a wiring the channel graph does not understand."""


class RuleError(ValueError):
    """A layer rule is inconsistent (its MAC terms disagree with the per-layer count)."""


# ------------------------------------------------------------------------------------------------
# Channel spaces


@dataclasses.dataclass(frozen=True)
class TensorSpace:
    """Which channel groups make up a tensor's last axis.

    Position of channel ``c`` of the segment ``(g, offset)``, copy ``j < inner``, repeat ``r``::

        r * block + offset + c * inner + j

    A plain tensor has one segment (``repeat == inner == 1``); a concatenation several segments; a
    flattened feature map ``repeat == H * W``; a depthwise convolution with ``depth_multiplier=m``
    multiplies ``inner`` (and the offsets and block) by ``m``.
    """

    segments: tuple[tuple[int, int], ...]
    block: int
    repeat: int = 1
    inner: int = 1

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(g for g, _ in self.segments)

    @property
    def multiplicity(self) -> int:
        """How many positions each channel of a segment's group occupies."""
        return self.repeat * self.inner

    def channels(self, widths: Sequence[int] | np.ndarray) -> int:
        """The tensor's channel count at group widths ``widths`` (indexed by group id)."""
        return int(self.multiplicity * sum(int(widths[g]) for g in self.groups))

    def scaled(self, m: int) -> TensorSpace:
        """The space of a depthwise convolution's output with ``depth_multiplier=m``."""
        return TensorSpace(tuple((g, off * m) for g, off in self.segments), self.block * m, self.repeat,
                           self.inner * m)


class _IndexOps:
    """Index operations on one array library: numpy for extraction, TensorFlow in the supernet."""

    def __init__(self, gather: Callable, arange: Callable, reshape: Callable):
        self._gather, self._arange, self._reshape = gather, arange, reshape

    def take(self, w, index, axis: int):
        return w if index is None else self._gather(w, index, axis)

    def expand(self, index, m: int):
        """Positions of ``m`` consecutive copies of each index (depth multipliers)."""
        if index is None or m == 1:
            return index
        return self._reshape(index[:, None] * m + self._arange(m)[None, :], [-1])


NUMPY = _IndexOps(lambda w, i, axis: np.take(w, i, axis=axis), np.arange, np.reshape)
TF = _IndexOps(lambda w, i, axis: tf.gather(w, i, axis=axis), tf.range, tf.reshape)


def space_positions(space: TensorSpace, parts: Sequence, sizes: Sequence[int], ops=NUMPY):
    """Kept positions along a tensor's last axis. ``parts[i]``: the kept indices of segment i's group
    (None: all ``sizes[i]``). With ``ops=TF`` returns None when every position is kept."""
    if ops is TF and all(p is None for p in parts) and space.repeat == 1 and space.inner == 1:
        return None
    concat = (lambda xs: tf.concat(xs, 0)) if ops is TF else np.concatenate
    block = concat([ops.expand(ops._arange(size) if p is None else p, space.inner) + off
                    for (_, off), p, size in zip(space.segments, parts, sizes)])
    if space.repeat == 1:
        return block
    return ops._reshape(ops._arange(space.repeat)[:, None] * space.block + block[None, :], [-1])


# ------------------------------------------------------------------------------------------------
# Wiring context (what the graph builder offers a rule)


@dataclasses.dataclass
class WireContext:
    """One layer as the graph builder sees it, and the graph operations a rule may use."""

    name: str
    layer: Any  # a keras Layer or a Keras 3 Operation
    in_spaces: list[TensorSpace]
    in_shapes: list[tuple[int, ...]]
    out_shape: tuple[int, ...]
    constants: list[Any]  # non-tensor positional arguments of the call (Keras ops: x + 3.0)
    new_group: Callable[[int, str], TensorSpace]
    couple: Callable[[TensorSpace, TensorSpace], None]
    block: Callable[[TensorSpace, str], None]

    @property
    def type_name(self) -> str:
        return type(self.layer).__name__

    def refuse(self, why: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"layer {self.name!r} ({self.type_name}) {why}. Way out: declare it a fixed-width boundary "
            f"(ChannelGraph.from_model(model, boundaries=[{self.name!r}]), config.model.boundaries) so its "
            "channels are kept whole, or register a rule for it (cafe_tf.layers.register)"
        )

    def one_input(self) -> TensorSpace:
        if len(self.in_spaces) != 1:
            raise self.refuse(f"has {len(self.in_spaces)} tensor inputs; this rule takes exactly 1")
        return self.in_spaces[0]

    def plain_input(self) -> TensorSpace:
        s = self.one_input()
        if s.repeat != 1:
            raise self.refuse("reads a flattened tensor (its channels repeat over positions)")
        return s


Terms = list[tuple[float, int, int]]  # (coefficient, group a, group b); group ``const`` stands for 1


# ------------------------------------------------------------------------------------------------
# Rules


class LayerRule:
    """Default rule: a layer without weights that acts on every channel alone (ReLU, pooling, ...)."""

    kind = "channelwise"
    producer = False  # writes a new channel group from its weights (conv, dense, separable)
    filtered = False  # one filter per output channel (producers and depthwise): Dagger reads them
    normalizes = False  # mixes statistics over channels or the batch: mask mode re-zeroes after it
    fuses_activation = False  # TFLite fuses a following ReLU / BN into it
    latency_ops: tuple[str, ...] = ()

    # --- wiring -------------------------------------------------------------------------------
    def wire(self, ctx: WireContext) -> tuple[TensorSpace | None, TensorSpace]:
        """(input space, output space): the default keeps the one input's channels as they are."""
        s = ctx.one_input()
        if ctx.out_shape[-1:] != ctx.in_shapes[0][-1:]:
            raise ctx.refuse(f"changes the channel count ({ctx.in_shapes[0][-1]} -> {ctx.out_shape[-1]})")
        return s, s

    def zero_preserving(self, layer: Any, at_zero: Callable[[], Any]) -> bool:
        """Whether a channel that is all zeros stays all zeros (masking then equals removing);
        ``at_zero()`` runs the layer on all-zero inputs."""
        return True

    # --- cost ---------------------------------------------------------------------------------
    def terms(self, node: Any, const: int) -> tuple[Terms, Terms]:
        """(MAC terms, parameter terms); default: none, or per-channel weights if the layer has any."""
        params: Terms = []
        layer = node.layer
        for w in getattr(layer, "weights", []):
            shape = tuple(int(d) for d in w.shape)
            if shape and node.out_space is not None and shape[-1] == node.out_shape[-1] and len(shape) == 1:
                params += [(node.out_space.multiplicity, g, const) for g in node.out_space.groups]
            else:
                params.append((float(np.prod(shape)), const, const))
        return [], params

    def layer_macs(self, layer: Any, in_shapes: Sequence[tuple[int, ...]], out_shape: tuple[int, ...]) -> int:
        """MACs read off the built layer (kernel shapes and output size): the cross-check of ``terms``."""
        return 0

    # --- weights ------------------------------------------------------------------------------
    def slice_weights(self, layer: Any, weights: list, in_index, out_index, ops=NUMPY) -> list:
        """``weights`` (in ``layer.weights`` order) cut to the kept input / output positions."""
        return [ops.take(w, out_index, len(w.shape) - 1) if len(w.shape) == 1 else w for w in weights]

    def rebuild_config(self, config: dict, in_channels: int, out_channels: int) -> dict:
        """The config of the layer at the new channel counts (default: unchanged)."""
        return config

    def filter_matrix(self, layer: Any):
        """(output channels, fan-in) float32 filters, for Dagger's module and L1 norms (producers)."""
        raise NotImplementedError(f"{type(self).__name__} has no filters")

    def channel_scales(self, layer: Any, weights: list) -> np.ndarray | None:
        """Per output channel, the largest |weight| that int8 quantization turns into a per-channel
        scale (0: an all-zero filter, which quantization cannot represent); None without one."""
        return None

    # --- supernet execution -----------------------------------------------------------------
    def apply(self, node: Any, run: Any):
        """Runs the layer inside the supernet on compact tensors (default: the layer itself)."""
        return run.call_original(node)

    # --- latency ------------------------------------------------------------------------------
    def latency_key(self, layer: Any, in_shapes, out_shape) -> tuple | None:
        """(op, kernel, stride, padding, extra) of its latency-table entry, or None when free."""
        config = {k: v for k, v in _config(layer).items() if k not in ("name", "trainable", "dtype")}
        prefix = "LAYER" if isinstance(layer, L.Layer) else "OP"
        return (f"{prefix}:{type(layer).__name__}", (1, 1), (1, 1), "", json.dumps(config, sort_keys=True, default=str))

    def latency_input_channels(self, key: Any) -> int:
        """Channels of the one-layer model's input (a concatenation's input is one of its parts)."""
        return key.cin

    def latency_layer(self, key: Any) -> Callable:
        """A callable building the key's one-layer model body from its input."""
        kind, cls_name = key.op.split(":", 1)
        if kind == "LAYER":
            cls = getattr(L, cls_name, None) or _KNOWN_CLASSES.get(cls_name)
            if cls is None:
                raise UnsupportedModelError(f"cannot rebuild layer {key.op} to measure it; register its class")
            return cls.from_config(json.loads(key.extra))
        raise UnsupportedModelError(f"cannot rebuild operation {key.op} to measure it alone")


def _config(layer: Any) -> dict:
    try:
        return dict(layer.get_config())
    except Exception:  # Keras ops built from arguments keras cannot serialise
        return {}


class Free(LayerRule):
    """Costs nothing and changes nothing that channels see (Dropout, Identity, StochasticDepth)."""

    def latency_key(self, layer, in_shapes, out_shape):
        return None


class Activation(LayerRule):
    """An element-wise activation layer (Activation, ReLU, LeakyReLU, ELU, ...): zero preservation
    is tested by evaluating it at 0; softmax over channels is cross-channel and fixes its group."""

    latency_ops = ("ACTIVATION",)

    def wire(self, ctx):
        s = ctx.one_input()
        if _activation_name(ctx.layer) in ("softmax", "log_softmax"):
            ctx.block(s, f"{ctx.type_name} {ctx.name!r} normalises across channels")
            return s, s
        return super().wire(ctx)

    def zero_preserving(self, layer, at_zero):
        return _maps_zero_to_zero(at_zero)

    def latency_key(self, layer, in_shapes, out_shape):
        cfg = layer.get_config()
        if isinstance(layer, L.ReLU):
            name = f"relu(max={cfg.get('max_value')})"
        else:
            name = str(cfg.get("activation", type(layer).__name__.lower()))
        return ("ACTIVATION", (1, 1), (1, 1), "", f"activation={name}")

    def latency_layer(self, key):
        name = key.extra.split("=", 1)[1]
        if name.startswith("relu(max="):
            value = name[len("relu(max="):-1]
            return L.ReLU(max_value=None if value == "None" else float(value))
        return L.Activation(name)


def _activation_name(layer) -> str:
    if isinstance(layer, L.Softmax):
        return "softmax"
    fn = getattr(layer, "activation", None)
    return getattr(fn, "__name__", "") if fn is not None else ""


def _maps_zero_to_zero(at_zero: Callable[[], Any]) -> bool:
    try:
        out = np.asarray(keras.ops.convert_to_numpy(at_zero()))
    except Exception:  # cannot evaluate it alone: assume the worst (mask mode re-zeroes after it)
        return False
    return bool(np.all(out == 0))


class Softmax(LayerRule):
    """Softmax over channels: every output depends on every channel, so its group stays whole."""

    def wire(self, ctx):
        s = ctx.one_input()
        ctx.block(s, f"{ctx.type_name} {ctx.name!r} normalises across channels")
        return s, s

    def zero_preserving(self, layer, at_zero):
        return False

    def latency_key(self, layer, in_shapes, out_shape):
        return ("SOFTMAX", (1, 1), (1, 1), "", "")

    latency_ops = ("SOFTMAX",)

    def latency_layer(self, key):
        return L.Softmax()


class Pooling(LayerRule):
    """Max / average pooling: per channel, counted as element operations in latency tables only."""

    latency_ops = ("MAX_POOL_2D", "AVERAGE_POOL_2D")

    def wire(self, ctx):
        if getattr(ctx.layer, "data_format", "channels_last") != "channels_last":
            raise ctx.refuse(f"uses data_format={ctx.layer.data_format!r}; only channels_last")
        return super().wire(ctx)

    def latency_key(self, layer, in_shapes, out_shape):
        cfg = layer.get_config()
        op = "MAX_POOL_2D" if isinstance(layer, L.MaxPooling2D) else "AVERAGE_POOL_2D"
        return (op, _pair(cfg["pool_size"]), _pair(cfg["strides"] or cfg["pool_size"]), cfg["padding"], "")

    def latency_layer(self, key):
        cls = L.MaxPooling2D if key.op == "MAX_POOL_2D" else L.AveragePooling2D
        return cls(key.kernel, key.stride, padding=key.padding)


class GlobalPooling(Pooling):
    latency_ops = ("MEAN", "REDUCE_MAX")

    def latency_key(self, layer, in_shapes, out_shape):
        op = "MEAN" if isinstance(layer, L.GlobalAveragePooling2D) else "REDUCE_MAX"
        return (op, (1, 1), (1, 1), "", "keepdims" if layer.keepdims else "")

    def latency_layer(self, key):
        cls = L.GlobalAveragePooling2D if key.op == "MEAN" else L.GlobalMaxPooling2D
        return cls(keepdims=key.extra == "keepdims")


class Padding(LayerRule):
    """ZeroPadding2D: per channel; pads with zeros, so a zero channel stays zero."""

    latency_ops = ("PAD",)

    def latency_key(self, layer, in_shapes, out_shape):
        return ("PAD", (1, 1), (1, 1), "", f"padding={json.dumps(layer.get_config()['padding'])}")

    def latency_layer(self, key):
        return L.ZeroPadding2D(json.loads(key.extra.split("=", 1)[1]))


class Rescaling(LayerRule):
    """``x * scale + offset``: per channel. Per-channel constants cannot be cut, so they fix the
    group (usually the model input, which is fixed anyway)."""

    def wire(self, ctx):
        s, _ = super().wire(ctx)
        if any(np.size(v) > 1 for v in (ctx.layer.scale, ctx.layer.offset)):
            ctx.block(s, f"Rescaling {ctx.name!r} has per-channel constants")
        return s, s

    def zero_preserving(self, layer, at_zero):
        return bool(np.all(np.asarray(layer.offset) == 0))


class Normalization(LayerRule):
    """keras.layers.Normalization: per-channel mean / variance adapted from data; they fix the group."""

    def wire(self, ctx):
        s, _ = super().wire(ctx)
        ctx.block(s, f"Normalization {ctx.name!r} holds per-channel statistics")
        return s, s

    def zero_preserving(self, layer, at_zero):
        return False


class Merge(LayerRule):
    """Element-wise merge of several tensors (Add, Multiply, ...): their channels are coupled."""

    kind = "merge"
    fuses_activation = True
    latency_ops = ("ADD", "SUB", "MUL")
    _OPS = {"Add": "ADD", "Subtract": "SUB", "Multiply": "MUL"}

    def wire(self, ctx):
        if not ctx.in_spaces:
            raise ctx.refuse("has no tensor input")
        first = ctx.in_spaces[0]
        if any(_layout(s) != _layout(first) for s in ctx.in_spaces[1:]):
            # e.g. a concatenation added to a plain tensor (NASNet): no channel-to-channel coupling
            # one index set per group can state, so every group involved is kept whole.
            for s in ctx.in_spaces:
                ctx.block(s, f"{ctx.type_name} {ctx.name!r} merges tensors whose channel layouts differ")
            return None, first
        for other in ctx.in_spaces[1:]:
            for ga, gb in zip(first.groups, other.groups):
                ctx.couple(TensorSpace(((ga, 0),), 0), TensorSpace(((gb, 0),), 0))
        return None, first

    def zero_preserving(self, layer, at_zero):
        return True  # 0 op 0 == 0 for add, subtract, multiply, maximum, minimum, average

    def latency_key(self, layer, in_shapes, out_shape):
        op = self._OPS.get(type(layer).__name__)
        if op is None:
            return super().latency_key(layer, in_shapes, out_shape)
        n = len(in_shapes)
        return (op, (1, 1), (1, 1), "", f"inputs={n}" if n != 2 else "")

    def latency_layer(self, key):
        n = int(key.extra.split("=")[1]) if key.extra.startswith("inputs=") else 2
        cls = {"ADD": L.Add, "SUB": L.Subtract, "MUL": L.Multiply}[key.op]
        return lambda x: cls()([x] * n)  # the same tensor n times: one op of this size


def _layout(space: TensorSpace) -> tuple:
    return (tuple(o for _, o in space.segments), space.block, space.repeat, space.inner)


class ElementwiseOp(LayerRule):
    """A Keras 3 element-wise operation node (``x + 3.0``, ``keras.ops.relu6(x)``, ``a * b``).

    With two or more tensor operands it couples them like :class:`Merge`; with one tensor and scalar
    constants it acts per channel. Constants with a channel axis fix the group. Whether 0 maps to 0
    is found by evaluating the operation at 0 with its constants.
    """

    def wire(self, ctx):
        if not ctx.in_spaces:
            raise ctx.refuse("has no tensor input")
        if any(np.size(c) > 1 for c in ctx.constants):
            for t in ctx.in_spaces:
                ctx.block(t, f"operation {ctx.name!r} has per-channel constants")
        if len(ctx.in_spaces) > 1:
            return Merge().wire(ctx)
        return super().wire(ctx)

    def zero_preserving(self, layer, at_zero):
        return _maps_zero_to_zero(at_zero)


class ChannelSoftmaxOp(Softmax):
    """keras.ops.softmax / log_softmax nodes: cross-channel when over the last axis."""


class Concat(LayerRule):
    """Concatenate on the last axis, any number of inputs: the parts lie side by side."""

    kind = "concat"
    latency_ops = ("CONCATENATION",)

    def wire(self, ctx):
        axis = ctx.layer.axis
        if axis not in (-1, len(ctx.out_shape)):
            raise ctx.refuse(f"joins axis {axis}; only the last (channel) axis is supported")
        segs, off = [], 0
        for s in ctx.in_spaces:
            if s.repeat != 1 or s.inner != 1:
                raise ctx.refuse("joins a flattened or depth-multiplied tensor")
            segs.extend((g, off + o) for g, o in s.segments)
            off += s.block
        return None, TensorSpace(tuple(segs), off)

    def latency_key(self, layer, in_shapes, out_shape):
        return ("CONCATENATION", (1, 1), (1, 1), "", f"inputs={len(in_shapes)}")

    def latency_layer(self, key):
        n = int(key.extra.split("=")[1])
        return lambda x: L.Concatenate()([x] * n)

    def latency_input_channels(self, key) -> int:
        return max(1, key.cin // int(key.extra.split("=")[1]))


class Flatten(LayerRule):
    """Flatten: the channels repeat once per spatial position."""

    kind = "flatten"

    def wire(self, ctx):
        s = ctx.one_input()
        shape = ctx.in_shapes[0]
        positions = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        return s, TensorSpace(s.segments, s.block, s.repeat * positions, s.inner)

    def latency_key(self, layer, in_shapes, out_shape):
        return None


class Reshape(LayerRule):
    """Reshape that keeps the channel axis (adds or drops unit / spatial axes: SE blocks,
    classifier heads) or flattens everything into it."""

    kind = "reshape"

    def wire(self, ctx):
        s = ctx.one_input()
        in_shape, out_shape = ctx.in_shapes[0], ctx.out_shape
        if in_shape[-1:] == out_shape[-1:]:
            return s, s  # row-major: an equal last axis keeps every channel where it was
        positions = int(np.prod(in_shape[:-1])) if len(in_shape) > 1 else 1
        if len(out_shape) == 1 and out_shape[0] == positions * in_shape[-1]:
            return s, TensorSpace(s.segments, s.block, s.repeat * positions, s.inner)
        raise ctx.refuse(f"reshapes {in_shape} to {out_shape}, which moves channels off the last axis")

    def rebuild_config(self, config, in_channels, out_channels):
        config = dict(config)
        config["target_shape"] = tuple(config["target_shape"][:-1]) + (out_channels,)
        return config

    def apply(self, node, run):
        x = run.input(node)
        return tf.reshape(x, [-1, *node.out_shape[:-1], tf.shape(x)[-1]] if node.out_shape[-1:] == node.in_shapes[0][-1:]
                          else [-1, tf.reduce_prod(tf.shape(x)[1:])])

    def latency_key(self, layer, in_shapes, out_shape):
        return None


class PerChannelWeights(LayerRule):
    """A layer whose weights are one value per channel (ConvNeXt's LayerScale): sliced by channel.

    ``size_key`` names the config entry holding the channel count, updated on extraction;
    ``fn(x, *weights)`` computes the layer from its (sliced) weights (default: ``x * weights[0]``)."""

    kind = "scale"

    def __init__(self, size_key: str | None = None, fn: Callable | None = None):
        self.size_key = size_key
        self.fn = fn or (lambda x, scale, *rest: x * keras.ops.cast(scale, x.dtype))

    def rebuild_config(self, config, in_channels, out_channels):
        if self.size_key:
            config = dict(config)
            config[self.size_key] = out_channels
        return config

    def apply(self, node, run):
        sliced = self.slice_weights(node.layer, list(node.layer.weights), None, run.out_index(node), TF)
        return self.fn(run.input(node), *sliced)


class BatchNorm(LayerRule):
    """BatchNormalization over the last axis; the supernet normalises only the selected channels."""

    kind = "bn"
    normalizes = True
    latency_ops = ("BATCH_NORM",)

    def wire(self, ctx):
        axis = ctx.layer.axis if isinstance(ctx.layer.axis, int) else ctx.layer.axis[0]
        if axis not in (-1, len(ctx.out_shape)):
            raise ctx.refuse(f"normalises axis {ctx.layer.axis}; only the last (channel) axis")
        s = ctx.one_input()
        return s, s

    def channel_scales(self, layer, weights):
        return np.abs(weights[0]) if layer.scale else None  # gamma, folded into the previous kernel

    def terms(self, node, const):
        layer = node.layer
        n = 2 + int(layer.center) + int(layer.scale)
        return [], [(n * node.out_space.multiplicity, g, const) for g in node.out_space.groups]

    def apply(self, node, run):
        layer = node.layer
        x = run.input(node)
        index = run.out_index(node)
        # Normalisation in float32 under mixed precision: given statistics may arrive cast to the
        # compute dtype, while gamma, beta and the moving statistics stay float32.
        gamma = tf.cast(TF.take(layer.gamma, index, 0), tf.float32) if layer.scale else None
        beta = tf.cast(TF.take(layer.beta, index, 0), tf.float32) if layer.center else None
        if run.collect_bn is not None:
            run.collect_bn[node.name] = batch_moments(x)
        stats = None if run.bn_stats is None else run.bn_stats.get(node.name)
        if stats is not None:
            mean, var = (tf.cast(t, tf.float32) for t in stats)
        elif run.training:
            mean, var = batch_moments(x)
            m = layer.momentum
            for moving, batch in ((layer.moving_mean, mean), (layer.moving_variance, var)):
                if index is None:
                    moving.assign(moving * m + batch * (1.0 - m))
                else:
                    old = tf.gather(moving, index)
                    moving.assign(tf.tensor_scatter_nd_update(moving.value, index[:, None], old * m + batch * (1.0 - m)))
        else:
            mean = TF.take(layer.moving_mean, index, 0)
            var = TF.take(layer.moving_variance, index, 0)
        y = tf.nn.batch_normalization(tf.cast(x, tf.float32), mean, var, beta, gamma, layer.epsilon)
        return tf.cast(y, x.dtype)

    def latency_key(self, layer, in_shapes, out_shape):
        return ("BATCH_NORM", (1, 1), (1, 1), "", "")

    def latency_layer(self, key):
        return L.BatchNormalization()


def batch_moments(x):
    """Per-channel batch mean and (biased) variance in float32, over every axis but the last."""

    return tf.nn.moments(tf.cast(x, tf.float32), axes=list(range(x.shape.rank - 1)))


class LayerNorm(LayerRule):
    """LayerNormalization over the channel axis. Its statistics are over the kept channels: the
    supernet normalises the compact tensor, and in mask mode it takes masked moments, so both equal
    the extracted layer."""

    kind = "ln"
    normalizes = True

    def wire(self, ctx):
        axes = [ctx.layer.axis] if isinstance(ctx.layer.axis, int) else list(ctx.layer.axis)
        rank = len(ctx.out_shape) + 1
        if [a % rank for a in axes] != [rank - 1]:
            raise ctx.refuse(f"normalises axes {ctx.layer.axis}; only the last (channel) axis")
        if ctx.layer.rms_scaling:
            raise ctx.refuse("uses rms_scaling=True, which this rule does not slice")
        s = ctx.one_input()
        return s, s

    def terms(self, node, const):
        n = int(node.layer.center) + int(node.layer.scale)
        return [], [(n * node.out_space.multiplicity, g, const) for g in node.out_space.groups]

    def apply(self, node, run):
        layer = node.layer
        x = run.input(node)
        index = run.out_index(node)
        gamma = TF.take(layer.gamma, index, 0) if layer.scale else None
        beta = TF.take(layer.beta, index, 0) if layer.center else None
        mask = run.mask_of(node.out_space, index)
        if mask is None:
            y = keras.ops.layer_normalization(x, gamma, beta, -1, layer.epsilon)
            return tf.cast(y, layer.compute_dtype)
        xf = tf.cast(x, tf.float32)
        count = tf.maximum(tf.reduce_sum(mask), 1.0)
        mean = tf.reduce_sum(xf * mask, -1, keepdims=True) / count
        var = tf.reduce_sum(tf.square(xf - mean) * mask, -1, keepdims=True) / count
        y = (xf - mean) * tf.math.rsqrt(var + layer.epsilon)
        if gamma is not None:
            y = y * tf.cast(gamma, tf.float32)
        if beta is not None:
            y = y + tf.cast(beta, tf.float32)
        return tf.cast(y, layer.compute_dtype)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _dilation_extra(layer) -> str:
    d = _pair(layer.dilation_rate)
    return "" if d == (1, 1) else f"dilation={list(d)}"


def _conv_nn(x, kernel, layer):

    return tf.nn.convolution(x, tf.cast(kernel, x.dtype), strides=layer.strides, padding=layer.padding.upper(),
                             dilations=layer.dilation_rate)


def _finish(layer, y, bias):

    if bias is not None:
        y = tf.nn.bias_add(y, tf.cast(bias, y.dtype))
    return layer.activation(y) if getattr(layer, "activation", None) is not None else y


def _spatial(out_shape) -> int:
    return int(out_shape[0] * out_shape[1])


class Conv(LayerRule):
    """Conv2D (groups=1, channels_last): a new channel group from any input channels."""

    kind = "conv"
    producer = True
    filtered = True
    fuses_activation = True
    latency_ops = ("CONV_2D",)

    def wire(self, ctx):
        if ctx.layer.data_format != "channels_last":
            raise ctx.refuse(f"uses data_format={ctx.layer.data_format!r}; only channels_last")
        return ctx.plain_input(), ctx.new_group(ctx.layer.filters, ctx.name)

    def terms(self, node, const):
        layer, s = node.layer, node.in_space
        kh, kw = layer.kernel_size
        out_g = node.out_space.groups[0]
        macs = [(kh * kw * _spatial(node.out_shape) * s.multiplicity, g, out_g) for g in s.groups]
        params = [(kh * kw * s.multiplicity, g, out_g) for g in s.groups]
        if layer.use_bias:
            params.append((1, out_g, const))
        return macs, params

    def layer_macs(self, layer, in_shapes, out_shape):
        return int(np.prod(layer.kernel.shape)) * _spatial(out_shape)

    def slice_weights(self, layer, weights, in_index, out_index, ops=NUMPY):
        kernel = ops.take(ops.take(weights[0], in_index, 2), out_index, 3)
        return [kernel] + [ops.take(w, out_index, 0) for w in weights[1:]]

    def rebuild_config(self, config, in_channels, out_channels):
        return dict(config, filters=out_channels)

    def filter_matrix(self, layer):
        k = tf.cast(tf.convert_to_tensor(layer.kernel), tf.float32)
        return tf.reshape(tf.transpose(k, [3, 0, 1, 2]), [tf.shape(k)[3], -1])

    def channel_scales(self, layer, weights):
        k = np.abs(weights[0])  # (..., fan-in, output channels), grouped too
        return k.reshape(-1, k.shape[-1]).max(axis=0)

    def apply(self, node, run):
        layer = node.layer
        w = self.slice_weights(layer, list(layer.weights), run.in_index(node), run.out_index(node), TF)
        return _finish(layer, _conv_nn(run.input(node), w[0], layer), w[1] if layer.use_bias else None)

    def latency_key(self, layer, in_shapes, out_shape):
        cfg = layer.get_config()
        return ("CONV_2D", _pair(cfg["kernel_size"]), _pair(cfg["strides"]), cfg["padding"], _dilation_extra(layer))

    def latency_layer(self, key):
        dilation = json.loads(key.extra.split("=", 1)[1]) if key.extra.startswith("dilation=") else 1
        groups = int(key.extra.split("=", 1)[1]) if key.extra.startswith("groups=") else 1
        return L.Conv2D(key.cout, key.kernel, key.stride, padding=key.padding, dilation_rate=dilation, groups=groups)


class GroupedConv(Conv):
    """Conv2D with ``groups > 1``.

    The depthwise form (``groups == input channels == filters``, as ConvNeXt writes its depthwise
    convolutions) couples input and output like DepthwiseConv2D and is pruned per channel. Any other
    grouping couples channels per group in a way one index set per channel group cannot state, so
    its input and output channels are kept whole (fixed-width boundary), with the reason recorded.
    """

    kind = "grouped_conv"
    producer = False
    latency_ops = ()

    @staticmethod
    def depthwise_form(layer, cin: int) -> bool:
        return layer.groups == cin == layer.filters

    def wire(self, ctx):
        if ctx.layer.data_format != "channels_last":
            raise ctx.refuse(f"uses data_format={ctx.layer.data_format!r}; only channels_last")
        s = ctx.plain_input()
        if self.depthwise_form(ctx.layer, ctx.in_shapes[0][-1]):
            if s.inner != 1:
                raise ctx.refuse("runs per channel on a depth-multiplied tensor")
            return s, s
        reason = f"grouped Conv2D {ctx.name!r} (groups={ctx.layer.groups}) keeps its channels whole"
        ctx.block(s, reason)
        out = ctx.new_group(ctx.layer.filters, ctx.name)
        ctx.block(out, reason)
        return s, out

    def terms(self, node, const):
        layer = node.layer
        kh, kw = layer.kernel_size
        if self.depthwise_form(layer, node.in_shapes[0][-1]):
            m = node.in_space.multiplicity
            macs = [(kh * kw * _spatial(node.out_shape) * m, g, const) for g in node.out_space.groups]
            params = [(kh * kw * m, g, const) for g in node.out_space.groups]
            if layer.use_bias:
                params += [(m, g, const) for g in node.out_space.groups]
            return macs, params
        total = int(np.prod(layer.kernel.shape))
        params = [(total + (layer.filters if layer.use_bias else 0), const, const)]
        return [(total * _spatial(node.out_shape), const, const)], params

    def slice_weights(self, layer, weights, in_index, out_index, ops=NUMPY):
        if layer.groups == layer.filters == weights[0].shape[3] and weights[0].shape[2] == 1:
            return [ops.take(weights[0], out_index, 3)] + [ops.take(w, out_index, 0) for w in weights[1:]]
        return list(weights)

    def rebuild_config(self, config, in_channels, out_channels):
        if config["groups"] == config["filters"]:
            return dict(config, filters=out_channels, groups=out_channels)
        return config

    @property
    def filtered(self):  # type: ignore[override]
        return True

    def filter_matrix(self, layer):
        k = tf.cast(tf.convert_to_tensor(layer.kernel), tf.float32)  # (kh, kw, cin/groups, filters)
        return tf.reshape(tf.transpose(k, [3, 0, 1, 2]), [tf.shape(k)[3], -1])

    def apply(self, node, run):
        layer = node.layer
        x = run.input(node)
        if not self.depthwise_form(layer, node.in_shapes[0][-1]):
            return run.call_original(node)
        w = self.slice_weights(layer, list(layer.weights), None, run.out_index(node), TF)
        kernel = tf.transpose(w[0], [0, 1, 3, 2])  # (kh, kw, C, 1) for depthwise_conv2d
        y = tf.nn.depthwise_conv2d(x, tf.cast(kernel, x.dtype), strides=(1, *layer.strides, 1),
                                   padding=layer.padding.upper(), dilations=layer.dilation_rate)
        return _finish(layer, y, w[1] if layer.use_bias else None)

    def latency_key(self, layer, in_shapes, out_shape):
        cfg = layer.get_config()
        if self.depthwise_form(layer, in_shapes[0][-1]):
            return ("DEPTHWISE_CONV_2D", _pair(cfg["kernel_size"]), _pair(cfg["strides"]), cfg["padding"], "")
        return ("CONV_2D", _pair(cfg["kernel_size"]), _pair(cfg["strides"]), cfg["padding"],
                f"groups={layer.groups}")


class Depthwise(LayerRule):
    """DepthwiseConv2D with any ``depth_multiplier`` m: runs on its input's channels, which it keeps
    (m copies each: the output space's ``inner`` grows by m)."""

    kind = "depthwise"
    filtered = True
    fuses_activation = True
    latency_ops = ("DEPTHWISE_CONV_2D",)

    def wire(self, ctx):
        s = ctx.plain_input()
        m = int(ctx.layer.depth_multiplier)
        return s, (s if m == 1 else s.scaled(m))

    def terms(self, node, const):
        layer = node.layer
        kh, kw = layer.kernel_size
        m = node.in_space.multiplicity * int(layer.depth_multiplier)
        groups = node.in_space.groups
        macs = [(kh * kw * _spatial(node.out_shape) * m, g, const) for g in groups]
        params = [(kh * kw * m, g, const) for g in groups]
        if layer.use_bias:
            params += [(m, g, const) for g in groups]
        return macs, params

    def layer_macs(self, layer, in_shapes, out_shape):
        return int(np.prod(layer.kernel.shape)) * _spatial(out_shape)

    def slice_weights(self, layer, weights, in_index, out_index, ops=NUMPY):
        return [ops.take(weights[0], in_index, 2)] + [ops.take(w, out_index, 0) for w in weights[1:]]

    def filter_matrix(self, layer):
        k = tf.cast(tf.convert_to_tensor(layer.kernel), tf.float32)  # (kh, kw, C, m): one row per channel
        return tf.reshape(tf.transpose(k, [2, 3, 0, 1]), [tf.shape(k)[2], -1])

    def channel_scales(self, layer, weights):
        k = np.abs(weights[0])  # (kh, kw, C, m): output channel c * m + j
        return k.reshape(-1, k.shape[2] * k.shape[3]).max(axis=0)

    def apply(self, node, run):
        layer = node.layer
        w = self.slice_weights(layer, list(layer.weights), run.in_index(node), run.out_index(node), TF)
        x = run.input(node)
        y = tf.nn.depthwise_conv2d(x, tf.cast(w[0], x.dtype), strides=(1, *layer.strides, 1),
                                   padding=layer.padding.upper(), dilations=layer.dilation_rate)
        return _finish(layer, y, w[1] if layer.use_bias else None)

    def latency_key(self, layer, in_shapes, out_shape):
        cfg = layer.get_config()
        return ("DEPTHWISE_CONV_2D", _pair(cfg["kernel_size"]), _pair(cfg["strides"]), cfg["padding"], "")

    def latency_layer(self, key):
        return L.DepthwiseConv2D(key.kernel, key.stride, padding=key.padding,
                                 depth_multiplier=max(1, key.cout // max(key.cin, 1)))


class Separable(Conv):
    """SeparableConv2D: a depthwise convolution (multiplier m) then a 1x1 convolution to a new group
    (wired like Conv2D, and rebuilt with ``filters`` like it)."""

    kind = "separable"
    latency_ops = ("SEPARABLE_CONV_2D",)

    def terms(self, node, const):
        layer, s = node.layer, node.in_space
        kh, kw = layer.kernel_size
        m = s.multiplicity * int(layer.depth_multiplier)
        hw = _spatial(node.out_shape)
        out_g = node.out_space.groups[0]
        macs = [(kh * kw * hw * m, g, const) for g in s.groups] + [(hw * m, g, out_g) for g in s.groups]
        params = [(kh * kw * m, g, const) for g in s.groups] + [(m, g, out_g) for g in s.groups]
        if layer.use_bias:
            params.append((1, out_g, const))
        return macs, params

    def layer_macs(self, layer, in_shapes, out_shape):
        hw = _spatial(out_shape)
        return (int(np.prod(layer.depthwise_kernel.shape)) + int(np.prod(layer.pointwise_kernel.shape))) * hw

    def slice_weights(self, layer, weights, in_index, out_index, ops=NUMPY):
        m = int(layer.depth_multiplier)
        depthwise = ops.take(weights[0], in_index, 2)
        pointwise = ops.take(ops.take(weights[1], ops.expand(in_index, m), 2), out_index, 3)
        return [depthwise, pointwise] + [ops.take(w, out_index, 0) for w in weights[2:]]

    def channel_scales(self, layer, weights):
        return super().channel_scales(layer, weights[1:])  # the pointwise kernel's output channels

    def filter_matrix(self, layer):
        k = tf.cast(tf.convert_to_tensor(layer.pointwise_kernel), tf.float32)
        return tf.reshape(tf.transpose(k, [3, 0, 1, 2]), [tf.shape(k)[3], -1])

    def apply(self, node, run):
        layer = node.layer
        w = self.slice_weights(layer, list(layer.weights), run.in_index(node), run.out_index(node), TF)
        x = run.input(node)
        y = tf.nn.separable_conv2d(x, tf.cast(w[0], x.dtype), tf.cast(w[1], x.dtype), strides=(1, *layer.strides, 1),
                                   padding=layer.padding.upper(), dilations=layer.dilation_rate)
        return _finish(layer, y, w[2] if layer.use_bias else None)

    def latency_key(self, layer, in_shapes, out_shape):
        cfg = layer.get_config()
        return ("SEPARABLE_CONV_2D", _pair(cfg["kernel_size"]), _pair(cfg["strides"]), cfg["padding"],
                f"depth_multiplier={layer.depth_multiplier}")

    def latency_layer(self, key):
        m = int(key.extra.split("=", 1)[1])
        return L.SeparableConv2D(key.cout, key.kernel, key.stride, padding=key.padding, depth_multiplier=m)


class DenseRule(LayerRule):
    """Dense on the last axis (of a vector or of a channels-last feature map): a new group."""

    kind = "dense"
    producer = True
    filtered = True
    fuses_activation = True
    latency_ops = ("FULLY_CONNECTED",)

    def wire(self, ctx):
        return ctx.one_input(), ctx.new_group(ctx.layer.units, ctx.name)

    def terms(self, node, const):
        layer, s = node.layer, node.in_space
        positions = int(np.prod(node.out_shape[:-1])) if len(node.out_shape) > 1 else 1
        out_g = node.out_space.groups[0]
        macs = [(positions * s.multiplicity, g, out_g) for g in s.groups]
        params = [(s.multiplicity, g, out_g) for g in s.groups]
        if layer.use_bias:
            params.append((1, out_g, const))
        return macs, params

    def layer_macs(self, layer, in_shapes, out_shape):
        positions = int(np.prod(out_shape[:-1])) if len(out_shape) > 1 else 1
        return int(np.prod(layer.kernel.shape)) * positions

    def slice_weights(self, layer, weights, in_index, out_index, ops=NUMPY):
        return [ops.take(ops.take(weights[0], in_index, 0), out_index, 1)] + [ops.take(w, out_index, 0) for w in weights[1:]]

    def rebuild_config(self, config, in_channels, out_channels):
        return dict(config, units=out_channels)

    def filter_matrix(self, layer):
        return tf.transpose(tf.cast(tf.convert_to_tensor(layer.kernel), tf.float32))

    def channel_scales(self, layer, weights):
        return np.abs(weights[0]).max(axis=0)

    def apply(self, node, run):
        layer = node.layer
        w = self.slice_weights(layer, list(layer.weights), run.in_index(node), run.out_index(node), TF)
        x = run.input(node)
        kernel = tf.cast(w[0], x.dtype)
        y = tf.tensordot(x, kernel, axes=[[x.shape.rank - 1], [0]]) if x.shape.rank > 2 else tf.matmul(x, kernel)
        return _finish(layer, y, w[1] if layer.use_bias else None)

    def latency_key(self, layer, in_shapes, out_shape):
        return ("FULLY_CONNECTED", (1, 1), (1, 1), "", "")

    def latency_layer(self, key):
        return L.Dense(key.cout)


class Boundary(LayerRule):
    """A layer declared a fixed-width boundary (or of a type with no rule, so declared): its input
    channels and its output channels are kept whole; its weights are copied as they are. Its MACs
    are not counted (0) unless it has a rule of its own; its parameters are."""

    kind = "boundary"

    def wire(self, ctx):
        reason = f"{ctx.type_name} {ctx.name!r} is a fixed-width boundary"
        for s in ctx.in_spaces:
            ctx.block(s, reason)
        if ctx.out_shape is None or len(ctx.out_shape) == 0:
            raise ctx.refuse("has no single channels-last output")
        out = ctx.new_group(int(ctx.out_shape[-1]), ctx.name)
        ctx.block(out, reason)
        return (ctx.in_spaces[0] if len(ctx.in_spaces) == 1 else None), out

    def terms(self, node, const):
        return [], [(float(sum(int(np.prod(w.shape)) for w in getattr(node.layer, "weights", []))), const, const)]

    def slice_weights(self, layer, weights, in_index, out_index, ops=NUMPY):
        return list(weights)


# ------------------------------------------------------------------------------------------------
# The registry


_RULES: dict[type, LayerRule] = {}
_KNOWN_CLASSES: dict[str, type] = {}


def register(op_type: type, rule: LayerRule, replace: bool = False) -> None:
    """Registers ``rule`` for layers (or Keras operations) of exactly ``op_type``.

    Raises:
      ValueError: ``op_type`` already has a rule and ``replace`` is False.
    """
    if not isinstance(rule, LayerRule):
        raise TypeError(f"rule must be a cafe_tf.layers.LayerRule, got {type(rule).__name__}")
    if op_type in _RULES and not replace:
        raise ValueError(f"{op_type.__name__} already has the rule {type(_RULES[op_type]).__name__}; pass replace=True")
    _RULES[op_type] = rule
    _KNOWN_CLASSES[op_type.__name__] = op_type


def unregister(op_type: type) -> None:
    """Removes the rule of ``op_type`` (for tests and user code that registered one temporarily)."""
    _RULES.pop(op_type, None)


def rule_for(op: Any) -> LayerRule | None:
    """The rule of ``op``'s exact type, or None."""
    return _RULES.get(type(op))


def rule_for_latency_op(op: str) -> LayerRule:
    """The rule that builds one-layer models for a latency-table op name."""
    if op.startswith(("LAYER:", "OP:")):
        return _GENERIC
    for rule in _RULES.values():
        if op in rule.latency_ops:
            return rule
    raise UnsupportedModelError(f"no layer rule measures the latency-table op {op!r}")


def covered_types() -> list[str]:
    """Names of every layer / operation type with a rule."""
    return sorted({t.__name__ for t in _RULES})


_GENERIC = LayerRule()
_BOUNDARY = Boundary()


def boundary_rule() -> LayerRule:
    """The rule of a layer declared a fixed-width boundary."""
    return _BOUNDARY


def _register_builtin() -> None:
    free, act, chan = Free(), Activation(), LayerRule()
    for t in (L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.GaussianNoise, L.GaussianDropout,
              L.AlphaDropout, L.Identity, L.ActivityRegularization):
        register(t, free)
    for t in (L.ReLU, L.LeakyReLU, L.ELU, L.Activation):
        register(t, act)
    register(L.Softmax, Softmax())
    for t in (L.MaxPooling2D, L.AveragePooling2D):
        register(t, Pooling())
    for t in (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D):
        register(t, GlobalPooling())
    register(L.ZeroPadding2D, Padding())
    for t in (L.Cropping2D, L.UpSampling2D):
        register(t, chan)
    register(L.Rescaling, Rescaling())
    register(L.Normalization, Normalization())
    for t in (L.Add, L.Multiply, L.Subtract, L.Maximum, L.Minimum, L.Average):
        register(t, Merge())
    register(L.Concatenate, Concat())
    register(L.Flatten, Flatten())
    register(L.Reshape, Reshape())
    register(L.BatchNormalization, BatchNorm())
    register(L.LayerNormalization, LayerNorm())
    register(L.Conv2D, _ConvDispatch())
    register(L.DepthwiseConv2D, Depthwise())
    register(L.SeparableConv2D, Separable())
    register(L.Dense, DenseRule())
    # Keras 3 operations that functional models record as nodes (MobileNetV3's hard-sigmoid is
    # ``ReLU(6)(x + 3.0) * (1 / 6)``).
    from keras.src.ops import nn as nn_ops
    from keras.src.ops import numpy as np_ops

    elementwise = ElementwiseOp()
    for name in ("Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Negative", "Abs",
                 "Tanh", "Square", "Sqrt", "Exp", "Power", "Clip"):
        if hasattr(np_ops, name):
            register(getattr(np_ops, name), elementwise)
    for name in ("Relu", "Relu6", "Sigmoid", "Softplus", "Softsign", "Silu", "LeakyRelu", "HardSigmoid",
                 "HardSilu", "Elu", "Selu", "Gelu", "Celu", "HardTanh", "LogSigmoid"):
        if hasattr(nn_ops, name):
            register(getattr(nn_ops, name), elementwise)
    for name in ("Softmax", "LogSoftmax"):
        register(getattr(nn_ops, name), ChannelSoftmaxOp())
    # The custom layers keras.applications uses.
    from keras.src.applications import convnext

    from keras.src.applications import inception_resnet_v2

    register(convnext.StochasticDepth, free)
    register(inception_resnet_v2.CustomScaleLayer, Merge())  # inputs[0] + inputs[1] * scale
    register(convnext.LayerScale, PerChannelWeights("projection_dim"))


class _ConvDispatch(LayerRule):
    """Conv2D: the plain rule for ``groups == 1``, the grouped rule otherwise (decided per layer)."""

    _plain, _grouped = Conv(), GroupedConv()
    latency_ops = ("CONV_2D",)

    def of(self, layer) -> LayerRule:
        return self._plain if getattr(layer, "groups", 1) == 1 else self._grouped

    def latency_layer(self, key):
        return self._plain.latency_layer(key)


def register_builtin_conv() -> None:
    """Restores the built-in Conv2D rule (after a test or a user replaced it)."""
    register(L.Conv2D, _ConvDispatch(), replace=True)


def resolve(op: Any) -> LayerRule | None:
    """The effective rule of ``op`` (a dispatching rule resolved for this very layer)."""
    rule = rule_for(op)
    if isinstance(rule, _ConvDispatch):
        return rule.of(op)
    return rule


_register_builtin()


def layer_macs(op: Any, in_shapes: Sequence[tuple[int, ...]], out_shape: tuple[int, ...]) -> int:
    """MACs of one built layer from its weights' shapes (0 for layers without a counting rule)."""
    rule = resolve(op)
    return 0 if rule is None else int(rule.layer_macs(op, in_shapes, out_shape))


__all__ = [
    "LayerRule", "TensorSpace", "WireContext", "UnsupportedModelError", "RuleError", "register", "unregister",
    "rule_for", "resolve", "covered_types", "PerChannelWeights", "Boundary", "layer_macs", "math",
]
