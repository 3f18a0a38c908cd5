"""Dagger: regulariser = flops.py at hard gates, exact targets, pruned = gated, training, errors.

The distributed checks (MirroredStrategy on 2 logical CPUs) need fresh processes (logical devices are
fixed at start-up), so they run this module's ``_child_*`` functions in subprocesses.
"""

import functools
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import tensorflow as tf

from cafe_tf import models
from cafe_tf.dagger import (DaggerModule, FlopsRegularizer, FreeGates, GateTrainer, exact_target, gate_masks,
                            gates_from_logits, hard_selection, load_model, penalty, prune_model, read_gates,
                            save_model, select_channels, selection_masks, write_gates)
from cafe_tf.dagger.report import write_report
from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph
from cafe_tf.io import ArtifactError
from cafe_tf.slim import Supernet
from supernet_helpers import (FIRST_CHECKPOINT, child_result, free_ports, kill_after_first_checkpoint, randomise_bn,
                              separable_source)
from toy_models import coupling_zoo

# Small inputs keep every registry model fast; the channel graph does not depend on the input size.
SMALL = {
    "cnn_small": (28, 28, 1),
    "resnet20": (16, 16, 3),
    "resnet56": (16, 16, 3),
    "resnet110": (8, 8, 3),
    "vgg16_cifar": (32, 32, 3),
    "resnet50": (64, 64, 3),
    "mobilenet_v2": (64, 64, 3),
    "efficientnet_b0": (64, 64, 3),
}


_BUILT: dict = {}


def _registry(name):
    """(model, graph, cost) of a registry model at its small input, built once per test session."""
    if name not in _BUILT:
        model = models.build(name, input_shape=SMALL[name], num_classes=7)
        graph = ChannelGraph.from_model(model)
        _BUILT[name] = (model, graph, CostModel(graph))
    return _BUILT[name]


def _random_logits(graph, rng, p_open=0.6):
    """Random logits with about ``p_open`` of the gates open (and some groups fully closed)."""
    return [rng.normal(np.log(p_open / (1 - p_open)), 1.0, g.size).astype("float32") for g in graph.prunable_groups]


# -------------------------------------------------------------------------------------------------
# The regulariser's F(g) is flops.py at hard gates, for every model; its gradient is the bilinear one.


@pytest.mark.parametrize("name", sorted(SMALL) + ["coupling_zoo"])
def test_regulariser_macs_at_hard_gates_equal_cost_model(name):
    if name == "coupling_zoo":
        model = coupling_zoo(flatten=True)
        graph = ChannelGraph.from_model(model)
        cost = CostModel(graph)
    else:
        model, graph, cost = _registry(name)
    module = DaggerModule(graph, hidden=8)  # every prunable group must have weights to read
    assert [len(module.source_names(gid)) >= 1 for gid in module.group_ids]
    reg = FlopsRegularizer(cost, 0.5 * cost.macs())
    rng = np.random.default_rng(0)
    for p_open in (0.1, 0.6, 0.97):
        logits = [tf.Variable(v) for v in _random_logits(graph, rng, p_open)]
        if p_open == 0.1:
            logits[0].assign(-np.abs(logits[0].numpy()) - 1)  # one group fully closed: width 0 still counts right
        with tf.GradientTape() as tape:
            masks, widths = gate_masks(graph, module.group_ids, gates_from_logits(logits, "hard"))
            _, macs_tf = reg(widths)
        selection = hard_selection(graph, module.group_ids, [v.numpy() for v in logits])
        want = cost.macs(cost.widths_of(selection))
        assert float(macs_tf) == pytest.approx(want, rel=2e-6, abs=1.0), name
        # dF/dlogit_c = dF/dw_g * sigmoid'(logit_c): the gate hears the layer it prunes and the layers it feeds
        grads = tape.gradient(macs_tf, logits)
        marginal = cost.marginal_macs(cost.widths_of(selection))
        for gid, v, grad in zip(module.group_ids, logits, grads):
            s = tf.sigmoid(v).numpy()
            np.testing.assert_allclose(grad.numpy(), marginal[gid] * s * (1 - s), rtol=1e-4,
                                       atol=1e-6 * max(1.0, float(marginal[gid])))


def test_penalties_and_gradient_sign():
    x = tf.constant([0.5, 0.97, 1.0, 1.03, 1.5])
    np.testing.assert_allclose(penalty(x, "abs").numpy(), [0.5, 0.03, 0, 0.03, 0.5], atol=1e-6)
    np.testing.assert_allclose(penalty(x, "squared").numpy(), [0.25, 0.0009, 0, 0.0009, 0.25], atol=1e-6)
    np.testing.assert_allclose(penalty(x, "hinge").numpy(), [0, 0, 0, 0.03, 0.5], atol=1e-6)
    band = penalty(x, "log_l1", tolerance=0.05).numpy()
    assert band[1] == band[2] == band[3] == 0 and band[0] > 0 and band[4] > 0
    with pytest.raises(ValueError, match="'cubic' is not one of"):
        penalty(x, "cubic")

    model = coupling_zoo()
    graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    ids = [g.id for g in graph.prunable_groups]
    for kind in ("abs", "squared", "hinge", "log_l1"):
        for target, sign in ((0.5, +1), (1.0 / 0.5, -1)):  # over budget: gradient > 0 (descent closes gates)
            logits = [tf.Variable(tf.fill([g.size], 2.0)) for g in graph.prunable_groups]
            reg = FlopsRegularizer(cost, target * cost.macs(), kind=kind)
            with tf.GradientTape() as tape:
                loss, _ = reg(gate_masks(graph, ids, gates_from_logits(logits))[1])
            grad = np.concatenate([g.numpy() for g in tape.gradient(loss, logits)])
            if kind == "hinge" and sign < 0:
                assert np.all(grad == 0)  # one-sided: an under-budget network is left alone
            else:
                assert np.all(np.sign(grad) == sign), (kind, target)


# -------------------------------------------------------------------------------------------------
# Exact targets: 30/50/70% of the MACs within 1% on ResNet-56 and MobileNetV2, every method.


