"""Any network the channel graph accepts, as a keras-hub feature-pyramid backbone for RetinaNet.

:func:`pyramid_backbone` takes a functional Keras model (a built-in architecture, a searched
``widths.json`` network, a Dagger-pruned or user ``.keras``) and returns a
:class:`PyramidBackbone`, a ``keras_hub.models.FeaturePyramidBackbone`` whose ``pyramid_outputs``
are ``{"P3": ..., "P4": ..., "P5": ...}``: level ``Pn`` is a feature map ``2**n`` times smaller than
the image, which is what ``keras_hub.models.RetinaNetBackbone`` reads (it keeps the levels from
``min_level`` up and builds P6/P7 itself).

Which layer is a level:

* **by stride** (the default): the channel graph gives every layer's static output shape, so a
  layer's output stride is the image height over its output height. Level ``Pn`` is the last layer
  (in topological order) of stride ``2**n`` that every later layer depends on (no connection skips
  over it: a cut of the graph), or the last layer of that stride when none is a cut. For a ResNet
  that is the last block's output of a stage (not the 1x1 reduction of the next stage's first
  block, which its strided shortcut skips); for MobileNetV2 the expansion of the next stage's first
  block (as SSDLite taps it), since that 1x1 expansion still runs at the stage's stride.
* **by name**: ``layer_names={"P3": "stage2_out", ...}`` for a user's model with named pyramid
  layers (the names are checked, and their strides must be ``2**n``).

A network without the requested levels (a CIFAR ResNet-20 downsamples twice: strides 1, 2, 4)
fails with :class:`PyramidLevelError`, naming the levels it has.

The trunk is rebuilt for the detector's image size by calling the model's own layers again on a new
input (so weights are shared, nothing is copied); only the layers the levels need are called, so the
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


def layer_strides(graph: ChannelGraph) -> dict[str, int]:
    """{layer name: output stride} of every layer with a rank-3 (height, width, channels) output, in topological order.

    Layers whose output height does not divide the input's (or whose width gives another stride) are left out.
    """
    in_h, in_w = graph.nodes[0].out_shape[:2]
    out: dict[str, int] = {}
    for node in graph.nodes:
        if len(node.out_shape) != 3:
            continue
        h, w = node.out_shape[:2]
        if h and w and in_h % h == 0 and in_w % w == 0 and in_h // h == in_w // w:
            out[node.name] = in_h // h
    return out


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
                layer_names: Mapping[str, str] | None = None, graph: ChannelGraph | None = None) -> dict[str, str]:
    """{``Pn``: layer name} of ``model``'s pyramid levels: the last layer of stride ``2**n``, or ``layer_names``.

    Raises:
      PyramidLevelError: a level the model does not have (naming the levels it has), a named layer
        that does not exist or has another stride.
      UnsupportedModelError: the channel graph does not accept ``model``.
    """
    graph = graph or ChannelGraph.from_model(model)
    strides = layer_strides(graph)
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
    if layer_names:
        unknown = sorted(set(layer_names) - set(wanted))
        if unknown:
            raise PyramidLevelError(f"layer_names names levels {unknown} that were not requested; requested: {wanted}")
        for key, name in layer_names.items():
            if name not in graph.node_by_name:
                raise PyramidLevelError(f"pyramid layer {name!r} (for {key}) is not a layer of model {model.name!r}")
            stride = strides.get(name)
            if stride != 2 ** int(key[1:]):
                raise PyramidLevelError(
                    f"pyramid layer {name!r} has output stride {stride} (shape {graph.node_by_name[name].out_shape}) "
                    f"but {key} needs stride {2 ** int(key[1:])}")
        found.update(layer_names)
    missing = [k for k in wanted if k not in found]
    if missing:
        detail = ", ".join(f"{k} (stride {2 ** int(k[1:])}): {found[k]!r}" for k in have) or "none"
        raise PyramidLevelError(
            f"model {model.name!r} at input {graph.nodes[0].out_shape} has no pyramid level {missing}; the levels "
            f"it has are {detail}. Use a backbone that downsamples to stride {2 ** max(levels)}, a larger "
            "input, or other levels (min_level/max_level)")
    return {k: found[k] for k in wanted}


def pyramid_trunk(model: keras.Model, image_shape: Sequence[int], levels: Sequence[int] = DEFAULT_LEVELS,
                  layer_names: Mapping[str, str] | None = None) -> keras.Model:
    """A functional model ``image -> {"P3": ..., ...}`` made of ``model``'s own layers (weights shared) at ``image_shape``.

    The levels are found on ``model`` as it is (:func:`find_levels`); the trunk then takes images of
    ``image_shape`` (height, width, channels), whose height and width must divide by the largest stride.
    """
    graph = ChannelGraph.from_model(model)
    chosen = find_levels(model, levels, layer_names, graph=graph)
    in_shape = graph.nodes[0].out_shape
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or image_shape[-1] != in_shape[-1]:
        raise PyramidLevelError(f"image_shape {image_shape} does not fit model {model.name!r}, which takes "
                                f"{in_shape[-1]}-channel images (height, width, {in_shape[-1]})")
    top = 2 ** max(levels)
    if image_shape[0] % top or image_shape[1] % top:
        raise PyramidLevelError(f"image_shape {image_shape}: height and width must divide by {top} (the stride of "
                                f"{level_name(max(levels))})")
    needed: set[str] = set()
    stack = list(chosen.values())
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(graph.node_by_name[name].inputs)
    values: dict[int, Any] = {}
    image = keras.Input(shape=image_shape, name="images", dtype=graph.nodes[0].layer.output.dtype)
    for node in graph.nodes:
        if node.name not in needed:
            continue
        if node.rule is None:  # the model input
            values[id(node.call.outputs[0])] = image
            continue
        args, kwargs = node.call.arguments.fill_in(values)
        values[id(node.call.outputs[0])] = node.layer(*args, **kwargs)
    outputs = {key: values[id(graph.node_by_name[name].call.outputs[0])] for key, name in chosen.items()}
    return keras.Model(image, outputs, name=f"{model.name}_pyramid")


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
