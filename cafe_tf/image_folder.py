"""Image-classification data from a folder of class subfolders (``folder:PATH`` in cafe_tf.data).

Layout (the one ``keras.utils.image_dataset_from_directory`` reads)::

    PATH/<class>/<image>.png            classes = sorted() subfolder names
    PATH/train/<class>/...              or explicit splits: train/, validation/ (or val/), test/
    PATH/validation/<class>/...
    PATH/test/<class>/...

* Files: PNG, JPEG, BMP and GIF (the first frame), by extension; other files and hidden entries are
  ignored. Every file's header is read up front (``os.scandir``, one small read per file), so a file that is not an
  image, or is truncated, is named before anything trains; one that fails later, when first decoded,
  is named in the pipeline's error (see :func:`split_dataset`).
* Splits: without ``validation/`` the validation split is a deterministic, stratified carve-out of
  ``validation_split`` of every class; without ``test/`` there is no test split. Each split's file
  order is a fixed, seeded permutation, so a shuffle buffer mixes classes from the first batch.
* Images decode to uint8 and are resized bilinearly (no crop) to ``image_size``, which defaults to
  the files' own size when they all share one. Channels: gray when every file is one-channel, else
  RGB with alpha dropped; ``channels`` forces 1 or 3.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from cafe_tf.data import DataSourceError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLIT_DIRS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
DEFAULT_VALIDATION_SPLIT = 0.1
_HEAD_BYTES = 1 << 12  # the first read; a JPEG whose start-of-frame lies further is read whole
_DECODE_FAILED = "cannot decode image file"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}  # colour type -> channels (alpha dropped)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """The scanned folder: class names, each split's files and labels, and the files' geometry.

    ``sizes`` holds every distinct ``(height, width)``; ``channels`` is 1 when every file is gray.
    """

    root: str
    class_names: tuple[str, ...]
    files: dict[str, tuple[tuple[str, ...], np.ndarray]]  # split -> (paths, int64 labels)
    sizes: tuple[tuple[int, int], ...]
    channels: int
    explicit_splits: tuple[str, ...]  # the split folders the layout has (empty: carved out)

    size_examples: tuple[tuple[tuple[int, int], str], ...]  # the first file of each size (for messages)

    def example_size(self) -> str:
        """Two files of different sizes, for an error message."""
        return ", ".join(f"{os.path.relpath(p, self.root)} is {h}x{w}" for (h, w), p in self.size_examples[:2])


def _listdir(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return [e for e in it if not e.name.startswith(".")]
    except FileNotFoundError:
        raise DataSourceError(f"folder {path!r} does not exist; give folder:PATH of a folder of class subfolders") from None
    except NotADirectoryError:
        raise DataSourceError(f"{path!r} is not a folder; give folder:PATH of a folder of class subfolders") from None


def _class_files(root: str) -> dict[str, list[str]]:
    """``{class name: sorted image paths}`` of a folder of class subfolders (one split)."""
    entries = _listdir(root)
    dirs = sorted(e.name for e in entries if e.is_dir())
    if not dirs:
        loose = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
        what = f"{len(loose)} images but no class subfolders" if loose else "no class subfolders"
        raise DataSourceError(
            f"folder {root!r} holds {what}; expected one subfolder of images per class "
            f"({root}/<class>/<image>.png, at least 2 classes)")
    out = {}
    for name in dirs:
        folder = os.path.join(root, name)
        files = sorted(e.path for e in _listdir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        out[name] = files
    return out


def _check_classes(root: str, classes: dict[str, list[str]]) -> None:
    if len(classes) < 2:
        raise DataSourceError(
            f"folder {root!r} has one class subfolder ({next(iter(classes))!r}); a classifier needs at least 2 "
            "classes, one subfolder of images each")
    for name, files in classes.items():
        if not files:
            raise DataSourceError(
                f"class folder {os.path.join(root, name)!r} holds no images; every class subfolder needs "
                f"at least one {'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)} file")


def image_header(path: str) -> tuple[int, int, int]:
    """``(height, width, channels)`` of an image file from its header, checking it is complete.

    Raises:
      DataSourceError: naming the file, when it is not a PNG/JPEG/BMP/GIF or is truncated.
    """
    try:
        with open(path, "rb", buffering=0) as f:
            head = f.read(_HEAD_BYTES)
            if len(head) < _HEAD_BYTES:  # the whole file: no second read
                size, tail = len(head), head[-1024:]
            else:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - 1024))
                tail = f.read()
    except OSError as e:
        raise DataSourceError(f"{_DECODE_FAILED} {path!r}: {e.strerror}") from None
    try:
        return _parse_header(path, head, tail, size)
    except (struct.error, IndexError):
        raise DataSourceError(f"{_DECODE_FAILED} {path!r}: its header is truncated") from None


def _bad(path: str, why: str) -> DataSourceError:
    return DataSourceError(f"{_DECODE_FAILED} {path!r}: {why}; valid files are complete PNG, JPEG, BMP or GIF images")


def _parse_header(path: str, head: bytes, tail: bytes, size: int) -> tuple[int, int, int]:
    if head.startswith(_PNG_SIGNATURE):
        width, height, _, colour = struct.unpack(">IIBB", head[16:26])
        if head[12:16] != b"IHDR" or colour not in _PNG_CHANNELS:
            raise _bad(path, "its PNG header is invalid")
        if b"IEND" not in tail[-12:]:
            raise _bad(path, "the PNG is truncated (no IEND chunk)")
        return height, width, _PNG_CHANNELS[colour]
    if head.startswith(b"\xff\xd8"):
        if b"\xff\xd9" not in tail:
            raise _bad(path, "the JPEG is truncated (no end-of-image marker)")
        if len(head) < size and len(head) == _HEAD_BYTES:
            with open(path, "rb") as f:
                head = f.read()
        pos = 2
        while pos + 4 <= len(head):
            if head[pos] != 0xFF:
                raise _bad(path, "its JPEG markers are corrupt")
            marker = head[pos + 1]
            if marker == 0xFF:
                pos += 1
                continue
            length = struct.unpack(">H", head[pos + 2 : pos + 4])[0]
            if marker in _JPEG_SOF:
                height, width, components = struct.unpack(">HHB", head[pos + 5 : pos + 10])
                return height, width, 1 if components == 1 else 3
            pos += 2 + length
        raise _bad(path, "the JPEG has no start-of-frame header")
    if head.startswith(b"BM"):
        offset, _, width, height, _, bpp, compression = struct.unpack("<IIiiHHI", head[10:34])
        if bpp not in (8, 24, 32):
            raise _bad(path, f"its BMP has {bpp} bits per pixel (8, 24 or 32 are supported)")
        if compression == 0 and size < offset + ((bpp * width + 31) // 32) * 4 * abs(height):
            raise _bad(path, "the BMP is truncated")
        return abs(height), width, 1 if bpp == 8 else 3
    if head[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", head[6:10])
        if b";" not in tail[-16:]:
            raise _bad(path, "the GIF is truncated (no trailer)")
        return height, width, 3  # GIFs decode to RGB
    raise _bad(path, "it is not a PNG, JPEG, BMP or GIF file")


def _headers(paths: Sequence[str]) -> list[tuple[int, int, int]]:
    # Sequential: one small read per file; threads only contend for the interpreter lock here.
    return [image_header(p) for p in paths]


def stratified_indices(labels: np.ndarray, fraction: float, seed: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` indices of ``labels``: per class a seeded permutation, its first
    ``round(fraction * n)`` (at least 1 when the class has 2 or more, never all) to validation."""
    if not 0.0 < fraction < 1.0:
        raise DataSourceError(f"validation_split={fraction!r} for {where} is invalid; it must be in (0, 1)")
    train, val = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = np.random.default_rng([seed, int(label)]).permutation(len(members))
        k = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        val.append(members[order[:k]])
        train.append(members[order[k:]])
    return np.concatenate(train), np.concatenate(val)


