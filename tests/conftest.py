"""Shared pytest set-up: quiet TensorFlow, deterministic seeds, offline tfds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import pytest


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory):
    """A tfds data_dir holding Fashion-MNIST built offline from Debian's files, shared by all test workers.

    With pytest-xdist every worker has its own base temp folder; their common parent is shared, and
    cafe_tf.data.prepare_fashion_mnist holds a file lock while building, so it is built once.
    """
    from cafe_tf import data

    source = data.fashion_mnist_source_dir()
    if not os.path.isfile(os.path.join(source, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST IDX files not found in {source} (apt-get install dataset-fashion-mnist)")
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    data_dir = str(root / "tfds_fashion_mnist")
    data.prepare_fashion_mnist(data_dir)
    return data_dir
