"""Fashion-MNIST accuracy of a float model and of its int8 (post-training) and QAT TFLite exports.

Trains a small model briefly (default: cafe_tf's cnn_small for 2 epochs; ``--model resnet20
--width_mult 0.5`` for a slim ResNet-20), exports it with deploy.export as full int8 (calibrated on
training images) and as QAT int8 (tfmot fine-tune, then int8), and evaluates all three on the full
test split: Keras for the float model, LiteRT for the exports. Goal: accuracy drop <= 0.5 point.

QAT fine-tunes on training images, so on a briefly trained model it also simply trains longer. A
control fine-tunes the float model the same way (same images, steps, learning rate, frozen
BatchNormalization) and QAT is also compared with that.

    python benchmarks/deploy_accuracy.py [--model cnn_small] [--epochs 2] [--data_dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras
import numpy as np

from cafe_tf import data, models
import tensorflow as tf

from deploy import export, representative, tflite_model


def finetuned_float_accuracy(model, args, x_test, y_test) -> float:
    """The control: the float model fine-tuned exactly as QAT fine-tunes its fake-quant copy."""
    images, labels, _ = representative.dataset_images("fashion_mnist", (28, 28, 1), args.qat_images, data_dir=args.data_dir)
    control = keras.models.clone_model(model)
    control.set_weights(model.get_weights())
    for layer in control.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(len(images), seed=0).repeat().batch(32, drop_remainder=True)
    control.compile(optimizer=keras.optimizers.Adam(args.qat_learning_rate),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    control.fit(ds, steps_per_epoch=args.qat_steps, epochs=1, verbose=0)
    return float(np.mean(np.asarray(control.predict(x_test, batch_size=500, verbose=0)).argmax(1) == y_test))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--width_mult", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--num_calibration", type=int, default=500)
    parser.add_argument("--qat_images", type=int, default=4000)
    parser.add_argument("--qat_steps", type=int, default=300)
    parser.add_argument("--qat_learning_rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    started = time.time()

    train_ds, info = data.load("fashion_mnist", "train", data_dir=args.data_dir)
    test_ds, _ = data.load("fashion_mnist", "test", data_dir=args.data_dir)
    train = data.input_pipeline(train_ds, info, train=True, batch_size=args.batch_size, seed=args.seed)
    test = data.input_pipeline(test_ds, info, train=False, batch_size=500)
    model = models.build(args.model, input_shape=(28, 28, 1), num_classes=10, width_mult=args.width_mult)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train, epochs=args.epochs, verbose=2)
    trained_s = time.time() - started

    x_test = np.concatenate([x for x, _ in test.as_numpy_iterator()])
    y_test = np.concatenate([y for _, y in test.as_numpy_iterator()])
    float_acc = float(np.mean(np.asarray(model.predict(x_test, batch_size=500, verbose=0)).argmax(1) == y_test))

    results = {"model": args.model, "width_mult": args.width_mult, "epochs": args.epochs, "test_images": int(len(y_test)),
               "float_accuracy": float_acc, "train_s": round(trained_s, 1)}
    results["float_finetuned_accuracy"] = finetuned_float_accuracy(model, args, x_test, y_test)
    with tempfile.TemporaryDirectory() as folder:
        for quant, kwargs in (
            ("int8", {"num_calibration": args.num_calibration}),
            ("qat", {"num_calibration": args.qat_images, "qat_steps": args.qat_steps, "qat_learning_rate": args.qat_learning_rate}),
        ):
            t = time.time()
            path = os.path.join(folder, f"{quant}.tflite")
            result = export.export_tflite(model, quant, path, representative_data="fashion_mnist", data_dir=args.data_dir,
                                          io_type="int8", **kwargs)
            logits = tflite_model.TFLiteRunner(path)(x_test)["logits"]
            acc = float(np.mean(logits.argmax(1) == y_test))
            results[f"{quant}_accuracy"] = acc
            results[f"{quant}_drop_pt"] = 100 * (float_acc - acc)
            results[f"{quant}_seconds"] = round(time.time() - t, 1)
            if result.qat_losses:
                results["qat_losses"] = result.qat_losses

    print(f"\nFashion-MNIST test ({len(y_test)} images), {args.model} x{args.width_mult}, {args.epochs} epoch(s) "
          f"({trained_s:.0f} s of training):")
    print(f"  float (Keras)             {100 * float_acc:6.2f}%")
    control = results["float_finetuned_accuracy"]
    print(f"  float, QAT-like fine-tune {100 * control:6.2f}%   (control)")
    for quant, label in (("int8", "int8 PTQ (LiteRT)"), ("qat", "QAT int8 (LiteRT)")):
        print(f"  {label:<25} {100 * results[f'{quant}_accuracy']:6.2f}%   drop {results[f'{quant}_drop_pt']:+.2f} pt"
              f"   (export {results[f'{quant}_seconds']:.0f} s)")
    results["qat_drop_vs_control_pt"] = 100 * (control - results["qat_accuracy"])
    print(f"  QAT vs the equally fine-tuned float model: drop {results['qat_drop_vs_control_pt']:+.2f} pt")
    print(f"  goal: drop <= 0.5 pt   ({time.time() - started:.0f} s in all)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
