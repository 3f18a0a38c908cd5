r"""Export a trained detector to .tflite (fp32 or int8), check parity with Keras and score both with COCO mAP.

  python -m cafe_tf.export_detector --config configs/detect_offline_mobilenet_v2.py --workdir runs/det_fm
  python -m cafe_tf.export_detector --config configs/detect_offline_mobilenet_v2.py --workdir runs/det_fm --quant fp32
  python -m cafe_tf.export_detector --config configs/detect_offline_mobilenet_v2.py --workdir runs/det_fm --io_type int8
  python -m deploy.benchmark --target host --model runs/det_fm/detector_int8.tflite --out runs/det_fm/bench.json

Reads <workdir>/detector.keras (from cafe_tf.train_detector with the same --config). The .tflite
holds the detector up to its heads: two outputs, box_deltas [1, anchors, 4] and class_scores
[1, anchors, classes] (each int8 output with its own scale); decoding against the anchors and NMS
are the app's step (cafe_tf/detection/export.py says how, and `decode` does it in Python). int8 is
calibrated on --num_calibration training images of the config's dataset, normalized as in
training, with float32 input and outputs, or integer ones with --io_type int8 / uint8 (what the
Edge TPU needs).

Writes into --workdir: detector_<quant>.tflite (detector_int8_<io_type>.tflite for integer I/O) and
export_<same>.json: the per-anchor parity figures against Keras with their tolerances, COCO mAP of
Keras and of the .tflite on the config's eval split (capped by config.data.max_eval_examples) and,
for int8, the Edge TPU readiness summary of deploy/edgetpu.py (`python -m deploy.edgetpu` gives
the full report, and runs edgetpu_compiler when it is installed).

Exit codes: 0 done, 1 the job failed (parity outside its tolerances included), 2 usage or config error.
"""

import os

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags

from cafe_tf import programs

_CONFIG, _WORKDIR = programs.define_config_flags()
_QUANT = flags.DEFINE_enum("quant", "int8", ["fp32", "int8"], "TFLite quantization of the detector")
_NUM_CALIBRATION = flags.DEFINE_integer("num_calibration", 100, "int8: training images that calibrate the ranges")
_PARITY_IMAGES = flags.DEFINE_integer("parity_images", 8, "eval images on which the .tflite is compared with Keras")
_IO_TYPE = flags.DEFINE_enum("io_type", "float32", ["float32", "int8", "uint8"],
                             "input / output type of the .tflite (int8 / uint8 need --quant int8; the Edge TPU needs them)")


def main(config, workdir: str) -> None:
    import json

    import numpy as np

    from cafe_tf import io
    from cafe_tf.detection import data as det_data
    from cafe_tf.detection import evaluate as det_eval
    from cafe_tf.detection import export as det_export
    from cafe_tf.detection import train as det_train
    from deploy import edgetpu
    from deploy.errors import DeployError, UsageError

    det_train.validate(config)
    quant, io_type = _QUANT.value, _IO_TYPE.value
    if io_type != "float32" and quant != "int8":
        raise UsageError(f"--io_type {io_type} needs --quant int8; {quant} keeps float32 input and outputs")
    path = programs.require_file(os.path.join(workdir, "detector.keras"), "workdir")
    detector = det_export.load_detector(path)
    channels = int(detector.inputs[0].shape[-1])
    data = config.data
    ds, info = det_data.load(data.name, info_split := det_data.SPLITS[data.name][0], data.data_dir or None, data.download)
    calibration = det_data.detection_pipeline(ds, info, det_train.image_size(config), data.batch_size, training=False,
                                              channels=channels, max_boxes=config.detector.max_boxes,
                                              max_examples=_NUM_CALIBRATION.value)
    images = np.concatenate([x for x, _ in calibration.as_numpy_iterator()])
    stem = f"{quant}_{io_type}" if io_type != "float32" else quant
    out = os.path.join(workdir, f"detector_{stem}.tflite")
    result = det_export.export_detector(detector, out, quant, calibration=images if quant == "int8" else None,
                                        normalization={"mean": list(info.mean), "std": list(info.std)},
                                        label_names=list(info.label_names), num_calibration=_NUM_CALIBRATION.value,
                                        io_type=io_type)
    eval_images = np.concatenate([x for x, _ in det_train.eval_batches(config, channels).as_numpy_iterator()])
    report = det_export.parity(detector, out, eval_images[:_PARITY_IMAGES.value], quant)
    keras_map = det_eval.evaluate_detector(detector, det_train.eval_batches(config, channels), info.num_classes)
    lite_map = det_export.evaluate_tflite(detector, out, det_train.eval_batches(config, channels), info.num_classes)
    record = {"tflite": out, "quant": quant, "io_type": io_type, "size_bytes": result.size_bytes, "parity": report,
              "map_keras": keras_map, "map_tflite": lite_map, "calibration_images": result.calibration_images,
              "train_split": info_split, "nms": "app-side (cafe_tf.detection.export.decode)"}
    ready = None
    if quant == "int8":  # the checker of deploy/edgetpu.py, without the compiler (python -m deploy.edgetpu runs both)
        full = edgetpu.readiness(out)
        ready = {k: full[k] for k in ("ready", "min_runtime", "num_ops", "ops_on_edgetpu", "ops_on_cpu",
                                      "compiler_would_reject")}
        ready["model_problems"] = full["model_checks"]["problems"]
        ready["cpu_ops"] = full["cpu_ops"][:10]
        record["edgetpu_readiness"] = ready
    io.write_artifact(os.path.join(workdir, f"export_{stem}.json"), "detector_export", 1, record)
    print(json.dumps({"tflite": out, "size_bytes": result.size_bytes, "parity_ok": report["ok"],
                      "edgetpu_ready": None if ready is None else ready["ready"],
                      "mean_iou": round(report["mean_iou"], 4), "max_score_diff": round(report["max_score_diff"], 4),
                      "AP_keras": round(keras_map["AP"], 4), "AP_tflite": round(lite_map["AP"], 4),
                      "AP50_keras": round(keras_map["AP50"], 4), "AP50_tflite": round(lite_map["AP50"], 4)}),
          flush=True)
    if not report["ok"]:
        raise DeployError(f"{out}: parity with Keras outside the {quant} tolerances {report['tolerances']}: "
                          f"mean IoU {report['mean_iou']:.4f}, 1st-percentile IoU {report['p1_iou']:.4f}, "
                          f"mean score diff {report['mean_score_diff']:.4g}, max {report['max_score_diff']:.4g}")


if __name__ == "__main__":
    programs.run_program(main, sections=("train",))
