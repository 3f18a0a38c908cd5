"""Any network the channel graph accepts, as a keras-hub feature-pyramid backbone for RetinaNet.

:func:`pyramid_backbone` takes a functional Keras model (a built-in architecture, a searched
``widths.json`` network, a Dagger-pruned or user ``.keras``) and returns a
:class:`PyramidBackbone`, a ``keras_hub.models.FeaturePyramidBackbone`` whose ``pyramid_outputs``
are ``{"P3": ..., "P4": ..., "P5": ...}``: level ``Pn`` is a feature map ``2**n`` times smaller than
the image, which is what ``keras_hub.models.RetinaNetBackbone`` reads (it keeps the levels from
``min_level`` up and builds P6/P7 itself).

Which layer is a level:

* **by stride** (the default): the channel graph gives every layer's static output shape, so a
  layer's output stride is the image height over its output height. With ``image_shape`` (the
  detector's image size) the shapes are those of the model's layers called again at that size: a
  classifier trained at 28x28 (feature maps 14, 7, 4, 2, 1: 28/4 is no stride) has at 128x128 the
  maps 64 ... 4 of strides 2 ... 32. Level ``Pn`` is the last layer
  (in topological order) of stride ``2**n`` that every later layer depends on (no connection skips
  over it: a cut of the graph), or the last layer of that stride when none is a cut. For a ResNet
  that is the last block's output of a stage (not the 1x1 reduction of the next stage's first
  block, which its strided shortcut skips); for MobileNetV2 the expansion of the next stage's first
  block (as SSDLite taps it), since that 1x1 expansion still runs at the stage's stride.
* **by name**: ``layer_names={"P3": "stage2_out", ...}`` for a user's model with named pyramid
  layers (the names are checked, and their strides must be ``2**n``, at ``image_shape`` when given).

A network without the requested levels (a CIFAR ResNet-20 downsamples twice: strides 1, 2, 4)
fails with :class:`PyramidLevelError`, naming the levels it has. So does a model whose feature maps
cannot be computed at ``image_shape`` (a ``Flatten`` + ``Dense`` that fixes the spatial size before
more convolutions); a fixed-size classifier head alone (VGG's, the small CNN's) is no obstacle, since
the levels come before it.

The trunk is rebuilt for the detector's image size by calling the model's own layers again on a new
input (so weights are shared, nothing is copied); the trunk keeps only the layers the levels need, so the
classifier head (pooling, dense) drops out and any input size divisible by the largest stride works.

**Channel-graph boundaries.** The FPN and the heads keras-hub builds (``FeaturePyramid``,
``PredictionHead``) are fixed-width boundaries: they are not pruned. Why: they are keras-hub
layers, not functional sub-graphs of standard layers, so the channel graph cannot read their
inside, and their widths are fixed by keras-hub (256 filters in the FPN and both heads, set in
``RetinaNetObjectDetector`` / ``RetinaNetBackbone`` with no argument to change them). The one
coupling that crosses the boundary is harmless: each level's channel count is read by the FPN's
1x1 lateral convolution, which is built for whatever the backbone gives, so a slimmed or pruned
backbone needs no change in the detector. Width search and Dagger pruning therefore act on the
backbone (as CafeNet reports detection with its searched backbones); the detector's fixed part is
counted in its MACs as a constant.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from cafe_tf.graph import ChannelGraph

DEFAULT_LEVELS = (3, 4, 5)


class PyramidLevelError(ValueError):
    """A backbone lacks a requested pyramid level, or a named pyramid layer is wrong; the message says which."""


def _hub():
    import keras_hub  # imported here so that `import cafe_tf` never loads keras-hub

    return keras_hub


def level_name(level: int) -> str:
    """keras-hub's key of pyramid level ``level`` (``P3``)."""
    return f"P{int(level)}"


