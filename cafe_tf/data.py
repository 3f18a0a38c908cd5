"""Datasets and input pipelines: one API for every dataset cafe-tf trains on.

``load(name, split)`` returns a ``tf.data.Dataset`` of ``(image uint8 HxWxC, label int64)`` and a
:class:`DatasetInfo`; ``input_pipeline(ds, info, train, batch_size)`` turns it into normalised,
augmented, shuffled, batched and prefetched batches, sharded under ``tf.distribute``.

Every dataset goes through tensorflow-datasets (tfds) with a ``data_dir``:

* ``data_dir`` is the argument, else ``$CAFE_TF_DATA_DIR``, else ``~/tensorflow_datasets``.
* Nothing is downloaded unless ``download=True`` (``--config.data.download=True``). Without it, a
  dataset that is not prepared in ``data_dir`` fails at once, before tfds would retry the network
  for minutes, naming the dataset, the folder and how to prepare it.
* ``fashion_mnist`` (the offline default) is built by tfds from local IDX files: Debian's
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, or ``$CAFE_TF_FASHION_MNIST_DIR``).
  The builder's download URL is pointed at that folder, and tfds copies the files instead of
  fetching them. tfds keys its recorded checksums by URL, so a local URL has none registered and
  Debian's re-gzipped files (whose bytes differ from the upstream ones) are accepted without
  ``register_checksums`` and without touching the installed tfds package; we validate the IDX
  headers and sizes ourselves instead, which is what the checksum protected.

Splits (the search must never see ``test``):

* ``train``: the official training split minus the held-out validation examples;
* ``validation``: the last ``validation_size`` examples of the official training split (a
  deterministic carve-out; CelebA has an official validation split, which is used instead);
* ``train_full``: ``train`` + ``validation``, for final retraining once the search is done;
* ``test``: the official test split (ImageNet and COCO: the official validation split, as their
  test labels are not public).

Tasks: ``fashion_mnist``, ``cifar10``, ``cifar100`` and ``imagenet2012`` are single-label
classification. ``celeb_a`` is the face-attribute task: by default all 40 binary attributes at once
(multi-label, label = int64 vector of 40 zeros/ones, scored by mean per-attribute accuracy), or one
attribute as a 2-class problem with ``attribute="Smiling"``. ``coco/2017`` loads detection examples
``(image, {"bbox", "label"})`` only; :func:`input_pipeline` refuses it (no detection pipeline yet).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import tensorflow as tf

ENV_DATA_DIR = "CAFE_TF_DATA_DIR"
ENV_FASHION_MNIST_DIR = "CAFE_TF_FASHION_MNIST_DIR"
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

SPLITS = ("train", "validation", "train_full", "test")
AUGMENTATIONS = ("auto", "none", "flip", "crop", "crop_flip", "inception")
# What images a model is fed (config.model.input_scaling; DatasetInfo.normalization gives the formula).
INPUT_SCALINGS = ("mean_std", "unit", "raw", "model")

# Pad-then-crop margin of the CIFAR recipe (He et al. 2016), also used for 28x28 data.
CROP_PADDING = 4
# Eval resize of ImageNet-like data: resize the shorter side to size / 0.875, centre crop size.
CENTER_CROP_FRACTION = 0.875


class DatasetError(ValueError):
    """A dataset is unknown, not prepared, or its source files are missing or corrupt."""


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Static facts about one dataset name (what tfds cannot tell us)."""

    tfds_name: str
    task: str  # "classification" | "multilabel" | "detection"
    mean: tuple[float, ...]  # per channel, of images scaled to [0, 1]
    std: tuple[float, ...]
    augment: str  # what augment="auto" means for this dataset
    validation_size: int  # carved from the end of train; 0 = the dataset has its own split
    test_split: str  # tfds split used as our "test"
    image_size: int | None  # default training resolution; None = native
    prepare_hint: str  # how to prepare it when it is missing


