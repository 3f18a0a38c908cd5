r"""Measure a per-layer latency table for ``max_latency_ms`` search budgets.

    python -m deploy.latency_table --model_name cnn_small --out latency_table.json \
        [--model M.keras] [--input_size 28] [--quant fp32] [--threads 1] \
        [--calibration_subnets 6 --holdout_subnets 8 --fractions 0.25,0.5,0.75,1.0]
    python -m deploy.latency_table --method op_profile --target host --benchmark_model /path/benchmark_model ...
    python -m deploy.latency_table --method op_profile --target android --benchmark_model android_benchmark_model \
        [--serial S] [--adb /path/adb] ...

Random sub-networks of the model are sampled. ``--method isolated`` (host only, the default) times
each layer configuration alone with the LiteRT interpreter; ``--method op_profile`` profiles whole
subnets with TFLite's ``benchmark_model --enable_op_profiling=true`` (run here, or over adb on
Android) and takes each op's time in place (deploy/op_profile.py). The whole calibration subnets fit
``predicted = constant_ms + scale * sum(layer_ms)``; the held-out ones give the table's error (mean,
90th percentile and max of the relative error), which the search's latency check allows.

Exit codes: 0 written, 1 the measurement failed, 2 usage error.
"""

from __future__ import annotations

from absl import flags

from cafe_tf import programs
from cafe_tf.errors import UsageError
from deploy import latency_table


def define_flags() -> None:
    """The program's flags."""
    flags.DEFINE_string("model_name", "cnn_small", "a cafe_tf.models name whose width space to measure (see --model)")
    flags.DEFINE_string("model", None, "a .keras model to measure instead of --model_name")
    flags.DEFINE_integer("input_size", None, "input height = width for --model_name (default: the model's own)")
    flags.DEFINE_integer("num_classes", None, "classes for --model_name (default: the model's own)")
    flags.DEFINE_enum("quant", "fp32", list(latency_table.QUANTS), "quantization the table is for (as deploy.export converts)")
    flags.DEFINE_integer("threads", 1, "interpreter threads")
    flags.DEFINE_integer("calibration_subnets", 6, "subnets (the full model included) whose layers are measured and fit the model")
    flags.DEFINE_integer("holdout_subnets", 8, "subnets only used to report the table's accuracy")
    flags.DEFINE_list("fractions", ["0.25", "0.5", "0.75", "1.0"], "channel fractions a group may keep in the sampled subnets")
    flags.DEFINE_integer("channel_multiple", 1, "sampled widths rounded to multiples of it (or full), as the search's")
    flags.DEFINE_integer("rounds", 2, "interleaved measurement rounds (best of)")
    flags.DEFINE_integer("seed", 0, "subnet sampling seed")
    flags.DEFINE_enum("method", "isolated", list(latency_table.METHODS),
                      "isolated: each layer timed alone (host); op_profile: per-op profiles of whole subnets")
    flags.DEFINE_enum("target", "host", list(latency_table.TARGETS), "where the table is measured (op_profile)")
    flags.DEFINE_string("benchmark_model", None, "op_profile: TFLite's benchmark_model binary for the target")
    flags.DEFINE_integer("profile_runs", 50, "op_profile: benchmark_model --num_runs per subnet")
    flags.DEFINE_string("serial", None, "android: the device serial (default: the only one attached)")
    flags.DEFINE_string("adb", None, "android: the adb executable (default: adb on PATH)")
    flags.DEFINE_string("out", None, "where to write the table (latency_table.json)")


def _model(f: flags.FlagValues):
    if f.model:
        from deploy.export import load_keras_model

        return load_keras_model(programs.require_file(f.model, "model"))
    from cafe_tf import models

    if f.model_name not in models.names():
        raise UsageError(f"--model_name={f.model_name!r} is not a model; valid: {models.names()}")
    shape = None
    if f.input_size:
        channels = models.DEFAULT_INPUT[f.model_name][0][-1]
        shape = (f.input_size, f.input_size, channels)
    return models.build(f.model_name, input_shape=shape, num_classes=f.num_classes)


def main() -> None:
    """Checks the flags, measures the table, writes it and prints its accuracy on the held-out subnets."""
    f = flags.FLAGS
    if not f.out:
        raise UsageError("--out is required: where to write the latency table")
    try:
        fractions = [float(v) for v in f.fractions]
    except ValueError:
        raise UsageError(f"--fractions must be numbers in (0, 1], got {f.fractions}") from None
    say = lambda m: print(f"latency_table: {m}", flush=True)  # noqa: E731
    if f.method == "isolated":
        if f.target != "host":
            raise UsageError(f"--method isolated measures on the host only, got --target {f.target}; use --method op_profile")
        table = latency_table.build_table(
            _model(f), quant=f.quant, threads=f.threads, calibration_subnets=f.calibration_subnets,
            holdout_subnets=f.holdout_subnets, fractions=fractions, seed=f.seed, rounds=f.rounds,
            channel_multiple=f.channel_multiple, progress=say,
        )
    else:
        from deploy import op_profile

        if not f.benchmark_model:
            raise UsageError("--method op_profile needs --benchmark_model=PATH: TFLite's benchmark_model for the "
                             "target (the installed LiteRT Python packages have no per-op profiler)")
        if f.target == "host":
            profiler = op_profile.HostProfiler(f.benchmark_model, threads=f.threads, runs=f.profile_runs)
        else:
            profiler = op_profile.AndroidProfiler(f.benchmark_model, serial=f.serial, adb=f.adb, threads=f.threads,
                                                  runs=f.profile_runs)
        table = op_profile.build_profiled_table(
            _model(f), profiler, f.target, quant=f.quant, calibration_subnets=f.calibration_subnets,
            holdout_subnets=f.holdout_subnets, fractions=fractions, seed=f.seed,
            channel_multiple=f.channel_multiple, progress=say,
        )
    table.save(f.out)
    held, fit = table.info["holdout"], table.info["fit"]
    print(f"latency_table: {len(table.entries)} layer entries; {latency_table.FORMULA} with "
          f"constant_ms={table.constant_ms:.4f}, scale={table.scale:.4f}")
    print(f"latency_table: fit on {fit['subnets']} calibration subnets: mean |error| {fit['mean_abs_error_pct']:.1f}%")
    print(f"{'held-out subnet':<16} {'measured ms':>12} {'predicted ms':>13} {'error':>8}")
    for row in held["rows"]:
        print(f"{row['name']:<16} {row['measured_ms']:>12.4f} {row['predicted_ms']:>13.4f} {row['error_pct']:>7.1f}%")
    if held["subnets"]:
        print(
            f"latency_table: held-out error over {held['subnets']} subnets: mean |error| {held['mean_abs_error_pct']:.1f}%, "
            f"p90 {held['p90_abs_error_pct']:.1f}% (the table's stated error), max {held['max_abs_error_pct']:.1f}%; "
            f"{held['within_10pct'] * 100:.0f}% within +-10%; measured in {table.info['measurement_s']} s"
        )
    else:
        print("latency_table: no held-out subnets: the table states no error (--holdout_subnets > 0 to measure it)")
    print(f"latency_table: wrote {f.out}")


if __name__ == "__main__":
    define_flags()
    programs.run_tool(main)
