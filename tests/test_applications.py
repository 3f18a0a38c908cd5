"""Every keras.applications family through the layer-rule registry (Keras 3.15, ``weights=None``).

For each family, at the smallest input it allows: the channel graph accepts it; MACs equal an
independent per-layer count and params equal ``count_params``; a random locally free sub-network
run by the supernet equals the extracted model; Dagger's exact-target step lands within 1% under
its target; the extracted model converts to TFLite and LiteRT agrees with Keras. Small families run
in the default suite, the heavy ones under ``-m slow``.
"""

import keras
import numpy as np
import pytest

from cafe_tf.dagger.prune import exact_target
from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph, flatten_model
from cafe_tf.slim import Supernet
from cafe_tf.space import SearchSpace

# family -> (constructor, arguments at a small input). Xception and the Inceptions need >= 71 / 75 px.
FAMILIES = {
    "ConvNeXt": ("ConvNeXtTiny", {"input_shape": (32, 32, 3)}),
    "DenseNet": ("DenseNet121", {"input_shape": (32, 32, 3)}),
    "EfficientNet": ("EfficientNetB0", {"input_shape": (32, 32, 3)}),
    "EfficientNetV2": ("EfficientNetV2B0", {"input_shape": (32, 32, 3)}),
    "InceptionResNetV2": ("InceptionResNetV2", {"input_shape": (75, 75, 3)}),
    "InceptionV3": ("InceptionV3", {"input_shape": (75, 75, 3)}),
    "MobileNet": ("MobileNet", {"input_shape": (32, 32, 3), "alpha": 0.25}),
    "MobileNetV2": ("MobileNetV2", {"input_shape": (32, 32, 3), "alpha": 0.35}),
    "MobileNetV3": ("MobileNetV3Small", {"input_shape": (32, 32, 3), "alpha": 0.75}),
    "NASNet": ("NASNetMobile", {"input_shape": (32, 32, 3)}),
    "ResNet": ("ResNet50", {"input_shape": (32, 32, 3)}),
    "ResNetV2": ("ResNet50V2", {"input_shape": (32, 32, 3)}),
    "VGG": ("VGG16", {"input_shape": (32, 32, 3)}),
    "Xception": ("Xception", {"input_shape": (71, 71, 3)}),
}
SMALL = ("MobileNet", "MobileNetV2", "MobileNetV3", "EfficientNetV2")
PARAMS = [pytest.param(f, marks=() if f in SMALL else pytest.mark.slow) for f in FAMILIES]
# TFLite conversion (fp32 and int8) is the costly part: two families with Keras-op nodes by default.
TFLITE = [pytest.param(f, marks=() if f in ("MobileNet", "MobileNetV3") else pytest.mark.slow) for f in FAMILIES]


def test_every_keras_application_belongs_to_a_listed_family():
    names = [n for n in dir(keras.applications) if n[0].isupper()]
    prefixes = sorted(FAMILIES, key=len, reverse=True)
    unlisted = [n for n in names if not any(n.startswith(p) for p in prefixes)]
    assert not unlisted, f"keras.applications has families this test does not cover: {unlisted}"


_CACHE: dict = {}


def build(family: str) -> keras.Model:
    if family not in _CACHE:
        ctor, kwargs = FAMILIES[family]
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, ctor)(weights=None, classes=10, classifier_activation=None, **kwargs)
        # moving statistics away from (0, 1), so that slicing the wrong BN channels shows
        rng = np.random.default_rng(1)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
                layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
        _CACHE.clear()  # one model at a time: the heavy ones are large
        _CACHE[family] = model
    return _CACHE[family]