def seeded_order(n: int, seed: int, salt: int) -> np.ndarray:
    """A fixed permutation of ``range(n)`` for split ``salt``: a split's example order."""
    return np.random.default_rng([seed, 1_000_003, salt]).permutation(n)


def _stratified_split(classes: dict[str, list[str]], fraction: float, seed: int, root: str):
    files = [p for paths in classes.values() for p in paths]
    labels = np.asarray([i for i, paths in enumerate(classes.values()) for _ in paths], np.int64)
    train, val = stratified_indices(labels, fraction, seed, f"folder {root!r}")
    return [(files[i], int(labels[i])) for i in train], [(files[i], int(labels[i])) for i in val]


def _as_split(pairs: list[tuple[str, int]], seed: int, salt: int) -> tuple[tuple[str, ...], np.ndarray]:
    order = seeded_order(len(pairs), seed, salt)
    return tuple(pairs[i][0] for i in order), np.asarray([pairs[i][1] for i in order], np.int64)


def scan(root: str, validation_split: float | None = None, seed: int = 0) -> FolderIndex:
    """Scans ``root`` (see the module doc): its classes, splits and the files' sizes and channels.

    Args:
      root: the folder.
      validation_split: the fraction of each class carved out as validation when there is no
        ``validation/`` folder (``None``: 0.1).
      seed: seeds the carve-out and the files' order.

    Returns:
      The :class:`FolderIndex`.

    Raises:
      DataSourceError: one line naming the path and what is valid: a missing or empty folder, one
        class, a class folder without images, an unknown split or class folder, an unreadable file.
    """
    root = os.path.abspath(os.path.expanduser(root))
    fraction = DEFAULT_VALIDATION_SPLIT if validation_split is None else float(validation_split)
    top = _listdir(root)
    top_dirs = {e.name for e in top if e.is_dir()}
    layout: dict[str, str] = {}
    if "train" in top_dirs:
        unknown = sorted(top_dirs - set(SPLIT_DIRS))
        if unknown:
            raise DataSourceError(
                f"folder {root!r} has a train/ folder and also {unknown}; with split folders, its subfolders "
                "must be train/, validation/ (or val/) and test/, each holding one subfolder per class")
        if "validation" in top_dirs and "val" in top_dirs:
            raise DataSourceError(f"folder {root!r} has both validation/ and val/; keep one")
        layout = {SPLIT_DIRS[d]: os.path.join(root, d) for d in sorted(top_dirs)}
    if layout:
        train_classes = _class_files(layout["train"])
        _check_classes(layout["train"], train_classes)
        class_names = tuple(train_classes)
        per_split = {"train": train_classes}
        for split in ("validation", "test"):
            if split in layout:
                found = _class_files(layout[split]) if _listdir(layout[split]) else {}
                extra = sorted(set(found) - set(class_names))
                if extra:
                    raise DataSourceError(
                        f"folder {layout[split]!r} has class folders {extra} that train/ lacks; valid classes: "
                        f"{list(class_names)}")
                per_split[split] = {c: found.get(c, []) for c in class_names}
    else:
        per_split = {"train": _class_files(root)}
        _check_classes(root, per_split["train"])
        class_names = tuple(per_split["train"])

    pairs: dict[str, list[tuple[str, int]]] = {}
    if "validation" in per_split:
        pairs["train"] = [(p, i) for i, c in enumerate(class_names) for p in per_split["train"][c]]
        pairs["validation"] = [(p, i) for i, c in enumerate(class_names) for p in per_split["validation"][c]]
    else:
        pairs["train"], pairs["validation"] = _stratified_split(per_split["train"], fraction, seed, root)
    if "test" in per_split:
        pairs["test"] = [(p, i) for i, c in enumerate(class_names) for p in per_split["test"][c]]
    for split, items in pairs.items():
        if not items:
            raise DataSourceError(f"split folder {layout.get(split, root)!r} holds no images; remove it or add images")

    all_paths = [p for items in pairs.values() for p, _ in items]
    headers = _headers(all_paths)
    examples: dict[tuple[int, int], str] = {}
    channels = 1
    for path, (h, w, c) in zip(all_paths, headers):
        examples.setdefault((h, w), path)
        channels = max(channels, c)
    files = {split: _as_split(items, seed, salt) for salt, (split, items) in enumerate(pairs.items())}
    return FolderIndex(root=root, class_names=class_names, files=files, sizes=tuple(sorted(examples)),
                       channels=channels, explicit_splits=tuple(s for s in ("validation", "test") if s in layout),
                       size_examples=tuple(examples.items()))


