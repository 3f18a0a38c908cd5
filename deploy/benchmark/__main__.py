"""Benchmark a .tflite on the host, an Android phone over adb, or a Coral Edge TPU; one benchmark.json.

Usage::

    python -m deploy.benchmark --target host --model m.tflite --out bench.json [--threads 1 --runs 100 --warmup 10]
    python -m deploy.benchmark --target host --model a.tflite --out a.json --model b.tflite --out b.json --rounds 5
    python -m deploy.benchmark --target android --model m.tflite --out bench.json \\
        --benchmark_binary android_aarch64_benchmark_model [--serial SERIAL --taskset f0 --threads 4] \\
        [--use_gpu | --use_nnapi | --nouse_xnnpack] [--noenable_op_profiling]
    python -m deploy.benchmark --target coral --model m_edgetpu.tflite --out bench.json
    python -m deploy.benchmark --target host --bundle W/bundle/bundle.json [--runs 50 --rounds 5]

host: LiteRT's interpreter with XNNPACK (``--nouse_xnnpack`` for the builtin kernels); several
``--model``/``--out`` pairs are timed in ``--rounds`` interleaved rounds (A B A B ...), so background
load hits them alike, and each gets its own benchmark.json. ``--bundle`` times every entry of a multi-width bundle's manifest
(``python -m cafe_tf.bundle``) the same way, after checking each file's SHA-256, and writes each
entry's latency into the manifest (``latency.host``, with the CPU), atomically. android: the
official TFLite benchmark_model binary (supplied with --benchmark_binary) pushed to /data/local/tmp
and run over adb. coral: the Edge TPU delegate (libedgetpu) through LiteRT. The schema of
benchmark.json is documented in deploy/benchmark/schema.py. Exit codes: 0 done, 1 the benchmark
failed (no adb, no device, no Edge TPU runtime, ... with one line saying which), 2 bad usage.
"""

from __future__ import annotations

from absl import flags

from cafe_tf import programs
from cafe_tf.errors import UsageError
from deploy.benchmark import schema


def define_flags() -> None:
    """The program's flags."""
    flags.DEFINE_enum("target", None, list(schema.TARGETS), "where to run: host, android (adb) or coral (Edge TPU)")
    flags.DEFINE_multi_string("model", None, "the .tflite to benchmark (host: repeat to time several, interleaved)")
    flags.DEFINE_multi_string("out", None, "where to write benchmark.json (one per --model, in the same order)")
    flags.DEFINE_string("bundle", None, "host: a bundle.json of `python -m cafe_tf.bundle`: time every entry "
                        "(interleaved) and write the latencies into it (instead of --model / --out)")
    flags.DEFINE_integer("rounds", 1, "host: interleaved rounds over the models (--runs are split over them)")
    flags.DEFINE_integer("threads", 1, "CPU threads (benchmark_model --num_threads on android)")
    flags.DEFINE_integer("runs", 100, "timed runs (benchmark_model --num_runs: a minimum, it runs for >= 1 s)")
    flags.DEFINE_integer("warmup", 10, "warm-up runs before timing")
    flags.DEFINE_bool("use_xnnpack", True, "host / android: use the XNNPACK CPU delegate")
    # android
    flags.DEFINE_string("serial", None, "android: adb serial of the device (default: the only one attached)")
    flags.DEFINE_string("adb", None, "android: adb executable (default: adb on PATH)")
    flags.DEFINE_string("benchmark_binary", None, "android: the official TFLite benchmark_model binary for the device's ABI")
    flags.DEFINE_bool("use_gpu", False, "android: benchmark_model --use_gpu")
    flags.DEFINE_bool("use_nnapi", False, "android: benchmark_model --use_nnapi")
    flags.DEFINE_bool("enable_op_profiling", True, "android: per-op profile (benchmark_model --enable_op_profiling)")
    flags.DEFINE_bool("report_peak_memory_footprint", True, "android: benchmark_model --report_peak_memory_footprint")
    flags.DEFINE_string("taskset", None, "android: run under `taskset MASK` (hex CPU mask, e.g. f0 for the big cores)")
    flags.DEFINE_float("adb_timeout", 60.0, "android: seconds to wait for each adb command")
    flags.DEFINE_float("run_timeout", 900.0, "android: seconds to wait for benchmark_model")
    flags.DEFINE_bool("cleanup", True, "android: delete the pushed model afterwards")
    # coral
    flags.DEFINE_string("edgetpu_library", None, "coral: Edge TPU runtime library (default libedgetpu.so.1)")
    flags.DEFINE_string("edgetpu_device", None, "coral: device, e.g. usb:0 or pci:0 (default: the first)")


