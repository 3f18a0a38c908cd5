"""User models end to end: a ``.keras`` file and ``keras.applications`` through config, build,
widths.json provenance, the flops program, input scaling, Dagger's near-chance check and CafeNet's stages."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from cafe_tf import config as cfg
from cafe_tf import data, io
from cafe_tf.config import ConfigError
from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph
from cafe_tf.models import source as source_lib
from cafe_tf.space import WIDTHS_VERSION, read_widths, write_widths
from cafe_tf.training.subnet import build_subnet, subnet_factory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
MOBILENET = "keras.applications.MobileNetV2"


def user_cnn(shape=(28, 28, 1), classes=10, filters=8, rescaling=False, name="user_cnn"):
    """A small functional CNN with a residual add, as a user would bring it."""
    L = keras.layers
    inp = keras.Input(shape, name="image")
    x = L.Rescaling(1 / 255.0, name="scale")(inp) if rescaling else inp
    x = L.ReLU(name="r0")(L.BatchNormalization(name="bn0")(L.Conv2D(filters, 3, strides=2, padding="same",
                                                                      use_bias=False, name="stem")(x)))
    y = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(L.Conv2D(12, 3, padding="same", use_bias=False,
                                                                      name="conv1")(x)))
    y = L.BatchNormalization(name="bn2")(L.Conv2D(filters, 3, padding="same", use_bias=False, name="conv2")(y))
    x = L.ReLU(name="r2")(L.Add(name="add")([x, y]))
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv3")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(classes, name="logits")(x), name=name)


@pytest.fixture
def user_file(tmp_path):
    path = str(tmp_path / "user.keras")
    user_cnn().save(path)
    return path


def model_section(**values):
    section = cfg.base_config().model
    section.update(values)
    return section


def half_selection(graph):
    return {g.id: np.arange(0, g.size, 2) for g in graph.prunable_groups}


# ------------------------------------------------------------------------------------------- config


def test_config_accepts_user_models_and_names_bad_values(user_file, tmp_path):
    cfg.validate_model(model_section(name=user_file))
    cfg.validate_model(model_section(name=MOBILENET, width_mult=0.35, input_scaling="unit"))
    with pytest.raises(ConfigError, match=r"keras.applications.MobileNetV9.* valid names: .*'keras.applications.MobileNetV2'"):
        cfg.validate_model(model_section(name="keras.applications.MobileNetV9"))
    missing = str(tmp_path / "nope.keras")
    with pytest.raises(ConfigError, match=f"config.model.name='{missing}' is invalid: no such .keras file"):
        cfg.validate_model(model_section(name=missing))
    with pytest.raises(ConfigError, match=r"unknown model 'resnet21'; give a registry name .*'resnet20'.*\.keras"):
        cfg.validate_model(model_section(name="resnet21"))
    with pytest.raises(ConfigError, match=r"config.model.input_scaling='pixels' is invalid; valid values: "
                                          r"\['mean_std', 'unit', 'raw', 'model'\]"):
        cfg.validate_model(model_section(input_scaling="pixels"))


# -------------------------------------------------------------------------------------------- build


def test_build_a_keras_file_from_config(user_file):
    source = source_lib.from_config(model_section(name=user_file), (28, 28, 1), 10)
    assert source.kind == "keras_file" and source.sha256 == source_lib.sha256_of(user_file)
    model = source.build()
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(model(x).numpy(), keras.models.load_model(user_file)(x).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"takes inputs of shape \(28, 28, 1\), but the data pipeline yields "
                                         r"\(32, 32, 1\); set config.data.image_size"):
        source_lib.from_config(model_section(name=user_file), (32, 32, 1), 10)
    with pytest.raises(ValueError, match="predicts 10 classes, but the dataset has 5"):
        source_lib.from_config(model_section(name=user_file), (28, 28, 1), 5)
    # input_scaling="model" needs the model's own Rescaling/Normalization layers.
    with pytest.raises(ValueError, match=r"input_scaling='model' needs .* and '.*user.keras' has none; use one of "
                                         r"\['mean_std', 'unit', 'raw'\]"):
        source_lib.from_config(model_section(name=user_file, input_scaling="model"), (28, 28, 1), 10)
    scaled = user_file.replace("user.keras", "scaled.keras")
    user_cnn(rescaling=True).save(scaled)
    assert source_lib.from_config(model_section(name=scaled, input_scaling="model"), (28, 28, 1), 10).build()


def test_build_an_application_from_config():
    source = source_lib.from_config(model_section(name=MOBILENET, width_mult=0.35), (32, 32, 1), 10)
    model = source.build()
    assert tuple(model.inputs[0].shape[1:]) == (32, 32, 1) and tuple(model.outputs[0].shape[1:]) == (10,)
    assert model.layers[-1].get_config()["activation"] == "linear"  # logits
    assert source.record()["args"] == {"weights": None, "include_top": True, "input_shape": [32, 32, 1],
                                       "classes": 10, "classifier_activation": None, "alpha": 0.35}
    assert ChannelGraph.from_model(model).prunable_groups
    with pytest.raises(ValueError, match=r"MobileNetV2 refuses input_shape \(28, 28, 1\).*at least 32x32.*"
                                         r"set config.data.image_size=32"):
        source_lib.from_config(model_section(name=MOBILENET), (28, 28, 1), 10).build()
    with pytest.raises(ValueError, match=r"ResNet50 has no width multiplier \(alpha\); use 1.0, or a family with "
                                         r"one: \[.*'MobileNetV2'"):
        source_lib.from_config(model_section(name="keras.applications.ResNet50", width_mult=0.5), (32, 32, 3), 10)
    with pytest.raises(ValueError, match=r"input_scaling='model' needs .*MobileNetV2 .*has none"):
        source_lib.from_config(model_section(name=MOBILENET, input_scaling="model"), (32, 32, 1), 10)
    # A family with its own preprocessing layers gets them only when the pipeline feeds raw pixels.
    small = "keras.applications.MobileNetV3Small"
    assert source_lib.from_config(model_section(name=small, input_scaling="model"), (32, 32, 1), 10
                                  ).application_args()["include_preprocessing"] is True
    assert source_lib.from_config(model_section(name=small), (32, 32, 1), 10
                                  ).application_args()["include_preprocessing"] is False


def test_unknown_application_names_the_valid_ones():
    from cafe_tf import models

    with pytest.raises(ValueError, match=r"keras.applications has no model 'ResNet51'; valid names: "
                                         r"\[.*'keras.applications.ResNet50'"):
        models.build("keras.applications.ResNet51", input_shape=(32, 32, 3), num_classes=10)


# ----------------------------------------------------------------------------------- widths.json


def test_widths_json_records_a_keras_file_and_refuses_it_changed(user_file, tmp_path):
    source = source_lib.from_config(model_section(name=user_file), (28, 28, 1), 10)
    graph = ChannelGraph.from_model(source.build())
    path = tmp_path / "widths.json"
    written = write_widths(path, graph, half_selection(graph), source.model_info())
    stored = read_widths(path)
    assert stored["schema_version"] == WIDTHS_VERSION
    assert stored["model_source"] == {"kind": "keras_file", "path": user_file, "sha256": source.sha256,
                                      "input_scaling": "mean_std"}
    subnet = build_subnet(str(path))  # rebuilt from the recorded file, the searched channels, fresh weights
    cost = CostModel(ChannelGraph.from_model(subnet))
    assert cost.macs() == written["macs"] < written["full_macs"]

    old = source.sha256
    user_cnn(filters=6).save(user_file)  # the user edits the model after the search
    new = source_lib.sha256_of(user_file)
    changed = rf"has changed since it was recorded: sha256 {new} now, {old} recorded"
    with pytest.raises(ValueError, match=changed):
        build_subnet(str(path))
    with pytest.raises(ValueError, match=changed):  # train --widths checks before loading any data
        subnet_factory(str(path))
    # The train program refuses it (exit 1, a stale artifact) and writes nothing but its log.
    workdir = tmp_path / "retrain"
    proc = subprocess.run([sys.executable, "-m", "cafe_tf.cli.train", "--config", "configs/fashion_mnist_cnn.py",
                           f"--workdir={workdir}", f"--widths={path}"], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and old in proc.stderr and new in proc.stderr, proc.stderr[-2000:]
    assert os.listdir(workdir) == ["train.log"]


def test_widths_json_records_an_application_and_its_scaling(tmp_path):
    source = source_lib.from_config(model_section(name=MOBILENET, width_mult=0.35, input_scaling="unit"),
                                    (32, 32, 1), 10)
    graph = ChannelGraph.from_model(source.build())
    path = tmp_path / "widths.json"
    written = write_widths(path, graph, half_selection(graph), source.model_info())
    stored = read_widths(path)
    assert stored["model"]["name"] == MOBILENET
    assert stored["model_source"]["kind"] == "application" and stored["model_source"]["name"] == "MobileNetV2"
    assert stored["model_source"]["input_scaling"] == "unit"
    assert source_lib.from_record(stored["model_source"]) == source
    assert CostModel(ChannelGraph.from_model(build_subnet(str(path)))).macs() == written["macs"]
    with pytest.raises(ValueError, match=r"config.model.input_scaling='mean_std', but the model was recorded with "
                                         r"input_scaling='unit'; set --config.model.input_scaling=unit"):
        subnet_factory(str(path), input_scaling="mean_std")


def test_no_widths_json_without_a_source_and_none_read_without_one(tmp_path, user_file):
    model = keras.models.load_model(user_file)
    graph = ChannelGraph.from_model(model)
    path = tmp_path / "widths.json"
    info = {"name": "user_cnn", "input_shape": [28, 28, 1], "num_classes": 10, "width_mult": 1.0}
    with pytest.raises(ValueError, match=r"model_info of 'user_cnn' lacks 'source'"):
        write_widths(path, graph, half_selection(graph), info)
    assert not path.exists() and os.listdir(tmp_path) == ["user.keras"]  # no half-written file either
    # A file without the model's provenance is refused, naming the file and the key.
    from cafe_tf import models

    graph = ChannelGraph.from_model(models.build("cnn_small", input_shape=(28, 28, 1), num_classes=10))
    record = write_widths(path, graph, half_selection(graph),
                          {"name": "cnn_small", "input_shape": [28, 28, 1], "num_classes": 10, "width_mult": 1.0})
    assert CostModel(ChannelGraph.from_model(build_subnet(str(path)))).macs() == record["macs"]
    io.write_json(path, {k: v for k, v in record.items() if k != "model_source"})
    with pytest.raises(io.ArtifactError, match=r"widths.json' lacks required keys \['model_source'\]"):
        read_widths(path)


# ------------------------------------------------------------------------------------------- flops


def test_flops_program_counts_a_keras_file_and_its_widths(user_file, tmp_path):
    model = keras.models.load_model(user_file)
    cost = CostModel(ChannelGraph.from_model(model))
    source = source_lib.from_config(model_section(name=user_file), (28, 28, 1), 10)
    record = write_widths(tmp_path / "widths.json", cost.graph, half_selection(cost.graph), source.model_info())
    run = [sys.executable, "-m", "cafe_tf.flops", "--model", user_file]
    full = subprocess.run(run, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(full.stdout)
    assert out["macs"] == cost.macs() and out["params"] == cost.params() and out["input_shape"] == [28, 28, 1]
    assert out["source"]["sha256"] == source.sha256
    sub = subprocess.run(run + [f"--widths={tmp_path / 'widths.json'}"], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=120, check=True)
    assert json.loads(sub.stdout)["macs"] == record["macs"]
    bad = subprocess.run([sys.executable, "-m", "cafe_tf.flops", "--model", "keras.applications.Nope"], cwd=REPO,
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "'keras.applications.MobileNetV2'" in bad.stderr and not bad.stdout


# ------------------------------------------------------------------------------------- input scaling


@pytest.mark.parametrize("scaling, low, high", [("mean_std", (0 - 0.3) / 0.3, (1 - 0.3) / 0.3), ("unit", 0.0, 1.0),
                                                ("raw", 0.0, 255.0), ("model", 0.0, 255.0)])
def test_the_pipeline_feeds_what_input_scaling_says(scaling, low, high):
    pixels = np.zeros((4, 6, 6, 1), np.uint8)
    pixels[:, :3] = 255  # half black, half white
    info = data.DatasetInfo("toy", "classification", 2, (6, 6, 1), {"train": 4}, (0.3,), (0.3,), "none", None,
                            ("a", "b"), "", 0)
    info = dataclasses.replace(info, input_scaling=scaling)
    ds = tf.data.Dataset.from_tensor_slices((pixels, np.zeros(4, np.int64)))
    (images, _), = list(data.input_pipeline(ds, info, False, 4))
    assert images.numpy().min() == pytest.approx(low) and images.numpy().max() == pytest.approx(high)
    norm = info.normalization()
    assert norm["input_scaling"] == scaling
    assert (255 * norm["scale"] - norm["mean"][0]) / norm["std"][0] == pytest.approx(high)  # what deploy records


# --------------------------------------------------------------------------------------------- Dagger


def test_dagger_warns_when_the_given_model_is_near_chance(user_file):
    from cafe_tf.dagger import pipeline as dagger
    from supernet_helpers import separable_source

    warning = dagger.near_chance_warning(0.12, 10, "validation", "mean_std")
    assert "12.00% on validation" in warning and "chance (10.00%)" in warning
    assert "config.model.input_scaling='mean_std'" in warning and "['unit', 'raw', 'model']" in warning
    assert dagger.near_chance_warning(0.5, 10, "validation", "mean_std") is None
    # The pipeline's check on an untrained model (3 classes: chance 33%) records the warning.
    config = ml_collections.ConfigDict({"model": model_section(input_scaling="unit")})
    src = separable_source(n=48, n_val=48)
    untrained = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(3, kernel_initializer="zeros")])
    check = dagger._check_pretrained(config, src, untrained, user_file, "validation", 1 / 3, {})
    assert check["split"] == "validation" and check["input_scaling"] == "unit"
    assert "within 5% of chance" in check["warning"]


def test_prune_refuses_an_architecture_as_pretrained_and_names_the_way_out():
    from cafe_tf.dagger import pipeline as dagger

    section = dagger.prune_section()
    section.pretrained = MOBILENET
    with pytest.raises(ConfigError, match=r"names an architecture without trained weights .*set "
                                          r"config.model.name='keras.applications.MobileNetV2'"):
        dagger.validate_prune(section)
    section.pretrained = "keras.applications.Nope"
    with pytest.raises(ConfigError, match="has no model 'Nope'"):
        dagger.validate_prune(section)


# ---------------------------------------------------------------------------- CafeNet, end to end


def test_cafenet_stages_on_a_users_keras_model(user_file, tmp_path, fashion_mnist_dir):
    """train_supernet -> search -> train --widths on a user's .keras, a handful of steps on Fashion-MNIST."""
    workdir = tmp_path / "run"
    common = [f"--config={os.path.join(REPO, 'configs', 'fashion_mnist_resnet20.py')}", f"--workdir={workdir}",
              f"--config.model.name={user_file}", "--config.model.input_scaling=unit",
              f"--config.data.data_dir={fashion_mnist_dir}", "--config.data.max_train_examples=256",
              "--config.data.max_eval_examples=128", "--config.data.batch_size=64", "--config.data.cache=False",
              "--config.supernet.epochs=1", "--config.supernet.eval_fractions=()", "--config.supernet.eval_min=False",
              "--config.search.population=4", "--config.search.generations=1", "--config.search.parents=2",
              "--config.search.calibration_examples=64", "--config.search.eval_examples=64",
              "--config.train.epochs=1"]

    def run(module, *extra):
        proc = subprocess.run([sys.executable, "-m", module, *common, *extra], cwd=REPO, env=ENV,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run("cafe_tf.train_supernet")
    run("cafe_tf.search")
    stored = read_widths(workdir / "widths.json")
    assert stored["model_source"] == {"kind": "keras_file", "path": user_file,
                                      "sha256": source_lib.sha256_of(user_file), "input_scaling": "unit"}
    run("cafe_tf.cli.train", f"--workdir={workdir / 'retrain'}", f"--widths={workdir / 'widths.json'}")
    retrained = keras.models.load_model(workdir / "retrain" / "model.keras")
    assert CostModel(ChannelGraph.from_model(retrained)).macs() == stored["macs"]
    metrics = json.load(open(workdir / "retrain" / "metrics.json"))
    assert metrics["normalization"] == {"scale": 1 / 255, "mean": [0.0], "std": [1.0], "input_scaling": "unit"}


def test_deploy_calibrates_and_records_the_models_input_scaling(tmp_path):
    """export's calibration images and the .tflite metadata follow config.model.input_scaling."""
    import keras

    from deploy import export, representative, tflite_model

    for scaling, lo, hi in (("unit", 0.0, 1.0), ("raw", 0.0, 255.0)):
        images, _, norm = representative.dataset_images("fashion_mnist", (28, 28, 1), 16, input_scaling=scaling)
        assert norm["input_scaling"] == scaling and images.min() >= lo and images.max() <= hi and images.max() > hi / 2
    inp = keras.Input((28, 28, 1))
    model = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)))
    path = str(tmp_path / "m.tflite")
    export.export_tflite(model, "int8", path, representative_data="fashion_mnist", num_calibration=16,
                         input_scaling="raw")
    recorded = tflite_model.read_metadata(path)["normalization"]
    assert recorded["input_scaling"] == "raw" and recorded["scale"] == 1.0 and recorded["mean"] == [0.0]


