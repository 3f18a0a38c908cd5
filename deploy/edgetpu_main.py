r"""Edge TPU readiness of a ``.tflite``, and edgetpu_compiler's report when it is installed; writes edgetpu.json.

    python -m deploy.edgetpu --model slim_int8.tflite --out edgetpu.json [--nocompile] [--min_runtime 14]

The checks (int8/uint8 tensors, static shapes, batch 1, supported ops and their constraints, the ops
that would fall back to the CPU, op versions compiler 16.0 rejects) are in deploy/edgetpu.py.

Exit codes: 0 ready, 1 not ready (the report is written either way) or the model cannot be read,
2 usage error.
"""

from __future__ import annotations

import os

from absl import flags

from cafe_tf import programs
from cafe_tf.errors import UsageError
from deploy import edgetpu
from deploy.errors import DeployError


def define_flags() -> None:
    """The program's flags."""
    flags.DEFINE_string("model", None, "the .tflite to check (an int8 export: deploy.export --quant int8 --io_type int8)")
    flags.DEFINE_string("out", None, "where to write the JSON report (edgetpu.json)")
    flags.DEFINE_integer("min_runtime", edgetpu.DEFAULT_MIN_RUNTIME, "Edge TPU runtime version to check op support against")
    flags.DEFINE_bool("compile", True, "also run edgetpu_compiler when it is on PATH")
    flags.DEFINE_string("compiler_out_dir", None, "folder for the compiled model (default: beside --out)")
    flags.DEFINE_integer("compiler_timeout", 600, "seconds to wait for edgetpu_compiler")


def main() -> None:
    """Checks the flags, runs the readiness check (and the compiler), writes and prints the report."""
    f = flags.FLAGS
    model = programs.require_file(f.model, "model")
    if not f.out:
        raise UsageError("--out is required: where to write the JSON report")
    if f.min_runtime < 1:
        raise UsageError(f"--min_runtime must be >= 1, got {f.min_runtime}")
    report = edgetpu.readiness(model, min_runtime=f.min_runtime)
    compiler = {"available": edgetpu.compiler_path() is not None}
    if f.compile:
        out_dir = f.compiler_out_dir or os.path.dirname(os.path.abspath(f.out))
        compiler = edgetpu.run_compiler(os.path.abspath(model), out_dir, timeout_s=f.compiler_timeout)
    elif not compiler["available"]:
        compiler["message"] = f"{edgetpu.COMPILER} is not on PATH"
    edgetpu.write_report(f.out, {"model": os.path.abspath(model), "readiness": report, "compiler": compiler})
    verdict = "READY" if report["ready"] else "NOT READY"
    print(f"edgetpu: {verdict}: {report['ops_on_edgetpu']}/{report['num_ops']} ops would map to the Edge TPU")
    for problem in report["model_checks"]["problems"]:
        print(f"edgetpu: model: {problem}")
    for op in report["cpu_ops"]:
        print(f"edgetpu: CPU fallback: op {op['index']} {op['op']}: {op['reason']}")
    for rejected in report["compiler_would_reject"]:
        print(f"edgetpu: op version: {rejected}")
    if compiler.get("available") and "report" in compiler:
        r = compiler["report"]
        print(f"edgetpu: compiler {r['compiler_version']}: {r['status']}, {r['ops_on_edgetpu']} ops on the Edge TPU, "
              f"{r['ops_on_cpu']} on the CPU, on-chip {r['on_chip_memory_used_bytes']} B, "
              f"off-chip {r['off_chip_memory_used_bytes']} B")
    else:
        print(f"edgetpu: {compiler.get('message', edgetpu.COMPILER + ' not run')}")
    print(f"edgetpu: wrote {f.out}")
    if not report["ready"]:
        raise DeployError(
            f"{model} is not ready for the Edge TPU ({report['ops_on_cpu']} of {report['num_ops']} ops would run on "
            f"the CPU{', model checks failed' if report['model_checks']['problems'] else ''}"
            f"{', op versions too new for compiler 16.0' if report['compiler_would_reject'] else ''}); details in {f.out}"
        )


if __name__ == "__main__":
    define_flags()
    programs.run_tool(main)
