"""Dagger's options: MACs step scaling, head initialisations, per-MAC ranking, the L1-order fill of
Dagger's widths, and the per-group logit trace of gate training. Each test checks what the option
claims, on small models."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cafe_tf import models
from cafe_tf.config import ConfigError
from cafe_tf.dagger.module import DaggerModule, gate_masks, gates_from_logits
from cafe_tf.dagger.prune import (exact_target, filter_l1_norms, l1_fill, load_model, per_mac_scores, save_model,
                                  select_channels)
from cafe_tf.dagger.regularizer import FlopsRegularizer
from cafe_tf.dagger.report import write_report
from cafe_tf.dagger.train import LOGIT_TRACE_STEPS, GateTrainer, read_gates, write_gates
from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph


def _resnet20():
    model = models.build("resnet20", input_shape=(16, 16, 3), num_classes=7)
    graph = ChannelGraph.from_model(model)
    return model, graph, CostModel(graph)


def _tiny_model(seed=0):
    L = keras.layers
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1), name="image")
    x = L.ReLU(name="r1")(L.BatchNormalization(name="b1")(L.Conv2D(12, 3, padding="same", use_bias=False,
                                                                    name="c1")(inp)))
    x = L.ReLU(name="r2")(L.BatchNormalization(name="b2")(L.Conv2D(16, 3, padding="same", use_bias=False,
                                                                    name="c2")(x)))
    out = L.Dense(3, name="logits")(L.GlobalAveragePooling2D(name="gap")(x))
    return keras.Model(inp, out, name="tiny")


def _group_speeds(module, graph, cost, steps=8):
    """Mean logit decrease per group after ``steps`` Adam steps on the FLOPs term alone, far over budget
    (a gradient of one sign on every gate)."""
    reg = FlopsRegularizer(cost, 0.05 * cost.macs(), weight=2.0)
    opt = keras.optimizers.Adam(1e-3)
    before = [l.numpy() for l in module.logits()]
    for _ in range(steps):
        with tf.GradientTape() as tape:
            _, widths = gate_masks(graph, module.group_ids, gates_from_logits(module.logits()))
            loss, _ = reg(widths)
        opt.apply_gradients(zip(tape.gradient(loss, module.trainable_variables), module.trainable_variables))
    return np.asarray([float(np.mean(b - a)) for b, a in zip(before, [l.numpy() for l in module.logits()])])


def test_macs_step_scaling_orders_logit_speed_by_channel_cost():
    _, graph, cost = _resnet20()
    marginal = cost.marginal_macs()[[g.id for g in graph.prunable_groups]]
    scaled = DaggerModule(graph, hidden=32, step_scaling="macs")
    np.testing.assert_allclose(np.concatenate([l.numpy() for l in scaled.logits()]), 3.0, rtol=1e-5)
    speed = _group_speeds(scaled, graph, cost)
    assert np.all(speed > 0)
    # Every pair of groups whose channels' MACs differ by at least 1.3x: the costlier one closes faster.
    for i in range(len(speed)):
        for j in range(len(speed)):
            if marginal[i] >= 1.3 * marginal[j]:
                assert speed[i] > speed[j], (i, j, marginal[i], marginal[j], speed[i], speed[j])
    # Adam alone (the default): about one speed for all groups, the stem (the costliest channels) among
    # the slowest, so the per-group speed does not follow the cost.
    plain = _group_speeds(DaggerModule(graph, hidden=32), graph, cost)
    stem = int(np.argmax(marginal))
    assert plain[stem] < np.median(plain)
    assert plain.max() / plain.min() < 3 < marginal.max() / marginal.min()


def test_head_initialisations_start_a_groups_gates_apart():
    _, graph, _ = _resnet20()
    norms = filter_l1_norms(graph)
    zeros = DaggerModule(graph, hidden=16).logits()
    assert all(np.ptp(l.numpy()) < 1e-6 for l in zeros)  # the default: every logit of a group equal
    for head_init in ("random", "l1"):
        logits = DaggerModule(graph, hidden=16, head_init=head_init, head_init_scale=0.5).logits()
        assert all(np.ptp(l.numpy()) > 1e-3 for l in logits), head_init
    l1_logits = DaggerModule(graph, hidden=16, head_init="l1", head_init_scale=0.5).logits()
    for gid, logit in zip([g.id for g in graph.prunable_groups], l1_logits):
        # In the filters' L1 order within every group (the head starts at zero; the offset alone differs).
        np.testing.assert_array_equal(np.argsort(logit.numpy(), kind="stable"),
                                      np.argsort(norms[gid], kind="stable"))
    # The random head is seeded: the same seed, the same logits; another seed, others.
    a = DaggerModule(graph, hidden=16, head_init="random", seed=3).logits()
    b = DaggerModule(graph, hidden=16, head_init="random", seed=3).logits()
    c = DaggerModule(graph, hidden=16, head_init="random", seed=4).logits()
    np.testing.assert_allclose(np.concatenate(a), np.concatenate(b))
    assert not np.allclose(np.concatenate(a), np.concatenate(c))
    with pytest.raises(ValueError, match="head_init='norm' is not one of"):
        DaggerModule(graph, head_init="norm")
    with pytest.raises(ValueError, match="step_scaling='adam' is not one of"):
        DaggerModule(graph, step_scaling="adam")


def test_per_mac_ranking_picks_the_cheaper_channels_and_meets_the_target():
    graph = ChannelGraph.from_model(_tiny_model())
    cost = CostModel(graph)
    c1, c2 = graph.group_by_name["c1"].id, graph.group_by_name["c2"].id
    marginal = cost.marginal_macs()
    assert marginal[c1] > 1.3 * marginal[c2]  # a c1 channel costs more (it feeds c2)
    # c1's logits are higher than c2's, but not by enough to pay for their MACs.
    logits = {c1: 2.0 + 0.01 * np.arange(12), c2: 1.5 + 0.01 * np.arange(16)}
    per_mac = per_mac_scores(cost, logits)
    assert per_mac[c1].max() < per_mac[c2].min()
    tol = 0.03
    by_logit, info_logit = select_channels("dagger", cost, 0.7656, logits=logits, tolerance=tol)
    by_mac, info_mac = select_channels("dagger", cost, 0.7656, logits=logits, tolerance=tol, rank_by="score_per_mac")
    # By logit: c2's filters go (the lowest logits); per MAC: c1's go (the lowest gate value per MAC).
    assert len(by_logit[c1]) == 12 and len(by_logit[c2]) < 16
    assert len(by_mac[c2]) == 16 and len(by_mac[c1]) < 12
    np.testing.assert_array_equal(by_mac[c1], np.arange(12 - len(by_mac[c1]), 12))  # the best logits of c1
    for info in (info_logit, info_mac):
        assert (1 - tol) * info["target_macs"] <= info["achieved_macs"] <= info["target_macs"]
        assert info["achieved_macs"] == cost.macs(cost.widths_of(by_mac if info is info_mac else by_logit))
    assert info_mac["rank_by"] == "score_per_mac"
    # the same exact-target step takes the per-MAC scores directly
    direct, _ = exact_target(cost, per_mac, 0.7656 * cost.macs(), {g: np.ones(v.size, bool) for g, v in logits.items()},
                             tolerance=tol)
    for gid in by_mac:
        np.testing.assert_array_equal(direct[gid], by_mac[gid])
    with pytest.raises(ValueError, match="method 'l1' has none"):
        select_channels("l1", cost, 0.5, rank_by="score_per_mac")


def test_l1_fill_keeps_the_top_l1_filters_at_daggers_widths():
    graph = ChannelGraph.from_model(_tiny_model())
    norms = filter_l1_norms(graph)
    c1, c2 = graph.group_by_name["c1"].id, graph.group_by_name["c2"].id
    filled = l1_fill(graph, {c1: 5, c2: 9})
    for gid, width in ((c1, 5), (c2, 9)):
        assert len(filled[gid]) == width
        np.testing.assert_array_equal(filled[gid], np.sort(np.argsort(-norms[gid], kind="stable")[:width]))
        assert norms[gid][filled[gid]].min() >= np.delete(norms[gid], filled[gid]).max()
    with pytest.raises(ValueError, match="width 13 of group 'c1' is not in"):
        l1_fill(graph, {c1: 13})


def _prune_config(method, **prune):
    from cafe_tf.config import base_config
    from cafe_tf.dagger.pipeline import dagger_section, prune_section

    config = base_config()
    config.prune, config.dagger = prune_section(), dagger_section()
    config.prune.update(method=method, bn_calibration_batches=0, evaluate_before_finetune=False, **prune)
    return config


def test_dagger_l1_fill_stage_prunes_the_pretrained_weights(tmp_path):
    from cafe_tf.dagger.pipeline import stage_prune, validate_dagger, validate_prune

    pretrained = _tiny_model(seed=0)
    path = os.path.join(tmp_path, "pretrained.keras")
    save_model(pretrained, path)
    trained = _tiny_model(seed=1)  # the gate-trained network: other weights, so other L1 orders
    graph = ChannelGraph.from_model(trained)
    cost = CostModel(graph)
    rng = np.random.default_rng(0)
    logits = {g.id: rng.normal(1.0, 1.0, g.size) for g in graph.prunable_groups}
    config = _prune_config("dagger_l1_fill", target_macs_ratio=0.5, tolerance=0.05)
    validate_prune(config.prune)
    validate_dagger(config.dagger)
    pruned, selection, info = stage_prune(config, str(tmp_path / "run"), trained, path, logits)
    dagger_sel, dagger_info = select_channels("dagger", cost, 0.5, logits=logits, tolerance=0.05)
    pre_graph = ChannelGraph.from_model(load_model(path))
    norms = filter_l1_norms(pre_graph)
    for gid, idx in selection.items():
        assert len(idx) == len(dagger_sel[gid])  # Dagger's widths
        np.testing.assert_array_equal(idx, np.sort(np.argsort(-norms[gid], kind="stable")[:len(idx)]))
    assert info["achieved_macs"] == dagger_info["achieved_macs"]
    # The pruned model's c1 kernel is the pretrained model's, at the kept filters.
    c1 = pre_graph.group_by_name["c1"].id
    np.testing.assert_allclose(pruned.get_layer("c1").kernel.numpy(),
                               pretrained.get_layer("c1").kernel.numpy()[..., selection[c1]])


def test_option_validators_name_the_value():
    from cafe_tf.dagger.pipeline import dagger_section, validate_dagger, validate_prune

    with pytest.raises(ConfigError, match=r"config.prune.rank_by='per_mac' is invalid; valid values"):
        validate_prune(_prune_config("dagger", rank_by="per_mac").prune)
    with pytest.raises(ConfigError, match=r"config.prune.method='l1' has none"):
        validate_prune(_prune_config("l1", rank_by="score_per_mac").prune)
    for key, bad in (("head_init", "ones"), ("step_scaling", "sgd")):
        section = dagger_section()
        section[key] = bad
        with pytest.raises(ConfigError, match=rf"config.dagger.{key}='{bad}' is invalid; valid values"):
            validate_dagger(section)
    section = dagger_section()
    section.head_init_scale = -1.0
    with pytest.raises(ConfigError, match="head_init_scale=-1.0 is invalid"):
        validate_dagger(section)


def test_logit_trace_recorded_at_its_steps_and_kept_across_a_resume(tmp_path):
    model = _tiny_model()
    graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 64)
    images = rng.normal(0, 1, (64, 8, 8, 1)).astype("float32") + labels[:, None, None, None].astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16).repeat()
    reg = FlopsRegularizer(cost, 0.4 * cost.macs(), weight=2.0)

    def trainer(steps):
        module = DaggerModule(graph, hidden=8, init_logit=1.0)
        return GateTrainer(model, module, reg, str(tmp_path), total_steps=steps, gate_lr=0.05, checkpoint_every=10)

    first = trainer(20)
    first.train(ds, log_every=10, progress=False)
    assert [t["step"] for t in first.logit_trace] == [0, 4, 8, 16]
    assert set(first.logit_trace[0]["mean_logit"]) == {"c1", "c2"}
    np.testing.assert_allclose(list(first.logit_trace[0]["mean_logit"].values()), 1.0, rtol=1e-5)
    final = {graph.groups[gid].name: float(np.mean(l)) for gid, l in zip(first.module.group_ids, first.logits())}
    assert first.logit_trace[-1]["mean_logit"] != first.logit_trace[0]["mean_logit"]
    second = trainer(40)
    second.train(ds, log_every=10, progress=False)
    assert [t["step"] for t in second.logit_trace] == [s for s in LOGIT_TRACE_STEPS if s <= 40]
    assert second.logit_trace[:4] == first.logit_trace
    assert final != second.logit_trace[-1]["mean_logit"]
    # gates.json carries it, and the report prints it as a table (one row per group, one column per step)
    path = str(tmp_path / "gates.json")
    write_gates(path, graph, second.module.group_ids, second.logits(), {"logit_trace": second.logit_trace})
    assert read_gates(path)["logit_trace"] == second.logit_trace
    selection = {gid: np.arange(graph.groups[gid].size) for gid in second.module.group_ids}
    info = {"target_macs": 1.0, "target_ratio": 1.0, "achieved_macs": 1, "achieved_ratio": 1.0,
            "relative_error": 0.0, "full_macs": 1}
    text = open(write_report(str(tmp_path / "report"), graph, selection, info,
                             logit_trace=second.logit_trace)).read()
    assert "| group | step 0 | step 4 | step 8 | step 16 | step 32 |" in text
    c1_row = [line for line in text.splitlines() if line.startswith("| c1 |")][-1]
    assert f"{second.logit_trace[-1]['mean_logit']['c1']:+.3f}" in c1_row


# -------------------------------------------------------------------------------------------------
# The Dagger study's cell kinds, each run once through the study runner's cell body on tiny data.


def _tiny_study(tmp_path, data_dir):
    from cafe_tf import io
    from cafe_tf.study import manifest as manifest_lib

    recipe = {
        "data": {"name": "fashion_mnist", "data_dir": data_dir, "batch_size": 64, "max_train_examples": 256,
                 "max_eval_examples": 64, "augment": "none"},
        "model": {"name": "resnet20"},
        "pretrain": {"epochs": 2, "lr": 0.05, "log_every": 100},
        "finetune": {"epochs": 1, "lr": 0.01, "log_every": 100, "eval_every": 0},
        "prune": {"bn_calibration_batches": 1, "tolerance": 0.05},
        "dagger": {"epochs": 1.0, "log_every": 2, "hidden": 8},
        "variants": {"default": {}, "per_mac": {"prune.rank_by": "score_per_mac"}},
    }
    pre = {"pretrained": "pre2"}
    ft = [{"id": f"ft_{arm}_s{s}", "kind": "dagger_finetune", "after": ["pre2"] + (["gates"] if gated else []),
           "params": {**pre, "arm": arm, "seed": s, "target_ratio": 0.5, **({"gates": "gates"} if gated else {})}}
          for arm, gated in (("none", False), ("l1", False)) for s in (0, 1)]
    ft += [{"id": f"ft_{arm}_{v}_s{s}", "kind": "dagger_finetune", "after": ["pre2", "gates", "budget"],
            "params": {**pre, "arm": arm, "seed": s, "budget": "budget", "gates": "gates", "variant": v}}
           for arm, v in (("dagger", "default"), ("dagger", "per_mac"), ("dagger_l1_fill", "default"))
           for s in (0,)]
    cells_ = [
        {"id": "pre1", "kind": "dagger_pretrain", "unit": "pretrain", "params": {"seed": 0, "stop_after_epoch": 1}},
        {"id": "pre2", "kind": "dagger_pretrain", "unit": "pretrain", "params": {"seed": 0, "stop_after_epoch": 2}},
        {"id": "gates", "kind": "dagger_gates", "after": ["pre2"],
         "params": {**pre, "variant": "default", "target_ratio": 0.5}},
        *ft[:4],
        {"id": "budget", "kind": "dagger_budget", "after": ["ft_none_s0", "ft_none_s1", "ft_l1_s0", "ft_l1_s1"],
         "params": {"unpruned": ["ft_none_s0", "ft_none_s1"], "min_drop": -1.0,
                    "candidates": [{"target_ratio": 0.5, "l1": ["ft_l1_s0", "ft_l1_s1"]}]}},
        *ft[4:],
        {"id": "select", "kind": "dagger_pilot_select", "after": [c["id"] for c in ft] + ["budget"],
         "params": {"min_gain": -1.0, "arms": {"default": ["ft_dagger_default_s0"], "per_mac": ["ft_dagger_per_mac_s0"]},
                    "budget": "budget", "l1": {"0.5": ["ft_l1_s0"]}}},
    ]
    study = tmp_path / "study"
    io.write_artifact(str(study / "manifest.json"), manifest_lib.SCHEMA, manifest_lib.VERSION, {
        "name": "dagger_tiny", "commit": "0" * 40, "modules": ["cafe_tf.study.dagger"], "recipe": recipe,
        "recipe_sha256": manifest_lib.recipe_sha256(recipe), "cells": cells_, "claims": []})
    return str(study), [c["id"] for c in cells_]


@pytest.mark.slow  # about 15 cell runs of ResNet-20 on 256 images: minutes on 2 cores
def test_dagger_study_cell_kinds_on_tiny_data(tmp_path, fashion_mnist_dir):
    from cafe_tf.study import run_cell

    study, ids = _tiny_study(tmp_path, fashion_mnist_dir)
    rec = {cid: run_cell(study, cid) for cid in ids}
    # the pretraining unit: the first cell leaves a checkpoint, the second resumes it and writes the model
    assert rec["pre1"]["result"] == {"epochs_done": 1} and rec["pre1"]["checkpoint"]
    assert "history.json" in rec["pre1"]["checkpoint"] and not rec["pre1"]["artifacts"]
    assert rec["pre2"]["result"]["epochs_done"] == 2 and "model.keras" in rec["pre2"]["artifacts"]
    # epoch 2 continued from epoch 1's checkpoint (and its history), not from scratch
    assert rec["pre2"]["result"]["history_epochs"] == [1, 2]
    assert rec["pre2"]["result"]["resumed_from_step"] == rec["pre2"]["result"]["steps"] // 2 > 0
    g = rec["gates"]["result"]
    assert {"gates.json", "model.keras"} <= set(rec["gates"]["artifacts"])
    assert [t["step"] for t in g["logit_trace"]] == [s for s in LOGIT_TRACE_STEPS if s <= g["steps"]]
    for cid in ids:
        if cid.startswith("ft_"):
            r = rec[cid]["result"]
            assert 0 <= r["validation_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1
            if r["arm"] == "none":
                assert r["macs_ratio"] == 1.0
            else:
                assert 0.95 <= r["macs_over_target"] <= 1.0, (cid, r)
    # dagger_l1_fill keeps Dagger's widths (the same gates, the same ranking)
    assert rec["ft_dagger_l1_fill_default_s0"]["result"]["widths"] == rec["ft_dagger_default_s0"]["result"]["widths"]
    assert rec["budget"]["result"]["target_ratio"] == 0.5  # the only candidate, chosen or not
    d = rec["budget"]["result"]["candidates"][0]["difference"]
    expected = [rec[f"ft_none_s{s}"]["result"]["validation_accuracy"] - rec[f"ft_l1_s{s}"]["result"]
                ["validation_accuracy"] for s in (0, 1)]
    np.testing.assert_allclose(d["diffs"], expected)
    # min_drop -1: the interval above zero decides
    assert rec["budget"]["result"]["headroom_found"] == (d["low"] > 0)
    sel = rec["select"]["result"]
    gain = (rec["ft_dagger_per_mac_s0"]["result"]["validation_accuracy"]
            - rec["ft_dagger_default_s0"]["result"]["validation_accuracy"])
    assert sel["differences"]["per_mac"]["mean"] == pytest.approx(gain)
    assert sel["chosen"] == "per_mac"  # min_gain -1: any gain is enough, and it is the only other variant
    assert sel["overrides"] == {"prune.rank_by": "score_per_mac"}
    assert sel["vs_l1"]["default"]["mean"] == pytest.approx(
        rec["ft_dagger_default_s0"]["result"]["validation_accuracy"] - rec["ft_l1_s0"]["result"]["validation_accuracy"])

