"""The training kernel: task-aware evaluation, float32 L2, checkpoints of every loop (old ones too),
history, mixed precision in the supernet and gate loops, multi-label gate training."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cafe_tf import io, models
from cafe_tf.config import ConfigError
from cafe_tf.dagger import FlopsRegularizer, FreeGates, GateTrainer
from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph
from cafe_tf.slim import Supernet
from cafe_tf.space import SearchSpace
from cafe_tf.training import kernel
from cafe_tf.training import supernet as S
from supernet_helpers import INFO, cnn, separable_source

# Largest relative difference allowed between a mixed-precision run's per-step losses and the float32
# run's from the same weights on the same batches (no dropout: its masks are drawn in the compute
# dtype), about twice what was measured here. bfloat16 keeps 8 bits of mantissa, float16 11.
# Measured: 4 min-min steps (a new random width each step, BN on batches of 16) part by up to 8.8%
# (bfloat16) and 3.5% (float16), as much as a plain cnn_small under model.fit-style steps (3.4%
# after one bfloat16 step); the selection pass's K candidate losses at step 0 by 0.5% and 0.05%;
# 4 gate-training steps by 0.14% and 0.08%.
TOLERANCE = {
    "minmin": {"mixed_bfloat16": 0.15, "mixed_float16": 0.07},
    "selection": {"mixed_bfloat16": 0.01, "mixed_float16": 0.001},
    "gates": {"mixed_bfloat16": 0.003, "mixed_float16": 0.002},
}


# ---------------------------------------------------------------------------- evaluation and L2


def test_evaluate_scores_single_and_multi_label_batches():
    step = kernel.make_eval_step(lambda x: x)  # the "model" outputs its input as logits
    logits = tf.constant([[2.0, 1.0], [0.0, 3.0]])
    single = kernel.evaluate(step, [(logits, tf.constant([0, 0]))])
    expected = keras.losses.sparse_categorical_crossentropy(tf.constant([0, 0]), logits, from_logits=True).numpy().mean()
    assert single["accuracy"] == 0.5 and single["examples"] == 2
    assert single["loss"] == pytest.approx(expected, rel=1e-6)
    multi = kernel.evaluate(kernel.make_eval_step(lambda x: x), [(tf.constant([[1.0, -1.0], [-1.0, -1.0]]), tf.constant([[1, 0], [1, 1]]))])
    assert multi["accuracy"] == 0.5  # example 1: both attributes right; example 2: both wrong
    with pytest.raises(ValueError, match="task='classification' needs labels of shape \\[batch\\]"):
        kernel.evaluate(kernel.make_eval_step(lambda x: x, "classification"), [(logits, tf.constant([[1, 0], [0, 1]]))])
    with pytest.raises(ValueError, match="held no examples"):
        kernel.evaluate(step, [])


def test_l2_penalty_is_float32_for_half_precision_weights():
    weights = [tf.Variable(np.full(4, 300.0, np.float16))]  # 300^2 * 4 overflows float16 (max 65504)
    penalty = kernel.l2_penalty(weights, 1e-3)
    assert penalty.dtype == tf.float32
    assert float(penalty) == pytest.approx(0.5 * 1e-3 * 4 * 300.0**2)
    assert float(kernel.l2_penalty(weights, 0.0)) == 0.0


# ---------------------------------------------------------------------------- checkpoints and history


def dropout_model():
    x = inp = keras.Input((4,))
    x = keras.layers.Dense(3, name="dense")(x)
    out = keras.layers.Dropout(0.5, seed=1, name="dropout")(x)
    return keras.Model(inp, out)


def _state(model):
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    opt.build(model.trainable_variables)
    return opt, tf.Variable(0, dtype=tf.int64)


def test_a_checkpoint_without_the_rng_key_is_refused_by_name(tmp_path):
    old = dropout_model()
    opt, step = _state(old)
    seeds = kernel.rng_states([old])
    assert seeds, "the Dropout layer has a seed state"
    # Random states under another key, and none at all: neither resumes.
    tf.train.Checkpoint(model=old, optimizer=opt, step=step, seed_states=seeds).save(
        os.path.join(tmp_path, "a", "checkpoints", "ckpt"))
    tf.train.Checkpoint(model=old, optimizer=opt, step=step).save(os.path.join(tmp_path, "b", "checkpoints", "ckpt"))
    for sub in ("a", "b"):
        new = dropout_model()
        opt2, step2 = _state(new)
        ckpt = kernel.Checkpointer(tf.distribute.get_strategy(), str(tmp_path / sub), "checkpoints", rng_models=[new],
                                   model=new, optimizer=opt2, step=step2)
        with pytest.raises(kernel.CheckpointMismatchError, match=f"ckpt-1 lacks \\['rng'\\].*remove .*{sub}"):
            ckpt.restore()


def test_a_checkpoint_of_another_loop_or_shape_is_refused_by_name(tmp_path):
    model = dropout_model()
    opt, step = _state(model)
    gates = kernel.Checkpointer(tf.distribute.get_strategy(), str(tmp_path), "checkpoints", model=model,
                                main_opt=opt, step=step)
    gates.save(1)
    other = dropout_model()
    opt2, step2 = _state(other)
    standard_like = kernel.Checkpointer(tf.distribute.get_strategy(), str(tmp_path), "checkpoints",
                                        model=other, optimizer=opt2, step=step2)
    with pytest.raises(kernel.CheckpointMismatchError, match="lacks \\['optimizer'\\] .*main_opt.*another training loop"):
        standard_like.restore()

    shaped = kernel.Checkpointer(tf.distribute.get_strategy(), str(tmp_path / "s"), "checkpoints", run_shape=(5, 16),
                                 model=model, step=step)
    shaped.save(1)
    again = kernel.Checkpointer(tf.distribute.get_strategy(), str(tmp_path / "s"), "checkpoints", run_shape=(4, 16),
                                model=model, step=step)
    with pytest.raises(ConfigError, match="5 steps/epoch at global batch 16; this run has 4 steps/epoch"):
        again.restore()


def test_history_is_versioned_and_refuses_other_versions_by_name(tmp_path):
    history = kernel.History(str(tmp_path))
    history.append({"step": 10, "loss": 1.0})
    history.append({"step": 20, "loss": 0.5})
    assert kernel.History(str(tmp_path)).load(15) == [{"step": 10, "loss": 1.0}]
    stored = json.load(open(tmp_path / "history.json"))
    assert stored["schema"] == kernel.HISTORY_SCHEMA and stored["schema_version"] == kernel.HISTORY_VERSION
    for old in ([{"step": 10, "loss": 1.0}], {**stored, "schema_version": kernel.HISTORY_VERSION - 1}):
        with open(tmp_path / "history.json", "w") as f:
            json.dump(old, f)
        with pytest.raises(io.ArtifactError, match="history.json"):
            kernel.History(str(tmp_path)).load(15)
    with pytest.raises(io.ArtifactError, match=f"schema_version {kernel.HISTORY_VERSION - 1}; this cafe-tf reads "
                       f"version {kernel.HISTORY_VERSION} only: re-run the training stage"):
        kernel.History(str(tmp_path)).load(15)


# ---------------------------------------------------------------------------- mixed precision


def _settled_loss_scale(*optimizers):
    """Starts float16 loss scaling at 2^8 instead of Keras's 2^15, whose first steps overflow and are skipped
    (the dynamic scale halves until they fit), so the runs compare step for step. Still != 1: a loop
    that forgot to scale the loss or to unscale the gradients would be 256x off."""
    for opt in optimizers:
        if isinstance(opt, keras.optimizers.LossScaleOptimizer):
            opt.dynamic_scale.assign(256.0)


def plain_cnn():
    return models.build("cnn_small", input_shape=(12, 12, 1), num_classes=3, dropout=0.0)


def _minmin_losses(policy, weights, num_candidates, steps=4):
    """Per step: the trained loss and the K candidates' selection losses (BN on batch statistics)."""
    with kernel.dtype_policy(policy):
        model = plain_cnn()
    model.set_weights(weights)
    supernet = Supernet(model)
    space = SearchSpace(supernet.graph, granularity="uniform", num_bins=4)
    opt = kernel.loss_scaled(keras.optimizers.SGD(0.01, momentum=0.9), policy)
    opt.build(model.trainable_variables)
    _settled_loss_scale(opt)
    trainer = S.MinMinTrainer(supernet, space, opt, S.MinMinOptions(num_candidates=num_candidates),
                              num_classes=3, global_batch=16, weight_decay=5e-4)
    losses, candidates = [], []
    for step, batch in enumerate(separable_source(n=64).make_train(0, 0, None).take(steps)):
        out = trainer.train_step(batch, S.plan_step(space, S.step_rng(0, step), trainer.options))
        losses.append(float(out["loss"][-1]))
        candidates.append(out["candidate_losses"][-1])
    return losses, candidates


