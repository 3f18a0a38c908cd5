r"""Export a plain Keras 3 image classifier, or a searched network's checkpoint, to ``.tflite``.

    python -m deploy.export --model slim.keras --quant int8 --out slim_int8.tflite \
        [--dataset fashion_mnist --data_dir DIR] [--io_type {float32,int8,uint8}] [--batch_size 1]
    python -m deploy.export --widths W/widths.json --checkpoint W/retrain --quant int8 --out slim_int8.tflite

Quantization (--quant): fp32, fp16 (float16 weights), dynamic (int8 weights), int8 (full integer,
calibrated on --num_calibration training images of --dataset) or qat (quantization-aware
fine-tuning, then int8). --widths with --checkpoint rebuilds the network `cafe-tf train
--widths` trained and restores its weights (the workdir, its checkpoints/ folder or one prefix).
How the conversion works: deploy/export.py.

Exit codes: 0 written, 1 the export failed (one line says why), 2 usage error.
"""

from __future__ import annotations

import os

from absl import flags

from cafe_tf import programs
from cafe_tf.errors import UsageError
from cafe_tf.space import read_widths
from deploy import export


def define_flags() -> None:
    """The program's flags."""
    flags.DEFINE_string("model", None, "the Keras 3 model to export (.keras file); or give --widths and --checkpoint")
    flags.DEFINE_string("widths", None, "instead of --model: the widths.json of a searched network (with --checkpoint)")
    flags.DEFINE_string("checkpoint", None, "with --widths: the `cafe-tf train --widths` workdir, its "
                        "checkpoints/ folder (latest is used) or one checkpoint prefix (.../checkpoints/ckpt-120)")
    flags.DEFINE_enum("quant", None, list(export.QUANT_MODES), "quantization: fp32, fp16 (float16 weights), dynamic "
                      "(int8 weights), int8 (full integer, calibrated), qat (quantization-aware fine-tune + int8)")
    flags.DEFINE_string("out", None, "output .tflite path (written atomically)")
    flags.DEFINE_string("dataset", "fashion_mnist", "dataset for calibration / QAT and the normalisation recorded "
                        "in the metadata (a cafe_tf.data name)")
    flags.DEFINE_string("data_dir", None, "tfds data_dir (default $CAFE_TF_DATA_DIR or ~/tensorflow_datasets)")
    flags.DEFINE_enum("io_type", "float32", list(export.IO_TYPES), "input/output type of int8/qat models "
                      "(int8 or uint8 for the Edge TPU)")
    flags.DEFINE_integer("batch_size", 1, "static batch of the exported signature; 0 keeps it dynamic "
                         "(the Edge TPU needs 1)")
    flags.DEFINE_integer("num_calibration", 200, "training images used to calibrate int8 / fine-tune QAT")
    flags.DEFINE_integer("qat_steps", 100, "QAT fine-tuning steps")
    flags.DEFINE_integer("qat_batch_size", 32, "QAT fine-tuning batch size")
    flags.DEFINE_float("qat_learning_rate", 1e-5, "QAT fine-tuning learning rate (Adam)")
    flags.DEFINE_enum("input_scaling", None, ["mean_std", "unit", "raw", "model"],
                      "how the model's input is scaled (config.model.input_scaling): calibration images and the "
                      "recorded normalisation follow it (default: what --widths records, else mean_std)")
    flags.DEFINE_list("mean", None, "per-channel input mean to record (overrides the dataset's), e.g. 0.286")
    flags.DEFINE_list("std", None, "per-channel input std to record (overrides the dataset's), e.g. 0.353")


