"""deploy.benchmark: host timing, the benchmark.json schema, Android over (stand-in and real) adb, Coral."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys

import keras
import numpy as np
import pytest

from cafe_tf.io import ArtifactError, write_json
from deploy import export
from deploy.benchmark import android, coral, host, schema
from deploy.errors import DeployError

L = keras.layers
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")
RECORDING = os.path.join(DATA, "benchmark_model_android.txt")


def net() -> keras.Model:
    x = inputs = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="c1")(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(4, name="logits")(x), name="bench_net")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("bench") / "net_int8.tflite")
    calibration = np.random.default_rng(0).standard_normal((16, 16, 16, 3)).astype(np.float32)
    export.export_tflite(net(), "int8", path, representative_data=calibration, io_type="int8")
    return path


@pytest.fixture
def binary(tmp_path):
    path = tmp_path / "android_aarch64_benchmark_model"
    path.write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 57)  # an ELF header is all the host can check
    return str(path)


# --------------------------------------------------------------------------------------------
# host and schema


def test_host_benchmark_record_is_valid(model_path, tmp_path):
    record = host.benchmark_host(model_path, threads=2, runs=20, warmup=3)
    assert record["target"] == "host" and record["delegate"] == "xnnpack" and record["threads"] == 2
    assert (record["runs"], record["warmup"]) == (20, 3)
    lat = record["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["mean"] > 0 and lat["std"] >= 0
    assert record["peak_memory_mb"] > 0 and "process" in record["memory_scope"]
    assert record["model"]["size_bytes"] == os.path.getsize(model_path) and len(record["model"]["sha256"]) == 64
    assert record["environment"]["cpu_count"] >= 1
    out = tmp_path / "bench.json"
    schema.write_benchmark(str(out), record)
    back = schema.read_benchmark(str(out))
    assert back["schema"] == "benchmark" and back["schema_version"] == 1 and back["latency_ms"] == lat
    without = host.benchmark_host(model_path, threads=1, runs=5, warmup=1, use_xnnpack=False)
    assert without["delegate"] == "none"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("latency_ms"), "lacks required keys \\[.latency_ms.\\]"),
        (lambda r: r.update(target="phone"), "target must be one of"),
        (lambda r: r.update(threads=0), "threads must be an integer >= 1"),
        (lambda r: r["latency_ms"].update(p50=5.0, p90=1.0), "percentiles must satisfy"),
        (lambda r: r["latency_ms"].update(mean=None), "latency_ms.mean"),
        (lambda r: r["latency_ms"].pop("p99"), "lacks 'p99'"),
        (lambda r: r["model"].update(sha256="xyz"), "sha256"),
        (lambda r: r.update(delegate="tpu"), "delegate must be one of"),
    ],
)
def test_benchmark_json_validated_on_read(model_path, tmp_path, change, message):
    record = host.benchmark_host(model_path, runs=3, warmup=0)
    payload = {"schema": "benchmark", "schema_version": 1, **json.loads(json.dumps(record))}
    change(payload)
    path = tmp_path / "bench.json"
    write_json(str(path), payload)
    with pytest.raises(ArtifactError, match=message):
        schema.read_benchmark(str(path))


def test_benchmark_json_wrong_schema_or_version(tmp_path):
    path = tmp_path / "b.json"
    write_json(str(path), {"schema": "verify", "schema_version": 1})
    with pytest.raises(ArtifactError, match="expected 'benchmark'"):
        schema.read_benchmark(str(path))
    write_json(str(path), {"schema": "benchmark", "schema_version": 7})
    with pytest.raises(ArtifactError, match="reads version 1 only"):
        schema.read_benchmark(str(path))


def _program(args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "deploy.benchmark", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def test_program_host_and_exit_codes(model_path, tmp_path):
    out = tmp_path / "bench.json"
    ok = _program(["--target", "host", "--model", model_path, "--out", str(out), "--runs", "10", "--warmup", "2", "--threads", "1"])
    assert ok.returncode == 0, ok.stderr
    assert "mean" in ok.stdout and schema.read_benchmark(str(out))["runs"] == 10

    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(open(model_path, "rb").read()[:300])
    bad = _program(["--target", "host", "--model", str(truncated), "--out", str(tmp_path / "b.json")])
    assert bad.returncode == 1 and "truncated" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b.json").exists()

    garbage = tmp_path / "garbage.tflite"
    garbage.write_text("this is not a flatbuffer at all")
    g = _program(["--target", "host", "--model", str(garbage), "--out", str(tmp_path / "b.json")])
    assert g.returncode == 1 and "not a TFLite model" in g.stderr and "expected b'TFL3'" in g.stderr

    assert _program(["--target", "phone", "--model", model_path, "--out", "x.json"]).returncode == 2
    usage = _program(["--target", "host", "--model", str(tmp_path / "missing.tflite"), "--out", "x.json"])
    assert usage.returncode == 2 and "does not exist" in usage.stderr
    mixed = _program(["--target", "host", "--model", model_path, "--out", "x.json", "--serial", "abc"])
    assert mixed.returncode == 2 and "only apply to --target android" in mixed.stderr
    no_binary = _program(["--target", "android", "--model", model_path, "--out", "x.json"])
    assert no_binary.returncode == 2 and "--benchmark_binary is required" in no_binary.stderr


# --------------------------------------------------------------------------------------------
# android: the recorded report


def test_parse_recorded_benchmark_model_output():
    parsed = android.parse_benchmark_output(open(RECORDING).read())
    assert parsed["init_ms"] == pytest.approx(11.482)
    assert parsed["first_inference_ms"] == pytest.approx(2.274)
    assert parsed["warmup_avg_ms"] == pytest.approx(1.15942)
    assert parsed["inference_avg_ms"] == pytest.approx(1.14261)
    assert (parsed["runs"], parsed["warmup_runs"]) == (912, 431)
    lat = parsed["latency_ms"]
    assert lat["mean"] == pytest.approx(1.14261) and lat["std"] == pytest.approx(0.071)
    assert (lat["min"], lat["p50"], lat["max"]) == (pytest.approx(1.041), pytest.approx(1.121), pytest.approx(2.013))
    assert lat["p90"] is None and lat["p99"] is None  # benchmark_model does not report them
    assert parsed["peak_memory_mb"] == pytest.approx(10.2578)
    assert parsed["memory_footprint_delta_mb"] == {"init": pytest.approx(3.41797), "overall": pytest.approx(4.79297)}
    assert any("Explicitly applied XNNPACK delegate" in line for line in parsed["delegate_log"])
    profile = parsed["op_profile"]
    assert len(profile["per_op"]) == 32
    assert profile["per_op"][0]["node_type"] == "Convolution (NHWC, QC8) IGEMM"
    assert sum(o["percent"] for o in profile["per_op"]) == pytest.approx(100.0, abs=0.1)
    by_type = {t["node_type"]: t for t in profile["by_type"]}
    assert by_type["Add (ND, QS8)"]["count"] == 9 and by_type["Convolution (NHWC, QC8) IGEMM"]["count"] == 19


def test_parse_older_report_without_percentiles():
    text = (
        "count=50 first=249042 curr=250889 min=247067 max=254474 avg=249684 std=1442\n"
        "Inference timings in us: Init: 16242, First inference: 360262, Warmup (avg): 304586, Inference (avg): 249684\n"
        "Peak memory footprint (MB): init=4.92969 overall=138.809\n"
    )
    parsed = android.parse_benchmark_output(text)
    assert parsed["latency_ms"]["mean"] == pytest.approx(249.684) and parsed["latency_ms"]["p50"] is None
    assert parsed["peak_memory_mb"] == pytest.approx(138.809) and parsed["op_profile"] is None
    logcat = "I tflite  : Inference timings in us: Init: 92318, First inference: 187533, Warmup (avg): 2.11669e+05, Inference (avg): 1.45528e+05\n"
    assert android.parse_benchmark_output(logcat)["inference_avg_ms"] == pytest.approx(145.528)


def test_failed_run_quotes_the_tool():
    with pytest.raises(DeployError) as e:
        android.parse_benchmark_output(open(os.path.join(DATA, "benchmark_model_android_gpu_failed.txt")).read())
    assert "no 'Inference timings' line" in str(e.value) and "Failed to apply GPU delegate" in str(e.value)


# --------------------------------------------------------------------------------------------
# android: a scripted stand-in for adb

FAKE_ADB = r"""#!/bin/sh
echo "$*" >> "$FAKE_ADB_LOG"
if [ "$1" = "-s" ]; then shift 2; fi
case "$1" in
  devices)
    printf 'List of devices attached\n'
    printf "$FAKE_ADB_DEVICES"
    ;;
  push)
    echo "$2: 1 file pushed, 0 skipped. 41.2 MB/s (4096 bytes in 0.001s)"
    ;;
  shell)
    case "$2" in
      getprop)
        printf '[ro.product.manufacturer]: [Google]\n[ro.product.model]: [Pixel 7]\n[ro.build.version.release]: [14]\n[ro.build.version.sdk]: [34]\n[ro.product.cpu.abi]: [arm64-v8a]\n[ro.soc.model]: [GS201]\n'
        ;;
      *benchmark_model*)
        cat "$FAKE_ADB_OUTPUT"
        ;;
    esac
    ;;
