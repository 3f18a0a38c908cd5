"""cafe_tf.pipeline: the config checked before any stage, which programs each stage runs with which flags,
and the run report from the artifacts."""

import os
import subprocess
import sys

import pytest

from cafe_tf import pipeline
from cafe_tf.config import ConfigError
from cafe_tf.io import write_json
from cafe_tf.programs import EXIT_USAGE
from cafe_tf.stages import is_keras_file, is_metrics_file, is_tflite, read_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(**overrides):
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_config", os.path.join(REPO, "configs", "fashion_mnist_resnet20.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def by_name(stages):
    return {s.name: s for s in stages}


def test_stages_of_the_demo_config(tmp_path):
    stages = pipeline.build_stages(demo_config(), str(tmp_path), ["--config=C.py", "--config.train.epochs=1"])
    assert [s.name for s in stages] == ["supernet", "search", "retrain", "export_fp32", "export_int8", "verify_int8",
                                        "benchmark_fp32", "benchmark_int8"]
    s = by_name(stages)
    assert s["supernet"].command[:2] == ["-m", "cafe_tf.train_supernet"]
    assert "--config.train.epochs=1" in s["search"].command and "--config=C.py" in s["retrain"].command
    assert f"--widths={tmp_path / 'widths.json'}" in s["retrain"].command
    assert not any(a.startswith("--init_from_supernet") for a in s["retrain"].command)  # from scratch by default
    assert "--num_calibration=200" in s["export_int8"].command
    assert not any(a.startswith("--data_dir") for st in stages for a in st.command)
    assert s["benchmark_int8"].command[-1] == "--runs=50"
    assert s["retrain"].artifact == str(tmp_path / "retrain" / "model.keras")


def test_config_keys_reach_their_stages(tmp_path):
    config = demo_config(**{"retrain.init_from_supernet": True, "deploy.representative_examples": 64,
                            "deploy.quantization": "fp16", "data.data_dir": "/data/tfds"})
    s = by_name(pipeline.build_stages(config, str(tmp_path), ["--config=C.py"]))
    assert f"--init_from_supernet={tmp_path / 'supernet.keras'}" in s["retrain"].command
    assert "--num_calibration=64" in s["export_fp16"].command and "--quant=fp16" in s["export_fp16"].command
    for name in ("export_fp32", "export_fp16", "verify_fp16"):
        assert "--data_dir=/data/tfds" in s[name].command, name


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
    with pytest.raises(ConfigError, match=r"config.deploy.quantization='fp32' is invalid; valid values: \['fp16', "):
        pipeline.validate_deploy(demo_config(**{"deploy.quantization": "fp32"}).deploy)
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
