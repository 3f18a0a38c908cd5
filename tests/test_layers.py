"""The layer-rule registry: rules for the layers real models contain, user rules, boundaries,
nested models, and mask mode (Dagger's gates) equal to removing the channels."""

import keras
import numpy as np
import pytest

from cafe_tf import layers
from cafe_tf.flops import CostModel, count_keras_model
from cafe_tf.graph import ChannelGraph, UnsupportedModelError
from cafe_tf.slim import Supernet

L = keras.layers


def zoo2() -> keras.Model:
    """Separable (multiplier 2), depthwise multiplier 2, depthwise-form grouped conv, LN over channels,
    Dense on a feature map, hard-sigmoid from Keras ops, a 3-way concat, crop / upsample, SE reshape,
    a nested Sequential and a nested functional block."""
    x = inp = keras.Input((12, 12, 3), name="image")
    x = L.Rescaling(1 / 255.0, name="scale")(x)
    x = L.Conv2D(8, 3, padding="same", name="stem")(x)
    stem = keras.Sequential([L.BatchNormalization(name="seq_bn"), L.ReLU(name="seq_relu")], name="seq")
    x = stem(x)
    d = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw2")(x)  # 16 = 8 x 2
    d = L.BatchNormalization(name="dw2_bn")(d)
    d = L.Conv2D(6, 1, name="after_dw2")(d)
    s = L.SeparableConv2D(6, 3, padding="same", depth_multiplier=2, name="sep")(x)
    g = L.Conv2D(8, 3, padding="same", groups=8, name="gdw")(x)  # ConvNeXt's depthwise form
    g = L.LayerNormalization(epsilon=1e-6, name="ln")(g)
    g = L.Dense(6, name="pw_dense")(g)  # Dense on a channels-last map
    h = keras.ops.relu6(g + 3.0) * (1.0 / 6.0)  # hard-sigmoid from Keras operations
    g = L.Multiply(name="hs_mul")([g, h])
    c = L.Concatenate(name="cat3")([d, s, g])
    c = L.Cropping2D(((1, 1), (1, 1)), name="crop")(c)
    c = L.UpSampling2D(name="up")(c)
    block_in = keras.Input((20, 20, 18))
    b = L.Conv2D(10, 1, name="inner_conv")(block_in)
    b = L.BatchNormalization(name="inner_bn")(b)
    block = keras.Model(block_in, L.Activation("swish", name="inner_swish")(b), name="block")
    c = block(c)
    e = L.GlobalAveragePooling2D(name="se_pool")(c)
    e = L.Reshape((1, 1, 10), name="se_reshape")(e)
    e = L.Conv2D(10, 1, activation="sigmoid", name="se_expand")(L.Conv2D(4, 1, activation="relu", name="se_red")(e))
    c = L.Multiply(name="se_mul")([c, e])
    c = L.GlobalAveragePooling2D(name="gap")(c)
    return keras.Model(inp, L.Dense(5, name="logits")(c), name="zoo2")


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    m = zoo2()
    rng = np.random.default_rng(0)
    for layer in m.layers + m.get_layer("seq").layers + m.get_layer("block").layers:
        if isinstance(layer, (L.BatchNormalization,)):
            layer.moving_mean.assign(rng.normal(0, 0.2, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
        if isinstance(layer, L.LayerNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.normal(0, 0.3, layer.beta.shape))
    return m


def test_rules_couple_and_count_every_layer_kind(model):
    graph = ChannelGraph.from_model(model)
    by = graph.group_by_name
    assert by["stem"].prunable and by["stem"].size == 8
    assert graph.node_by_name["dw2"].out_space.inner == 2  # m copies of each of the 8 stem channels
    assert graph.node_by_name["gdw"].kind == "grouped_conv" and graph.node_by_name["gdw"].out_space == graph.node_by_name["stem"].out_space
    assert by["pw_dense"].prunable and "hs_mul" not in [g.name for g in graph.groups]
    assert graph.node_by_name["cat3"].out_space.groups == (by["after_dw2"].id, by["sep"].id, by["pw_dense"].id)
    assert "seq_bn" in graph.node_by_name and "inner_conv" in graph.node_by_name  # nested models seen through
    assert by["inner_conv"].producers == ["inner_conv", "se_expand"]  # coupled by the SE multiply
    cost = CostModel(graph)
    assert cost.macs() == count_keras_model(model)["macs"]
    assert cost.params() == model.count_params()


def _selection(graph, seed):
    rng = np.random.default_rng(seed)
    return {g.id: np.sort(rng.choice(g.size, rng.integers(1, g.size + 1), replace=False)) for g in graph.prunable_groups}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gather_and_mask_modes_equal_the_extracted_model(model, seed):
    supernet = Supernet(model)
    graph = supernet.graph
    channels = _selection(graph, seed)
    plain = supernet.extract(channels)
    x = np.random.default_rng(seed).uniform(0, 255, (3, 12, 12, 3)).astype(np.float32)
    want = plain(x, training=False).numpy()
    got = supernet(x, selection=supernet.selection(channels), training=False).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    masks = [None] * len(graph.groups)
    for gid, idx in channels.items():
        m = np.zeros(graph.groups[gid].size, np.float32)
        m[idx] = 1.0
        masks[gid] = m
    masked = supernet(x, masks=masks, training=False).numpy()
    np.testing.assert_allclose(masked, want, atol=1e-4, rtol=0)
    cost = CostModel(graph)
    counted = count_keras_model(plain)
    assert cost.macs(cost.widths_of(channels)) == counted["macs"]
    assert cost.params(cost.widths_of(channels)) == counted["params"]


def test_mask_mode_equals_extraction_on_mobilenet_v3_hard_swish():
    keras.utils.set_random_seed(1)
    m = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, weights=None, classes=4,
                                             classifier_activation=None)
    supernet = Supernet(m)
    channels = _selection(supernet.graph, 3)
    masks = [None] * len(supernet.graph.groups)
    for gid, idx in channels.items():
        masks[gid] = np.isin(np.arange(supernet.graph.groups[gid].size), idx).astype(np.float32)
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    want = supernet.extract(channels)(x, training=False).numpy()
    got = supernet(x, masks=masks, training=False).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, np.abs(want).max()), rtol=0)


