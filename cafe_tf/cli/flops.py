"""The command line of ``python -m cafe_tf.flops``: MACs/params of a model or a searched sub-network.

    python -m cafe_tf.flops --model resnet56
    python -m cafe_tf.flops --model mobilenet_v2 --input_size 160 --width_mult 0.75
    python -m cafe_tf.flops --model my_model.keras
    python -m cafe_tf.flops --model keras.applications.MobileNetV2 --input_size 96 --width_mult 0.35
    python -m cafe_tf.flops --model resnet20 --widths runs/demo/widths.json

``--model`` takes what ``config.model.name`` takes (cafe_tf.models.source). A ``.keras`` file is
counted at its own input shape; an application at 224x224x3 and 1000 classes unless --input_size /
--num_classes say otherwise. With --widths the model is rebuilt from the file's recorded source (a
``.keras`` file that changed since is refused, naming both hashes). Prints one JSON object; exit
code 2 on a bad value, with a one-line message naming it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import flags


# Input shape and classes of an application counted without --input_size / --num_classes (ImageNet).
APPLICATION_DEFAULT = ((224, 224, 3), 1000)


def define_flags() -> None:
    """Defines the program's flags (once, before ``app.run``)."""
    from cafe_tf import models

    flags.DEFINE_string("model", None, f"Model: a registry name {models.names()}, a path ending in .keras, or "
                        "keras.applications.<Name>.", required=True)
    flags.DEFINE_integer("input_size", None, "Square input side in pixels (default: the model's own).")
    flags.DEFINE_float("width_mult", 1.0, "Width multiplier of the full network (an application's alpha).")
    flags.DEFINE_integer("num_classes", None, "Number of classes (default: the model's own).")
    flags.DEFINE_string("widths", None, "A widths.json file: count that sub-network instead of the full one.")


def _same_model(given: str, recorded: str) -> bool:
    if given.endswith(".keras"):
        return os.path.abspath(os.path.expanduser(given)) == os.path.abspath(recorded)
    return given == recorded


def report(model_name: str, input_size: int | None = None, width_mult: float = 1.0,
           num_classes: int | None = None, widths_path: str | None = None) -> dict[str, Any]:
    """MACs/params of a model (or of the sub-network in ``widths_path``) as a JSON-able dict."""
    from cafe_tf import space as space_lib
    from cafe_tf.flops import CostModel
    from cafe_tf.graph import ChannelGraph
    from cafe_tf.models import source as source_lib

    kind = source_lib.kind_of(model_name)
    if input_size is not None and input_size < 8:
        raise ValueError(f"--input_size must be >= 8, got {input_size}")
    record = None
    if widths_path:
        record = space_lib.read_widths(widths_path)
        if not _same_model(model_name, record["model"]["name"]):
            raise ValueError(f"--widths {widths_path!r} is for model {record['model']['name']!r}, not {model_name!r}")
        source = source_lib.from_record(record["model_source"])
    else:
        shape = None
        if kind == "keras_file":
            if input_size is not None:
                raise ValueError(f"--input_size={input_size} does not apply to the model file {model_name!r}, which "
                                 "has its own input shape; leave it out")
        elif kind == "application":
            shape, classes = APPLICATION_DEFAULT
            num_classes = num_classes or classes
        else:
            from cafe_tf import models

            shape, _ = models.DEFAULT_INPUT[model_name]
        if input_size and shape:
            shape = (input_size, input_size, shape[2])
        source = source_lib.resolve(model_name, shape, num_classes, width_mult)
    model = source.build()
    cost = CostModel(ChannelGraph.from_model(model))
    widths = None
    if record is not None:
        widths = cost.widths_of(space_lib.selection_from_record(cost.graph, record))
    macs = cost.macs(widths)
    return {
        "model": source.spec,
        "input_shape": list(source.input_shape),
        "width_mult": source.width_mult,
        "macs": macs,
        "flops": 2 * macs,
        "params": cost.params(widths),
        "full_macs": cost.macs(),
        "full_params": cost.params(),
        "source": source.record(),
    }


def main() -> None:
    """Prints one JSON object with the MACs and params of a model or of a searched sub-network."""
    from cafe_tf.errors import UsageError
    from cafe_tf.io import ArtifactError

    f = flags.FLAGS
    try:
        out = report(f.model, f.input_size, f.width_mult, f.num_classes, f.widths)
    except (ValueError, ArtifactError) as e:  # a model, size or file the flags name that cannot be counted
        raise UsageError(str(e)) from None
    print(json.dumps(out))


def run() -> None:
    """Parses the flags and runs :func:`main` in the shared program frame (``python -m cafe_tf.flops``)."""
    from cafe_tf import programs

    define_flags()
    programs.run_tool(main)


if __name__ == "__main__":
    run()
