"""Datasets and input pipelines: one API for every dataset cafe-tf trains on.

``load(name, split)`` returns a ``tf.data.Dataset`` of ``(image uint8 HxWxC, label int64)`` and a
:class:`DatasetInfo`; ``input_pipeline(ds, info, train, batch_size)`` turns it into normalised,
augmented, shuffled, batched and prefetched batches, sharded under ``tf.distribute``.

``name`` (``config.data.name``) is a built-in name below, ``folder:PATH`` (class subfolders of
PNG/JPEG/BMP/GIF images, see :mod:`cafe_tf.image_folder`) or ``tfds:NAME[/CONFIG][:VERSION]`` (any
tfds image-classification dataset). The statistics of data that is not built in are computed on its
training split after the resize; :func:`make_data_source` keeps them in ``data.json`` in a workdir
(:func:`write_data_record`) and later stages read them back. :func:`load_data` returns a
:class:`Data` for any of these sources and for in-memory arrays or ``tf.data`` datasets, and
:meth:`Data.source` feeds it to the training loops through the same wiring as
:func:`make_data_source`. A source that cannot work raises :class:`DataSourceError` (programs exit 2).

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

import numpy as np
from absl import logging
import tensorflow as tf

from cafe_tf.errors import UsageError

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


class DataSourceError(DatasetError, UsageError):
    """A data source that cannot work as given (a usage error: programs exit 2).

    Raised for an empty or malformed image folder, one class, a class folder without images, mixed
    image sizes without ``image_size``, labels outside ``[0, num_classes)``, an undecodable file, or a
    ``tfds:`` dataset that is not prepared; the one-line message names the path and what is valid.
    """


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
    """The built-in dataset names :func:`load` accepts (besides ``folder:PATH`` and ``tfds:NAME``)."""
    return sorted(_CATALOG)


FOLDER_PREFIX = "folder:"
TFDS_PREFIX = "tfds:"


def is_builtin(name: str) -> bool:
    """Whether ``name`` is a built-in dataset (with known statistics), not ``folder:`` / ``tfds:`` data."""
    return name in _CATALOG


def canonical_name(name: str) -> str:
    """``name`` as a config can load it again from anywhere: ``folder:`` with an absolute path."""
    if name.startswith(FOLDER_PREFIX):
        return FOLDER_PREFIX + os.path.abspath(os.path.expanduser(name[len(FOLDER_PREFIX):]))
    return name


def check_name(name: str) -> str:
    """Returns ``name`` when :func:`load` accepts it: a built-in name, ``folder:PATH`` or ``tfds:NAME``.

    Raises:
      DataSourceError: naming it and what is valid.
    """
    if name in _CATALOG:
        return name
    for prefix in (FOLDER_PREFIX, TFDS_PREFIX):
        if isinstance(name, str) and name.startswith(prefix) and name[len(prefix):].strip():
            return name
    raise DataSourceError(
        f"unknown dataset {name!r}; valid: a built-in name {names()}, folder:PATH (class subfolders of images) "
        "or tfds:NAME[/CONFIG][:VERSION]")


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
    image_size: int | Sequence[int] | None = None,
    validation_split: float | None = None,
    channels: int = 0,
    seed: int = 0,
    stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Loads split ``split`` of dataset ``name`` as ``(image uint8 HxWxC, label int64)`` pairs.

    Args:
      name: a built-in name (:func:`names`), ``"folder:PATH"`` (class subfolders of PNG/JPEG/BMP/GIF
        files, see :mod:`cafe_tf.image_folder`) or ``"tfds:NAME[/CONFIG][:VERSION]"`` (any tfds
        image-classification dataset prepared in ``data_dir``, with ``image`` and ``label`` features).
      split: ``train``, ``validation``, ``train_full`` or ``test`` (which ``folder:`` and ``tfds:``
        data may lack: :class:`DataSourceError`; ``info.split_sizes`` lists the splits they have).
      data_dir: the tfds data folder (default :func:`default_data_dir`).
      download: whether tfds may download and prepare a missing dataset.
      validation_size: built-in data: the held-out size (see the module doc).
      attribute: ``celeb_a``: one attribute as a 2-class task.
      shuffle_files: tfds's file shuffling.
      decode_images: ``False`` yields JPEG bytes (ImageNet's fast path: :func:`input_pipeline` then
        decodes only the crop).
      image_size: ``folder:`` / ``tfds:``: an int or ``(height, width)`` every image is resized to
        (bilinear, no crop); default the images' own size when they all share one.
      validation_split: the fraction held out as validation where the data has no validation split
        (``None``: 0.1); for a built-in name it replaces ``validation_size`` (that fraction of the
        official training split).
      channels: ``folder:`` / ``tfds:``: 1 or 3 forces gray or RGB; 0 keeps the files' own.
      seed: ``folder:``: seeds the stratified carve-out and the files' order.
      stats: ``folder:`` / ``tfds:``: known ``(mean, std)`` of the training split (a data record),
        which skips computing them.

    Returns:
      The split's dataset and the :class:`DatasetInfo` (``folder:`` / ``tfds:``: ``mean`` / ``std``
      computed on the training split after the resize, in [0, 1] scale).

    Raises:
      DataSourceError: a data source that cannot work (see the class).
      DatasetError: an unknown name or split, or a built-in dataset that is not prepared.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} for dataset {name!r}; valid splits: {list(SPLITS)}")
    info, get_split = _open(name, data_dir, download, validation_size=validation_size, attribute=attribute,
                            shuffle_files=shuffle_files, decode_images=decode_images, image_size=image_size,
                            validation_split=validation_split, channels=channels, seed=seed, stats=stats)
    return get_split(split), info


SplitFn = Callable[[str], tf.data.Dataset]


def _open(name: str, data_dir: str | None, download: bool, *, validation_size: int | None = None,
          attribute: str | None = None, shuffle_files: bool = False, decode_images: bool = True,
          image_size: int | Sequence[int] | None = None, validation_split: float | None = None,
          channels: int = 0, seed: int = 0,
          stats: tuple[Sequence[float], Sequence[float]] | None = None) -> tuple[DatasetInfo, SplitFn]:
    """:func:`load`'s work once per source: the :class:`DatasetInfo` and a function of a split name."""
    check_name(name)
    if name.startswith(FOLDER_PREFIX):
        return _open_folder(name[len(FOLDER_PREFIX):], image_size, validation_split, channels, seed, stats)
    if name.startswith(TFDS_PREFIX):
        return _open_tfds(name[len(TFDS_PREFIX):], data_dir, download, image_size, validation_split, channels,
                          stats)
    spec = _spec(name)
    if attribute is not None and name != "celeb_a":
        raise DatasetError(f"attribute={attribute!r} applies to celeb_a only, not to {name!r}")
    if not decode_images and name != "imagenet2012":
        raise DatasetError(f"decode_images=False is supported for imagenet2012 only, not {name!r}")
    data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    builder = _prepared_builder(name, spec, data_dir, download)
    if validation_split is not None and validation_size is None and spec.validation_size \
            and "train" in builder.info.splits:
        _check_fraction(validation_split, name)
        validation_size = max(1, int(round(validation_split * builder.info.splits["train"].num_examples)))
    info = _dataset_info(name, spec, builder, data_dir, validation_size, attribute)
    tfds = _tfds()
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}

    def get_split(split: str) -> tf.data.Dataset:
        _check_split(name, split)
        ds = builder.as_dataset(
            split=_tfds_split(spec, split, info.validation_size),
            shuffle_files=shuffle_files,
            decoders=decoders,
            read_config=tfds.ReadConfig(try_autocache=False),
        )
        return ds.map(_example_to_pair(info), num_parallel_calls=tf.data.AUTOTUNE)

    if channels:
        return _with_channels(info, get_split, channels)
    return info, get_split