@pytest.fixture(scope="module")
def float32_runs(tmp_path_factory):
    """The float32 references, run once for both policies: the weights, the losses they give."""
    keras.utils.set_random_seed(0)
    weights = plain_cnn().get_weights()
    return {"weights": weights, "minmin": _minmin_losses("none", weights, 1)[0],
            "selection": _minmin_losses("none", weights, 2, steps=1)[1],
            "gates": _gate_losses("none", weights, tmp_path_factory.mktemp("float32"))}


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_minmin_steps_in_mixed_precision_match_float32(policy, float32_runs):
    weights, reference = float32_runs["weights"], float32_runs["minmin"]
    # K = 1: the trained losses of a few steps. (With K = 2 a near tie between the candidates may go
    # the other way in half precision and the runs part; the selection pass is compared on its own.)
    mixed, _ = _minmin_losses(policy, weights, 1)
    np.testing.assert_allclose(mixed, reference, rtol=TOLERANCE["minmin"][policy])
    assert reference[-1] < reference[0]  # the steps train: the comparison is of a moving loss
    _, mixed = _minmin_losses(policy, weights, 2, steps=1)
    np.testing.assert_allclose(mixed[0], float32_runs["selection"][0], rtol=TOLERANCE["selection"][policy])


def test_supernet_training_runs_in_mixed_float16(tmp_path):
    section = S.supernet_section()
    section.update(dict(epochs=1, log_every=2, calibration_examples=16, eval_examples=16, eval_fractions=(1.0,),
                        mixed_precision="mixed_float16"))
    S.validate_supernet(section)
    result = S.train(cnn, separable_source(n=48), section, str(tmp_path), model_info=INFO)
    assert result["steps"] == 3 and np.isfinite(result["history"][-1]["loss/sampled"])
    saved = keras.models.load_model(os.path.join(tmp_path, "supernet.keras"))
    assert kernel.policy_of(saved) == "mixed_float16"
    assert 0.0 <= result["validation"][0]["accuracy"] <= 1.0