@pytest.mark.parametrize("name", ["resnet56", "mobilenet_v2"])
def test_exact_target_within_one_percent(name, record_property):
    model, graph, cost = _registry(name)
    rng = np.random.default_rng(1)
    logits = {g.id: rng.normal(0, 2, g.size) for g in graph.prunable_groups}  # untrained gates
    achieved = {}
    for ratio in (0.3, 0.5, 0.7):
        for method in ("dagger", "l1", "uniform"):
            selection, info = select_channels(method, cost, ratio, logits=logits)
            macs = cost.macs(cost.widths_of(selection))
            assert macs == info["achieved_macs"]
            assert (1 - 0.01) * ratio * cost.macs() <= macs <= ratio * cost.macs(), (method, ratio, info)
            assert all(len(idx) >= 1 for idx in selection.values())
            achieved[f"{method}@{ratio}"] = round(info["achieved_ratio"], 5)
    record_property("achieved_ratios", json.dumps(achieved))
    print(name, achieved)


def test_uniform_baseline_is_uniform_and_floor_holds():
    _, graph, cost = _registry("resnet56")
    selection, _ = select_channels("uniform", cost, 0.5)
    ratios = np.array([len(selection[g.id]) / g.size for g in graph.prunable_groups])
    assert ratios.max() - ratios.min() <= 0.15, ratios  # every group near sqrt(0.5) ~ 0.71
    # a target far below what the gates want: the floor keeps >= min_channels per group
    logits = {g.id: np.full(g.size, -5.0) for g in graph.prunable_groups}
    selection, info = exact_target(cost, logits, 0.1 * cost.macs(), min_channels=2)
    assert min(len(v) for v in selection.values()) >= 2 and info["added_by_greedy"] > 0


def test_min_keep_ratio_floor_in_exact_target_and_gates(tmp_path):
    from cafe_tf.dagger.prune import group_floor

    assert [group_floor(n, 1, 0.25) for n in (16, 32, 64, 3)] == [4, 8, 16, 1]
    assert group_floor(64, 20, 0.25) == 20 and group_floor(8, 1, 0.0) == 1 and group_floor(2, 5) == 2
    model, graph, cost = _registry("resnet20")
    # Gates that want to close most of the last stage: the floor keeps a quarter of every group.
    logits = {g.id: np.where(np.arange(g.size) < 2, 1.0, -3.0) if g.size == 64 else np.full(g.size, 2.0)
              for g in graph.prunable_groups}
    free, _ = exact_target(cost, logits, 0.5 * cost.macs())
    floored, info = exact_target(cost, logits, 0.5 * cost.macs(), min_keep_ratio=0.25)
    assert min(len(free[g.id]) / g.size for g in graph.prunable_groups) < 0.25  # the floor matters here
    assert all(len(floored[g.id]) >= g.size // 4 for g in graph.prunable_groups)
    assert 0.99 * 0.5 * cost.macs() <= info["achieved_macs"] <= 0.5 * cost.macs()
    assert info["min_keep_ratio"] == 0.25
    with pytest.raises(ValueError, match="min_keep_ratio .* must be in \\[0, 1\\), got 1.5"):
        exact_target(cost, logits, 0.5 * cost.macs(), min_keep_ratio=1.5)
    with pytest.raises(ValueError, match="min_keep_ratio=0.9 per group"):
        exact_target(cost, logits, 0.5 * cost.macs(), min_keep_ratio=0.9)
    # Gate training holds the same floor open: the hard gates of a group never drop below it.
    closed = [tf.constant([-2.0, -1.0, -3.0, 0.5]), tf.constant([-1.0, -2.0])]
    gates = gates_from_logits(closed, "hard", min_open=[2, 1])
    np.testing.assert_array_equal(gates[0].numpy(), [0, 1, 0, 1])  # the open one and the best closed one
    np.testing.assert_array_equal(gates[1].numpy(), [1, 0])
    v = tf.Variable([-2.0, -1.0, -3.0, 0.5])
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(gates_from_logits([v], "hard", min_open=[2])[0])
    assert np.all(tape.gradient(total, v).numpy() > 0)  # straight-through everywhere
    tiny, ds = _tiny_problem()
    tiny_graph = ChannelGraph.from_model(tiny)
    tiny_cost = CostModel(tiny_graph)
    module = FreeGates(tiny_graph, 1.0)
    floor = [group_floor(n, 1, 0.5) for n in module.group_sizes]
    trainer = GateTrainer(tiny, module, FlopsRegularizer(tiny_cost, 0.05 * tiny_cost.macs(), weight=5.0),
                          str(tmp_path), total_steps=30, gate_lr=0.1, min_open=floor)
    history = trainer.train(ds, log_every=10, progress=False)
    assert history[-1]["open_gates"] >= sum(floor)  # pushed far below the floor, the floor holds
    assert sum((l > 0).sum() for l in trainer.logits()) < sum(floor)  # while the gates themselves closed
    with pytest.raises(ValueError, match="min_open=\\[1\\] must give one count"):
        GateTrainer(tiny, module, FlopsRegularizer(tiny_cost, 1.0), str(tmp_path / "x"), 5, min_open=[1])


# -------------------------------------------------------------------------------------------------
# Physical pruning equals the hard-gated network.


@pytest.mark.parametrize("name", ["coupling_zoo", "resnet20", "mobilenet_v2"])
def test_pruned_model_equals_hard_gated_model(name):
    if name == "coupling_zoo":
        model = coupling_zoo(flatten=True)
        graph = ChannelGraph.from_model(model)
        cost = CostModel(graph)
        shape = (12, 12, 3)
    else:
        model, graph, cost = _registry(name)
        shape = SMALL[name]
    randomise_bn(model, 2)
    supernet = Supernet(model, graph)
    x = tf.random.stateless_normal((2,) + shape, seed=(3, 4))
    module = DaggerModule(graph, hidden=8)
    # 1) the module's own hard gates (groups kept non-empty) against extract of the open channels
    rng = np.random.default_rng(3)
    shift = [tf.constant(v) for v in _random_logits(graph, rng, 0.6)]
    logits = [l + s for l, s in zip(module.logits(), shift)]
    logits = [tf.tensor_scatter_nd_update(l, [[int(tf.argmax(l))]], [1.0]) for l in logits]
    masks, _ = gate_masks(graph, module.group_ids, gates_from_logits(logits, "hard"))
    gated = supernet(x, masks=masks, training=False)
    selection = hard_selection(graph, module.group_ids, [l.numpy() for l in logits])
    pruned = prune_model(model, selection, graph)
    np.testing.assert_allclose(pruned(x, training=False).numpy(), gated.numpy(), atol=1e-5, rtol=1e-5)
    # 2) the exact-target selection, as masks, against the physically pruned model
    sel, _ = select_channels("dagger", cost, 0.5, logits={g: l.numpy() for g, l in zip(module.group_ids, logits)})
    masks = [None if m is None else tf.constant(m) for m in selection_masks(graph, sel)]
    np.testing.assert_allclose(prune_model(model, sel, graph)(x, training=False).numpy(),
                               supernet(x, masks=masks, training=False).numpy(), atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------------------------
# Gate training on a tiny problem: FLOPs move toward the target; checkpoints resume.


def _tiny_model(batchnorm=True):
    L = keras.layers
    inp = keras.Input((8, 8, 1), name="image")
    norm = (lambda name: L.BatchNormalization(name=name)) if batchnorm else (lambda name: lambda x: x)
    x = L.Conv2D(12, 3, padding="same", use_bias=not batchnorm, name="c1")(inp)
    x = L.ReLU(name="r1")(norm("b1")(x))
    x = L.Conv2D(16, 3, padding="same", use_bias=not batchnorm, name="c2")(x)
    x = L.ReLU(name="r2")(norm("b2")(x))
    out = L.Dense(3, name="logits")(L.GlobalAveragePooling2D(name="gap")(x))
    return keras.Model(inp, out, name="tiny")


def _tiny_problem():
    model = _tiny_model()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 96)
    images = rng.normal(0, 1, (96, 8, 8, 1)).astype("float32") + labels[:, None, None, None].astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32).repeat()
    return model, ds


