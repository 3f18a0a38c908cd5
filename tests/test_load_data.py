"""Any image-classification data: ``folder:``, ``tfds:``, arrays and ``tf.data`` through ``cafe_tf.data``.

Every folder is a few dozen 8x8 images the test writes (PNG, JPEG, BMP, GIF; gray and RGB).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from cafe_tf import config as cfg
from cafe_tf import data, image_folder
from cafe_tf.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_images(folder, n, *, mode="L", size=(8, 8), ext="png", seed=0, start=0):
    """``n`` random images of ``size`` (h, w) in ``folder``; returns their pixel arrays."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    out = []
    for i in range(n):
        pixels = (rng.random((*size, channels)) * 255).astype(np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
        image.save(os.path.join(folder, f"{start + i:03d}.{ext}"))
        out.append(pixels)
    return out


def class_folder(root, classes=("cat", "dog", "bird"), n=10, **kwargs):
    for i, name in enumerate(classes):
        write_images(os.path.join(root, name), n, seed=i, **kwargs)
    return str(root)


def arrays(ds):
    x, y = zip(*ds.as_numpy_iterator())
    return np.stack(x), np.asarray(y)


# ---------------------------------------------------------------------------- folders


def test_folder_classes_follow_keras_and_the_carve_out_is_stratified_and_deterministic(tmp_path):
    root = class_folder(tmp_path / "f", classes=("zebra", "Ant", "mole"), n=20)
    d = data.load_data(f"folder:{root}")
    keras_names = keras.utils.image_dataset_from_directory(root, batch_size=4).class_names
    assert d.class_names == tuple(keras_names) == ("Ant", "mole", "zebra")
    assert d.source_name == f"folder:{os.path.abspath(root)}" and d.num_classes == 3
    assert d.info.split_sizes == {"train": 54, "validation": 6, "train_full": 60}  # 2 of each 20
    assert "test" not in d.splits and "test" not in d.info.split_sizes
    _, y_val = arrays(d.splits["validation"])
    assert np.bincount(y_val).tolist() == [2, 2, 2]
    index = image_folder.scan(root)
    assert not set(index.files["train"][0]) & set(index.files["validation"][0])
    assert len(set(index.files["train"][0]) | set(index.files["validation"][0])) == 60
    assert image_folder.scan(root).files["validation"][0] == index.files["validation"][0]  # deterministic
    assert image_folder.scan(root, seed=1).files["validation"][0] != index.files["validation"][0]
    # The training order mixes the classes (a shuffle buffer smaller than the split still mixes).
    assert len(set(index.files["train"][1][:10].tolist())) > 1
    assert image_folder.scan(root, validation_split=0.25).files["validation"][1].tolist().count(0) == 5


def test_folder_statistics_equal_numpy_on_the_training_split(tmp_path):
    root = class_folder(tmp_path / "f", mode="RGB", n=8)
    d = data.load_data(f"folder:{root}")
    index = image_folder.scan(root)
    pixels = np.stack([np.asarray(Image.open(p)) for p in index.files["train"][0]]) / 255.0
    np.testing.assert_allclose(d.info.mean, pixels.mean(axis=(0, 1, 2)), atol=1e-9)
    np.testing.assert_allclose(d.info.std, pixels.std(axis=(0, 1, 2)), atol=1e-9)
    x, y = arrays(d.splits["train"])
    assert x.dtype == np.uint8 and x.shape == (21, 8, 8, 3) and y.dtype == np.int64
    np.testing.assert_array_equal(x / 255.0, pixels)  # decoded in the order of the index


def test_formats_channels_and_alpha(tmp_path):
    gray = tmp_path / "gray"
    write_images(gray / "a", 3, mode="L", ext="png")
    write_images(gray / "a", 3, mode="L", ext="jpg", start=10)
    write_images(gray / "b", 3, mode="L", ext="bmp", seed=1)
    write_images(gray / "b", 2, mode="L", ext="png", seed=2, start=10)
    d = data.load_data(f"folder:{gray}", validation_split=0.3)
    assert d.image_shape == (8, 8, 1) and len(d.info.mean) == 1

    rgb = tmp_path / "rgb"
    rgba = write_images(rgb / "a", 3, mode="RGBA", ext="png")
    write_images(rgb / "a", 2, mode="L", ext="png", start=10)  # gray files in RGB data: replicated
    write_images(rgb / "b", 3, mode="RGB", ext="gif", seed=1)
    write_images(rgb / "b", 2, mode="RGB", ext="jpeg", seed=2, start=10)
    d = data.load_data(f"folder:{rgb}", validation_split=0.3)
    assert d.image_shape == (8, 8, 3)
    decoded = {p: image_folder.decode(tf.io.read_file(p), (8, 8, 3)).numpy() for p in image_folder.scan(rgb).files["train"][0]}
    first = str(rgb / "a" / "000.png")
    if first in decoded:
        np.testing.assert_array_equal(decoded[first], rgba[0][..., :3])  # alpha dropped, lossless
    gif = str(rgb / "b" / "000.gif")
    assert image_folder.decode(tf.io.read_file(gif), (8, 8, 3)).shape == (8, 8, 3)
    gray_png = str(rgb / "a" / "010.png")
    three = image_folder.decode(tf.io.read_file(gray_png), (8, 8, 3)).numpy()
    assert np.array_equal(three[..., 0], three[..., 1]) and np.array_equal(three[..., 0], three[..., 2])

    forced = data.load_data(f"folder:{rgb}", validation_split=0.3, config=_config(channels=1))
    assert forced.image_shape == (8, 8, 1)
    x, _ = arrays(forced.splits["train"])
    np.testing.assert_allclose(forced.info.mean, [x.mean() / 255.0], atol=1e-9)
    assert data.load_data(f"folder:{gray}", validation_split=0.3).with_channels(3).image_shape == (8, 8, 3)


def _config(**data_keys):
    c = cfg.base_config()
    for key, value in data_keys.items():
        c.data[key] = value
    return c


def test_explicit_splits_and_a_missing_test_split(tmp_path):
    root = tmp_path / "splits"
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        class_folder(root / split, classes=("x", "y"), n=n)
    d = data.load_data(f"folder:{root}")
    assert d.info.split_sizes == {"train": 12, "validation": 4, "train_full": 16, "test": 6}
    assert set(d.splits) == {"train", "validation", "test"}

    no_test = tmp_path / "no_test"
    class_folder(no_test / "train", classes=("x", "y"), n=10)
    section = _config(name=f"folder:{no_test}", batch_size=4).data
    source = data.make_data_source(section, seed=0)  # eval_splits default: validation and test
    assert set(source.make_eval) == {"validation"}
    assert source.train_examples == 18
    images, labels = next(iter(source.make_train(0, 0, None)))
    assert images.shape == (4, 8, 8, 1) and images.dtype == tf.float32 and labels.dtype == tf.int64
    with pytest.raises(data.DataSourceError, match="no 'test' split"):
        data.load(f"folder:{no_test}", "test")


def test_mixed_sizes_need_image_size_and_are_resized(tmp_path):
    root = tmp_path / "mixed"
    write_images(root / "a", 4, size=(8, 8))
    write_images(root / "b", 4, size=(10, 6), seed=1)
    with pytest.raises(data.DataSourceError, match=r"2 different sizes.*is 8x8.*is 10x6.*pass image_size"):
        data.load_data(f"folder:{root}")
    d = data.load_data(f"folder:{root}", image_size=(6, 12))
    x, _ = arrays(d.splits["train"])
    assert x.shape[1:] == (6, 12, 1)
    assert data.load_data(f"folder:{root}", image_size=5).image_shape == (5, 5, 1)


@pytest.mark.parametrize("case", ["empty", "one_class", "empty_class", "mixed", "not_an_image", "truncated"])
def test_bad_folders_fail_in_one_line_naming_the_path(tmp_path, case):
    root = make_bad_folder(tmp_path, case)
    with pytest.raises(data.DataSourceError) as e:
        data.load_data(f"folder:{root}")
    message = str(e.value)
    assert isinstance(e.value, UsageError) and isinstance(e.value, data.DatasetError)
    assert "\n" not in message and str(root) in message


def make_bad_folder(tmp_path, case):
    root = tmp_path / case
    root.mkdir()
    if case == "one_class":
        write_images(root / "only", 3)
    elif case == "empty_class":
        write_images(root / "a", 3)
        (root / "b").mkdir()
    elif case == "mixed":
        write_images(root / "a", 3, size=(8, 8))
        write_images(root / "b", 3, size=(9, 9))
    elif case in ("not_an_image", "truncated"):
        write_images(root / "a", 3)
        write_images(root / "b", 3)
        bad = root / "b" / "001.png"
        bad.write_bytes(b"hello" if case == "not_an_image" else bad.read_bytes()[:40])
    return root


def corrupt_body(path):
    """Keeps the PNG's header and IEND trailer, garbles the compressed pixels: only decoding fails."""
    raw = bytearray(open(path, "rb").read())
    start = raw.index(b"IDAT") + 4
    raw[start : start + 12] = b"\xff" * 12
    open(path, "wb").write(bytes(raw))


def test_an_undecodable_file_is_named_up_front_and_when_first_read(tmp_path):
    root = tmp_path / "corrupt"
    class_folder(root / "train", classes=("a", "b"), n=6)
    class_folder(root / "test", classes=("a", "b"), n=3)
    bad = root / "test" / "b" / "001.png"
    corrupt_body(bad)
    assert image_folder.image_header(str(bad)) == (8, 8, 1)  # the header check passes
    d = data.load_data(f"folder:{root}")  # the statistics read train/ only
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"cannot decode image file.*{bad}"):
        arrays(d.splits["test"])
    corrupt_body(root / "train" / "a" / "002.png")  # in the training split: found by the statistics pass
    with pytest.raises(data.DataSourceError, match=r"cannot decode image file '.*train/a/002.png'"):
        data.load_data(f"folder:{root}")