def independent_macs(model: keras.Model) -> int:
    """MACs from the kernels' shapes and output sizes, layer by layer (no channel graph, no rules)."""
    total = 0
    for op in flatten_model(model).operations:
        node = op._inbound_nodes[-1] if getattr(op, "_inbound_nodes", None) else None
        if node is None or not getattr(op, "weights", None):
            continue
        out = tuple(node.outputs[0].shape[1:])
        if isinstance(op, keras.layers.SeparableConv2D):
            total += (np.prod(op.depthwise_kernel.shape) + np.prod(op.pointwise_kernel.shape)) * out[0] * out[1]
        elif isinstance(op, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            total += np.prod(op.kernel.shape) * out[0] * out[1]
        elif isinstance(op, keras.layers.Dense):
            total += np.prod(op.kernel.shape) * int(np.prod(out[:-1]))
    return int(total)


def random_locally_free(graph: ChannelGraph, seed: int = 0) -> dict:
    space = SearchSpace(graph, granularity="flops_sensitive", sharing="locally_free", r=1)
    rng = np.random.default_rng(seed)
    return space.channels(space.sample_arrangement(space.sample_widths(rng), rng))


@pytest.mark.parametrize("family", PARAMS)
def test_graph_counts_equal_an_independent_count(family):
    model = build(family)
    cost = CostModel(ChannelGraph.from_model(model))
    assert cost.macs() == independent_macs(model)
    assert cost.params() == model.count_params()
    assert len(cost.graph.prunable_groups) >= 5


@pytest.mark.parametrize("family", PARAMS)
def test_supernet_slice_equals_extracted_model(family):
    model = build(family)
    supernet = Supernet(model)
    channels = random_locally_free(supernet.graph)
    assert any(len(channels[g.id]) < g.size for g in supernet.graph.prunable_groups)
    shape = FAMILIES[family][1]["input_shape"]
    x = np.random.default_rng(3).uniform(0, 255, (2, *shape)).astype(np.float32)
    sliced = supernet(x, selection=supernet.selection(channels), training=False).numpy()
    plain = supernet.extract(channels)
    extracted = plain(x, training=False).numpy()
    scale = np.abs(extracted).max()
    np.testing.assert_allclose(sliced, extracted, atol=1e-5 * max(1.0, scale), rtol=0)
    full = supernet(x, training=False).numpy()
    assert np.abs(full - sliced).max() > 1e-4 * scale  # the selection really removed channels
    cost = CostModel(supernet.graph)
    assert cost.macs(cost.widths_of(channels)) == independent_macs(plain)
    assert cost.params(cost.widths_of(channels)) == plain.count_params()


@pytest.mark.parametrize("family", PARAMS)
def test_dagger_exact_target_lands_within_one_percent(family):
    graph = ChannelGraph.from_model(build(family))
    cost = CostModel(graph)
    rng = np.random.default_rng(0)
    scores = {g.id: rng.normal(size=g.size) for g in graph.prunable_groups}
    floor = cost.macs(np.array([1 if g.prunable else g.size for g in graph.groups]))
    target = floor + 0.5 * (cost.macs() - floor)
    selection, _ = exact_target(cost, scores, target)
    macs = cost.macs(cost.widths_of(selection))
    assert 0.99 * target <= macs <= target


@pytest.mark.parametrize("family", TFLITE)
def test_extracted_model_converts_to_tflite(family):
    from deploy import export
    from deploy.benchmark import host

    model = build(family)
    graph = ChannelGraph.from_model(model)
    plain = Supernet(model, graph).extract(random_locally_free(graph, seed=1))
    shape = FAMILIES[family][1]["input_shape"]
    x = np.random.default_rng(4).uniform(0, 255, (1, *shape)).astype(np.float32)
    data = export.convert_keras(plain, "fp32", batch_size=1, calibration=None, io_type="float32", image_input=False)
    interpreter = host.make_interpreter(data, 1, use_xnnpack=True)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    want = plain(x, training=False).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()), rtol=1e-3)
    calibration = np.random.default_rng(5).uniform(0, 255, (8, *shape)).astype(np.float32)
    int8 = export.convert_keras(plain, "int8", batch_size=1, calibration=calibration, io_type="int8",
                                image_input=False)
    assert host.make_interpreter(int8, 1, use_xnnpack=True).get_input_details()[0]["dtype"] == np.int8
