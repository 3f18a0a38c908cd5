"""Channel graph and analytic FLOPs: groups, errors, exact counts against the built Keras layers."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cafe_tf import models
from cafe_tf.flops import CostModel, count_keras_model
from cafe_tf.graph import ChannelGraph, UnsupportedModelError
from cafe_tf.surgery import extract
from toy_models import coupling_zoo


@pytest.fixture(scope="module")
def zoo():
    m = coupling_zoo(flatten=True)
    return m, ChannelGraph.from_model(m)


def test_groups_follow_couplings(zoo):
    _, graph = zoo
    by_name = {g.name: g for g in graph.groups}
    # residual add + depthwise + SE multiply tie stem, res_conv and se_expand into one group
    assert sorted(by_name["stem"].producers) == ["res_conv", "se_expand", "stem"]
    assert by_name["stem"].size == 8 and by_name["stem"].prunable
    # the concatenation keeps its parts as separate groups
    assert by_name["branch_a"].size == 6 and by_name["branch_b"].size == 5
    assert "head_conv" in by_name["branch_a"].consumers and "head_conv" in by_name["branch_b"].consumers
    # the input and the logits are never prunable, and say why
    assert not by_name["image"].prunable and by_name["image"].reason == "model input"
    assert not by_name["logits"].prunable and by_name["logits"].reason == "model output"
    flat = graph.node_by_name["flatten"]
    assert flat.out_space.repeat == 4 and flat.out_space.block == 7


def test_uncovered_layer_names_itself_and_both_ways_out():
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c")(inp)
    x = keras.layers.Permute((2, 1, 3), name="my_permute")(x)
    m = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    with pytest.raises(UnsupportedModelError) as err:
        ChannelGraph.from_model(m)
    msg = str(err.value)
    assert "'my_permute' of type Permute" in msg
    assert "boundaries=['my_permute']" in msg and "cafe_tf.layers.register(Permute" in msg
    # the first way out works: the boundary keeps the channels on both sides of it whole
    graph = ChannelGraph.from_model(m, boundaries=["my_permute"])
    assert not graph.group_by_name["c"].prunable
    assert "fixed-width boundary" in graph.group_by_name["c"].reason
    with pytest.raises(ValueError, match=r"boundaries \['nope'\] name no layer"):
        ChannelGraph.from_model(m, boundaries=["nope"])


def test_keras_op_node_error_is_not_a_layer_error():
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c")(inp)
    x = keras.ops.flip(x, axis=-1)  # reverses channels: no rule
    m = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(UnsupportedModelError, match=r"Keras operation '\w+' of type Flip"):
        ChannelGraph.from_model(m)


def test_grouped_conv_is_a_boundary_and_shared_layer_refused():
    inp = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 1, name="pre")(inp)
    x = keras.layers.Conv2D(8, 3, groups=2, name="gconv")(x)
    m = keras.Model(inp, keras.layers.Conv2D(3, 1, name="post")(x))
    graph = ChannelGraph.from_model(m)
    for name in ("pre", "gconv"):
        assert not graph.group_by_name[name].prunable
        assert "grouped Conv2D 'gconv' (groups=2) keeps its channels whole" in graph.group_by_name[name].reason
    assert CostModel(graph).macs() == count_keras_model(m)["macs"]
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")
    m = keras.Model(inp, keras.layers.Add()([shared(inp), shared(shared(inp))]))
    with pytest.raises(UnsupportedModelError, match="'shared'.*more than once"):
        ChannelGraph.from_model(m)


def test_dynamic_input_refused():
    inp = keras.Input((None, None, 3))
    m = keras.Model(inp, keras.layers.Conv2D(4, 3, name="c")(inp))
    with pytest.raises(UnsupportedModelError, match="fixed input size"):
        ChannelGraph.from_model(m)


def test_selection_errors_name_the_value(zoo):
    _, graph = zoo
    g = graph.group_by_name["stem"].id
    with pytest.raises(ValueError, match="channel index 8 of group 'stem' is out of range 0..7"):
        graph.validate_selection({g: [0, 8]})
    with pytest.raises(ValueError, match="lists channel 2 more than once"):
        graph.validate_selection({g: [2, 2, 3]})
    with pytest.raises(ValueError, match="needs at least one channel"):
        graph.validate_selection({g: []})
    with pytest.raises(ValueError, match="group index 99 does not exist; valid: 0..7"):
        graph.validate_selection({99: [0]})
    with pytest.raises(ValueError, match="'logits' cannot be pruned"):
        graph.validate_selection({graph.group_by_name["logits"].id: [0]})


def test_cost_model_equals_layer_count_on_zoo(zoo):
    model, graph = zoo
    cost = CostModel(graph)
    assert {"macs": cost.macs(), "params": cost.params()} == count_keras_model(model)


@settings(max_examples=8, deadline=None)
@given(st.data())
def test_cost_model_equals_extracted_model(zoo, data):
    model, graph = zoo
    cost = CostModel(graph)
    sel = {
        g.id: np.array(sorted(data.draw(st.sets(st.integers(0, g.size - 1), min_size=1))))
        for g in graph.prunable_groups
    }
    counted = count_keras_model(extract(model, sel, graph))
    widths = cost.widths_of(sel)
    assert cost.macs(widths) == counted["macs"]
    assert cost.params(widths) == counted["params"]


def test_batched_and_differentiable_macs_agree(zoo):
    _, graph = zoo
    import tensorflow as tf

    cost = CostModel(graph)
    rng = np.random.default_rng(1)
    batch = np.stack([np.where([g.prunable for g in graph.groups],
                               rng.integers(1, graph.full_widths() + 1), graph.full_widths()) for _ in range(5)])
    single = [cost.macs(w) for w in batch]
    assert cost.macs(batch).tolist() == single
    assert float(cost.macs_tf(tf.constant(batch[0], tf.float32))) == pytest.approx(single[0], rel=1e-6)
    # marginal cost of a group is the exact difference of one channel (the polynomial is bilinear)
    g = graph.group_by_name["fc1"].id
    w = graph.full_widths().copy()
    w1 = w.copy()
    w1[g] -= 1
    assert cost.marginal_macs()[g] == cost.macs(w) - cost.macs(w1)


# Published figures (MACs; "FLOPs" in the papers) and parameter counts at the standard inputs.
PUBLISHED = {
    "resnet20": ((40e6, 42e6), (0.26e6, 0.28e6)),
    "resnet56": ((124e6, 128e6), (0.84e6, 0.87e6)),
    "resnet110": ((250e6, 257e6), (1.7e6, 1.75e6)),
    "vgg16_cifar": ((312e6, 315e6), (14.7e6, 15.1e6)),
    "resnet50": ((4.085e9, 4.12e9), (25.5e6, 25.7e6)),
    "mobilenet_v2": ((0.295e9, 0.305e9), (3.4e6, 3.6e6)),
    "efficientnet_b0": ((0.385e9, 0.40e9), (5.2e6, 5.4e6)),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_figures_and_layer_crosscheck(name):
    model = models.build(name)
    cost = CostModel(ChannelGraph.from_model(model))
    (mlo, mhi), (plo, phi) = PUBLISHED[name]
    assert mlo <= cost.macs() <= mhi, f"{name}: {cost.macs()} MACs"
    assert plo <= cost.params() <= phi, f"{name}: {cost.params()} params"
    assert {"macs": cost.macs(), "params": cost.params()} == count_keras_model(model)


# Exact figures where a source gives them to the digit: torchvision's ResNet-50 (4,089,184,256 MACs,
# 25,557,032 trainable params) and MobileNetV2 (3,504,872), Keras Applications' EfficientNetB0
# (5,330,571 params, of which 7 belong to its input Normalization layer, which our model leaves to
# the data pipeline).
EXACT = {
    "resnet50": {"macs": 4_089_184_256, "trainable": 25_557_032},
    "mobilenet_v2": {"trainable": 3_504_872, "params": 3_538_984},
    "efficientnet_b0": {"params": 5_330_571 - 7},
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_published_counts(name):
    model = models.build(name)
    cost = CostModel(ChannelGraph.from_model(model))
    want = EXACT[name]
    if "macs" in want:
        assert cost.macs() == want["macs"]
    if "params" in want:
        assert cost.params() == want["params"]
    if "trainable" in want:
        assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == want["trainable"]


def test_flops_cli_contract(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cafe_tf.flops", "--model", "resnet20"], capture_output=True, text=True, check=True
    )
    record = json.loads(out.stdout)
    assert isinstance(record["macs"], int) and isinstance(record["params"], int)
    assert record["macs"] == CostModel(ChannelGraph.from_model(models.build("resnet20"))).macs()
    bad = subprocess.run([sys.executable, "-m", "cafe_tf.flops", "--model", "resnet21"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown model 'resnet21'" in bad.stderr and "resnet20" in bad.stderr
