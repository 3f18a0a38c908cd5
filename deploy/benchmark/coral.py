"""Coral target: the Edge TPU delegate (libedgetpu) through LiteRT's interpreter.

The model must be compiled by ``edgetpu_compiler`` (it then holds an ``edgetpu-custom-op``). The
runtime library is looked up before LiteRT's ``load_delegate`` is called, so a machine without it
gets one clear message instead of LiteRT's traceback. No Coral device or libedgetpu is part of the
tests: only the "not installed" path is exercised by them.
"""

from __future__ import annotations

import ctypes
import platform
import time
from typing import Any

from deploy.benchmark import host, schema
from deploy.errors import DeployError

EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}.get(
    platform.system(), "libedgetpu.so.1"
)
INSTALL_HINT = (
    "install the Edge TPU runtime (Debian/Ubuntu: `apt-get install libedgetpu1-std` from Coral's apt "
    "repository, https://coral.ai/docs/accelerator/get-started/) and connect a Coral USB Accelerator, "
    "or run on a Coral Dev Board"
)


def load_edgetpu_delegate(library: str | None = None, device: str | None = None):
    """The Edge TPU delegate, or :class:`DeployError` naming what is missing (library or device)."""
    library = library or EDGETPU_LIBRARY
    try:
        ctypes.CDLL(library)
    except OSError as e:
        raise DeployError(f"the Edge TPU runtime library {library!r} cannot be loaded ({e}); {INSTALL_HINT}") from None
    from ai_edge_litert.interpreter import load_delegate

    options = {"device": device} if device else {}
    try:
        return load_delegate(library, options)
    except (ValueError, RuntimeError, OSError) as e:
        where = f"device {device!r}" if device else "any Edge TPU device"
        raise DeployError(
            f"{library} loaded but the delegate could not open {where} ({str(e).strip()}); check that the "
            "Coral device is connected (`lsusb` shows 'Global Unichip' or 'Google Inc.') and accessible"
        ) from None


def benchmark_coral(
    model_path: str,
    threads: int = 1,
    runs: int = 100,
    warmup: int = 10,
    library: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Benchmarks an Edge TPU-compiled ``model_path``; returns the ``benchmark.json`` payload."""
    from deploy import tflite_model

    data = tflite_model.read_model_bytes(model_path)
    delegate = load_edgetpu_delegate(library, device)
    summary = tflite_model.summarize(data)
    if not any(op.op == "edgetpu-custom-op" for op in summary.ops):
        raise DeployError(
            f"{model_path!r} has no edgetpu-custom-op, so nothing would run on the Edge TPU; compile it first: "
            f"`edgetpu_compiler {model_path}` (check readiness with `python -m deploy.edgetpu --model {model_path}`)"
        )
    start = time.perf_counter_ns()
    interpreter = host.make_interpreter(data, threads, use_xnnpack=False, delegates=[delegate], name=model_path)
    init_ms = (time.perf_counter_ns() - start) / 1e6
    host.fill_inputs(interpreter)
    samples, first_ms = host.time_invokes(interpreter, runs, warmup)
    environment = schema.host_environment() | {"edgetpu_library": library or EDGETPU_LIBRARY, "edgetpu_device": device}
    return schema.make_record(
        model_path,
        target="coral",
        threads=threads,
        delegate="edgetpu",
        warmup=warmup,
        runs=runs,
        latency_ms=schema.latency_stats(samples),
        environment=environment,
        init_ms=init_ms,
        first_inference_ms=first_ms,
        peak_memory_mb=host.peak_rss_mb(),
        memory_scope="peak RSS of the benchmarking process on the host (Edge TPU memory is not visible)",
    )
