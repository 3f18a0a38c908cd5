"""``benchmark.json``: the one output schema of every benchmark target, written and validated here.

Schema ``benchmark`` version 1 (a versioned artifact of ``cafe_tf.io``)::

    {
      "schema": "benchmark", "schema_version": 1,
      "model": {"path": str, "name": str, "size_bytes": int, "sha256": str},
      "target": "host" | "android" | "coral",
      "threads": int >= 1,
      "delegate": "xnnpack" | "none" | "gpu" | "nnapi" | "edgetpu",
      "warmup": int >= 0,            # warm-up runs before timing
      "runs": int >= 1,              # timed runs
      "latency_ms": {"mean", "std", "min", "max", "p50", "p90", "p99"},
                                     # mean is always a number; a statistic the target's tool does
                                     # not report is null (Android's benchmark_model gives avg, std,
                                     # min, max and, in recent builds, p5 / median / p95)
      "init_ms": float | null,       # interpreter creation + allocation
      "first_inference_ms": float | null,
      "peak_memory_mb": float | null,
      "memory_scope": str | null,    # what peak_memory_mb measures
      "op_profile": list | null,     # Android with --enable_op_profiling: per-op and per-type times
      "environment": {...},          # machine, OS, runtime versions / device properties; on the
                                     # host also cpu_features ({feature: bool} of CPU_FEATURES for
                                     # the machine's architecture) and int8_dot_product (bool, or
                                     # null when /proc/cpuinfo cannot be read)
      "created": ISO-8601 UTC time,
      "tool": "deploy.benchmark"
    }
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SCHEMA = "benchmark"
VERSION = 1
TARGETS = ("host", "android", "coral")
DELEGATES = ("xnnpack", "none", "gpu", "nnapi", "edgetpu")
LATENCY_KEYS = ("mean", "std", "min", "max", "p50", "p90", "p99")
# SIMD and int8 dot-product features (as /proc/cpuinfo names them) that decide whether int8 beats fp32.
CPU_FEATURES = {
    "x86_64": ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8"),
    "aarch64": ("asimd", "asimddp", "i8mm", "sve"),
}
# Of those, the ones that give int8 a dot-product instruction (x86 VNNI / AMX, Arm dotprod / i8mm).
INT8_DOT_PRODUCT = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
REQUIRED = ("model", "target", "threads", "delegate", "warmup", "runs", "latency_ms", "environment", "created")


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """Mean, std, min, max and the 50th / 90th / 99th percentiles of per-run latencies (ms)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min": float(x.min()),
        "max": float(x.max()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
    }


def model_record(path: str) -> dict[str, Any]:
    """Path, file name, size and SHA-256 of the benchmarked model file."""
    from cafe_tf.io import file_sha256

    return {
        "path": os.path.abspath(path),
        "name": os.path.basename(path),
        "size_bytes": os.path.getsize(path),
        "sha256": file_sha256(path),
    }


def cpu_info(cpuinfo: str, machine: str) -> dict[str, Any]:
    """CPU model, ``cpu_features`` and ``int8_dot_product`` from the text of /proc/cpuinfo.

    x86 lists features on ``flags`` lines, Arm on ``Features`` lines (where ``asimddp`` is dotprod);
    Arm kernels often print no model name, so the ``CPU part`` code stands in for it.
    """
    model, part, features = "", "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "cpu part" and not part:
            part = f"CPU part {value.strip()}"
        elif key in ("flags", "features"):
            features |= set(value.split())
    arch = "aarch64" if machine.lower() in ("aarch64", "arm64") else machine.lower().replace("amd64", "x86_64")
    wanted = CPU_FEATURES.get(arch, ())
    return {
        "cpu": model or part,
        "cpu_features": {name: name in features for name in wanted},
        "int8_dot_product": any(name in features for name in INT8_DOT_PRODUCT) if features else None,
    }


