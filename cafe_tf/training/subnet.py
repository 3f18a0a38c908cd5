"""The searched network as a plain Keras model, for retraining from scratch or fine-tuning.

``build_subnet("W/widths.json")`` rebuilds the full model the record names (``cafe_tf.models``)
and cuts out the searched channels with fresh initial weights: the paper's protocol, retraining the
searched widths from scratch. With ``init_from_supernet="W/supernet.keras"`` the channels are cut
from the trained supernet instead, weights included (the fine-tuning option). Either way the
result is a standalone functional model of standard layers, which the standard training loop,
``.keras`` saving and TFLite export take like any other.

The programs' flags (``cafe-tf train --widths=... [--init_from_supernet=...]``) call
:func:`subnet_factory`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import keras

from cafe_tf import surgery
from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph
from cafe_tf.models import source as source_lib
from cafe_tf.space import read_widths, selection_from_record


def build_subnet(widths_path: str, init_from_supernet: str | None = None) -> keras.Model:
    """The network of ``widths_path`` (a widths.json): fresh weights, or the supernet's with ``init_from_supernet``.

    Raises:
      io.ArtifactError / ValueError: a missing or invalid file, a supernet of another model, or a
        widths.json whose MACs no longer match its channels (naming the file and the values).
    """
    record = read_widths(widths_path)
    info = record["model"]
    shape = tuple(int(d) for d in info["input_shape"])
    if init_from_supernet:
        path = os.path.expanduser(init_from_supernet)
        if not os.path.isfile(path):
            raise ValueError(f"--init_from_supernet={init_from_supernet!r} does not exist (a supernet.keras from "
                             "cafe_tf.train_supernet)")
        full = keras.models.load_model(path, compile=False)
        got = tuple(int(d) for d in full.inputs[0].shape[1:])
        classes = int(full.outputs[0].shape[-1])
        if got != shape or classes != info["num_classes"]:
            raise ValueError(
                f"supernet {path!r} takes inputs {got} and predicts {classes} classes, but {widths_path!r} was "
                f"searched on {info['name']!r} with inputs {shape} and {info['num_classes']} classes")
    else:  # the model widths.json records (a changed .keras file is refused, naming both hashes)
        full = source_lib.from_record(record["model_source"]).build()
    graph = ChannelGraph.from_model(full)
    selection = selection_from_record(graph, record)
    macs = CostModel(graph).macs(CostModel(graph).widths_of(selection))
    if macs != record["macs"]:
        raise ValueError(f"{widths_path!r} says {record['macs']:,} MACs but its channels count {macs:,} on "
                         f"{info['name']!r}; the file is stale or edited, search again")
    return surgery.extract(full, selection, graph=graph, copy_weights=bool(init_from_supernet),
                           name=f"{full.name}_searched")


def subnet_factory(widths_path: str, init_from_supernet: str | None = None,
                   input_scaling: str | None = None) -> Callable[[], keras.Model]:
    """A ``model_fn`` for ``cafe_tf.training.standard.run`` that builds :func:`build_subnet` (inside the strategy scope).

    The files are checked at once, so a bad path, a changed ``.keras`` source or an ``input_scaling``
    (``config.model.input_scaling``) other than the recorded one fails before any data is loaded.
    """
    source_lib.check_record(read_widths(widths_path)["model_source"], input_scaling)
    if init_from_supernet and not os.path.isfile(os.path.expanduser(init_from_supernet)):
        raise ValueError(f"--init_from_supernet={init_from_supernet!r} does not exist")
    return lambda: build_subnet(widths_path, init_from_supernet)