def _gate_losses(policy, weights, tmp_path, steps=4):
    with kernel.dtype_policy(policy):
        model = plain_cnn()
    model.set_weights(weights)
    graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    trainer = GateTrainer(model, FreeGates(graph, 1.0), FlopsRegularizer(cost, 0.5 * cost.macs()),
                          str(tmp_path / policy), total_steps=steps, gate_lr=0.05, checkpoint_every=steps)
    assert isinstance(trainer.gate_opt, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    assert isinstance(trainer.main_opt, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    _settled_loss_scale(trainer.gate_opt, trainer.main_opt)
    history = trainer.train(separable_source(n=64).make_train(0, 0, None).repeat(), log_every=1, progress=False)
    return [h["loss"] for h in history]


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_gate_training_in_mixed_precision_matches_float32(policy, tmp_path, float32_runs):
    mixed = _gate_losses(policy, float32_runs["weights"], tmp_path)
    np.testing.assert_allclose(mixed, float32_runs["gates"], rtol=TOLERANCE["gates"][policy])


# ---------------------------------------------------------------------------- multi-label gate training


def test_gate_training_takes_multi_label_data_and_refuses_a_wrong_task(tmp_path):
    keras.utils.set_random_seed(0)
    model = cnn(classes=4)  # 4 attributes, logits
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 12, 12, 1)).astype("float32")
    labels = (images[:, :6, :, 0].mean(axis=(1, 2))[:, None] > np.array([-0.2, 0.0, 0.1, 0.2])).astype("int64")
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    trainer = GateTrainer(model, FreeGates(graph, 1.0), FlopsRegularizer(cost, 0.5 * cost.macs()),
                          str(tmp_path / "ml"), total_steps=8, gate_lr=0.05, checkpoint_every=8)
    history = trainer.train(ds.repeat(), log_every=4, progress=False)
    assert all(np.isfinite(h["loss"]) and 0.0 <= h["accuracy"] <= 1.0 for h in history)
    accuracy = trainer.evaluate(ds)
    masks_net = tf.function(lambda x: trainer.supernet(x, masks=_hard_masks(trainer), training=False))
    expected = np.mean([((masks_net(x).numpy() > 0) == y.numpy()).mean(axis=1) for x, y in ds.unbatch().batch(64)])
    assert accuracy == pytest.approx(expected, abs=1e-6)

    wrong = GateTrainer(model, FreeGates(graph, 1.0), FlopsRegularizer(cost, 0.5 * cost.macs()),
                        str(tmp_path / "wrong"), total_steps=2, task="classification")
    with pytest.raises(ValueError, match="task='classification' needs labels of shape \\[batch\\] .*multilabel"):
        wrong.train(ds.repeat(), progress=False)


def _hard_masks(trainer):
    from cafe_tf.dagger import gate_masks
    from cafe_tf.dagger.module import gates_from_logits

    gates = gates_from_logits(trainer.module.logits(), "hard", min_open=trainer.min_open)
    return gate_masks(trainer.graph, trainer.module.group_ids, gates)[0]
