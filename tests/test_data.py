"""cafe_tf.data: offline Fashion-MNIST through tfds, splits, pipelines, mocked catalog datasets, errors."""

import gzip
import os
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cafe_tf import data

FMNIST_FILES = [f for f, *_ in data._FASHION_MNIST_FILES]


def _numpy(ds, limit=None):
    if limit:
        ds = ds.take(limit)
    batches = list(tfds.as_numpy(ds.batch(10_000)))  # batched: element-wise reading is slow
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


# ---------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_loads_with_info(fashion_mnist_dir):
    ds, info = data.load("fashion_mnist", "train", data_dir=fashion_mnist_dir)
    assert info.num_classes == 10 and info.task == "classification"
    assert info.image_shape == (28, 28, 1)
    assert dict(info.split_sizes) == {"train": 55000, "validation": 5000, "train_full": 60000, "test": 10000}
    assert info.label_names[0] == "T-shirt/top"
    image, label = next(iter(ds))
    assert image.dtype == tf.uint8 and image.shape == (28, 28, 1)
    assert label.dtype == tf.int64 and 0 <= int(label) < 10
    test_ds, _ = data.load("fashion_mnist", "test", data_dir=fashion_mnist_dir)
    assert int(test_ds.cardinality()) == 10000


def test_validation_is_the_held_out_tail_of_train(fashion_mnist_dir):
    full_x, full_y = _numpy(data.load("fashion_mnist", "train_full", data_dir=fashion_mnist_dir)[0])
    train_x, train_y = _numpy(data.load("fashion_mnist", "train", data_dir=fashion_mnist_dir)[0])
    val_x, val_y = _numpy(data.load("fashion_mnist", "validation", data_dir=fashion_mnist_dir)[0])
    # train and validation partition train_full by position: disjoint examples, nothing lost.
    assert len(train_x) == 55000 and len(val_x) == 5000
    np.testing.assert_array_equal(train_x, full_x[:55000])
    np.testing.assert_array_equal(val_x, full_x[55000:])
    np.testing.assert_array_equal(np.concatenate([train_y, val_y]), full_y)
    # Deterministic: a second load gives the same held-out examples.
    again_x, _ = _numpy(data.load("fashion_mnist", "validation", data_dir=fashion_mnist_dir)[0])
    np.testing.assert_array_equal(again_x, val_x)
    # A custom size moves the boundary.
    small_val, info = data.load("fashion_mnist", "validation", data_dir=fashion_mnist_dir, validation_size=1000)
    assert info.split_sizes["train"] == 59000
    np.testing.assert_array_equal(_numpy(small_val)[0], full_x[59000:])


def test_normalisation_constants_match_the_training_images(fashion_mnist_dir):
    x, _ = _numpy(data.load("fashion_mnist", "train_full", data_dir=fashion_mnist_dir)[0])
    x = x.astype(np.float64) / 255.0
    mean, std = data.normalization("fashion_mnist")
    assert abs(x.mean() - mean[0]) < 5e-4
    assert abs(x.std() - std[0]) < 5e-4


def test_eval_pipeline_batches_are_normalised_and_complete(fashion_mnist_dir):
    ds, info = data.load("fashion_mnist", "validation", data_dir=fashion_mnist_dir)
    raw_x, raw_y = _numpy(ds)
    batches = list(data.input_pipeline(ds, info, train=False, batch_size=512))
    assert [b[0].shape[0] for b in batches] == [512] * 9 + [5000 - 9 * 512]  # remainder kept
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (5000, 28, 28, 1)
    np.testing.assert_array_equal(y, raw_y)  # no shuffling
    np.testing.assert_allclose(x, (raw_x / 255.0 - info.mean[0]) / info.std[0], rtol=1e-5, atol=1e-5)


def test_train_pipeline_is_reproducible_per_epoch_and_skips_exactly(fashion_mnist_dir):
    ds, info = data.load("fashion_mnist", "validation", data_dir=fashion_mnist_dir)

    def labels(epoch, skip=0):
        p = data.input_pipeline(ds, info, True, 100, augment="crop_flip", seed=7, epoch=epoch, skip_batches=skip,
                                shuffle_buffer=1000)
        return [b[1].numpy() for b in p], [b[0].numpy() for b in p.take(3)]

    y0, x0 = labels(0)
    y0_again, x0_again = labels(0)
    assert len(y0) == 50 and all(b.shape == (100,) for b in y0)  # drop_remainder by default in training
    np.testing.assert_array_equal(np.concatenate(y0), np.concatenate(y0_again))
    np.testing.assert_array_equal(x0[2], x0_again[2])  # same augmentation too
    y1, _ = labels(1)
    assert not np.array_equal(np.concatenate(y0), np.concatenate(y1))  # another epoch, another order
    y0_skipped, x0_skipped = labels(0, skip=2)
    assert len(y0_skipped) == 48
    np.testing.assert_array_equal(np.concatenate(y0_skipped), np.concatenate(y0[2:]))
    np.testing.assert_array_equal(x0_skipped[0], x0[2])  # the resumed batch is augmented identically


