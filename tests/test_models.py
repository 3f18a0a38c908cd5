"""Model builders: exact and published counts, allowed layers, names, widths, input shapes, errors.

MACs are counted here by a small formula over the built layers' shapes, independent of
``cafe_tf.flops`` (which ``test_graph_flops`` cross-checks against the same figures).
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cafe_tf import models
from cafe_tf.models.common import make_divisible, scaled
from cafe_tf.models.resnet_cifar import resnet_cifar

L = keras.layers
BUILDERS = ("resnet20", "resnet56", "resnet110", "vgg16_cifar", "resnet50", "mobilenet_v2", "mobilenet_v2_cifar",
            "efficientnet_b0")

# The layers the channel graph understands (the contract with cafe_tf.graph), exact types.
ALLOWED = (L.InputLayer, L.Conv2D, L.DepthwiseConv2D, L.Dense, L.BatchNormalization, L.ReLU, L.Activation,
           L.Add, L.Multiply, L.Concatenate, L.GlobalAveragePooling2D, L.MaxPooling2D, L.AveragePooling2D,
           L.ZeroPadding2D, L.Flatten, L.Dropout)
ALLOWED_ACTIVATIONS = {"relu", "relu6", "swish", "silu", "sigmoid", "linear"}


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of conv, depthwise and dense layers for one image."""
    macs = 0
    for layer in model.layers:
        out = layer.output.shape[1:]
        if type(layer) is L.Conv2D:
            kh, kw, cin, cout = layer.kernel.shape
            macs += kh * kw * cin * cout * out[0] * out[1]
        elif type(layer) is L.DepthwiseConv2D:
            kh, kw, c, mult = layer.kernel.shape
            macs += kh * kw * c * mult * out[0] * out[1]
        elif type(layer) is L.Dense:
            macs += int(np.prod(layer.kernel.shape)) * int(np.prod(out[:-1]))
    return int(macs)


