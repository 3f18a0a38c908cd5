"""Every program answers ``--help`` with exit code 0, its module docstring and its main flags."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# program -> flags its --help must list (the README's Programs table and examples use them).
CONFIG_FLAGS = ("--config", "--workdir")
PROGRAMS = {
    "cafe_tf.pipeline": CONFIG_FLAGS,
    "cafe_tf.train_supernet": CONFIG_FLAGS,
    "cafe_tf.search": CONFIG_FLAGS,
    "cafe_tf.train": CONFIG_FLAGS + ("--widths", "--init_from_supernet"),
    "cafe_tf.compare": CONFIG_FLAGS + ("--seeds", "--arms", "--ranking", "--[no]summary_only"),
    "cafe_tf.prune": CONFIG_FLAGS,
    "cafe_tf.flops": ("--model", "--input_size", "--width_mult", "--num_classes", "--widths"),
    "deploy.export": ("--model", "--widths", "--checkpoint", "--quant", "--io_type", "--out", "--dataset",
                      "--data_dir"),
    "deploy.verify": ("--model", "--tflite", "--out", "--dataset", "--split"),
    "deploy.edgetpu": ("--model", "--out", "--[no]compile", "--min_runtime"),
    "deploy.benchmark": ("--target", "--model", "--out", "--threads", "--runs", "--benchmark_binary", "--serial",
                         "--taskset", "--[no]use_gpu"),
    "deploy.latency_table": ("--model_name", "--model", "--input_size", "--quant", "--out", "--fractions"),
}
KNOWN_NONZERO: dict[str, str] = {}  # program -> why its --help does not exit 0 (none today)


def _source(module: str) -> str:
    path = os.path.join(ROOT, *module.split("."))
    return path + ".py" if os.path.isfile(path + ".py") else os.path.join(path, "__main__.py")


def _params():
    for module in PROGRAMS:
        marks = [pytest.mark.xfail(reason=KNOWN_NONZERO[module], strict=True)] if module in KNOWN_NONZERO else []
        yield pytest.param(module, marks=marks, id=module)


@pytest.mark.parametrize("module", list(_params()))
def test_help(module):
    with open(_source(module), encoding="utf-8") as f:
        summary = ast.get_docstring(ast.parse(f.read())).splitlines()[0]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    out = proc.stdout + proc.stderr
    missing = [flag for flag in PROGRAMS[module] if f"  {flag}:" not in out]
    assert not missing, f"{module} --help does not list {missing}:\n{out}"
    assert summary in out, f"{module} --help does not print its module docstring:\n{out}"
    assert proc.returncode == 0, f"{module} --help exited {proc.returncode}:\n{out}"
