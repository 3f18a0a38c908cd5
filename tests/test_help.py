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
    "cafe_tf.bundle": CONFIG_FLAGS,
    "cafe_tf.train_supernet": CONFIG_FLAGS,
    "cafe_tf.search": CONFIG_FLAGS,
    "cafe_tf.cli.train": CONFIG_FLAGS + ("--widths", "--init_from_supernet"),
    "cafe_tf.compare": CONFIG_FLAGS + ("--seeds", "--arms", "--budgets", "--macs_tolerance", "--ranking",
                                       "--noise_repeats", "--[no]summary_only"),
    "cafe_tf.cli.prune": CONFIG_FLAGS,
    "cafe_tf.study": (),  # subcommands run, status, summary (argparse)
    "cafe_tf.train_detector": CONFIG_FLAGS,
    "cafe_tf.export_detector": CONFIG_FLAGS + ("--quant", "--num_calibration", "--parity_images"),
    "cafe_tf.flops": ("--model", "--input_size", "--width_mult", "--num_classes", "--widths"),
    "cafe_tf.check": ("--model", "--input_size", "--num_classes", "--boundaries", "--json"),
    "deploy.export": ("--model", "--widths", "--checkpoint", "--quant", "--io_type", "--out", "--dataset",
                      "--data_dir"),
    "deploy.verify": ("--model", "--tflite", "--out", "--dataset", "--split"),
    "deploy.edgetpu": ("--model", "--out", "--[no]compile", "--min_runtime"),
    "deploy.benchmark": ("--target", "--model", "--out", "--threads", "--runs", "--benchmark_binary", "--serial",
                         "--taskset", "--[no]use_gpu", "--bundle"),
    "deploy.latency_table": ("--model_name", "--model", "--input_size", "--quant", "--out", "--fractions"),
}
# The same programs by the module `python -m` runs (cafe_tf.flops forwards to cafe_tf.cli.flops).
PROGRAMS_BY_MODULE = {*PROGRAMS, "cafe_tf.cli.flops", "cafe_tf.cli.check"}
KNOWN_NONZERO: dict[str, str] = {}  # program -> why its --help does not exit 0 (none today)


def _source(module: str) -> str:
    # The program's own file: deploy/export_main.py for `python -m deploy.export` (deploy/export.py is
    # the library, which forwards to it), a package's __main__.py, or the module itself.
    path = os.path.join(ROOT, *module.split("."))
    cli = os.path.join(ROOT, module.split(".")[0], "cli", module.split(".")[-1] + ".py")  # cafe_tf.flops's
    for candidate in (path + "_main.py", cli, os.path.join(path, "__main__.py"), path + ".py"):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"no program file for {module}")


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


# Tools started with no flags at all: each must refuse with exit code 2, naming the first missing flag.
TOOL_FIRST_MISSING = {
    "cafe_tf.check": "--model is required",
    "deploy.export": "--model is required",
    "deploy.verify": "--model is required",
    "deploy.edgetpu": "--model is required",
    "deploy.benchmark": "--target is required",
    "deploy.latency_table": "--out is required",
}


def _run(args, **kw):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.mark.parametrize("module", list(TOOL_FIRST_MISSING))
def test_tools_share_the_usage_error_frame(module):
    proc = _run([module])
    name = module.split(".")[-1]
    assert proc.returncode == 2, proc.stderr
    assert f"{name}: usage error: {TOOL_FIRST_MISSING[module]}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failed_tool_prints_one_line_and_exits_1(tmp_path):
    (tmp_path / "m.tflite").write_bytes(b"not a model at all")
    proc = _run(["deploy.edgetpu", f"--model={tmp_path / 'm.tflite'}", f"--out={tmp_path / 'edgetpu.json'}"])
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edgetpu:")]
    assert lines == [f"edgetpu: error: {str(tmp_path / 'm.tflite')!r} is not a TFLite model: file identifier b'a mo', "
                     "expected b'TFL3' "
                     "(a .tflite written by the TFLite converter / deploy.export)"], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cafe_tf_command_lists_and_runs_every_program():
    from cafe_tf.cli.main import PROGRAMS

    listing = _run(["cafe_tf", "--help"])
    assert listing.returncode == 0, listing.stderr
    assert all(f"  {name} " in listing.stdout for name in PROGRAMS), listing.stdout
    # Every program of the table is one of those whose --help is checked above.
    assert {module.removesuffix("_main") for module, _ in PROGRAMS.values()} <= set(PROGRAMS_BY_MODULE), PROGRAMS
    via_command = _run(["cafe_tf", "check", "--help"])
    direct = _run(["cafe_tf.cli.check", "--help"])
    assert via_command.returncode == direct.returncode == 0
    assert via_command.stdout == direct.stdout


def test_cafe_tf_command_refuses_an_unknown_program():
    proc = _run(["cafe_tf", "trian"])
    assert proc.returncode == 2
    assert proc.stderr.startswith("cafe-tf: usage error: unknown program 'trian'; valid programs: pipeline, ")


def test_cafe_tf_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "cafe-tf")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "programs:" in proc.stdout, proc.stderr


def test_one_usage_error_class_for_every_program():
    # deploy's library raises the frame's own class, so every program maps it to exit code 2.
    from cafe_tf import programs
    from deploy import errors

    assert errors.UsageError is programs.UsageError
    assert not issubclass(errors.DeployError, programs.UsageError)
