"""deploy.qat: tf-keras rebuild, QAT fine-tune and int8 conversion, and Keras 3 still working after it.

Importing tensorflow-model-optimization sets TF_USE_LEGACY_KERAS=1 in the process, so everything
runs in a fresh subprocess: the pytest worker never imports tf-keras or tfmot.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    r'''
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    from deploy import export, qat, tflite_model
    from deploy.errors import DeployError

    L = keras.layers
    keras.utils.set_random_seed(0)
    out = sys.argv[1]
    result = {"legacy_env_before": os.environ.get("TF_USE_LEGACY_KERAS")}

    def model_(name="toy"):
        x = inputs = keras.Input((12, 12, 3), name="image")
        x = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(x)
        x = L.BatchNormalization(name="bn1")(x)
        x = L.ReLU(name="r1")(x)
        y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
        y = L.BatchNormalization(name="bn2")(y)
        x = L.Add(name="add")([x, y])
        x = L.Activation("relu", name="r2")(x)
        x = L.MaxPooling2D(2, name="pool")(x)
        x = L.GlobalAveragePooling2D(name="gap")(x)
        x = L.Dropout(0.1, name="drop")(x)
        return keras.Model(inputs, L.Dense(4, name="logits")(x), name=name)

    model = model_()
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel * 8.0, bias])  # clear margins between random classes
    rng = np.random.default_rng(0)
    images = rng.standard_normal((96, 12, 12, 3)).astype(np.float32)
    labels = np.asarray(model.predict(images, verbose=0)).argmax(1)  # a task the float model solves

    # 1. The tf-keras rebuild matches the Keras 3 model layer for layer.
    rebuilt = qat.to_tf_keras(model)
    result["rebuilt_type"] = type(rebuilt).__module__
    result["rebuilt_layers"] = [l.name for l in rebuilt.layers]
    result["rebuild_diff"] = float(np.max(np.abs(np.asarray(rebuilt(images[:8], training=False)) - np.asarray(model(images[:8], training=False)))))

    # 2. QAT end to end through export_tflite (labels from the (image, label) pairs), uint8 io.
    path = os.path.join(os.path.dirname(out), "toy_qat.tflite")
    res = export.export_tflite(model, "qat", path, representative_data=[(images, labels)], io_type="uint8",
                               qat_steps=20, qat_batch_size=16, qat_learning_rate=1e-4, num_calibration=96)
    summary = tflite_model.summarize(path)
    result["qat_losses"] = res.qat_losses
    result["qat_io"] = [summary.tensors[summary.inputs[0]].dtype, summary.tensors[summary.outputs[0]].dtype]
    result["qat_input_shape"] = list(summary.tensors[summary.inputs[0]].shape_signature)
    result["qat_activation_types"] = sorted({t.dtype for t in summary.tensors if not t.is_constant})
    got = tflite_model.TFLiteRunner(path)(images)["logits"]
    result["qat_agreement"] = float(np.mean(got.argmax(1) == labels))
    result["metadata_quant"] = tflite_model.read_metadata(path)["quant"]

    # 3. Unsupported layers give a clear error.
    class Scale(L.Layer):
        def call(self, x):
            return x * 2.0
    x = inputs = keras.Input((4, 4, 1))
    odd = keras.Model(inputs, L.Dense(2)(L.Flatten()(Scale(name="scale")(x))))
    try:
        qat.to_tf_keras(odd)
        result["custom_error"] = None
    except DeployError as e:
        result["custom_error"] = str(e)

    # 4. Keras 3 keeps working in this process after tfmot was imported.
    result["legacy_env_after"] = os.environ.get("TF_USE_LEGACY_KERAS")
    later = model_("later")
    later.set_weights(model.get_weights())
    fp32 = os.path.join(os.path.dirname(out), "later_fp32.tflite")
    export.export_tflite(later, "fp32", fp32)
    result["keras3_after_qat_diff"] = float(np.max(np.abs(tflite_model.TFLiteRunner(fp32)(images[:16])["logits"] - np.asarray(later(images[:16])))))
    result["keras_version"] = keras.__version__
    with open(out, "w") as f:
        json.dump(result, f)
    '''
)


@pytest.fixture(scope="module")
def qat_result(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qat")
    script = folder / "run_qat.py"
    script.write_text(SCRIPT)
    out = folder / "result.json"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(script), str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_tf_keras_rebuild_matches_keras3(qat_result):
    assert qat_result["rebuilt_type"].startswith("tf_keras")
    assert qat_result["rebuilt_layers"][:3] == ["image", "c1", "bn1"]
    assert qat_result["rebuild_diff"] < 1e-5


def test_qat_fine_tunes_and_converts_full_integer(qat_result):
    losses = qat_result["qat_losses"]
    assert np.isfinite(losses["first_loss"]) and np.isfinite(losses["last_loss"])
    assert qat_result["qat_io"] == ["uint8", "uint8"]
    assert qat_result["qat_input_shape"] == [1, 12, 12, 3]
    assert set(qat_result["qat_activation_types"]) <= {"int8", "uint8", "int32"}
    assert qat_result["qat_agreement"] >= 0.9
    assert qat_result["metadata_quant"] == "qat"


def test_unsupported_layer_named_in_error(qat_result):
    assert "'scale'" in qat_result["custom_error"] and "no tf-keras equivalent" in qat_result["custom_error"]


def test_keras3_still_works_after_qat_in_same_process(qat_result):
    assert qat_result["legacy_env_before"] is None
    assert qat_result["legacy_env_after"] is None  # restored after importing tfmot
    assert qat_result["keras_version"].startswith("3.")
    assert qat_result["keras3_after_qat_diff"] <= 1e-4
