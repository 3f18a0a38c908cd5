"""Min-min supernet training: candidate selection, fixed pattern, one trace, learning, resume, distribution.

The distributed check and the SIGKILL check need fresh processes, so they run this module's
``_child_*`` functions in subprocesses.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cafe_tf.config import ConfigError
from cafe_tf.slim import Supernet
from cafe_tf.space import SearchSpace
from cafe_tf.training import standard
from cafe_tf.training import supernet as S
from supernet_helpers import INFO, HangAfterFirstCheckpoint, child_result, cnn, kill_after_first_checkpoint, separable_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------- helpers


def section(**overrides):
    s = S.supernet_section()
    s.update(dict(epochs=2, lr=0.05, log_every=4, calibration_examples=32, eval_examples=64, eval_fractions=(1.0,)))
    s.update(overrides)
    S.validate_supernet(s)
    return s


def two_channel_model(batchnorm=True):
    """Conv(2 channels) -> [BN] -> ReLU -> GAP -> Dense(2): channel 0 votes class 0, channel 1 votes class 1."""
    L = keras.layers
    x = inp = keras.Input((4, 4, 1), name="image")
    x = L.Conv2D(2, 1, use_bias=False, name="conv")(x)
    if batchnorm:
        x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(2, use_bias=False, name="logits")(x)
    model = keras.Model(inp, out, name="two_channel")
    model.get_layer("conv").kernel.assign(np.ones((1, 1, 1, 2), np.float32))
    model.get_layer("logits").kernel.assign(np.array([[5.0, -5.0], [-5.0, 5.0]], np.float32))
    return model


def _trainer(model, space=None, **options):
    supernet = Supernet(model)
    space = space or SearchSpace(supernet.graph, granularity="uniform", num_bins=64)
    opt = keras.optimizers.SGD(0.1)
    opt.build(model.trainable_variables)
    return S.MinMinTrainer(supernet, space, opt, S.MinMinOptions(**options),
                           num_classes=int(model.outputs[0].shape[-1]), global_batch=8)


# ---------------------------------------------------------------------------- the step


@pytest.mark.parametrize("order", [((0,), (1,)), ((1,), (0,))])
def test_minmin_trains_the_candidate_with_the_lowest_loss(order):
    model = two_channel_model()
    trainer = _trainer(model)
    assert [g.num_bins for g in trainer.space.groups] == [2]  # one bin per channel
    images = tf.random.uniform((8, 4, 4, 1), 0.5, 1.5)
    labels = tf.ones(8, tf.int64)  # class 1: only channel 1's candidate gets it right
    bn = model.get_layer("bn")
    mean_before = bn.moving_mean.numpy().copy()
    logits_before = model.get_layer("logits").kernel.numpy().copy()
    # What each candidate's own plain network scores with batch statistics, before the step.
    want = []
    for arrangement in order:
        sub = trainer.supernet.extract(trainer.space.channels([arrangement]))
        ce = keras.losses.sparse_categorical_crossentropy(labels, sub(images, training=True), from_logits=True)
        want.append(float(tf.reduce_mean(ce)))
    out = trainer.train_step((images, labels), [S.Slot(np.array([1]), ((order[0],), (order[1],)))])

    losses = out["candidate_losses"][0]
    assert out["chosen"][0] == order.index((1,)) == int(np.argmin(losses))
    np.testing.assert_allclose(losses, want, rtol=1e-4)
    assert losses[order.index((0,))] > losses[order.index((1,))] + 1.0
    # Only the chosen channel was trained: its BN statistics moved, the other's did not (selection updates none).
    mean_after = bn.moving_mean.numpy()
    assert mean_after[1] != mean_before[1] and mean_after[0] == mean_before[0]
    logits_after = model.get_layer("logits").kernel.numpy()
    assert np.array_equal(logits_after[0], logits_before[0]) and not np.array_equal(logits_after[1], logits_before[1])


def test_selection_with_moving_statistics_option():
    model = two_channel_model()
    trainer = _trainer(model, selection_bn="moving")
    images = tf.random.uniform((8, 4, 4, 1), 0.5, 1.5)
    out = trainer.train_step((images, tf.zeros(8, tf.int64)), [S.Slot(np.array([1]), (((0,),), ((1,),)))])
    assert out["chosen"][0] == 0  # class 0: channel 0's candidate wins in inference-mode BN as well


def test_fixed_sharing_and_r0_have_one_candidate():
    supernet = Supernet(cnn())
    rng = np.random.default_rng(0)
    for space in (SearchSpace(supernet.graph, sharing="fixed"), SearchSpace(supernet.graph, r=0)):
        assert space.r == 0
        for step in range(5):
            slots = S.plan_step(space, S.step_rng(0, step), S.MinMinOptions(num_candidates=4, sandwich=True))
            for slot in slots:
                assert len(slot.arrangements) == 1
                assert list(slot.arrangements[0]) == space.fixed(slot.widths)
        widths = space.sample_widths(rng)
        assert len({tuple(space.sample_arrangement(widths, rng)) for _ in range(10)}) == 1
    # With r = 1 the K candidates of a width can differ (they do for this seeded draw).
    free = SearchSpace(supernet.graph, r=1)
    slot = S.plan_step(free, S.step_rng(0, 0), S.MinMinOptions(num_candidates=2))[0]
    assert slot.arrangements[0] != slot.arrangements[1]


def test_one_trace_serves_every_width_and_the_sandwich():
    model = cnn()
    supernet = Supernet(model)
    space = SearchSpace(supernet.graph)
    trainer = _trainer(model, space, sandwich=True, num_candidates=2)
    rng = np.random.default_rng(1)
    images = tf.constant(rng.normal(size=(8, 12, 12, 1)).astype("float32"))
    labels = tf.constant(rng.integers(0, 3, 8))
    seen = set()
    for step in range(6):
        slots = S.plan_step(space, S.step_rng(3, step), trainer.options)
        assert [s.full for s in slots] == [True, False, False]
        assert np.all(slots[1].widths == 1)
        seen.add(tuple(slots[2].widths))
        out = trainer.train_step((images, labels), slots)
        assert out["loss"].shape == (3,) and np.all(np.isfinite(out["loss"]))
    assert len(seen) == 6 and trainer.traces == 1
    assert trainer.probe_max_min((images, labels))[0] > 0


def test_host_sampling_is_a_function_of_seed_and_step():
    space = SearchSpace(Supernet(cnn()).graph)
    a = S.plan_step(space, S.step_rng(7, 11), S.MinMinOptions())
    b = S.plan_step(space, S.step_rng(7, 11), S.MinMinOptions())
    c = S.plan_step(space, S.step_rng(7, 12), S.MinMinOptions())
    assert a[0].arrangements == b[0].arrangements and a[0].arrangements != c[0].arrangements


# ---------------------------------------------------------------------------- the loop


def test_training_learns_and_writes_artifacts(tmp_path):
    src = separable_source()
    result = S.train(cnn, src, section(epochs=3, eval_fractions=(1.0, 0.5)), str(tmp_path), model_info=INFO)
    hist = result["history"]
    assert hist[-1]["loss/sampled"] < 0.6 * hist[0]["loss/sampled"]
    assert hist[-1]["loss/max_probe"] < hist[0]["loss/max_probe"]
    val = {r["name"]: r for r in result["validation"]}
    assert val["uniform_1"]["accuracy"] > 0.8 and val["uniform_0.5"]["accuracy"] > 0.6  # chance: 0.33
    assert val["min"]["macs"] < val["uniform_0.5"]["macs"] < val["uniform_1"]["macs"] == result["full_macs"]
    stored = S.read_supernet(str(tmp_path / "supernet.json"))
    assert stored["space"]["sharing"] == "locally_free" and stored["model"] == INFO and stored["steps"] == 36
    reloaded = keras.models.load_model(tmp_path / "supernet.keras")
    assert reloaded.count_params() == cnn().count_params()
    assert (tmp_path / "tensorboard" / "supernet").is_dir() and (tmp_path / "checkpoints" / "checkpoint").is_file()


def test_settings_of_a_checkpoint_must_match(tmp_path):
    src = separable_source(n=64)
    S.train(cnn, src, section(epochs=1), str(tmp_path), model_info=INFO)
    with pytest.raises(ConfigError, match=r"other settings \(sharing: 'locally_free' there, 'fixed' now\)"):
        S.train(cnn, src, section(epochs=1, sharing="fixed"), str(tmp_path), model_info=INFO)


def test_divergence_stops_training_and_names_the_settings_that_help(tmp_path):
    with pytest.raises(FloatingPointError, match=r"diverged at step \d+: loss (nan|inf).*config.supernet.lr \(now 1e\+30\)"
                       r".*warmup_epochs, now 0.0.*sandwich=True, now False"):
        S.train(cnn, separable_source(n=64), section(epochs=1, lr=1e30), str(tmp_path), model_info=INFO)
    assert not (tmp_path / "supernet.keras").exists()  # no half-trained supernet left for a search to read


def test_config_section_errors_name_the_key():
    s = S.supernet_section()
    s.sharing = "loose"
    with pytest.raises(ConfigError,
                       match=r"config.supernet.sharing='loose' is invalid; valid values: \['locally_free', 'fixed'\]"):
        S.validate_supernet(s)
    s = S.supernet_section()
    s.epochs = 0
    with pytest.raises(ConfigError, match=r"config.supernet.epochs=0"):
        S.validate_supernet(s)
    s = S.supernet_section()
    s.eval_splits = ("validation", "test")
    with pytest.raises(ConfigError, match="must not contain 'test'"):
        S.validate_supernet(s)
    # What the min-min loop runs (test_kernel trains in both) is what the validator accepts, and no more.
    for policy in ("none", "mixed_float16", "mixed_bfloat16"):
        S.validate_supernet(section(mixed_precision=policy))
    s = S.supernet_section()
    s.mixed_precision = "float16"
    with pytest.raises(ConfigError, match=r"config.supernet.mixed_precision='float16' is invalid; valid values: "
                                          r"\['none', 'mixed_float16', 'mixed_bfloat16'\]"):
        S.validate_supernet(s)


def test_default_config_validates():
    from cafe_tf.config import validate
    from cafe_tf.search.run import validate_search
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", os.path.join(REPO, "configs", "fashion_mnist_resnet20.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    validate(config, extra_validators={"supernet": S.validate_supernet, "search": validate_search})
    assert config.model.name == "resnet20" and config.search.macs_ratio == 0.5


# ---------------------------------------------------------------------------- resume after SIGKILL


def _child_train_until_killed(workdir):
    S.train(cnn, separable_source(n=96), section(epochs=2, checkpoint_every=3), workdir, model_info=INFO,
            hooks=[HangAfterFirstCheckpoint(workdir)])


def test_killed_training_resumes_and_ends_where_an_unbroken_run_ends(tmp_path):
    workdir = str(tmp_path / "killed")
    os.makedirs(workdir)
    code = f"import test_supernet_training as t; t._child_train_until_killed({workdir!r})"
    assert kill_after_first_checkpoint(code, workdir) == 3
    assert not os.path.exists(os.path.join(workdir, "supernet.keras"))

    resumed = S.train(cnn, separable_source(n=96), section(epochs=2, checkpoint_every=3), workdir, model_info=INFO)
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 12
    unbroken_dir = str(tmp_path / "unbroken")
    unbroken = S.train(cnn, separable_source(n=96), section(epochs=2, checkpoint_every=3), unbroken_dir,
                       model_info=INFO)
    a = keras.models.load_model(os.path.join(workdir, "supernet.keras")).get_weights()
    b = keras.models.load_model(os.path.join(unbroken_dir, "supernet.keras")).get_weights()
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert resumed["history"][-1]["loss/sampled"] == pytest.approx(unbroken["history"][-1]["loss/sampled"], rel=1e-3)


# ---------------------------------------------------------------------------- distribution


def _child_mirrored():
    """Subprocess body: min-min on 1 device vs MirroredStrategy on 2 logical CPUs (no BN: same math)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tempfile

    def no_bn():
        L = keras.layers
        x = inp = keras.Input((12, 12, 1), name="image")
        x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
        x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
        x = L.GlobalAveragePooling2D(name="gap")(x)
        return keras.Model(inp, L.Dense(3, name="logits")(x), name="no_bn")

    out = {}
    for name, strategy in [("single", tf.distribute.get_strategy()),
                           ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
        class Rec(standard.Hook):
            losses = []

            def on_step_end(self, step, logs):
                self.losses.append(logs["loss"])

        rec = Rec()
        rec.losses = []
        result = S.train(no_bn, separable_source(n=64), section(epochs=1, granularity="uniform", num_bins=4),
                         tempfile.mkdtemp(), model_info=INFO, strategy=strategy, hooks=[rec])
        out[name] = {"losses": rec.losses, "replicas": result["replicas"]}
    print("RESULT" + json.dumps(out))


def test_mirrored_on_two_cpus_matches_one_device():
    out = child_result("import test_supernet_training as t; t._child_mirrored()", timeout=300)
    assert out["single"]["replicas"] == 1 and out["mirrored"]["replicas"] == 2
    assert len(out["single"]["losses"]) == 4
    np.testing.assert_allclose(out["mirrored"]["losses"], out["single"]["losses"], rtol=1e-4)
