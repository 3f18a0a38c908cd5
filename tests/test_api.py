"""The public API (cafe_tf.profile / train / search_widths / prune / export_tflite / benchmark) on a
model of this test's own design (a small functional CNN with a residual add) and a learnable toy
data set of arrays: every function, the config rules (precedence, a budget given twice, unknown
keys), and MACs within budget by a count that does not use CostModel."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

import cafe_tf
from cafe_tf import api
from cafe_tf import config as config_lib
from cafe_tf.config import ConfigError
from cafe_tf.models import source as source_lib
from test_applications import independent_macs

API = ("load_data", "profile", "train", "search_widths", "prune", "export_tflite", "benchmark", "Data", "Profile",
       "TrainResult", "SearchResult", "PruneResult", "ExportResult", "BenchmarkResult")

# Small batches and few images, so each stage runs in seconds.
SMALL = {"data.batch_size": 32, "data.eval_batch_size": 64, "data.cache": False}
SHORT_SEARCH = {**SMALL, "supernet.epochs": 1, "supernet.eval_examples": 128, "supernet.calibration_examples": 64,
                "search.population": 4, "search.parents": 2, "search.generations": 2, "search.eval_examples": 128,
                "search.calibration_examples": 64}
SHORT_PRUNE = {**SMALL, "finetune.epochs": 1, "dagger.epochs": 0.5, "prune.bn_calibration_batches": 2}


def toy_arrays(n: int = 480, size: int = 16, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gray noise images with a bright quadrant that names the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
    half = size // 2
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, r * half:(r + 1) * half, col * half:(col + 1) * half, 0] += 150
    return x, y


def residual_cnn(classes: int = 4, size: int = 16, channels: int = 1) -> keras.Model:
    inp = keras.Input((size, size, channels))
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(16, 3, padding="same")(inp)))
    b = keras.layers.BatchNormalization()(keras.layers.Conv2D(16, 3, padding="same")(h))
    h = keras.layers.ReLU()(keras.layers.Add()([h, b]))
    h = keras.layers.ReLU()(keras.layers.Conv2D(32, 3, strides=2, padding="same")(h))
    out = keras.layers.Dense(classes)(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out, name="residual_cnn")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The toy images written as a user's folder of PNG files (class subfolders), loaded with folder:."""
    from PIL import Image

    root = tmp_path_factory.mktemp("my_images")
    x, y = toy_arrays()
    for i, (image, label) in enumerate(zip(x, y)):
        os.makedirs(root / f"class_{label}", exist_ok=True)
        Image.fromarray(image[..., 0]).save(root / f"class_{label}" / f"{i:04d}.png")
    return cafe_tf.load_data(f"folder:{root}")


def test_top_level_names_are_the_api():
    for name in API:
        assert name in dir(cafe_tf), name
        assert getattr(cafe_tf, name) is not None
    assert cafe_tf.search_widths is api.search_widths
    with pytest.raises(AttributeError, match="no_such_name"):
        cafe_tf.no_such_name


def test_profile_counts_like_an_independent_count():
    model = residual_cnn()
    prof = cafe_tf.profile(model)
    assert prof.macs == independent_macs(model)
    assert prof.params == model.count_params()
    assert len(prof.prunable_groups) == 2  # the add ties both 16-channel convolutions; the 32-channel one
    assert "MACs" in str(prof)


def test_overrides_refuse_unknown_keys_and_wrong_types_by_name(data, tmp_path):
    with pytest.raises(ConfigError, match="'epoch'"):
        cafe_tf.search_widths(residual_cnn(), data, workdir=str(tmp_path), overrides={"supernet.epoch": 1})
    with pytest.raises(ConfigError, match="search.population.*wrong type"):
        cafe_tf.search_widths(residual_cnn(), data, workdir=str(tmp_path), overrides={"search.population": "8"})
    with pytest.raises(ConfigError, match="no section 'superne'"):
        cafe_tf.train(residual_cnn(), data, workdir=str(tmp_path), overrides={"superne.epochs": 1})


def test_a_budget_given_twice_is_refused(data, tmp_path):
    with pytest.raises(ConfigError, match="given twice: max_macs.*search.max_macs"):
        cafe_tf.search_widths(residual_cnn(), data, max_macs="50%", workdir=str(tmp_path),
                              overrides={"search.max_macs": 100_000})
    cfg = config_lib.load_config(api.default_config_path(api.SEARCH_CONFIG))
    cfg.search.max_params = 1000
    with pytest.raises(ConfigError, match="given twice: max_params.*config's search.max_params"):
        cafe_tf.search_widths(residual_cnn(), data, max_params="50%", workdir=str(tmp_path), config=cfg)
    with pytest.raises(ConfigError, match="given twice"):
        cafe_tf.prune(residual_cnn(), data, max_macs="50%", workdir=str(tmp_path),
                      overrides={"prune.target_macs_ratio": 0.5})
    with pytest.raises(ConfigError, match="max_macs='half'"):
        cafe_tf.prune(residual_cnn(), data, max_macs="half", workdir=str(tmp_path))


def test_a_model_for_other_data_is_refused_with_the_reason(data, tmp_path):
    with pytest.raises(ConfigError, match="predicts 3 classes, but the data has 4"):
        cafe_tf.train(residual_cnn(classes=3), data, workdir=str(tmp_path))
    with pytest.raises(ConfigError, match="image_size"):
        cafe_tf.train(residual_cnn(size=20), data, workdir=str(tmp_path))