def layer_strides(graph: ChannelGraph, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, int]:
    """{layer name: output stride} of every layer with a rank-3 (height, width, channels) output, in topological order.

    ``shapes`` ({layer name: output shape}, e.g. :attr:`Replay.shapes`) replaces the graph's own; layers
    not in it are left out, as are layers whose output height does not divide the input's (or whose
    width gives another stride).
    """
    shapes = shapes if shapes is not None else {node.name: node.out_shape for node in graph.nodes}
    in_h, in_w = shapes[graph.nodes[0].name][:2]
    out: dict[str, int] = {}
    for node in graph.nodes:
        shape = shapes.get(node.name)
        if shape is None or len(shape) != 3:
            continue
        h, w = shape[:2]
        if h and w and in_h % h == 0 and in_w % w == 0 and in_h // h == in_w // w:
            out[node.name] = in_h // h
    return out


@dataclasses.dataclass(frozen=True)
class Replay:
    """A model's layers called again on a new input (same layer objects, so the weights are shared)."""

    image: Any  # the new input (a keras.Input)
    outputs: dict[str, Any]  # {layer name: its output on ``image``}, topological order
    lost: tuple[str, ...]  # layers that could not be called at this size, and those reading them
    failure: str  # the first lost layer's error ("" when none is lost)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """{layer name: output shape (batch dimension dropped)} of the layers that were called."""
        return {name: tuple(t.shape[1:]) for name, t in self.outputs.items()}


def replay(graph: ChannelGraph, image_shape: Sequence[int], names: set[str] | None = None) -> Replay:
    """``graph``'s layers (only ``names`` when given) called in topological order on a new input of ``image_shape``.

    A layer that fails at this size (a ``Dense`` after a ``Flatten`` is built for one size) is recorded
    in ``lost``, with every layer that reads it, instead of raising.
    """
    image = keras.Input(shape=tuple(image_shape), name="images", dtype=graph.nodes[0].layer.output.dtype)
    values: dict[int, Any] = {}
    outputs: dict[str, Any] = {}
    lost: list[str] = []
    failure = ""
    for node in graph.nodes:
        if names is not None and node.name not in names:
            continue
        if node.rule is None:  # the model input
            out = image
        elif any(src not in outputs for src in node.inputs):
            lost.append(node.name)
            continue
        else:
            args, kwargs = node.call.arguments.fill_in(values)
            try:
                out = node.layer(*args, **kwargs)
            except Exception as e:  # any layer's refusal of the new shape, reported with its name
                lost.append(node.name)
                failure = failure or f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                continue
        values[id(node.call.outputs[0])] = outputs[node.name] = out
    return Replay(image, outputs, tuple(lost), failure)


def cut_layers(graph: ChannelGraph) -> set[str]:
    """Layers every later layer depends on: no connection in the graph skips over them (topological order)."""
    position = {node.name: i for i, node in enumerate(graph.nodes)}
    reach = [i for i in range(len(graph.nodes))]  # the furthest consumer of each layer
    for node in graph.nodes:
        for src in node.inputs:
            reach[position[src]] = max(reach[position[src]], position[node.name])
    cuts, furthest = set(), 0
    for i, node in enumerate(graph.nodes):
        if furthest <= i:
            cuts.add(node.name)
        furthest = max(furthest, reach[i])
    return cuts


def find_levels(model: keras.Model, levels: Sequence[int] = DEFAULT_LEVELS,
                layer_names: Mapping[str, str] | None = None, graph: ChannelGraph | None = None,
                image_shape: Sequence[int] | None = None) -> dict[str, str]:
    """{``Pn``: layer name} of ``model``'s pyramid levels: the last layer of stride ``2**n``, or ``layer_names``.

    With ``image_shape`` (height, width, channels) other than the model's input, the strides are those
    of the model's layers called at that size (see the module doc).

    Raises:
      PyramidLevelError: a level the model does not have (naming the levels it has), a named layer
        that does not exist or has another stride, a model whose feature maps cannot be computed at
        ``image_shape``.
      UnsupportedModelError: the channel graph does not accept ``model``.
    """
    graph = graph or ChannelGraph.from_model(model)
    replayed = None
    if image_shape is not None:
        image_shape = _checked_image_shape(model, graph, image_shape)
        if image_shape != graph.nodes[0].out_shape:
            replayed = replay(graph, image_shape)
    return _choose_levels(model, graph, levels, layer_names, replayed)