@pytest.mark.parametrize("kind", ["dagger", "free"])
def test_gate_training_moves_flops_to_target_and_resumes(tmp_path, kind):
    model, ds = _tiny_problem()
    graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    reg = FlopsRegularizer(cost, 0.4 * cost.macs(), weight=2.0)

    def trainer(steps, main="joint"):
        module = DaggerModule(graph, hidden=8, init_logit=1.0) if kind == "dagger" else FreeGates(graph, 1.0)
        return GateTrainer(model, module, reg, str(tmp_path), total_steps=steps, gate_lr=0.05, main=main,
                           checkpoint_every=10)

    first = trainer(30)
    history = first.train(ds, log_every=10, progress=False)
    assert [h["step"] for h in history] == [10, 20, 30]
    assert history[-1]["macs_ratio"] < 0.75, history  # from 1.0 toward 0.4
    assert abs(history[-1]["macs_ratio"] - 0.4) < abs(1.0 - 0.4)
    logits_before = [l.copy() for l in first.logits()]
    # a new trainer on the same workdir resumes at step 30 (not from scratch) and runs to 40
    second = trainer(40)
    assert second.restore() == 30
    np.testing.assert_allclose(np.concatenate(second.logits()), np.concatenate(logits_before), atol=1e-6)
    history = second.train(ds, log_every=10, progress=False)
    assert [h["step"] for h in history] == [10, 20, 30, 40]


def test_target_ramp_schedule_and_gradual_pruning(tmp_path):
    from cafe_tf.dagger.train import target_at

    # Cubic from the full MACs to the target over the first half of 100 steps, then the target.
    assert target_at(0, 100, 0.5, 1000.0, 400.0) == pytest.approx(1000.0)
    assert target_at(25, 100, 0.5, 1000.0, 400.0) == pytest.approx(400.0 + 600.0 * 0.5 ** 3)
    assert target_at(50, 100, 0.5, 1000.0, 400.0) == pytest.approx(400.0)
    assert target_at(99, 100, 0.5, 1000.0, 400.0) == pytest.approx(400.0)
    assert target_at(0, 100, 0.0, 1000.0, 400.0) == 400.0  # off: the target from the first step
    values = [target_at(s, 100, 0.5, 1000.0, 400.0) for s in range(100)]
    assert all(a >= b for a, b in zip(values, values[1:]))

    def run(ramp):
        model, ds = _tiny_problem()
        graph = ChannelGraph.from_model(model)
        cost = CostModel(graph)
        reg = FlopsRegularizer(cost, 0.4 * cost.macs(), weight=2.0)
        trainer = GateTrainer(model, DaggerModule(graph, hidden=8, init_logit=1.0), reg, str(tmp_path / str(ramp)),
                              total_steps=60, gate_lr=0.01, target_ramp=ramp)
        return trainer.train(ds, log_every=5, progress=False), model, graph, reg

    ramped, model, graph, reg = run(0.75)
    direct, *_ = run(0.0)
    assert [h["target_ratio"] for h in direct] == pytest.approx([0.4] * 12)
    targets = [h["target_ratio"] for h in ramped]
    assert targets[0] == pytest.approx(target_at(4, 60, 0.75, 1.0, 0.4))  # the logged target follows the schedule
    assert targets[9:] == pytest.approx([0.4] * 3)  # the ramp ends at step 45
    # Early on the ramped network stays wider (it follows the falling target); both end near 0.4.
    early = lambda h: np.mean([r["macs_ratio"] for r in h[1:4]])  # noqa: E731 - steps 10-20
    assert early(ramped) > early(direct) + 0.1, (ramped, direct)
    assert abs(np.mean([r["macs_ratio"] for r in ramped[-3:]]) - 0.4) < 0.1, ramped
    with pytest.raises(ValueError, match="target_ramp must be a fraction"):
        GateTrainer(model, FreeGates(graph), reg, str(tmp_path / "x"), 5, target_ramp=1.5)


def test_dagger_module_without_group_bias():
    model, graph, _ = _registry("resnet20")
    module = DaggerModule(graph, hidden=8, group_bias=False, init_logit=2.0)
    logits = module.logits()
    np.testing.assert_allclose(np.concatenate([l.numpy() for l in logits]), 2.0)  # the zero head: all at the bias
    names = sorted(v.path for v in module.trainable_variables)
    assert sum("shared_bias" in n for n in names) == 1 and not any("group_bias" in n for n in names)
    assert all(len(p.weights) == 1 for p in module.projections)  # kernels only: no per-layer offset
    with_bias = DaggerModule(graph, hidden=8)
    assert len(with_bias.trainable_variables) == len(module.trainable_variables) + len(module.projections)


def test_frozen_main_network_keeps_weights(tmp_path):
    model, ds = _tiny_problem()
    graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    before = [w.copy() for w in model.get_weights()]
    trainer = GateTrainer(model, DaggerModule(graph, hidden=8), FlopsRegularizer(cost, 0.5 * cost.macs()),
                          str(tmp_path), total_steps=5, main="frozen")
    trainer.train(ds, progress=False)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="main 'both' is not one of"):
        GateTrainer(model, DaggerModule(graph), FlopsRegularizer(cost, 1.0), str(tmp_path), 5, main="both")


