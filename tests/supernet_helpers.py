"""Helpers shared by the training, search and Dagger tests.

Separable in-memory data, a small model, BN noise, and a training subprocess killed after its first
checkpoint (the resume tests).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from cafe_tf import data, io, models
from cafe_tf.training import standard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
FIRST_CHECKPOINT = "first_checkpoint"  # marker file the hanging hook writes in the workdir

# widths.json / supernet.json model record of :func:`cnn`.
INFO = {"name": "cnn_small", "input_shape": [12, 12, 1], "num_classes": 3, "width_mult": 1.0}


def separable_source(n=192, batch=16, shape=(12, 12, 1), classes=3, seed=0, n_val=96):
    """In-memory data whose class is visible in the image (a class-dependent bright quadrant)."""
    rng = np.random.default_rng(seed)

    def make(count):
        y = rng.integers(0, classes, count)
        x = rng.integers(0, 60, (count, *shape)).astype(np.int64)
        h, w = shape[0] // 2, shape[1] // 2
        for i, c in enumerate(y):
            r0, c0 = (c % 2) * h, (c // 2) * w
            x[i, r0:r0 + h, c0:c0 + w] += 180
        return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)

    (xt, yt), (xv, yv) = make(n), make(n_val)
    channels = shape[-1]
    info = data.DatasetInfo("separable", "classification", classes, shape, {"train": n, "validation": n_val},
                            (0.3,) * channels, (0.3,) * channels, "none", None, tuple(map(str, range(classes))), "", 0)
    train_ds = tf.data.Dataset.from_tensor_slices((xt, yt))
    val_ds = tf.data.Dataset.from_tensor_slices((xv, yv))

    def make_train(epoch, skip, ctx):
        return data.input_pipeline(train_ds, info, True, batch, augment="none", seed=seed, epoch=epoch,
                                   skip_batches=skip, shuffle_buffer=n, input_context=ctx)

    def make_eval(ctx):
        return data.input_pipeline(val_ds, info, False, batch, input_context=ctx)

    return data.DataSource(info, shape, n, batch, make_train, {"validation": make_eval})


def cnn(shape=(12, 12, 1), classes=3):
    """The registry's cnn_small for the separable data (4 prunable groups)."""
    return models.build("cnn_small", input_shape=shape, num_classes=classes)


def randomise_bn(model, seed=0):
    """Random BatchNormalization statistics and affine weights, so a wrong channel or BN pairing shows in outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, n).astype("float32"))


class HangAfterFirstCheckpoint(standard.Hook):
    """Writes the first checkpoint's step to ``<workdir>/first_checkpoint``, then hangs until killed."""

    def __init__(self, workdir):
        self.marker = os.path.join(workdir, FIRST_CHECKPOINT)

    def on_checkpoint(self, step, path):
        io.write_text(self.marker, str(step))
        time.sleep(600)  # stands for a job that dies here: the test SIGKILLs us


def kill_after_first_checkpoint(child_code, workdir, timeout=180):
    """Runs ``child_code`` (Python training in ``workdir`` with :class:`HangAfterFirstCheckpoint`, the repo and
    tests on its path) in a subprocess, SIGKILLs it once the first checkpoint is written; returns that step."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.path[:0] = [{REPO!r}, {TESTS!r}]; {child_code}"],
        cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    marker = os.path.join(workdir, FIRST_CHECKPOINT)
    deadline = time.time() + timeout
    while not os.path.exists(marker) and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    if not os.path.exists(marker):
        child.kill()
        pytest.fail(f"no checkpoint was written: {child.communicate()[1][-3000:]}")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    return int(open(marker).read())


def child_result(code: str, timeout: int = 600) -> dict:
    """Runs ``code`` in a fresh Python (the repository and tests/ on sys.path; distribution strategies
    need a process of their own) and returns the JSON it printed after ``RESULT``."""
    result = subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{REPO!r}, {TESTS!r}]; {code}"],
                            cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULT", 1)[1])


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on localhost now (for a loopback multi-worker cluster)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
