"""Detection: pyramid levels of several backbones, the data in keras-hub's format, COCO mAP, training, TFLite.

Fast by default: the backbones are built at 64x64, the offline set is built once per session into
a temporary data_dir, and the detector that trains and exports is a tiny user model (five strided
convolutions with named pyramid layers) under keras-hub's FPN. Training and int8 export with
parity take a minute or more on a loaded CPU and are marked slow.
"""

from __future__ import annotations

import json
import os

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cafe_tf import surgery
from cafe_tf.detection import backbone as bb
from cafe_tf.detection import data as dd
from cafe_tf.detection import evaluate as de
from cafe_tf.detection import model as dm
from cafe_tf.graph import ChannelGraph
from cafe_tf.models import registry
from cafe_tf.space import write_widths


def tiny_user_model(size: int = 64, channels: int = 3) -> keras.Model:
    """A user's classifier with named pyramid layers: strides 2..32, 8-16 channels."""
    x = inp = keras.Input((size, size, channels), name="image")
    names = {8: "c3", 16: "c4", 32: "c5"}
    for i, stride in enumerate((2, 4, 8, 16, 32)):
        x = keras.layers.Conv2D(8 if stride < 16 else 16, 3, strides=2, padding="same", name=names.get(stride, f"c{i}"))(x)
        x = keras.layers.ReLU(name=f"relu_{stride}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(x), name="tiny_user")


def tiny_detector_section() -> ml_collections.ConfigDict:
    d = dm.detector_section()
    d.min_level, d.backbone_max_level, d.max_level, d.head_convs, d.max_boxes = 3, 5, 5, 0, 8
    d.pyramid_layers = ("P3=relu_8", "P4=relu_16", "P5=relu_32")
    return d


@pytest.fixture(scope="session")
def offline_dir(tmp_path_factory) -> str:
    # The first 64 / 16 canvases of the set (the generator draws them in order from one seed per
    # split, so they are the full set's first canvases): building 2,300 takes ~25 s on a busy CPU.
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    full = dict(dd.OFFLINE_SIZES)
    dd.OFFLINE_SIZES.update(train=64, test=16)
    try:
        dd.prepare_offline(data_dir)
    finally:
        dd.OFFLINE_SIZES.update(full)
    return data_dir


# --------------------------------------------------------------------------------------------
# Backbones


def test_levels_of_builtin_backbones_by_stride():
    r50 = registry.build_builtin("resnet50", input_shape=(64, 64, 3), num_classes=10)
    assert bb.find_levels(r50) == {"P3": "stage2_block4_out", "P4": "stage3_block6_out", "P5": "stage4_block3_out"}
    mnv2 = registry.build_builtin("mobilenet_v2", input_shape=(64, 64, 3), num_classes=10, width_mult=0.35)
    assert bb.find_levels(mnv2) == {"P3": "stage4_block1_expand_relu6", "P4": "stage6_block1_expand_relu6",
                                    "P5": "head_relu6"}
    pyramid = bb.pyramid_backbone(mnv2, (128, 128, 3))
    assert {k: tuple(v.shape[1:3]) for k, v in pyramid.pyramid_outputs.items()} == {
        "P3": (16, 16), "P4": (8, 8), "P5": (4, 4)}
    # The trunk calls the model's own layers: the weights are shared, not copied.
    assert pyramid.get_layer("stem_conv") is mnv2.get_layer("stem_conv")


def test_source_model_gets_the_configured_bn_momentum():
    d = dm.detector_section()
    d.backbone, d.width_mult, d.bn_momentum = "mobilenet_v2", 0.35, 0.9
    model = dm.source_model(d, 64)
    momenta = {l.momentum for l in model.layers if isinstance(l, keras.layers.BatchNormalization)}
    assert momenta == {0.9}
    d.bn_momentum = 0.0  # keep the architecture's own
    assert {l.momentum for l in dm.source_model(d, 64).layers if isinstance(l, keras.layers.BatchNormalization)} == {0.999}


def test_backbone_without_the_levels_names_the_levels_it_has():
    r20 = registry.build_builtin("resnet20", input_shape=(32, 32, 3), num_classes=10)
    with pytest.raises(bb.PyramidLevelError) as e:
        bb.find_levels(r20)
    message = str(e.value)
    assert "no pyramid level ['P3', 'P4', 'P5']" in message
    assert "P2 (stride 4): 'stage3_block3_out'" in message and "P0 (stride 1)" in message


def test_user_model_with_named_pyramid_layers():
    model = tiny_user_model()
    names = {"P3": "relu_8", "P4": "relu_16", "P5": "relu_32"}
    assert bb.find_levels(model, layer_names=names) == names
    # By stride the last layer of each stride wins: the ReLU after each convolution, here the same.
    assert bb.find_levels(model) == names
    with pytest.raises(bb.PyramidLevelError, match=r"'relu_16' has output stride 16 .* P3 needs stride 8"):
        bb.find_levels(model, layer_names={"P3": "relu_16"})
    with pytest.raises(bb.PyramidLevelError, match="'nope' .* is not a layer"):
        bb.find_levels(model, layer_names={"P3": "nope"})
    with pytest.raises(bb.PyramidLevelError, match="must divide by 32"):
        bb.pyramid_trunk(model, (100, 100, 3))


def test_pruned_keras_and_widths_json_backbones(tmp_path):
    full = registry.build_builtin("mobilenet_v2", input_shape=(64, 64, 3), num_classes=10, width_mult=0.35)
    graph = ChannelGraph.from_model(full)
    half = {g.id: np.arange(0, g.size, 2) for g in graph.prunable_groups}
    # A physically pruned model saved as .keras (what Dagger's prune stage writes) keeps its weights.
    pruned = surgery.extract(full, half, graph=graph, name="pruned")
    pruned.save(tmp_path / "pruned.keras")
    d = dm.detector_section()
    d.backbone = str(tmp_path / "pruned.keras")
    loaded = dm.source_model(d, 64)
    pyramid = bb.pyramid_backbone(loaded, (64, 64, 3))
    p3 = pruned.get_layer("stage4_block1_expand_relu6").output.shape[-1]
    assert pyramid.pyramid_outputs["P3"].shape[-1] == p3 < full.get_layer("stage4_block1_expand_relu6").output.shape[-1]
    np.testing.assert_array_equal(pyramid.get_layer("stem_conv").get_weights()[0], pruned.get_layer("stem_conv").get_weights()[0])
    # A searched widths.json: the same architecture, fresh weights.
    info = {"name": "mobilenet_v2", "input_shape": [64, 64, 3], "num_classes": 10, "width_mult": 0.35}
    write_widths(tmp_path / "widths.json", graph, half, info)
    d.backbone = str(tmp_path / "widths.json")
    searched = bb.pyramid_backbone(dm.source_model(d, 64), (64, 64, 3))
    assert {k: v.shape[-1] for k, v in searched.pyramid_outputs.items()} == {
        k: v.shape[-1] for k, v in pyramid.pyramid_outputs.items()}


# --------------------------------------------------------------------------------------------
# Data


def _example(boxes, labels, size=(40, 60)):
    return {"image": tf.zeros((*size, 3), tf.uint8), "objects": {"bbox": tf.constant(boxes, tf.float32, (len(boxes), 4)),
                                                                  "label": tf.constant(labels, tf.int64, (len(labels),))}}


def test_to_boxes_clips_drops_zero_area_and_refuses_bad_class_ids():
    out = dd.to_boxes(_example([[0.5, 0.5, 1.2, 0.75], [0.2, 0.3, 0.2, 0.6], [-0.1, 0.0, 0.5, 0.5]], [1, 2, 3]), 10)
    # yxyx pixels of a 40x60 image: the first clipped at the bottom, the zero-height one dropped.
    np.testing.assert_allclose(out["bounding_boxes"]["boxes"].numpy(), [[20, 30, 40, 45], [0, 0, 20, 30]])
    np.testing.assert_array_equal(out["bounding_boxes"]["labels"].numpy(), [1, 3])
    empty = dd.to_boxes(_example([], []), 10)
    assert empty["bounding_boxes"]["boxes"].shape == (0, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class id out of range; valid: 0..9"):
        dd.to_boxes(_example([[0.1, 0.1, 0.5, 0.5]], [10]), 10)
    counts = dd.check_examples([{"objects": {"bbox": np.array([[0.5, 0.5, 1.2, 0.75], [0.2, 0.3, 0.2, 0.6]]),
                                             "label": np.array([1, 12])}},
                                {"objects": {"bbox": np.zeros((0, 4)), "label": np.zeros(0)}}], 10)
    assert counts == {"images": 2, "images_without_boxes": 1, "boxes": 2, "boxes_clipped": 1, "boxes_zero_area": 1,
                      "labels_out_of_range": 1}


def test_too_many_boxes_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="more boxes than max_boxes=2"):
        dd.pad_boxes(tf.zeros((3, 4)), tf.zeros((3,), tf.int32), 2)


boxes_in = st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(1, 40), st.integers(1, 40))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(height=st.integers(20, 100), width=st.integers(20, 100), raw=st.lists(boxes_in, min_size=1, max_size=4))
def test_resize_and_pad_keeps_boxes_in_the_image_and_flipping_twice_is_identity(height, width, raw):
    boxes = np.array([[min(y, height - 1), min(x, width - 1), min(y + h, height), min(x + w, width)]
                      for y, x, h, w in raw], np.float32)
    sample = {"images": tf.zeros((height, width, 3)), "bounding_boxes": {"boxes": boxes, "labels": np.arange(len(boxes))}}
    resize = dd.augmentation_layers(64, training=False)[0]
    out = resize(sample)["bounding_boxes"]["boxes"].numpy()
    assert (out >= 0).all() and (out <= 64 + 1e-4).all()
    scale = 64 / max(height, width)  # one scale for both axes: the aspect ratio is kept, the rest padded
    np.testing.assert_allclose(out[:, 2] - out[:, 0], (boxes[:, 2] - boxes[:, 0]) * scale, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out[:, 3] - out[:, 1], (boxes[:, 3] - boxes[:, 1]) * scale, rtol=1e-4, atol=1e-3)
    flip = keras.layers.RandomFlip("horizontal", bounding_box_format=dd.BOX_FORMAT)
    always = {"flips": tf.ones((1, 1), tf.bool), "input_shape": (1, 64, 64, 3)}
    batch = {"boxes": out[None], "labels": np.arange(len(out))[None]}
    once = flip.transform_bounding_boxes(batch, always, training=True)
    mirrored = np.asarray(once["boxes"])[0]
    np.testing.assert_allclose(mirrored[:, [1, 3]], 64 - out[:, [3, 1]], atol=1e-4)
    np.testing.assert_allclose(mirrored[:, [0, 2]], out[:, [0, 2]], atol=1e-4)
    twice = flip.transform_bounding_boxes(once, always, training=True)
    np.testing.assert_allclose(np.asarray(twice["boxes"])[0], out, atol=1e-4)