# ---------------------------------------------------------------------------- in memory


def test_arrays_gray_float_labels_and_stratification():
    rng = np.random.default_rng(0)
    x = (rng.random((60, 6, 5)) * 255).astype(np.uint8)
    y = np.repeat(np.arange(3), 20)
    d = data.load_data((x, y))
    assert d.image_shape == (6, 5, 1) and d.num_classes == 3 and d.source_name is None
    assert d.info.split_sizes == {"train": 54, "validation": 6, "train_full": 60}
    xt, yt = arrays(d.splits["train"])
    np.testing.assert_allclose(d.info.mean, [xt.mean() / 255.0], atol=1e-9)
    np.testing.assert_allclose(d.info.std, [(xt / 255.0).std()], atol=1e-9)
    assert np.bincount(arrays(d.splits["validation"])[1]).tolist() == [2, 2, 2]
    # Deterministic per seed.
    np.testing.assert_array_equal(arrays(data.load_data((x, y)).splits["validation"])[0], arrays(d.splits["validation"])[0])

    floats = data.load_data((x[..., None] / 255.0, y))
    np.testing.assert_array_equal(arrays(floats.splits["train"])[0], xt)  # [0, 1] floats: scaled by 255
    assert data.load_data((x.astype(np.float32), y)).image_shape == (6, 5, 1)  # whole numbers: 0..255
    with pytest.raises(data.DataSourceError, match="normalised images are refused"):
        data.load_data(((x - 128.0) / 64.0, y))
    with pytest.raises(data.DataSourceError, match=r"outside \[0, num_classes=3\)"):
        data.load_data((x, np.where(y == 2, 3, y)), num_classes=3)
    with pytest.raises(data.DataSourceError, match=r"\[-1, 2\].*outside"):
        data.load_data((x, np.where(y == 0, -1, y)))
    assert data.load_data((x, y), num_classes=5).num_classes == 5
    with pytest.raises(data.DataSourceError, match=r"shape \(60, 6, 5, 2\)"):
        data.load_data((np.zeros((60, 6, 5, 2), np.uint8), y))


