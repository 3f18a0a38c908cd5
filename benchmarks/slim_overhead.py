"""Training-step time of the supernet at a width against the plain extracted model of that width.

For each model and width fraction, both steps (forward + backward + SGD update, same batch) are
traced once, warmed up, then timed interleaved in one process (A B A B ...), and the ratio of the
median times is printed. Goal: supernet / plain <= 1.10 at every width.

    python benchmarks/slim_overhead.py                       # resnet20 @32, mobilenet_v2 @96
    python benchmarks/slim_overhead.py --models resnet20 --batch 128 --rounds 30
    python benchmarks/slim_overhead.py --models keras.applications.MobileNetV3Small --input_size 96

``--models`` takes what ``config.model.name`` takes (registry names, ``.keras`` paths,
``keras.applications.<Name>``). The CPU and its SIMD / dot-product features are printed first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from cafe_tf import models
from deploy.benchmark import schema
from cafe_tf.slim import Supernet
from cafe_tf.space import SearchSpace

INPUT = {"resnet20": (32, 32, 3), "mobilenet_v2": (96, 96, 3)}


def _train_step(forward, variables):
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(x, y, *extra):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, forward(x, *extra))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step, opt


def _time(fn, args, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn(*args).numpy()
        out.append(time.perf_counter() - t)
    return out


def measure(name: str, fraction: float, batch: int, rounds: int, per_round: int, input_size: int | None = None) -> dict:
    """Median step times (s) of supernet and plain model at ``fraction`` width, and their ratio."""
    if input_size:
        shape = (input_size, input_size, 3)
    else:
        shape = INPUT.get(name) or models.DEFAULT_INPUT.get(name, ((96, 96, 3), 10))[0]
    full = models.build(name, input_shape=shape, num_classes=10)
    supernet = Supernet(full)
    space = SearchSpace(supernet.graph, granularity="uniform", num_bins=32, sharing="fixed")
    channels = space.channels(space.fixed(space.uniform_widths(fraction)))
    plain = supernet.extract(channels)
    packed = supernet.packed(channels)

    x = tf.random.normal((batch,) + shape)
    y = tf.random.uniform((batch,), 0, 10, tf.int32)
    s_step, _ = _train_step(lambda a, p: supernet(a, selection=supernet.unpack(p), training=True),
                            full.trainable_variables)
    p_step, _ = _train_step(lambda a: plain(a, training=True), plain.trainable_variables)
    p_fn = tf.function(p_step)
    s_args = (x, y, packed)
    s_call = tf.function(s_step, input_signature=[tf.TensorSpec(x.shape), tf.TensorSpec(y.shape, tf.int32),
                                                  supernet.packed_signature()])

    for _ in range(3):
        s_call(*s_args).numpy()
        p_fn(x, y).numpy()
    ts, tp = [], []
    for _ in range(rounds):
        ts += _time(s_call, s_args, per_round)
        tp += _time(p_fn, (x, y), per_round)
    ms, mp = statistics.median(ts), statistics.median(tp)
    return {"model": name, "width": fraction, "input": list(shape), "batch": batch,
            "supernet_ms": round(ms * 1e3, 3), "plain_ms": round(mp * 1e3, 3), "ratio": round(ms / mp, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenet_v2"])
    parser.add_argument("--widths", nargs="+", type=float, default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per_round", type=int, default=3)
    parser.add_argument("--input_size", type=int, default=None, help="square input side (default: per model)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    print(f"host: {schema.host_line()}")
    rows = []
    print(f"{'model':<14}{'width':>6}{'supernet ms':>13}{'plain ms':>10}{'ratio':>7}")
    for name in args.models:
        for w in args.widths:
            r = measure(name, w, args.batch, args.rounds, args.per_round, args.input_size)
            rows.append(r)
            print(f"{name:<14}{w:>6.2f}{r['supernet_ms']:>13.2f}{r['plain_ms']:>10.2f}{r['ratio']:>7.3f}", flush=True)
    worst = max(r["ratio"] for r in rows)
    print(f"worst ratio {worst:.3f} (goal <= 1.10)")
    if args.json:
        from cafe_tf import io

        io.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