def host_environment() -> dict[str, Any]:
    """The machine and runtime a host / Coral benchmark ran on, with the CPU's SIMD features."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = cpu_info(f.read(), platform.machine())
    except OSError:  # not Linux: the model name only, features unknown
        cpu = {"cpu": "", "cpu_features": {}, "int8_dot_product": None}
    cpu["cpu"] = cpu["cpu"] or platform.processor() or ""
    try:
        from importlib import metadata

        litert = metadata.version("ai-edge-litert")
    except Exception:  # the version lookup is best effort
        litert = None
    return {
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        **cpu,
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "ai_edge_litert": litert,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def host_line() -> str:
    """One line naming this host for a published timing: CPU model, cores, SIMD / dot-product features, load."""
    env = host_environment()
    features = ", ".join(name for name, present in env["cpu_features"].items() if present) or "none of note"
    load = env["load_average_1m"]
    return (f"{env['cpu'] or 'unknown CPU'}, {env['cpu_count']} cores; features: {features}"
            + (f"; load average {load:.1f}" if load is not None else ""))


def make_record(
    model_path: str,
    target: str,
    threads: int,
    delegate: str,
    warmup: int,
    runs: int,
    latency_ms: Mapping[str, float | None],
    environment: Mapping[str, Any],
    init_ms: float | None = None,
    first_inference_ms: float | None = None,
    peak_memory_mb: float | None = None,
    memory_scope: str | None = None,
    op_profile: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The payload of a ``benchmark.json`` (validated before it is returned)."""
    record = {
        "model": model_record(model_path),
        "target": target,
        "threads": int(threads),
        "delegate": delegate,
        "warmup": int(warmup),
        "runs": int(runs),
        "latency_ms": {k: (None if latency_ms.get(k) is None else float(latency_ms[k])) for k in LATENCY_KEYS}
        | {k: float(v) for k, v in latency_ms.items() if k not in LATENCY_KEYS and v is not None},
        "init_ms": init_ms,
        "first_inference_ms": first_inference_ms,
        "peak_memory_mb": peak_memory_mb,
        "memory_scope": memory_scope,
        "op_profile": op_profile,
        "environment": dict(environment),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tool": "deploy.benchmark",
        **(dict(extra) if extra else {}),
    }
    validate({"schema": SCHEMA, "schema_version": VERSION, **record})
    return record


def _number(value: Any, name: str, minimum: float = 0.0, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")


def _integer(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate(obj: Mapping[str, Any]) -> None:
    """Raises ValueError naming the first field of a benchmark record that breaks the schema."""
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise ValueError(f"missing keys {missing}")
    model = obj["model"]
    if not isinstance(model, Mapping) or not isinstance(model.get("path"), str):
        raise ValueError(f"model must be an object with a path, got {model!r}")
    _integer(model.get("size_bytes"), "model.size_bytes", 0)
    sha = model.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError(f"model.sha256 must be 64 hex digits, got {sha!r}")
    if obj["target"] not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {obj['target']!r}")
    if obj["delegate"] not in DELEGATES:
        raise ValueError(f"delegate must be one of {list(DELEGATES)}, got {obj['delegate']!r}")
    _integer(obj["threads"], "threads", 1)
    _integer(obj["warmup"], "warmup", 0)
    _integer(obj["runs"], "runs", 1)
    latency = obj["latency_ms"]
    if not isinstance(latency, Mapping):
        raise ValueError(f"latency_ms must be an object, got {latency!r}")
    for key in LATENCY_KEYS:
        if key not in latency:
            raise ValueError(f"latency_ms lacks {key!r}")
        _number(latency[key], f"latency_ms.{key}", allow_none=key != "mean")
    known = [latency[k] for k in ("min", "p50", "p90", "p99", "max") if latency.get(k) is not None]
    if any(a > b * (1 + 1e-9) + 1e-9 for a, b in zip(known, known[1:])):
        raise ValueError(f"latency_ms percentiles must satisfy min <= p50 <= p90 <= p99 <= max, got {dict(latency)}")
    for key in ("init_ms", "first_inference_ms", "peak_memory_mb"):
        _number(obj.get(key), key, allow_none=True)
    if not isinstance(obj["environment"], Mapping):
        raise ValueError("environment must be an object")
    if not isinstance(obj["created"], str):
        raise ValueError("created must be an ISO-8601 string")


def write_benchmark(path: str, record: Mapping[str, Any]) -> None:
    """Writes ``benchmark.json`` atomically after validating it."""
    from cafe_tf import io as cafe_io

    validate({"schema": SCHEMA, "schema_version": VERSION, **record})
    cafe_io.write_artifact(path, SCHEMA, VERSION, record)


def read_benchmark(path: str) -> dict[str, Any]:
    """Reads and validates a ``benchmark.json`` (raises ``cafe_tf.io.ArtifactError`` naming the problem)."""
    from cafe_tf import io as cafe_io

    return cafe_io.read_artifact(path, SCHEMA, (VERSION,), REQUIRED, validate)
