"""Turn a channel selection into a standalone Keras model with the selected weights copied in.

Works on any functional model the channel graph understands (our builders' or a user's ``.keras``):
each layer is rebuilt from its config at the new channel counts and gets its weights cut to the
selection, both by its rule in ``cafe_tf.layers`` (the same slicing the supernet runs).
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

from cafe_tf import layers as rules
from cafe_tf.graph import ChannelGraph, UnsupportedModelError


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
    widths = np.array([len(selection[g.id]) for g in graph.groups])
    values: dict[int, keras.KerasTensor] = {}  # id(the original model's KerasTensor) -> new tensor
    new_layers: dict[str, keras.layers.Layer] = {}
    for node in graph.nodes:
        op = node.layer
        out_id = id(node.call.outputs[0])
        if node.rule is None:  # the model input
            values[out_id] = keras.Input(shape=node.out_shape, name=node.name, dtype=op.output.dtype)
            continue
        args, kwargs = node.call.arguments.fill_in(values)
        if isinstance(op, keras.layers.Layer):
            in_channels = node.in_space.channels(widths) if node.in_space is not None else 0
            config = node.rule.rebuild_config(op.get_config(), in_channels, node.out_space.channels(widths))
            try:
                new = type(op).from_config(config)
            except Exception as e:
                raise UnsupportedModelError(
                    f"layer {node.name!r} ({type(op).__name__}) cannot be rebuilt from its config ({e}); "
                    "give the class a get_config() that from_config() accepts"
                ) from e
            new_layers[node.name] = new
        else:  # a Keras operation (``x + 3.0``): stateless, called again on the new tensors
            new = op
        values[out_id] = new(*args, **kwargs)
    graph_model = graph.model
    outputs = [values[id(t)] for t in graph_model.outputs]
    slim = keras.Model(
        values[id(graph.nodes[0].call.outputs[0])], outputs[0] if len(outputs) == 1 else outputs,
        name=name or model.name,
    )
    if copy_weights:
        for node in graph.nodes:
            if node.name in new_layers and node.layer.weights:
                new_layers[node.name].set_weights(sliced_weights(graph, node, selection))
    return slim


def sliced_weights(graph: ChannelGraph, node, selection: Mapping[int, np.ndarray]) -> list[np.ndarray]:
    """The layer's weights restricted to the selected input and output channels (its rule's slicing)."""
    weights = [np.asarray(w) for w in node.layer.get_weights()]
    in_index = graph.space_indices(node.in_space, selection) if node.in_space is not None else None
    out_index = graph.space_indices(node.out_space, selection)
    return node.rule.slice_weights(node.layer, weights, in_index, out_index, rules.NUMPY)