def main() -> None:
    """Checks the flags, runs the benchmark on the chosen target and writes benchmark.json."""
    FLAGS = flags.FLAGS
    if FLAGS.target is None:
        raise UsageError(f"--target is required: one of {list(schema.TARGETS)}")
    if FLAGS.bundle is not None:
        return benchmark_bundle(FLAGS)
    if not FLAGS.model:
        raise UsageError("--model is required: the .tflite to benchmark")
    paths = [programs.require_file(m, "model") for m in FLAGS.model]
    model = paths[0]
    if not FLAGS.out:
        raise UsageError("--out is required: where to write benchmark.json")
    if len(FLAGS.out) != len(paths):
        raise UsageError(f"give one --out per --model: got {len(paths)} --model and {len(FLAGS.out)} --out")
    if len(paths) > 1 and FLAGS.target != "host":
        raise UsageError(f"several --model are timed on --target host only (got --target {FLAGS.target})")
    _check_timing_flags(FLAGS)
    android_only = [n for n in ("serial", "benchmark_binary", "taskset") if FLAGS[n].present and FLAGS.target != "android"]
    android_only += [n for n in ("use_gpu", "use_nnapi") if FLAGS[n].value and FLAGS.target != "android"]
    if android_only:
        raise UsageError(f"--{', --'.join(android_only)} only apply to --target android (got --target {FLAGS.target})")
    if FLAGS.target == "host":
        from deploy.benchmark.host import benchmark_host_models

        records = benchmark_host_models(paths, threads=FLAGS.threads, runs=FLAGS.runs, warmup=FLAGS.warmup,
                                        rounds=FLAGS.rounds, use_xnnpack=FLAGS.use_xnnpack)
    elif FLAGS.target == "android":
        from deploy.benchmark.android import benchmark_android

        if FLAGS.use_gpu and FLAGS.use_nnapi:
            raise UsageError("choose one of --use_gpu and --use_nnapi")
        if not FLAGS.benchmark_binary:
            raise UsageError(
                "--benchmark_binary is required for --target android: the official TFLite benchmark_model "
                "binary for the phone's ABI (e.g. the android_aarch64 prebuilt)"
            )
        programs.require_file(FLAGS.benchmark_binary, "benchmark_binary")
        record = benchmark_android(
            model,
            FLAGS.benchmark_binary,
            serial=FLAGS.serial,
            threads=FLAGS.threads,
            runs=FLAGS.runs,
            warmup=FLAGS.warmup,
            use_xnnpack=FLAGS.use_xnnpack,
            use_gpu=FLAGS.use_gpu,
            use_nnapi=FLAGS.use_nnapi,
            op_profiling=FLAGS.enable_op_profiling,
            report_memory=FLAGS.report_peak_memory_footprint,
            taskset=FLAGS.taskset,
            adb=FLAGS.adb,
            adb_timeout_s=FLAGS.adb_timeout,
            run_timeout_s=FLAGS.run_timeout,
            cleanup=FLAGS.cleanup,
        )
        records = [record]
    else:
        from deploy.benchmark.coral import benchmark_coral

        record = benchmark_coral(
            model, threads=FLAGS.threads, runs=FLAGS.runs, warmup=FLAGS.warmup,
            library=FLAGS.edgetpu_library, device=FLAGS.edgetpu_device,
        )
        records = [record]
    for record, out in zip(records, FLAGS.out):
        schema.write_benchmark(out, record)
        lat = record["latency_ms"]
        p50 = "n/a" if lat["p50"] is None else f"{lat['p50']:.3f}"
        memory = "" if record["peak_memory_mb"] is None else f", peak memory {record['peak_memory_mb']:.1f} MB"
        print(
            f"benchmark: {record['target']} ({record['delegate']}, {record['threads']} thread(s)): "
            f"{record['model']['name']} mean {lat['mean']:.3f} ms, p50 {p50} ms over {record['runs']} runs{memory}"
            f"\nbenchmark: wrote {out}"
        )


def _check_timing_flags(FLAGS) -> None:
    if FLAGS.rounds < 1 or FLAGS.rounds > FLAGS.runs:
        raise UsageError(f"--rounds must be between 1 and --runs ({FLAGS.runs}), got {FLAGS.rounds}")
    if FLAGS.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {FLAGS.threads}")
    if FLAGS.runs < 1:
        raise UsageError(f"--runs must be >= 1, got {FLAGS.runs}")
    if FLAGS.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {FLAGS.warmup}")


def benchmark_bundle(FLAGS) -> None:
    """--bundle: times every entry of the manifest on the host in interleaved rounds and writes the latencies into it."""
    from cafe_tf import bundle as bundle_lib
    from deploy.benchmark.host import benchmark_host_models

    path = programs.require_file(FLAGS.bundle, "bundle")
    if FLAGS.target != "host":
        raise UsageError(f"--bundle is timed on --target host only (got --target {FLAGS.target}); time a bundle's "
                         "files one by one with --model on other targets")
    if FLAGS.model or FLAGS.out:
        raise UsageError("give either --bundle (its latencies go into the manifest) or --model/--out, not both")
    _check_timing_flags(FLAGS)
    bundle = bundle_lib.load_bundle(path)  # every file must be the one the manifest records (SHA-256)
    records = benchmark_host_models([e["path"] for e in bundle["entries"]], threads=FLAGS.threads, runs=FLAGS.runs,
                                    warmup=FLAGS.warmup, rounds=FLAGS.rounds, use_xnnpack=FLAGS.use_xnnpack)
    bundle = bundle_lib.record_latencies(path, "host", records)
    print("\n".join(bundle_lib.summary_lines(bundle) + [f"benchmark: wrote the host latencies into {path}"]))


if __name__ == "__main__":
    define_flags()
    programs.run_tool(main)
