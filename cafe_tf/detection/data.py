"""Detection data: COCO 2017 (tfds) and an offline Fashion-MNIST detection set, in keras-hub's box format.

Both datasets come through tfds with the same features (``image`` uint8 HxWx3, ``image/id``,
``objects/bbox`` as tfds's normalized ``[ymin, xmin, ymax, xmax]``, ``objects/label``), so one
pipeline (:func:`detection_pipeline`) serves both:

* ``coco/2017``: tfds's builder; it is never downloaded unless ``download=True`` (or ``tfds build``);
* ``fashion_mnist_detection``: built deterministically, offline, by :func:`offline_builder` from
  the local Fashion-MNIST IDX files (``cafe_tf.data.fashion_mnist_source_dir()``): 1-4 items,
  each at 1x or 2x (28 or 56 pixels), pasted without overlap onto a black 128x128 canvas,
  grey replicated to 3 channels; its box is the item's tight box (pixels > 0); classes are
  Fashion-MNIST's 10. Train: 2,000 canvases from the training items, test: 300 from the test items.

**Format** (keras-hub's, what ``RetinaNetObjectDetector`` trains on): ``(images, {"boxes", "labels"})``
with images float32 ``[batch, size, size, channels]`` normalized with the dataset's mean / std,
boxes float32 ``[batch, max_boxes, 4]`` in :data:`BOX_FORMAT` (``"yxyx"``: absolute pixels of the
resized image) and labels int32 ``[batch, max_boxes]``; padding rows are ``-1`` (boxes and labels).

**Augmentation** is Keras's own box-aware layers, no box arithmetic here: ``keras.layers.Resizing``
(``pad_to_aspect_ratio=True``: resize and pad to a square, boxes moved) and, for training,
``keras.layers.RandomFlip("horizontal")`` (boxes mirrored).

**Bad input**, handled as stated (nothing silently wrong):

* a box partly outside the image is clipped to it (COCO has boxes a fraction of a pixel past the
  border); a box with zero area (after clipping) is dropped; :func:`check_examples` counts both
  (and the rest of this list) over any examples before training;
* an image without boxes is kept: for training it is a background-only example (keras-hub's loss
  then has only negatives from it), for evaluation an image with no ground truth (pycocotools
  counts its detections as false positives);
* a class id outside ``[0, num_classes)`` is an error (``tf.errors.InvalidArgumentError`` naming
  the id and the range, raised when the batch is made), since it means the wrong label map;
* more than ``max_boxes`` boxes in one image: an error naming ``max_boxes``;
* unequal numbers of boxes and labels in one example (only tfds's mock data makes them): cut to the shorter.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cafe_tf import data as data_lib
from cafe_tf.errors import UsageError

BOX_FORMAT = "yxyx"
OFFLINE_NAME = "fashion_mnist_detection"
DATASETS = ("coco/2017", OFFLINE_NAME)
FASHION_MNIST_LABELS = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                        "ankle boot")
CANVAS = 128
OFFLINE_SIZES = {"train": 2000, "test": 300}
# Splits: training, evaluation (COCO's test split has no annotations).
SPLITS = {"coco/2017": ("train", "validation"), OFFLINE_NAME: ("train", "test")}
# Pixel statistics the images are normalized with: ImageNet's for COCO; Fashion-MNIST's for the
# offline set, whose pixels are Fashion-MNIST items, so a backbone trained on Fashion-MNIST sees them as it did.
NORMALIZATION = {"coco/2017": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), OFFLINE_NAME: ((0.2860,), (0.3530,))}


@dataclasses.dataclass(frozen=True)
class DetectionInfo:
    """What the detector and the pipeline need to know about a detection dataset."""

    name: str
    num_classes: int
    label_names: tuple[str, ...]
    train_split: str
    eval_split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_sizes: dict[str, int]


# --------------------------------------------------------------------------------------------
# The offline set: a tfds builder over local Fashion-MNIST files


def _read_idx(path: str, count: int, item_dims: tuple[int, ...]) -> np.ndarray:
    magic = 2051 if item_dims else 2049
    data_lib.validate_idx(path, magic, item_dims, count)
    with gzip.open(path, "rb") as f:
        raw = f.read()
    header = 4 + 4 * (1 + len(item_dims))
    return np.frombuffer(raw, np.uint8, offset=header).reshape((count, *item_dims))


def paste_items(items: np.ndarray, labels: np.ndarray, rng: np.random.Generator, canvas: int = CANVAS,
                ) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[int], int]:
    """One canvas: 1-4 of ``items`` (28x28 uint8) at 1x or 2x, placed without overlap.

    Returns the grey canvas, the items' tight boxes (ymin, xmin, ymax, xmax; pixels, exclusive end),
    their labels and the count of items that found no free place (left out).
    """
    image = np.zeros((canvas, canvas), np.uint8)
    taken = np.zeros((canvas, canvas), bool)
    boxes, classes, skipped = [], [], 0
    for _ in range(int(rng.integers(1, 5))):
        k = int(rng.integers(len(items)))
        scale = int(rng.integers(1, 3))
        item = np.repeat(np.repeat(items[k], scale, axis=0), scale, axis=1)
        ys, xs = np.nonzero(item)
        if not len(ys):
            skipped += 1
            continue
        item = item[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        h, w = item.shape
        for _ in range(20):
            y, x = int(rng.integers(0, canvas - h + 1)), int(rng.integers(0, canvas - w + 1))
            if not taken[y:y + h, x:x + w].any():
                break
        else:
            skipped += 1
            continue
        image[y:y + h, x:x + w] = item
        taken[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1] = True
        boxes.append((y, x, y + h, x + w))
        classes.append(int(labels[k]))
    return image, boxes, classes, skipped


@functools.cache
def offline_builder_class() -> type:
    """The tfds builder of ``fashion_mnist_detection`` (defined on first use: defining it registers it with tfds)."""
    import tensorflow_datasets as tfds

    class FashionMnistDetection(tfds.core.GeneratorBasedBuilder):
        """Fashion-MNIST items pasted on a 128x128 canvas, with their boxes and classes (built offline)."""

        name = OFFLINE_NAME
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "1-4 items at 1x/2x on 128x128, seeds 0 (train) and 1 (test)."}

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(CANVAS, CANVAS, 3), encoding_format="png"),
                    "image/id": tf.int64,
                    "objects": tfds.features.Sequence({
                        "bbox": tfds.features.BBoxFeature(),
                        "label": tfds.features.ClassLabel(names=FASHION_MNIST_LABELS),
                        "area": tf.int64,
                        "is_crowd": tf.bool,
                    }),
                }),
                supervised_keys=None,
                description=__doc__,
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples("train", 0), "test": self._generate_examples("t10k", 1)}

        def _generate_examples(self, prefix: str, seed: int):
            source = data_lib.fashion_mnist_source_dir()
            count = 60000 if prefix == "train" else 10000
            items = _read_idx(os.path.join(source, f"{prefix}-images-idx3-ubyte.gz"), count, (28, 28))
            labels = _read_idx(os.path.join(source, f"{prefix}-labels-idx1-ubyte.gz"), count, ())
            rng = np.random.default_rng(seed)
            split = "train" if prefix == "train" else "test"
            for i in range(OFFLINE_SIZES[split]):
                grey, boxes, classes, _ = paste_items(items, labels, rng)
                yield i, {
                    "image": np.repeat(grey[:, :, None], 3, axis=2),
                    "image/id": i,
                    "objects": {
                        "bbox": [tfds.features.BBox(y0 / CANVAS, x0 / CANVAS, y1 / CANVAS, x1 / CANVAS)
                                 for y0, x0, y1, x1 in boxes],
                        "label": classes,
                        "area": [(y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in boxes],
                        "is_crowd": [False] * len(boxes),
                    },
                }

    return FashionMnistDetection


def prepare_offline(data_dir: str) -> None:
    """Builds ``fashion_mnist_detection`` into ``data_dir`` from the local Fashion-MNIST files (a no-op when built)."""
    builder = offline_builder_class()(data_dir=data_dir)
    with data_lib._file_lock(os.path.join(data_dir, f".{OFFLINE_NAME}.lock")):
        if not builder.is_prepared():
            builder.download_and_prepare()


# --------------------------------------------------------------------------------------------
# Loading


def load(name: str, split: str, data_dir: str | None = None, download: bool = False,
         shuffle_files: bool = False) -> tuple[tf.data.Dataset, DetectionInfo]:
    """The raw tfds examples of split ``split`` of detection dataset ``name`` (:data:`DATASETS`) and its info."""
    import tensorflow_datasets as tfds

    if name not in DATASETS:
        raise UsageError(f"unknown detection dataset {name!r}; valid names: {list(DATASETS)}")
    data_dir = os.path.abspath(os.path.expanduser(data_dir or data_lib.default_data_dir()))
    if name == OFFLINE_NAME:
        builder = offline_builder_class()(data_dir=data_dir)
        if not builder.is_prepared():
            prepare_offline(data_dir)
            builder = offline_builder_class()(data_dir=data_dir)  # a fresh builder reads the split sizes
    else:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            if not download:
                raise data_lib.DatasetError(
                    f"dataset {name!r} is not prepared in data_dir {data_dir!r} (looked for {builder.data_dir}); "
                    f"prepare it with `tfds build {name} --data_dir {data_dir}` or --config.data.download=True, "
                    "or point --config.data.data_dir at a folder that holds it")
            builder.download_and_prepare()
            builder = tfds.builder(name, data_dir=data_dir)
    if split not in SPLITS[name]:
        raise UsageError(f"unknown split {split!r} of {name!r}; valid splits: {list(SPLITS[name])}")
    labels = builder.info.features["objects"]["label"]
    mean, std = NORMALIZATION[name]
    sizes = {k: int(v.num_examples) for k, v in builder.info.splits.items()}
    info = DetectionInfo(name, labels.num_classes, tuple(labels.names), *SPLITS[name], mean, std, sizes)
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_files,
                            read_config=tfds.ReadConfig(try_autocache=False))
    return ds, info


# --------------------------------------------------------------------------------------------
# Conversion to keras-hub's format


def to_boxes(example: dict[str, Any], num_classes: int) -> dict[str, tf.Tensor]:
    """A tfds example as ``{"images": uint8 HxWxC, "bounding_boxes": {"boxes": [n, 4] yxyx pixels, "labels": [n]}}``.

    Boxes are clipped to the image and those of zero area dropped; a class id outside
    ``[0, num_classes)`` fails (see the module doc).
    """
    image = example["image"]
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    boxes = tf.clip_by_value(tf.cast(example["objects"]["bbox"], tf.float32), 0.0, 1.0) * tf.stack([h, w, h, w])
    labels = tf.cast(example["objects"]["label"], tf.int32)
    # A real example has one label per box; tfds's mock data draws the two lengths apart: cut to the shorter.
    n = tf.minimum(tf.shape(boxes)[0], tf.shape(labels)[0])
    boxes, labels = boxes[:n], labels[:n]
    checks = [
        tf.debugging.assert_greater_equal(labels, 0, message=f"class id below 0; valid: 0..{num_classes - 1}"),
        tf.debugging.assert_less(labels, num_classes, message=f"class id out of range; valid: 0..{num_classes - 1}"),
    ]
    with tf.control_dependencies(checks):
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {"images": image, "bounding_boxes": {"boxes": tf.boolean_mask(boxes, keep),
                                                    "labels": tf.boolean_mask(labels, keep)}}


def check_examples(examples, num_classes: int) -> dict[str, int]:
    """Counts what :func:`to_boxes` would clip, drop or refuse in ``examples`` (raw tfds examples, numpy)."""
    counts = {"images": 0, "images_without_boxes": 0, "boxes": 0, "boxes_clipped": 0, "boxes_zero_area": 0,
              "labels_out_of_range": 0}
    for ex in examples:
        bbox = np.asarray(ex["objects"]["bbox"], np.float64).reshape(-1, 4)
        labels = np.asarray(ex["objects"]["label"]).reshape(-1)
        clipped = np.clip(bbox, 0.0, 1.0)
        counts["images"] += 1
        counts["boxes"] += len(bbox)
        counts["images_without_boxes"] += int(len(bbox) == 0)
        counts["boxes_clipped"] += int(np.any(clipped != bbox, axis=1).sum())
        counts["boxes_zero_area"] += int(((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])).sum())
        counts["labels_out_of_range"] += int(((labels < 0) | (labels >= num_classes)).sum())
    return counts


def augmentation_layers(image_size: int, training: bool, seed: int | None = None) -> list[keras.layers.Layer]:
    """Keras's box-aware layers: resize-and-pad to ``image_size`` squared, and a horizontal flip when ``training``."""
    out: list[keras.layers.Layer] = [keras.layers.Resizing(image_size, image_size, pad_to_aspect_ratio=True,
                                                           bounding_box_format=BOX_FORMAT)]
    if training:
        out.append(keras.layers.RandomFlip("horizontal", bounding_box_format=BOX_FORMAT, seed=seed))
    return out