def test_int8_export_without_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs data="):
        cafe_tf.export_tflite(residual_cnn(), str(tmp_path / "m.tflite"), quantization="int8")


def test_train_precedence_keyword_then_overrides_then_config(data, tmp_path):
    """The given config sets 2 epochs and batch 48; overrides set 1 epoch: 1 epoch of batch 48 runs."""
    cfg = config_lib.load_config(api.default_config_path(api.SEARCH_CONFIG))
    cfg.train.epochs = 2
    cfg.data.batch_size = 48
    result = cafe_tf.train(residual_cnn(), data, workdir=str(tmp_path / "t"), config=cfg,
                           overrides={"train.epochs": 1, "data.cache": False, "train.eval_splits": ("validation",)})
    with open(tmp_path / "t" / "config.json") as f:
        recorded = json.load(f)
    assert recorded["train"]["epochs"] == 1 and recorded["data"]["batch_size"] == 48
    assert isinstance(result.model, keras.Model)
    assert set(result.metrics["final"]) == {"validation"}
    assert cfg.train.epochs == 2  # the caller's config is not changed


def test_search_prune_export_benchmark_on_a_users_model(data, tmp_path):
    """One process, one call after another: search at 50%, the plain model, prune (l1), int8, host timing."""
    model = residual_cnn()
    budget = independent_macs(model) // 2
    found = cafe_tf.search_widths(model, data, max_macs="50%", workdir=str(tmp_path / "search"),
                                  overrides=SHORT_SEARCH)
    plain = found.model()
    assert found.macs <= budget and independent_macs(plain) == found.macs
    assert set(found.widths) == {g["name"] for g in cafe_tf.profile(model).prunable_groups}
    assert 0.0 <= found.score <= 1.0
    with open(tmp_path / "search" / "widths.json") as f:
        recorded = json.load(f)["model_source"]
    assert recorded["fingerprint"] == source_lib.model_fingerprint(model)
    assert recorded["path"] == str(tmp_path / "search" / source_lib.IN_MEMORY_FILE)
    saved = found.save(str(tmp_path / "found_widths.json"))
    with open(saved) as f:
        assert json.load(f)["macs"] == found.macs

    pruned = cafe_tf.prune(model, data, max_macs="50%", method="l1", workdir=str(tmp_path / "l1"),
                           overrides=SHORT_PRUNE)
    assert independent_macs(pruned.model) == pruned.macs
    assert 0.98 * budget <= pruned.macs <= budget
    assert os.path.isfile(pruned.report) and pruned.summary["method"] == "l1"

    exported = cafe_tf.export_tflite(plain, str(tmp_path / "p.tflite"), quantization="int8", data=data)
    assert exported.size_bytes == os.path.getsize(exported.path) > 0
    assert exported.agreement is not None and 0.5 <= exported.agreement <= 1.0
    assert exported.max_abs_diff is not None and exported.max_abs_diff >= 0.0
    timed = cafe_tf.benchmark(exported.path, runs=5, warmup=1)
    assert 0 < timed.p50_ms <= timed.p90_ms
    assert isinstance(timed.cpu_features, dict)


@pytest.mark.slow
def test_search_resumes_and_dagger_prunes_a_users_model(data, tmp_path):
    """A second search_widths call with the same model in the same workdir scores nothing again; another
    model there is refused; Dagger lands in the budget by the independent count."""
    model = residual_cnn()
    budget = independent_macs(model) // 2
    first = cafe_tf.search_widths(model, data, max_macs="50%", workdir=str(tmp_path / "search"),
                                  overrides=SHORT_SEARCH)
    again = cafe_tf.search_widths(model, data, max_macs="50%", workdir=str(tmp_path / "search"),
                                  overrides=SHORT_SEARCH)
    assert again.widths == first.widths and again.record["scored_this_run"] == 0
    with pytest.raises(source_lib.ModelSourceError, match="another model"):
        cafe_tf.search_widths(residual_cnn(), data, max_macs="50%", workdir=str(tmp_path / "search"),
                              overrides=SHORT_SEARCH)
    pruned = cafe_tf.prune(model, data, max_macs="50%", method="dagger", workdir=str(tmp_path / "dagger"),
                           overrides=SHORT_PRUNE)
    assert independent_macs(pruned.model) == pruned.macs
    assert 0.98 * budget <= pruned.macs <= budget
    assert pruned.summary["method"] == "dagger"


def test_budget_strings(tmp_path):
    assert api.resolve_budget("50%", 1000, "max_macs") == 500
    assert api.resolve_budget(300, 1000, "max_macs") == 300
    assert api.resolve_budget(None, 1000, "max_macs") == 0
    for bad in ("150%", "0%", -1, True, "abc"):
        with pytest.raises(ConfigError, match="max_macs"):
            api.resolve_budget(bad, 1000, "max_macs")


def test_load_config_takes_a_path_or_a_configdict(tmp_path):
    path = api.default_config_path(api.PRUNE_CONFIG)
    cfg = config_lib.load_config(path)
    assert cfg.prune.method == "dagger" and cfg.is_locked
    copy = config_lib.load_config(cfg)
    copy.prune.method = "l1"
    assert cfg.prune.method == "dagger"
    with pytest.raises(ConfigError, match="does not exist"):
        config_lib.load_config(str(tmp_path / "none.py"))
    with pytest.raises(ConfigError, match="ConfigDict"):
        config_lib.load_config(42)
