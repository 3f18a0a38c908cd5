"""The channel dependency graph of a functional Keras model.

Channels that must be kept or removed together form a **group**: the outputs of every layer joined
by a residual ``Add``, the input and output of a ``DepthwiseConv2D``, a squeeze-excitation
``Multiply``, the layers in between that act per channel (BN, activations, pooling, padding,
dropout). A ``Concatenate`` does not merge groups: its output channels are the parts laid side by
side, and ``Flatten`` repeats its input's channels once per spatial position.

What each layer kind does to channels is its rule in ``cafe_tf.layers`` (the one registry); this
module only walks the model, asks the rules, and unites the groups they couple. Nested functional
or ``Sequential`` models are seen through (the graph runs on a flattened copy that shares their
layers). One :class:`ChannelGraph` serves FLOPs counting (``flops.py``), supernet slicing
(``slim``), Dagger gating and surgery.

Example::

    graph = ChannelGraph.from_model(keras_model, boundaries=["head_conv"])
    for g in graph.prunable_groups:
        print(g.name, g.size)
    print(cafe_tf.check.check(keras_model).summary())   # is my model supported, and how?
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np

from cafe_tf import layers as rules
from cafe_tf.layers import TensorSpace, UnsupportedModelError, WireContext

__all__ = ["ChannelGraph", "ChannelGroup", "LayerNode", "TensorSpace", "UnsupportedModelError", "flatten_model",
           "set_boundaries", "model_boundaries"]


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
    """One layer (or Keras operation) of the model, in topological order, with its channel spaces."""

    name: str
    kind: str  # the rule's kind: input, conv, depthwise, dense, bn, ln, channelwise, merge, concat, ...
    layer: Any  # keras Layer or Keras 3 Operation
    inputs: tuple[str, ...]  # names of the layers feeding it
    in_shapes: tuple[tuple[int, ...], ...]  # static shapes, batch dimension dropped
    out_shape: tuple[int, ...]
    in_space: TensorSpace | None
    out_space: TensorSpace
    rule: rules.LayerRule | None = None
    call: Any = None  # the keras Node: its arguments replay the call on other tensors
    zero_preserving: bool = True
    boundary: bool = False


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


def _static(shape: Sequence[int | None], name: str, typ: str) -> tuple[int, ...]:
    dims = tuple(shape[1:])
    if any(d is None for d in dims):
        raise UnsupportedModelError(
            f"layer {name!r} ({typ}) has a dynamic shape {tuple(shape)}; "
            "the channel graph needs a fixed input size (build the model with a full input_shape)"
        )
    return tuple(int(d) for d in dims)


def _ordered_nodes(model: keras.Model) -> list:
    """The model's keras Nodes so that every node comes after its inputs (by node depth)."""
    return [node for depth in sorted(model._nodes_by_depth, reverse=True) for node in model._nodes_by_depth[depth]]


def _is_functional(model: Any) -> bool:
    return hasattr(model, "_nodes_by_depth") and bool(getattr(model, "inputs", None))


def flatten_model(model: keras.Model) -> keras.Model:
    """``model`` with every nested functional or ``Sequential`` model inlined (the same layer
    objects, so the weights are shared); ``model`` itself when nothing is nested."""
    if not _is_functional(model):
        return model
    if not any(isinstance(n.operation, keras.Model) for n in _ordered_nodes(model)):
        return model
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t._keras_history.operation.name) for t in model.inputs]
    outputs = _replay(model, inputs)
    flat = keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=model.name)
    names = [op.name for op in flat.operations]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UnsupportedModelError(
            f"model {model.name!r} has nested models whose layers share the names {dupes}; give them unique names"
        )
    return flat


def _replay(model: keras.Model, inputs: list) -> list:
    """Calls ``model``'s layers on ``inputs``, inlining nested models."""
    if isinstance(model, keras.Sequential):  # a chain, built or not: its layers in order
        x = inputs[0]
        for layer in model.layers:
            x = _replay(layer, [x])[0] if isinstance(layer, keras.Model) else layer(x)
        return [x]
    values = {id(t): x for t, x in zip(model.inputs, inputs)}
    for node in _ordered_nodes(model):
        op = node.operation
        if isinstance(op, keras.layers.InputLayer):
            continue
        if isinstance(op, keras.Model):
            outs = _replay(op, [values[id(t)] for t in node.input_tensors])
        else:
            args, kwargs = node.arguments.fill_in(values)
            outs = op(*args, **kwargs)
        outs = keras.tree.flatten(outs)
        for t, o in zip(node.outputs, outs):
            values[id(t)] = o
    return [values[id(t)] for t in model.outputs]