def _normalization(mean: list[str] | None, std: list[str] | None) -> dict | None:
    if not (mean or std):
        return None
    if not (mean and std) or len(mean) != len(std):
        raise UsageError(f"--mean and --std must be given together with one value per channel; got {mean} and {std}")
    try:
        return {"scale": 1.0 / 255.0, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    except ValueError:
        raise UsageError(f"--mean/--std must be numbers, got {mean} and {std}") from None


def main() -> None:
    """Checks the flags, loads or rebuilds the model, exports it and prints what was written."""
    f = flags.FLAGS
    if f.model and (f.widths or f.checkpoint):
        given = "--widths" if f.widths else "--checkpoint"
        raise UsageError(f"--model and {given} both name the model to export; pass either --model FILE.keras or "
                         "--widths W/widths.json with --checkpoint W/<workdir>, not both")
    if f.widths or f.checkpoint:
        if not (f.widths and f.checkpoint):
            raise UsageError("--widths and --checkpoint go together: the widths.json of the searched network and the "
                             "checkpoint (workdir, checkpoints folder or prefix) `cafe-tf train --widths` wrote")
        widths_path = programs.require_file(f.widths, "widths")
        checkpoint = os.path.expanduser(f.checkpoint)
        if not export.checkpoint_exists(checkpoint):
            raise UsageError(f"--checkpoint={f.checkpoint!r} does not exist (a `cafe-tf train` workdir, its "
                             "checkpoints folder or a checkpoint prefix such as W/retrain/checkpoints/ckpt-120)")
        source = None
    else:
        model_path = programs.require_file(f.model, "model")
        source = os.path.basename(model_path)
        recorded = "mean_std"
    if not f.out:
        raise UsageError("--out is required: the .tflite to write")
    if f.quant is None:
        raise UsageError(f"--quant is required: one of {list(export.QUANT_MODES)}")
    if f.batch_size < 0:
        raise UsageError(f"--batch_size must be >= 1, or 0 for a dynamic batch; got {f.batch_size}")
    if f.num_calibration < 1:
        raise UsageError(f"--num_calibration must be >= 1, got {f.num_calibration}")
    normalization = _normalization(f.mean, f.std)
    dataset = f.dataset or None
    if dataset is not None:
        from cafe_tf import data

        data.check_name(dataset)  # a built-in name, folder:PATH or tfds:NAME (a usage error otherwise)
    if source is None:
        prefix = export.resolve_checkpoint(checkpoint)
        model = export.load_widths_checkpoint(widths_path, prefix)
        source = f"{os.path.basename(widths_path)} + {os.path.basename(prefix)}"
        recorded = (read_widths(widths_path).get("model_source") or {}).get("input_scaling", "mean_std")
        if f.input_scaling and f.input_scaling != recorded:
            raise UsageError(f"--input_scaling={f.input_scaling!r} but {widths_path} records {recorded!r}, the "
                             "scaling the network was trained with; drop the flag or pass the recorded value")
        print(f"export: rebuilt {model.name!r} from {widths_path} with the weights of {prefix}")
    else:
        model = export.load_keras_model(model_path)
    if dataset is not None and f.quant in ("int8", "qat"):
        print(f"export: calibrating on {f.num_calibration} images of {dataset!r} (train split)")
    result = export.export_tflite(
        model,
        f.quant,
        f.out,
        representative_data=dataset,
        io_type=f.io_type,
        batch_size=f.batch_size or None,
        normalization=normalization,
        num_calibration=f.num_calibration,
        data_dir=f.data_dir,
        qat_steps=f.qat_steps,
        qat_batch_size=f.qat_batch_size,
        qat_learning_rate=f.qat_learning_rate,
        source=source,
        input_scaling=f.input_scaling or (recorded if f.widths else "mean_std"),
    )
    ops = ", ".join(f"{op} v{'/'.join(map(str, v))}" for op, v in result.op_versions.items())
    inputs = result.metadata["inputs"][0]
    print(
        f"export: wrote {result.path} ({result.size_bytes / 1024:.1f} KiB, {result.quant}, io {result.io_type}, "
        f"input {inputs['name']} {inputs['shape']} {inputs['dtype']})\nexport: ops {ops}\n"
        f"export: metadata entry 'cafe_tf.metadata' records the normalisation {result.metadata['normalization']}"
    )
    if result.qat_losses:
        print(f"export: QAT loss {result.qat_losses['first_loss']:.4f} -> {result.qat_losses['last_loss']:.4f}")


if __name__ == "__main__":
    define_flags()
    programs.run_tool(main)