def trainable(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def weights_of(model: keras.Model, pattern: str) -> int:
    """Trainable parameters of the layers whose name matches ``pattern``."""
    return sum(int(np.prod(w.shape)) for layer in model.layers if re.search(pattern, layer.name)
               for w in layer.trainable_weights)


@pytest.fixture(scope="module")
def build():
    """``build(name, **kwargs)``, each distinct call built once per module (the ImageNet nets take seconds)."""
    cache: dict = {}

    def get(name: str, **kwargs) -> keras.Model:
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = models.build(name, **kwargs)
        return cache[key]

    return get


# What we get at the default input (32x32x3/10 classes, 224x224x3/1000 classes), width 1.0.
# count_params includes BN moving mean/variance; "trainable" is what papers and torchvision count.
EXACT = {
    "resnet20": {"params": 274_042, "trainable": 272_474, "macs": 40_813_184},
    "resnet56": {"params": 860_026, "trainable": 855_770, "macs": 125_747_840},
    "resnet110": {"params": 1_739_002, "trainable": 1_730_714, "macs": 253_149_824},
    "vgg16_cifar": {"params": 14_732_490, "trainable": 14_724_042, "macs": 313_201_664},
    # torchvision resnet50 (v1.5): 25,557,032 params, 4,089,184,256 MACs
    "resnet50": {"params": 25_610_152, "trainable": 25_557_032, "macs": 4_089_184_256},
    # torchvision mobilenet_v2 3,504,872 params; Keras Applications MobileNetV2 3,538,984 in all
    "mobilenet_v2": {"params": 3_538_984, "trainable": 3_504_872, "macs": 300_774_272},
    # stride-1 stem and stage 2 at 32x32 (see test_cifar_mobilenet_v2_counts_match_the_formula)
    "mobilenet_v2_cifar": {"params": 2_270_794, "trainable": 2_236_682, "macs": 87_976_448},
    # Keras Applications EfficientNetB0: 5,330,571, of which 7 are its input Normalization's
    "efficientnet_b0": {"params": 5_330_571 - 7, "trainable": 5_288_548, "macs": 385_814_752},
}

# Published figures: MACs range (ResNet-50's 4.09-4.11 G are rounded figures: any count that rounds
# to them), and the parameter count as published, with the number of
# decimals (in millions) it is given to. CIFAR ResNets are checked on their option-A equivalent
# below; here their option-B models are held to the MACs range only.
PUBLISHED = {
    "resnet20": ((40.5e6, 41.5e6), None),
    "resnet56": ((125e6, 126e6), None),
    "resnet110": ((252e6, 254e6), None),
    "vgg16_cifar": ((313e6, 314e6), (14.7, 1)),
    "resnet50": ((4.085e9, 4.115e9), (25.6, 1)),
    "mobilenet_v2": ((0.29e9, 0.31e9), (3.5, 1)),
    "efficientnet_b0": ((0.385e9, 0.40e9), (5.3, 1)),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_exact_counts(build, name):
    model = build(name)
    got = {"params": model.count_params(), "trainable": trainable(model), "macs": count_macs(model)}
    assert got == EXACT[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED))  # mobilenet_v2_cifar: no published figure in the spec
def test_published_figures(build, name):
    model = build(name)
    (lo, hi), params = PUBLISHED[name]
    assert lo <= count_macs(model) <= hi
    if params is not None:
        value, decimals = params
        assert round(model.count_params() / 1e6, decimals) == value
        assert round(trainable(model) / 1e6, decimals) == value


# He et al.'s option A (zero-padded identity) counts as re-implementations publish them to the digit:
# 269,722 / 853,018 / 1,727,962 params (the 0.27M / 0.85M / 1.7M), HRank's 125.49M / 252.89M FLOPs
# for ResNet-56/110; ResNet-20's 40.55M is the same count (the literature rounds it to ~41M).
OPTION_A = {
    "resnet20": (269_722, 40.55e6),
    "resnet56": (853_018, 125.49e6),
    "resnet110": (1_727_962, 252.89e6),
}


@pytest.mark.parametrize("name", sorted(OPTION_A))
def test_cifar_resnet_option_b_deviates_from_option_a_only_by_the_projections(build, name):
    model = build(name)
    proj_convs = [layer for layer in model.layers if layer.name.endswith("_proj_conv")]
    assert [layer.name for layer in proj_convs] == ["stage2_block1_proj_conv", "stage3_block1_proj_conv"]
    proj_params = weights_of(model, r"_proj_(conv|bn)$")
    proj_macs = sum(int(np.prod(c.kernel.shape)) * c.output.shape[1] * c.output.shape[2] for c in proj_convs)
    assert (proj_params, proj_macs) == (2_752, 262_144)
    params_a, macs_a = OPTION_A[name]
    assert trainable(model) - proj_params == params_a
    assert round(count_macs(model) - proj_macs, -4) == macs_a
    assert trainable(model) / params_a < 1.011 and count_macs(model) / macs_a < 1.007


# MobileNetV2's table 2 (expansion, channels, blocks, first stride), written out again so that the
# formula below is independent of the builder.
MBV2_TABLE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))