esac
exit 0
"""


@pytest.fixture
def fake_adb(tmp_path):
    path = tmp_path / "bin" / "adb"
    path.parent.mkdir()
    path.write_text(FAKE_ADB)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "adb_commands.log"
    env = {
        **os.environ,
        "PATH": str(path.parent) + os.pathsep + os.environ["PATH"],
        "FAKE_ADB_LOG": str(log),
        "FAKE_ADB_OUTPUT": RECORDING,
        "FAKE_ADB_DEVICES": "29121FDH200ABC\\tdevice usb:1-1 product:panther model:Pixel_7 device:panther transport_id:3\\n",
    }
    return {"path": str(path), "log": log, "env": env}


def test_android_through_stand_in_adb(fake_adb, model_path, binary, tmp_path):
    record = android.benchmark_android(
        model_path, binary, threads=4, runs=50, warmup=5, taskset="f0", env=fake_adb["env"], adb=fake_adb["path"]
    )
    commands = fake_adb["log"].read_text().splitlines()
    assert commands[0] == "devices -l"
    assert commands[1] == "-s 29121FDH200ABC shell getprop"
    assert commands[2] == f"-s 29121FDH200ABC push {binary} /data/local/tmp/benchmark_model"
    assert commands[3] == "-s 29121FDH200ABC shell chmod 755 /data/local/tmp/benchmark_model"
    assert commands[4] == f"-s 29121FDH200ABC push {model_path} /data/local/tmp/net_int8.tflite"
    run = commands[5]
    assert run.startswith("-s 29121FDH200ABC shell taskset f0 /data/local/tmp/benchmark_model --graph=/data/local/tmp/net_int8.tflite")
    for flag in ("--num_threads=4", "--num_runs=50", "--warmup_runs=5", "--use_xnnpack=true", "--use_gpu=false",
                 "--use_nnapi=false", "--enable_op_profiling=true", "--report_peak_memory_footprint=true"):
        assert flag in run.split()
    assert commands[6] == "-s 29121FDH200ABC shell rm -f /data/local/tmp/net_int8.tflite"
    assert record["target"] == "android" and record["delegate"] == "xnnpack" and record["threads"] == 4
    assert (record["runs"], record["warmup"]) == (912, 431)
    assert record["latency_ms"]["mean"] == pytest.approx(1.14261) and record["peak_memory_mb"] == pytest.approx(10.2578)
    env = record["environment"]
    assert env["model"] == "Pixel 7" and env["soc_model"] == "GS201" and env["adb_serial"] == "29121FDH200ABC"
    assert env["taskset"] == "f0" and env["adb_transport_id"] == "3"
    assert len(record["op_profile"]["per_op"]) == 32
    path = tmp_path / "android.json"
    schema.write_benchmark(str(path), record)
    assert schema.read_benchmark(str(path))["latency_ms"]["p90"] is None


def test_android_program_with_stand_in_adb(fake_adb, model_path, binary, tmp_path):
    out = tmp_path / "bench.json"
    proc = _program(
        ["--target", "android", "--model", model_path, "--out", str(out), "--benchmark_binary", binary,
         "--serial", "29121FDH200ABC", "--threads", "2", "--use_gpu", "--nouse_xnnpack", "--noenable_op_profiling"],
        env=fake_adb["env"],
    )
    assert proc.returncode == 0, proc.stderr
    record = schema.read_benchmark(str(out))
    assert record["delegate"] == "gpu" and record["threads"] == 2
    run = [c for c in fake_adb["log"].read_text().splitlines() if "benchmark_model --graph" in c][0].split()
    assert "--use_gpu=true" in run and "--use_xnnpack=false" in run and "--enable_op_profiling=false" in run
    assert "taskset" not in run


@pytest.mark.parametrize(
    "devices, serial, message",
    [
        ("", None, "no Android device attached"),
        ("A1\\tunauthorized usb:1 transport_id:1\\n", None, "unauthorized: accept the USB debugging prompt"),
        ("A1\\toffline transport_id:1\\n", None, "is 'offline'"),
        ("A1\\tdevice transport_id:1\\nB2\\tdevice transport_id:2\\n", None, "2 devices attached ['A1', 'B2']; choose one with --serial"),
        ("A1\\tdevice transport_id:1\\n", "Z9", "device 'Z9' is not attached; attached: ['A1']"),
    ],
)
def test_android_device_errors(fake_adb, model_path, binary, devices, serial, message):
    env = {**fake_adb["env"], "FAKE_ADB_DEVICES": devices}
    with pytest.raises(DeployError) as e:
        android.benchmark_android(model_path, binary, serial=serial, env=env, adb=fake_adb["path"])
    assert message in str(e.value)
    assert "push" not in fake_adb["log"].read_text()  # nothing pushed to a device that is not there


def test_android_no_adb_and_bad_binary(model_path, binary, tmp_path, fake_adb):
    empty = {**os.environ, "PATH": str(tmp_path)}  # no adb anywhere
    with pytest.raises(DeployError, match="'adb' not found on PATH.*apt-get install adb"):
        android.benchmark_android(model_path, binary, env=empty)
    with pytest.raises(DeployError, match="is not an executable file"):
        android.benchmark_android(model_path, binary, adb=str(tmp_path / "no" / "adb"))
    with pytest.raises(DeployError, match="--benchmark_binary is required"):
        android.benchmark_android(model_path, None, adb=fake_adb["path"], env=fake_adb["env"])
    with pytest.raises(DeployError, match="does not exist"):
        android.benchmark_android(model_path, str(tmp_path / "nope"), adb=fake_adb["path"], env=fake_adb["env"])
    script = tmp_path / "benchmark_model.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(DeployError, match="not an ELF executable"):
        android.benchmark_android(model_path, str(script), adb=fake_adb["path"], env=fake_adb["env"])
    with pytest.raises(DeployError, match="hexadecimal CPU mask"):
        android.benchmark_android(model_path, binary, taskset="big", adb=fake_adb["path"], env=fake_adb["env"])


def test_android_failed_run_is_reported(fake_adb, model_path, binary):
    env = {**fake_adb["env"], "FAKE_ADB_OUTPUT": os.path.join(DATA, "benchmark_model_android_gpu_failed.txt")}
    with pytest.raises(DeployError, match="Failed to apply GPU delegate"):
        android.benchmark_android(model_path, binary, use_gpu=True, env=env, adb=fake_adb["path"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("adb") is None, reason="Debian's adb is not installed")
def test_real_adb_without_device_gives_clear_error(model_path, binary, tmp_path):
    # Our own adb server on a free port, so no other adb user is disturbed, and killed afterwards.
    env = {**os.environ, "ANDROID_ADB_SERVER_PORT": str(_free_port())}
    try:
        proc = _program(
            ["--target", "android", "--model", model_path, "--out", str(tmp_path / "b.json"),
             "--benchmark_binary", binary, "--adb_timeout", "30"],
            env=env, timeout=90,
        )
        assert proc.returncode == 1, proc.stderr
        assert "no Android device attached" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "b.json").exists()
    finally:
        subprocess.run(["adb", "kill-server"], env=env, capture_output=True, timeout=30)


# --------------------------------------------------------------------------------------------
# coral


def test_coral_without_runtime_gives_clear_error(model_path, tmp_path):
    with pytest.raises(DeployError) as e:
        coral.benchmark_coral(model_path, library=str(tmp_path / "libedgetpu.so.1"))
    assert "Edge TPU runtime library" in str(e.value) and "libedgetpu1-std" in str(e.value)
    if shutil.which("ldconfig") and "libedgetpu" not in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout:
        proc = _program(["--target", "coral", "--model", model_path, "--out", str(tmp_path / "c.json")])
        assert proc.returncode == 1 and "libedgetpu.so.1" in proc.stderr and "Traceback" not in proc.stderr
        assert "Exception ignored" not in proc.stderr


@pytest.mark.slow
def test_host_matches_litert_benchmark(tmp_path):
    """Cross-check: our host median against the ai-edge-litert wheel's own litert-benchmark."""
    tool = os.path.join(os.path.dirname(sys.executable), "litert-benchmark")
    if not os.path.exists(tool):
        pytest.skip("litert-benchmark is not installed")
    x = inputs = keras.Input((64, 64, 3))
    for i in range(4):
        x = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    model = keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(x)))
    path = str(tmp_path / "m.tflite")
    export.export_tflite(model, "fp32", path)
    ours = host.benchmark_host(path, threads=1, runs=100, warmup=10)["latency_ms"]["p50"]
    out = tmp_path / "litert.json"
    subprocess.run([tool, "--model", path, "--num_runs", "100", "--warmup_runs", "10", "--num_threads", "1",
                    "--result_json", str(out)], check=True, capture_output=True, timeout=300)
    theirs = json.loads(out.read_text())["latency"]["median_ms"]
    assert 0.5 < ours / theirs < 2.0, (ours, theirs)


