"""Every config in configs/ starts: its own program trains on mock data until the first checkpoint.

``test_paper_configs.py`` loads, validates and builds each config but never trains one, which let
the ImageNet CafeNet configs ship with a mixed-precision setting the supernet loop refused. Here
each config runs through the program it is for, in a fresh process, as a user would start it
(``--config`` plus overrides), on ``tfds.testing.mock_data`` with the config's dataset, model,
distribution strategy, mixed precision and recipe:

* a ``supernet`` section: ``python -m cafe_tf.train_supernet`` (the first stage ``cafe_tf.pipeline``
  runs; the pipeline's later stages need the supernet this one writes);
* a ``prune`` section: ``cafe-tf prune`` (pretraining for one short epoch, then gate
  training, the loop with the program's own settings);
* a ``detector`` section: ``python -m cafe_tf.train_detector`` (keras-hub RetinaNet);
* otherwise ``cafe-tf train``.

The run stops right after the first checkpoint of the loop under test (``kernel.Checkpointer.save``
records it and ends the process). Only the data size changes: a few examples, batches of 4, and
ImageNet- and CelebA-size inputs cut to 32 / 64 pixels to keep the CPU cost down.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from test_paper_configs import REPO, load

CONFIG_FILES = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*.py")))

# Reduced input sizes for the configs whose native input is large (the rest keep theirs).
REDUCED_IMAGE_SIZE = {"imagenet2012": 32, "celeb_a": 64, "coco/2017": 64, "fashion_mnist_detection": 64}

# Seconds each took here (2 busy CPU cores); tracing the first step is most of it and does not shrink
# with the data. The default suite keeps one config per program, model family and setting that no
# other config has: the plain loop (cifar10_resnet20_train, fashion_mnist_cnn), the CafeNet supernet
# (cifar10_resnet20), the prune program (fashion_mnist_resnet20_dagger) and bfloat16 mixed
# precision with MirroredStrategy (imagenet_mobilenet_v2, the config family whose start failed). The others repeat those code paths with a larger model or
# another length and run with `make test-slow`:
SLOW = {
    "configs/fashion_mnist_resnet20.py": 67,  # = cifar10_resnet20's program and model, on Fashion-MNIST
    "configs/fashion_mnist_resnet20_full.py": 45,  # = fashion_mnist_resnet20, full length
    "configs/cifar10_vgg16.py": 37,  # = cifar10_resnet20's recipe, VGG-16
    "configs/cifar10_mobilenet_v2.py": 70,  # = cifar10_resnet20's recipe, MobileNetV2
    "configs/cifar10_resnet56.py": 87,  # = cifar10_resnet20's recipe, ResNet-56
    "configs/cifar10_resnet56_dagger.py": 118,  # = fashion_mnist_resnet20_dagger's program, ResNet-56
    "configs/imagenet_resnet50.py": 164,  # = imagenet_mobilenet_v2's recipe, ResNet-50
    "configs/imagenet_resnet50_dagger.py": 146,  # prune program, ResNet-50, bfloat16 pretraining and gates
    "configs/imagenet_efficientnet_b0.py": 114,  # = imagenet_mobilenet_v2's recipe, EfficientNet-B0
    "configs/celeba_mobilenet_v2.py": 77,  # imagenet_mobilenet_v2's model on CelebA (its pipeline: test_data)
    "configs/coco_retinanet_resnet50.py": 128,  # = detect_offline_mobilenet_v2's program, ResNet-50 and 4-conv heads
}

# Runs in the child: mock data, the stop after the first checkpoint of the folder under test, the program.
CHILD = r"""
import json, os, runpy, sys
import tensorflow_datasets as tfds
from cafe_tf.training import kernel

module, marker, stop_folder, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
# Under mock_data nothing is on disk; pretend the dataset was prepared so load() proceeds.
tfds.core.DatasetBuilder.is_prepared = lambda self: True
save = kernel.Checkpointer.save

def save_then_stop(self, step):
    path = save(self, step)
    if os.path.basename(self.directory) == stop_folder:
        model = self.objects["model"]
        with open(marker, "w") as f:
            json.dump({"step": int(step), "path": path, "policy": kernel.policy_of(model),
                       "keys": sorted(kernel.saved_keys(path))}, f)
        sys.stdout.flush()
        os._exit(0)  # the first checkpoint is what this test waits for; the rest of the run is not
    return path

kernel.Checkpointer.save = save_then_stop
sys.argv = [module] + argv
with tfds.testing.mock_data(num_examples=16):
    runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def program_of(config) -> tuple[str, str, list[str]]:
    """(program module, checkpoint folder of the loop under test, overrides that keep it to a few steps)."""
    if "detector" in config:
        # tfds's mock data draws 5-49 boxes per image, more than a config's max_boxes may allow.
        return "cafe_tf.train_detector", "checkpoints", ["--config.train.checkpoint_every=1",
                                                          "--config.train.log_every=1", "--config.detector.max_boxes=50"]
    if "prune" in config:
        return "cafe_tf.cli.prune", "ckpt", [
            "--config.train.epochs=1", "--config.train.warmup_epochs=0", "--config.train.checkpoint_every=0",
            "--config.train.log_every=1", "--config.dagger.checkpoint_every=1", "--config.dagger.log_every=1"]
    if "supernet" in config:
        # log_every past the first step: logging runs a probe of the max and min nets, a second trace.
        return "cafe_tf.train_supernet", "checkpoints", [
            "--config.supernet.checkpoint_every=1", "--config.supernet.log_every=1000"]
    return "cafe_tf.cli.train", "checkpoints", ["--config.train.checkpoint_every=1", "--config.train.log_every=1"]


def loop_policy(config) -> str:
    """The mixed-precision policy the loop under test must run in (the gate loop: what pretraining built)."""
    section = config.supernet if "supernet" in config and "prune" not in config else config.train
    return section.mixed_precision


@pytest.mark.parametrize("path", [pytest.param(p, marks=[pytest.mark.slow] if p in SLOW else []) for p in CONFIG_FILES])
def test_config_starts_training(path, tmp_path):
    config, _ = load(path)
    module, stop_folder, overrides = program_of(config)
    overrides += [f"--config.data.data_dir={tmp_path / 'data'}", "--config.data.batch_size=4",
                  "--config.data.eval_batch_size=4", "--config.data.max_train_examples=8",
                  "--config.data.max_eval_examples=4", "--config.data.shuffle_buffer=8"]
    assert not set(SLOW) - set(CONFIG_FILES), "SLOW names a config that no longer exists"
    if config.data.name in REDUCED_IMAGE_SIZE:
        overrides.append(f"--config.data.image_size={REDUCED_IMAGE_SIZE[config.data.name]}")
    load(path, *overrides)  # the overrides exist and type-check before a process is spent on them
    marker = tmp_path / "first_checkpoint.json"
    workdir = tmp_path / "run"
    argv = [f"--config={os.path.join(REPO, path)}", f"--workdir={workdir}", *overrides]
    result = subprocess.run([sys.executable, "-c", CHILD, module, str(marker), stop_folder, *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO})
    assert marker.exists(), (f"{module} with {path} stopped (exit {result.returncode}) before its first "
                             f"checkpoint:\n{result.stderr[-4000:]}")
    record = json.loads(marker.read_text())
    assert record["step"] == 1 and os.path.exists(record["path"] + ".index")
    assert {"model", "step"} <= set(record["keys"])
    assert record["policy"] == loop_policy(config)
