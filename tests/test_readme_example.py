"""The README's Python example (the one python block under ``## From Python``), run as written in a
fresh process, in a folder that holds a small ``my_images/`` folder and a small trained
``my_model.keras`` written here."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("circle", "cross", "square", "stripes")


def readme_example(path: str = os.path.join(ROOT, "README.md")) -> str:
    """The one ```python block of the README's ``## From Python`` section."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = re.search(r"^## From Python\s*$(.*?)(?=^## )", text + "\n## ", re.S | re.M)
    assert found, "README.md has no '## From Python' section"
    blocks = re.findall(r"^```python\n(.*?)^```", found.group(1), re.S | re.M)
    assert len(blocks) == 1, f"'## From Python' holds {len(blocks)} python blocks, not one"
    return blocks[0]


def toy_images(per_class: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gray noise images with one of four drawn shapes (the class)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 - 0.5
    masks = [((yy - c) ** 2 + (xx - c) ** 2 < (size / 3) ** 2),
             (np.abs(yy - c) < 1.5) | (np.abs(xx - c) < 1.5),
             (np.abs(yy - c) < size / 3) & (np.abs(xx - c) < size / 3),
             (yy // 2) % 2 == 0]
    x, y = [], []
    for label, mask in enumerate(masks):
        for _ in range(per_class):
            image = rng.integers(0, 70, (size, size)).astype(np.int32) + 160 * mask
            x.append(np.clip(image, 0, 255).astype(np.uint8)[..., None])
            y.append(label)
    return np.stack(x), np.asarray(y)


def write_folder(folder: str, x: np.ndarray, y: np.ndarray) -> None:
    import tensorflow as tf

    for i, (image, label) in enumerate(zip(x, y)):
        os.makedirs(os.path.join(folder, CLASSES[label]), exist_ok=True)
        tf.io.write_file(os.path.join(folder, CLASSES[label], f"{i:04d}.png"), tf.io.encode_png(image))


def trained_model(x: np.ndarray, y: np.ndarray, path: str) -> None:
    """A small functional CNN with a residual add and its own Rescaling (fed raw pixels), trained briefly."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input(x.shape[1:])
    h = keras.layers.Rescaling(1 / 255.0)(inp)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(16, 3, padding="same")(h)))
    b = keras.layers.BatchNormalization()(keras.layers.Conv2D(16, 3, padding="same")(h))
    h = keras.layers.ReLU()(keras.layers.Add()([h, b]))
    h = keras.layers.ReLU()(keras.layers.Conv2D(32, 3, strides=2, padding="same")(h))
    out = keras.layers.Dense(len(CLASSES))(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x.astype("float32"), y, epochs=3, batch_size=32, verbose=0)
    model.save(path)


def test_readme_names_the_api():
    code = readme_example()
    for name in ("load_data", "profile", "search_widths", "train", "prune", "export_tflite", "benchmark"):
        assert f"cafe_tf.{name}(" in code, name


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path):
    code = readme_example()
    x, y = toy_images(per_class=45)  # 180 images: 162 train (one batch of the recipe's 128), 18 validation
    write_folder(str(tmp_path / "my_images"), x, y)
    trained_model(x, y, str(tmp_path / "my_model.keras"))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800)
    out = done.stdout
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in out.splitlines() if line.strip()]
    print("\n".join(lines))  # what the example printed (pytest -s shows it)
    assert re.search(r"[\d,]+ MACs, [\d,]+ params, \d+ prunable channel groups", out)
    widths_line = next(line for line in lines if line.startswith("{"))
    widths, macs, score = re.match(r"(\{.*\}) (\d+) ([\d.]+)$", widths_line).groups()
    assert int(macs) > 0 and 0 <= float(score) <= 1
    assert (tmp_path / "runs" / "prune" / "report.md").is_file()
    size, agreement, diff = lines[-2].split()
    assert int(size) == os.path.getsize(tmp_path / "runs" / "slim_int8.tflite")
    assert 0 <= float(agreement) <= 1 and float(diff) >= 0
    assert float(lines[-1]) > 0