def pad_boxes(boxes: tf.Tensor, labels: tf.Tensor, max_boxes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``[n, 4]`` boxes and ``[n]`` labels as ``[max_boxes, 4]`` / ``[max_boxes]``, padded with -1 (more than ``max_boxes`` fails)."""
    n = tf.shape(labels)[0]
    check = tf.debugging.assert_less_equal(n, max_boxes, message=f"an image holds more boxes than max_boxes={max_boxes}")
    with tf.control_dependencies([check]):
        boxes = tf.pad(boxes, [[0, max_boxes - n], [0, 0]], constant_values=-1.0)
        labels = tf.pad(labels, [[0, max_boxes - n]], constant_values=-1)
    return tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(labels, [max_boxes])


def detection_pipeline(ds: tf.data.Dataset, info: DetectionInfo, image_size: int, batch_size: int, *,
                       training: bool, channels: int = 3, max_boxes: int = 100, seed: int = 0,
                       shuffle_buffer: int = 0, max_examples: int = 0,
                       ) -> tf.data.Dataset:
    """Batches of ``(images, {"boxes", "labels"})`` in keras-hub's format (see the module doc).

    ``channels``: what the backbone takes (1: the images are converted to grey).
    """
    if channels not in (1, 3):
        raise UsageError(f"channels={channels} is invalid; the detection pipeline makes 1- or 3-channel images")
    if max_examples:
        ds = ds.take(max_examples)
    if training and shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    layers = augmentation_layers(image_size, training, seed)
    # Grey images of an RGB dataset take the mean of its channel statistics.
    mean = tf.constant(np.mean(info.mean) if channels == 1 else info.mean, tf.float32)
    std = tf.constant(np.mean(info.std) if channels == 1 else info.std, tf.float32)

    def convert(example):
        x = to_boxes(example, info.num_classes)
        x["images"] = tf.cast(x["images"], tf.float32)
        for layer in layers:
            x = layer(x, training=training) if isinstance(layer, keras.layers.RandomFlip) else layer(x)
        images = x["images"]
        if channels == 1 and images.shape[-1] == 3:
            images = tf.image.rgb_to_grayscale(images)
        images = (images / 255.0 - mean) / std
        boxes, labels = pad_boxes(x["bounding_boxes"]["boxes"], tf.cast(x["bounding_boxes"]["labels"], tf.int32),
                                  max_boxes)
        # Keras's layers move padding rows too; padding stays -1 (a mask, no box arithmetic).
        boxes = tf.where(labels[:, None] >= 0, boxes, -1.0)
        images = tf.ensure_shape(images, [image_size, image_size, channels])
        return images, {"boxes": boxes, "labels": labels}

    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)