def test_tf_data_batched_or_not_gives_the_same_data():
    rng = np.random.default_rng(1)
    x = (rng.random((40, 4, 4, 3)) * 255).astype(np.uint8)
    y = np.tile(np.arange(4), 10)
    unbatched = data.load_data(tf.data.Dataset.from_tensor_slices((x, y)))
    batched = data.load_data(tf.data.Dataset.from_tensor_slices((x, y)).batch(7))
    from_arrays = data.load_data((x, y))
    for d in (unbatched, batched):
        assert d.image_shape == (4, 4, 3) and d.num_classes == 4 and d.info.mean == from_arrays.info.mean
        np.testing.assert_array_equal(arrays(d.splits["train"])[0], arrays(from_arrays.splits["train"])[0])
    with pytest.raises(data.DataSourceError, match="outside"):
        data.load_data(tf.data.Dataset.from_tensor_slices((x, y)).batch(5), num_classes=3)


def test_data_source_feeds_batches_with_the_sections_settings():
    rng = np.random.default_rng(2)
    d = data.load_data(((rng.random((50, 8, 8)) * 255).astype(np.uint8), np.arange(50) % 2))
    section = _config(batch_size=8, image_size=12, max_train_examples=32).data
    source = d.source(section, seed=3)
    assert source.image_shape == (12, 12, 1) and source.train_examples == 32 and set(source.make_eval) == {"validation"}
    images, labels = next(iter(source.make_train(0, 0, None)))
    assert images.shape == (8, 12, 12, 1) and labels.shape == (8,)
    again, _ = next(iter(d.source(section, seed=3).make_train(0, 0, None)))
    np.testing.assert_array_equal(images.numpy(), again.numpy())  # seeded
    rgb = d.with_channels(3)
    assert rgb.image_shape == (8, 8, 3) and rgb.info.mean == d.info.mean * 3
    assert next(iter(rgb.source(section, seed=0).make_eval["validation"](None)))[0].shape[-1] == 3


# ---------------------------------------------------------------------------- tfds: and built-in names


@pytest.fixture
def prepared(monkeypatch):
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)