def resolve_shape(index: FolderIndex, image_size: int | Sequence[int] | None, channels: int | None) -> tuple[int, int, int]:
    """The ``(height, width, channels)`` every image of ``index`` is decoded to."""
    if channels not in (None, 0, 1, 3):
        raise DataSourceError(f"channels={channels!r} for folder {index.root!r} is invalid; valid: 1 (gray), 3 (RGB) "
                              "or 0 for the files' own")
    c = channels or index.channels
    if image_size:
        size = (int(image_size), int(image_size)) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
        if len(size) != 2 or min(size) < 1:
            raise DataSourceError(f"image_size={image_size!r} is invalid; give an int or (height, width) >= 1")
        return int(size[0]), int(size[1]), c
    if len(index.sizes) > 1:
        raise DataSourceError(
            f"images in folder {index.root!r} have {len(index.sizes)} different sizes ({index.example_size()}); "
            "pass image_size (an int or (height, width); --config.data.image_size=N) to resize them all")
    h, w = index.sizes[0]
    return h, w, c


def decode(contents: tf.Tensor, shape: tuple[int, int, int]) -> tf.Tensor:
    """An encoded PNG/JPEG/BMP/GIF as uint8 ``shape`` (first GIF frame, alpha dropped, bilinear resize)."""
    image = tf.io.decode_image(contents, channels=3 if shape[-1] == 3 else 0, expand_animations=False)
    return conform(image, shape)


