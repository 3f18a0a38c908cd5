"""Cost of one min-min supernet step against one plain training step of the max net, side by side.

    python benchmarks/minmin_cost.py                 # resnet20, 32x32, batch 64, K = 2
    python benchmarks/minmin_cost.py --model resnet56 --batch 128 --rounds 30

Both steps are traced ``tf.function`` steps with the same loss (cross-entropy + L2 weight decay) and
SGD, on the same batch, in one process, interleaved round by round (plain, then each min-min
variant), so machine noise hits all alike; the medians of the per-round times are compared.
Min-min variants:

* ``sampled``: the real training step, widths drawn uniformly per group (a fixed sequence of draws,
  the same in every round), K candidates each: cost = K selection passes + 1 forward/backward of
  a random-width net, on average cheaper than the max net;
* ``near_max``: every group one bin below full (the costliest widths that still have free channels),
  the step's worst case: ~K forward passes + 1 forward/backward of (almost) the max net;
* ``fixed_sampled``: fixed sharing (r = 0: nothing to select), the AutoSlim-style step, for reference.

Prints one line per variant: median ms and the ratio to the plain step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import numpy as np
import tensorflow as tf

from cafe_tf import models
from cafe_tf.slim import Supernet
from cafe_tf.space import SearchSpace
from cafe_tf.training import kernel
from cafe_tf.training.supernet import MinMinOptions, MinMinTrainer, Slot, plan_step, step_rng


def plain_step_fn(model: keras.Model, optimizer, num_classes: int, weight_decay: float):
    """The standard loop's step (cross-entropy + L2 on kernels), without a strategy."""
    decayed = [v for v in model.trainable_variables if kernel.is_decayed(v)]

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(kernel.per_example_loss("classification", labels, logits, num_classes))
            loss += 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--input", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    args = parser.parse_args()

    shape = (args.input, args.input, 3)
    classes = 10
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(args.batch, *shape)).astype("float32"))
    labels = tf.constant(rng.integers(0, classes, args.batch))

    plain_model = models.build(args.model, input_shape=shape, num_classes=classes)
    plain_opt = keras.optimizers.SGD(0.01, momentum=0.9)
    plain = plain_step_fn(plain_model, plain_opt, classes, 5e-4)

    variants = {}
    for name, sharing in (("sampled", "locally_free"), ("near_max", "locally_free"), ("fixed_sampled", "fixed")):
        model = models.build(args.model, input_shape=shape, num_classes=classes)
        supernet = Supernet(model)
        space = SearchSpace(supernet.graph, sharing=sharing)
        opt = keras.optimizers.SGD(0.01, momentum=0.9)
        opt.build(model.trainable_variables)
        options = MinMinOptions(num_candidates=args.candidates)
        trainer = MinMinTrainer(supernet, space, opt, options, num_classes=classes, global_batch=args.batch,
                                weight_decay=5e-4)
        if name == "near_max":
            widths = np.maximum(space.num_bins - 1, 1)
            r = np.random.default_rng(1)
            plans = [[Slot(widths, tuple(tuple(space.sample_arrangement(widths, r)) for _ in range(args.candidates)))]
                     for _ in range(args.steps)]
        else:
            plans = [plan_step(space, step_rng(0, i), options) for i in range(args.steps)]
        variants[name] = (trainer, plans)

    def run_plain():
        for _ in range(args.steps):
            plain(images, labels).numpy()

    def run_variant(trainer, plans):
        for slots in plans:
            trainer.train_step((images, labels), slots)

    # Warm-up: trace everything once.
    run_plain()
    for trainer, plans in variants.values():
        run_variant(trainer, plans)

    times: dict[str, list[float]] = {"plain": [], **{k: [] for k in variants}}
    for _ in range(args.rounds):
        t = time.perf_counter()
        run_plain()
        times["plain"].append((time.perf_counter() - t) / args.steps)
        for name, (trainer, plans) in variants.items():
            t = time.perf_counter()
            run_variant(trainer, plans)
            times[name].append((time.perf_counter() - t) / args.steps)

    base = statistics.median(times["plain"])
    print(f"{args.model} {args.input}x{args.input}, batch {args.batch}, K={args.candidates}, "
          f"{args.rounds} rounds x {args.steps} steps, {os.cpu_count()} CPUs")
    print(f"  plain step (max net)   {1000 * base:8.1f} ms  1.00x")
    for name in variants:
        med = statistics.median(times[name])
        traces = variants[name][0].traces
        print(f"  min-min {name:<14} {1000 * med:8.1f} ms  {med / base:.2f}x   (traces: {traces})")


if __name__ == "__main__":
    main()
