"""Turn a channel selection into a standalone Keras model with the selected weights copied in.

Works on any functional model the channel graph understands (our builders' or a user's ``.keras``):
each Conv2D/Dense gets the selected number of filters/units, every layer reading those channels
gets the matching input slice, BatchNormalization keeps the selected gamma/beta/mean/variance.
Layer names, order and every other setting are kept, so the result saves and reloads as ``.keras``
and converts to TFLite like any plain model.

Example::

    graph = ChannelGraph.from_model(model)
    slim = extract(model, {g.id: np.arange(g.size // 2) for g in graph.prunable_groups})
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

from cafe_tf.graph import ChannelGraph


def extract(
    model: keras.Model,
    channels: Mapping[int, np.ndarray],
    graph: ChannelGraph | None = None,
    name: str | None = None,
    copy_weights: bool = True,
) -> keras.Model:
    """Builds the sub-network of ``model`` keeping ``channels`` ({group id: indices}) of each group.

    Groups not named keep all their channels. ``copy_weights=False`` leaves fresh initial weights
    (to retrain a searched architecture from scratch).

    Raises:
      ValueError: an index out of range or duplicated, an empty or non-prunable group changed.
    """
    graph = graph or ChannelGraph.from_model(model)
    selection = graph.validate_selection(dict(channels))
    tensors: dict[str, keras.KerasTensor] = {}
    new_layers: dict[str, keras.layers.Layer] = {}
    for node in graph.nodes:
        layer = node.layer
        if node.kind == "input":
            tensors[node.name] = keras.Input(shape=node.out_shape, name=node.name, dtype=layer.output.dtype)
            continue
        config = layer.get_config()
        if node.kind == "conv":
            config["filters"] = int(len(selection[node.out_space.segments[0][0]]))
        elif node.kind == "dense":
            config["units"] = int(len(selection[node.out_space.segments[0][0]]))
        new = type(layer).from_config(config)
        args = [tensors[i] for i in node.inputs]
        tensors[node.name] = new(args if node.kind in ("merge", "concat") else args[0])
        new_layers[node.name] = new
    outputs = [tensors[t._keras_history.operation.name] for t in model.outputs]
    slim = keras.Model(
        tensors[graph.nodes[0].name], outputs[0] if len(outputs) == 1 else outputs, name=name or model.name
    )
    if copy_weights:
        for node in graph.nodes:
            if node.kind == "input" or not node.layer.weights:
                continue
            new_layers[node.name].set_weights(_sliced_weights(graph, node, selection))
    return slim


def _sliced_weights(graph: ChannelGraph, node, selection: Mapping[int, np.ndarray]) -> list[np.ndarray]:
    """The layer's weights restricted to the selected input and output channels."""
    weights = [np.asarray(w) for w in node.layer.get_weights()]
    if node.kind == "conv":
        cin = graph.space_indices(node.in_space, selection)
        cout = selection[node.out_space.segments[0][0]]
        kernel = weights[0][:, :, cin, :][..., cout]
        return [kernel] + [w[cout] for w in weights[1:]]
    if node.kind == "dense":
        cin = graph.space_indices(node.in_space, selection)
        cout = selection[node.out_space.segments[0][0]]
        return [weights[0][cin][:, cout]] + [w[cout] for w in weights[1:]]
    if node.kind == "depthwise":
        idx = selection[node.out_space.segments[0][0]]
        return [weights[0][:, :, idx, :]] + [w[idx] for w in weights[1:]]
    if node.kind == "bn":
        idx = graph.space_indices(node.out_space, selection)
        return [w[idx] for w in weights]
    return weights
