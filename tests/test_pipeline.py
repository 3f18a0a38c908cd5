"""cafe_tf.pipeline: the config checked before any stage, which programs each stage runs with which flags,
and the run report from the artifacts."""

import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cafe_tf import pipeline
from cafe_tf.config import ConfigError
from config_helpers import demo_config
from cafe_tf.io import write_json
from cafe_tf.programs import EXIT_USAGE
from cafe_tf.stages import is_keras_file, is_metrics_file, is_tflite, read_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def by_name(stages):
    return {s.name: s for s in stages}


def test_stages_of_the_demo_config(tmp_path):
    stages = pipeline.build_stages(demo_config(), str(tmp_path), ["--config=C.py", "--config.train.epochs=1"])
    assert [s.name for s in stages] == ["supernet", "search", "retrain", "export_fp32", "export_int8", "verify_fp32",
                                        "verify_int8", "benchmark"]
    s = by_name(stages)
    assert s["supernet"].command[:2] == ["-m", "cafe_tf.train_supernet"]
    assert "--config.train.epochs=1" in s["search"].command and "--config=C.py" in s["retrain"].command
    assert f"--widths={tmp_path / 'widths.json'}" in s["retrain"].command
    assert not any(a.startswith("--init_from_supernet") for a in s["retrain"].command)  # from scratch by default
    assert "--num_calibration=200" in s["export_int8"].command
    assert not any(a.startswith("--data_dir") for st in stages for a in st.command)
    assert s["benchmark"].command[-2:] == ["--runs=50", "--rounds=5"]
    assert s["benchmark"].command[:4] == ["-m", "deploy.benchmark", "--target=host",
                                          f"--model={tmp_path / 'deploy' / 'model_fp32.tflite'}"]
    assert f"--out={tmp_path / 'deploy' / 'benchmark_int8.json'}" in s["benchmark"].command
    assert "--num_batches=10" in s["verify_int8"].command and "--batch_size=100" in s["verify_int8"].command
    # a quantized format's parity is reported, not fatal (its accuracy drop decides); fp32's is fatal
    assert "--report_only" in s["verify_int8"].command and "--report_only" not in s["verify_fp32"].command
    assert "--input_scaling=mean_std" in s["verify_int8"].command and "--input_scaling=mean_std" in s["export_int8"].command
    assert s["retrain"].artifact == str(tmp_path / "retrain" / "model.keras")


def test_config_keys_reach_their_stages(tmp_path):
    config = demo_config(**{"retrain.init_from_supernet": True, "deploy.representative_examples": 64,
                            "deploy.formats": ("fp16", "dynamic"), "data.data_dir": "/data/tfds"})
    s = by_name(pipeline.build_stages(config, str(tmp_path), ["--config=C.py"]))
    assert f"--init_from_supernet={tmp_path / 'supernet.keras'}" in s["retrain"].command
    assert "--num_calibration=64" in s["export_fp16"].command and "--quant=fp16" in s["export_fp16"].command
    for name in ("export_dynamic", "export_fp16", "verify_fp16", "verify_dynamic"):
        assert "--data_dir=/data/tfds" in s[name].command, name
    assert "export_fp32" not in s and "--quant=dynamic" in s["export_dynamic"].command


