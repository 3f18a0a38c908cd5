"""The channel dependency graph of a functional Keras model.

Channels that must be kept or removed together form a **group**: the outputs of every layer joined
by a residual ``Add``, the input and output of a ``DepthwiseConv2D``, a squeeze-excitation
``Multiply``, the layers in between that act per channel (BN, activations, pooling, padding,
dropout). A ``Concatenate`` does not merge groups: its output channels are the parts laid side by
side, and ``Flatten`` repeats its input's channels once per spatial position.

One :class:`ChannelGraph` serves FLOPs counting (``flops.py``), supernet slicing (``slim``),
Dagger gating and surgery, so channel coupling is worked out in exactly one place.

Example::

    graph = ChannelGraph.from_model(keras_model)
    for g in graph.prunable_groups:
        print(g.name, g.size)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np

# Layers that act on every channel independently and keep the channel dimension.
_PER_CHANNEL = (
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.Activation,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding2D,
    keras.layers.Identity,
)
_MERGE = (keras.layers.Add, keras.layers.Multiply, keras.layers.Subtract, keras.layers.Maximum,
          keras.layers.Minimum, keras.layers.Average)
# Activations that map 0 to 0, so a removed (zeroed) channel stays removed downstream.
_ZERO_PRESERVING = {"relu", "relu6", "swish", "silu", "linear", "leaky_relu", "elu", "selu", "gelu",
                    "tanh", "hard_swish", "hard_silu", "mish"}

SUPPORTED_LAYERS = (
    "InputLayer, Conv2D (groups=1), DepthwiseConv2D (depth_multiplier=1), Dense, "
    "BatchNormalization (axis=-1), ReLU, LeakyReLU, Activation, Dropout, SpatialDropout2D, "
    "MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, ZeroPadding2D, "
    "Add, Multiply, Subtract, Maximum, Minimum, Average, Concatenate (last axis), Flatten, Softmax"
)


class UnsupportedModelError(ValueError):
    """The model holds a layer or a wiring the channel graph does not understand."""


@dataclasses.dataclass(frozen=True)
class TensorSpace:
    """Which channel groups make up a tensor's last axis.

    The last axis is ``repeat`` blocks of ``block`` channels; within a block, ``segments`` lists
    ``(group_id, offset)``: group ``group_id``'s channels sit at ``offset .. offset + size - 1``.
    A plain tensor has one segment and ``repeat == 1``; a concatenation several segments; a
    flattened feature map ``repeat == H * W``.
    """

    segments: tuple[tuple[int, int], ...]
    block: int
    repeat: int = 1

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(g for g, _ in self.segments)


@dataclasses.dataclass
class ChannelGroup:
    """A set of coupled channels that are kept or removed together."""

    id: int
    name: str
    size: int
    prunable: bool
    producers: list[str]  # layers whose output channels are this group's (conv, dense, input)
    consumers: list[str]  # conv / dense layers that read this group's channels as input
    reason: str = ""  # why not prunable


@dataclasses.dataclass(frozen=True)
class LayerNode:
    """One layer of the model, in topological order, with its channel spaces."""

    name: str
    kind: str  # input, conv, depthwise, dense, bn, channelwise, merge, concat, flatten, softmax
    layer: keras.layers.Layer
    inputs: tuple[str, ...]  # names of the layers feeding it
    in_shapes: tuple[tuple[int, ...], ...]  # static shapes, batch dimension dropped
    out_shape: tuple[int, ...]
    in_space: TensorSpace | None
    out_space: TensorSpace


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _static(shape: Sequence[int | None], layer: keras.layers.Layer) -> tuple[int, ...]:
    dims = tuple(shape[1:])
    if any(d is None for d in dims):
        raise UnsupportedModelError(
            f"layer {layer.name!r} ({type(layer).__name__}) has a dynamic shape {tuple(shape)}; "
            "the channel graph needs a fixed input size (build the model with a full input_shape)"
        )
    return tuple(int(d) for d in dims)


def _layer_inputs(model: keras.Model, layer: keras.layers.Layer) -> list:
    """The input KerasTensors of ``layer``'s one call inside ``model``."""
    nodes = [n for n in layer._inbound_nodes if n in _model_nodes(model)]
    if len(nodes) != 1:
        raise UnsupportedModelError(
            f"layer {layer.name!r} ({type(layer).__name__}) is called {len(nodes)} times in the model; "
            "shared layers are not supported (each layer must be called exactly once)"
        )
    return list(nodes[0].input_tensors)