def _choose_levels(model: keras.Model, graph: ChannelGraph, levels: Sequence[int],
                   layer_names: Mapping[str, str] | None, replayed: Replay | None) -> dict[str, str]:
    """:func:`find_levels` on the shapes of ``replayed`` (the graph's own when None)."""
    shapes = replayed.shapes if replayed is not None else None
    at = tuple(replayed.image.shape[1:]) if replayed is not None else graph.nodes[0].out_shape
    strides = layer_strides(graph, shapes)
    cuts = cut_layers(graph)
    found: dict[str, str] = {}
    cut_found: dict[str, str] = {}
    for name, stride in strides.items():  # topological order: the last of each stride wins
        if stride & (stride - 1) == 0:
            found[level_name(stride.bit_length() - 1)] = name
            if name in cuts:
                cut_found[level_name(stride.bit_length() - 1)] = name
    found.update(cut_found)
    have = sorted(found, key=lambda k: int(k[1:]))
    wanted = [level_name(n) for n in levels]
    top = 2 ** max(levels)
    way_out = (f"Train the classifier at a size divisible by {top} and run the detector at that same size "
               "(config.data.image_size), or name pyramid layers that come before that layer with "
               "config.detector.pyramid_layers (find_levels' layer_names)")
    if layer_names:
        unknown = sorted(set(layer_names) - set(wanted))
        if unknown:
            raise PyramidLevelError(f"layer_names names levels {unknown} that were not requested; requested: {wanted}")
        for key, name in layer_names.items():
            if name not in graph.node_by_name:
                raise PyramidLevelError(f"pyramid layer {name!r} (for {key}) is not a layer of model {model.name!r}")
            if replayed is not None and name in replayed.lost:
                raise PyramidLevelError(
                    f"pyramid layer {name!r} (for {key}) of model {model.name!r} cannot be computed at image size "
                    f"{at}: layer {replayed.lost[0]!r} fails there ({replayed.failure}). {way_out}")
            stride = strides.get(name)
            if stride != 2 ** int(key[1:]):
                shape = shapes[name] if shapes is not None else graph.node_by_name[name].out_shape
                where = f" at image size {at}" if replayed is not None else ""
                raise PyramidLevelError(
                    f"pyramid layer {name!r} has output stride {stride} (shape {shape}){where} "
                    f"but {key} needs stride {2 ** int(key[1:])}")
        found.update(layer_names)
    by_stride = [k for k in wanted if not (layer_names and k in layer_names)]
    if replayed is not None and by_stride:
        # A feature map we could not compute might have been a level: refuse rather than pick another.
        maps = [n for n in replayed.lost if len(graph.node_by_name[n].out_shape) == 3]
        if maps:
            first = replayed.lost[0]
            raise PyramidLevelError(
                f"layer {first!r} ({type(graph.node_by_name[first].layer).__name__}) of model {model.name!r} cannot "
                f"be called at image size {at} ({replayed.failure}); the model fixes its spatial size there (e.g. "
                f"Flatten + Dense), so the feature maps after it ({maps[:3]}{' ...' if len(maps) > 3 else ''}) and "
                f"pyramid levels {by_stride} cannot be found at that size. {way_out}")
    missing = [k for k in wanted if k not in found]
    if missing:
        detail = ", ".join(f"{k} (stride {2 ** int(k[1:])}): {found[k]!r}" for k in have) or "none"
        where = f"at image size {at} (its layers called at that size)" if replayed is not None else f"at input {at}"
        raise PyramidLevelError(
            f"model {model.name!r} {where} has no pyramid level {missing}; the levels "
            f"it has are {detail}. Use a backbone that downsamples to stride {top}, a larger "
            "input, or other levels (min_level/max_level)")
    return {k: found[k] for k in wanted}


