"""Host latency of deployed models: int8 vs fp32, and pruned (narrower) vs unpruned against MACs.

Models (cafe_tf.models): ResNet-20 at the Fashion-MNIST shape (28x28x1, 10 classes) and MobileNetV2
at 224x224x3 (1000 classes), each at width_mult 1.0 and 0.5 (the narrower one stands in for a
pruned network: same depth, fewer channels). Every model is exported with deploy.export (fp32, and
full int8 with int8 input/output, static batch 1) and timed with LiteRT + XNNPACK; measurements are
interleaved over all models in several rounds, so background load hits them alike, and each
model's figure is the median over rounds of the per-round median.

Printed: per model the MACs and fp32 / int8 latency with their ratio (goal: int8 >= 2x faster), and
for each architecture the latency ratio 0.5x/1.0x against the MACs ratio (goal: within 20%). A
cross-check of one model against the ``litert-benchmark`` tool of the ai-edge-litert wheel ends it.

    python benchmarks/deploy_latency.py [--threads 1] [--rounds 5] [--runs 20] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np

from cafe_tf import models
from cafe_tf.flops import count_keras_model
from deploy import export
from deploy.benchmark import host

CASES = (
    ("resnet20", (28, 28, 1), 10),
    ("mobilenet_v2", (224, 224, 3), 1000),
)
WIDTHS = (1.0, 0.5)


def measure(flatbuffers: dict[str, bytes], threads: int, rounds: int, runs: int) -> dict[str, float]:
    """Median over interleaved rounds of each model's per-round median latency (ms)."""
    interpreters = {}
    for name, data in flatbuffers.items():
        interpreter = host.make_interpreter(data, threads, use_xnnpack=True, name=name)
        host.fill_inputs(interpreter)
        for _ in range(3):
            interpreter.invoke()
        interpreters[name] = interpreter
    per_round: dict[str, list[float]] = {name: [] for name in interpreters}
    for _ in range(rounds):
        for name, interpreter in interpreters.items():
            samples, _ = host.time_invokes(interpreter, runs, warmup=1)
            per_round[name].append(float(np.median(samples)))
    return {name: float(np.median(v)) for name, v in per_round.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default=None, help="also write the figures as JSON")
    args = parser.parse_args()

    started = time.time()
    flatbuffers, macs = {}, {}
    calibration_rng = np.random.default_rng(0)
    for arch, shape, classes in CASES:
        for width in WIDTHS:
            model = models.build(arch, input_shape=shape, num_classes=classes, width_mult=width)
            key = f"{arch}@{width}"
            macs[key] = count_keras_model(model)["macs"]
            calibration = calibration_rng.standard_normal((16, *shape)).astype(np.float32)
            with tempfile.TemporaryDirectory() as folder:
                for quant in ("fp32", "int8"):
                    path = os.path.join(folder, f"{arch}_{width}_{quant}.tflite")
                    export.export_tflite(model, quant, path, representative_data=calibration if quant == "int8" else None,
                                         io_type="int8" if quant == "int8" else "float32")
                    with open(path, "rb") as f:
                        flatbuffers[f"{key}/{quant}"] = f.read()
            print(f"exported {key}: {macs[key] / 1e6:.1f} M MACs", flush=True)
    latency = measure(flatbuffers, args.threads, args.rounds, args.runs)

    print(f"\nhost: LiteRT + XNNPACK, {args.threads} thread(s), {args.rounds} interleaved rounds x {args.runs} runs, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'model':<20} {'MACs (M)':>9} {'fp32 ms':>9} {'int8 ms':>9} {'fp32/int8':>10}")
    results = {"threads": args.threads, "rounds": args.rounds, "runs": args.runs, "models": {}, "pruning": {}}
    for key in macs:
        fp32, int8 = latency[f"{key}/fp32"], latency[f"{key}/int8"]
        print(f"{key:<20} {macs[key] / 1e6:>9.1f} {fp32:>9.3f} {int8:>9.3f} {fp32 / int8:>9.2f}x")
        results["models"][key] = {"macs": macs[key], "fp32_ms": fp32, "int8_ms": int8, "int8_speedup": fp32 / int8}
    print(f"\n{'pruned vs unpruned':<28} {'MACs ratio':>10} {'latency ratio':>14} {'latency/MACs':>13}")
    for arch, _, _ in CASES:
        small, full = f"{arch}@{WIDTHS[1]}", f"{arch}@{WIDTHS[0]}"
        macs_ratio = macs[small] / macs[full]
        for quant in ("fp32", "int8"):
            lat_ratio = latency[f"{small}/{quant}"] / latency[f"{full}/{quant}"]
            print(f"{arch + ' ' + quant + ' 0.5x/1.0x':<28} {macs_ratio:>10.3f} {lat_ratio:>14.3f} {lat_ratio / macs_ratio:>12.2f}x")
            results["pruning"][f"{arch}/{quant}"] = {"macs_ratio": macs_ratio, "latency_ratio": lat_ratio}

    tool = os.path.join(os.path.dirname(sys.executable), "litert-benchmark")
    if os.path.exists(tool):
        key = f"{CASES[0][0]}@{WIDTHS[0]}/fp32"
        with tempfile.TemporaryDirectory() as folder:
            path, out = os.path.join(folder, "m.tflite"), os.path.join(folder, "r.json")
            with open(path, "wb") as f:
                f.write(flatbuffers[key])
            subprocess.run([tool, "--model", path, "--num_runs", str(args.runs * args.rounds), "--warmup_runs", "5",
                            "--num_threads", str(args.threads), "--result_json", out], check=True, capture_output=True)
            with open(out) as f:
                theirs = json.load(f)["latency"]["median_ms"]
            ours = host.benchmark_host(path, threads=args.threads, runs=args.runs * args.rounds)["latency_ms"]["p50"]
        print(f"\ncross-check {key}: deploy.benchmark host p50 {ours:.3f} ms vs litert-benchmark median {theirs:.3f} ms "
              f"(ratio {ours / theirs:.2f})")
        results["cross_check"] = {"model": key, "deploy_benchmark_p50_ms": ours, "litert_benchmark_median_ms": theirs}
    print(f"\n({time.time() - started:.0f} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
