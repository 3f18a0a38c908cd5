r"""Measure a per-layer latency table on this host (LiteRT) for ``max_latency_ms`` search budgets.

    python -m deploy.latency_table --model_name cnn_small --out latency_table.json \
        [--model M.keras] [--input_size 28] [--quant fp32] [--threads 1] \
        [--calibration_subnets 6 --holdout_subnets 8 --fractions 0.25,0.5,0.75,1.0]

Random sub-networks of the model are sampled; each layer configuration is timed alone, the whole
calibration subnets fit ``predicted = constant_ms + scale * sum(layer_ms)``, and the held-out ones
report how many are predicted within +-10% (deploy/latency_table.py).

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
    table = latency_table.build_table(
        _model(f), quant=f.quant, threads=f.threads, calibration_subnets=f.calibration_subnets,
        holdout_subnets=f.holdout_subnets, fractions=fractions, seed=f.seed, rounds=f.rounds,
        channel_multiple=f.channel_multiple,
        progress=lambda m: print(f"latency_table: {m}", flush=True),
    )
    table.save(f.out)
    held, fit = table.info["holdout"], table.info["fit"]
    print(f"latency_table: {len(table.entries)} layer entries; {latency_table.FORMULA} with "
          f"constant_ms={table.constant_ms:.4f}, scale={table.scale:.4f}")
    print(f"latency_table: fit on {fit['subnets']} calibration subnets: mean |error| {fit['mean_abs_error_pct']:.1f}%")
    print(f"{'held-out subnet':<16} {'measured ms':>12} {'predicted ms':>13} {'error':>8}")
    for row in held["rows"]:
        print(f"{row['name']:<16} {row['measured_ms']:>12.4f} {row['predicted_ms']:>13.4f} {row['error_pct']:>7.1f}%")
    print(
        f"latency_table: held-out accuracy: {held['within_10pct'] * 100:.0f}% of {held['subnets']} subnets within "
        f"+-10% (mean |error| {held['mean_abs_error_pct']:.1f}%, max {held['max_abs_error_pct']:.1f}%) in "
        f"{table.info['measurement_s']} s"
    )
    print(f"latency_table: wrote {f.out}")


if __name__ == "__main__":
    define_flags()
    programs.run_tool(main)