def _checked_image_shape(model: keras.Model, graph: ChannelGraph, image_shape: Sequence[int]) -> tuple[int, ...]:
    """``image_shape`` as a tuple of ints; raises PyramidLevelError unless it is (height, width, the model's channels)."""
    in_shape = graph.nodes[0].out_shape
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or image_shape[-1] != in_shape[-1]:
        raise PyramidLevelError(f"image_shape {image_shape} does not fit model {model.name!r}, which takes "
                                f"{in_shape[-1]}-channel images (height, width, {in_shape[-1]})")
    return image_shape


def pyramid_trunk(model: keras.Model, image_shape: Sequence[int], levels: Sequence[int] = DEFAULT_LEVELS,
                  layer_names: Mapping[str, str] | None = None) -> keras.Model:
    """A functional model ``image -> {"P3": ..., ...}`` made of ``model``'s own layers (weights shared) at ``image_shape``.

    The levels are found on ``model``'s layers at ``image_shape`` (:func:`find_levels`), whose height
    and width must divide by the largest stride.
    """
    graph = ChannelGraph.from_model(model)
    image_shape = _checked_image_shape(model, graph, image_shape)
    top = 2 ** max(levels)
    if image_shape[0] % top or image_shape[1] % top:
        raise PyramidLevelError(f"image_shape {image_shape}: height and width must divide by {top} (the stride of "
                                f"{level_name(max(levels))})")
    # One replay serves both: the strides at image_shape and the trunk's tensors (the layers the levels
    # do not need, e.g. the classifier head, are left out of the trunk model by keras.Model).
    replayed = replay(graph, image_shape)
    chosen = _choose_levels(model, graph, levels, layer_names,
                            replayed if image_shape != graph.nodes[0].out_shape else None)
    outputs = {key: replayed.outputs[name] for key, name in chosen.items()}
    return keras.Model(replayed.image, outputs, name=f"{model.name}_pyramid")


def _backbone_class():
    hub = _hub()

    @keras.saving.register_keras_serializable(package="cafe_tf")
    class PyramidBackbone(hub.models.FeaturePyramidBackbone):
        """A keras-hub pyramid backbone around a :func:`pyramid_trunk` (a functional ``image -> {Pn: map}`` model)."""

        def __init__(self, trunk: keras.Model, **kwargs):
            outputs = dict(trunk.output)
            super().__init__(inputs=trunk.inputs, outputs=outputs, **kwargs)
            self.trunk = trunk
            self.pyramid_outputs = outputs
            self.image_shape = tuple(trunk.inputs[0].shape[1:])

        def get_config(self) -> dict[str, Any]:
            config = super().get_config()
            config["trunk"] = keras.saving.serialize_keras_object(self.trunk)
            return config

        @classmethod
        def from_config(cls, config):
            config = dict(config)
            config["trunk"] = keras.saving.deserialize_keras_object(config["trunk"])
            return super().from_config(config)

    return PyramidBackbone


@functools.cache
def backbone_class() -> type:
    """The :class:`PyramidBackbone` class (defined on first use, since it subclasses a keras-hub class)."""
    return _backbone_class()


def pyramid_backbone(model: keras.Model, image_shape: Sequence[int], levels: Sequence[int] = DEFAULT_LEVELS,
                     layer_names: Mapping[str, str] | None = None):
    """``model``'s pyramid levels at ``image_shape`` as a keras-hub ``FeaturePyramidBackbone`` (see the module doc)."""
    trunk = pyramid_trunk(model, image_shape, levels, layer_names)
    return backbone_class()(trunk, name=f"{model.name}_backbone")
