"""Supernet slices equal the extracted plain models; one trace serves every width; BN handling."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cafe_tf import models
from cafe_tf.slim import Supernet
from cafe_tf.space import SearchSpace
from supernet_helpers import randomise_bn
from toy_models import coupling_zoo

# Small inputs keep the ImageNet-style nets fast; the graph does not depend on the input size.
SMALL = {
    "cnn_small": (28, 28, 1),
    "resnet20": (32, 32, 3),
    "resnet56": (16, 16, 3),
    "resnet110": (8, 8, 3),
    "vgg16_cifar": (32, 32, 3),
    "resnet50": (64, 64, 3),
    "mobilenet_v2": (64, 64, 3),
    "efficientnet_b0": (64, 64, 3),
}


@pytest.fixture(scope="module", params=sorted(SMALL))
def net(request):
    name = request.param
    model = models.build(name, input_shape=SMALL[name], num_classes=7, width_mult=0.5 if "resnet50" in name else 1.0)
    randomise_bn(model)
    supernet = Supernet(model)
    images = tf.random.stateless_normal((2,) + SMALL[name], seed=(1, 2))
    return name, supernet, images


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**31 - 1))
def test_slice_equals_extracted_model(net, seed):
    name, supernet, images = net
    space = SearchSpace(supernet.graph, r=1)
    rng = np.random.default_rng(seed)
    channels = space.channels(space.sample_arrangement(space.sample_widths(rng), rng))
    got = supernet(images, selection=supernet.selection(channels), training=False)
    plain = supernet.extract(channels)
    want = plain(images, training=False)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=1e-5, err_msg=name)


def test_full_selection_is_the_plain_model(net):
    _, supernet, images = net
    np.testing.assert_allclose(supernet(images).numpy(), supernet.model(images, training=False).numpy(), atol=1e-5)


def test_mask_mode_equals_removal_on_zoo():
    model = coupling_zoo(flatten=True)
    randomise_bn(model, 3)
    supernet = Supernet(model)
    rng = np.random.default_rng(5)
    channels = {g.id: np.sort(rng.choice(g.size, max(1, g.size // 2), replace=False))
                for g in supernet.graph.prunable_groups}
    masks = [None] * supernet.num_groups
    for gid, idx in channels.items():
        m = np.zeros(supernet.graph.groups[gid].size, np.float32)
        m[idx] = 1
        masks[gid] = tf.constant(m)
    x = tf.random.normal((3, 12, 12, 3))
    np.testing.assert_allclose(supernet(x, masks=masks).numpy(), supernet.extract(channels)(x).numpy(), atol=1e-5)


def test_one_trace_serves_every_width():
    supernet = Supernet(models.build("resnet20", input_shape=(16, 16, 3)))
    space = SearchSpace(supernet.graph)
    traces = []

    @tf.function(input_signature=[tf.TensorSpec((1, 16, 16, 3)), supernet.packed_signature()])
    def step(x, packed):
        traces.append(1)
        return supernet(x, selection=supernet.unpack(packed), training=False)

    rng = np.random.default_rng(0)
    x = tf.zeros((1, 16, 16, 3))
    for i in range(4):
        ch = {} if i == 0 else space.channels(space.sample_arrangement(space.sample_widths(rng), rng))
        out = step(x, supernet.packed(ch))
        assert out.shape == (1, 10)
    assert len(traces) == 1


def test_compute_scales_with_width():
    """The gathered kernels have the selected shape: no full-width compute hides behind a mask."""
    supernet = Supernet(models.build("resnet20", input_shape=(16, 16, 3)))
    g = supernet.graph.prunable_groups[0]
    conv = next(n for n in supernet.graph.nodes if n.kind == "conv" and n.out_space.segments[0][0] == g.id)
    fn = tf.function(lambda x, sel: supernet(x, selection=sel)).get_concrete_function(
        tf.TensorSpec((1, 16, 16, 3)), [tf.TensorSpec([None], tf.int32)] * supernet.num_groups)
    conv_ops = [op for op in fn.graph.get_operations() if op.type == "Conv2D"]
    assert conv_ops and all(op.inputs[1].shape[-1] is None for op in conv_ops), conv.name  # kernel width = selection


def test_gradients_reach_only_selected_weights():
    model = models.build("resnet20", input_shape=(16, 16, 3))
    supernet = Supernet(model)
    g = supernet.graph.group_by_name["stage1_block0_conv1"] if "stage1_block0_conv1" in supernet.graph.group_by_name \
        else supernet.graph.prunable_groups[1]
    channels = {g.id: np.array([0, 2])}
    producer = supernet.graph.node_by_name[g.producers[0]].layer
    with tf.GradientTape() as tape:
        out = supernet(tf.random.normal((2, 16, 16, 3)), selection=supernet.selection(channels), training=True)
        loss = tf.reduce_sum(out ** 2)
    grad = tf.convert_to_tensor(tape.gradient(loss, producer.kernel))
    per_filter = tf.reduce_sum(tf.abs(grad), axis=[0, 1, 2]).numpy()
    assert per_filter[[0, 2]].min() > 0 and np.all(per_filter[[1, 3]] == 0)


def test_training_bn_updates_only_selected_channels():
    model = models.build("resnet20", input_shape=(16, 16, 3))
    supernet = Supernet(model)
    g = supernet.graph.prunable_groups[1]
    bn = next(n.layer for n in supernet.graph.nodes if n.kind == "bn" and n.out_space.segments[0][0] == g.id)
    before = bn.moving_mean.numpy().copy()
    supernet(tf.random.normal((4, 16, 16, 3)) + 3.0, selection=supernet.selection({g.id: np.array([1, 3])}),
             training=True)
    after = bn.moving_mean.numpy()
    changed = np.flatnonzero(after != before)
    assert set(changed.tolist()) == {1, 3}


def test_calibrate_bn_matches_batch_statistics():
    model = models.build("cnn_small", input_shape=(28, 28, 1))
    supernet = Supernet(model)
    g = supernet.graph.prunable_groups[0]
    keep = np.array([0, 1, 5])
    sel = supernet.selection({g.id: keep})
    data = [tf.random.stateless_normal((8, 28, 28, 1), seed=(i, 0)) * 2 + 1 for i in range(3)]
    assert supernet.calibrate_bn(sel, data) == 3
    bn = next(n for n in supernet.graph.nodes if n.kind == "bn" and n.out_space.segments[0][0] == g.id)
    producer = supernet.graph.node_by_name[bn.inputs[0]]
    # the BN's input is the selected part of its producer's output: average its per-batch moments
    plain = supernet.extract({g.id: keep})
    feat = keras.Model(plain.inputs, plain.get_layer(producer.name).output)
    means = np.mean([tf.reduce_mean(feat(x), axis=[0, 1, 2]).numpy() for x in data], axis=0)
    np.testing.assert_allclose(bn.layer.moving_mean.numpy()[keep], means, rtol=1e-4, atol=1e-5)


def test_extracted_model_saves_and_reloads(tmp_path):
    supernet = Supernet(models.build("mobilenet_v2", input_shape=(32, 32, 3), num_classes=5, width_mult=0.35))
    space = SearchSpace(supernet.graph)
    rng = np.random.default_rng(1)
    channels = space.channels(space.sample_arrangement(space.sample_widths(rng), rng))
    plain = supernet.extract(channels)
    path = tmp_path / "sub.keras"
    plain.save(path)
    again = keras.models.load_model(path)
    x = tf.random.normal((2, 32, 32, 3))
    np.testing.assert_allclose(again(x).numpy(), plain(x).numpy(), atol=1e-6)
    # a reloaded model is a functional model the graph understands again
    assert Supernet(again).graph.prunable_groups


def test_bad_selection_is_refused_before_running():
    supernet = Supernet(models.build("cnn_small"))
    g = supernet.graph.prunable_groups[0]
    with pytest.raises(ValueError, match=f"channel index {g.size} of group '{g.name}' is out of range"):
        supernet.selection({g.id: [0, g.size]})
    with pytest.raises(ValueError, match="selection has 2 entries"):
        supernet(tf.zeros((1, 28, 28, 1)), selection=[None, None])