# Normalisation constants are the per-channel mean / std of the training images in [0, 1]
# (Fashion-MNIST: measured on the 60,000 training images, tested in tests/test_data.py; CIFAR:
# the widely used measured values, *not* the common 0.2023/0.1994/0.2010 std typo; ImageNet: the
# torchvision constants; CelebA: the 0.5 / 0.5 convention of face-attribute work, not measured).
_CATALOG: dict[str, _Spec] = {
    "fashion_mnist": _Spec(
        "fashion_mnist", "classification", (0.2860,), (0.3530,), "flip", 5000, "test", None,
        "it is built offline from Debian's dataset-fashion-mnist files "
        f"(`apt-get install dataset-fashion-mnist`, or set ${ENV_FASHION_MNIST_DIR})",
    ),
    "cifar10": _Spec(
        "cifar10", "classification", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "crop_flip", 5000, "test", None, "",
    ),
    "cifar100": _Spec(
        "cifar100", "classification", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "crop_flip", 5000, "test", None, "",
    ),
    "imagenet2012": _Spec(
        "imagenet2012", "classification", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
        "inception", 10000, "validation", 224,
        "ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ first",
    ),
    "celeb_a": _Spec(
        "celeb_a", "multilabel", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "flip", 0, "test", 128, "",
    ),
    "coco/2017": _Spec(
        "coco/2017", "detection", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "none", 5000,
        "validation", None, "",
    ),
}

