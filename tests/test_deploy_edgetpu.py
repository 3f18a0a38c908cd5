"""deploy.edgetpu: readiness without the compiler, op versions, and edgetpu_compiler log parsing."""

import json
import os
import stat
import subprocess
import sys

import keras
import numpy as np
import pytest

from deploy import edgetpu, export, tflite_model

L = keras.layers
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")


def net(activation=None, name="net") -> keras.Model:
    x = inputs = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Add(name="add")([x, y])
    if activation is not None:
        x = activation(x)
    x = L.Conv2D(8, 1, name="c2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(4, name="logits")(x), name=name)


def calibration():
    return np.random.default_rng(0).standard_normal((32, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def int8_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("etpu") / "int8.tflite")
    export.export_tflite(net(), "int8", path, representative_data=calibration(), io_type="int8")
    return path


def test_int8_export_is_ready(int8_path):
    report = edgetpu.readiness(int8_path)
    assert report["ready"], report
    assert report["model_checks"]["ok"] and report["ops_on_cpu"] == 0
    assert report["ops_on_edgetpu"] == report["num_ops"] == len(tflite_model.summarize(int8_path).ops)
    ops = {o["op"]: o for o in report["ops"]}
    assert ops["CONV_2D"]["coral_name"] == "Conv2d" and ops["MEAN"]["supported"]
    versions = {(v["op"], v["version"]): v["status"] for v in report["op_versions"]}
    assert versions[("CONV_2D", 3)] == "ok"  # today's converter still emits versions compiler 16.0 knows


def test_float_model_flags_float_ops(tmp_path):
    path = str(tmp_path / "fp32.tflite")
    export.export_tflite(net(), "fp32", path)
    report = edgetpu.readiness(path)
    assert not report["ready"]
    problems = " ".join(report["model_checks"]["problems"])
    assert "is float32" in problems and "full-integer" in problems
    first = report["ops"][0]
    assert first["placement"] == "cpu" and any("float32 (must be int8/uint8)" in p for p in first["problems"])
    assert report["ops_on_edgetpu"] == 0


def test_dynamic_batch_flagged(tmp_path):
    path = str(tmp_path / "dyn.tflite")
    export.export_tflite(net(), "int8", path, representative_data=calibration(), io_type="int8", batch_size=None)
    report = edgetpu.readiness(path)
    assert not report["ready"]
    assert any("dynamic shape" in p and "--batch_size 1" in p for p in report["model_checks"]["problems"])


def test_unsupported_op_and_everything_after_it_fall_back(tmp_path):
    path = str(tmp_path / "leaky.tflite")
    export.export_tflite(net(L.LeakyReLU(0.1, name="leaky"), name="leaky"), "int8", path,
                         representative_data=calibration(), io_type="int8")
    report = edgetpu.readiness(path)
    assert not report["ready"]
    names = [o["op"] for o in report["ops"]]
    first_cpu = names.index("LEAKY_RELU")
    leaky = report["ops"][first_cpu]
    assert leaky["placement"] == "cpu" and not leaky["supported"]
    assert "not in the Edge TPU's supported operations" in leaky["reason"]
    # One Edge TPU subgraph: the supported ops after it run on the CPU too, and are listed with why.
    after = report["ops"][first_cpu + 1 :]
    assert after and all(o["placement"] == "cpu" and "first op the Edge TPU cannot map" in o["reason"] for o in after)
    assert all(o["placement"] == "edgetpu" for o in report["ops"][:first_cpu])
    assert [c["op"] for c in report["cpu_ops"]] == names[first_cpu:]


def test_op_version_too_new_for_compiler_16(int8_path, tmp_path):
    from ai_edge_litert import schema_py_generated as s
    import flatbuffers

    model = s.ModelT.InitFromPackedBuf(bytearray(open(int8_path, "rb").read()), 0)
    for code in model.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == s.BuiltinOperator.CONV_2D:
            code.version = 6  # what TF 2.9+ emits for some convolutions; compiler 16.0 refuses it
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "conv_v6.tflite"
    path.write_bytes(bytes(builder.Output()))
    report = edgetpu.readiness(str(path))
    assert not report["ready"]
    assert report["compiler_would_reject"] == ["CONV_2D v6 (compiler 16.0 knows up to v5)"]
    entry = next(v for v in report["op_versions"] if v["op"] == "CONV_2D")
    assert entry["status"] == "too_new" and "#631" in entry["evidence"]


def test_parse_compiler_log_all_mapped():
    report = edgetpu.parse_compiler_log(open(os.path.join(DATA, "edgetpu_compiler.log")).read())
    assert report["status"] == "compiled"
    assert report["compiler_version"] == "16.0.384591198"
    assert report["edgetpu_subgraphs"] == 1 and report["total_ops"] == 33
    assert report["ops_on_edgetpu"] == 33 and report["ops_on_cpu"] == 0
    assert report["on_chip_memory_used_bytes"] == round(332.25 * 1024)
    assert report["on_chip_memory_remaining_bytes"] == round(7.62 * 1024 * 1024)
    assert report["off_chip_memory_used_bytes"] == 0
    assert {o["op"]: o["count"] for o in report["operators"]} == {"ADD": 9, "QUANTIZE": 1, "MEAN": 1, "FULLY_CONNECTED": 1, "CONV_2D": 21}


def test_parse_compiler_log_partial_and_off_chip():
    report = edgetpu.parse_compiler_log(open(os.path.join(DATA, "edgetpu_compiler_partial.log")).read())
    assert report["status"] == "partially_mapped"
    assert (report["ops_on_edgetpu"], report["ops_on_cpu"]) == (64, 3)
    assert report["off_chip_memory_used_bytes"] == round(281.50 * 1024)
    cpu = {o["op"]: o["status"] for o in report["cpu_operators"]}
    assert cpu == {
        "QUANTIZE": "Operation is working on an unsupported data type",
        "SOFTMAX": "Operation is otherwise supported, but not mapped due to some unspecified limitation",
        "DEQUANTIZE": "Operation is working on an unsupported data type",
    }


def test_parse_compiler_log_op_version_failure():
    report = edgetpu.parse_compiler_log(open(os.path.join(DATA, "edgetpu_compiler_op_version.log")).read())
    assert report["status"] == "failed"
    assert report["op_version_errors"] == [{"op": "CONV_2D", "version": 6}]
    assert "Model could not be parsed" in report["errors"]


def test_no_compiler_says_so(monkeypatch, int8_path, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    result = edgetpu.run_compiler(int8_path, str(tmp_path / "out"))
    assert result["available"] is False and "edgetpu_compiler is not on PATH" in result["message"]


def test_compiler_on_path_is_run_and_parsed(monkeypatch, int8_path, tmp_path):
    fake = tmp_path / "bin" / "edgetpu_compiler"
    fake.parent.mkdir()
    recorded = os.path.join(DATA, "edgetpu_compiler.log")
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{tmp_path}/compiler_args"\n'
        f'cat "{recorded}"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(fake.parent) + os.pathsep + os.environ["PATH"])
    result = edgetpu.run_compiler(int8_path, str(tmp_path / "out"))
    assert result["available"] and result["returncode"] == 0
    assert result["report"]["status"] == "compiled" and result["report"]["ops_on_edgetpu"] == 33
    args = (tmp_path / "compiler_args").read_text().split()
    assert args[:3] == ["-s", "-o", str(tmp_path / "out")] and args[-1] == int8_path


def _program(args):
    return subprocess.run([sys.executable, "-m", "deploy.edgetpu", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_program_report_and_exit_codes(int8_path, tmp_path):
    out = tmp_path / "edgetpu.json"
    ok = _program(["--model", int8_path, "--out", str(out), "--nocompile"])
    assert ok.returncode == 0, ok.stderr
    assert "READY" in ok.stdout
    report = edgetpu.read_report(str(out))
    assert report["readiness"]["ready"] is True and report["compiler"]["available"] in (True, False)

    fp32 = str(tmp_path / "fp32.tflite")
    export.export_tflite(net(), "fp32", fp32)
    bad = _program(["--model", fp32, "--out", str(tmp_path / "e2.json"), "--nocompile"])
    assert bad.returncode == 1 and "not ready for the Edge TPU" in bad.stderr and "Traceback" not in bad.stderr
    assert json.loads((tmp_path / "e2.json").read_text())["readiness"]["ready"] is False

    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 64)
    g = _program(["--model", str(garbage), "--out", str(tmp_path / "e3.json")])
    assert g.returncode == 1 and "not a TFLite model" in g.stderr and not (tmp_path / "e3.json").exists()
    usage = _program(["--out", str(tmp_path / "e4.json")])
    assert usage.returncode == 2 and "--model is required" in usage.stderr


def prelu_zmean_net(channels: int, shared_axes) -> keras.Model:
    """Conv, PReLU, a Mean over the channel (z) axis: two rows of Coral's table with shape conditions."""
    x = inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(channels, 3, padding="same", name="conv")(x)
    x = L.PReLU(shared_axes=shared_axes, alpha_initializer=keras.initializers.Constant(0.2), name="prelu")(x)
    x = L.Lambda(lambda t: keras.ops.mean(t, axis=-1, keepdims=True), name="zmean")(x)
    x = L.Flatten(name="flat")(x)
    return keras.Model(inputs, L.Dense(3, name="logits")(x), name=f"prelu_zmean_{channels}")


@pytest.mark.parametrize("channels, shared_axes, ready", [(8, [1, 2], True), (6, None, False)])
def test_prelu_alpha_and_channel_mean_follow_corals_table(tmp_path, channels, shared_axes, ready):
    path = str(tmp_path / "m.tflite")
    cal = np.random.default_rng(0).standard_normal((16, 8, 8, 3)).astype(np.float32)
    export.export_tflite(prelu_zmean_net(channels, shared_axes), "int8", path, representative_data=cal, io_type="int8")
    report = edgetpu.readiness(path)
    ops = {o["op"]: o for o in report["ops"]}
    assert set(ops) >= {"PRELU", "MEAN"}
    assert report["ready"] is ready, report["cpu_ops"]
    if ready:
        assert ops["PRELU"]["placement"] == ops["MEAN"]["placement"] == "edgetpu"
    else:  # per-pixel alpha (8, 8, 6) and a z-reduction over 6 channels (not a multiple of 4)
        assert ops["PRELU"]["problems"] == [
            "alpha of shape [8, 8, 6] is not 1-dimensional (only its innermost dimension may be > 1: Keras "
            "PReLU(shared_axes=[1, 2]) on images)"]
        assert ops["MEAN"]["problems"] == ["reduces the z (channel) dimension of size 6, which must be a multiple of 4"]
        assert ops["PRELU"]["placement"] == "cpu"
    # Before runtime 13 PReLU did not exist and Mean reduced only x and y.
    old = edgetpu.readiness(path, min_runtime=12)
    old_ops = {o["op"]: o for o in old["ops"]}
    assert "PReLU needs Edge TPU runtime >= 13 (targeting 12)" in old_ops["PRELU"]["problems"]
    assert any("reduces over axes [3]" in p for p in old_ops["MEAN"]["problems"])


def test_supported_ops_table_cites_coral_and_keeps_runtime_rows():
    rules = edgetpu.SUPPORTED_OPS
    with open(edgetpu.__file__, encoding="utf-8") as f:  # the comment above the table names its source
        assert "# Coral's table, keyed by TFLite builtin name: https://coral.ai/docs/edgetpu/models-intro/" in f.read()
    since_13 = ("EXPAND_DIMS", "PACK", "PRELU", "QUANTIZE", "SUM", "TRANSPOSE_CONV")
    since_14 = ("UNIDIRECTIONAL_SEQUENCE_LSTM", "REDUCE_MAX", "REDUCE_MIN", "RSQRT", "SQUARED_DIFFERENCE", "TRANSPOSE")
    assert {op: rules[op].min_runtime for op in since_13 + since_14} == {**dict.fromkeys(since_13, 13),
                                                                       **dict.fromkeys(since_14, 14)}
    assert "multiple of 4" in rules["MEAN"].limitations and "shared_axes must be [1,2]" in rules["PRELU"].limitations