def test_flip_and_crop_augmentations_keep_the_image_content(fashion_mnist_dir):
    ds, info = data.load("fashion_mnist", "test", data_dir=fashion_mnist_dir)
    ds = ds.take(64)
    raw = (_numpy(ds)[0] / 255.0 - info.mean[0]) / info.std[0]
    # shuffle_buffer=1 keeps the order, so output i comes from input i.
    flipped = next(iter(data.input_pipeline(ds, info, True, 64, augment="flip", seed=1, shuffle_buffer=1))) [0].numpy()
    is_same = [np.allclose(f, r, atol=1e-5) for f, r in zip(flipped, raw)]
    is_mirror = [np.allclose(f, r[:, ::-1], atol=1e-5) for f, r in zip(flipped, raw)]
    assert all(s or m for s, m in zip(is_same, is_mirror))
    assert 10 < sum(m and not s for s, m in zip(is_same, is_mirror)) < 54  # about half are flipped
    cropped = next(iter(data.input_pipeline(ds, info, True, 64, augment="crop", seed=1, shuffle_buffer=1)))[0].numpy()
    pad_value = (0.0 - info.mean[0]) / info.std[0]
    shifted = 0
    for c, r in zip(cropped, raw):
        padded = np.pad(r, ((4, 4), (4, 4), (0, 0)), constant_values=pad_value)
        windows = [(i, j) for i in range(9) for j in range(9) if np.allclose(padded[i:i + 28, j:j + 28], c, atol=1e-5)]
        assert windows, "a crop must be a 28x28 window of the 4-pixel padded image"
        shifted += (4, 4) not in windows
    assert shifted > 32


def test_sharded_pipelines_split_the_examples(fashion_mnist_dir):
    ds, info = data.load("fashion_mnist", "validation", data_dir=fashion_mnist_dir)
    ds = ds.take(1000)
    _, all_labels = _numpy(ds)
    shards = []
    for pipeline_id in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=4)
        batches = list(data.input_pipeline(ds, info, False, 40, input_context=ctx))
        assert batches[0][0].shape[0] == 10  # per-replica batch = 40 / 4 replicas
        shards.append(np.concatenate([b[1].numpy() for b in batches]))
    np.testing.assert_array_equal(shards[0], all_labels[0::2])
    np.testing.assert_array_equal(shards[1], all_labels[1::2])
    with pytest.raises(data.DatasetError, match="divisible by the 4 replicas"):
        data.input_pipeline(ds, info, False, 42, input_context=ctx)


# ---------------------------------------------------------------------------- building and errors