def test_tfds_source_under_mock_data(tmp_path, prepared):
    with tfds.testing.mock_data(num_examples=20):
        d = data.load_data("tfds:mnist", data_dir=str(tmp_path))
        assert d.source_name == "tfds:mnist" and d.num_classes == 10 and d.image_shape == (28, 28, 1)
        x, _ = arrays(d.splits["train"])
        assert len(x) == 20 and d.info.split_sizes == {}  # tfds does not know mocked split sizes
        np.testing.assert_allclose(d.info.mean, [x.mean() / 255.0], atol=1e-9)
        assert "test" in d.splits
        resized = data.load_data("tfds:mnist", data_dir=str(tmp_path), image_size=16)
        assert next(iter(resized.splits["validation"]))[0].shape == (16, 16, 1)


def test_tfds_source_not_prepared_is_a_usage_error(tmp_path):
    with pytest.raises(data.DataSourceError, match=r"tfds dataset 'mnist' is not prepared in data_dir .*tfds build"):
        data.load_data("tfds:mnist", data_dir=str(tmp_path))
    with pytest.raises(data.DataSourceError, match="not a tfds dataset"):
        data.load_data("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))
    with pytest.raises(data.DataSourceError, match="unknown dataset 'mnist'.*folder:PATH"):
        data.load_data("mnist")


# ---------------------------------------------------------------------------- data records


def test_statistics_are_recorded_once_and_reused_by_later_stages(tmp_path, monkeypatch):
    root = class_folder(tmp_path / "f", n=6)
    section = _config(name=f"folder:{root}", batch_size=4).data
    workdir = tmp_path / "run"
    first = data.make_data_source(section, seed=0, workdir=str(workdir))
    record = data.read_data_record(str(workdir))
    assert record["schema"] == "data" and record["name"] == f"folder:{root}"
    assert record["mean"] == list(first.info.mean) and record["class_names"] == ["bird", "cat", "dog"]
    assert record["image_shape"] == [8, 8, 1] and record["split_sizes"]["train"] == 15

    def no_recompute(*args, **kwargs):
        raise AssertionError("statistics recomputed")

    monkeypatch.setattr(image_folder, "channel_stats", no_recompute)
    later = data.make_data_source(section, seed=0, workdir=str(workdir / "retrain"))  # the parent's record
    assert later.info.mean == first.info.mean and not (workdir / "retrain" / "data.json").exists()
    monkeypatch.undo()
    section.image_size = 4  # another shape: the record does not apply
    other = data.make_data_source(section, seed=0, workdir=str(tmp_path / "run2"))
    assert other.image_shape == (4, 4, 1)


# ---------------------------------------------------------------------------- the programs


def test_config_accepts_folder_and_tfds_names_and_checks_the_new_keys():
    for name in ("fashion_mnist", "folder:/any/where", "tfds:mnist/config:3.0.1"):
        cfg.validate_data(_config(name=name).data)
    for key, value, message in (("name", "folder:", "folder:PATH"), ("name", "mnist", "tfds:NAME"),
                                ("validation_split", 1.5, r"in \[0, 1\)"), ("channels", 2, r"\[0, 1, 3\]")):
        with pytest.raises(cfg.ConfigError, match=message):
            cfg.validate_data(_config(**{key: value}).data)


BAD_CASES = ["empty", "one_class", "empty_class", "mixed", "truncated"]


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c != "empty" else c for c in BAD_CASES])
def test_train_program_exits_2_on_bad_data_leaving_only_its_log(tmp_path, case):
    root = make_bad_folder(tmp_path, case)
    workdir = tmp_path / "w"
    result = subprocess.run(
        [sys.executable, "-m", "cafe_tf.cli.train", "--config", "configs/fashion_mnist_cnn.py", "--workdir",
         str(workdir), f"--config.data.name=folder:{root}"], cwd=REPO, capture_output=True, text=True,
        timeout=240, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("train: usage error:")]
    assert len(lines) == 1 and str(root) in lines[0], result.stderr[-3000:]
    assert sorted(os.listdir(workdir)) == ["train.log"]


@pytest.mark.slow
def test_train_program_exits_2_on_an_unprepared_tfds_dataset(tmp_path):
    workdir = tmp_path / "w"
    result = subprocess.run(
        [sys.executable, "-m", "cafe_tf.cli.train", "--config", "configs/fashion_mnist_cnn.py", "--workdir",
         str(workdir), "--config.data.name=tfds:mnist", f"--config.data.data_dir={tmp_path / 'tfds'}"], cwd=REPO,
        capture_output=True, text=True, timeout=240, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("train: usage error:")]
    assert len(lines) == 1 and str(tmp_path / "tfds") in lines[0]
    assert sorted(os.listdir(workdir)) == ["train.log"]