def mobilenet_v2_formula(size: int, classes: int, stem_stride: int, stage_strides: tuple[int, ...]):
    """(MACs, trainable params, all params) of MobileNetV2 1.0 at size x size x 3, 'same' padding, by hand."""
    side = -(-size // stem_stride)
    macs, weights, bn = 3 * 3 * 3 * 32 * side**2, 3 * 3 * 3 * 32, 32
    cin = 32
    for (t, c, n, _), stride in zip(MBV2_TABLE, stage_strides):
        for block in range(n):
            hidden = cin * t
            if t != 1:  # expand 1x1 at the input resolution
                macs, weights, bn = macs + cin * hidden * side**2, weights + cin * hidden, bn + hidden
            side = -(-side // (stride if block == 0 else 1))
            macs += 9 * hidden * side**2 + hidden * c * side**2  # depthwise 3x3, project 1x1
            weights, bn = weights + 9 * hidden + hidden * c, bn + hidden + c
            cin = c
    macs += cin * 1280 * side**2 + 1280 * classes  # head 1x1, logits
    weights, bn = weights + cin * 1280 + 1280 * classes + classes, bn + 1280
    return macs, weights + 2 * bn, weights + 4 * bn  # BN: gamma, beta trainable; mean, variance not


def test_cifar_mobilenet_v2_counts_match_the_formula(build):
    from cafe_tf.flops import count_keras_model

    cifar, imagenet_strides = build("mobilenet_v2_cifar"), build("mobilenet_v2", input_shape=(32, 32, 3),
                                                                  num_classes=10)
    # The stem alone: 3x3x3 -> 32 at stride 1 keeps 32x32, 884,736 MACs (at stride 2: 16x16, a quarter).
    stem = cifar.get_layer("stem_conv")
    assert stem.strides == (1, 1) and tuple(stem.output.shape) == (None, 32, 32, 32)
    assert int(np.prod(stem.kernel.shape)) * 32 * 32 == 884_736 == 4 * 3 * 3 * 3 * 32 * 16 * 16
    assert tuple(cifar.get_layer("stage2_block2_add").output.shape) == (None, 32, 32, 24)
    assert tuple(cifar.get_layer("head_conv").output.shape) == (None, 4, 4, 1280)
    macs, trainable_params, params = mobilenet_v2_formula(32, 10, 1, (1, 1, 2, 2, 1, 2, 1))
    assert (macs, trainable_params, params) == (87_976_448, 2_236_682, 2_270_794)
    assert count_macs(cifar) == count_keras_model(cifar)["macs"] == macs
    assert trainable(cifar) == trainable_params and cifar.count_params() == count_keras_model(cifar)["params"] == params
    # The same formula with the ImageNet strides gives the stride-2 builder's counts, at 32x32 and at 224x224.
    assert mobilenet_v2_formula(32, 10, 2, (1, 2, 2, 2, 1, 2, 1))[0] == count_macs(imagenet_strides) == 6_124_928
    assert mobilenet_v2_formula(224, 1000, 2, (1, 2, 2, 2, 1, 2, 1)) == (300_774_272, 3_504_872, 3_538_984)
    assert cifar.name == "mobilenet_v2_cifar" and [x.name for x in cifar.layers] == [
        x.name for x in imagenet_strides.layers]


def test_vgg_two_layer_head(build):
    """Li et al.'s 512-512-classes head: still ~313M MACs, but ~15.0M params instead of 14.7M."""
    model = build("vgg16_cifar", hidden_units=512)
    assert (count_macs(model), model.count_params(), trainable(model)) == (313_463_808, 14_996_682, 14_987_210)
    assert [layer.name for layer in model.layers[-4:]] == ["fc", "fc_bn", "fc_relu", "logits"]


@pytest.mark.parametrize("name", BUILDERS)
def test_only_allowed_layers(build, name):
    model = build(name)
    for layer in model.layers:
        assert type(layer) in ALLOWED, f"{layer.name}: {type(layer).__name__}"
        if type(layer) is L.Conv2D:
            assert layer.groups == 1, layer.name
        if type(layer) is L.DepthwiseConv2D:
            assert layer.depth_multiplier == 1, layer.name
        if hasattr(layer, "activation"):
            assert layer.activation.__name__ in ALLOWED_ACTIVATIONS, layer.name
        if type(layer) is L.BatchNormalization:
            producer = layer.input._keras_history.operation
            if isinstance(producer, (L.Conv2D, L.Dense)):
                assert not producer.use_bias, f"{producer.name} feeds {layer.name} but has a bias"
    logits = model.layers[-1]
    assert type(logits) is L.Dense and logits.name == "logits" and logits.activation.__name__ == "linear"


def _auto_name(layer: keras.layers.Layer) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(layer).__name__).lower()


@pytest.mark.parametrize("name", BUILDERS)
def test_layer_names_are_deterministic_and_readable(build, name):
    small = (64, 64, 3) if models.DEFAULT_INPUT[name][0][0] > 32 else (32, 32, 3)
    first, second = build(name), models.build(name, input_shape=small)
    names = [layer.name for layer in first.layers]
    assert names == [layer.name for layer in second.layers]
    assert len(set(names)) == len(names)
    for layer in first.layers:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", layer.name), layer.name
        assert not re.fullmatch(rf"{_auto_name(layer)}_\d+", layer.name), f"{layer.name} looks auto-named"
    assert names[0] == "image"


def test_names_follow_the_scheme(build):
    r20, r50 = build("resnet20"), build("resnet50")
    for n in ("stem_conv", "stem_bn", "stem_relu", "stage2_block1_conv1", "stage2_block1_bn1",
              "stage2_block1_relu1", "stage2_block1_conv2", "stage2_block1_add", "stage3_block3_out", "gap"):
        r20.get_layer(n)
    # v1.5: the stride sits on the 3x3 convolution, with torchvision's symmetric padding
    assert r50.get_layer("stage2_block1_conv1").strides == (1, 1)
    assert r50.get_layer("stage2_block1_conv2").strides == (2, 2)
    assert r50.get_layer("stage2_block1_pad2").padding == ((1, 1), (1, 1))
    assert r50.get_layer("stem_pad").padding == ((3, 3), (3, 3))
    assert tuple(r50.get_layer("stage4_block3_out").output.shape) == (None, 7, 7, 2048)
    mb = build("mobilenet_v2")
    for n in ("stage1_block1_dw_conv", "stage2_block1_expand_conv", "stage7_block1_project_bn", "head_conv"):
        mb.get_layer(n)
    ef = build("efficientnet_b0")
    for n in ("stage2_block1_se_reduce", "stage2_block1_se_mul", "stage6_block4_add", "head_swish"):
        ef.get_layer(n)


def test_residual_structure(build):
    count = lambda m, t: sum(type(layer) is t for layer in m.layers)  # noqa: E731
    assert count(build("resnet20"), L.Add) == 9 and count(build("resnet110"), L.Add) == 54
    assert count(build("resnet50"), L.Add) == 16
    assert len([x for x in build("resnet50").layers if x.name.endswith("_proj_conv")]) == 4
    assert count(build("mobilenet_v2"), L.Add) == 10 and count(build("mobilenet_v2"), L.DepthwiseConv2D) == 17
    assert count(build("efficientnet_b0"), L.Add) == 9 and count(build("efficientnet_b0"), L.Multiply) == 16


@pytest.mark.parametrize("name, shape, classes", [
    ("resnet20", (28, 28, 1), 10),
    ("resnet56", (16, 16, 3), 100),
    ("vgg16_cifar", (28, 28, 1), 10),
    ("resnet50", (64, 64, 3), 7),
    ("mobilenet_v2", (96, 96, 3), 5),
    ("efficientnet_b0", (48, 40, 3), 3),
])
def test_input_shapes_and_forward_pass(build, name, shape, classes):
    model = build(name, input_shape=shape, num_classes=classes)
    assert model.input_shape == (None, *shape) and model.output_shape == (None, classes)
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    for training in (False, True):
        logits = np.asarray(model(x, training=training))
        assert logits.shape == (2, classes) and np.isfinite(logits).all()


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16_cifar", "resnet50"])
def test_half_width_quarters_conv_dominated_nets(build, name):
    full, half = build(name), build(name, width_mult=0.5)
    assert 3.5 < trainable(full) / trainable(half) < 4.3
    assert 3.5 < count_macs(full) / count_macs(half) < 4.3


def test_imagenet_widths_are_multiples_of_8_and_heads_follow_the_references(build):
    mb = build("mobilenet_v2", input_shape=(32, 32, 3), width_mult=0.5, dropout=0.2)
    assert mb.get_layer("dropout").rate == 0.2
    assert mb.get_layer("stem_conv").filters == 16 and mb.get_layer("stage1_block1_project_conv").filters == 8
    assert mb.get_layer("head_conv").filters == 1280  # not scaled below 1.0
    assert build("mobilenet_v2", input_shape=(32, 32, 3), width_mult=1.4).get_layer("head_conv").filters == 1792
    ef = build("efficientnet_b0", input_shape=(32, 32, 3), width_mult=0.5)
    assert ef.get_layer("head_conv").filters == 640  # round_filters scales the head too
    assert ef.get_layer("stage2_block1_se_reduce").filters == 2  # int(8 * 0.25): not a multiple of 8
    for model in (mb, ef, build("resnet50", input_shape=(32, 32, 3), width_mult=0.3)):
        for layer in model.layers:
            if type(layer) is L.Conv2D and "_se_" not in layer.name:
                assert layer.filters % 8 == 0, (model.name, layer.name, layer.filters)


@settings(max_examples=6, deadline=None)
@given(width=st.floats(0.25, 1.5))
def test_resnet20_any_width(width):
    model = resnet_cifar(input_shape=(8, 8, 3), width_mult=width, depth=20)
    for layer in model.layers:
        if type(layer) is L.Conv2D:
            base = 16 if layer.name.startswith(("stem", "stage1")) else 32 if layer.name.startswith("stage2") else 64
            assert layer.filters == scaled(base, width) >= 1
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("width", [1e-3, 0.02])
def test_tiny_widths_keep_one_channel(width):
    model = resnet_cifar(input_shape=(8, 8, 3), width_mult=width, depth=20)
    assert {layer.filters for layer in model.layers if type(layer) is L.Conv2D} == {1}
    assert make_divisible(64 * width) == 8


@settings(max_examples=3, deadline=None)
@given(name=st.sampled_from(["mobilenet_v2", "efficientnet_b0"]), width=st.floats(0.25, 1.5))
def test_mobile_nets_any_width(name, width):
    model = models.build(name, input_shape=(32, 32, 3), num_classes=4, width_mult=width)
    for layer in model.layers:
        if type(layer) is L.Conv2D and "_se_" not in layer.name:
            assert layer.filters % 8 == 0 and layer.filters >= 8
    assert model.get_layer("stem_conv").filters == make_divisible(32 * width)
    assert model.output_shape == (None, 4)


def test_efficientnet_stochastic_depth(build):
    model = build("efficientnet_b0")
    drops = [layer for layer in model.layers if layer.name.endswith("_drop")]
    # the 9 residual blocks; block i of 16 (0-based) drops with rate 0.2 * i / 16
    assert [d.name for d in drops][:2] == ["stage2_block2_drop", "stage3_block2_drop"]
    assert len(drops) == 9 and drops[-1].name == "stage6_block4_drop"
    assert drops[0].rate == pytest.approx(0.2 * 2 / 16) and drops[-1].rate == pytest.approx(0.2 * 14 / 16)
    assert all(tuple(d.noise_shape) == (None, 1, 1, 1) for d in drops)
    # whole samples of the residual branch are dropped or kept (scaled), never single positions
    rate = drops[-1].rate
    y = np.asarray(drops[-1](np.ones((256, 3, 3, 4), "float32"), training=True)).reshape(256, -1)
    assert (y.min(axis=1) == y.max(axis=1)).all()
    assert 0 < (y[:, 0] == 0).sum() < 256 and np.allclose(y[y[:, 0] > 0, 0], 1 / (1 - rate))
    none = build("efficientnet_b0", input_shape=(32, 32, 3), drop_connect_rate=0.0, dropout=0.0)
    assert not any(type(layer) is L.Dropout for layer in none.layers)
    assert none.count_params() == model.count_params()  # dropout layers hold no weights


@pytest.mark.parametrize("depth", [21, 0, 18])
def test_invalid_depth_names_value_and_valid_depths(depth):
    with pytest.raises(ValueError, match=rf"depth {depth} .*valid: \(20, 32, 44, 56, 110, 1202\)"):
        resnet_cifar(depth=depth)
    with pytest.raises(ValueError, match=rf"depth {depth} "):
        models.build("resnet20", depth=depth)


@pytest.mark.parametrize("call, message", [
    (lambda: resnet_cifar(input_shape=(32, 32)), r"input_shape \(height, width, channels\).*\(32, 32\)"),
    (lambda: resnet_cifar(num_classes=0), "num_classes >= 1, got 0"),
    (lambda: resnet_cifar(width_mult=0.0), "width_mult > 0, got 0.0"),
    (lambda: models.build("efficientnet_b0", drop_connect_rate=1.0), "drop_connect_rate < 1, got 1.0"),
    (lambda: models.build("mobilenet_v2", dropout=-0.1), "dropout < 1, got -0.1"),
    (lambda: models.build("vgg16_cifar", hidden_units=-1), "hidden_units >= 0.*got -1"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
