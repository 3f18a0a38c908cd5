"""Multi-label data (CelebA's 40 attributes) through the supernet: min-min training, scoring, search."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cafe_tf import config as cfg
from cafe_tf import data
from cafe_tf.search import SupernetEvaluator
from cafe_tf.search import run as search_run
from cafe_tf.slim import Supernet
from cafe_tf.space import read_widths
from cafe_tf.training import kernel
from cafe_tf.training import supernet as S
from supernet_helpers import cnn

ATTRIBUTES = 4
INFO = {"name": "cnn_small", "input_shape": [12, 12, 1], "num_classes": ATTRIBUTES, "width_mult": 1.0}


def multilabel_source(n=192, batch=16, shape=(12, 12, 1), seed=0, n_val=96):
    """In-memory multi-label data: attribute j is 1 when quadrant j is bright (each independently, p = 0.5)."""
    rng = np.random.default_rng(seed)

    def make(count):
        y = rng.integers(0, 2, (count, ATTRIBUTES))
        x = rng.integers(0, 60, (count, *shape)).astype(np.int64)
        h, w = shape[0] // 2, shape[1] // 2
        for i in range(count):
            for j in np.flatnonzero(y[i]):
                r0, c0 = (j % 2) * h, (j // 2) * w
                x[i, r0:r0 + h, c0:c0 + w] += 180
        return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)

    (xt, yt), (xv, yv) = make(n), make(n_val)
    info = data.DatasetInfo("quadrants", "multilabel", ATTRIBUTES, shape, {"train": n, "validation": n_val},
                            (0.3,), (0.3,), "none", None, tuple(f"bright_{j}" for j in range(ATTRIBUTES)), "", 0)
    train_ds = tf.data.Dataset.from_tensor_slices((xt, yt))
    val_ds = tf.data.Dataset.from_tensor_slices((xv, yv))

    def make_train(epoch, skip, ctx):
        return data.input_pipeline(train_ds, info, True, batch, augment="none", seed=seed, epoch=epoch,
                                   skip_batches=skip, shuffle_buffer=n, input_context=ctx)

    def make_eval(ctx):
        return data.input_pipeline(val_ds, info, False, batch, input_context=ctx)

    return data.DataSource(info, shape, n, batch, make_train, {"validation": make_eval})


def model():
    return cnn(classes=ATTRIBUTES)


def by_hand(supernet, selection, batches):
    """(mean per-attribute accuracy, mean over examples of the mean sigmoid cross-entropy), in numpy."""
    hits, losses = [], []
    for images, labels in batches:
        z = supernet(images, selection=list(selection), training=False).numpy().astype(np.float64)
        y = labels.numpy().astype(np.float64)
        hits.append(((z > 0) == (y > 0.5)).mean(axis=1))
        losses.append((np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).mean(axis=1))
    return float(np.concatenate(hits).mean()), float(np.concatenate(losses).mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """cnn_small with 4 sigmoid outputs, min-min trained 3 epochs on the quadrant attributes."""
    workdir = str(tmp_path_factory.mktemp("supernet_multilabel"))
    src = multilabel_source()
    sec = S.supernet_section()
    sec.update(dict(epochs=3, lr=0.05, log_every=4, calibration_examples=32, eval_examples=64,
                    eval_fractions=(1.0, 0.5)))
    S.validate_supernet(sec)
    return workdir, src, S.train(model, src, sec, workdir, model_info=INFO)


def test_label_task_reads_the_label_rank():
    assert kernel.label_task(tf.zeros([8], tf.int64)) == "classification"
    assert kernel.label_task(tf.zeros([8, 40], tf.int64)) == "multilabel"
    assert kernel.label_task(np.zeros((8, 40))) == "multilabel"


def test_supernet_trains_on_a_multilabel_task_and_scores_per_attribute_accuracy(trained):
    workdir, src, result = trained
    hist = result["history"]
    assert hist[-1]["loss/sampled"] < 0.8 * hist[0]["loss/sampled"]
    assert 0 < hist[-1]["accuracy/sampled"] < 1
    val = {r["name"]: r for r in result["validation"]}
    # Per-attribute accuracy; predicting all 0 (or all 1) scores about 0.5.
    assert val["uniform_1"]["accuracy"] > 0.75 and val["uniform_0.5"]["accuracy"] > 0.6
    assert val["uniform_1"]["loss"] < np.log(2)  # mean sigmoid cross-entropy below chance's

    # accuracy_of on multi-label batches is the mean per-attribute accuracy, with or without the task named.
    supernet = Supernet(keras.models.load_model(os.path.join(workdir, "supernet.keras")))
    selection = [None] * supernet.num_groups
    val_batches = S.take_batches(src.make_eval["validation"], 64)
    expected = by_hand(supernet, selection, val_batches)
    for task in (None, "multilabel"):
        acc, loss = S.accuracy_of(supernet, selection, val_batches, task=task)
        assert acc == pytest.approx(expected[0], abs=1e-6) and loss == pytest.approx(expected[1], rel=1e-4)


def test_evaluator_scores_a_multilabel_supernet_by_per_attribute_accuracy(trained):
    workdir, src, _ = trained
    supernet = Supernet(keras.models.load_model(os.path.join(workdir, "supernet.keras")))
    space = S.space_from_section(supernet.graph, S.supernet_section())
    calib = [x for x, _ in S.calibration_batches(src, 32)]
    val = S.take_batches(src.make_eval["validation"], 64)
    evaluator = SupernetEvaluator(supernet, space, calib, val, num_candidates=2)
    assert evaluator.task == "multilabel"
    assert SupernetEvaluator(supernet, space, calib, val, task="multilabel").task == "multilabel"
    widths = space.uniform_widths(0.5)
    record = evaluator(widths)
    assert len(record["candidates"]) == 2 and record["score"] == max(record["candidates"])
    # The best arrangement's score is its per-attribute accuracy after recalibration.
    selection = supernet.trace_selection(space.channels(record["arrangement"]))
    supernet.calibrate_bn(selection, calib)
    acc, loss = by_hand(supernet, selection, val)
    assert record["score"] == pytest.approx(acc, abs=1e-6) and record["loss"] == pytest.approx(loss, rel=1e-4)
    assert record["score"] > 0.6


def test_search_job_runs_on_a_multilabel_supernet(trained, tmp_path):
    workdir, src, _ = trained
    c = cfg.base_config()
    c.data.batch_size = 16
    c.search = search_run.search_section()
    c.search.update(dict(population=4, generations=1, parents=2, calibration_examples=32, eval_examples=64,
                         supernet=os.path.join(workdir, "supernet.keras")))
    record = search_run.run(c, str(tmp_path), data=src)
    stored = read_widths(str(tmp_path / "widths.json"))
    assert stored["macs"] == record["macs"] and 0.5 < stored["score"] <= 1
    assert stored["score"] == max(row["score"] for row in stored["evaluated"])
