"""Every program runs on ``--config.data.name=folder:PATH``: a folder of PNG files the test writes.

One module-scoped folder (3 classes, train/ 24 images each, validation/ and test/ 8 each, 16x16 RGB,
each class its own colour plus noise) serves every run. Each program runs as a user starts it, in a
fresh process, with the configs' recipes cut to a few steps. The pipeline, the train program and
deploy's calibration and verification run in the default suite; the others (each over a minute
here) are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("circle", "square", "stripe")
SPLITS = {"train": 24, "validation": 8, "test": 8}
SIDE = 16

# The demo pipeline's recipe cut to a few steps (the same keys reach every stage).
TINY = [
    "--config.data.batch_size=16", "--config.data.eval_batch_size=24", "--config.data.cache=False",
    "--config.model.name=cnn_small",
    "--config.supernet.epochs=1", "--config.supernet.calibration_examples=16", "--config.supernet.eval_examples=24",
    "--config.search.population=4", "--config.search.generations=1", "--config.search.parents=2",
    "--config.search.calibration_examples=16", "--config.search.eval_examples=24",
    "--config.train.epochs=1",
]
DEPLOY = ["--config.deploy.representative_examples=16", "--config.deploy.verify_examples=24",
          "--config.deploy.benchmark_runs=2", "--config.deploy.benchmark_rounds=1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    colours = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)], np.float64)
    for split, count in SPLITS.items():
        for c, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for i in range(count):
                pixels = np.clip(colours[c] + rng.normal(0, 30, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return str(root)


def run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository, as a user runs a program; fails the test with its output's tail."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{args[:2]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def read(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_pipeline_on_a_folder(folder, tmp_path):
    work = tmp_path / "run"
    proc = run(["-m", "cafe_tf.pipeline", "--config=configs/fashion_mnist_resnet20.py", f"--workdir={work}",
                f"--config.data.name=folder:{folder}", *TINY, *DEPLOY])
    relayed = proc.stdout.split("[1/8]", 1)[1]  # what the stages printed, as the pipeline relays it
    assert "cudart_stub" not in relayed and "cuInit" not in relayed
    widths = read(work / "widths.json")
    assert widths["model"]["input_shape"] == [SIDE, SIDE, 3] and widths["model"]["num_classes"] == len(CLASSES)
    assert widths["macs"] <= widths["budget"]["max_macs"]
    (uniform,) = widths["baselines"]  # the report's uniform net, at the chosen net's MACs
    assert abs(uniform["macs"] - widths["macs"]) <= 0.01 * widths["macs"]
    for fmt in ("fp32", "int8"):
        verify = read(work / "deploy" / f"verify_{fmt}.json")
        assert verify["dataset"] == f"folder:{folder}" and verify["split"] == "test"
        assert verify["num_images"] == SPLITS["test"] * len(CLASSES) and verify["passed"]
    assert read(work / "retrain" / "metrics.json")["final"]["test"]["accuracy"] is not None
    # One data record for the whole job: the retrain stage reads its parent's instead of recomputing it.
    assert read(work / "data.json")["name"] == f"folder:{folder}"
    assert not (work / "retrain" / "data.json").exists()
    report = (work / "report.md").read_text()
    assert f"on folder:{folder}" in report and "## Parity with Keras" in report
    assert "| int8 | " in report.split("## Parity with Keras")[1]


def test_train_on_a_folder(folder, tmp_path):
    import keras

    run(["-m", "cafe_tf.cli.main", "train", "--config=configs/fashion_mnist_cnn.py", f"--workdir={tmp_path}",
         f"--config.data.name=folder:{folder}", "--config.train.epochs=1", "--config.data.batch_size=16"])
    final = read(tmp_path / "metrics.json")["final"]
    assert set(final) >= {"validation", "test"} and 0 <= final["test"]["accuracy"] <= 1
    model = keras.models.load_model(tmp_path / "model.keras")
    assert tuple(model.inputs[0].shape[1:]) == (SIDE, SIDE, 3) and model.outputs[0].shape[-1] == len(CLASSES)
    # The training split's statistics, computed once and kept in the workdir for later stages.
    from PIL import Image

    record = read(tmp_path / "data.json")
    assert record["name"] == f"folder:{folder}" and record["class_names"] == list(CLASSES)
    pixels = np.stack([np.asarray(Image.open(os.path.join(folder, "train", c, f)), np.float64) / 255.0
                       for c in CLASSES for f in os.listdir(os.path.join(folder, "train", c))])
    np.testing.assert_allclose(record["mean"], pixels.mean(axis=(0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(record["std"], pixels.std(axis=(0, 1, 2)), atol=1e-4)


def test_export_calibrates_and_verify_checks_on_a_folder(folder, tmp_path):
    import keras

    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(len(CLASSES))(keras.layers.GlobalAveragePooling2D()(x))
    model_path = str(tmp_path / "model.keras")
    keras.Model(inputs, outputs).save(model_path)
    tflite = str(tmp_path / "model_int8.tflite")
    proc = run(["-m", "deploy.export", f"--model={model_path}", "--quant=int8", f"--out={tflite}",
                f"--dataset=folder:{folder}", "--num_calibration=16"])
    assert f"calibrating on 16 images of 'folder:{folder}'" in proc.stdout
    out = str(tmp_path / "verify.json")
    run(["-m", "deploy.verify", f"--model={model_path}", f"--tflite={tflite}", f"--dataset=folder:{folder}",
         f"--out={out}", "--batch_size=8", "--num_batches=3", "--report_only"])
    verify = read(out)
    assert verify["num_images"] == 24 and verify["quant"] == "int8" and verify["tflite_accuracy"] is not None
    assert verify["normalization"]["dataset"] == f"folder:{folder}" and len(verify["normalization"]["mean"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dagger", "l1"])
def test_prune_on_a_folder(folder, tmp_path, method):
    run(["-m", "cafe_tf.cli.main", "prune", "--config=configs/fashion_mnist_resnet20_dagger.py",
         f"--workdir={tmp_path}", f"--config.data.name=folder:{folder}", "--config.data.batch_size=16",
         "--config.data.cache=False", "--config.model.name=cnn_small", f"--config.prune.method={method}",
         "--config.train.epochs=1", "--config.dagger.epochs=1.0", "--config.finetune.epochs=1"])
    widths = read(tmp_path / "prune" / "widths.json")
    assert widths["macs"] <= 0.5 * widths["full_macs"] * 1.01
    assert read(tmp_path / "finetune" / "metrics.json")["final"]["test"]["accuracy"] is not None


@pytest.mark.slow
def test_supernet_and_search_on_a_folder(folder, tmp_path):
    common = ["--config=configs/fashion_mnist_resnet20.py", f"--workdir={tmp_path}",
              f"--config.data.name=folder:{folder}", *TINY]
    run(["-m", "cafe_tf.cli.main", "train_supernet", *common])
    run(["-m", "cafe_tf.cli.main", "search", *common])
    widths = read(tmp_path / "widths.json")
    assert widths["macs"] <= widths["budget"]["max_macs"] and widths["model"]["num_classes"] == len(CLASSES)


@pytest.mark.slow
def test_compare_on_a_folder(folder, tmp_path):
    run(["-m", "cafe_tf.compare", "--config=configs/fashion_mnist_resnet20.py", f"--workdir={tmp_path}",
         f"--config.data.name=folder:{folder}", *TINY, "--arms=cafenet,uniform", "--budgets=0.5", "--seeds=0",
         "--ranking=0", "--noise_repeats=0"])
    summary = read(tmp_path / "compare.json")
    rows = summary["arms"]["0.5"]
    assert set(rows) >= {"cafenet", "uniform"}
    assert all(row["in_band"] for row in rows.values())


@pytest.mark.slow
def test_bundle_on_a_folder(folder, tmp_path):
    run(["-m", "cafe_tf.bundle", "--config=configs/fashion_mnist_resnet20.py", f"--workdir={tmp_path}",
         f"--config.data.name=folder:{folder}", *TINY, "--config.bundle.budgets=(0.5,)",
         "--config.bundle.verify_examples=24", "--config.bundle.benchmark_runs=2", "--config.bundle.benchmark_rounds=1"])
    bundle = read(tmp_path / "bundle" / "bundle.json")
    assert len(bundle["entries"]) == 1 and bundle["entries"][0]["accuracy"]["tflite_images"] == 24
