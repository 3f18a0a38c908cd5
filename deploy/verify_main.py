r"""Parity check: run a ``.tflite`` with LiteRT beside its Keras model; writes verify.json.

    python -m deploy.verify --model slim.keras --tflite slim_int8.tflite --out verify.json \
        [--dataset fashion_mnist --data_dir DIR --split test --num_batches 10 --batch_size 32]

fp32 passes at max |logit difference| <= --atol; every quantized model at top-1 agreement >=
--min_agreement, with both accuracies and the drop reported (deploy/verify.py).

Exit codes: 0 the check passed, 1 it failed (after writing the report) or a model cannot be read,
2 usage error.
"""

from __future__ import annotations

import os

from absl import flags

from cafe_tf import programs
from cafe_tf.errors import UsageError
from deploy import verify
from deploy.errors import DeployError


def define_flags() -> None:
    """The program's flags."""
    flags.DEFINE_string("model", None, "the Keras 3 model (.keras) the .tflite was exported from")
    flags.DEFINE_string("tflite", None, "the .tflite to check")
    flags.DEFINE_string("out", None, "where to write verify.json")
    flags.DEFINE_string("dataset", "fashion_mnist", "evaluation dataset (a cafe_tf.data name)")
    flags.DEFINE_string("data_dir", None, "tfds data_dir (default $CAFE_TF_DATA_DIR or ~/tensorflow_datasets)")
    flags.DEFINE_string("split", "test", "evaluation split")
    flags.DEFINE_integer("num_batches", 10, "evaluation batches")
    flags.DEFINE_integer("batch_size", 32, "images per batch")
    flags.DEFINE_enum("input_scaling", None, ["mean_std", "unit", "raw", "model"],
                      "how the evaluation images are scaled (config.model.input_scaling; default: what the .tflite's "
                      "metadata records, else mean_std)")
    flags.DEFINE_bool("report_only", False, "write the report and exit 0 even when the parity criterion fails "
                      "(the pipeline's quantized formats, whose accuracy drop decides whether they are recommended)")
    flags.DEFINE_float("atol", verify.FP32_ATOL, "fp32: largest allowed |logit difference|")
    flags.DEFINE_float("min_agreement", verify.MIN_AGREEMENT, "quantized models: smallest allowed top-1 agreement")


def main() -> None:
    """Checks the flags, compares the two models on the evaluation images and writes the report."""
    f = flags.FLAGS
    model_path = programs.require_file(f.model, "model")
    tflite_path = programs.require_file(f.tflite, "tflite")
    if not f.out:
        raise UsageError("--out is required: where to write verify.json")
    if f.num_batches < 1 or f.batch_size < 1:
        raise UsageError(f"--num_batches and --batch_size must be >= 1, got {f.num_batches} and {f.batch_size}")
    # After the flags are checked: these import TensorFlow, which takes seconds.
    from deploy.export import load_keras_model
    from deploy.representative import dataset_images
    from deploy.tflite_model import read_metadata

    model = load_keras_model(model_path)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    recorded = ((read_metadata(tflite_path) or {}).get("normalization") or {}).get("input_scaling")
    images, labels, normalization = dataset_images(
        f.dataset, shape, f.num_batches * f.batch_size, split=f.split, data_dir=f.data_dir, seed=None,
        input_scaling=f.input_scaling or recorded or "mean_std",
    )
    report = verify.verify(model, tflite_path, images, labels, batch_size=f.batch_size, atol=f.atol,
                           min_agreement=f.min_agreement)
    report.update(model=os.path.abspath(model_path), dataset=f.dataset, split=f.split, normalization=normalization)
    verify.write_report(f.out, report)
    accuracy = ""
    if report["keras_accuracy"] is not None:
        accuracy = (f", accuracy Keras {100 * report['keras_accuracy']:.2f}% vs TFLite {100 * report['tflite_accuracy']:.2f}% "
                    f"(drop {report['accuracy_drop_pt']:+.2f} pt)")
    verdict = "PASS" if report["passed"] else "FAIL"
    print(f"verify: {verdict} ({report['criterion']}): {report['quant']} on {report['num_images']} images, max |diff| "
          f"{report['max_abs_diff']:.3g}, top-1 agreement {100 * report['top1_agreement']:.2f}%{accuracy}\n"
          f"verify: wrote {f.out}")
    if not report["passed"] and not f.report_only:
        raise DeployError(f"parity check failed: {report['criterion']} does not hold (report in {f.out})")


if __name__ == "__main__":
    define_flags()
    programs.run_tool(main)