def _check_split(name: str, split: str, available: Sequence[str] = SPLITS) -> None:
    if split in available:
        return
    if split in SPLITS:
        raise DataSourceError(f"{name!r} has no {split!r} split; its splits: {list(available)}")
    raise DatasetError(f"unknown split {split!r} for dataset {name!r}; valid splits: {list(available)}")


def _check_fraction(fraction: float, name: str) -> None:
    if not 0.0 < float(fraction) < 1.0:
        raise DataSourceError(f"validation_split={fraction!r} for {name!r} is invalid; it must be in (0, 1)")


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
    divisor = round(1.0 / norm["scale"])  # 255 or 1: dividing keeps the mean_std values bit for bit
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
                     drop_eval_remainder: bool = False, input_scaling: str = "mean_std",
                     workdir: str | None = None) -> DataSource:
    """Builds the :class:`DataSource` the ``data`` config section describes (see cafe_tf.config), its
    images scaled as ``input_scaling`` (``config.model.input_scaling``) says.

    Args:
      data: the ``data`` config section.
      seed: seeds the training order and augmentation.
      eval_splits: the splits to evaluate; a ``test`` split the data lacks (``folder:`` without
        ``test/``) is skipped with a logged note.
      drop_eval_remainder: whether eval batches drop a partial last batch.
      input_scaling: ``config.model.input_scaling``.
      workdir: for ``folder:`` / ``tfds:`` data, where the data record (``data.json``, with the
        training split's mean / std) is reused from (this folder or its parent, when the data name
        and shapes match) or else written, so later stages do not recompute the statistics.

    Returns:
      The :class:`DataSource`.
    """
    kwargs = _section_load_kwargs(data)
    record = None
    if workdir and not is_builtin(data.name):
        record = find_data_record(workdir, data.name)
    info, get_split = _open(data.name, **kwargs, stats=None if record is None else (record["mean"], record["std"]))
    if record is not None and not record_matches(record, info):
        logging.info("data record %s does not match %s; recomputing its statistics", record["path"], data.name)
        info, get_split = _open(data.name, **kwargs)
        record = None
    if workdir and not is_builtin(data.name) and record is None:
        write_data_record(workdir, info)
    return build_source(info, get_split, data, seed, eval_splits, drop_eval_remainder, input_scaling)


