"""Pyramid levels found at the detector's image size: a classifier trained at 28x28 (Fashion-MNIST's
own size, feature maps 14, 7, 4, 2, 1) has strides 8/16/32 once its layers are called at 128x128."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cafe_tf.detection import backbone as bb
from cafe_tf.detection import model as dm
from cafe_tf.models import registry


@pytest.fixture(scope="module")
def mnv2_28() -> keras.Model:
    return registry.build_builtin("mobilenet_v2", input_shape=(28, 28, 1), num_classes=10, width_mult=0.35)


def test_28x28_classifier_has_its_levels_at_the_detectors_size(mnv2_28):
    with pytest.raises(bb.PyramidLevelError) as e:
        bb.find_levels(mnv2_28)
    message = str(e.value)
    assert "at input (28, 28, 1) has no pyramid level ['P3', 'P4', 'P5']" in message
    assert "P1 (stride 2)" in message and "P2 (stride 4)" in message
    mnv2_32 = registry.build_builtin("mobilenet_v2", input_shape=(32, 32, 1), num_classes=10, width_mult=0.35)
    at_128 = bb.find_levels(mnv2_28, image_shape=(128, 128, 1))
    assert at_128 == bb.find_levels(mnv2_32)
    assert all(mnv2_28.get_layer(name) is not None for name in at_128.values())  # the model's own layer names
    # The model's own size keeps the old behaviour (and message).
    with pytest.raises(bb.PyramidLevelError, match=r"at input \(28, 28, 1\) has no pyramid level"):
        bb.find_levels(mnv2_28, image_shape=(28, 28, 1))


def test_trunk_at_128_shares_the_28x28_models_layers(mnv2_28):
    trunk = bb.pyramid_trunk(mnv2_28, (128, 128, 1))
    assert {k: tuple(v.shape[1:3]) for k, v in trunk.output.items()} == {"P3": (16, 16), "P4": (8, 8), "P5": (4, 4)}
    assert trunk.get_layer("stem_conv") is mnv2_28.get_layer("stem_conv")
    assert "logits" not in {layer.name for layer in trunk.layers}  # the classifier head drops out


def test_named_pyramid_layers_are_checked_at_the_image_size(mnv2_28):
    names = bb.find_levels(mnv2_28, image_shape=(128, 128, 1))
    assert bb.find_levels(mnv2_28, layer_names=names, image_shape=(128, 128, 1)) == names
    with pytest.raises(bb.PyramidLevelError, match=r"has output stride 7 \(shape \(4, 4, .*\)\) but P3 needs stride 8"):
        bb.find_levels(mnv2_28, layer_names={"P3": names["P3"]})  # at its own 28x28: a 4x4 map
    with pytest.raises(bb.PyramidLevelError, match=r"stride 16 \(shape \(8, 8, .*\)\) at image size \(128, 128, 1\)"):
        bb.find_levels(mnv2_28, layer_names={"P3": names["P4"]}, image_shape=(128, 128, 1))


def _conv(x, name: str):
    return keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name=name)(x)


def test_flatten_dense_before_the_levels_is_refused():
    # The Dense is built for 7x7x8 inputs: at 128x128 it fails, and the maps after it (c3-c5) are lost.
    x = inp = keras.Input((28, 28, 1), name="image")
    x = _conv(_conv(x, "c1"), "c2")
    x = keras.layers.Dense(8, name="fc")(keras.layers.Flatten(name="flatten")(x))
    x = keras.layers.UpSampling2D(7, name="spread")(keras.layers.Reshape((1, 1, 8), name="unflatten")(x))
    x = _conv(_conv(_conv(x, "c3"), "c4"), "c5")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(x), name="fixed_size")
    with pytest.raises(bb.PyramidLevelError) as e:
        bb.find_levels(model, image_shape=(128, 128, 1))
    message = str(e.value)
    assert "layer 'fc' (Dense)" in message and "image size (128, 128, 1)" in message
    assert "divisible by 32" in message and "config.detector.pyramid_layers" in message
    with pytest.raises(bb.PyramidLevelError, match=r"'c3' \(for P3\) .* cannot be computed at image size"):
        bb.find_levels(model, layer_names={"P3": "c3", "P4": "c4", "P5": "c5"}, image_shape=(128, 128, 1))
    with pytest.raises(bb.PyramidLevelError, match="layer 'fc'"):
        bb.pyramid_trunk(model, (128, 128, 1))


def test_flatten_dense_classifier_head_is_no_obstacle():
    # VGG / the small CNN: the fixed-size head comes after every feature map, so the levels are found.
    x = inp = keras.Input((28, 28, 1), name="image")
    for i in range(1, 6):
        x = _conv(x, f"c{i}")
    x = keras.layers.Dense(16, name="fc")(keras.layers.Flatten(name="flatten")(x))
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(x), name="cnn_head")
    assert bb.find_levels(model, image_shape=(128, 128, 1)) == {"P3": "c3", "P4": "c4", "P5": "c5"}
    trunk = bb.pyramid_trunk(model, (128, 128, 1))
    assert tuple(trunk.output["P5"].shape[1:3]) == (4, 4)


def test_detector_on_a_28x28_classifier_runs_at_128_and_reloads(mnv2_28, tmp_path):
    section = dm.detector_section()
    section.head_convs = 0
    section.max_level = 5
    detector = dm.build_detector(mnv2_28, 10, section, 128)
    image = np.zeros((1, 128, 128, 1), np.float32)
    raw = detector(image, training=False)
    assert raw["bbox_regression"].shape[0] == 1 and np.all(np.isfinite(np.asarray(raw["cls_logits"])))
    detector.save(tmp_path / "detector.keras")
    again = keras.models.load_model(tmp_path / "detector.keras", compile=False)(image, training=False)
    for key in raw:
        np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(raw[key]))
