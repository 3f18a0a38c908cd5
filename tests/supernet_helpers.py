"""Helpers shared by the supernet and search tests: separable in-memory data and a small model."""

import numpy as np
import tensorflow as tf

from cafe_tf import data, models
from cafe_tf.train import standard

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

    return standard.DataSource(info, shape, n, batch, make_train, {"validation": make_eval})


def cnn(shape=(12, 12, 1), classes=3):
    """The registry's cnn_small for the separable data (4 prunable groups)."""
    return models.build("cnn_small", input_shape=shape, num_classes=classes)
