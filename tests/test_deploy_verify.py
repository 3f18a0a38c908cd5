"""deploy.verify: Keras vs LiteRT parity, verify.json, and the export -> verify programs on Fashion-MNIST."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from cafe_tf.io import ArtifactError, write_json
from deploy import export, verify
from deploy.errors import DeployError

L = keras.layers
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def net(input_shape=(16, 16, 3), name="net") -> keras.Model:
    x = inputs = keras.Input(input_shape, name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(6, name="logits")(x), name=name)


def images(n, shape=(16, 16, 3), seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def test_fp32_passes_and_int8_reports_agreement_and_drop(tmp_path):
    model = net()
    fp32, int8 = str(tmp_path / "m.tflite"), str(tmp_path / "m8.tflite")
    export.export_tflite(model, "fp32", fp32)
    export.export_tflite(model, "int8", int8, representative_data=images(64), io_type="int8")
    x = images(40, seed=3)
    labels = np.asarray(model(x)).argmax(1)
    report = verify.verify(model, fp32, x, labels, batch_size=16)
    assert report["quant"] == "fp32" and report["passed"] and report["max_abs_diff"] <= 1e-4
    assert report["top1_agreement"] == 1.0 and report["accuracy_drop_pt"] == 0.0 and report["num_images"] == 40
    report8 = verify.verify(model, int8, x, labels)
    assert report8["quant"] == "int8" and report8["criterion"] == "top1_agreement >= 0.99"
    assert report8["tflite_accuracy"] == pytest.approx(report8["top1_agreement"])  # labels = Keras argmax
    assert report8["accuracy_drop_pt"] == pytest.approx(100 * (1 - report8["top1_agreement"]))
    path = tmp_path / "verify.json"
    verify.write_report(str(path), report8)
    assert verify.read_report(str(path))["quant"] == "int8"


def test_compare_criteria():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    assert verify.compare(a, a + 5e-5, None, "fp32")["passed"]
    off = verify.compare(a, a + 2e-4, None, "fp32")
    assert not off["passed"] and off["criterion"] == "max_abs_diff <= 0.0001"
    flipped = a.copy()
    flipped[0] = [0.0, 1.0]
    r = verify.compare(a, flipped, np.array([0, 1, 0]), "int8")
    assert not r["passed"] and r["top1_agreement"] == pytest.approx(2 / 3)
    assert r["keras_accuracy"] == 1.0 and r["accuracy_drop_pt"] == pytest.approx(100 / 3)
    with pytest.raises(DeployError, match="differ in shape"):
        verify.compare(a, a[:2], None, "fp32")


def test_mismatched_model_is_refused(tmp_path):
    path = str(tmp_path / "other.tflite")
    export.export_tflite(net((12, 12, 3), name="other"), "fp32", path)
    with pytest.raises(DeployError, match=r"takes \(16, 16, 3\) but .* takes \(12, 12, 3\)"):
        verify.verify(net(), path, images(4))


def test_verify_json_validated(tmp_path):
    path = tmp_path / "verify.json"
    write_json(str(path), {"schema": "verify", "schema_version": 1, "tflite": "x", "quant": "int8", "num_images": 3,
                           "max_abs_diff": 0.1, "top1_agreement": 1.7, "passed": True, "criterion": "c"})
    with pytest.raises(ArtifactError, match="top1_agreement must lie in"):
        verify.read_report(str(path))


def _run(module, args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_programs_export_int8_then_verify_on_fashion_mnist(fashion_mnist_dir, tmp_path):
    """The contract end to end: a plain 32x32 RGB classifier (not 28x28 grey) calibrated on Fashion-MNIST."""
    model = net((32, 32, 3), name="rgb32")
    model_path = str(tmp_path / "rgb32.keras")
    model.save(model_path)
    tflite = str(tmp_path / "rgb32_int8.tflite")
    exported = _run("deploy.export", ["--model", model_path, "--quant", "int8", "--io_type", "uint8", "--out", tflite,
                                      "--dataset", "fashion_mnist", "--data_dir", fashion_mnist_dir, "--num_calibration", "64"])
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "wrote" in exported.stdout and "[1, 32, 32, 3] uint8" in exported.stdout
    from deploy import tflite_model

    meta = tflite_model.read_metadata(tflite)
    assert meta["normalization"]["dataset"] == "fashion_mnist" and len(meta["normalization"]["mean"]) == 3
    assert meta["calibration_images"] == 64 and meta["inputs"][0]["dtype"] == "uint8"
    assert len(meta["label_names"]) == 10 and meta["label_names"][1] == "Trouser"
    out = tmp_path / "verify.json"
    checked = _run("deploy.verify", ["--model", model_path, "--tflite", tflite, "--out", str(out), "--dataset", "fashion_mnist",
                                     "--data_dir", fashion_mnist_dir, "--num_batches", "2", "--batch_size", "16"])
    report = json.loads(out.read_text())
    assert report["num_images"] == 32 and report["quant"] == "int8" and report["dataset"] == "fashion_mnist"
    assert report["keras_accuracy"] is not None and report["accuracy_drop_pt"] is not None
    assert checked.returncode == (0 if report["passed"] else 1), checked.stderr
    assert ("PASS" if report["passed"] else "FAIL") in checked.stdout


def test_report_only_writes_a_failing_report_and_exits_zero(tmp_path):
    """deploy.verify --report_only (the pipeline's quantized formats): the report says FAIL, the exit code is 0."""
    keras_path, tflite_path = str(tmp_path / "m.keras"), str(tmp_path / "m.tflite")
    inp = keras.Input((28, 28, 1))
    model = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)))
    model.save(keras_path)
    export.export_tflite(model, "fp32", tflite_path)
    model.layers[-1].set_weights([w + 1.0 for w in model.layers[-1].get_weights()])  # Keras and TFLite now differ
    model.save(keras_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    base = [sys.executable, "-m", "deploy.verify", f"--model={keras_path}", f"--tflite={tflite_path}",
            "--num_batches=1", "--batch_size=8"]
    strict = subprocess.run(base + [f"--out={tmp_path / 'a.json'}"], capture_output=True, text=True, env=env)
    lenient = subprocess.run(base + [f"--out={tmp_path / 'b.json'}", "--report_only"], capture_output=True, text=True,
                             env=env)
    assert strict.returncode == 1 and "parity check failed" in strict.stderr
    assert lenient.returncode == 0 and "verify: FAIL" in lenient.stdout, lenient.stderr
    assert json.loads((tmp_path / "b.json").read_text())["passed"] is False