def test_config_boundaries_reach_the_graph_and_the_widths_record(user_file, tmp_path):
    section = model_section(name=user_file, boundaries=("conv1",))
    cfg.validate_model(section)
    src = source_lib.from_config(section, (28, 28, 1), 10)
    graph = ChannelGraph.from_model(src.build())
    assert not graph.group_by_name["conv1"].prunable and not graph.group_by_name["stem"].prunable  # both sides
    assert graph.group_by_name["conv3"].prunable
    assert "fixed-width boundary" in graph.group_by_name["conv1"].reason
    rebuilt = source_lib.from_record(src.record()).build()  # what train --widths / export --widths rebuild
    assert not ChannelGraph.from_model(rebuilt).group_by_name["conv1"].prunable
    with pytest.raises(ConfigError, match="model.boundaries"):
        cfg.validate_model(model_section(name=user_file, boundaries=(3,)))


def test_config_bn_momentum_is_applied_and_recorded():
    section = model_section(name=MOBILENET, width_mult=0.35, bn_momentum=0.9)
    cfg.validate_model(section)
    src = source_lib.from_config(section, (32, 32, 1), 10)
    bns = [l for l in src.build().layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.momentum == 0.9 for l in bns)
    rebuilt = source_lib.from_record(src.record()).build()  # what train --widths rebuilds
    assert all(l.momentum == 0.9 for l in rebuilt.layers if isinstance(l, keras.layers.BatchNormalization))
    with pytest.raises(ConfigError, match="model.bn_momentum"):
        cfg.validate_model(model_section(name=MOBILENET, bn_momentum=1.0))