# --------------------------------------------------------------------------------------------
# CPU features in benchmark.json, and several models timed interleaved (issue 15, item 2)

EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 fma avx f16c avx2 bmi2
processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 fma avx f16c avx2 bmi2
"""
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 avx512f avx512_vnni avx_vnni amx_tile amx_int8\n"
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd aes crc32 atomics asimddp sve i8mm\nCPU part\t: 0xd40\n"
CORTEX_A53 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd03\n"


@pytest.mark.parametrize("text, machine, cpu, features, dot", [
    (EPYC_AVX2, "x86_64", "AMD EPYC 7B12",
     {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "amx_tile": False, "amx_int8": False},
     False),
    (SAPPHIRE, "x86_64", "Intel(R) Xeon(R) Platinum 8480+",
     {"avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": True, "amx_tile": True, "amx_int8": True}, True),
    (GRAVITON, "aarch64", "CPU part 0xd40", {"asimd": True, "asimddp": True, "i8mm": True, "sve": True}, True),
    (CORTEX_A53, "aarch64", "CPU part 0xd03", {"asimd": True, "asimddp": False, "i8mm": False, "sve": False}, False),
    ("", "x86_64", "", {"avx2": False, "avx512f": False, "avx512_vnni": False, "avx_vnni": False,
                        "amx_tile": False, "amx_int8": False}, None),
])
def test_cpu_features_from_cpuinfo(text, machine, cpu, features, dot):
    assert schema.cpu_info(text, machine) == {"cpu": cpu, "cpu_features": features, "int8_dot_product": dot}


def test_host_environment_records_cpu_features(model_path):
    env = host.benchmark_host(model_path, runs=2, warmup=1)["environment"]
    assert set(env["cpu_features"]) == set(schema.CPU_FEATURES.get(env["machine"], ()))
    assert isinstance(env["int8_dot_product"], bool) and env["cpu"]


def test_program_times_several_models_interleaved(model_path, tmp_path):
    fp32 = str(tmp_path / "net_fp32.tflite")
    export.export_tflite(net(), "fp32", fp32)
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    ok = _program(["--target", "host", "--model", model_path, "--out", str(outs[0]), "--model", fp32,
                   "--out", str(outs[1]), "--runs", "5", "--rounds", "2", "--warmup", "1"])
    assert ok.returncode == 0, ok.stderr
    a, b = (schema.read_benchmark(str(p)) for p in outs)
    assert (a["model"]["name"], b["model"]["name"]) == ("net_int8.tflite", "net_fp32.tflite")
    assert a["runs"] == b["runs"] == 5 and a["rounds"] == 2
    assert a["interleaved_with"] == ["net_fp32.tflite"] and b["interleaved_with"] == ["net_int8.tflite"]
    short = _program(["--target", "host", "--model", model_path, "--model", fp32, "--out", str(outs[0])])
    assert short.returncode == 2 and "give one --out per --model: got 2 --model and 1 --out" in short.stderr
    rounds = _program(["--target", "host", "--model", model_path, "--out", str(outs[0]), "--runs", "3", "--rounds", "4"])
    assert rounds.returncode == 2 and "--rounds must be between 1 and --runs (3), got 4" in rounds.stderr
