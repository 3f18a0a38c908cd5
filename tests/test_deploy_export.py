"""deploy.export and deploy.tflite_model: conversion, parity, quantization, metadata, refusals."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from deploy import export, tflite_model
from deploy.errors import DeployError, UsageError

L = keras.layers
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_cnn(input_shape=(16, 16, 3), num_classes=5, name="small_cnn") -> keras.Model:
    """Conv/BN/ReLU, depthwise, residual add, pooling, GAP and dense: the layers slim models use."""
    x = inputs = keras.Input(input_shape, name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = L.BatchNormalization(name="dw_bn")(y)
    y = L.ReLU(name="dw_relu")(y)
    y = L.Conv2D(8, 1, use_bias=False, name="pw")(y)
    y = L.BatchNormalization(name="pw_bn")(y)
    x = L.Add(name="add")([x, y])
    x = L.ReLU(name="add_relu")(x)
    x = L.Conv2D(16, 3, strides=2, padding="same", name="down")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name=name)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # non-trivial BN statistics so folding is exercised
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    return model


def images(n=64, shape=(16, 16, 3), seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return small_cnn()


@pytest.fixture(scope="module")
def fp32_path(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fp32") / "m.tflite")
    export.export_tflite(model, "fp32", path, normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    return path


@pytest.fixture(scope="module")
def int8_path(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("int8") / "m_int8.tflite")
    export.export_tflite(model, "int8", path, representative_data=images(128), io_type="int8")
    return path


def test_fp32_logits_equal_keras_within_1e4(model, fp32_path):
    x = images(32, seed=5)
    got = tflite_model.TFLiteRunner(fp32_path)(x)["logits"]
    want = np.asarray(model(x, training=False))
    assert got.shape == want.shape == (32, 5)
    assert np.max(np.abs(got - want)) <= 1e-4


def test_fp32_signature_named_and_static_batch_one(fp32_path):
    summary = tflite_model.summarize(fp32_path)
    assert list(summary.signatures) == ["serving_default"]
    assert set(summary.signatures["serving_default"]["inputs"]) == {"image"}
    assert set(summary.signatures["serving_default"]["outputs"]) == {"logits"}
    image = summary.tensors[summary.signatures["serving_default"]["inputs"]["image"]]
    assert image.shape_signature == (1, 16, 16, 3)
    # Builtin ops only: no Flex (SELECT_TF_OPS) ops that phones and the Edge TPU lack.
    assert not any(op.custom for op in summary.ops)


def test_dynamic_batch_option(model, tmp_path):
    path = str(tmp_path / "dyn.tflite")
    export.export_tflite(model, "fp32", path, batch_size=None)
    summary = tflite_model.summarize(path)
    assert summary.tensors[summary.inputs[0]].shape_signature == (-1, 16, 16, 3)
    runner = tflite_model.TFLiteRunner(path)
    assert runner.static_batch is None
    x = images(4)
    assert np.max(np.abs(runner(x)["logits"] - np.asarray(model(x)))) <= 1e-4


def test_metadata_records_normalisation_and_io(fp32_path, int8_path):
    meta = tflite_model.read_metadata(fp32_path)
    assert meta["schema"] == "cafe_tf.tflite_metadata" and meta["schema_version"] == 1
    assert meta["quant"] == "fp32" and meta["signature"] == "serving_default"
    assert meta["normalization"]["mean"] == [0.5] * 3 and meta["normalization"]["std"] == [0.25] * 3
    assert meta["inputs"][0]["name"] == "image" and meta["inputs"][0]["shape"] == [1, 16, 16, 3]
    meta8 = tflite_model.read_metadata(int8_path)
    assert meta8["inputs"][0]["dtype"] == "int8"
    q = meta8["inputs"][0]["quantization"]
    assert q["scale"] > 0 and -128 <= q["zero_point"] <= 127
    assert "cafe_tf.metadata" in tflite_model.summarize(int8_path).metadata_names


def test_int8_full_integer_static_batch_and_agreement(model, int8_path):
    summary = tflite_model.summarize(int8_path)
    inp = summary.tensors[summary.inputs[0]]
    out = summary.tensors[summary.outputs[0]]
    assert (inp.dtype, out.dtype) == ("int8", "int8")
    assert inp.shape_signature[0] == 1 and not any(t.is_dynamic for t in summary.tensors)
    activations = {t.dtype for t in summary.tensors if not t.is_constant}
    assert activations <= {"int8", "int32"}
    x = images(200, seed=9)
    got = tflite_model.TFLiteRunner(int8_path)(x)["logits"]
    want = np.asarray(model(x, training=False))
    agreement = np.mean(got.argmax(1) == want.argmax(1))
    assert agreement >= 0.9, agreement  # random weights, tiny margins: close logits is the real check
    assert np.max(np.abs(got - want)) < 0.1 * np.max(np.abs(want)) + 0.05


def test_uint8_io_and_float_io(model, tmp_path):
    u8 = str(tmp_path / "u8.tflite")
    export.export_tflite(model, "int8", u8, representative_data=images(32), io_type="uint8")
    s = tflite_model.summarize(u8)
    assert s.tensors[s.inputs[0]].dtype == "uint8" and s.tensors[s.outputs[0]].dtype == "uint8"
    f32 = str(tmp_path / "f.tflite")
    export.export_tflite(model, "int8", f32, representative_data=images(32), io_type="float32")
    s = tflite_model.summarize(f32)
    assert s.tensors[s.inputs[0]].dtype == "float32"
    assert "QUANTIZE" in {op.op for op in s.ops}


def two_output_model() -> keras.Model:
    """A detector-like head: wide-range "deltas" (x 8) and sigmoid "scores" from one trunk."""
    x = inputs = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="trunk")(x)
    x = L.Reshape((64, 8), name="per_anchor")(x)
    deltas = L.Dense(4, name="deltas_raw")(x)
    deltas = L.Rescaling(8.0, name="deltas")(deltas)
    scores = L.Dense(3, activation="sigmoid", name="scores")(x)
    return keras.Model(inputs, [deltas, scores], name="two_heads")


def test_several_outputs_keep_their_names_scales_and_kinds(tmp_path):
    keras.utils.set_random_seed(0)
    model = two_output_model()
    path = str(tmp_path / "two.tflite")
    result = export.export_tflite(model, "int8", path, representative_data=images(64), io_type="int8",
                                  output_kinds={"deltas": "box_deltas", "scores": "class_scores"})
    runner = tflite_model.TFLiteRunner(path)
    assert set(runner.output_details) == {"deltas", "scores"}
    scales = {n: d["quantization_parameters"]["scales"][0] for n, d in runner.output_details.items()}
    assert scales["scores"] <= 1.0 / 255 + 1e-6 < scales["deltas"]  # one scale each: scores keep a 1/255 step
    kinds = {o["name"]: o["kind"] for o in result.metadata["outputs"]}
    assert kinds == {"deltas": "box_deltas", "scores": "class_scores"}
    x = images(16, seed=3)
    got = runner(x)
    want_deltas, want_scores = (np.asarray(v) for v in model(x, training=False))
    assert np.max(np.abs(got["scores"] - want_scores)) < 0.03
    assert np.max(np.abs(got["deltas"] - want_deltas)) < 0.05 * np.max(np.abs(want_deltas)) + 0.05


def test_several_outputs_from_one_layer_or_qat_refused(tmp_path):
    inputs = keras.Input((16, 16, 3), name="image")
    shared = L.Conv2D(3, 3, padding="same", name="conv")
    x = shared(inputs)
    model = keras.Model(inputs, [x, shared(x)], name="same_layer")
    with pytest.raises(DeployError, match=r"come from layers \['conv', 'conv'\].*distinct output layer"):
        export.export_tflite(model, "fp32", str(tmp_path / "m.tflite"))
    with pytest.raises(UsageError, match=r"quant 'qat' trains a classifier.*has 2 outputs: use --quant int8"):
        export.export_tflite(two_output_model(), "qat", str(tmp_path / "q.tflite"), representative_data=images(8))
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("quant", ["fp16", "dynamic"])
def test_fp16_and_dynamic_load_and_agree(model, tmp_path, quant):
    path = str(tmp_path / f"{quant}.tflite")
    result = export.export_tflite(model, quant, path)
    assert result.quant == quant and os.path.getsize(path) == result.size_bytes
    x = images(16, seed=3)
    got = tflite_model.TFLiteRunner(path)(x)["logits"]
    want = np.asarray(model(x))
    assert np.max(np.abs(got - want)) < 1e-2
    if quant == "fp16":
        assert "float16" in {t.dtype for t in tflite_model.summarize(path).tensors if t.is_constant}


def test_representative_iterable_is_resized_and_channel_converted(tmp_path):
    model = small_cnn(input_shape=(20, 20, 3), name="rgb20")
    grey_28 = np.random.default_rng(0).standard_normal((40, 28, 28, 1)).astype(np.float32)
    batches = [(grey_28[i : i + 8], np.zeros(8, int)) for i in range(0, 40, 8)]  # (images, labels) batches
    path = str(tmp_path / "r.tflite")
    result = export.export_tflite(model, "int8", path, representative_data=iter(batches), io_type="int8", num_calibration=24)
    assert result.calibration_images == 24
    assert tflite_model.TFLiteRunner(path).input_shape == (1, 20, 20, 3)


def test_zero_filter_refused_naming_layer_and_channel_no_file_left(tmp_path):
    model = small_cnn(name="pruned")
    kernel = model.get_layer("down").get_weights()
    kernel[0][..., 3] = 0.0  # an all-zero filter left by pruning
    model.get_layer("down").set_weights(kernel)
    gamma = model.get_layer("pw_bn").get_weights()
    gamma[0][5] = 0.0
    model.get_layer("pw_bn").set_weights(gamma)
    path = tmp_path / "pruned_int8.tflite"
    with pytest.raises(DeployError) as e:
        export.export_tflite(model, "int8", str(path), representative_data=images(8))
    message = str(e.value)
    assert "'down'" in message and "[3]" in message and "'pw_bn'" in message and "[5]" in message
    assert "fp32" in message  # says what would work
    assert not path.exists() and os.listdir(tmp_path) == []
    # fp32 has no scales: the same model exports.
    export.export_tflite(model, "fp32", str(tmp_path / "pruned_fp32.tflite"))
    assert (tmp_path / "pruned_fp32.tflite").exists()


def test_failed_check_leaves_no_file(model, tmp_path, monkeypatch):
    def refuse(data, what="model"):
        raise DeployError(f"LiteRT cannot load {what!r}: simulated")

    monkeypatch.setattr(tflite_model, "check_loads", refuse)
    path = tmp_path / "m.tflite"
    path.write_bytes(b"previous good model")
    with pytest.raises(DeployError, match="simulated"):
        export.export_tflite(model, "fp32", str(path))
    assert path.read_bytes() == b"previous good model"  # neither replaced nor half-written
    assert sorted(os.listdir(tmp_path)) == ["m.tflite"]


def test_bad_arguments_name_valid_values(model, tmp_path):
    with pytest.raises(UsageError, match=r"quant must be one of \['fp32', 'fp16', 'dynamic', 'int8', 'qat'\], got 'int4'"):
        export.export_tflite(model, "int4", str(tmp_path / "m.tflite"))
    with pytest.raises(UsageError, match="io_type 'int8' needs quant 'int8' or 'qat'"):
        export.export_tflite(model, "fp32", str(tmp_path / "m.tflite"), io_type="int8")
    with pytest.raises(UsageError, match="needs representative data"):
        export.export_tflite(model, "int8", str(tmp_path / "m.tflite"))
    with pytest.raises(UsageError, match="must end with .tflite"):
        export.export_tflite(model, "fp32", str(tmp_path / "m.lite"))
    flat = keras.Sequential([keras.Input((10,)), L.Dense(3)])
    with pytest.raises(DeployError, match=r"static shape \(batch, height, width, channels\)"):
        export.export_tflite(flat, "fp32", str(tmp_path / "m.tflite"))
    assert not any(p.suffix == ".tflite" for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    "data, pattern",
    [
        (b"", "too short"),
        (b"garbage-not-a-model" * 4, "file identifier"),
    ],
)
def test_garbage_tflite_clear_error(tmp_path, data, pattern):
    path = tmp_path / "bad.tflite"
    path.write_bytes(data)
    for call in (tflite_model.summarize, tflite_model.load_interpreter, tflite_model.read_metadata):
        with pytest.raises(DeployError, match=pattern) as e:
            call(str(path))
        assert "bad.tflite" in str(e.value)


def test_truncated_tflite_clear_error(fp32_path, tmp_path):
    data = open(fp32_path, "rb").read()
    path = tmp_path / "truncated.tflite"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DeployError, match="truncated") as e:
        tflite_model.load_interpreter(str(path))
    assert "truncated.tflite" in str(e.value)
    with pytest.raises(DeployError, match="truncated or corrupt"):
        tflite_model.check_loads(path.read_bytes(), str(path))
    with pytest.raises(DeployError, match="does not exist"):
        tflite_model.summarize(str(tmp_path / "missing.tflite"))


def _program(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "deploy.export", *args], cwd=REPO, capture_output=True, text=True, timeout=120, **kwargs)


def test_program_usage_errors_exit_2_with_one_line(tmp_path):
    missing = _program(["--model", str(tmp_path / "nope.keras"), "--quant", "fp32", "--out", str(tmp_path / "o.tflite")])
    assert missing.returncode == 2
    assert "--model=" in missing.stderr and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    bad_quant = _program(["--model", "x.keras", "--quant", "int4", "--out", "o.tflite"])
    assert bad_quant.returncode == 2 and "int4" in bad_quant.stderr and "fp32|fp16|dynamic|int8|qat" in bad_quant.stderr
    help_ = _program(["--help"])
    assert help_.returncode == 0 and "--quant" in help_.stdout and "static batch" in help_.stdout


def test_program_runtime_error_exit_1(tmp_path):
    bogus = tmp_path / "bogus.keras"
    bogus.write_bytes(b"not a zip")
    proc = _program(["--model", str(bogus), "--quant", "fp32", "--out", str(tmp_path / "o.tflite"), "--dataset", ""])
    assert proc.returncode == 1, proc.stderr
    assert "cannot load the Keras model" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.tflite").exists()


# --------------------------------------------------------------------------------------------
# --widths + --checkpoint: a searched network exported from its training checkpoint


@pytest.fixture(scope="module")
def searched_run(tmp_path_factory):
    """A cnn_small subnet (28x28x1, half of every group) and a checkpoint written as cafe_tf.training.standard.fit() writes it."""
    import tensorflow as tf

    from cafe_tf import models
    from cafe_tf.graph import ChannelGraph
    from cafe_tf.space import write_widths
    from cafe_tf.training.subnet import build_subnet

    root = tmp_path_factory.mktemp("searched")
    full = models.build("cnn_small", input_shape=(28, 28, 1), num_classes=10)
    graph = ChannelGraph.from_model(full)
    info = {"name": "cnn_small", "input_shape": [28, 28, 1], "num_classes": 10, "width_mult": 1.0}
    write_widths(root / "widths.json", graph, {g.id: np.arange(0, g.size, 2) for g in graph.prunable_groups}, info)
    write_widths(root / "narrow.json", graph, {g.id: np.arange(0, g.size, 4) for g in graph.prunable_groups}, info)
    keras.utils.set_random_seed(3)
    model = build_subnet(str(root / "widths.json"))
    rng = np.random.default_rng(3)  # "trained" weights, unlike a fresh build, so a restore that did nothing fails
    model.set_weights([np.abs(w) + 0.5 if "variance" in v.path else w + rng.normal(0, 0.05, w.shape).astype(w.dtype)
                       for v, w in zip(model.weights, model.get_weights())])
    # What cafe_tf.training.standard.fit checkpoints: model, optimizer (with slots), step, run shape, RNG states.
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=tf.Variable(12, dtype=tf.int64),
                                     run_shape=tf.Variable([4, 64], dtype=tf.int64),
                                     rng=[v.value for v in model.variables if v.name == "seed_generator_state"])
    manager = tf.train.CheckpointManager(checkpoint, str(root / "retrain" / "checkpoints"), max_to_keep=2)
    manager.save(checkpoint_number=8)
    prefix = manager.save(checkpoint_number=12)
    return {"root": root, "model": model, "prefix": prefix, "workdir": str(root / "retrain")}


def test_widths_checkpoint_export_equals_keras_within_1e4(searched_run, tmp_path):
    run = searched_run
    restored = export.load_widths_checkpoint(run["root"] / "widths.json", run["workdir"])
    for a, b in zip(restored.get_weights(), run["model"].get_weights()):
        np.testing.assert_array_equal(a, b)
    path = tmp_path / "searched.tflite"
    export.export_tflite(restored, "fp32", path, source="widths.json + ckpt-12")
    x = images(16, shape=(28, 28, 1), seed=2)
    got = tflite_model.TFLiteRunner(str(path))(x)["logits"]
    want = np.asarray(run["model"](x, training=False))
    assert got.shape == want.shape == (16, 10)
    assert np.max(np.abs(got - want)) <= 1e-4


def test_checkpoint_path_forms_resolve_to_the_latest_or_named_prefix(searched_run, tmp_path):
    prefix, workdir = searched_run["prefix"], searched_run["workdir"]
    assert prefix.endswith("ckpt-12")
    assert export.resolve_checkpoint(workdir) == prefix
    assert export.resolve_checkpoint(os.path.join(workdir, "checkpoints")) == prefix
    older = os.path.join(workdir, "checkpoints", "ckpt-8")
    assert export.resolve_checkpoint(older) == older
    assert export.resolve_checkpoint(older + ".index") == older
    assert export.resolve_checkpoint(older + ".data-00000-of-00001") == older
    with pytest.raises(DeployError, match=f"checkpoint '{tmp_path}/nope' does not exist"):
        export.resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(DeployError, match=f"no checkpoint in '{tmp_path}'"):
        export.resolve_checkpoint(tmp_path)


def test_checkpoint_of_other_widths_names_variable_and_both_shapes(searched_run):
    narrow = searched_run["root"] / "narrow.json"
    with pytest.raises(DeployError) as info:
        export.load_widths_checkpoint(narrow, searched_run["workdir"])
    message = str(info.value)
    assert "does not match" in message and str(narrow) in message and "ckpt-12" in message
    import re

    from cafe_tf.training.subnet import build_subnet

    found = re.search(r"variable '(\S+)' has shape (\(.*?\)) in the model built from the widths but (\(.*?\)) in the "
                      r"checkpoint", message)
    assert found, message
    name, built, saved = found.groups()
    shapes = {v.path: tuple(v.shape) for v in build_subnet(str(narrow)).weights}
    wide = {v.path: tuple(v.shape) for v in searched_run["model"].weights}
    assert built == str(shapes[name]) and saved == str(wide[name]) and built != saved


def test_program_exports_from_widths_and_checkpoint(searched_run, tmp_path):
    run = searched_run
    out = tmp_path / "cli.tflite"
    proc = _program(["--widths", str(run["root"] / "widths.json"), "--checkpoint", run["workdir"], "--quant", "fp32",
                     "--out", str(out), "--dataset", ""])
    assert proc.returncode == 0, proc.stderr
    assert "ckpt-12" in proc.stdout
    x = images(4, shape=(28, 28, 1), seed=9)
    got = tflite_model.TFLiteRunner(str(out))(x)["logits"]
    assert np.max(np.abs(got - np.asarray(run["model"](x, training=False)))) <= 1e-4
    assert tflite_model.read_metadata(str(out))["source_model"] == "widths.json + ckpt-12"


def test_program_widths_checkpoint_usage_errors(searched_run, tmp_path):
    widths = str(searched_run["root"] / "widths.json")
    both = _program(["--model", "m.keras", "--widths", widths, "--checkpoint", searched_run["workdir"],
                     "--quant", "fp32", "--out", str(tmp_path / "o.tflite")])
    assert both.returncode == 2 and "--model and --widths both name the model" in both.stderr
    assert "Traceback" not in both.stderr
    alone = _program(["--widths", widths, "--quant", "fp32", "--out", str(tmp_path / "o.tflite")])
    assert alone.returncode == 2 and "--widths and --checkpoint go together" in alone.stderr
    missing = _program(["--widths", widths, "--checkpoint", str(tmp_path / "gone"), "--quant", "fp32",
                        "--out", str(tmp_path / "o.tflite")])
    assert missing.returncode == 2 and f"--checkpoint='{tmp_path}/gone' does not exist" in missing.stderr
    assert not (tmp_path / "o.tflite").exists()


def test_checkpoint_without_the_model_is_refused(searched_run, tmp_path):
    import tensorflow as tf

    tf.train.Checkpoint(step=tf.Variable(1)).write(str(tmp_path / "ckpt-1"))
    with pytest.raises(DeployError, match=r"does not hold the weights of the model of .*widths.json' \(\d+ of the model's"):
        export.load_widths_checkpoint(searched_run["root"] / "widths.json", tmp_path / "ckpt-1")


def test_program_mismatched_checkpoint_exit_1_one_line(searched_run, tmp_path):
    proc = _program(["--widths", str(searched_run["root"] / "narrow.json"), "--checkpoint", searched_run["workdir"],
                     "--quant", "fp32", "--out", str(tmp_path / "o.tflite"), "--dataset", ""])
    assert proc.returncode == 1
    assert "export: error: checkpoint" in proc.stderr and "in the model built from the widths but" in proc.stderr
    assert "Traceback" not in proc.stderr and "unrestored" not in proc.stderr
    assert not (tmp_path / "o.tflite").exists()
