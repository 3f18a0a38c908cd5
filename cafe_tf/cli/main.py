"""The ``cafe-tf`` command: ``cafe-tf PROGRAM [FLAGS]`` runs one of the programs below.

``cafe-tf pipeline --config configs/fashion_mnist_resnet20.py --workdir runs/demo`` runs what
``python -m cafe_tf.pipeline`` runs; ``cafe-tf PROGRAM --help`` prints that program's flags.
"""

from __future__ import annotations

import runpy
import sys

# name -> (module run as __main__, one line for the listing). The one table of programs.
PROGRAMS: dict[str, tuple[str, str]] = {
    "pipeline": ("cafe_tf.pipeline", "supernet -> search -> retrain -> TFLite -> verify -> benchmark -> report"),
    "train_supernet": ("cafe_tf.train_supernet", "min-min training of the CafeNet supernet"),
    "search": ("cafe_tf.search", "evolutionary width search under MACs / params / latency budgets"),
    "train": ("cafe_tf.cli.train", "standard training of a model, or of a searched widths.json"),
    "prune": ("cafe_tf.cli.prune", "filter pruning (Dagger, L1, uniform) to a MACs target, then fine-tuning"),
    "bundle": ("cafe_tf.bundle", "one searched, retrained, exported and timed network per MACs budget"),
    "compare": ("cafe_tf.compare", "CafeNet against baselines at equal MACs, paired seeds"),
    "study": ("cafe_tf.study", "a preregistered study in resumable, committed cells: run, status, summary"),
    "train_detector": ("cafe_tf.train_detector", "RetinaNet on a built-in, searched, pruned or user backbone"),
    "export_detector": ("cafe_tf.export_detector", "a trained detector -> .tflite, parity and mAP"),
    "flops": ("cafe_tf.cli.flops", "MACs and params of a model or a widths.json sub-network"),
    "check": ("cafe_tf.cli.check", "is a model supported: channel groups, boundaries, MACs cross-check"),
    "export": ("deploy.export_main", ".keras (or widths.json + checkpoint) -> .tflite"),
    "verify": ("deploy.verify_main", "LiteRT against Keras: parity and accuracy"),
    "edgetpu": ("deploy.edgetpu_main", "Edge TPU readiness (and edgetpu_compiler when installed)"),
    "latency_table": ("deploy.latency_table_main", "per-layer latency table for max_latency_ms budgets"),
    "benchmark": ("deploy.benchmark", "latency on the host (LiteRT), Android over adb, or Coral"),
}


def usage() -> str:
    """The listing ``cafe-tf --help`` prints."""
    width = max(map(len, PROGRAMS))
    rows = "\n".join(f"  {name:<{width}}  {line}" for name, (_, line) in PROGRAMS.items())
    return (f"usage: cafe-tf PROGRAM [FLAGS]   (cafe-tf PROGRAM --help for its flags)\n\n"
            f"{__doc__.splitlines()[0]}\n\nprograms:\n{rows}\n")


def main(argv: list[str] | None = None) -> None:
    """Runs ``argv[1]``'s program with the rest of ``argv`` as its flags; exits with its code."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        sys.exit(0)
    name = argv[1].replace("-", "_")
    if name not in PROGRAMS:
        sys.stderr.write(f"cafe-tf: usage error: unknown program {argv[1]!r}; valid programs: "
                         f"{', '.join(PROGRAMS)}\n")
        sys.exit(2)
    module = PROGRAMS[name][0]
    from cafe_tf import stages

    stages.filter_own_stderr()  # before the program imports TensorFlow
    sys.argv = [module, *argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