# Fashion-MNIST IDX files: (file name, IDX magic, dims after the count, number of items).
_FASHION_MNIST_FILES = (
    ("train-images-idx3-ubyte.gz", 2051, (28, 28), 60000),
    ("train-labels-idx1-ubyte.gz", 2049, (), 60000),
    ("t10k-images-idx3-ubyte.gz", 2051, (28, 28), 10000),
    ("t10k-labels-idx1-ubyte.gz", 2049, (), 10000),
)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a pipeline need to know about a loaded dataset.

    ``split_sizes`` maps our split names to example counts; it is empty when tfds does not know
    them (e.g. under ``tfds.testing.mock_data``). ``image_shape`` has ``None`` for variable sizes.
    """

    name: str
    task: str
    num_classes: int
    image_shape: tuple[int | None, int | None, int]
    split_sizes: Mapping[str, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_augment: str
    default_image_size: int | None
    label_names: tuple[str, ...]
    data_dir: str
    validation_size: int
    attribute: str | None = None  # celeb_a only: the single attribute, or None for all 40
    # What the model is fed (config.model.input_scaling): the pipeline applies it, deploy records it.
    input_scaling: str = "mean_std"

    def normalization(self) -> dict[str, Any]:
        """``x = (pixel * scale - mean) / std`` of ``input_scaling`` as a JSON-able dict (deploy records it).

        ``mean_std``: the dataset's mean/std of [0, 1] pixels; ``unit``: [0, 1]; ``raw`` and ``model``:
        0..255 as they are (``model``: the model's own Rescaling/Normalization layers scale them).
        """
        return scaled_normalization(self.mean, self.std, self.input_scaling)


def scaled_normalization(mean: tuple[float, ...], std: tuple[float, ...], input_scaling: str) -> dict[str, Any]:
    """``{"scale", "mean", "std", "input_scaling"}`` of ``x = (pixel * scale - mean) / std`` for a
    dataset's per-channel ``mean`` / ``std`` (of [0, 1] pixels) under ``input_scaling``."""
    if input_scaling not in INPUT_SCALINGS:
        raise DatasetError(f"input_scaling {input_scaling!r} is invalid; valid values: {list(INPUT_SCALINGS)}")
    zero, one = [0.0] * len(mean), [1.0] * len(std)
    scale = 1.0 if input_scaling in ("raw", "model") else 1.0 / 255.0
    mean_std = input_scaling == "mean_std"
    return {"scale": scale, "mean": list(mean) if mean_std else zero, "std": list(std) if mean_std else one,
            "input_scaling": input_scaling}


def names() -> list[str]:
    """The dataset names :func:`load` accepts."""
    return sorted(_CATALOG)


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of dataset ``name`` for images scaled to [0, 1]."""
    spec = _spec(name)
    return spec.mean, spec.std


def default_data_dir() -> str:
    """``$CAFE_TF_DATA_DIR`` if set, else ``~/tensorflow_datasets`` (tfds's own default)."""
    return os.path.expanduser(os.environ.get(ENV_DATA_DIR) or "~/tensorflow_datasets")


def fashion_mnist_source_dir() -> str:
    """Where the Fashion-MNIST IDX files are read from: ``$CAFE_TF_FASHION_MNIST_DIR`` or Debian's folder."""
    return os.environ.get(ENV_FASHION_MNIST_DIR) or DEFAULT_FASHION_MNIST_DIR


def _spec(name: str) -> _Spec:
    if name not in _CATALOG:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {names()}")
    return _CATALOG[name]


def _tfds():
    # Imported lazily: tfds is slow to import and most programs need it only once.
    import tensorflow_datasets as tfds

    return tfds


# --------------------------------------------------------------------------------------------
# Loading


def load(
    name: str,
    split: str,
    data_dir: str | None = None,
    download: bool = False,
    *,
    validation_size: int | None = None,
    attribute: str | None = None,
    shuffle_files: bool = False,
    decode_images: bool = True,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Loads split ``split`` of dataset ``name`` as ``(image uint8 HxWxC, label int64)`` pairs.

    ``validation_size`` overrides the dataset's held-out size (see the module doc); ``attribute``
    picks one CelebA attribute; ``decode_images=False`` yields JPEG bytes (ImageNet's fast path:
    :func:`input_pipeline` then decodes only the crop).
    """
    spec = _spec(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} for dataset {name!r}; valid splits: {list(SPLITS)}")
    if attribute is not None and name != "celeb_a":
        raise DatasetError(f"attribute={attribute!r} applies to celeb_a only, not to {name!r}")
    if not decode_images and name != "imagenet2012":
        raise DatasetError(f"decode_images=False is supported for imagenet2012 only, not {name!r}")
    data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    builder = _prepared_builder(name, spec, data_dir, download)
    info = _dataset_info(name, spec, builder, data_dir, validation_size, attribute)
    tfds = _tfds()
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    ds = builder.as_dataset(
        split=_tfds_split(spec, split, info.validation_size),
        shuffle_files=shuffle_files,
        decoders=decoders,
        read_config=tfds.ReadConfig(try_autocache=False),
    )
    return ds.map(_example_to_pair(info), num_parallel_calls=tf.data.AUTOTUNE), info


def _prepared_builder(name: str, spec: _Spec, data_dir: str, download: bool):
    """Returns a tfds builder whose data is prepared in ``data_dir``, or raises at once."""
    tfds = _tfds()
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if name == "fashion_mnist":
        # Building from local files needs no network, so it is not a "download".
        prepare_fashion_mnist(data_dir)
        return tfds.builder(spec.tfds_name, data_dir=data_dir)
    if not download:
        hint = f"; {spec.prepare_hint}" if spec.prepare_hint else ""
        raise DatasetError(
            f"dataset {name!r} is not prepared in data_dir {data_dir!r} (looked for {builder.data_dir}){hint}. "
            f"Prepare it with --config.data.download=True (load(..., download=True)) or "
            f"`tfds build {spec.tfds_name} --data_dir {data_dir}`, or point --config.data.data_dir "
            f"(or ${ENV_DATA_DIR}) at a folder that holds it."
        )
    if spec.prepare_hint and name == "imagenet2012":
        manual = os.path.join(data_dir, "downloads", "manual")
        if not os.path.isdir(manual):
            raise DatasetError(f"dataset {name!r} cannot be downloaded: {spec.prepare_hint} (missing {manual})")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder


def _dataset_info(name, spec, builder, data_dir, validation_size, attribute) -> DatasetInfo:
    features = builder.info.features
    image_shape = tuple(features["image"].shape)
    if spec.task == "multilabel":
        attributes = tuple(features["attributes"].keys())
        if attribute is None:
            task, num_classes, label_names = "multilabel", len(attributes), attributes
        elif attribute in attributes:
            task, num_classes, label_names = "classification", 2, (f"not_{attribute}", attribute)
        else:
            raise DatasetError(f"unknown celeb_a attribute {attribute!r}; valid attributes: {list(attributes)}")
    elif spec.task == "detection":
        label = features["objects"]["label"]
        task, num_classes, label_names = "detection", label.num_classes, tuple(label.names)
    else:
        label = features["label"]
        task, num_classes, label_names = "classification", label.num_classes, tuple(label.names)

    carve = spec.validation_size if validation_size is None else int(validation_size)
    if spec.validation_size == 0 and validation_size not in (None, 0):
        raise DatasetError(
            f"{name!r} has an official validation split; validation_size must be left unset, got {validation_size!r}"
        )
    if spec.validation_size and carve < 1:
        raise DatasetError(f"validation_size for {name!r} must be >= 1, got {validation_size!r}")
    sizes: dict[str, int] = {}
    splits = builder.info.splits  # empty when tfds does not know them (mocked data)
    if "train" in splits:
        n_train = splits["train"].num_examples
        if carve >= n_train:
            raise DatasetError(
                f"validation_size {carve} for {name!r} must be smaller than its training split ({n_train} examples)"
            )
        if spec.validation_size:
            sizes.update(train=n_train - carve, validation=carve, train_full=n_train)
        elif "validation" in splits:
            n_val = splits["validation"].num_examples
            sizes.update(train=n_train, validation=n_val, train_full=n_train + n_val)
        if spec.test_split in splits:
            sizes["test"] = splits[spec.test_split].num_examples
    return DatasetInfo(
        name=name,
        task=task,
        num_classes=int(num_classes),
        image_shape=image_shape,  # type: ignore[arg-type]
        split_sizes=sizes,
        mean=spec.mean,
        std=spec.std,
        default_augment=spec.augment,
        default_image_size=spec.image_size,
        label_names=label_names,
        data_dir=data_dir,
        validation_size=carve,
        attribute=attribute,
    )


def _tfds_split(spec: _Spec, split: str, validation_size: int) -> str:
    if spec.validation_size == 0:  # official validation split (CelebA)
        return {"train": "train", "validation": "validation", "train_full": "train+validation", "test": spec.test_split}[split]
    # tfds resolves negative absolute slices against the real split size, in file order.
    return {
        "train": f"train[:-{validation_size}]",
        "validation": f"train[-{validation_size}:]",
        "train_full": "train",
        "test": spec.test_split,
    }[split]


def _example_to_pair(info: DatasetInfo):
    if info.task == "detection":
        return lambda ex: (ex["image"], {"bbox": ex["objects"]["bbox"], "label": ex["objects"]["label"]})
    if info.name == "celeb_a":
        if info.attribute is None:
            names_ = info.label_names
            return lambda ex: (ex["image"], tf.stack([tf.cast(ex["attributes"][a], tf.int64) for a in names_]))
        attr = info.attribute
        return lambda ex: (ex["image"], tf.cast(ex["attributes"][attr], tf.int64))
    return lambda ex: (ex["image"], tf.cast(ex["label"], tf.int64))


# --------------------------------------------------------------------------------------------
# Fashion-MNIST from local IDX files


def validate_idx(path: str, magic: int, item_dims: tuple[int, ...], count: int) -> None:
    """Checks that ``path`` is a complete gzipped IDX file with this magic, item shape and count.

    Raises:
      DatasetError: naming the file and what is wrong with it.
    """
    if not os.path.isfile(path):
        raise DatasetError(
            f"Fashion-MNIST file {path!r} is missing; install Debian's dataset-fashion-mnist "
            f"(`apt-get install dataset-fashion-mnist`) or set ${ENV_FASHION_MNIST_DIR} to a folder holding it"
        )
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"Fashion-MNIST file {path!r} is truncated or not valid gzip: {e}") from None
    header_len = 4 + 4 * (1 + len(item_dims))
    if len(data) < header_len:
        raise DatasetError(f"Fashion-MNIST file {path!r} is too short ({len(data)} bytes) to hold an IDX header")
    found_magic, *dims = struct.unpack(f">{1 + 1 + len(item_dims)}I", data[:header_len])
    if found_magic != magic:
        raise DatasetError(f"Fashion-MNIST file {path!r} has IDX magic {found_magic}; expected {magic}")
    if tuple(dims) != (count, *item_dims):
        raise DatasetError(f"Fashion-MNIST file {path!r} has dimensions {tuple(dims)}; expected {(count, *item_dims)}")
    expected = header_len + count * int(_prod(item_dims))
    if len(data) != expected:
        raise DatasetError(
            f"Fashion-MNIST file {path!r} holds {len(data)} bytes after decompression; expected {expected}"
        )


def _prod(dims: tuple[int, ...]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    # Serialises concurrent builds into one data_dir (parallel test workers, several programs).
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_fashion_mnist(data_dir: str | None = None, source_dir: str | None = None) -> str:
    """Builds tfds's ``fashion_mnist`` into ``data_dir`` from local IDX files, offline; returns its folder.

    A no-op when already prepared. On failure nothing half-built is left in ``data_dir``.
    """
    tfds = _tfds()
    data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    source_dir = os.path.abspath(source_dir or fashion_mnist_source_dir())
    dataset_root = os.path.join(data_dir, "fashion_mnist")
    with _file_lock(os.path.join(data_dir, ".fashion_mnist.lock")):
        builder = tfds.builder("fashion_mnist", data_dir=data_dir)
        if builder.is_prepared():
            return str(builder.data_dir)
        for filename, magic, dims, count in _FASHION_MNIST_FILES:
            validate_idx(os.path.join(source_dir, filename), magic, dims, count)
        root_existed = os.path.isdir(dataset_root)
        # A killed earlier build leaves tfds's "incomplete.*" folders behind; they are never valid.
        if root_existed:
            for entry in os.listdir(dataset_root):
                if entry.startswith("incomplete."):
                    shutil.rmtree(os.path.join(dataset_root, entry), ignore_errors=True)
        # An instance attribute, so the class (and every other builder) keeps the upstream URL.
        builder.URL = source_dir + "/"
        try:
            with tempfile.TemporaryDirectory(prefix=".fashion_mnist_downloads.", dir=data_dir) as downloads:
                builder.download_and_prepare(
                    download_dir=downloads,
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False),
                )
        except BaseException:
            if not root_existed:
                shutil.rmtree(dataset_root, ignore_errors=True)
            raise
        return str(builder.data_dir)


# --------------------------------------------------------------------------------------------
# Input pipeline


def resolve_augment(info: DatasetInfo, augment: str) -> str:
    """Maps ``"auto"`` to the dataset's default augmentation and validates the name."""
    if augment not in AUGMENTATIONS:
        raise DatasetError(f"unknown augment {augment!r}; valid: {list(AUGMENTATIONS)}")
    return info.default_augment if augment == "auto" else augment


def resolve_image_size(info: DatasetInfo, image_size: int | None) -> tuple[int, int, int]:
    """The (height, width, channels) :func:`input_pipeline` produces for ``image_size`` (None: default)."""
    size = image_size or info.default_image_size
    channels = info.image_shape[-1]
    if size:
        return (int(size), int(size), channels)
    if info.image_shape[0] is None or info.image_shape[1] is None:
        raise DatasetError(f"{info.name!r} has variable image sizes; pass image_size (e.g. 224)")
    return (int(info.image_shape[0]), int(info.image_shape[1]), channels)


def per_replica_batch_size(batch_size: int, input_context: tf.distribute.InputContext | None) -> int:
    """The batch each input pipeline batches by, for a global ``batch_size`` under ``input_context``."""
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size!r}")
    if input_context is None:
        return batch_size
    replicas = input_context.num_replicas_in_sync
    if batch_size % replicas:
        raise DatasetError(
            f"global batch_size {batch_size} must be divisible by the {replicas} replicas in sync; "
            f"use a multiple of {replicas}"
        )
    return batch_size // replicas


def steps_per_epoch(num_examples: int, batch_size: int, num_input_pipelines: int = 1) -> int:
    """Full global batches per epoch when every one of ``num_input_pipelines`` reads its own shard."""
    per_pipeline_examples = num_examples // num_input_pipelines  # the smallest shard decides
    per_pipeline_batch = batch_size // num_input_pipelines
    return per_pipeline_examples // per_pipeline_batch


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for ``epoch``'s shuffle and augmentation, so each epoch's order is reproducible alone."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**31 - 1)


def input_pipeline(
    ds: tf.data.Dataset,
    info: DatasetInfo,
    train: bool,
    batch_size: int,
    *,
    image_size: int | None = None,
    augment: str = "auto",
    shuffle_buffer: int = 10_000,
    seed: int | None = None,
    epoch: int = 0,
    skip_batches: int = 0,
    drop_remainder: bool | None = None,
    cache: bool = False,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches of ``(float32 normalised images, int64 labels)`` from a :func:`load` dataset, one pass.

    ``batch_size`` is the global batch; under ``input_context`` (from
    ``strategy.distribute_datasets_from_function``) each pipeline reads its shard and batches by
    the per-replica size. With ``seed``, the order and augmentation of epoch ``epoch`` are a pure
    function of ``(seed, epoch)``, so ``skip_batches`` global steps can be skipped to resume
    exactly mid-epoch. ``drop_remainder`` defaults to ``train``. Training only shuffles and augments.
    """
    if info.task == "detection":
        raise DatasetError(
            f"input_pipeline builds classification batches; {info.name!r} is a detection dataset "
            "(load() yields its boxes, but there is no detection pipeline yet)"
        )
    augment = resolve_augment(info, augment) if train else "none"
    out_shape = resolve_image_size(info, image_size)
    local_batch = per_replica_batch_size(batch_size, input_context)
    pipelines, pipeline_id = (1, 0) if input_context is None else (
        input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle_buffer < 1:
        raise DatasetError(f"shuffle_buffer must be >= 1, got {shuffle_buffer!r}")
    if skip_batches < 0:
        raise DatasetError(f"skip_batches must be >= 0, got {skip_batches!r}")
    if drop_remainder is None:
        drop_remainder = train

    if pipelines > 1:
        ds = ds.shard(pipelines, pipeline_id)
    if cache:
        ds = ds.cache()
    base_seed = None
    if train:
        if seed is None:
            base_seed = int(tf.random.uniform((), 0, 2**31 - 1, dtype=tf.int64))
            ds = ds.shuffle(shuffle_buffer, reshuffle_each_iteration=True)
        else:
            base_seed = epoch_seed(seed, epoch)
            # One fixed order per (seed, epoch): a resumed run sees the same order as an unbroken one.
            ds = ds.shuffle(shuffle_buffer, seed=base_seed, reshuffle_each_iteration=False)
    # Position-keyed augmentation seeds: element i of the epoch always gets the same crop and flip.
    ds = ds.enumerate()
    if skip_batches:
        # Skip before decoding / augmenting: only the shuffle buffer has to be filled again.
        ds = ds.skip(skip_batches * (batch_size // pipelines))
    preprocess = _preprocess_fn(info, augment, out_shape, base_seed, pipeline_id)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def _preprocess_fn(info: DatasetInfo, augment: str, out_shape, base_seed: int | None, pipeline_id: int):
    height, width, channels = out_shape
    norm = info.normalization()
    divisor = round(1.0 / norm["scale"])  # 255 or 1: dividing keeps today's mean_std values bit for bit
    mean = tf.constant(norm["mean"], tf.float32)
    std = tf.constant(norm["std"], tf.float32)
    inception_like = info.default_augment == "inception"
    celeb_a = info.name == "celeb_a"

    def preprocess(index, example):
        image, label = example
        seed = tf.stack([tf.constant(base_seed or 0, tf.int64), index * 1024 + pipeline_id])
        seeds = tf.random.experimental.stateless_split(seed, 3)
        if image.dtype == tf.string:  # JPEG bytes: decode only what the crop keeps
            if augment == "inception":
                image = _inception_crop_jpeg(image, (height, width), seeds[0])
            else:
                image = _center_crop(tf.io.decode_jpeg(image, channels=channels), (height, width))
        elif augment == "inception":
            image = _inception_crop(image, (height, width), seeds[0])
        elif celeb_a:
            image = _celeb_a_crop(image, (height, width))
        elif inception_like:
            image = _center_crop(image, (height, width))
        elif image.shape[0] != height or image.shape[1] != width:
            # Small fixed-size data (CIFAR, Fashion-MNIST) asked for another size: plain resize.
            image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        if augment in ("crop", "crop_flip"):
            padded = tf.pad(image, [[CROP_PADDING, CROP_PADDING], [CROP_PADDING, CROP_PADDING], [0, 0]])
            image = tf.image.stateless_random_crop(padded, (height, width, channels), seed=seeds[1])
        if augment in ("flip", "crop_flip", "inception"):
            image = tf.image.stateless_random_flip_left_right(image, seed=seeds[2])
        image = tf.ensure_shape(image, (height, width, channels))
        image = (tf.cast(image, tf.float32) / divisor - mean) / std
        return image, label

    return preprocess


def _center_crop(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Resizes the shorter side to size / 0.875 and crops the centre (the standard ImageNet eval)."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    target = max(size) / CENTER_CROP_FRACTION
    scale = target / tf.minimum(h, w)
    new_h = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), size[0])
    new_w = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), size[1])
    image = tf.image.resize(image, (new_h, new_w), method="bilinear", antialias=True)
    top, left = (new_h - size[0]) // 2, (new_w - size[1]) // 2
    image = image[top : top + size[0], left : left + size[1]]
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _celeb_a_crop(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    # Aligned CelebA faces (218x178): take the central 178x178 square, then resize.
    side = tf.minimum(tf.shape(image)[0], tf.shape(image)[1])
    top = (tf.shape(image)[0] - side) // 2
    left = (tf.shape(image)[1] - side) // 2
    image = image[top : top + side, left : left + side]
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _distorted_box(image_shape: tf.Tensor, seed: tf.Tensor):
    # Inception-style crop: 8%-100% of the area, aspect ratio 3/4-4/3 (Szegedy et al. 2015).
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, box_size


def _inception_crop(image: tf.Tensor, size: tuple[int, int], seed: tf.Tensor) -> tf.Tensor:
    begin, box_size = _distorted_box(tf.shape(image), seed)
    crop = tf.slice(image, begin, box_size)
    crop = tf.image.resize(crop, size, method="bilinear", antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8)


def _inception_crop_jpeg(jpeg: tf.Tensor, size: tuple[int, int], seed: tf.Tensor) -> tf.Tensor:
    begin, box_size = _distorted_box(tf.io.extract_jpeg_shape(jpeg), seed)
    window = tf.stack([begin[0], begin[1], box_size[0], box_size[1]])
    crop = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
    crop = tf.image.resize(crop, size, method="bilinear", antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8)


# --------------------------------------------------------------------------------------------
# Data sources: what a training loop, the search and the programs read from a ``data`` section


@dataclasses.dataclass(frozen=True)
class DataSource:
    """What a loop trains and evaluates on.

    ``make_train(epoch, skip_batches, input_context)`` returns epoch ``epoch``'s batches (one pass,
    per-replica batch size, ``skip_batches`` global steps already done); ``make_eval[split]
    (input_context)`` an eval split's batches. Both are called by
    ``strategy.distribute_datasets_from_function``.
    """

    info: DatasetInfo
    image_shape: tuple[int, int, int]
    train_examples: int
    global_batch: int
    make_train: Callable[[int, int, tf.distribute.InputContext | None], tf.data.Dataset]
    make_eval: Mapping[str, Callable[[tf.distribute.InputContext | None], tf.data.Dataset]]


def _num_examples(ds: tf.data.Dataset, info: DatasetInfo, split: str) -> int:
    if split in info.split_sizes:
        return int(info.split_sizes[split])
    n = int(ds.cardinality())  # known for mocked data, unknown (-2) for some sources
    if n < 0:
        raise DatasetError(f"cannot tell how many examples split {split!r} of {info.name!r} has")
    return n


def make_data_source(data: Any, seed: int, eval_splits: Sequence[str] = ("validation", "test"),
                     drop_eval_remainder: bool = False, input_scaling: str = "mean_std") -> DataSource:
    """Builds the :class:`DataSource` the ``data`` config section describes (see cafe_tf.config), its
    images scaled as ``input_scaling`` (``config.model.input_scaling``) says."""
    load_kwargs = dict(
        data_dir=data.data_dir or None,
        download=data.download,
        validation_size=None if data.validation_size < 0 else data.validation_size,
        attribute=data.attribute or None,
    )
    train_ds, info = load(data.name, "train", **load_kwargs)
    info = dataclasses.replace(info, input_scaling=input_scaling)  # the pipelines read it from info
    n_train = _num_examples(train_ds, info, "train")
    if data.max_train_examples:
        n_train = min(n_train, data.max_train_examples)
        train_ds = train_ds.take(n_train)
    if data.cache:
        train_ds = train_ds.cache()  # one cache shared by every epoch's pipeline
    image_size = data.image_size or None
    image_shape = resolve_image_size(info, image_size)
    eval_batch = data.eval_batch_size or data.batch_size

    def make_train(epoch: int, skip_batches: int, ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
        return input_pipeline(
            train_ds, info, True, data.batch_size, image_size=image_size, augment=data.augment,
            shuffle_buffer=data.shuffle_buffer, seed=seed, epoch=epoch, skip_batches=skip_batches,
            drop_remainder=True, input_context=ctx,
        )

    def eval_maker(split: str):
        ds, _ = load(data.name, split, **load_kwargs)
        if data.max_eval_examples:
            ds = ds.take(data.max_eval_examples)
        if data.cache:
            ds = ds.cache()

        def make_eval(ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
            return input_pipeline(ds, info, False, eval_batch, image_size=image_size,
                                  drop_remainder=drop_eval_remainder, input_context=ctx)

        return make_eval

    return DataSource(info=info, image_shape=image_shape, train_examples=n_train, global_batch=data.batch_size,
                      make_train=make_train, make_eval={split: eval_maker(split) for split in eval_splits})


def calibration_batches(data: DataSource, num_examples: int) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """The first ``num_examples`` examples of epoch 0's seeded training pipeline, for BN recalibration.

    Augmented training images, as AutoSlim and CafeNet recalibrate on the training distribution;
    the pipeline's order depends only on the seed, so every candidate sees the same images.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples={num_examples!r} is invalid; BN recalibration needs >= 1 training image")
    return take_batches(lambda ctx: data.make_train(0, 0, ctx), num_examples)


def take_batches(make: Callable[[Any], tf.data.Dataset], max_examples: int) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """The first ``max_examples`` examples (0 = all) of a pipeline ``make(None)``, as in-memory batches."""
    out, seen = [], 0
    for images, labels in make(None):
        if max_examples and seen >= max_examples:
            break
        if max_examples and seen + int(images.shape[0]) > max_examples:
            keep = max_examples - seen
            images, labels = images[:keep], labels[:keep]
        out.append((images, labels))
        seen += int(images.shape[0])
    if not out:
        raise DatasetError("the pipeline yielded no examples; check the split and max_eval_examples")
    return out