def test_offline_set_is_deterministic_and_feeds_the_pipeline(offline_dir):
    ds, info = dd.load(dd.OFFLINE_NAME, "test", offline_dir)
    assert info.num_classes == 10 and info.split_sizes == {"train": 64, "test": 16}
    # Rebuilt from the same source files and seed: the same canvas and boxes.
    rng = np.random.default_rng(1)
    source = dd.data_lib.fashion_mnist_source_dir()
    items = dd._read_idx(os.path.join(source, "t10k-images-idx3-ubyte.gz"), 10000, (28, 28))
    labels = dd._read_idx(os.path.join(source, "t10k-labels-idx1-ubyte.gz"), 10000, ())
    grey, boxes, classes, _ = dd.paste_items(items, labels, rng)
    ex = next(e for e in ds.as_numpy_iterator() if e["image/id"] == 0)  # tfds stores examples in hashed order
    np.testing.assert_array_equal(ex["image"][:, :, 0], grey)
    np.testing.assert_allclose(ex["objects"]["bbox"] * dd.CANVAS, np.array(boxes, np.float32), atol=1e-3)
    assert list(ex["objects"]["label"]) == classes
    batches = dd.detection_pipeline(ds, info, 64, 4, training=True, max_boxes=8, max_examples=8)
    images, target = next(iter(batches))
    assert images.shape == (4, 64, 64, 3) and target["boxes"].shape == (4, 8, 4) and target["labels"].shape == (4, 8)
    labels_ = target["labels"].numpy()
    real = labels_ >= 0
    assert real.any(axis=1).all() and (target["boxes"].numpy()[~real] == -1).all()
    b = target["boxes"].numpy()[real]
    assert (b >= 0).all() and (b <= 64).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    # After resizing and flipping, the boxes still sit on the items: no item pixel outside every box.
    pixels = images.numpy()[..., 0] * info.std[0] + info.mean[0]
    for j in range(4):
        covered = np.zeros((64, 64), bool)
        for y0, x0, y1, x1 in target["boxes"].numpy()[j][real[j]]:
            covered[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
        assert (pixels[j][~covered] < 0.05).all() and (pixels[j][covered] > 0.05).mean() > 0.3


def test_mock_coco_in_keras_hub_format(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4):
        ds = tfds.load("coco/2017", split="validation", data_dir=str(tmp_path))
        info = dd.DetectionInfo("coco/2017", 80, (), "train", "validation", *dd.NORMALIZATION["coco/2017"], {})
        images, target = next(iter(dd.detection_pipeline(ds, info, 64, 2, training=False, max_boxes=50)))
    assert images.shape == (2, 64, 64, 3) and target["boxes"].shape == (2, 50, 4)
    labels = target["labels"].numpy()
    assert ((labels >= -1) & (labels < 80)).all() and (labels >= 0).any()


# --------------------------------------------------------------------------------------------
# COCO mAP


def test_map_is_one_for_perfect_predictions_and_known_for_a_shifted_box():
    gt_boxes = np.array([[10, 10, 110, 110], [150, 20, 170, 40]], np.float32)  # a large and a small box (yxyx)
    gt_labels = np.array([0, 1])
    perfect = de.coco_map([(gt_boxes, gt_labels)], [(gt_boxes, np.array([0.9, 0.8]), gt_labels)], 2, (200, 200))
    # pycocotools averages 10 IoU thresholds and 101 recall points in float64: 1 up to rounding.
    for key in ("AP", "AP50", "AP75", "AP_small", "AP_large"):
        assert perfect[key] == pytest.approx(1.0, abs=1e-12), key
    assert perfect["AP_medium"] == -1.0
    # The large box shifted 23 pixels right: IoU 77/123 = 0.626, a hit at IoU 0.50, 0.55, 0.60 only.
    shifted = np.array([[10, 33, 110, 133]], np.float32)
    one = de.coco_map([(gt_boxes[:1], gt_labels[:1])], [(shifted, np.array([0.9]), gt_labels[:1])], 2, (200, 200))
    assert one["AP50"] == pytest.approx(1.0, abs=1e-12) and one["AP75"] == 0.0
    assert one["AP"] == pytest.approx(0.3, abs=1e-12) and one["AP_large"] == pytest.approx(0.3, abs=1e-12)
    assert one["AP_small"] == -1.0
    # Padding rows (label -1) are ignored; a wrong class is a miss.
    padded = de.coco_map([(np.concatenate([gt_boxes, -np.ones((1, 4))]), np.array([0, 1, -1]))],
                         [(gt_boxes, np.array([0.9, 0.8]), np.array([1, 1]))], 2, (200, 200))
    # Class 0: missed (AP 0). Class 1: its hit (score 0.8) ranks below the false positive (0.9), so
    # precision is 1/2 wherever recall is reached: AP 0.5. The mean over the two classes: 0.25.
    assert padded["AP50"] == pytest.approx(0.25, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Detector, training, export


def test_detector_on_a_user_backbone_fixes_keras_hubs_head_priors():
    d = tiny_detector_section()
    det = dm.build_detector(tiny_user_model(), 10, d, 64)
    out = det(np.zeros((1, 64, 64, 3), np.float32))
    anchors = 9 * (8 * 8 + 4 * 4 + 2 * 2)
    assert out["bbox_regression"].shape == (1, anchors, 4) and out["cls_logits"].shape == (1, anchors, 10)
    np.testing.assert_allclose(det.box_head.prediction_layer.bias.numpy(), 0.0)
    np.testing.assert_allclose(tf.sigmoid(det.classification_head.prediction_layer.bias).numpy(), 0.01, rtol=1e-5)


def test_fpn_upsampling_converts_to_resize_nearest_neighbor_with_identical_outputs(tmp_path):
    """keras-hub's UpSampling2D becomes TFLite RESHAPE + TILE (TILE ends the Edge TPU subgraph);
    the swapped layer gives RESIZE_NEAREST_NEIGHBOR version 1, the same values, and survives a save."""
    from cafe_tf.detection import export as dx
    from deploy import tflite_model

    det = dm.build_detector(tiny_user_model(), 10, tiny_detector_section(), 64)
    fpn = det.backbone.feature_pyramid
    assert isinstance(fpn.top_down_op, dm.NearestUpsampling2x)
    assert dm.edge_upsampling(det) == 0  # already swapped: nothing to do
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    ours = dx.keras_raw(det, images)
    object.__setattr__(fpn, "top_down_op", keras.layers.UpSampling2D(size=2))  # keras-hub's own
    theirs = dx.keras_raw(det, images)
    for name in (dx.BOXES, dx.SCORES):
        np.testing.assert_array_equal(ours[name], theirs[name])

    def ops(model):
        result = dx.export_detector(model, str(tmp_path / f"{model.name}.tflite"), "fp32")
        return {(op.op, op.version) for op in tflite_model.summarize(result.path).ops}

    keras_hubs = {name for name, _ in ops(det)}
    assert "TILE" in keras_hubs and "RESIZE_NEAREST_NEIGHBOR" not in keras_hubs
    det.save(tmp_path / "detector.keras")
    loaded = dx.load_detector(str(tmp_path / "detector.keras"))  # FeaturePyramid rebuilds UpSampling2D; swapped again
    assert isinstance(loaded.backbone.feature_pyramid.top_down_op, dm.NearestUpsampling2x)
    converted = ops(loaded)
    assert ("RESIZE_NEAREST_NEIGHBOR", 1) in converted and "TILE" not in {name for name, _ in converted}
    np.testing.assert_array_equal(dx.keras_raw(loaded, images)[dx.SCORES], ours[dx.SCORES])


def test_targets_decode_back_to_the_ground_truth(offline_dir):
    # keras-hub's label encoder on the pipeline's boxes, then the detector's decoding and NMS on those
    # targets as if predicted: every box an anchor matched comes back, with its class.
    det = dm.build_detector(tiny_user_model(128), 10, tiny_detector_section(), 128)
    ds, info = dd.load(dd.OFFLINE_NAME, "test", offline_dir)
    images, target = next(iter(dd.detection_pipeline(ds, info, 128, 4, training=False, max_boxes=8)))
    deltas, classes = det.label_encoder(images=images, gt_boxes=target["boxes"], gt_classes=target["labels"])
    logits = tf.where(tf.one_hot(tf.cast(classes, tf.int32), 10) > 0, 10.0, -10.0)
    out = det.decode_predictions({"bbox_regression": deltas, "cls_logits": logits}, images)
    found = 0
    for j in range(4):
        gt = target["boxes"][j].numpy()[target["labels"][j].numpy() >= 0]
        gl = target["labels"][j].numpy()[target["labels"][j].numpy() >= 0]
        n = int(out["num_detections"][j])
        for box, label in zip(out["boxes"][j][:n].numpy(), out["labels"][j][:n].numpy()):
            k = int(np.argmin(np.abs(gt - box).sum(axis=1)))
            np.testing.assert_allclose(box, gt[k], atol=1e-3)
            assert label == gl[k]
            found += 1
    assert found >= 4  # boxes smaller than every anchor (IoU < 0.5 with all of them) are never matched


def tiny_config(data_dir: str, epochs: int) -> ml_collections.ConfigDict:
    from cafe_tf import config as cfg

    c = cfg.base_config()
    c.data.name, c.data.data_dir, c.data.image_size = dd.OFFLINE_NAME, data_dir, 64
    c.data.batch_size, c.data.eval_batch_size, c.data.max_train_examples, c.data.max_eval_examples = 4, 4, 8, 4
    c.data.shuffle_buffer = 8
    c.detector = tiny_detector_section()
    c.train.epochs, c.train.optimizer, c.train.lr, c.train.log_every = epochs, "adam", 1e-3, 1
    return c


def test_anchor_size_matches_the_offline_items_keras_hubs_default_misses_the_small_ones(offline_dir):
    # The share of ground-truth boxes that some anchor overlaps at IoU >= 0.5 (keras-hub's positive
    # threshold: a box below it is never learned), on the first 16 test canvases.
    from cafe_tf.detection import export as dx

    ds, info = dd.load(dd.OFFLINE_NAME, "test", offline_dir)
    boxes = np.concatenate([t["boxes"][t["labels"] >= 0] for _, t in
                            dd.detection_pipeline(ds, info, 128, 16, training=False, max_boxes=8).as_numpy_iterator()])
    covered = {}
    for size in (4.0, 2.0):
        d = tiny_detector_section()
        d.max_level, d.anchor_size = 7, size
        det = dm.build_detector(tiny_user_model(128), 10, d, 128)
        anchors = dx.anchors(det, (128, 128, 3))
        side = np.sqrt((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1]))
        assert side.min() == pytest.approx(size * 8, rel=0.02)  # P3: anchor_size x stride 8 (aspect ratios round)
        covered[size] = float(np.mean(dx.box_iou(boxes[:, None], anchors[None]).max(axis=1) >= 0.5))
    assert covered[2.0] >= 0.95 and covered[4.0] < 0.9, covered


def test_config_errors_name_the_key():
    from cafe_tf.config import ConfigError
    from cafe_tf.detection import train as dt

    c = tiny_config("/nonexistent", epochs=1)
    c.data.image_size = 100
    with pytest.raises(ConfigError, match=r"config.data.image_size=100 must divide by 32"):
        dt.validate(c)
    c.data.image_size, c.data.name = 64, "cifar10"
    with pytest.raises(ConfigError, match=r"config.data.name='cifar10' is not a detection dataset"):
        dt.validate(c)
    c.data.name, c.detector.pyramid_layers = dd.OFFLINE_NAME, ("P3:relu_8",)
    with pytest.raises(ConfigError, match=r"pyramid_layers entry 'P3:relu_8' is invalid"):
        dt.validate(c)
    c.detector.pyramid_layers, c.detector.anchor_size = (), 0.0
    with pytest.raises(ConfigError, match=r"config.detector.anchor_size=0.0 must be > 0"):
        dt.validate(c)


@pytest.mark.slow
def test_training_starts_and_resumes(offline_dir, tmp_path, monkeypatch):
    from cafe_tf.detection import train as dt

    user = tiny_user_model()
    user.save(tmp_path / "user.keras")
    c = tiny_config(offline_dir, epochs=1)
    c.detector.backbone = str(tmp_path / "user.keras")
    first = dt.train(c, str(tmp_path / "run"))
    assert first["steps"] == 2 and first["resumed_from_step"] is None and set(de.METRICS) <= set(first["final"])
    c.train.epochs = 2
    second = dt.train(c, str(tmp_path / "run"))
    assert second["steps"] == 4 and second["resumed_from_step"] == 2
    assert [e["step"] for e in second["history"]] == [2, 4]
    with open(tmp_path / "run" / "metrics.json") as f:
        assert json.load(f)["steps"] == 4
    assert os.path.isfile(tmp_path / "run" / "detector.keras")


@pytest.mark.slow
def test_int8_export_and_parity(offline_dir, tmp_path):
    from cafe_tf.detection import export as dx

    det = dm.build_detector(tiny_user_model(), 10, tiny_detector_section(), 64)
    ds, info = dd.load(dd.OFFLINE_NAME, "train", offline_dir)
    images = np.concatenate([x for x, _ in dd.detection_pipeline(ds, info, 64, 8, training=False, max_boxes=8)
                             .take(2).as_numpy_iterator()])
    result = dx.export_detector(det, str(tmp_path / "det.tflite"), "int8", calibration=images, num_calibration=16)
    assert result.quant == "int8" and os.path.isfile(result.path)
    report = dx.parity(det, result.path, images[:4], "int8")
    assert report["ok"], report
    raw = dx.tflite_raw(result.path, images[:2])
    anchors = 9 * (64 + 16 + 4)
    assert raw[dx.BOXES].shape == (2, anchors, 4) and raw[dx.SCORES].shape == (2, anchors, 10)
    decoded = dx.decode(det, raw, images.shape[1:])
    assert decoded["boxes"].shape == (2, 100, 4)
    kinds = {o["name"]: o["kind"] for o in result.metadata["outputs"]}
    assert kinds == dx.OUTPUT_KINDS
    # Integer input and outputs (the Edge TPU's): the same parity, and the readiness checker sees no float tensor.
    from deploy import edgetpu

    io8 = dx.export_detector(det, str(tmp_path / "det_io8.tflite"), "int8", calibration=images, num_calibration=16,
                             io_type="int8")
    assert dx.parity(det, io8.path, images[:4], "int8")["ok"]
    ready = edgetpu.readiness(io8.path)
    assert ready["model_checks"]["float_tensors"] == 0 and ready["model_checks"]["ok"], ready["model_checks"]
    # With the FPN's upsampling as RESIZE_NEAREST_NEIGHBOR every op maps (the checker's reading, no compiler here).
    assert ready["ready"] and ready["ops_on_cpu"] == 0, ready["cpu_ops"]


# --------------------------------------------------------------------------------------------
# benchmarks/detect_backbones.py: the four trunks' table


def _detect_benchmark():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "detect_backbones.py")
    spec = importlib.util.spec_from_file_location("detect_backbones", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_detect_backbones_benchmark_wires_each_arm_and_tabulates_its_artifacts(tmp_path):
    from scipy import stats

    from cafe_tf import io

    bench = _detect_benchmark()
    w = str(tmp_path)
    args = bench.argparse.Namespace(workdir=w, target=0.5, class_epochs=3, gate_epochs=1.0, finetune_epochs=2,
                                    det_epochs=6, rounds=5, runs=500, seeds=[0, 1])
    stages = {s.name: s for s in bench.classifier_stages(args, list(bench.ARMS))}
    assert set(stages) == {"full_classifier_s0", "full_classifier_s1", "cafenet_and_uniform", "dagger_s0", "dagger_s1"}
    assert f"--config.prune.pretrained={bench.classifier_path(w, 'full', 0.5, 1)}" in stages["dagger_s1"].command
    assert {"--budgets=0.5", "--seeds=0,1"} <= set(stages["cafenet_and_uniform"].command)
    for name in ("full_classifier_s0", "cafenet_and_uniform"):  # one classifier recipe for the full, searched and uniform nets
        assert set(bench.RETRAIN) | {"--config.train.epochs=3"} <= set(stages[name].command)
    assert {s.name for s in bench.classifier_stages(args, ["uniform"])} == {"full_classifier_s0", "full_classifier_s1",
                                                                            "cafenet_and_uniform"}
    for arm in bench.ARMS:  # every detector is trained and exported on its own arm's classifier of its seed
        train, export = bench.detector_stages(args, arm, 1)
        wanted = f"--config.detector.backbone={bench.classifier_path(w, arm, 0.5, 1)}"
        assert wanted in train.command and wanted in export.command
        assert {"--config.train.epochs=6", "--config.train.seed=1"} <= set(train.command)
    latency = bench.latency_stage(args, list(bench.ARMS)).command
    assert latency.count("--model") == 8 and latency[-3:] == ["--rounds=5", "--runs=500", "--threads=1"]
    # Artifacts of two arms over two seeds (one with a failed int8 parity); the others have none yet.
    ap50 = {("full", 0): 0.07, ("full", 1): 0.05, ("uniform", 0): 0.03, ("uniform", 1): 0.04}
    for (arm, seed), value in ap50.items():
        macs = 1000 if arm == "full" else 503
        det = bench.detector_dir(w, arm, seed)
        io.write_artifact(os.path.join(det, "metrics.json"), "detector_metrics", 1, {
            "backbone_macs": macs, "backbone_params": 10 * macs, "steps": 750, "final": {"AP": 0.02, "AP50": value}})
        io.write_artifact(os.path.join(det, "export_int8.json"), "detector_export", 1, {
            "map_tflite": {"AP": 0.01, "AP50": 0.03}, "map_keras": {"AP": 0.02, "AP50": value},
            "parity": {"ok": arm == "full", "max_score_diff": 0.3, "mean_iou": 0.95},
            "edgetpu_readiness": {"ops_on_edgetpu": 108, "num_ops": 108}})
        io.write_artifact(bench.latency_path(w, arm, seed), "benchmark", 1, {
            "latency_ms": {"mean": 4.5, "std": 0.2, "p50": 4.4},
            "environment": {"cpu": "Test CPU", "cpu_features": {"avx2": True, "amx_tile": False}}})
    io.write_artifact(bench.classifier_metrics(w, "full", 0.5, 0), "train_metrics", 1,
                      {"final": {"test": {"accuracy": 0.76, "examples": 10000}}})
    rows = bench.collect(w, 0.5, list(bench.ARMS), [0, 1])
    by = {(r["arm"], r["seed"]): r for r in rows}
    assert by["uniform", 1]["trunk_macs_ratio"] == pytest.approx(0.503) and by["full", 0]["trunk_macs_ratio"] == 1.0
    assert by["full", 0]["classifier_test_acc"] == 0.76 and by["uniform", 0].get("classifier_test_acc") is None
    assert by["full", 0]["cpu_features"] == ["avx2"] and by["uniform", 0]["parity_ok"] is False
    assert by["dagger", 1] == {"arm": "dagger", "seed": 1}
    diffs = bench.paired(rows, "uniform")
    assert set(diffs) == {"full", "cafenet", "dagger"} and diffs["cafenet"]["AP50"] is None
    d = diffs["full"]["AP50"]  # +0.04 and +0.01 over the two seeds
    half = stats.t.ppf(0.975, 1) * np.std([0.04, 0.01], ddof=1) / np.sqrt(2)
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.025) and d["low"] == pytest.approx(0.025 - half)
    lines = bench.table(rows, diffs, "uniform")
    assert len([line for line in lines if line.startswith("| full |")]) == 3  # two seeds, one difference row
    uniform0 = next(line for line in lines if line.startswith("| uniform | 0 |"))
    assert "503 (0.5030)" in uniform0 and "fails (0.300, 0.950)" in uniform0 and "108/108" in uniform0
    assert f"+0.0250 [{0.025 - half:+.4f}, {0.025 + half:+.4f}]" in next(
        line for line in lines if line.startswith("| full |") and "[" in line)
    with pytest.raises(SystemExit):
        bench.main(["--arms=full,resnet", "--workdir", w])
    with pytest.raises(SystemExit):
        bench.main(["--seeds=0,x", "--workdir", w])