def test_frozen_batch_stats_mode_keeps_weights_and_moving_statistics(tmp_path):
    model, ds = _tiny_problem()
    randomise_bn(model)
    graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    before = [w.copy() for w in model.get_weights()]  # kernels, BN gamma/beta and moving mean/variance
    trainer = GateTrainer(model, DaggerModule(graph, hidden=8, init_logit=0.5),
                          FlopsRegularizer(cost, 0.4 * cost.macs()), str(tmp_path), total_steps=8, gate_lr=0.05,
                          main="frozen_batch_stats")
    history = trainer.train(ds, log_every=4, progress=False)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert history[-1]["macs"] < cost.macs()  # the gates moved all the same


def test_batch_stats_forward_equals_the_pruned_model_after_bn_calibration():
    """What ``main="frozen_batch_stats"`` trains against: the hard-gated network normalised with its
    batch's statistics computes what the pruned network computes once its BN is calibrated on that batch."""
    model, _ = _tiny_problem()
    randomise_bn(model)
    graph = ChannelGraph.from_model(model)
    supernet = Supernet(model, graph)
    images = np.random.default_rng(1).normal(0, 1, (32, 8, 8, 1)).astype("float32")
    ids = [g.id for g in graph.groups if g.prunable]
    keep = {ids[0]: np.array([0, 2, 3, 7, 11]), ids[1]: np.arange(0, 16, 3)}
    masks = [None] * supernet.num_groups
    for gid, idx in keep.items():
        m = np.zeros(graph.groups[gid].size, "float32")
        m[idx] = 1.0
        masks[gid] = tf.constant(m)
    moving = [w.copy() for w in model.get_weights()]
    gated = supernet(images, masks=masks, training=False, bn_stats="batch").numpy()
    for a, b in zip(moving, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # batch statistics, no moving-statistic update
    pruned = supernet.extract(keep)
    pruned_net = Supernet(pruned, ChannelGraph.from_model(pruned))
    pruned_net.calibrate_bn([None] * pruned_net.num_groups, [images])
    np.testing.assert_allclose(gated, pruned(images, training=False).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="bn_stats='moving' is invalid"):
        supernet(images, bn_stats="moving")


# -------------------------------------------------------------------------------------------------
# Gate training under tf.distribute: MirroredStrategy on 2 logical CPUs = one device, resume after kill.


def _logical_cpus(n=2):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def _gate_run(strategy, workdir, batches, steps, batchnorm=False, main="joint", on_log=None, checkpoint_every=200):
    """Builds the tiny model, a Dagger module and the optimizers under ``strategy`` and trains the gates."""
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = _tiny_model(batchnorm)
        graph = ChannelGraph.from_model(model)
        module = DaggerModule(graph, hidden=8, init_logit=0.5)
        main_opt = keras.optimizers.SGD(0.05, momentum=0.9)
    cost = CostModel(graph)
    trainer = GateTrainer(model, module, FlopsRegularizer(cost, 0.4 * cost.macs(), weight=2.0), str(workdir), steps,
                          gate_lr=0.05, main=main, main_optimizer=main_opt, checkpoint_every=checkpoint_every,
                          strategy=strategy)
    history = trainer.train(batches, log_every=1, on_log=on_log, progress=False)
    return trainer, history


def _gate_record(trainer, history):
    return {"replicas": trainer.strategy.num_replicas_in_sync, "steps": [h["step"] for h in history],
            **{k: [h[k] for h in history] for k in ("loss", "task", "reg", "accuracy", "macs")},
            "logits": np.concatenate(trainer.logits()).tolist(),
            "kernel": trainer.model.get_layer("c2").kernel.numpy().ravel().tolist()}


def _child_gates_mirrored():
    """Subprocess body: 5 gate steps on 1 device vs MirroredStrategy on 2 logical CPUs, same global batches,
    through each input route (the program's per-epoch pipelines, a tf.data.Dataset, numpy batches)."""
    _logical_cpus()
    import json
    import tempfile

    from cafe_tf.dagger.pipeline import _epochs_of

    single, mirrored = tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    source = separable_source(n=96, batch=16, shape=(8, 8, 1))
    spe = 96 // 16
    epoch0 = list(source.make_train(0, 0, None).as_numpy_iterator())
    out = {}
    for name, strategy, batches, bn, main in [
        ("single", single, _epochs_of(source.make_train, spe, single), False, "joint"),
        ("mirrored", mirrored, _epochs_of(source.make_train, spe, mirrored), False, "joint"),
        ("single_dataset", single, source.make_train(0, 0, None), False, "joint"),
        ("mirrored_dataset", mirrored, source.make_train(0, 0, None), False, "joint"),
        ("mirrored_numpy", mirrored, epoch0, False, "joint"),
        # BN in inference mode (frozen main network): the same math on every replica
        ("single_frozen_bn", single, source.make_train(0, 0, None), True, "frozen"),
        ("mirrored_frozen_bn", mirrored, source.make_train(0, 0, None), True, "frozen"),
    ]:
        out[name] = _gate_record(*_gate_run(strategy, tempfile.mkdtemp(), batches, 5, batchnorm=bn, main=main))
    # The program's stage: the pretrained model is loaded outside the scope, reloaded inside it.
    import ml_collections

    from cafe_tf.dagger.pipeline import dagger_section, prune_section, stage_gates

    config = ml_collections.ConfigDict(dict(prune=prune_section(), dagger=dagger_section(),
                                            train=ml_collections.ConfigDict(dict(seed=0))))
    config.dagger.update(epochs=5 / spe, log_every=1, hidden=8, main_lr=0.05)
    pretrained = os.path.join(tempfile.mkdtemp(), "pretrained.keras")
    save_model(_tiny_model(batchnorm=False), pretrained)
    for name, strategy in (("stage_single", single), ("stage_mirrored", mirrored)):
        trained, logits, history = stage_gates(config, tempfile.mkdtemp(), source, load_model(pretrained),
                                               pretrained, strategy)
        out[name] = {"steps": [h["step"] for h in history], "loss": [h["loss"] for h in history],
                     "logits": np.concatenate([logits[g] for g in sorted(logits)]).tolist(),
                     "mirrored": isinstance(trained.weights[0].value, tf.distribute.DistributedValues)}
    print("RESULT" + json.dumps(out))


def test_gate_training_mirrored_on_two_cpus_matches_one_device():
    out = child_result("import test_dagger as t; t._child_gates_mirrored()")
    assert out["single"]["replicas"] == 1 and out["mirrored"]["replicas"] == 2
    assert out["single"]["steps"] == [1, 2, 3, 4, 5]
    assert out["single"]["loss"][0] != out["single"]["loss"][-1]  # the trajectory moved
    assert out["single"]["macs"][-1] < out["single"]["macs"][0]  # the FLOPs term acts (once: see the logits)
    pairs = [("single", "mirrored"), ("single_dataset", "mirrored_dataset"), ("single_dataset", "mirrored_numpy"),
             ("single_frozen_bn", "mirrored_frozen_bn")]
    for a, b in pairs:
        for key in ("loss", "task", "reg", "accuracy"):
            np.testing.assert_allclose(out[b][key], out[a][key], rtol=1e-5, atol=1e-6, err_msg=f"{b} {key}")
        np.testing.assert_allclose(out[b]["macs"], out[a]["macs"], rtol=1e-6, err_msg=b)
        np.testing.assert_allclose(out[b]["logits"], out[a]["logits"], rtol=1e-5, atol=1e-5, err_msg=b)
        np.testing.assert_allclose(out[b]["kernel"], out[a]["kernel"], rtol=1e-4, atol=1e-6, err_msg=b)
    stage, stage_m = out["stage_single"], out["stage_mirrored"]
    assert stage["steps"] == stage_m["steps"] == [1, 2, 3, 4, 5]
    assert stage_m["mirrored"] and not stage["mirrored"]  # the program reloaded the model in the strategy's scope
    np.testing.assert_allclose(stage_m["loss"], stage["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stage_m["logits"], stage["logits"], rtol=1e-5, atol=1e-5)


def test_gate_trainer_refuses_variables_outside_the_strategy_scope(tmp_path):
    model, _ = _tiny_problem()
    graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with pytest.raises(ValueError, match=r"main network 'tiny' was not built under MirroredStrategy.scope\(\)"):
        GateTrainer(model, FreeGates(graph), FlopsRegularizer(cost, 1.0), str(tmp_path), 5, strategy=strategy)
    with strategy.scope():
        scoped = _tiny_model()
    graph = ChannelGraph.from_model(scoped)
    with pytest.raises(ValueError, match="gate module 'free_gates' was not built under"):
        GateTrainer(scoped, FreeGates(graph), FlopsRegularizer(cost, 1.0), str(tmp_path), 5, strategy=strategy)


def _hang_after_first_checkpoint(workdir, checkpoint_every):
    """An ``on_log`` that, at the step after the first checkpoint, writes its step and hangs until killed."""
    def on_log(record):
        if record["step"] == checkpoint_every + 1:
            with open(os.path.join(workdir, FIRST_CHECKPOINT), "w") as f:
                f.write(str(checkpoint_every))
            import time

            time.sleep(600)  # stands for a job that dies here: the test SIGKILLs us

    return on_log


def _gate_dataset():
    """Resumable input: global batches from step ``start`` on (the same data for every strategy)."""
    source = separable_source(n=96, batch=16, shape=(8, 8, 1))
    return lambda start: source.make_train(0, 0, None).repeat().skip(start)


def _child_gates_killed(workdir):
    """Subprocess body: mirrored gate training that hangs after its first checkpoint (step 3 of 8)."""
    _logical_cpus()
    _gate_run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), workdir, _gate_dataset(), 8,
              on_log=_hang_after_first_checkpoint(workdir, 3), checkpoint_every=3)


def _child_gates_resume(workdir, unbroken):
    """Subprocess body: resume the killed run under MirroredStrategy; an unbroken mirrored run for comparison."""
    _logical_cpus()
    import json

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for name, folder in (("resumed", workdir), ("unbroken", unbroken)):
        trainer, history = _gate_run(mirrored, folder, _gate_dataset(), 8, checkpoint_every=3)
        out[name] = _gate_record(trainer, history)
    print("RESULT" + json.dumps(out))


def test_gate_training_resumes_after_kill_under_mirrored(tmp_path):
    workdir, unbroken = str(tmp_path / "run"), str(tmp_path / "unbroken")
    os.makedirs(workdir)
    step = kill_after_first_checkpoint(f"import test_dagger as t; t._child_gates_killed({workdir!r})", workdir,
                                       timeout=300)
    assert step == 3
    out = child_result(f"import test_dagger as t; t._child_gates_resume({workdir!r}, {unbroken!r})")
    resumed, whole = out["resumed"], out["unbroken"]
    assert resumed["steps"] == whole["steps"] == list(range(1, 9))  # history up to the checkpoint, then resumed
    # The resume lost and repeated nothing: the same trajectory and end point as an unbroken run.
    np.testing.assert_allclose(resumed["loss"], whole["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(resumed["logits"], whole["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(resumed["kernel"], whole["kernel"], rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------------
# A user's .keras model, artifacts and errors.


def _user_model():
    """A model 'trained elsewhere': residual block, depthwise, softmax output; not one of our builders."""
    L = keras.layers
    inp = keras.Input((12, 12, 3), name="pixels")
    x = L.Conv2D(24, 3, padding="same", name="u_stem")(inp)
    x = L.Activation("relu", name="u_relu")(L.BatchNormalization(name="u_bn")(x))
    y = L.Conv2D(32, 3, padding="same", use_bias=False, name="u_block_a")(x)
    y = L.ReLU(name="u_block_relu")(L.BatchNormalization(name="u_block_bn")(y))
    y = L.Conv2D(24, 3, padding="same", use_bias=False, name="u_block_b")(y)
    x = L.Add(name="u_add")([x, L.BatchNormalization(name="u_block_bn2")(y)])
    x = L.DepthwiseConv2D(3, strides=2, padding="same", name="u_dw")(x)
    x = L.Conv2D(40, 1, activation="relu", name="u_pw")(x)
    x = L.GlobalAveragePooling2D(name="u_gap")(x)
    return keras.Model(inp, L.Dense(4, activation="softmax", name="u_probs")(x), name="users_net")


def test_user_keras_model_round_trip(tmp_path):
    user = _user_model()
    randomise_bn(user, 5)
    path = str(tmp_path / "user_model.keras")
    user.save(path)
    model = load_model(path)
    graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    selection, info = select_channels("l1", cost, 0.6)
    pruned = prune_model(model, selection, graph)
    save_model(pruned, str(tmp_path / "pruned.keras"))
    again = load_model(str(tmp_path / "pruned.keras"))
    x = tf.random.normal((2, 12, 12, 3))
    np.testing.assert_allclose(again(x).numpy(), pruned(x).numpy(), atol=1e-6)
    assert CostModel(ChannelGraph.from_model(again)).macs() == info["achieved_macs"]
    with pytest.raises(ValueError, match="does not exist"):
        load_model(str(tmp_path / "missing.keras"))
    with pytest.raises(ValueError, match="not a .keras file"):
        load_model(__file__)


def test_bad_inputs_give_clear_errors():
    _, graph, cost = _registry("resnet20")
    for bad in (0, -0.5, 1.5, "half"):
        with pytest.raises(ValueError, match=r"target_macs_ratio must be .*\(0, 1\].*" + repr(bad).replace(".", r"\.")):
            select_channels("l1", cost, bad)
    with pytest.raises(ValueError, match="'magnitude' is not one of"):
        select_channels("magnitude", cost, 0.5)
    with pytest.raises(ValueError, match="needs the trained gate logits"):
        select_channels("dagger", cost, 0.5)
    with pytest.raises(ValueError, match="below .* the smallest network that keeps min_channels=4"):
        select_channels("l1", cost, 0.001, min_channels=4)
    # a model with nothing to prune
    inp = keras.Input((6,), name="x")
    plain = keras.Model(inp, keras.layers.Dense(3, name="logits")(inp))
    g = ChannelGraph.from_model(plain)
    with pytest.raises(ValueError, match="no prunable channel group"):
        DaggerModule(g)
    with pytest.raises(ValueError, match="no prunable channel group"):
        select_channels("l1", CostModel(g), 0.5)


def test_gates_artifact_and_report(tmp_path):
    model = coupling_zoo()
    graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    module = DaggerModule(graph, hidden=4)
    logits = [l.numpy() for l in module.logits()]
    path = str(tmp_path / "gates.json")
    write_gates(path, graph, module.group_ids, logits, {"method": "dagger"})
    record = read_gates(path, graph)
    assert record["open_gate_macs"] == cost.macs()  # init_logit > 0: every gate starts open
    np.testing.assert_allclose(record["logits_by_id"][module.group_ids[0]], logits[0], rtol=1e-6)
    with pytest.raises(ArtifactError, match="written for another model"):
        read_gates(path, ChannelGraph.from_model(keras.Model(*_renamed_zoo())))
    # no width assignment of this toy lies within 1% of 70% (checked exhaustively): a clear error, or best effort
    with pytest.raises(ValueError, match=r"could not reach the target within 1.0%: \d+ MACs for a target of"):
        exact_target(cost, record["logits_by_id"], 0.7 * cost.macs())
    sel, info = exact_target(cost, record["logits_by_id"], 0.7 * cost.macs(), strict=False)
    md = write_report(str(tmp_path / "report"), graph, sel, {**info, "method": "dagger"},
                      logits=record["logits_by_id"], history=[{"step": 1, "macs_ratio": 0.9, "accuracy": 0.5}],
                      metrics={"fine-tuned accuracy": 0.91})
    text = open(md).read()
    assert "achieved MACs" in text and "cafe-tf's design" in text and "| stem |" in text
    for f in ("gates.png", "gate_histograms.png"):
        assert os.path.getsize(tmp_path / "report" / f) > 1000


def _renamed_zoo():
    inp = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="other_conv")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return inp, keras.layers.Dense(2, name="logits")(x)


# -------------------------------------------------------------------------------------------------
# The program, end to end on a user's .keras model (tiny data, one epoch per stage).


def _user_fmnist_model(prunable=True):
    L = keras.layers
    inp = keras.Input((28, 28, 1), name="img")
    if not prunable:  # nothing between the input and the logits: no channel can go
        x = L.GlobalAveragePooling2D(name="gap")(inp)
        return keras.Model(inp, L.Dense(10, activation="softmax", name="probs")(x), name="flat_user_net")
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv_a")(inp)
    x = L.ReLU(name="relu_a")(L.BatchNormalization(name="bn_a")(x))
    y = L.Conv2D(24, 3, padding="same", use_bias=False, name="conv_b")(x)
    y = L.ReLU(name="relu_b")(L.BatchNormalization(name="bn_b")(y))
    y = L.Conv2D(16, 3, padding="same", use_bias=False, name="conv_c")(y)
    x = L.ReLU(name="relu_c")(L.Add(name="add")([x, L.BatchNormalization(name="bn_c")(y)]))
    x = L.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv_d")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, activation="softmax", name="probs")(x), name="user_net")


def _prune_cmd(workdir, pretrained, data_dir, *extra):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(root, "configs", "fashion_mnist_resnet20_dagger.py")
    return [sys.executable, "-m", "cafe_tf.cli.prune", "--config", config, "--workdir", str(workdir),
            f"--config.prune.pretrained={pretrained}", f"--config.data.data_dir={data_dir}",
            "--config.data.max_train_examples=256", "--config.data.max_eval_examples=128",
            "--config.data.batch_size=64", "--config.data.augment=flip", "--config.dagger.epochs=1", "--config.dagger.log_every=2",
            "--config.finetune.epochs=1", "--config.finetune.eval_splits=('test',)", *extra]


def test_prune_program_on_a_users_keras_model(tmp_path, fashion_mnist_dir):
    user = str(tmp_path / "user.keras")
    _user_fmnist_model().save(user)
    workdir = tmp_path / "run"
    done = subprocess.run(_prune_cmd(workdir, user, fashion_mnist_dir, "--config.prune.target_macs_ratio=0.6"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.load(open(workdir / "summary.json"))
    info = summary["exact_target"]
    assert 0.6 * 0.99 <= info["achieved_ratio"] <= 0.6, info
    pruned = load_model(str(workdir / "finetune" / "model.keras"))
    assert pruned.layers[-1].get_config()["activation"] == "softmax"  # the user's convention survives fine-tuning
    probs = pruned(np.zeros((2, 28, 28, 1), np.float32)).numpy()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    widths = json.load(open(workdir / "prune" / "widths.json"))
    assert CostModel(ChannelGraph.from_model(pruned)).macs() == widths["macs"] == info["achieved_macs"]
    for f in ("report.md", "gates.png", "gate_histograms.png", "gates/gates.json", "prune/pruned.keras"):
        assert (workdir / f).is_file(), f
    assert "done: dagger" in done.stdout
    # bad target ratio: usage error naming the value; a model with nothing to prune: a clean failure
    bad = subprocess.run(_prune_cmd(tmp_path / "bad", user, fashion_mnist_dir, "--config.prune.target_macs_ratio=0"),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "config.prune.target_macs_ratio=0" in bad.stderr and "(0, 1]" in bad.stderr
    flat = str(tmp_path / "flat.keras")
    _user_fmnist_model(prunable=False).save(flat)
    bad = subprocess.run(_prune_cmd(tmp_path / "flat", flat, fashion_mnist_dir), capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1 and "no prunable channel group" in bad.stderr, bad.stderr[-2000:]


def test_prune_program_on_two_workers_only_the_chief_writes(tmp_path, fashion_mnist_dir):
    """A 2-worker MultiWorkerMirroredStrategy cluster on loopback, each worker with its own workdir
    (no shared filesystem): the chief's holds every artifact, the other worker's only its scratch copy;
    both train the same network, and a rerun of the finished run agrees on every stage."""
    user = str(tmp_path / "user.keras")
    _user_fmnist_model().save(user)
    workers = [f"localhost:{port}" for port in free_ports(2)]
    dirs = [tmp_path / "chief_dir", tmp_path / "worker_dir"]

    def cluster():
        procs = []
        for index, workdir in enumerate(dirs):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
                   "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
            procs.append(subprocess.Popen(
                _prune_cmd(workdir, user, fashion_mnist_dir, "--config.distribute.strategy=multi_worker",
                           "--config.prune.target_macs_ratio=0.6"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        outs = []
        for proc in procs:
            try:
                outs.append(proc.communicate(timeout=400))
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                pytest.fail("the 2-worker prune run did not finish in 400 s")
            assert proc.returncode == 0, outs[-1][1][-3000:]
        return outs

    cluster()
    chief, worker = dirs
    scratch = worker / ".scratch_worker_1"
    # the other worker wrote nothing but its own log and its scratch copy
    assert sorted(os.listdir(worker)) == [".scratch_worker_1", "prune.worker_1.log"]
    assert not [p for p in os.listdir(chief) if p.startswith(".scratch")]
    for f in ("summary.json", "report.md", "gates/gates.json", "prune/widths.json", "finetune/model.keras"):
        assert (chief / f).is_file(), f
    assert not (scratch / "report.md").exists()
    widths = [json.load(open(d / "prune" / "widths.json")) for d in (chief, scratch)]
    assert widths[0]["macs"] == widths[1]["macs"] and widths[0]["groups"] == widths[1]["groups"]
    assert 0.6 * 0.99 <= widths[0]["macs"] / CostModel(ChannelGraph.from_model(load_model(user))).macs() <= 0.6
    # Synchronous training: the same trainable weights on both workers (BN moving statistics come from
    # each worker's own batches, as in the standard loop).
    tuned = [[v.numpy() for v in load_model(str(d / "finetune" / "model.keras")).trainable_weights]
             for d in (chief, scratch)]
    for a, b in zip(*tuned):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    cluster()  # every stage is done on both workers: they agree and skip them all


def test_stage_settings_check_refuses_any_setting_that_differs_or_is_missing():
    from cafe_tf.config import ConfigError, to_dict
    from cafe_tf.dagger.pipeline import _same_settings, dagger_section

    now = {"method": "dagger", "dagger": {**to_dict(dagger_section()), "target_ramp": 0.0, "group_bias": True}}
    _same_settings({"settings": now}, now, "gates.json")
    lacking = {"method": "dagger", "dagger": {k: v for k, v in now["dagger"].items() if k != "target_ramp"}}
    with pytest.raises(ConfigError,
                       match=r"gates.json was written with other settings \(dagger.target_ramp: None there, 0.0 now\)"):
        _same_settings({"settings": lacking}, now, "gates.json")
    shared_bias = {**now, "dagger": {**now["dagger"], "group_bias": False}}
    with pytest.raises(ConfigError, match=r"\(dagger.group_bias: True there, False now\)"):
        _same_settings({"settings": now}, shared_bias, "gates.json")
    with pytest.raises(ConfigError, match="method: 'l1' there, 'dagger' now"):
        _same_settings({"settings": {**now, "method": "l1"}}, now, "gates.json")


def test_soft_gates_and_temperature_schedule():
    from cafe_tf.dagger.train import temperature_at

    assert temperature_at(0, 11, 1.0, 0.01) == pytest.approx(1.0)
    assert temperature_at(5, 11, 1.0, 0.01) == pytest.approx(0.1)
    assert temperature_at(10, 11, 1.0, 0.01) == pytest.approx(0.01)
    logits = [tf.constant([-1.0, 0.5, 2.0])]
    soft = gates_from_logits(logits, "soft", 1.0)[0].numpy()
    assert 0 < soft.min() and soft.max() < 1
    cold = gates_from_logits(logits, "soft", 0.01)[0].numpy()  # annealed: close to the hard gates
    np.testing.assert_allclose(cold, gates_from_logits(logits, "hard")[0].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="'sharp' is not one of"):
        gates_from_logits(logits, "sharp")


# -------------------------------------------------------------------------------------------------
# channel_multiple: every kept width a multiple of it or the group's full width, MACs still in band.


def _assert_multiples(graph, selection, m):
    for g in graph.prunable_groups:
        kept = len(selection[g.id])
        assert kept % m == 0 or kept == g.size, (g.name, g.size, kept, m)


@pytest.mark.parametrize("m", [3, 8])  # 3: every group has a remainder (16, 32, 64 channels)
def test_exact_target_channel_multiple_on_resnet20(m):
    _, graph, cost = _registry("resnet20")
    rng = np.random.default_rng(m)
    logits = {g.id: rng.normal(0, 2, g.size) for g in graph.prunable_groups}
    for ratio in (0.3, 0.5, 0.7):
        for method in ("dagger", "l1", "uniform"):
            selection, info = select_channels(method, cost, ratio, logits=logits, channel_multiple=m)
            _assert_multiples(graph, selection, m)
            macs = cost.macs(cost.widths_of(selection))
            assert macs == info["achieved_macs"] and info["channel_multiple"] == m
            assert (1 - 0.01) * ratio * cost.macs() <= macs <= ratio * cost.macs(), (method, ratio, info)
    # units of m are ranked by score: the kept channels of a group are its best-scored ones
    selection, _ = exact_target(cost, logits, 0.5 * cost.macs(), channel_multiple=m)
    for gid, idx in selection.items():
        kept = np.sort(np.argsort(-logits[gid], kind="stable")[: len(idx)])
        np.testing.assert_array_equal(idx, kept)


@settings(max_examples=15, deadline=None)
# the toy's groups have 4, 5, 6, 8 and 9 channels: most leave a remainder
@given(m=st.sampled_from([2, 3, 4]), ratio=st.floats(0.35, 0.95), seed=st.integers(0, 2**16))
def test_exact_target_channel_multiple_property_on_a_toy_model(m, ratio, seed):
    graph, cost = _zoo()
    rng = np.random.default_rng(seed)
    logits = {g.id: rng.normal(0, 2, g.size) for g in graph.prunable_groups}
    try:
        selection, info = exact_target(cost, logits, ratio * cost.macs(), strict=False, channel_multiple=m)
    except ValueError as e:  # one unit of m per group may already cost more than a low target
        assert f"the smallest network that keeps min_channels=1 and min_keep_ratio=0.0 per group in units of " \
               f"channel_multiple={m}; raise the target" in str(e)
        assert cost.macs(cost.widths_of({g.id: np.arange(m) for g in graph.prunable_groups})) > ratio * cost.macs()
        return
    _assert_multiples(graph, selection, m)
    assert info["achieved_macs"] == cost.macs(cost.widths_of(selection)) <= ratio * cost.macs()


@functools.cache
def _zoo() -> tuple[ChannelGraph, CostModel]:
    """Built on first use, not at import: a subprocess that imports this module first sets up its
    logical CPUs, which TensorFlow refuses once a model exists."""
    graph = ChannelGraph.from_model(coupling_zoo())
    return graph, CostModel(graph)


def test_channel_multiple_errors_name_the_value_and_the_group():
    _, graph, cost = _registry("resnet20")
    logits = {g.id: np.ones(g.size) for g in graph.prunable_groups}
    with pytest.raises(ValueError, match=r"channel_multiple=0 is invalid; it must be an integer >= 1"):
        exact_target(cost, logits, 0.5 * cost.macs(), channel_multiple=0)
    with pytest.raises(ValueError, match=r"channel_multiple=32 is larger than prunable group '.*' \(16 channels\); "
                                         r"use a multiple <= 16, or declare that layer a fixed-width boundary"):
        select_channels("l1", cost, 0.5, channel_multiple=32)


def test_prune_config_channel_multiple_checked_before_training():
    import ml_collections

    from cafe_tf.config import ConfigError
    from cafe_tf.dagger.pipeline import _check_channel_multiple, prune_section, validate_prune

    section = prune_section()
    assert section.channel_multiple == 1
    validate_prune(section)
    for bad in (0, -8):
        section.channel_multiple = bad
        with pytest.raises(ConfigError, match=rf"config.prune.channel_multiple={bad} is invalid; it must be an integer >= 1"):
            validate_prune(section)
    model, graph, _ = _registry("resnet20")
    config = ml_collections.ConfigDict(dict(prune=dict(channel_multiple=64)))
    with pytest.raises(ConfigError, match=r"config.prune.channel_multiple=64 is larger than prunable group '.*' "
                                          r"\(16 channels\).*boundaries=\[...\]"):
        _check_channel_multiple(config, model, graph)
    config.prune.channel_multiple = 16
    _check_channel_multiple(config, model, graph)


def _dagger_benchmark():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                        "dagger_fashion_mnist.py")
    spec = importlib.util.spec_from_file_location("dagger_fashion_mnist", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_summary_pairs_arms_with_the_baseline_on_the_same_seed():
    from scipy import stats

    bench = _dagger_benchmark()
    acc = {"l1": [0.90, 0.91, 0.92], "dagger": [0.89, 0.905, 0.90]}
    rows = [{"seed": s, "method": m, "pretrained": 0.93, "before_finetune": 0.8, "finetuned": acc[m][s],
             "macs_ratio": 0.4990 + 0.0001 * s, "relative_error": -0.002, "pretrained_model": f"p{s}"}
            for m in acc for s in range(3)]
    table, lines = bench.summarize(rows, ["dagger", "l1"], "l1")
    d = 100 * (np.array(acc["dagger"]) - np.array(acc["l1"]))  # -1.0, -0.5, -2.0
    paired = table["dagger"]["minus_baseline_pt"]
    assert paired["mean"] == pytest.approx(d.mean()) and paired["diffs"] == pytest.approx(d.tolist())
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert (paired["low"], paired["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert table["l1"]["minus_baseline_pt"]["mean"] == 0.0
    assert table["dagger"]["accuracy_std"] == pytest.approx(np.std(acc["dagger"], ddof=1))
    row = next(line for line in lines if line.startswith("| dagger |"))
    assert f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}] (3 seeds)" in row
    assert "unpruned (3 models)" in lines[-2] and "seed 0 0.000%" in lines[-1]
    # Pairing is by seed: a baseline seed missing leaves that arm's seed out of the difference.
    table, _ = bench.summarize([r for r in rows if not (r["method"] == "l1" and r["seed"] == 2)], ["dagger"], "l1")
    assert table["dagger"]["minus_baseline_pt"]["n"] == 2
    assert table["dagger"]["minus_baseline_pt"]["diffs"] == pytest.approx(d[:2].tolist())


def test_benchmark_arm_tags_template():
    bench = _dagger_benchmark()
    assert bench.arm_tags(["dagger", "l1"], "", "") == (["dagger", "l1"], ["", ""])
    assert bench.arm_tags(["dagger", "l1"], "{method}_kd", "{method}") == (["dagger_kd", "l1_kd"], ["dagger", "l1"])
    assert bench.arm_tags(["dagger"], "dagger_ft10", "dagger") == (["dagger_ft10"], ["dagger"])
    with pytest.raises(SystemExit, match="names one arm"):
        bench.arm_tags(["dagger", "l1"], "kd", "")
    with pytest.raises(SystemExit, match="needs a --tag of its own"):
        bench.arm_tags(["dagger", "l1"], "", "{method}")
