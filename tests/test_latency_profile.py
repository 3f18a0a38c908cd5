"""Latency budgets that hold on the target: tables from per-op profiles (deploy.op_profile), the table's
model / target fingerprint, its stated error, and the measured-vs-predicted stop after a search."""

import json
import os
import stat
import sys

import keras
import numpy as np
import pytest

from cafe_tf.graph import ChannelGraph
from cafe_tf.io import ArtifactError, write_json
from cafe_tf.search import Budget, BudgetChecker
from cafe_tf.search import run as search_run
from cafe_tf.space import SearchSpace
from deploy import latency_table as lt
from deploy import op_profile
from deploy.benchmark import android

L = keras.layers
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
HOST_SAMPLE = os.path.join(DATA, "benchmark_model_host_op_profile.txt")  # a format sample, not a measurement
ANDROID_SAMPLE = os.path.join(DATA, "benchmark_model_android.txt")  # a reconstruction in the tool's format


def tiny(width=8, name="tiny", classes=4) -> keras.Model:
    """The model the host format sample was written for: conv, conv, add, depthwise s2, mean, dense."""
    x = inputs = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(width, 3, padding="same", use_bias=False, name="c1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    y = L.Conv2D(width, 3, padding="same", name="c2")(x)
    x = L.Add(name="add")([x, y])
    x = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(classes, name="logits")(x), name=name)


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def flatbuffer(model):
    return lt.to_tflite(model, "fp32")


