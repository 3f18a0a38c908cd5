"""cafe_tf.training.standard and `cafe-tf train`: recipe pieces, artifacts, resume after SIGKILL,
mixed precision, MirroredStrategy on 2 logical CPUs and a 2-worker cluster on loopback.

The distributed checks need fresh processes (logical devices and TF_CONFIG are fixed at start-up), so
they run this module's ``_child_*`` functions in subprocesses.
"""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cafe_tf import config as cfg
from cafe_tf import data, io
from cafe_tf.training import kernel, standard
from supernet_helpers import HangAfterFirstCheckpoint, free_ports, kill_after_first_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------- helpers


def synthetic_source(n=64, batch=8, shape=(8, 8, 1), classes=3, task="classification", seed=0):
    """An in-memory DataSource: the loop needs nothing from tfds."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = rng.integers(0, 2, (n, classes)) if task == "multilabel" else rng.integers(0, classes, n)
    channels = shape[-1]
    info = data.DatasetInfo("synthetic", task, classes, shape, {"train": n, "validation": n}, (0.5,) * channels,
                            (0.25,) * channels, "none", None, tuple(map(str, range(classes))), "", 0)
    base = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int64)))

    def make_train(epoch, skip, ctx):
        return data.input_pipeline(base, info, True, batch, augment="none", seed=seed, epoch=epoch, skip_batches=skip,
                                   shuffle_buffer=n, input_context=ctx)

    def make_eval(ctx):
        return data.input_pipeline(base, info, False, batch, input_context=ctx)

    return data.DataSource(info, shape, n, batch, make_train, {"validation": make_eval})


def tiny_model(shape=(8, 8, 1), classes=3, batchnorm=True):
    L = keras.layers
    x = inp = keras.Input(shape, name="image")
    x = L.Conv2D(4, 3, padding="same", name="conv")(x)
    if batchnorm:
        x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(classes, name="logits")(x), name="tiny")


def train_config(**overrides):
    c = cfg.base_config().train
    c.update(dict(epochs=2, lr=0.05, log_every=2, warmup_epochs=0.0, eval_splits=("validation",)))
    c.update(overrides)
    return c


class Recorder(standard.Hook):
    def __init__(self):
        self.losses, self.checkpoints, self.context, self.epochs = [], [], None, []

    def on_train_begin(self, context):
        self.context = context

    def on_step_end(self, step, logs):
        self.losses.append(logs["loss"])

    def on_checkpoint(self, step, path):
        self.checkpoints.append(step)

    def on_epoch_end(self, epoch, logs):
        self.epochs.append(epoch)


def tensorboard_scalars(folder):
    """{tag: [(step, value)]} of the scalar events in a TensorBoard run folder."""
    out = {}
    for name in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                out.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return out


def python(code, env=None, timeout=240):
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, **(env or {})})


# ---------------------------------------------------------------------------- recipe pieces


def test_learning_rate_schedules():
    cos = standard.LearningRate(0.1, total_steps=110, warmup_steps=10)
    assert float(cos(0)) == 0.0
    assert float(cos(5)) == pytest.approx(0.05)
    assert float(cos(10)) == pytest.approx(0.1)
    assert float(cos(60)) == pytest.approx(0.05, abs=1e-6)  # half way through the cosine
    assert float(cos(110)) == pytest.approx(0.0, abs=1e-7)
    step = standard.LearningRate(0.1, 100, schedule="step", boundaries=(50, 75), gamma=0.1)
    assert [float(step(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert float(standard.LearningRate(0.3, 100, schedule="constant")(77)) == pytest.approx(0.3)
    c = train_config(epochs=10, warmup_epochs=1.5, schedule="step", step_epochs=(5, 8))
    lr = standard.learning_rate(c, steps_per_epoch=10)
    assert (lr.warmup_steps, lr.boundaries, lr.total_steps) == (15, (50, 80), 100)


def test_losses_with_label_smoothing():
    logits = tf.constant([[2.0, 0.0, -1.0]])
    p = tf.nn.softmax(logits).numpy()[0]
    plain = kernel.per_example_loss("classification", tf.constant([0]), logits, 3)
    assert float(plain[0]) == pytest.approx(-math.log(p[0]), rel=1e-6)
    smooth = kernel.per_example_loss("classification", tf.constant([0]), logits, 3, smoothing=0.3)
    target = np.array([0.8, 0.1, 0.1])
    assert float(smooth[0]) == pytest.approx(-(target * np.log(p)).sum(), rel=1e-6)
    ml_logits = tf.constant([[3.0, -3.0]])
    acc = kernel.per_example_accuracy("multilabel", tf.constant([[1, 1]]), ml_logits)
    assert float(acc[0]) == 0.5
    ml_loss = kernel.per_example_loss("multilabel", tf.constant([[1, 0]]), ml_logits, 2)
    assert float(ml_loss[0]) == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-6)


def _with_head(model, head):
    """``model`` (logits) with a probability head that shares every weight with it."""
    L = keras.layers
    z = model.outputs[0]
    if head == "dense_softmax":  # the head inside the last layer: a twin Dense with the same weights
        last = model.layers[-1]
        twin = L.Dense(last.units, activation="softmax", name="probs")
        out = twin(last.input)
        twin.set_weights(last.get_weights())
        return keras.Model(model.inputs[0], out, name=model.name)
    out = {"softmax_layer": lambda: L.Softmax(name="probs")(z),
           "softmax_activation": lambda: L.Activation("softmax", name="probs")(z),
           "softmax_op": lambda: keras.ops.softmax(z),
           "sigmoid_activation": lambda: L.Activation("sigmoid", name="probs")(z)}[head]()
    return keras.Model(model.inputs[0], out, name=model.name)


@pytest.mark.parametrize("head", ["softmax_layer", "softmax_activation", "softmax_op", "dense_softmax"])
def test_softmax_model_has_the_logits_models_loss(head):
    logits_model = tiny_model()
    probs_model = _with_head(logits_model, head)
    assert kernel.outputs_probabilities(probs_model) and not kernel.outputs_probabilities(logits_model)
    x = tf.random.stateless_normal((6, 8, 8, 1), seed=(1, 2)) * 3.0
    labels = tf.constant([0, 1, 2, 2, 1, 0])
    logits, probs = logits_model(x), probs_model(x)
    for smoothing in (0.0, 0.1):
        np.testing.assert_allclose(
            kernel.per_example_loss("classification", labels, probs, 3, smoothing, from_logits=False),
            kernel.per_example_loss("classification", labels, logits, 3, smoothing), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kernel.per_example_accuracy("classification", labels, probs, from_logits=False),
                                  kernel.per_example_accuracy("classification", labels, logits))


def test_sigmoid_model_has_the_logits_models_multilabel_loss():
    logits_model = tiny_model(classes=4)
    probs_model = _with_head(logits_model, "sigmoid_activation")
    assert kernel.outputs_probabilities(probs_model, "multilabel")
    with pytest.raises(cfg.ConfigError, match="ends in a sigmoid but a classification task needs logits or a softmax"):
        kernel.outputs_probabilities(probs_model, "classification")
    with pytest.raises(cfg.ConfigError, match="ends in a softmax but a multilabel task"):
        kernel.outputs_probabilities(_with_head(logits_model, "softmax_layer"), "multilabel")
    x = tf.random.stateless_normal((6, 8, 8, 1), seed=(3, 4)) * 3.0
    labels = tf.constant(np.random.default_rng(0).integers(0, 2, (6, 4)))
    logits, probs = logits_model(x), probs_model(x)
    np.testing.assert_allclose(
        kernel.per_example_loss("multilabel", labels, probs, 4, 0.1, from_logits=False),
        kernel.per_example_loss("multilabel", labels, logits, 4, 0.1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kernel.per_example_accuracy("multilabel", labels, probs, from_logits=False),
                                  kernel.per_example_accuracy("multilabel", labels, logits))


def test_fit_trains_a_softmax_model_as_its_logits_model(tmp_path):
    # fit() seeds before building, so both factories make the same initial weights.
    runs = {}
    for name, factory in (("logits", tiny_model), ("softmax", lambda: _with_head(tiny_model(), "softmax_layer"))):
        rec = Recorder()
        metrics = standard.fit(factory, synthetic_source(), train_config(epochs=1), str(tmp_path / name), hooks=[rec])
        runs[name] = (rec.losses, metrics["final"]["validation"])
    np.testing.assert_allclose(runs["softmax"][0], runs["logits"][0], rtol=1e-4)
    assert runs["softmax"][1]["loss"] == pytest.approx(runs["logits"][1]["loss"], rel=1e-4)
    assert runs["softmax"][1]["accuracy"] == runs["logits"][1]["accuracy"]
    saved = keras.models.load_model(tmp_path / "softmax" / "model.keras")  # the head is kept
    assert isinstance(saved.layers[-1], keras.layers.Softmax)


def test_weight_decay_covers_kernels_only():
    from cafe_tf import models

    model = models.build("cnn_small")
    decayed = sorted(v.path for v in model.trainable_variables if kernel.is_decayed(v))
    assert decayed == ["conv1/kernel", "conv2/kernel", "conv3/kernel", "fc/kernel", "logits/kernel"]


def test_weight_decay_gradient_is_coupled_decay(tmp_path):
    # One SGD step without momentum on a model whose data loss has zero gradient (all-zero inputs
    # and no bias path to the kernel): the kernel must shrink by exactly lr * wd * W.
    L = keras.layers
    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, L.Dense(3, use_bias=False, name="logits")(inp))
    w0 = model.get_layer("logits").kernel.numpy().copy()
    n = 8
    info = data.DatasetInfo("zeros", "classification", 3, (4,), {"train": n}, (0.0,), (1.0,), "none", None,
                            ("a", "b", "c"), "", 0)
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((n, 4), np.float32), np.zeros(n, np.int64))).batch(n)
    source = data.DataSource(info, (4,), n, n, lambda e, s, ctx: ds, {})
    standard.fit(model, source, train_config(epochs=1, lr=0.1, momentum=0.0, weight_decay=0.01, schedule="constant",
                                             eval_splits=()), str(tmp_path))
    np.testing.assert_allclose(model.get_layer("logits").kernel.numpy(), w0 * (1 - 0.1 * 0.01), rtol=1e-6)


# ---------------------------------------------------------------------------- the loop and its artifacts


def test_fit_writes_artifacts_and_hooks_see_every_step(tmp_path):
    rec = Recorder()
    source = synthetic_source()
    metrics = standard.fit(lambda: tiny_model(), source, train_config(epochs=3), str(tmp_path), hooks=[rec])
    assert metrics["steps"] == 24 and metrics["steps_per_epoch"] == 8 and metrics["resumed_from_step"] is None
    assert len(rec.losses) == 24 and rec.epochs == [1, 2, 3] and rec.checkpoints == [8, 16, 24]
    assert rec.losses[-1] < rec.losses[0]  # it learns something
    on_disk = io.read_artifact(tmp_path / "metrics.json", "metrics", (1,), required=("final", "history"))
    assert on_disk["final"]["validation"]["examples"] == 64
    assert [h["epoch"] for h in on_disk["history"]] == [1, 2, 3]
    assert on_disk["normalization"]["mean"] == [0.5]
    # The saved model is the trained one.
    saved = keras.models.load_model(tmp_path / "model.keras")
    x = next(iter(source.make_eval["validation"](None)))[0]
    np.testing.assert_allclose(saved(x), rec.context.model(x), rtol=1e-5, atol=1e-5)
    # TensorBoard scalars (written without the tensorboard package) in the format its scalars plugin reads.
    scalars = tensorboard_scalars(tmp_path / "tensorboard" / "validation")
    assert [step for step, _ in scalars["accuracy"]] == [8, 16, 24]
    assert scalars["accuracy"][-1][1] == pytest.approx(metrics["final"]["validation"]["accuracy"])
    train_scalars = tensorboard_scalars(tmp_path / "tensorboard" / "train")
    assert {"loss", "accuracy", "learning_rate"} <= set(train_scalars) and len(train_scalars["loss"]) == 12
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary files left
    # Running again on a finished workdir resumes at the end: nothing is retrained.
    rec2 = Recorder()
    again = standard.fit(lambda: tiny_model(), source, train_config(epochs=3), str(tmp_path), hooks=[rec2])
    assert again["resumed_from_step"] == 24 and rec2.losses == []
    assert again["final"]["validation"]["loss"] == pytest.approx(metrics["final"]["validation"]["loss"], rel=1e-5)


def test_eval_every_zero_evaluates_the_last_epoch_only(tmp_path):
    assert [kernel.eval_due(e, 2, 5) for e in range(1, 6)] == [False, True, False, True, True]
    assert [kernel.eval_due(e, 0, 3) for e in range(1, 4)] == [False, False, True]
    metrics = standard.fit(lambda: tiny_model(), synthetic_source(), train_config(epochs=3, eval_every=0), str(tmp_path))
    assert [("eval" in h) for h in metrics["history"]] == [False, False, True]
    assert metrics["final"]["validation"]["examples"] == 64
    assert [step for step, _ in tensorboard_scalars(tmp_path / "tensorboard" / "validation")["accuracy"]] == [24]


def test_checkpoint_of_another_run_is_refused(tmp_path):
    standard.fit(lambda: tiny_model(), synthetic_source(), train_config(epochs=1), str(tmp_path))
    with pytest.raises(ValueError, match="does not match this model"):
        standard.fit(lambda: tiny_model(classes=3, batchnorm=False), synthetic_source(), train_config(epochs=1),
                     str(tmp_path))
    with pytest.raises(cfg.ConfigError, match="8 steps/epoch at global batch 8"):
        standard.fit(lambda: tiny_model(), synthetic_source(batch=16), train_config(epochs=1), str(tmp_path))


def test_wrong_class_count_is_a_config_error(tmp_path):
    with pytest.raises(cfg.ConfigError, match="outputs 5 logits but 'synthetic' has 3 classes"):
        standard.fit(lambda: tiny_model(classes=5), synthetic_source(), train_config(), str(tmp_path))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(tmp_path, policy):
    rec = Recorder()
    before = keras.mixed_precision.dtype_policy().name
    metrics = standard.fit(lambda: tiny_model(), synthetic_source(), train_config(epochs=1, mixed_precision=policy),
                           str(tmp_path), hooks=[rec])
    assert keras.mixed_precision.dtype_policy().name == before  # the global policy is restored
    assert rec.context.model.get_layer("conv").compute_dtype == policy.split("_")[1]
    assert isinstance(rec.context.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    assert all(np.isfinite(rec.losses)) and np.isfinite(metrics["final"]["validation"]["loss"])


def test_multilabel_task(tmp_path):
    metrics = standard.fit(lambda: tiny_model(classes=5), synthetic_source(classes=5, task="multilabel"),
                           train_config(epochs=1, label_smoothing=0.1), str(tmp_path))
    final = metrics["final"]["validation"]
    assert np.isfinite(final["loss"]) and 0.0 <= final["accuracy"] <= 1.0


def small_fmnist_config(data_dir, epochs=3, checkpoint_every=4):
    """Fashion-MNIST config small enough for tests: 640 training images, batch 64 -> 10 steps per epoch."""
    overrides = {
        "data.data_dir": data_dir,
        "data.max_train_examples": 640,
        "data.max_eval_examples": 256,
        "data.batch_size": 64,
        "data.cache": False,
        "train.epochs": epochs,
        "train.checkpoint_every": checkpoint_every,
        "train.log_every": 5,
        "model.width_mult": 0.25,
    }
    return overrides


def load_config(overrides):
    import importlib.util

    spec = importlib.util.spec_from_file_location("fm_config", os.path.join(REPO, "configs", "fashion_mnist_cnn.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def test_train_program_on_fashion_mnist(fashion_mnist_dir, tmp_path):
    overrides = small_fmnist_config(fashion_mnist_dir, epochs=2, checkpoint_every=0)
    args = [f"--config.{k}={v}" for k, v in overrides.items()]
    result = subprocess.run(
        [sys.executable, "-m", "cafe_tf.cli.train", "--config", "configs/fashion_mnist_cnn.py", "--workdir",
         str(tmp_path), *args], cwd=REPO, capture_output=True, text=True, timeout=240,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("checkpoints: ", "tensorboard: tensorboard --logdir ", "metrics:     ", "model:       "):
        assert line in result.stdout
    assert "epoch 1/2 step 5/10" in result.stderr  # periodic progress lines when not on a terminal
    metrics = io.read_artifact(tmp_path / "metrics.json", "metrics", (1,))
    assert metrics["steps"] == 20 and metrics["dataset"] == "fashion_mnist"
    assert set(metrics["final"]) == {"validation", "test"} and metrics["final"]["test"]["examples"] == 256
    assert metrics["history"][-1]["train"]["accuracy"] > 0.4  # well above chance (0.1) after 20 steps
    assert metrics["config"]["data"]["max_train_examples"] == 640
    assert json.loads((tmp_path / "config.json").read_text())["train"]["epochs"] == 2


# ---------------------------------------------------------------------------- resume after SIGKILL


def _child_train_until_killed(workdir, overrides_json):
    """Subprocess body: train, and hang after the first checkpoint until killed."""
    config = load_config(json.loads(overrides_json))
    standard.run(config, workdir, hooks=[HangAfterFirstCheckpoint(workdir)])


def test_killed_run_resumes_from_its_checkpoint_and_finishes(fashion_mnist_dir, tmp_path):
    overrides = small_fmnist_config(fashion_mnist_dir, epochs=3, checkpoint_every=4)
    workdir = str(tmp_path / "killed")
    os.makedirs(workdir)
    code = f"import test_train; test_train._child_train_until_killed({workdir!r}, {json.dumps(overrides)!r})"
    assert kill_after_first_checkpoint(code, workdir) == 4
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))

    # The same job, run again through the program, continues from step 4.
    result = subprocess.run(
        [sys.executable, "-m", "cafe_tf.cli.train", "--config", "configs/fashion_mnist_cnn.py", "--workdir", workdir,
         *[f"--config.{k}={v}" for k, v in overrides.items()]],
        cwd=REPO, capture_output=True, text=True, timeout=240, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint" in result.stderr and "at step 4 (epoch 1, step 4 of it)" in result.stderr
    resumed = io.read_artifact(os.path.join(workdir, "metrics.json"), "metrics", (1,))
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 30
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]

    # An unbroken run of the same job ends in the same place: the resume lost and repeated nothing.
    unbroken = standard.run(load_config(overrides), str(tmp_path / "unbroken"))
    for split in ("validation", "test"):
        assert resumed["final"][split]["loss"] == pytest.approx(unbroken["final"][split]["loss"], rel=1e-3)


# ---------------------------------------------------------------------------- distribution


def _child_compare_mirrored():
    """Subprocess body: 5 steps on 1 device vs MirroredStrategy on 2 logical CPUs, same global batch."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tempfile

    results = {}
    for name, strategy in [("single", tf.distribute.get_strategy()),
                           ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
        rec = Recorder()
        source = synthetic_source(n=40, batch=8)
        # No BatchNorm: per-replica batch statistics would legitimately differ from the global batch's.
        standard.fit(lambda: tiny_model(batchnorm=False), source, train_config(epochs=1, momentum=0.9, lr=0.2),
                     tempfile.mkdtemp(), strategy=strategy, hooks=[rec])
        results[name] = {"losses": rec.losses, "replicas": strategy.num_replicas_in_sync,
                         "kernel": rec.context.model.get_layer("conv").kernel.numpy().ravel().tolist()}
    print("RESULT" + json.dumps(results))


def test_mirrored_on_two_cpus_matches_one_device():
    result = python(f"import sys; sys.path.insert(0, {TESTS!r}); import test_train; test_train._child_compare_mirrored()")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split("RESULT", 1)[1])
    assert out["single"]["replicas"] == 1 and out["mirrored"]["replicas"] == 2
    assert len(out["single"]["losses"]) == 5
    np.testing.assert_allclose(out["mirrored"]["losses"], out["single"]["losses"], rtol=1e-5)
    assert out["single"]["losses"][0] != out["single"]["losses"][-1]  # the trajectory moved
    np.testing.assert_allclose(out["mirrored"]["kernel"], out["single"]["kernel"], rtol=1e-4, atol=1e-6)