def _section_load_kwargs(data: Any) -> dict[str, Any]:
    validation_split = float(data.get("validation_split", 0.0) or 0.0)
    return dict(
        data_dir=data.data_dir or None,
        download=data.download,
        validation_size=None if data.validation_size < 0 else data.validation_size,
        attribute=data.attribute or None,
        image_size=None if is_builtin(data.name) else (data.image_size or None),
        validation_split=validation_split or None,
        channels=int(data.get("channels", 0) or 0),
    )


def build_source(info: DatasetInfo, get_split: SplitFn, data: Any, seed: int,
                 eval_splits: Sequence[str] = ("validation", "test"), drop_eval_remainder: bool = False,
                 input_scaling: str = "mean_std", image_size: int | None = None) -> DataSource:
    """The :class:`DataSource` of loaded data: ``get_split(name)`` gives a split's unbatched pairs.

    The one wiring of a ``data`` section (batch sizes, augmentation, image size, ``max_*_examples``,
    cache) into :func:`input_pipeline`, shared by :func:`make_data_source` and :meth:`Data.source`.
    ``image_size`` is the size used when the section's ``image_size`` is 0.
    """
    info = dataclasses.replace(info, input_scaling=input_scaling)  # the pipelines read it from info
    train_ds = get_split("train")
    n_train = _num_examples(train_ds, info, "train")
    if data.max_train_examples:
        n_train = min(n_train, data.max_train_examples)
        train_ds = train_ds.take(n_train)
    if data.cache:
        train_ds = train_ds.cache()  # one cache shared by every epoch's pipeline
    image_size = data.image_size or image_size or None
    image_shape = resolve_image_size(info, image_size)
    eval_batch = data.eval_batch_size or data.batch_size

    def make_train(epoch: int, skip_batches: int, ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
        return input_pipeline(
            train_ds, info, True, data.batch_size, image_size=image_size, augment=data.augment,
            shuffle_buffer=data.shuffle_buffer, seed=seed, epoch=epoch, skip_batches=skip_batches,
            drop_remainder=True, input_context=ctx,
        )

    def eval_maker(split: str):
        ds = get_split(split)
        if data.max_eval_examples:
            ds = ds.take(data.max_eval_examples)
        if data.cache:
            ds = ds.cache()

        def make_eval(ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
            return input_pipeline(ds, info, False, eval_batch, image_size=image_size,
                                  drop_remainder=drop_eval_remainder, input_context=ctx)

        return make_eval

    splits = []
    for split in eval_splits:
        if split == "test" and info.split_sizes and "test" not in info.split_sizes:
            logging.warning("%s has no test split (no test/ folder): skipping its evaluation on 'test'", info.name)
            continue
        splits.append(split)
    return DataSource(info=info, image_shape=image_shape, train_examples=n_train, global_batch=data.batch_size,
                      make_train=make_train, make_eval={split: eval_maker(split) for split in splits})


# --------------------------------------------------------------------------------------------
# Data records: the statistics of non-built-in data, written once into a workdir

DATA_RECORD = "data.json"
DATA_SCHEMA = "data"
DATA_SCHEMA_VERSION = 1


def write_data_record(workdir: str, info: DatasetInfo) -> str:
    """Writes ``workdir/data.json`` (versioned, schema ``data``): what later stages need of ``info``.

    Args:
      workdir: the folder (created if missing).
      info: the loaded data's :class:`DatasetInfo`.

    Returns:
      The record's path.
    """
    from cafe_tf import io

    path = os.path.join(workdir, DATA_RECORD)
    os.makedirs(workdir, exist_ok=True)
    io.write_artifact(path, DATA_SCHEMA, DATA_SCHEMA_VERSION, {
        "name": info.name, "class_names": list(info.label_names), "image_shape": list(info.image_shape),
        "mean": list(info.mean), "std": list(info.std), "split_sizes": dict(info.split_sizes),
    })
    return path


def read_data_record(path: str) -> dict[str, Any]:
    """Reads a ``data.json`` written by :func:`write_data_record` (``path``: the file or its folder).

    Raises:
      cafe_tf.io.ArtifactError: naming the file and what is wrong with it.
    """
    from cafe_tf import io

    if os.path.isdir(path):
        path = os.path.join(path, DATA_RECORD)

    def validate(obj: dict[str, Any]) -> None:
        if len(obj["mean"]) != len(obj["std"]) or len(obj["mean"]) != obj["image_shape"][-1]:
            raise ValueError(f"mean {obj['mean']} and std {obj['std']} must have one value per channel")

    record = io.read_artifact(path, DATA_SCHEMA, (DATA_SCHEMA_VERSION,),
                              ("name", "class_names", "image_shape", "mean", "std", "split_sizes"), validate)
    record["path"] = path
    return record


def find_data_record(workdir: str, name: str) -> dict[str, Any] | None:
    """The data record of data ``name`` in ``workdir`` or its parent folder (a later stage's), or None."""
    for folder in (workdir, os.path.dirname(os.path.abspath(workdir))):
        if os.path.isfile(os.path.join(folder, DATA_RECORD)):
            record = read_data_record(folder)
            if record["name"] == canonical_name(name):
                return record
    return None


def record_matches(record: Mapping[str, Any], info: DatasetInfo) -> bool:
    """Whether a data record describes ``info``'s data (name, classes, image shape and split sizes)."""
    return (record["name"] == info.name and list(record["class_names"]) == list(info.label_names)
            and list(record["image_shape"]) == list(info.image_shape)
            and dict(record["split_sizes"]) == dict(info.split_sizes))


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


# --------------------------------------------------------------------------------------------
# folder: and tfds: sources


def _info(name: str, class_names: Sequence[str], shape: tuple[int, int, int], sizes: Mapping[str, int],
          stats: tuple[Sequence[float], Sequence[float]], data_dir: str) -> DatasetInfo:
    return DatasetInfo(
        name=name, task="classification", num_classes=len(class_names), image_shape=tuple(shape),
        split_sizes=dict(sizes), mean=tuple(float(m) for m in stats[0]), std=tuple(float(v) for v in stats[1]),
        default_augment="flip", default_image_size=None, label_names=tuple(str(c) for c in class_names),
        data_dir=data_dir, validation_size=int(sizes.get("validation", 0)),
    )


def _checked_stats(stats, channels: int, name: str):
    if stats is None:
        return None
    mean, std = tuple(stats[0]), tuple(stats[1])
    if len(mean) != channels or len(std) != channels:
        return None  # recorded for other channels: recompute
    return mean, std


def _open_folder(path: str, image_size, validation_split, channels, seed, stats) -> tuple[DatasetInfo, SplitFn]:
    from cafe_tf import image_folder

    index = image_folder.scan(path, validation_split, seed)
    name = FOLDER_PREFIX + index.root
    shape = image_folder.resolve_shape(index, image_size, channels)
    sizes = {split: len(paths) for split, (paths, _) in index.files.items()}
    sizes["train_full"] = sizes["train"] + sizes["validation"]
    available = [s for s in SPLITS if s in sizes]

    def get_split(split: str) -> tf.data.Dataset:
        _check_split(name, split, available)
        if split == "train_full":
            return get_split("train").concatenate(get_split("validation"))
        paths, labels = index.files[split]
        return image_folder.split_dataset(paths, labels, shape)

    stats = _checked_stats(stats, shape[-1], name)
    if stats is None:
        stats = image_folder.channel_stats(get_split("train"), shape[-1], f"folder {index.root!r}")
    return _info(name, index.class_names, shape, sizes, stats, index.root), get_split


def _open_tfds(spec: str, data_dir, download, image_size, validation_split, channels, stats):
    from cafe_tf import image_folder

    tfds = _tfds()
    name = TFDS_PREFIX + spec
    data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    try:
        builder = tfds.builder(spec, data_dir=data_dir)
    except Exception as e:  # tfds raises its own DatasetNotFoundError and friends
        raise DataSourceError(f"{name!r} is not a tfds dataset ({type(e).__name__}: {str(e).splitlines()[0]}); "
                              "valid: tfds:NAME[/CONFIG][:VERSION] of `tfds.list_builders()`") from None
    if not builder.is_prepared():
        if not download:
            raise DataSourceError(
                f"tfds dataset {spec!r} is not prepared in data_dir {data_dir!r} (looked for {builder.data_dir}); "
                f"prepare it with `tfds build {spec} --data_dir {data_dir}` or download=True "
                "(--config.data.download=True), or point data_dir at a folder that holds it")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    features = builder.info.features
    if "image" not in features or "label" not in features or not hasattr(features["label"], "num_classes"):
        raise DataSourceError(f"tfds dataset {spec!r} has features {list(features)}; an image-classification "
                              "dataset needs an 'image' and a ClassLabel 'label'")
    h, w, c = (tuple(features["image"].shape) + (None, None, None))[:3]
    c = channels or c or 3
    if channels not in (0, 1, 3):
        raise DataSourceError(f"channels={channels!r} is invalid; valid: 1 (gray), 3 (RGB) or 0 for the images' own")
    if image_size:
        size = (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else tuple(int(v) for v in image_size)
        h, w = size
    elif h is None or w is None:
        raise DataSourceError(f"tfds dataset {spec!r} has images of varying size; pass image_size (an int or "
                              "(height, width); --config.data.image_size=N)")
    shape = (int(h), int(w), int(c))
    splits = builder.info.splits  # empty when tfds does not know them (mocked data)
    fraction = 0.1 if validation_split is None else float(validation_split)
    _check_fraction(fraction, name)
    sizes: dict[str, int] = {}
    if not splits:
        pct = max(1, int(round(fraction * 100)))
        tfds_splits = {"train": f"train[:{100 - pct}%]", "validation": f"train[{100 - pct}%:]", "test": "test"}
    elif "train" not in splits:
        raise DataSourceError(f"tfds dataset {spec!r} has no 'train' split; its splits: {list(splits)}")
    elif "validation" in splits:
        tfds_splits = {"train": "train", "validation": "validation"}
        sizes = {"train": splits["train"].num_examples, "validation": splits["validation"].num_examples}
    else:
        n_train = splits["train"].num_examples
        k = max(1, int(round(fraction * n_train)))
        tfds_splits = {"train": f"train[:-{k}]", "validation": f"train[-{k}:]"}
        sizes = {"train": n_train - k, "validation": k}
    tfds_splits["train_full"] = f"{tfds_splits['train']}+{tfds_splits['validation']}"
    if sizes:
        sizes["train_full"] = sizes["train"] + sizes["validation"]
        if "test" in splits:
            sizes["test"] = splits["test"].num_examples
            tfds_splits["test"] = "test"
    available = [s for s in SPLITS if s in tfds_splits]

    def pair(example):
        image = image_folder.conform(example["image"], shape)
        return image, tf.cast(example["label"], tf.int64)

    def get_split(split: str) -> tf.data.Dataset:
        _check_split(name, split, available)
        ds = builder.as_dataset(split=tfds_splits[split], read_config=tfds.ReadConfig(try_autocache=False))
        return ds.map(pair, num_parallel_calls=tf.data.AUTOTUNE)

    stats = _checked_stats(stats, shape[-1], name)
    if stats is None:
        stats = image_folder.channel_stats(get_split("train"), shape[-1], f"tfds dataset {spec!r}")
    label = features["label"]
    return _info(name, tuple(label.names), shape, sizes, stats, data_dir), get_split


def _with_channels(info: DatasetInfo, get_split: SplitFn, channels: int) -> tuple[DatasetInfo, SplitFn]:
    """``info`` and ``get_split`` with images converted to ``channels`` (1 gray or 3 RGB)."""
    from cafe_tf import image_folder

    if channels not in (1, 3):
        raise DataSourceError(f"channels={channels!r} for {info.name!r} is invalid; valid: 1 (gray) or 3 (RGB)")
    h, w, have = info.image_shape
    if have == channels:
        return info, get_split
    shape = (h, w, channels)

    def converted(split: str) -> tf.data.Dataset:
        ds = get_split(split)
        if h is None or w is None:
            return ds.map(lambda x, y: (_convert_channels(x, channels), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.map(lambda x, y: (image_folder.conform(x, shape), y), num_parallel_calls=tf.data.AUTOTUNE)

    if channels == 3:  # gray replicated: the same statistics per channel
        mean, std = info.mean * 3, info.std * 3
    else:
        mean, std = image_folder.channel_stats(converted("train"), 1, repr(info.name))
    return dataclasses.replace(info, image_shape=(h, w, channels), mean=tuple(mean), std=tuple(std)), converted


def _convert_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    from cafe_tf import image_folder

    if channels == 3:
        return tf.tile(image[..., :1], [1, 1, 3])
    gray = tf.reduce_sum(tf.cast(image[..., :3], tf.float32) * tf.constant(image_folder._GRAY_WEIGHTS), -1, keepdims=True)
    return tf.cast(tf.clip_by_value(tf.round(gray), 0, 255), tf.uint8)


# --------------------------------------------------------------------------------------------
# The Python API's data object


@dataclasses.dataclass(frozen=True)
class Data:
    """Loaded image-classification data: what :func:`load_data` returns and the API functions take.

    Attributes:
      info: the :class:`DatasetInfo` (``mean`` / ``std``, ``label_names``, ``num_classes``,
        ``image_shape``, ``split_sizes``).
      splits: unbatched ``(uint8 HxWxC image, int64 label)`` datasets: ``train``, ``validation`` and,
        when the data has one, ``test``.
      source_name: the ``data.name`` a config loads this data with again (``"folder:/abs/path"``,
        ``"tfds:mnist"``, ``"fashion_mnist"``); ``None`` for in-memory data.
      image_size: built-in data only: the size the input pipeline resizes to (None: native).
    """

    info: DatasetInfo
    splits: Mapping[str, tf.data.Dataset]
    source_name: str | None
    image_size: int | None = None

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return self.info.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names, in label order."""
        return self.info.label_names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of the images a model is fed."""
        return resolve_image_size(self.info, self.image_size)

    def split(self, name: str) -> tf.data.Dataset:
        """Split ``name``'s unbatched pairs (``train_full``: ``train`` then ``validation``)."""
        if name == "train_full" and name not in self.splits:
            return self.splits["train"].concatenate(self.splits["validation"])
        if name not in self.splits:
            raise DataSourceError(f"{self.info.name!r} has no {name!r} split; its splits: {list(self.splits)}")
        return self.splits[name]

    def with_channels(self, channels: int) -> Data:
        """This data with 1 (gray) or 3 (RGB) channels, for a model's input; ``self`` when they match.

        Gray is replicated to RGB (the statistics too); RGB becomes BT.601 luma, its statistics
        computed on the converted training split.
        """
        info, get_split = _with_channels(self.info, self.split, int(channels))
        if info is self.info:
            return self
        return dataclasses.replace(self, info=info, splits={name: get_split(name) for name in self.splits})

    def source(self, section: Any, seed: int, eval_splits: Sequence[str] = ("validation", "test"),
               drop_eval_remainder: bool = False, input_scaling: str = "mean_std") -> DataSource:
        """The :class:`DataSource` the training loops consume, fed as the ``data`` config section
        ``section`` says (batch sizes, augmentation, image size, ``max_*_examples``, cache).

        Args:
          section: a ``data`` config section (``cafe_tf.config.base_config().data``); its ``name``
            is not read.
          seed: seeds the training order and augmentation.
          eval_splits: the splits to evaluate (a missing ``test`` is skipped with a logged note).
          drop_eval_remainder: whether eval batches drop a partial last batch.
          input_scaling: ``config.model.input_scaling``.

        Returns:
          The :class:`DataSource`.
        """
        return build_source(self.info, self.split, section, seed, eval_splits, drop_eval_remainder, input_scaling,
                            image_size=self.image_size)


def _data_section(config: Any) -> Any:
    if config is None:
        return None
    from cafe_tf import config as config_lib

    if isinstance(config, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(config))
        if not os.path.isfile(path):
            raise DataSourceError(f"config {path!r} does not exist; give a config file path or a ConfigDict")
        config = config_lib.sibling_config(path, os.path.basename(path))
    if "data" not in config:
        raise DataSourceError("config has no 'data' section; give a config made from cafe_tf.config.base_config()")
    return config.data


def load_data(
    source: Any,
    *,
    image_size: int | Sequence[int] | None = None,
    validation_split: float | None = None,
    data_dir: str | None = None,
    download: bool = False,
    num_classes: int | None = None,
    seed: int = 0,
    config: Any = None,
) -> Data:
    """Loads image-classification data from any source, with its statistics, as :class:`Data`.

    Args:
      source: ``"folder:PATH"``, ``"tfds:NAME[/CONFIG][:VERSION]"``, a built-in name
        (:func:`names`), a ``tf.data.Dataset`` of ``(image, label)`` pairs (batched or not: a label of
        rank 1 means batches), or NumPy arrays ``(x, y)``. ``None`` takes ``config``'s ``data.name``.
        In-memory images are ``(N, H, W)`` (gray), ``(N, H, W, 1)`` or ``(N, H, W, 3)``: uint8 or
        integers in 0..255, or floats in [0, 1] (scaled by 255; whole-number floats up to 255 are
        taken as 0..255; anything else, e.g. normalised images, is refused). Labels are class
        indices ``(N,)``. A dataset is read into memory once.
      image_size: an int or ``(height, width)`` to resize to (bilinear, no crop); default the
        images' own size when they share one. Built-in data: an int the input pipeline resizes to.
      validation_split: the fraction held out as a stratified, seeded validation split where the
        data has none (``None``: 0.1; a built-in name keeps its own carve-out).
      data_dir: the tfds data folder (default :func:`default_data_dir`).
      download: whether tfds may download a dataset that is not prepared.
      num_classes: in-memory data: the number of classes (default: the largest label + 1); other
        sources: checked against the data's.
      seed: seeds the carve-out and the examples' order.
      config: a config file path or ``ConfigDict`` whose ``data`` section supplies defaults
        (``name``, ``image_size``, ``validation_split``, ``validation_size``, ``channels``,
        ``data_dir``, ``download``); keyword arguments win.

    Returns:
      The :class:`Data`; for data that is not built in, ``info.mean`` / ``info.std`` are computed on
      the training split after the resize.

    Raises:
      DataSourceError: a source that cannot work, in one line naming it and what is valid.
    """
    section = _data_section(config)
    channels, validation_size = 0, None
    if section is not None:
        source = section.name if source is None else source
        image_size = image_size if image_size is not None else (section.image_size or None)
        if validation_split is None:
            validation_split = float(section.get("validation_split", 0.0) or 0.0) or None
        data_dir = data_dir or section.data_dir or None
        download = download or bool(section.download)
        channels = int(section.get("channels", 0) or 0)
        validation_size = None if section.validation_size < 0 else int(section.validation_size)
    if source is None:
        raise DataSourceError("load_data needs a source: folder:PATH, tfds:NAME, a built-in name "
                              f"{names()}, a tf.data.Dataset or arrays (x, y)")
    if isinstance(source, (str, os.PathLike)):
        name = canonical_name(check_name(os.fspath(source)))
        builtin = is_builtin(name)
        if builtin and image_size is not None and not isinstance(image_size, (int, np.integer)):
            raise DataSourceError(f"image_size={image_size!r} for {name!r} must be an int (square images)")
        info, get_split = _open(name, data_dir, download, validation_size=validation_size if builtin else None,
                                image_size=None if builtin else image_size, validation_split=validation_split,
                                channels=channels, seed=seed)
        if num_classes is not None and int(num_classes) != info.num_classes:
            raise DataSourceError(f"num_classes={num_classes!r} but {name!r} has {info.num_classes} classes "
                                  f"{list(info.label_names)}")
        available = [s for s in ("train", "validation", "test") if not info.split_sizes or s in info.split_sizes]
        return Data(info=info, splits={s: get_split(s) for s in available}, source_name=name,
                    image_size=int(image_size) if builtin and image_size else None)
    if isinstance(source, tf.data.Dataset):
        x, y = _dataset_arrays(source, image_size)
        where = "the tf.data.Dataset"
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        x, y = source
        where = "the arrays (x, y)"
    else:
        raise DataSourceError(
            f"load_data cannot read a {type(source).__name__}; valid sources: folder:PATH, tfds:NAME, a built-in "
            f"name {names()}, a tf.data.Dataset of (image, label) pairs, or NumPy arrays (x, y)")
    return _from_arrays(x, y, where, image_size=image_size, validation_split=validation_split,
                        num_classes=num_classes, seed=seed, channels=channels)


def _dataset_arrays(ds: tf.data.Dataset, image_size) -> tuple[np.ndarray, np.ndarray]:
    """Reads a dataset of ``(image, label)`` pairs (batched or not) into arrays."""
    spec = ds.element_spec
    if isinstance(spec, Mapping) and "image" in spec and "label" in spec:
        ds = ds.map(lambda ex: (ex["image"], ex["label"]))
        spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise DataSourceError(f"the tf.data.Dataset yields {spec}; it must yield (image, label) pairs")
    label_rank = spec[1].shape.rank
    if label_rank not in (0, 1):
        raise DataSourceError(f"the tf.data.Dataset's labels have shape {spec[1].shape}; they must be class "
                              "indices: a scalar per image, or a vector per batch")
    images, labels = [], []
    for x, y in ds.as_numpy_iterator():
        batch = [x] if label_rank == 0 else list(x)
        images += [np.asarray(b) for b in batch]
        labels += list(np.atleast_1d(y))
    if not images:
        raise DataSourceError("the tf.data.Dataset yields no examples")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        if not image_size:
            raise DataSourceError(f"the tf.data.Dataset's images have {len(shapes)} different shapes "
                                  f"(e.g. {sorted(shapes)[:2]}); pass image_size (an int or (height, width))")
        size = (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else tuple(image_size)
        images = [_resize_uint8(_as_uint8(im[None] if im.ndim == 2 else im[None], "the tf.data.Dataset"), size)[0]
                  for im in images]
    return np.stack(images), np.asarray(labels)


def _as_uint8(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.bool_) or x.size == 0:
        raise DataSourceError(f"images of {where} are {x.dtype}; give uint8, integers in 0..255 or floats in [0, 1]")
    lo, hi = float(np.min(x)), float(np.max(x))
    if np.issubdtype(x.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise DataSourceError(f"integer images of {where} range over [{lo:g}, {hi:g}]; they must be 0..255")
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if lo >= 0.0 and hi <= 1.0:
            return np.round(x * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0 and np.all(x == np.round(x)):
            return x.astype(np.uint8)
        raise DataSourceError(
            f"float images of {where} range over [{lo:g}, {hi:g}]; give raw pixels: floats in [0, 1], whole "
            "numbers in 0..255, or uint8 (normalised images are refused: the statistics are computed here)")
    raise DataSourceError(f"images of {where} are {x.dtype}; give uint8, integers in 0..255 or floats in [0, 1]")


def _resize_uint8(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    out = []
    for start in range(0, len(x), 1024):
        r = tf.image.resize(x[start:start + 1024], size, method="bilinear", antialias=True)
        out.append(tf.cast(tf.clip_by_value(tf.round(r), 0, 255), tf.uint8).numpy())
    return np.concatenate(out)


def _from_arrays(x: Any, y: Any, where: str, *, image_size, validation_split, num_classes, seed, channels) -> Data:
    from cafe_tf import image_folder

    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]  # (N, H, W): gray
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataSourceError(f"images of {where} have shape {x.shape}; valid: (N, H, W), (N, H, W, 1) or (N, H, W, 3)")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(x):
        raise DataSourceError(f"labels of {where} have shape {y.shape}; valid: ({len(x)},) class indices, one per image")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise DataSourceError(f"labels of {where} are {y.dtype} values that are not whole numbers; give class indices")
    y = y.astype(np.int64)
    inferred = int(y.max()) + 1 if len(y) else 0
    k = inferred if num_classes is None else int(num_classes)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        raise DataSourceError(
            f"labels of {where} range over [{int(y.min())}, {int(y.max())}], outside [0, num_classes={k}); "
            "labels must be class indices 0..num_classes-1")
    if k < 2:
        raise DataSourceError(f"{where} has {k} class; a classifier needs labels of at least 2 classes")
    x = _as_uint8(x, where)
    if image_size:
        size = (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else tuple(int(v) for v in image_size)
        x = _resize_uint8(x, size)
    fraction = 0.1 if validation_split is None else float(validation_split)
    train_idx, val_idx = image_folder.stratified_indices(y, fraction, seed, where)
    train_idx = train_idx[image_folder.seeded_order(len(train_idx), seed, 0)]
    val_idx = val_idx[image_folder.seeded_order(len(val_idx), seed, 1)]
    stats = _array_stats(x[train_idx])
    name = "tf.data" if "tf.data" in where else "arrays"
    info = _info(name, tuple(str(i) for i in range(k)), tuple(x.shape[1:]), {
        "train": len(train_idx), "validation": len(val_idx), "train_full": len(train_idx) + len(val_idx)},
        stats, "")
    splits = {"train": tf.data.Dataset.from_tensor_slices((x[train_idx], y[train_idx])),
              "validation": tf.data.Dataset.from_tensor_slices((x[val_idx], y[val_idx]))}
    data = Data(info=info, splits=splits, source_name=None)
    return data.with_channels(channels) if channels else data


def _array_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    c = x.shape[-1]
    total, total_sq, count = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(x), 4096):
        chunk = x[start:start + 4096].astype(np.float64).reshape(-1, c)
        total += chunk.sum(0)
        total_sq += (chunk * chunk).sum(0)
        count += len(chunk)
    mean = total / count / 255.0
    std = np.sqrt(np.maximum(total_sq / count / 255.0**2 - mean**2, 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
