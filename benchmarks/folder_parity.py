"""Fashion-MNIST as a PNG folder trains like the tfds dataset: the same recipe and seed, both test accuracies.

    python benchmarks/folder_parity.py [--workdir /tmp/folder_parity] [--config configs/fashion_mnist_cnn.py]

Writes the built-in splits (train: the first 55,000 training images, validation: the last 5,000,
test: the 10,000 test images) as ``train/``, ``validation/`` and ``test/`` folders of one PNG per
image, one subfolder per class, then runs ``cafe-tf train`` twice with the same config: once on
``fashion_mnist`` and once on ``folder:<workdir>/folder``. Prints both test accuracies and their
difference in points (the goal: within 0.5), with the CPU model and its SIMD features.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_folder(root: str, data_dir: str | None = None) -> dict[str, int]:
    """Writes Fashion-MNIST's train / validation / test splits as PNG class folders; returns their sizes."""
    import numpy as np
    from PIL import Image

    from cafe_tf import data

    sizes = {}
    for split in ("train", "validation", "test"):
        ds, info = data.load("fashion_mnist", split, data_dir=data_dir)
        # "NN_name" keeps sorted() folder order equal to the label order; "/" cannot be in a name.
        names = [f"{i:02d}_{re.sub(r'[^A-Za-z0-9]+', '_', n)}" for i, n in enumerate(info.label_names)]
        for name in names:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
        n = 0
        for n, (image, label) in enumerate(ds.as_numpy_iterator(), 1):
            Image.fromarray(np.asarray(image)[..., 0], mode="L").save(
                os.path.join(root, split, names[int(label)], f"{n:05d}.png"))
        sizes[split] = n
    return sizes


def train(config: str, workdir: str, name: str) -> tuple[float, float]:
    """Runs the train program on data ``name``; returns (test accuracy, wall seconds)."""
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "cafe_tf.cli.train", "--config", config, "--workdir", workdir,
         f"--config.data.name={name}"], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode != 0:
        sys.exit(f"training on {name} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    return float(metrics["final"]["test"]["accuracy"]), time.time() - start


def cpu() -> str:
    """``model name [features]`` of this host's CPU (the SIMD features that matter to TensorFlow)."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]
    return f"{model} [{' '.join(f for f in wanted if f in flags) or 'no AVX2'}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/folder_parity")
    parser.add_argument("--config", default="configs/fashion_mnist_cnn.py")
    parser.add_argument("--data_dir", default=None, help="tfds data folder (default $CAFE_TF_DATA_DIR or ~/tensorflow_datasets)")
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    folder = os.path.join(args.workdir, "folder")
    if not os.path.isdir(os.path.join(folder, "test")):
        start = time.time()
        sizes = write_folder(folder, args.data_dir)
        print(f"wrote {sizes} PNGs into {folder} in {time.time() - start:.0f} s", flush=True)
    runs = {}
    for label, name in (("tfds", "fashion_mnist"), ("folder", f"folder:{folder}")):
        workdir = os.path.join(args.workdir, f"run_{label}")
        runs[label] = train(args.config, workdir, name)
        print(f"{label:<6} {name}: test accuracy {runs[label][0]:.4f} ({runs[label][1]:.0f} s)", flush=True)
    diff = 100.0 * (runs["folder"][0] - runs["tfds"][0])
    print(f"difference (folder - tfds): {diff:+.2f} pt; goal |diff| <= 0.5 pt: {'met' if abs(diff) <= 0.5 else 'missed'}")
    print(f"config {args.config}; CPU {cpu()}")


if __name__ == "__main__":
    main()