def _child_multi_worker(workdir):
    """Subprocess body: one worker of a 2-worker MultiWorkerMirroredStrategy cluster ($TF_CONFIG)."""
    from cafe_tf import distribute

    c = cfg.base_config().distribute
    c.strategy = "multi_worker"
    strategy = distribute.strategy_from_config(c)
    rec = Recorder()
    metrics = standard.fit(lambda: tiny_model(batchnorm=False), synthetic_source(n=64, batch=8),
                           train_config(epochs=1), workdir, strategy=strategy, hooks=[rec])
    print("RESULT" + json.dumps({"losses": rec.losses, "chief": distribute.is_chief(strategy),
                                 "replicas": strategy.num_replicas_in_sync, "steps": metrics["steps"]}))


def test_two_worker_cluster_on_loopback(tmp_path):
    workers = [f"localhost:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        code = (f"import sys; sys.path.insert(0, {TESTS!r}); import test_train; "
                f"test_train._child_multi_worker({str(tmp_path)!r})")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, "TF_CONFIG": json.dumps(tf_config)}))
    outs = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("the 2-worker cluster did not finish in 150 s")
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.split("RESULT", 1)[1]))
    assert [o["chief"] for o in outs] == [True, False]
    assert all(o["replicas"] == 2 and o["steps"] == 8 for o in outs)
    # Gradients are all-reduced, so both workers see the same global loss at every step.
    np.testing.assert_allclose(outs[0]["losses"], outs[1]["losses"], rtol=1e-5)
    assert (tmp_path / "metrics.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".scratch")]  # the worker cleaned up


def test_jit_compiled_step_trains_as_the_plain_step(tmp_path):
    # XLA reorders float sums: the same losses within float32 rounding over 2 epochs (16 steps).
    runs = {}
    for jit in (False, True):
        rec = Recorder()
        metrics = standard.fit(tiny_model, synthetic_source(), train_config(epochs=2, jit_compile=jit),
                               str(tmp_path / str(jit)), hooks=[rec])
        runs[jit] = (rec.losses, metrics["final"]["validation"])
    assert len(runs[True][0]) == 16
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4)
    assert runs[True][1]["loss"] == pytest.approx(runs[False][1]["loss"], rel=1e-4)