def test_artifact_validators(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a .keras archive"):
        is_keras_file(str(bad))
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        is_tflite(str(bad))
    write_json(str(tmp_path / "m.json"), {"final": {}})
    with pytest.raises(ValueError, match="no final evaluation"):
        is_metrics_file(str(tmp_path / "m.json"))
    write_json(str(tmp_path / "m.json"), {"final": {"test": {"accuracy": 0.9}}})
    is_metrics_file(str(tmp_path / "m.json"))
    assert read_json(str(tmp_path / "m.json"))["final"]["test"]["accuracy"] == 0.9


def test_run_report_draws_the_baseline_and_the_retrained_net(tmp_path):
    groups = [{"name": "stem_conv", "size": 16, "width": 8, "channels": list(range(8))}]
    write_json(str(tmp_path / "widths.json"), {
        "macs": 15_000_000, "params": 120_000, "full_macs": 31_000_000, "full_params": 274_000, "score": 0.81,
        "groups": groups, "budget": {"max_macs": 15_500_000},
        "evaluated": [{"macs": 14_000_000, "score": 0.8}, {"macs": 15_000_000, "score": 0.81}],
        "baselines": [{"name": "uniform width", "macs": 15_200_000, "score": 0.79}]})
    write_json(str(tmp_path / "retrain" / "metrics.json"), {"final": {"test": {"accuracy": 0.9167}}})
    path = pipeline.write_run_report(demo_config(), str(tmp_path), [])
    md = open(path).read()
    assert "| uniform width | 15.2M | 0.79 |" in md
    assert "| retrain | 15M | 120k | 0.9167 |" in md
    assert open(tmp_path / "report.png", "rb").read(4) == b"\x89PNG"


def test_deploy_section_is_checked():
    pipeline.validate_deploy(demo_config().deploy)
    for formats, what in [(("fp32", "qat"), " ('qat' is not one)"), ((), ""), (("int8", "int8"), "")]:
        message = (f"config.deploy.formats={formats!r} is invalid; give one or more distinct formats of "
                   f"['fp32', 'fp16', 'dynamic', 'int8']{what}")
        with pytest.raises(ConfigError, match=re.escape(message) + "$"):
            pipeline.validate_deploy(demo_config(**{"deploy.formats": formats}).deploy)
    with pytest.raises(ConfigError, match=r"config.deploy.max_accuracy_drop=-0.1 is invalid; it must be >= 0"):
        pipeline.validate_deploy(demo_config(**{"deploy.max_accuracy_drop": -0.1}).deploy)
    with pytest.raises(ConfigError, match=r"config.deploy.benchmark_rounds=60 is invalid; it must be <= "
                                          r"config.deploy.benchmark_runs \(50\)"):
        pipeline.validate_deploy(demo_config(**{"deploy.benchmark_rounds": 60}).deploy)
    with pytest.raises(ConfigError, match=r"config.deploy.benchmark_runs=0 is invalid; it must be >= 1"):
        pipeline.validate_deploy(demo_config(**{"deploy.benchmark_runs": 0}).deploy)


def test_a_bad_value_in_any_section_stops_the_pipeline_before_its_first_stage(tmp_path):
    # The search stage runs second: its config must still be refused before the supernet trains. (Were
    # it not, the missing data_dir would fail the supernet stage at once with exit code 1.)
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cafe_tf.pipeline", "--config=configs/fashion_mnist_resnet20.py", f"--workdir={workdir}",
         "--config.search.population=1", f"--config.data.data_dir={tmp_path / 'no_data'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "pipeline: usage error: config.search.population=1 is invalid; it must be >= 2" in proc.stderr
    assert not workdir.exists()  # no stage ran, no log was opened


# -------------------------------------------------------------------------------------------------
# The deploy format chosen by measurement (issue 15, item 2): fake measurements, exact choice logic.

EPYC = {"cpu": "AMD EPYC 7B12", "machine": "x86_64", "int8_dot_product": False,
        "cpu_features": {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False,
                         "amx_tile": False, "amx_int8": False}}


def _row(fmt, ms, drop):
    return {"format": fmt, "latency_ms": ms, "drop_pt": drop}


def test_recommend_the_fastest_format_within_the_tolerance():
    rows = [_row("fp32", 1.0, 0.0), _row("fp16", 0.9, 0.1), _row("int8", 0.5, 0.8), _row("dynamic", 0.4, None)]
    choice, why = pipeline.recommend_format(rows, 0.5)
    assert choice == "fp16"
    assert why == [
        "Recommended: **fp16**, 0.900 ms: the fastest format within the 0.5-point accuracy tolerance "
        "(against fp32 1.000 ms).",
        "int8 is excluded: it loses 0.80 points, over the 0.5-point tolerance",
        "dynamic is excluded: its accuracy is unknown (no labelled verify run)",
    ]
    assert pipeline.recommend_format(rows, 1.0)[0] == "int8"
    assert pipeline.recommend_format(rows, 0.0)[0] == "fp32"  # a drop exactly at the tolerance is within it
    # a format that gains accuracy (negative drop) is within any tolerance
    assert pipeline.recommend_format([_row("fp32", 1.0, 0.0), _row("int8", 0.6, -0.3)], 0.0)[0] == "int8"
    choice, why = pipeline.recommend_format([_row("int8", 0.5, 2.0)], 0.5)
    assert choice is None and why[0].startswith("No format is recommended: none was measured within the 0.5-point")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 5.0), st.one_of(st.none(), st.floats(-1.0, 3.0))), min_size=1, max_size=4),
       st.floats(0.0, 2.0))
def test_recommended_format_is_never_over_the_tolerance(measured, tolerance):
    rows = [_row(f, ms, drop) for f, (ms, drop) in zip(pipeline.DEPLOY_FORMATS, measured)]
    choice, _ = pipeline.recommend_format(rows, tolerance)
    within = [r for r in rows if r["drop_pt"] is not None and round(r["drop_pt"], 6) <= tolerance]
    if not within:
        assert choice is None
    else:
        picked = next(r for r in rows if r["format"] == choice)
        assert picked in within and picked["latency_ms"] == min(r["latency_ms"] for r in within)