def _model_nodes(model: keras.Model) -> set:
    cached = getattr(model, "_cafe_nodes", None)
    if cached is None:
        cached = {n for nodes in model._nodes_by_depth.values() for n in nodes}
        model._cafe_nodes = cached
    return cached


class ChannelGraph:
    """Channel groups of a functional Keras model and the layers that read and write them."""

    def __init__(self, model: keras.Model, nodes: list[LayerNode], groups: list[ChannelGroup]):
        self.model = model
        self.nodes = nodes
        self.groups = groups
        self.node_by_name = {n.name: n for n in nodes}
        self.group_by_name = {g.name: g for g in groups}

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: keras.Model) -> ChannelGraph:
        """Builds the graph of ``model`` (a functional Keras 3 model with a fixed input size).

        Raises:
          UnsupportedModelError: naming the first layer (and its type) the graph cannot handle.
        """
        if not hasattr(model, "_nodes_by_depth") or not hasattr(model, "inputs") or not model.inputs:
            raise UnsupportedModelError(
                f"{type(model).__name__} {getattr(model, 'name', '')!r} is not a functional Keras model; "
                "build it with keras.Model(inputs, outputs)"
            )
        if len(model.inputs) != 1:
            raise UnsupportedModelError(f"model {model.name!r} has {len(model.inputs)} inputs; exactly 1 is supported")
        uf = _UnionFind()
        sizes: list[int] = []
        producers: dict[int, list[str]] = {}
        consumers: dict[int, list[str]] = {}
        blocked: dict[int, str] = {}
        spaces: dict[str, TensorSpace] = {}
        raw: list[tuple] = []

        def new_group(size: int, producer: str) -> TensorSpace:
            g = uf.add()
            sizes.append(size)
            producers.setdefault(g, []).append(producer)
            return TensorSpace(((g, 0),), size)

        order = _topological_layers(model)
        for layer in order:
            name = layer.name
            if isinstance(layer, keras.layers.InputLayer):
                shape = _static(layer.output.shape, layer)
                space = new_group(shape[-1], name)
                blocked[space.segments[0][0]] = "model input"
                spaces[name] = space
                raw.append((name, "input", layer, (), (), shape, None, space))
                continue
            inputs = _layer_inputs(model, layer)
            in_names = tuple(t._keras_history.operation.name for t in inputs)
            in_shapes = tuple(_static(t.shape, layer) for t in inputs)
            out_shape = _static(layer.output.shape, layer)
            in_spaces = [spaces[n] for n in in_names]
            kind, in_space, out_space = cls._classify(layer, in_spaces, in_shapes, out_shape, new_group, uf)
            if kind in ("conv", "dense"):
                for g in in_space.groups:
                    consumers.setdefault(g, []).append(name)
            if kind == "softmax" or (kind == "channelwise" and not _zero_preserving(layer)):
                for g in out_space.groups:
                    blocked.setdefault(g, f"{type(layer).__name__} {name!r} does not map 0 to 0")
            spaces[name] = out_space
            raw.append((name, kind, layer, in_names, in_shapes, out_shape, in_space, out_space))

        for t in model.outputs:
            for g in spaces[t._keras_history.operation.name].groups:
                blocked.setdefault(g, "model output")

        # Renumber union-find roots densely, in order of first appearance.
        root_to_id: dict[int, int] = {}
        for g in range(len(sizes)):
            r = uf.find(g)
            if r not in root_to_id:
                root_to_id[r] = len(root_to_id)

        def remap(space: TensorSpace | None) -> TensorSpace | None:
            if space is None:
                return None
            segs = tuple((root_to_id[uf.find(g)], off) for g, off in space.segments)
            return TensorSpace(segs, space.block, space.repeat)

        groups: list[ChannelGroup] = []
        for r, gid in root_to_id.items():
            members = [g for g in range(len(sizes)) if uf.find(g) == r]
            size = sizes[r]
            if any(sizes[m] != size for m in members):
                raise UnsupportedModelError(f"coupled channels of different sizes: {[sizes[m] for m in members]}")
            prods = [p for m in members for p in producers.get(m, [])]
            cons = sorted({c for m in members for c in consumers.get(m, [])}, key=[l.name for l in order].index)
            reason = next((blocked[m] for m in members if m in blocked), "")
            groups.append(ChannelGroup(gid, prods[0], size, not reason, prods, cons, reason))
        nodes = [
            LayerNode(n, k, l, i, s, o, remap(isp), remap(osp)) for (n, k, l, i, s, o, isp, osp) in raw
        ]
        return cls(model, nodes, groups)

    @staticmethod
    def _classify(layer, in_spaces, in_shapes, out_shape, new_group, uf):
        """Returns (kind, input space, output space) for one layer."""
        name, typ = layer.name, type(layer).__name__

        def one_input() -> TensorSpace:
            if len(in_spaces) != 1:
                raise UnsupportedModelError(f"layer {name!r} ({typ}) has {len(in_spaces)} inputs; expected 1")
            return in_spaces[0]

        if isinstance(layer, keras.layers.DepthwiseConv2D):
            if layer.depth_multiplier != 1:
                raise UnsupportedModelError(
                    f"layer {name!r} (DepthwiseConv2D) has depth_multiplier={layer.depth_multiplier}; only 1 is supported"
                )
            s = one_input()
            if s.repeat != 1 or len(s.segments) != 1:
                raise UnsupportedModelError(f"layer {name!r} (DepthwiseConv2D) reads a concatenated input; unsupported")
            return "depthwise", s, s
        if type(layer) is keras.layers.Conv2D:
            if layer.groups != 1:
                raise UnsupportedModelError(f"layer {name!r} (Conv2D) has groups={layer.groups}; only groups=1 is supported")
            if layer.data_format != "channels_last":
                raise UnsupportedModelError(f"layer {name!r} (Conv2D) uses {layer.data_format}; only channels_last")
            s = one_input()
            if s.repeat != 1:
                raise UnsupportedModelError(f"layer {name!r} (Conv2D) reads a flattened tensor; unsupported")
            return "conv", s, new_group(layer.filters, name)
        if type(layer) is keras.layers.Dense:
            return "dense", one_input(), new_group(layer.units, name)
        if isinstance(layer, keras.layers.BatchNormalization):
            axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
            if axis not in (-1, len(out_shape)):
                raise UnsupportedModelError(f"layer {name!r} (BatchNormalization) normalises axis {layer.axis}; only -1")
            return "bn", one_input(), one_input()
        if isinstance(layer, keras.layers.Softmax):
            return "softmax", one_input(), one_input()
        if isinstance(layer, _PER_CHANNEL):
            s = one_input()
            if isinstance(layer, (keras.layers.Activation,)) and getattr(layer.activation, "__name__", "") == "softmax":
                return "softmax", s, s
            if isinstance(layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
                if layer.data_format != "channels_last":
                    raise UnsupportedModelError(f"layer {name!r} ({typ}) uses {layer.data_format}; only channels_last")
            return "channelwise", s, s
        if isinstance(layer, _MERGE):
            first = in_spaces[0]
            for other in in_spaces[1:]:
                if (len(other.segments) != len(first.segments) or other.block != first.block
                        or other.repeat != first.repeat
                        or [o for _, o in other.segments] != [o for _, o in first.segments]):
                    raise UnsupportedModelError(
                        f"layer {name!r} ({typ}) merges tensors whose channel layouts differ; unsupported"
                    )
                for (ga, _), (gb, _) in zip(first.segments, other.segments):
                    uf.union(ga, gb)
            return "merge", None, first
        if isinstance(layer, keras.layers.Concatenate):
            if layer.axis not in (-1, len(out_shape)):
                raise UnsupportedModelError(f"layer {name!r} (Concatenate) joins axis {layer.axis}; only the last axis")
            segs, off = [], 0
            for s in in_spaces:
                if s.repeat != 1:
                    raise UnsupportedModelError(f"layer {name!r} (Concatenate) joins a flattened tensor; unsupported")
                segs.extend((g, off + o) for g, o in s.segments)
                off += s.block
            return "concat", None, TensorSpace(tuple(segs), off)
        if isinstance(layer, keras.layers.Flatten):
            s = one_input()
            positions = int(np.prod(in_shapes[0][:-1])) if len(in_shapes[0]) > 1 else 1
            return "flatten", s, TensorSpace(s.segments, s.block, s.repeat * positions)
        raise UnsupportedModelError(
            f"layer {name!r} of type {typ} is not supported by the channel graph; supported: {SUPPORTED_LAYERS}"
        )

    # ----------------------------------------------------------------------------------------
    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        """Groups whose width can change (not the model input, not the logits)."""
        return [g for g in self.groups if g.prunable]

    def group(self, key: int | str) -> ChannelGroup:
        """Looks a group up by id or name; raises ValueError naming valid keys."""
        if isinstance(key, (int, np.integer)):
            if not 0 <= key < len(self.groups):
                raise ValueError(f"group index {key} does not exist; valid: 0..{len(self.groups) - 1}")
            return self.groups[int(key)]
        if key not in self.group_by_name:
            raise ValueError(f"group {key!r} does not exist; valid names: {sorted(self.group_by_name)}")
        return self.group_by_name[key]

    def full_widths(self) -> np.ndarray:
        """Width of every group (all groups, by id) at the full model."""
        return np.array([g.size for g in self.groups], dtype=np.int64)

    def validate_selection(self, selection: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Checks a channel selection {group id: channel indices}; fills unselected groups with all.

        Raises:
          ValueError: a non-prunable group changed, an index out of range or duplicated, or empty.
        """
        out: dict[int, np.ndarray] = {}
        for key, idx in selection.items():
            g = self.group(key)
            arr = np.asarray(idx)
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise ValueError(f"channels of group {g.name!r} must be a 1-D list of integers, got {idx!r}")
            arr = arr.astype(np.int64)
            if arr.size == 0:
                raise ValueError(f"group {g.name!r} needs at least one channel; got none")
            bad = arr[(arr < 0) | (arr >= g.size)]
            if bad.size:
                raise ValueError(f"channel index {int(bad[0])} of group {g.name!r} is out of range 0..{g.size - 1}")
            values, counts = np.unique(arr, return_counts=True)
            if (counts > 1).any():
                raise ValueError(f"group {g.name!r} lists channel {int(values[counts > 1][0])} more than once")
            if not g.prunable and arr.size != g.size:
                raise ValueError(f"group {g.name!r} cannot be pruned ({g.reason}); it must keep all {g.size} channels")
            out[g.id] = np.sort(arr)
        for g in self.groups:
            out.setdefault(g.id, np.arange(g.size))
        return out

    def space_indices(self, space: TensorSpace, selection: dict[int, np.ndarray]) -> np.ndarray:
        """Kept positions along a tensor's last axis for a channel selection (numpy)."""
        block = np.concatenate([np.asarray(selection[g]) + off for g, off in space.segments])
        if space.repeat == 1:
            return block
        return (np.arange(space.repeat)[:, None] * space.block + block[None, :]).reshape(-1)

    def summary(self) -> str:
        """A table of the groups: id, name, size, prunable, producers."""
        rows = [f"{'id':>3}  {'group':<36} {'size':>5}  {'prunable':<8} producers"]
        for g in self.groups:
            rows.append(f"{g.id:>3}  {g.name:<36} {g.size:>5}  {str(g.prunable):<8} {', '.join(g.producers)}")
        return "\n".join(rows)


def _zero_preserving(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") in _ZERO_PRESERVING
    return True


def _topological_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers ordered so that every layer comes after its inputs (by Keras node depth)."""
    ordered = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            op = node.operation
            if op not in ordered:
                ordered.append(op)
    for layer in ordered:
        if isinstance(layer, keras.Model):
            raise UnsupportedModelError(
                f"layer {layer.name!r} is a nested model ({type(layer).__name__}); flatten it into one functional model"
            )
    return ordered