@pytest.fixture
def fmnist_copy(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in FMNIST_FILES:
        shutil.copy(os.path.join(data.fashion_mnist_source_dir(), name), src / name)
    return src


def test_truncated_idx_file_is_named_and_nothing_is_left(fmnist_copy, tmp_path):
    victim = fmnist_copy / "train-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    out = tmp_path / "tfds"
    with pytest.raises(data.DatasetError, match="train-images-idx3-ubyte.gz.*truncated"):
        data.prepare_fashion_mnist(str(out), source_dir=str(fmnist_copy))
    assert not (out / "fashion_mnist").exists()


def test_wrong_or_missing_idx_file_is_named(fmnist_copy, tmp_path):
    labels = fmnist_copy / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(labels, "rb") as f:
        payload = f.read()
    labels.write_bytes(gzip.compress(payload[:-10]))  # valid gzip, 10 labels short
    with pytest.raises(data.DatasetError, match="t10k-labels-idx1-ubyte.gz.*expected 10008"):
        data.prepare_fashion_mnist(str(tmp_path / "a"), source_dir=str(fmnist_copy))
    images = fmnist_copy / "t10k-images-idx3-ubyte.gz"
    shutil.copy(fmnist_copy / "train-labels-idx1-ubyte.gz", images)  # a labels file where images belong
    with pytest.raises(data.DatasetError, match="t10k-images-idx3-ubyte.gz.*magic 2049; expected 2051"):
        data.validate_idx(str(images), 2051, (28, 28), 10000)
    os.remove(images)
    with pytest.raises(data.DatasetError, match="t10k-images-idx3-ubyte.gz.*missing"):
        data.prepare_fashion_mnist(str(tmp_path / "b"), source_dir=str(fmnist_copy))


def test_failed_build_removes_the_half_built_dataset(fmnist_copy, tmp_path, monkeypatch):
    def explode(self, *args, **kwargs):
        raise RuntimeError("disk full")
        yield  # pragma: no cover

    monkeypatch.setattr(tfds.image_classification.FashionMNIST, "_generate_examples", explode)
    out = tmp_path / "tfds"
    with pytest.raises(RuntimeError, match="disk full"):
        data.prepare_fashion_mnist(str(out), source_dir=str(fmnist_copy))
    assert not (out / "fashion_mnist").exists()
    assert [p.name for p in out.iterdir() if not p.name.startswith(".fashion_mnist.lock")] == []
    # The class keeps its upstream URL: only the builder instance was pointed at the local folder.
    assert tfds.image_classification.FashionMNIST.URL.startswith("http")


def test_unprepared_catalog_dataset_fails_at_once(tmp_path):
    start = time.time()
    with pytest.raises(data.DatasetError) as e:
        data.load("cifar10", "train", data_dir=str(tmp_path))
    assert time.time() - start < 10  # no network retries
    message = str(e.value)
    assert "'cifar10'" in message and str(tmp_path) in message and "download=True" in message
    assert "tfds build cifar10" in message
    with pytest.raises(data.DatasetError, match="ILSVRC2012_img_train.tar"):
        data.load("imagenet2012", "train", data_dir=str(tmp_path), download=True)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(data.DatasetError, match=r"unknown dataset 'mnist'.*cifar10"):
        data.load("mnist", "train")
    with pytest.raises(data.DatasetError, match=r"unknown split 'val'.*validation"):
        data.load("cifar10", "val")
    with pytest.raises(data.DatasetError, match=r"attribute='Smiling' applies to celeb_a only"):
        data.load("cifar10", "train", attribute="Smiling")


def test_detection_data_is_refused_by_the_classification_pipeline():
    info = data.DatasetInfo("coco/2017", "detection", 80, (None, None, 3), {}, (0.5,) * 3, (0.5,) * 3, "none",
                            None, (), "/nowhere", 5000)
    ds = tf.data.Dataset.from_tensors((tf.zeros((8, 8, 3), tf.uint8), {"bbox": tf.zeros((1, 4))}))
    with pytest.raises(data.DatasetError, match="'coco/2017' is a detection dataset"):
        data.input_pipeline(ds, info, True, 4)


# ---------------------------------------------------------------------------- mocked catalog datasets


@pytest.fixture
def prepared(monkeypatch):
    # Under mock_data nothing is on disk; pretend the dataset was prepared so load() proceeds.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)


def test_cifar10_mock_pipeline(tmp_path, prepared):
    with tfds.testing.mock_data(num_examples=48):
        ds, info = data.load("cifar10", "train", data_dir=str(tmp_path))
        assert (info.num_classes, info.image_shape, info.default_augment) == (10, (32, 32, 3), "crop_flip")
        batches = list(data.input_pipeline(ds, info, True, 16, seed=0))
    assert len(batches) == 3
    x, y = batches[0]
    assert x.shape == (16, 32, 32, 3) and x.dtype == tf.float32 and y.dtype == tf.int64
    assert np.all((0 <= y.numpy()) & (y.numpy() < 10))
    # Normalised with the CIFAR constants: within the range uint8 pixels can reach.
    lo = (0 - np.array(info.mean)) / np.array(info.std)
    hi = (1 - np.array(info.mean)) / np.array(info.std)
    assert np.all(x.numpy() >= lo - 1e-4) and np.all(x.numpy() <= hi + 1e-4)


def test_imagenet_mock_pipeline_crops_and_resizes(tmp_path, prepared):
    with tfds.testing.mock_data(num_examples=6):
        ds, info = data.load("imagenet2012", "train", data_dir=str(tmp_path))
        assert info.num_classes == 1000 and info.default_augment == "inception"
        train = next(iter(data.input_pipeline(ds, info, True, 3, image_size=64, seed=0)))
        test_ds, _ = data.load("imagenet2012", "test", data_dir=str(tmp_path))
        evaluated = next(iter(data.input_pipeline(test_ds, info, False, 3, image_size=64)))
    assert train[0].shape == (3, 64, 64, 3) and evaluated[0].shape == (3, 64, 64, 3)
    assert train[1].dtype == tf.int64


def test_celeb_a_mock_attribute_task(tmp_path, prepared):
    with tfds.testing.mock_data(num_examples=4):
        ds, info = data.load("celeb_a", "validation", data_dir=str(tmp_path))
        assert info.task == "multilabel" and info.num_classes == 40
        x, y = next(iter(data.input_pipeline(ds, info, False, 4)))
        assert x.shape == (4, 128, 128, 3) and y.shape == (4, 40) and y.dtype == tf.int64
        assert set(np.unique(y.numpy())) <= {0, 1}
        ds, info = data.load("celeb_a", "train", data_dir=str(tmp_path), attribute="Smiling")
        assert info.task == "classification" and info.label_names == ("not_Smiling", "Smiling")
        _, y = next(iter(data.input_pipeline(ds, info, True, 4, seed=0, image_size=64)))
        assert y.shape == (4,)