_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # ITU-R BT.601 luma, as tf.image.rgb_to_grayscale


def conform(image: tf.Tensor, shape: tuple[int, int, int]) -> tf.Tensor:
    """A uint8 ``(h, w, 1|2|3|4)`` image as uint8 ``shape``: alpha dropped, gray <-> RGB, bilinear resize."""
    height, width, channels = shape
    image = tf.convert_to_tensor(image)
    have = tf.shape(image)[-1]
    image = tf.cond(tf.equal(have % 2, 0), lambda: image[..., :-1], lambda: image)  # drop alpha
    is_rgb = tf.equal(tf.shape(image)[-1], 3)
    if channels == 1:
        def to_gray():
            gray = tf.reduce_sum(tf.cast(image[..., :3], tf.float32) * tf.constant(_GRAY_WEIGHTS), -1, keepdims=True)
            return tf.cast(tf.clip_by_value(tf.round(gray), 0, 255), tf.uint8)

        image = tf.cond(is_rgb, to_gray, lambda: image[..., :1])
    else:
        image = tf.cond(is_rgb, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3]))
    image.set_shape((None, None, channels))
    hw = tf.shape(image)[:2]

    def resize():
        out = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

    same = tf.logical_and(tf.equal(hw[0], height), tf.equal(hw[1], width))
    image = tf.cond(same, lambda: image, resize)
    return tf.ensure_shape(image, shape)


def split_dataset(paths: Sequence[str], labels: np.ndarray, shape: tuple[int, int, int]) -> tf.data.Dataset:
    """``(image uint8 shape, label int64)`` of ``paths`` in order, decoded with ``tf.io.decode_image``.

    A file that fails to read or decode stops the iteration with an error naming it
    (``cannot decode image file '<path>'``): failed elements are dropped by ``ignore_errors`` and a
    running count, closed by a sentinel element, notices the gap.
    """
    n = len(paths)
    path_table = tf.constant(list(paths) + [""])
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(n + 1, dtype=tf.int64), path_table, tf.constant(np.append(labels, 0), tf.int64)))

    def load_one(i, path, label):
        image = tf.cond(tf.equal(i, n), lambda: tf.zeros(shape, tf.uint8),
                        lambda: decode(tf.io.read_file(path), shape))
        return i, image, label

    ds = ds.map(load_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()

    def check(expected, element):
        i, image, label = element
        ok = tf.debugging.Assert(tf.equal(i, expected), [_DECODE_FAILED, tf.gather(path_table, expected)], summarize=1)
        with tf.control_dependencies([ok]):
            i = tf.identity(i)
        return i + 1, (i, image, label)

    def real(i, image, label):
        return i < n

    def pair(i, image, label):
        return image, label

    ds = ds.scan(tf.constant(0, tf.int64), check)
    return ds.filter(real).map(pair)


def channel_stats(ds: tf.data.Dataset, channels: int, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``ds``'s uint8 images scaled to [0, 1].

    Raises:
      DataSourceError: naming the file that could not be decoded (see :func:`split_dataset`).
    """
    def sums(images, _labels):
        x = tf.cast(images, tf.float64)
        return tf.reduce_sum(x, axis=[0, 1, 2]), tf.reduce_sum(x * x, axis=[0, 1, 2]), tf.cast(tf.size(x[..., 0]), tf.float64)

    total, total_sq, count = np.zeros(channels), np.zeros(channels), 0.0
    try:
        for s, s2, c in ds.batch(512).map(sums, num_parallel_calls=tf.data.AUTOTUNE).as_numpy_iterator():
            total += s
            total_sq += s2
            count += c
    except tf.errors.InvalidArgumentError as e:
        raise DataSourceError(decode_error_message(e, where)) from None
    if not count:
        raise DataSourceError(f"{where} has no training images to compute the mean and std on")
    mean = total / count / 255.0
    var = np.maximum(total_sq / count / (255.0**2) - mean**2, 0.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in np.sqrt(var))


def decode_error_message(error: Exception, where: str) -> str:
    """One line from a pipeline error: the file that could not be decoded, if the error names one."""
    text = str(getattr(error, "message", error))
    if _DECODE_FAILED in text:
        start = text.index(_DECODE_FAILED)
        rest = text[start + len(_DECODE_FAILED):]
        path = rest.split("]", 2)[1].strip(" [") if "]" in rest else rest
        return (f"{_DECODE_FAILED} {path!r} of {where}; it is not a complete PNG, JPEG, BMP or GIF image "
                "(fix or remove it)")
    return f"reading {where} failed: {text.splitlines()[0] if text else type(error).__name__}"
