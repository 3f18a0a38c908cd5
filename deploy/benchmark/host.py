"""Host target: the LiteRT interpreter on this machine's CPU, with XNNPACK (the default) or without.

Inputs are random tensors of the model's input types (seeded); each timed run is one ``invoke()``
measured with ``time.perf_counter_ns``. ``init_ms`` covers interpreter creation and tensor
allocation (XNNPACK delegation included), ``first_inference_ms`` the first run. Peak memory is the
process's peak resident set size (``getrusage``), which includes Python and LiteRT themselves.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from deploy.benchmark import schema
from deploy.errors import DeployError


def fill_inputs(interpreter, seed: int = 0) -> None:
    """Sets every input of ``interpreter`` to random values of its dtype and shape."""
    rng = np.random.default_rng(seed)
    for detail in interpreter.get_input_details():
        dtype = np.dtype(detail["dtype"])
        shape = tuple(int(d) for d in detail["shape"])
        if dtype.kind == "f":
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            value = rng.integers(max(info.min, -128), min(info.max, 255) + 1, size=shape).astype(dtype)
        else:
            value = np.zeros(shape, dtype)
        interpreter.set_tensor(detail["index"], value)


def time_invokes(interpreter, runs: int, warmup: int) -> tuple[list[float], float]:
    """Runs ``warmup`` untimed then ``runs`` timed invokes; returns (per-run ms, first-run ms)."""
    if runs < 1:
        raise DeployError(f"runs must be >= 1, got {runs!r}")
    if warmup < 0:
        raise DeployError(f"warmup must be >= 0, got {warmup!r}")
    start = time.perf_counter_ns()
    interpreter.invoke()
    first_ms = (time.perf_counter_ns() - start) / 1e6
    for _ in range(max(0, warmup - 1)):
        interpreter.invoke()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        interpreter.invoke()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples, first_ms


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def make_interpreter(
    model: str | bytes, threads: int, use_xnnpack: bool = True, delegates: Sequence[Any] | None = None, name: str | None = None
):
    """A LiteRT interpreter with ``threads`` threads, XNNPACK on or off, allocated (``name`` labels errors)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from deploy import tflite_model

    data = model if isinstance(model, bytes) else tflite_model.read_model_bytes(model)
    resolver = OpResolverType.AUTO if use_xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = Interpreter(
            model_content=data,
            num_threads=threads,
            experimental_op_resolver_type=resolver,
            experimental_delegates=list(delegates) if delegates else None,
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        what = name or ("model bytes" if isinstance(model, bytes) else model)
        raise DeployError(f"LiteRT cannot load {what!r} (truncated or corrupt .tflite?): {str(e).strip().splitlines()[0]}") from None
    return interpreter


def benchmark_host(model_path: str, threads: int = 1, runs: int = 100, warmup: int = 10, use_xnnpack: bool = True, seed: int = 0) -> dict[str, Any]:
    """Benchmarks ``model_path`` on this machine; returns the ``benchmark.json`` payload."""
    return benchmark_host_models([model_path], threads, runs, warmup, 1, use_xnnpack, seed)[0]


def benchmark_host_models(
    model_paths: Sequence[str], threads: int = 1, runs: int = 100, warmup: int = 10, rounds: int = 1,
    use_xnnpack: bool = True, seed: int = 0,
) -> list[dict[str, Any]]:
    """Benchmarks several models in ``rounds`` interleaved rounds (A B A B ...), so background load
    hits them alike; each gets ``runs`` timed runs in all. Returns one ``benchmark.json`` payload each."""
    from deploy import tflite_model

    if threads < 1:
        raise DeployError(f"threads must be >= 1, got {threads!r}")
    if rounds < 1:
        raise DeployError(f"rounds must be >= 1, got {rounds!r}")
    if runs < rounds:
        raise DeployError(f"runs ({runs}) must be >= rounds ({rounds}): every round times each model at least once")
    interpreters, init_ms = [], []
    for path in model_paths:
        data = tflite_model.read_model_bytes(path)
        start = time.perf_counter_ns()
        interpreters.append(make_interpreter(data, threads, use_xnnpack, name=path))
        init_ms.append((time.perf_counter_ns() - start) / 1e6)
        fill_inputs(interpreters[-1], seed)
    samples: list[list[float]] = [[] for _ in model_paths]
    first_ms: list[float] = [0.0] * len(model_paths)
    for r in range(rounds):
        per_round = runs // rounds + (r < runs % rounds)
        for i, interpreter in enumerate(interpreters):
            # later rounds: one untimed invoke re-warms the caches the other models evicted
            timed, first = time_invokes(interpreter, per_round, warmup if r == 0 else 1)
            samples[i] += timed
            if r == 0:
                first_ms[i] = first
    environment = schema.host_environment()
    names = [os.path.basename(p) for p in model_paths]
    return [
        schema.make_record(
            path,
            target="host",
            threads=threads,
            delegate="xnnpack" if use_xnnpack else "none",
            warmup=warmup,
            runs=runs,
            latency_ms=schema.latency_stats(samples[i]),
            environment=environment,
            init_ms=init_ms[i],
            first_inference_ms=first_ms[i],
            peak_memory_mb=peak_rss_mb(),
            memory_scope="peak RSS of the benchmarking process (includes Python and LiteRT)",
            extra={"rounds": rounds, "interleaved_with": names[:i] + names[i + 1:]} if len(model_paths) > 1 or rounds > 1
            else None,
        )
        for i, path in enumerate(model_paths)
    ]