def _boundary_matchers(boundaries: Iterable[Any]) -> tuple[set[str], set[type]]:
    names, types = set(), set()
    for b in boundaries or ():
        if isinstance(b, type):
            types.add(b)
        elif isinstance(b, str):
            names.add(b)
        else:
            raise ValueError(f"a boundary is a layer name or a layer class, got {b!r}")
    return names, types


_BOUNDARIES_ATTR = "_cafe_tf_boundaries"


def set_boundaries(model: keras.Model, boundaries: Iterable[Any]) -> keras.Model:
    """Records fixed-width boundaries (layer names or classes) on ``model`` itself, so that every
    graph built from it later (supernet, search, Dagger, export) keeps them; returns ``model``.
    ``config.model.boundaries`` lands here."""
    _boundary_matchers(boundaries)  # validates the entries
    object.__setattr__(model, _BOUNDARIES_ATTR, tuple(boundaries))
    return model


def model_boundaries(model: Any) -> tuple:
    """The boundaries recorded on ``model`` by :func:`set_boundaries` (none by default)."""
    return tuple(getattr(model, _BOUNDARIES_ATTR, ()))


class ChannelGraph:
    """Channel groups of a functional Keras model and the layers that read and write them."""

    def __init__(self, model: keras.Model, nodes: list[LayerNode], groups: list[ChannelGroup],
                 boundaries: tuple = ()):
        self.model = model
        self.nodes = nodes
        self.groups = groups
        self.boundaries = boundaries
        self.node_by_name = {n.name: n for n in nodes}
        self.group_by_name = {g.name: g for g in groups}
        self._output_ids = {id(n.call.outputs[0]): n.name for n in nodes if n.call is not None}

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: keras.Model, boundaries: Iterable[Any] = ()) -> ChannelGraph:
        """Builds the graph of ``model`` (a functional Keras 3 model with a fixed input size).

        ``boundaries``: layer names or layer classes whose channels are kept whole (fixed-width
        boundaries); a class also covers layers that have no rule in ``cafe_tf.layers``. Those
        recorded on the model with :func:`set_boundaries` are added.

        Raises:
          UnsupportedModelError: naming the first layer (and its type) the graph cannot handle, and
            the two ways out (a rule, or a boundary).
        """
        if not _is_functional(model):
            raise UnsupportedModelError(
                f"{type(model).__name__} {getattr(model, 'name', '')!r} is not a functional Keras model "
                "(a subclassed model has no graph to read); build it with keras.Model(inputs, outputs) "
                "or keras.Sequential with an Input"
            )
        boundaries = tuple(boundaries or ()) + tuple(b for b in model_boundaries(model) if b not in (boundaries or ()))
        b_names, b_types = _boundary_matchers(boundaries)
        model = flatten_model(model)
        if len(model.inputs) != 1:
            raise UnsupportedModelError(f"model {model.name!r} has {len(model.inputs)} inputs; exactly 1 is supported")
        known = {op.name for op in model.operations} | {l.name for l in model.layers}
        missing = sorted(b_names - known - {t.__name__ for t in map(type, model.operations)})
        if missing:
            raise ValueError(f"boundaries {missing} name no layer of model {model.name!r} (nor a layer type in it)")
        uf = _UnionFind()
        sizes: list[int] = []
        producers: dict[int, list[str]] = {}
        consumers: dict[int, list[str]] = {}
        blocked: dict[int, str] = {}
        space_of: dict[int, TensorSpace] = {}  # id(KerasTensor) -> its space
        name_of: dict[int, str] = {}  # id(KerasTensor) -> producing node's name
        raw: list[dict] = []
        seen: set[str] = set()

        def new_group(size: int, producer: str) -> TensorSpace:
            g = uf.add()
            sizes.append(int(size))
            producers.setdefault(g, []).append(producer)
            return TensorSpace(((g, 0),), int(size))

        def couple(a: TensorSpace, b: TensorSpace) -> None:
            for ga, gb in zip(a.groups, b.groups):
                uf.union(ga, gb)

        def block(space: TensorSpace, reason: str) -> None:
            for g in space.groups:
                blocked.setdefault(g, reason)

        for knode in _ordered_nodes(model):
            op = knode.operation
            name, typ = op.name, type(op).__name__
            if name in seen:
                raise UnsupportedModelError(
                    f"layer {name!r} ({typ}) is called more than once in the model (or shares its name with "
                    "another); shared layers are not supported (each layer must be called exactly once)"
                )
            seen.add(name)
            if len(knode.outputs) != 1:
                raise UnsupportedModelError(
                    f"layer {name!r} ({typ}) has {len(knode.outputs)} outputs; the channel graph takes "
                    "single-output layers. Way out: declare the layers after it fixed-width boundaries, "
                    "or register a rule (cafe_tf.layers.register)"
                )
            out_t = knode.outputs[0]
            out_shape = _static(out_t.shape, name, typ)
            if isinstance(op, keras.layers.InputLayer):
                space = new_group(out_shape[-1], name)
                block(space, "model input")
                space_of[id(out_t)], name_of[id(out_t)] = space, name
                raw.append(dict(name=name, kind="input", layer=op, inputs=(), in_shapes=(), out_shape=out_shape,
                                in_space=None, out_space=space, rule=None, call=knode))
                continue
            in_tensors = list(knode.input_tensors)
            in_names = tuple(name_of[id(t)] for t in in_tensors)
            in_shapes = tuple(_static(t.shape, name, typ) for t in in_tensors)
            constants = [a for a in keras.tree.flatten((knode.arguments.args, ))
                         if not isinstance(a, keras.KerasTensor) and a is not None]
            is_boundary = name in b_names or type(op) in b_types or typ in b_names
            rule = rules.resolve(op)
            if rule is None:
                if not is_boundary:
                    raise UnsupportedModelError(_uncovered_message(op, name))
                rule = rules.boundary_rule()
            ctx = WireContext(name, op, [space_of[id(t)] for t in in_tensors], list(in_shapes), out_shape,
                              constants, new_group, couple, block)
            in_space, out_space = rule.wire(ctx)
            if is_boundary and rule is not rules.boundary_rule():
                reason = f"{typ} {name!r} is a fixed-width boundary"
                for s in ctx.in_spaces:
                    block(s, reason)
                block(out_space, reason)
            if rule.producer:
                for g in in_space.groups:
                    consumers.setdefault(g, []).append(name)
            zero = rule.zero_preserving(op, _at_zero(knode, in_tensors, in_shapes))
            space_of[id(out_t)], name_of[id(out_t)] = out_space, name
            raw.append(dict(name=name, kind=rule.kind, layer=op, inputs=in_names, in_shapes=in_shapes,
                            out_shape=out_shape, in_space=in_space, out_space=out_space, rule=rule, call=knode,
                            zero_preserving=zero, boundary=is_boundary))

        for t in model.outputs:
            block(space_of[id(t)], "model output")

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
            return TensorSpace(segs, space.block, space.repeat, space.inner)

        order = [r["name"] for r in raw]
        position = {n: i for i, n in enumerate(order)}
        groups: list[ChannelGroup] = []
        for r, gid in root_to_id.items():
            members = [g for g in range(len(sizes)) if uf.find(g) == r]
            size = sizes[r]
            if any(sizes[m] != size for m in members):
                names = sorted({p for m in members for p in producers.get(m, [])})
                raise UnsupportedModelError(
                    f"layers {names} are coupled (added, multiplied or run per channel together) but have "
                    f"different channel counts {sorted({sizes[m] for m in members})}"
                )
            prods = [p for m in members for p in producers.get(m, [])]
            cons = sorted({c for m in members for c in consumers.get(m, [])}, key=position.__getitem__)
            reason = next((blocked[m] for m in members if m in blocked), "")
            groups.append(ChannelGroup(gid, prods[0], size, not reason, prods, cons, reason))
        nodes = []
        for r in raw:
            r["in_space"], r["out_space"] = remap(r["in_space"]), remap(r["out_space"])
            nodes.append(LayerNode(**r))
        return cls(model, nodes, groups, boundaries)

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
        return rules.space_positions(space, [np.asarray(selection[g]) for g in space.groups],
                                     [self.groups[g].size for g in space.groups])

    def summary(self) -> str:
        """A table of the groups: id, name, size, prunable, producers."""
        rows = [f"{'id':>3}  {'group':<36} {'size':>5}  {'prunable':<8} producers"]
        for g in self.groups:
            rows.append(f"{g.id:>3}  {g.name:<36} {g.size:>5}  {str(g.prunable):<8} {', '.join(g.producers)}")
        return "\n".join(rows)


def _at_zero(knode, in_tensors, in_shapes):
    """A callable running the node on all-zero inputs of its own shapes (batch 1)."""

    def run():
        values = {id(t): np.zeros((1, *shape), np.float32) for t, shape in zip(in_tensors, in_shapes)}
        args, kwargs = knode.arguments.fill_in(values)
        kwargs.pop("training", None)
        return knode.operation(*args, **kwargs)

    return run


def _uncovered_message(op: Any, name: str) -> str:
    typ = type(op).__name__
    what = "layer" if isinstance(op, keras.layers.Layer) else "Keras operation"
    return (
        f"{what} {name!r} of type {typ} ({type(op).__module__}) has no channel rule. Ways out: declare it a "
        f"fixed-width boundary, which keeps its channels whole (ChannelGraph.from_model(model, "
        f"boundaries=[{name!r}]) or boundaries=[{typ}], or config.model.boundaries=[{name!r}] in a config); or "
        f"register a rule for {typ} (cafe_tf.layers.register({typ}, rule)). Types with a rule: "
        f"{', '.join(rules.covered_types())}"
    )
