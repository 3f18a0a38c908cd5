"""The command line of ``python -m cafe_tf.check``: is my model supported, and how will it be pruned?

    python -m cafe_tf.check --model my_model.keras
    python -m cafe_tf.check --model keras.applications.MobileNetV3Small --input_size 96 --num_classes 10
    python -m cafe_tf.check --model my_model.keras --boundaries head_conv,se_reduce --json check.json

``--model`` takes what ``config.model.name`` takes (a registry name, a ``.keras`` path,
``keras.applications.<Name>``). Prints the coupled channel groups (which are prunable, and why the
others are not), the fixed-width boundaries, and the MACs of a random sub-network counted two ways.
Exit code 0 when the model is supported and both counts agree, 1 when it is not supported (the
reason and the ways out are printed), 2 on a bad flag.
"""

from __future__ import annotations

from absl import flags



def define_flags() -> None:
    """Defines the program's flags (once, before the frame parses them)."""
    flags.DEFINE_string("model", None, "a registry name, a path ending in .keras, or keras.applications.<Name>")
    flags.DEFINE_integer("input_size", None, "square input side in pixels (default: the model's own; "
                         "applications: 224)")
    flags.DEFINE_integer("input_channels", 3, "input channels of an application (1 for grey images)")
    flags.DEFINE_integer("num_classes", None, "classes (default: the model's own; applications: 1000)")
    flags.DEFINE_float("width_mult", 1.0, "width multiplier (an application's alpha)")
    flags.DEFINE_list("boundaries", [], "layer names to keep whole (fixed-width boundaries)")
    flags.DEFINE_string("json", None, "also write the report to this JSON file")


def main() -> None:
    """Builds the model, checks it, prints the report; a model that is not supported fails (exit 1)."""
    from cafe_tf import io
    from cafe_tf.check import check
    from cafe_tf.errors import UsageError
    from cafe_tf.models import source as source_lib

    f = flags.FLAGS
    if not f.model:
        raise UsageError("--model is required: a registry name, a .keras path or keras.applications.<Name>")
    kind = _kind(f.model)
    shape = (f.input_size, f.input_size, f.input_channels) if f.input_size else None
    if kind == "application":
        shape, classes = shape or (224, 224, f.input_channels), f.num_classes or 1000
    else:
        classes = f.num_classes
    try:
        model = source_lib.resolve(f.model, shape, classes, f.width_mult).build()
    except source_lib.ModelSourceError as e:
        raise UsageError(str(e)) from None
    report = check(model, boundaries=f.boundaries)
    print(report.summary())
    if f.json:
        io.write_json(f.json, report.to_dict())
    if not report.supported:
        raise ValueError(f"model {report.model!r} is not supported (see above)")
    if not report.consistent:
        raise ValueError("the analytic MACs of the random sub-network disagree with its per-layer count")


def _kind(name: str) -> str:
    from cafe_tf.errors import UsageError
    from cafe_tf.models import source as source_lib

    try:
        return source_lib.kind_of(name)
    except source_lib.ModelSourceError as e:
        raise UsageError(str(e)) from None


def run() -> None:
    """Parses the flags and runs :func:`main` in the shared program frame (``python -m cafe_tf.check``)."""
    from cafe_tf import programs

    define_flags()
    programs.run_tool(main)


if __name__ == "__main__":
    run()