def _executable(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return str(path)


# ---------------------------------------------------------------------------- the profile parser


def test_host_sample_parses_and_maps_each_op_to_its_layer(model, flatbuffer):
    with open(HOST_SAMPLE) as f:
        parsed = android.parse_benchmark_output(f.read())
    assert parsed["inference_avg_ms"] == pytest.approx(0.04782)
    per_op = parsed["op_profile"]["per_op"]
    assert [r["node_type"] for r in per_op] == ["CONV_2D", "CONV_2D", "ADD", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED"]
    assert [r["avg_ms"] for r in per_op] == [0.012, 0.021, 0.003, 0.004, 0.002, 0.001]
    times, rest = op_profile.layer_times(model, flatbuffer, parsed["op_profile"])
    assert rest == 0.0
    assert {k.describe(): v for k, v in times.items()} == {
        "CONV_2D k3x3 s1 16x16 3->8": [0.012],
        "CONV_2D k3x3 s1 16x16 8->8": [0.021],
        "ADD 16x16 8->8": [0.003],
        "DEPTHWISE_CONV_2D k3x3 s2 16x16 8->8": [0.004],
        "MEAN 8x8 8->8": [0.002],
        "FULLY_CONNECTED 1x1 8->4": [0.001],
    }


def test_xnnpack_profile_maps_to_keys_though_the_converter_reorders_branches():
    """ResNet-20's stride-2 blocks: Keras lists the 1x1 shortcut before the block's second conv, the
    converter after it; the XNNPACK rows (IGEMM, IGEMM, GEMM) must land on the right configurations."""
    from cafe_tf import models

    net = models.build("resnet20", input_shape=(32, 32, 3), num_classes=10)
    with open(ANDROID_SAMPLE) as f:
        profile = android.parse_benchmark_output(f.read())["op_profile"]
    times, rest = op_profile.layer_times(net, lt.to_tflite(net, "fp32"), profile)
    by_key = {k.describe(): v for k, v in times.items()}
    assert by_key["CONV_2D k3x3 s2 32x32 16->32"] == [0.032]  # row 10
    assert by_key["CONV_2D k1x1 s2 32x32 16->32"] == [0.006]  # row 12, the GEMM
    assert by_key["CONV_2D k1x1 s2 16x16 32->64"] == [0.006]  # row 22
    assert len(by_key["CONV_2D k3x3 s1 32x32 16->16"]) == 6
    assert sum(len(v) for v in times.values()) == 32 and rest == 0.0
    assert sum(sum(v) for v in times.values()) == pytest.approx(sum(r["avg_ms"] for r in profile["per_op"]))


def test_a_profile_of_another_model_is_refused(model, flatbuffer):
    with open(ANDROID_SAMPLE) as f:
        profile = android.parse_benchmark_output(f.read())["op_profile"]
    with pytest.raises(lt.DeployError, match=r"op profile row 2 \('Convolution \(NHWC, QC8\) IGEMM'.*matches no remaining op"):
        op_profile.layer_times(model, flatbuffer, profile)
    with pytest.raises(lt.DeployError, match=r"node type 'Fancy Op \(NC, F32\)' is not one this module maps"):
        op_profile.ops_of_row("Fancy Op (NC, F32)")
    with pytest.raises(lt.DeployError, match="lists the whole XNNPACK delegate as one node"):
        op_profile.ops_of_row("TfLiteXNNPackDelegate")
    assert op_profile.ops_of_row("Convolution (NHWC, F32) DWConv") == ("DEPTHWISE_CONV_2D",)
    with pytest.raises(lt.DeployError, match="no per-op profile: run it with --enable_op_profiling=true"):
        op_profile.layer_times(model, flatbuffer, None)


# ---------------------------------------------------------------------------- tables from profiles


def synthetic_profiler(constant_ms=0.05):
    """A profile source computed from each op's shapes (a stand-in for benchmark_model, no
    measurement): op ms = 1e-3 + 1e-6 * output elements * input channels; run = sum + constant."""
    def cost(op):
        return 1e-3 + 1e-6 * int(np.prod(op.output)) * op.inputs[0][-1]

    def profile(paths):
        out = []
        for path in paths:
            with open(path, "rb") as f:
                ops = op_profile.tflite_ops(f.read())
            rows = [{"node_type": op.op, "name": str(op.index), "avg_ms": cost(op)} for op in ops]
            out.append({"latency_ms": sum(r["avg_ms"] for r in rows) + constant_ms, "op_profile": {"per_op": rows}})
        return out

    return profile, cost


def test_table_built_from_profiles_has_the_layer_keys_and_states_its_error(model, tmp_path):
    profiler, cost = synthetic_profiler()
    table = op_profile.build_profiled_table(model, profiler, "host", calibration_subnets=3, holdout_subnets=3,
                                            fractions=(0.25, 0.5), seed=0)  # + the full net: distinct sums
    # every entry is the in-place time of its op, keyed like an isolated table's
    full_ops = op_profile.tflite_ops(lt.to_tflite(model, "fp32"))
    for key, op in zip(op_profile.match_keys(lt.layer_keys(model), full_ops), full_ops):
        assert table.entries[key] == pytest.approx(cost(op), rel=1e-12)
    assert table.constant_ms == pytest.approx(0.05, abs=1e-9) and table.scale == pytest.approx(1.0, abs=1e-9)
    assert table.info["method"] == "op_profile" and table.info["target"] == "host"
    assert table.info["model_fingerprint"] == lt.model_fingerprint(model)
    held = table.info["holdout"]
    assert held["subnets"] == 3 and held["max_abs_error_pct"] >= held["p90_abs_error_pct"] >= 0
    assert table.stated_error_pct == held["p90_abs_error_pct"]
    path = str(tmp_path / "table.json")
    table.save(path)
    loaded = lt.load(path)
    assert loaded.entries == table.entries and loaded.info["method"] == "op_profile"
    assert loaded.stated_error_pct == pytest.approx(held["p90_abs_error_pct"])


def test_error_stats_are_mean_p90_and_max_of_the_absolute_error():
    stats = lt.error_stats([-10.0, 2.0, 4.0, 6.0, 8.0])
    assert stats["mean_abs_error_pct"] == pytest.approx(6.0)
    assert stats["p90_abs_error_pct"] == pytest.approx(9.2)  # numpy's linear interpolation
    assert stats["max_abs_error_pct"] == 10.0 and stats["mean_error_pct"] == pytest.approx(2.0)
    assert stats["within_10pct"] == 1.0


# ---------------------------------------------------------------------------- model / target mismatch


def _table_for(model, target="host", holdout_errors=(0.5, -0.5, 1.0), layer_ms=None):
    entries = {k: layer_ms or 1e-3 + 1e-9 * k.macs() for k in lt.layer_keys(model)}
    info = {"target": target, "quant": "fp32", "threads": 1, "method": "isolated",
            "model_fingerprint": lt.model_fingerprint(model),
            "source": {"model": model.name, "input_shape": [16, 16, 3]},
            "holdout": {"subnets": len(holdout_errors), **lt.error_stats(holdout_errors),
                        "rows": [{"error_pct": e} for e in holdout_errors]}}
    return lt.LatencyTable(entries, constant_ms=0.0, scale=1.0, info=info)


def test_a_table_from_another_model_or_target_is_refused(model, tmp_path):
    table = _table_for(model)
    table.check_model(tiny(name="same_architecture"))  # names and weights do not matter
    other = tiny(width=12, name="wider")
    with pytest.raises(lt.TableMismatchError, match=(
            r"built for another model: the table is for model 'tiny' \(fingerprint sha256:[0-9a-f]{16}.*"
            r"this run's model is 'wider' \(fingerprint sha256:[0-9a-f]{16}")):
        table.check_model(other)
    with pytest.raises(lt.TableMismatchError, match="another model"):
        table.check_model(tiny(classes=10))  # another class count: another last layer
    with pytest.raises(lt.TableMismatchError, match="built for target 'host', but this run budgets latency on target 'android'"):
        table.check_model(model, "android")
    # what the search does with config.search.latency_target and the table file
    path = str(tmp_path / "table.json")
    table.save(path)
    section = search_run.search_section()
    section.latency_table, section.latency_target = path, "android"
    with pytest.raises(lt.TableMismatchError, match=r"config.search.latency_table='.*table.json' was built for target 'host'"):
        search_run.check_table(search_run.load_latency_predictor(path), model, section)
    section.latency_target = ""
    with pytest.raises(lt.TableMismatchError, match="this run's model is 'wider'"):
        search_run.check_table(search_run.load_latency_predictor(path), other, section)


def test_a_table_of_an_earlier_version_is_refused_by_name(model, tmp_path):
    path = str(tmp_path / "v2.json")
    write_json(path, {"schema": "latency_table", "schema_version": lt.VERSION - 1, "target": "host", "quant": "fp32",
                      "threads": 1, "entries": [{**k.to_dict(), "ms": 0.01} for k in lt.layer_keys(model)],
                      "model": {"constant_ms": 0.0, "scale": 1.0}})
    with pytest.raises(ArtifactError, match=f"v2.json' has schema_version {lt.VERSION - 1}; this cafe-tf reads version "
                       f"{lt.VERSION} only: re-run python -m deploy.latency_table"):
        lt.load(path)


# ---------------------------------------------------------------------------- measured vs predicted


def test_check_budget_names_measured_predicted_budget_and_error():
    ok = lt.check_budget(1.0, predicted_ms=0.95, measured_ms=1.04, error_pct=5.0)
    assert ok["within_limit"] and ok["limit_ms"] == pytest.approx(1.05)
    assert ok["measured_over_predicted"] == pytest.approx(1.04 / 0.95)
    with pytest.raises(lt.LatencyBudgetExceeded, match=(
            r"measures 1\.0600 ms against a predicted 0\.9500 ms: over the budget max_latency_ms=1 by more than "
            r"the table's error \(5\.0%; limit 1\.0500 ms\)")):
        lt.check_budget(1.0, predicted_ms=0.95, measured_ms=1.06, error_pct=5.0)


def test_search_stops_when_the_chosen_net_measures_over_budget(model):
    """Real host measurements of the tiny model against a table that predicts 1 ns per layer: far
    below anything measurable, with a stated error of 1%, so the stop is certain."""
    from cafe_tf.config import ConfigError

    space = SearchSpace(ChannelGraph.from_model(model))
    table = _table_for(model, holdout_errors=(1.0, 1.0), layer_ms=1e-6)
    widths = space.num_bins.copy()
    section = search_run.search_section()
    predicted = float(table.predict_widths_ms(space, widths)[0])
    checker = BudgetChecker(space, Budget(max_latency_ms=predicted * 1.001), table)
    with pytest.raises(lt.LatencyBudgetExceeded, match=(
            r"measures \d+\.\d{4} ms against a predicted 0\.0000 ms: over the budget max_latency_ms=6\.006e-06 by "
            r"more than the table's error \(1\.0%")):
        search_run.verify_latency(section, checker, widths)
    # a budget that holds: measured and predicted side by side, where they were measured
    checker = BudgetChecker(space, Budget(max_latency_ms=1e3), table)
    record = search_run.verify_latency(section, checker, widths)
    assert record["within_limit"] and record["predicted_ms"] == pytest.approx(predicted)
    assert 0 < record["measured_ms"] < 1e3 and record["target"] == "host" and record["quant"] == "fp32"
    assert record["stated_error_pct"] == 1.0 and record["device"]
    lines = search_run.summary_lines({"method": "evolution", "score": 0.5, "macs": 1, "full_macs": 2, "params": 1,
                                      "full_params": 2, "groups": [], "scored_this_run": 0, "cache_hits_this_run": 0,
                                      "seconds_this_run": 0, "pareto": [], "latency_ms": predicted,
                                      "latency_check": record})
    assert any(f"{predicted:.3f} ms predicted, {record['measured_ms']:.3f} ms measured on host" in line for line in lines)
    section.latency_check = False
    assert search_run.verify_latency(section, checker, widths)["skipped"] == "config.search.latency_check=False"
    section.latency_check = True
    android_table = _table_for(model, target="android")
    with pytest.raises(ConfigError, match="target 'android': config.search.latency_check needs config.search.benchmark_binary"):
        search_run.verify_latency(section, BudgetChecker(space, Budget(max_latency_ms=1e3), android_table), widths)


def test_latency_check_config_is_validated():
    from cafe_tf.config import ConfigError

    section = search_run.search_section()
    section.max_latency_ms, section.latency_table = 1.0, "t.json"
    section.latency_target = "tpu"
    with pytest.raises(ConfigError, match=r"latency_target='tpu' is invalid; valid values: \['host', 'android'\]"):
        search_run.validate_search(section)
    section.latency_target = "android"
    with pytest.raises(ConfigError, match="needs config.search.benchmark_binary=PATH"):
        search_run.validate_search(section)
    section.benchmark_binary = "/opt/benchmark_model"
    search_run.validate_search(section)


def test_run_report_shows_measured_and_predicted_latency_of_the_search(tmp_path):
    from cafe_tf import pipeline
    from cafe_tf.config import sibling_config

    check = {"budget_ms": 0.5, "predicted_ms": 0.48, "measured_ms": 0.5123, "stated_error_pct": 7.5, "limit_ms": 0.5375,
             "within_limit": True, "target": "host", "quant": "fp32", "threads": 1, "method": "isolated",
             "device": "Intel Xeon (made-up record)"}
    write_json(str(tmp_path / "widths.json"), {
        "macs": 15_000_000, "params": 120_000, "full_macs": 31_000_000, "full_params": 274_000, "score": 0.81,
        "groups": [], "budget": {"max_latency_ms": 0.5}, "evaluated": [{"macs": 15_000_000, "score": 0.81}],
        "latency_check": check})
    config = sibling_config(os.path.join(os.path.dirname(DATA), "..", "configs", "x"), "fashion_mnist_resnet20.py")
    md = open(pipeline.write_run_report(config, str(tmp_path), [])).read()
    assert ("search latency on host (fp32, 1 thread(s), Intel Xeon (made-up record)): measured 0.512 ms, predicted "
            "0.480 ms by the isolated table; budget 0.5 ms, table error 7.5%") in md


# ---------------------------------------------------------------------------- the benchmark_model command lines


RECORDER = """#!{python}
import os, sys
with open({log!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
{body}
"""


def test_host_profiler_runs_benchmark_model_with_op_profiling(tmp_path, flatbuffer):
    log = str(tmp_path / "argv.log")
    binary = _executable(tmp_path / "benchmark_model", RECORDER.format(
        python=sys.executable, log=log, body=f"sys.stdout.write(open({HOST_SAMPLE!r}).read())"))
    model_path = str(tmp_path / "tiny.tflite")
    with open(model_path, "wb") as f:
        f.write(flatbuffer)
    (result,) = op_profile.HostProfiler(binary, threads=2, runs=30, warmup=3)([model_path])
    with open(log) as f:
        assert f.read().split() == [f"--graph={model_path}", "--num_threads=2", "--num_runs=30", "--warmup_runs=3",
                                    "--use_xnnpack=true", "--enable_op_profiling=true"]
    assert result["latency_ms"] == pytest.approx(0.04782) and len(result["op_profile"]["per_op"]) == 6
    with pytest.raises(lt.UsageError, match=r"--benchmark_model='.*nope' is not an executable file"):
        op_profile.HostProfiler(str(tmp_path / "nope"))


FAKE_ADB = """
args = sys.argv[1:]
if args[:2] == ["-s", "FAKE123"]:
    args = args[2:]
if args == ["devices", "-l"]:
    print("List of devices attached")
    print("FAKE123        device usb:1-1 product:fake model:Fake_Phone device:fake transport_id:1")
elif args[:1] == ["shell"] and args[1] == "getprop":
    print("[ro.product.model]: [Fake Phone]")
    print("[ro.product.cpu.abi]: [arm64-v8a]")
elif args[:1] == ["shell"] and "benchmark_model" in args[1] and "--graph=" in args[1]:
    sys.stdout.write(open({sample!r}).read())
"""


def test_android_profiler_drives_adb_with_op_profiling(tmp_path, flatbuffer):
    """adb is a script on PATH that records its argv and replays the format sample: no device is involved."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = str(tmp_path / "adb.log")
    _executable(bin_dir / "adb", RECORDER.format(python=sys.executable, log=log, body=FAKE_ADB.format(sample=ANDROID_SAMPLE)))
    binary = tmp_path / "android_benchmark_model"
    binary.write_bytes(b"\x7fELF" + b"\0" * 60)  # check_binary wants an ELF file; it never runs here
    model_path = str(tmp_path / "resnet20_int8.tflite")
    with open(model_path, "wb") as f:
        f.write(flatbuffer)
    profiler = op_profile.AndroidProfiler(str(binary), threads=4, runs=50, warmup=5,
                                          env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    (result,) = profiler([model_path])
    with open(log) as f:
        calls = f.read().splitlines()
    assert calls[0] == "devices -l"
    assert calls[1] == "-s FAKE123 shell getprop"
    assert calls[2] == f"-s FAKE123 push {binary} /data/local/tmp/benchmark_model"
    assert calls[3] == "-s FAKE123 shell chmod 755 /data/local/tmp/benchmark_model"
    assert calls[4] == f"-s FAKE123 push {model_path} /data/local/tmp/resnet20_int8.tflite"
    assert calls[5] == ("-s FAKE123 shell /data/local/tmp/benchmark_model --graph=/data/local/tmp/resnet20_int8.tflite "
                        "--num_threads=4 --num_runs=50 --warmup_runs=5 --use_xnnpack=true --use_gpu=false "
                        "--use_nnapi=false --enable_op_profiling=true --report_peak_memory_footprint=true")
    assert calls[6] == "-s FAKE123 shell rm -f /data/local/tmp/resnet20_int8.tflite"
    assert result["latency_ms"] == pytest.approx(1.14261) and len(result["op_profile"]["per_op"]) == 32
    assert json.dumps(result["environment"])  # JSON-able, as the table file records it


# ---------------------------------------------------------------------------- the search job, end to end


@pytest.mark.slow
def test_search_job_reports_measured_and_predicted_and_stops_over_budget(tmp_path):
    """cafe_tf.search.run under max_latency_ms with a table file for the supernet's model: widths.json holds
    the host measurement next to the prediction; a table that predicts far too little stops the run
    before widths.json is written."""
    from cafe_tf import config as cfg
    from cafe_tf.training import supernet as supernet_lib
    from supernet_helpers import INFO, cnn, separable_source

    src = separable_source()
    sec = supernet_lib.supernet_section()
    sec.update(dict(epochs=1, lr=0.05, log_every=6, eval_fractions=(), eval_min=False))
    supernet_lib.train(cnn, src, sec, str(tmp_path / "supernet"), model_info=INFO)
    full = keras.models.load_model(str(tmp_path / "supernet" / "supernet.keras"), compile=False)

    def job(layer_ms, name):
        table = _table_for(full, holdout_errors=(2.0, -2.0), layer_ms=layer_ms)
        table.save(str(tmp_path / f"{name}.json"))
        c = cfg.base_config()
        c.data.batch_size = 16
        c.search = search_run.search_section()
        c.search.update(dict(population=6, generations=1, parents=2, calibration_examples=32, eval_examples=32,
                             supernet=str(tmp_path / "supernet" / "supernet.keras"), latency_table=str(tmp_path / f"{name}.json"),
                             max_latency_ms=0.7 * table.predict_ms(full), lower_ratio=0.0))
        return c, str(tmp_path / name)

    config, workdir = job(10.0, "holds")  # 10 ms a layer: far above what the small net measures
    record = search_run.run(config, workdir, data=src)
    check = record["latency_check"]
    assert check["predicted_ms"] == record["latency_ms"] <= config.search.max_latency_ms
    assert 0 < check["measured_ms"] < check["predicted_ms"] and check["within_limit"] and check["target"] == "host"
    assert check["stated_error_pct"] == pytest.approx(2.0)
    with open(os.path.join(workdir, "widths.json")) as f:
        assert json.load(f)["latency_check"] == check

    config, workdir = job(1e-6, "over")  # 1 ns a layer: far below
    with pytest.raises(lt.LatencyBudgetExceeded, match=r"measures \d+\.\d{4} ms against a predicted \d+\.\d{4} ms"):
        search_run.run(config, workdir, data=src)
    assert not os.path.exists(os.path.join(workdir, "widths.json"))