def test_report_says_plainly_when_int8_is_slower_than_fp32():
    rows = [_row("fp32", 0.85, 0.0), _row("int8", 1.07, 0.1)]
    choice, why = pipeline.recommend_format(rows, 0.5, EPYC)
    assert choice == "fp32"
    assert why[-1] == ("On this host int8 is slower than fp32 (1.070 ms against 0.850 ms, 1.26x): AMD EPYC 7B12; "
                       "it has no int8 dot-product instructions (none of VNNI, AMX-INT8, Arm dotprod, i8mm).")
    fast_int8 = pipeline.recommend_format([_row("fp32", 0.85, 0.0), _row("int8", 0.4, 0.1)], 0.5, EPYC)[1]
    assert not any("slower" in s for s in fast_int8)


def _fake_deploy_artifacts(tmp_path, measured):
    """deploy/ as the export, verify and benchmark stages leave it, with made-up figures."""
    for fmt, (ms, accuracy) in measured.items():
        (tmp_path / "deploy").mkdir(exist_ok=True)
        (tmp_path / "deploy" / f"model_{fmt}.tflite").write_bytes(b"\0" * 2048)
        write_json(str(tmp_path / "deploy" / f"benchmark_{fmt}.json"),
                   {"latency_ms": {"p50": ms, "mean": ms}, "environment": EPYC})
        write_json(str(tmp_path / "deploy" / f"verify_{fmt}.json"),
                   {"schema": "verify", "schema_version": 1, "tflite": f"model_{fmt}.tflite", "quant": fmt,
                    "num_images": 1000, "max_abs_diff": 0.25, "mean_abs_diff": 0.0125, "tflite_accuracy": accuracy,
                    "keras_accuracy": 0.9, "accuracy_drop_pt": 100 * (0.9 - accuracy), "top1_agreement": 0.99,
                    "criterion": "top1_agreement >= 0.98", "passed": True})


def test_run_report_shows_every_format_and_why_one_was_picked(tmp_path):
    _fake_deploy_artifacts(tmp_path, {"fp32": (0.85, 0.9), "fp16": (0.86, 0.9), "int8": (1.07, 0.899)})
    config = demo_config(**{"deploy.formats": ("fp32", "fp16", "int8")})
    md = open(pipeline.write_run_report(config, str(tmp_path), [])).read()
    assert "| **fp32** (recommended) | 0.85 | 2 | 0.9 | +0.00 | 0.99 | yes |" in md
    assert "| fp16 | 0.86 | 2 | 0.9 | +0.00 | 0.99 | yes |" in md
    assert "| int8 | 1.07 | 2 | 0.899 | +0.10 | 0.99 | yes |" in md
    assert "Timed on AMD EPYC 7B12 (x86_64; SIMD / dot-product features: avx2)" in md
    assert "Recommended: **fp32**, 0.850 ms: the fastest format within the 0.5-point accuracy tolerance" in md
    assert "On this host int8 is slower than fp32 (1.070 ms against 0.850 ms, 1.26x)" in md
    assert "| tflite int8 | – | – | 0.899 | 1.07 | 2 |" in md
    # the verify records as table rows, not JSON
    assert ("| format | size (KB) | images | top-1 agreement | max abs diff | mean abs diff | Keras accuracy | "
            "TFLite accuracy | drop (pt) | check | passed |") in md
    assert "| int8 | 2 | 1000 | 0.99 | 0.25 | 0.0125 | 0.9 | 0.899 | +0.10 | `top1_agreement >= 0.98` | yes |" in md
    assert "| fp16 | 2 | 1000 | 0.99 | 0.25 | 0.0125 | 0.9 | 0.9 | +0.00 |" in md
    assert "{" not in md and '"' not in md
    # over the tolerance: int8 is the fastest here but is never picked
    _fake_deploy_artifacts(tmp_path, {"fp32": (0.85, 0.9), "int8": (0.3, 0.88)})
    md = open(pipeline.write_run_report(demo_config(), str(tmp_path), [])).read()
    assert "| int8 | 0.3 | 2 | 0.88 | +2.00 | 0.99 | no |" in md and "| **fp32** (recommended)" in md
    assert "int8 is excluded: it loses 2.00 points, over the 0.5-point tolerance" in md


def test_benchmark_stage_is_done_only_for_the_models_on_disk(tmp_path):
    from deploy.benchmark import schema

    config = demo_config()
    stage = by_name(pipeline.build_stages(config, str(tmp_path), ["--config=C.py"]))["benchmark"]
    (tmp_path / "deploy").mkdir()
    for fmt in ("fp32", "int8"):
        model = tmp_path / "deploy" / f"model_{fmt}.tflite"
        model.write_bytes(fmt.encode() * 100)
        stats = schema.latency_stats([1.0, 1.1])
        record = schema.make_record(str(model), "host", 1, "xnnpack", 1, 2, stats, {})
        assert not stage.is_done()  # int8's benchmark.json is not there yet
        schema.write_benchmark(str(tmp_path / "deploy" / f"benchmark_{fmt}.json"), record)
    assert stage.is_done()
    (tmp_path / "deploy" / "model_int8.tflite").write_bytes(b"re-exported")
    assert not stage.is_done()  # timed another model: the interleaved benchmark runs again
