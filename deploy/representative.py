"""Images for calibration, QAT fine-tuning and parity checks, shaped and normalised for one model.

Two sources, one result (float32 ``(N, H, W, C)`` images normalised like training, plus labels when
known):

* a dataset name (``"fashion_mnist"``): :func:`dataset_images` reads it through ``cafe_tf.data.load``
  and normalises with that dataset's own mean / std (the constants training used). This path is kept
  thin on purpose: it relies on ``load()`` and ``DatasetInfo.mean/std`` only.
* any iterable of float images, batches or ``(image, label)`` pairs (numpy arrays, a ``tf.data``
  dataset of already-normalised batches, a generator): :func:`collect_images`.

Either way :func:`adapt_images` resizes to the model's input height and width (bilinear) and
converts 1 <-> 3 channels, so a model for 32x32 RGB can be calibrated on 28x28 grey Fashion-MNIST.
"""

from __future__ import annotations

import dataclasses

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from deploy.errors import DeployError

DEFAULT_DATASET = "fashion_mnist"


def adapt_images(images: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """``images`` (N, h, w, c) resized to the model's (H, W) and converted to its C channels."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:  # (N, h, w): grey images without a channel axis
        images = images[..., None]
    if images.ndim != 4:
        raise DeployError(f"images must have shape (N, H, W, C) or (N, H, W), got {images.shape}")
    height, width, channels = (int(d) for d in input_shape[-3:])
    if images.shape[1:3] != (height, width):
        images = tf.image.resize(images, (height, width), method="bilinear", antialias=True).numpy()
    have = images.shape[-1]
    if have != channels:
        if have == 1:
            images = np.repeat(images, channels, axis=-1)
        elif channels == 1:
            images = images.mean(axis=-1, keepdims=True)
        else:
            raise DeployError(f"cannot convert {have}-channel images to the model's {channels} channels")
    return images.astype(np.float32)


def collect_images(source: Iterable[Any], input_shape: Sequence[int], limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to ``limit`` images (and labels, if the items are ``(image, label)`` pairs) from any iterable.

    Items may be single images (H, W, C), batches (N, H, W, C) or pairs of either with labels.
    """
    if limit < 1:
        raise DeployError(f"the number of images must be >= 1, got {limit!r}")
    if isinstance(source, np.ndarray):
        source = [source] if source.ndim == 4 else [source[None]] if source.ndim == 3 else source
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    count = 0
    for item in _iterate(source):
        label = None
        if isinstance(item, (tuple, list)) and len(item) == 2:
            item, label = item
        x = np.asarray(item, dtype=np.float32)
        if x.ndim == 3 and x.shape[-1] in (1, 3, 4) and len(input_shape) >= 3:
            x = x[None]
            label = None if label is None else np.asarray(label).reshape(1, *np.shape(label))
        elif x.ndim == 2:
            x = x[None, ..., None]
        images.append(x)
        if label is not None:
            labels.append(np.asarray(label).reshape(len(x), *np.shape(label)[1:]) if np.ndim(label) else np.full(len(x), label))
        count += len(x)
        if count >= limit:
            break
    if not images:
        raise DeployError("the representative data yielded no images; pass a non-empty iterable or a dataset name")
    x = adapt_images(np.concatenate(images)[:limit], input_shape)
    y = np.concatenate(labels)[:limit] if labels and len(labels) == len(images) else None
    return x, y


def _iterate(source: Iterable[Any]) -> Iterator[Any]:
    if isinstance(source, tf.data.Dataset):
        yield from source.as_numpy_iterator()
    else:
        for item in source:
            if isinstance(item, tf.Tensor):
                item = item.numpy()
            elif isinstance(item, (tuple, list)):
                item = type(item)(v.numpy() if isinstance(v, tf.Tensor) else v for v in item)
            yield item


def dataset_images(
    name: str,
    input_shape: Sequence[int],
    num_images: int,
    split: str = "train",
    data_dir: str | None = None,
    seed: int | None = 0,
    input_scaling: str = "mean_std",
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``num_images`` images of dataset ``name`` (split ``split``) scaled like training
    (``input_scaling``, as ``config.model.input_scaling``), their labels and the normalisation used
    (``{"scale", "mean", "std", "input_scaling"}`` for pixels in [0, 255], plus the dataset's name and
    label names).

    With ``seed`` the images are a deterministic shuffled sample of the first ``20 * num_images``.
    """
    from cafe_tf import data

    ds, info = data.load(name, split, data_dir=data_dir)
    if seed is not None:
        ds = ds.take(20 * num_images).shuffle(20 * num_images, seed=seed, reshuffle_each_iteration=False)
    raw, labels = [], []
    for image, label in ds.take(num_images).as_numpy_iterator():
        raw.append(image)
        labels.append(label)
    if not raw:
        raise DeployError(f"dataset {name!r} split {split!r} holds no images")
    norm = dataclasses.replace(info, input_scaling=input_scaling).normalization()
    mean = np.asarray(norm["mean"], np.float32)
    std = np.asarray(norm["std"], np.float32)
    pixels = adapt_images(np.stack(raw).astype(np.float32), input_shape)  # resize on raw pixels
    channels = pixels.shape[-1]
    if len(mean) != channels:  # grey data for an RGB model (or the reverse): one mean for all channels
        mean = np.full(channels, float(np.mean(mean)), np.float32)
        std = np.full(channels, float(np.mean(std)), np.float32)
    images = (pixels * np.float32(norm["scale"]) - mean) / std
    normalization = {"scale": norm["scale"], "mean": mean.tolist(), "std": std.tolist(),
                     "input_scaling": input_scaling, "dataset": name, "label_names": list(info.label_names)}
    return images.astype(np.float32), np.asarray(labels), normalization


def representative_dataset(images: np.ndarray):
    """The converter's ``representative_dataset``: a generator function yielding one ``[image]`` at a time."""

    def generate():
        for image in images:
            yield [image[None].astype(np.float32)]

    return generate