class ChannelScale(L.Layer):
    """A user's layer: one learned scale per channel."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.channels,), initializer="ones")

    def call(self, x):
        return x * self.scale

    def get_config(self):
        return dict(super().get_config(), channels=self.channels)


def _user_model():
    x = inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(6, 3, padding="same", name="c1")(x)
    x = ChannelScale(6, name="user_scale")(x)
    x = L.Conv2D(5, 3, padding="same", name="c2")(x)
    return keras.Model(inp, L.Dense(3, name="logits")(L.GlobalAveragePooling2D(name="gap")(x)))


def test_a_user_rule_and_a_user_boundary():
    m = _user_model()
    m.get_layer("user_scale").scale.assign(np.linspace(0.5, 2.0, 6))
    with pytest.raises(UnsupportedModelError, match=r"'user_scale' of type ChannelScale.*boundaries=\['user_scale'\]"):
        ChannelGraph.from_model(m)
    # the boundary keeps c1's channels whole, but the model is accepted
    graph = ChannelGraph.from_model(m, boundaries=[ChannelScale])
    assert not graph.group_by_name["c1"].prunable and graph.group_by_name["c2"].prunable
    assert CostModel(graph).params() == m.count_params()
    # a rule makes it prunable, sliced like any per-channel layer
    layers.register(ChannelScale, layers.PerChannelWeights("channels"))
    try:
        supernet = Supernet(m)
        assert supernet.graph.group_by_name["c1"].prunable
        keep = {supernet.graph.group_by_name["c1"].id: np.array([0, 2, 5])}
        plain = supernet.extract(keep)
        np.testing.assert_allclose(plain.get_layer("user_scale").get_weights()[0], [0.5, 1.1, 2.0], atol=1e-6)
        x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
        np.testing.assert_allclose(supernet(x, selection=supernet.selection(keep)).numpy(), plain(x).numpy(), atol=1e-5)
    finally:
        layers.unregister(ChannelScale)


def test_a_rule_whose_macs_disagree_with_the_layer_is_refused():
    class WrongConv(layers.Conv):
        def terms(self, node, const):
            macs, params = super().terms(node, const)
            return [(c * 2, a, b) for c, a, b in macs], params

    m = _user_model()
    layers.register(ChannelScale, layers.PerChannelWeights("channels"))
    layers.register(L.Conv2D, WrongConv(), replace=True)
    try:
        with pytest.raises(layers.RuleError, match=r"rule WrongConv of layer 'c1' \(Conv2D\) gives 20736 MACs.*weights give 10368"):
            CostModel(ChannelGraph.from_model(m))
    finally:
        layers.register_builtin_conv()
        layers.unregister(ChannelScale)
    CostModel(ChannelGraph.from_model(m, boundaries=["user_scale"]))  # the built-in rule is back


def test_register_refuses_a_second_rule_without_replace():
    with pytest.raises(ValueError, match="Conv2D already has the rule"):
        layers.register(L.Conv2D, layers.Conv())


def test_boundaries_recorded_on_the_model_reach_every_graph():
    from cafe_tf.graph import model_boundaries, set_boundaries

    m = set_boundaries(_user_model(), ["user_scale"])
    assert model_boundaries(m) == ("user_scale",)
    supernet = Supernet(m)  # builds its own graph: the recorded boundary holds
    assert not supernet.graph.group_by_name["c1"].prunable
    assert [n.name for n in supernet.graph.nodes if n.boundary] == ["user_scale"]
    with pytest.raises(ValueError, match="a boundary is a layer name or a layer class, got 3"):
        set_boundaries(m, [3])


def test_zero_filters_are_found_through_the_rules(model):
    from deploy import export

    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    dw = m.get_layer("dw2").get_weights()
    dw[0][:, :, 2, 1] = 0.0  # depthwise output channel 2 * 2 + 1
    m.get_layer("dw2").set_weights(dw)
    sep = m.get_layer("sep").get_weights()
    sep[1][..., 4] = 0.0  # the pointwise kernel's output channel 4
    m.get_layer("sep").set_weights(sep)
    dense = m.get_layer("pw_dense").get_weights()
    dense[0][:, 1] = 0.0
    m.get_layer("pw_dense").set_weights(dense)
    found = {z.layer: z.channels for z in export.find_zero_channels(m)}
    assert found == {"dw2": (5,), "sep": (4,), "pw_dense": (1,)}


def test_check_program_says_supported_or_not_and_why(tmp_path):
    import json
    import os
    import subprocess
    import sys

    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(4, 3, name="c")(inp)
    x = L.Permute((2, 1, 3), name="my_permute")(x)
    path = str(tmp_path / "permute.keras")
    keras.Model(inp, L.Dense(2, name="logits")(L.Flatten(name="flat")(x))).save(path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "cafe_tf.check", f"--model={path}", *args],
                              capture_output=True, text=True, env=env, timeout=300)

    refused = run()
    assert refused.returncode == 1 and "NOT supported" in refused.stdout
    assert "'my_permute' of type Permute" in refused.stdout and "boundaries=['my_permute']" in refused.stdout
    accepted = run("--boundaries=my_permute", f"--json={tmp_path / 'check.json'}")
    assert accepted.returncode == 0, accepted.stderr
    assert "fixed-width boundaries: my_permute" in accepted.stdout and "consistent" in accepted.stdout
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["supported"] and report["consistent"] and report["boundaries"] == ["my_permute"]
