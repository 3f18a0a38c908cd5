"""Where the main job's time goes on this CPU: XLA for the training step, input stalls, evaluation batch sizes.

    python benchmarks/step_speed.py                       # all three parts, the demo's shapes
    python benchmarks/step_speed.py --parts step --widths 1.0,0.7 --rounds 6

Every comparison runs in one process, interleaved round by round, and reports the ratio of medians
(absolute times only as context: the machines are shared). The host line names the CPU and its
SIMD features; ``ONEDNN_MAX_CPU_ISA=AVX2`` emulates an AVX2-only host (e.g. an AMD EPYC without
AVX-512) for TensorFlow's oneDNN kernels.

* ``step``: the standard loop's training step (``config.train.jit_compile`` False / True) of
  ResNet-20 at the demo's input (28x28x1, batch 128), one line per width factor;
* ``input``: one epoch of the demo's training input pipeline alone (Fashion-MNIST from tfds, cached,
  flip augmentation), per batch, against the plain step: the share of a step the pipeline would
  cost if it did not overlap (on 2 cores it competes with the step for them);
* ``eval``: validation throughput of a supernet sub-network (the search's scoring pass) at several
  evaluation batch sizes.
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

from cafe_tf import config as cfg
from cafe_tf import data as data_lib
from cafe_tf import flops
from cafe_tf.models.registry import build_builtin
from cafe_tf.slim import Supernet
from cafe_tf.training import kernel, standard
from deploy.benchmark import schema

SHAPE, CLASSES = (28, 28, 1), 10


def train_step(width: float, batch: int, jit: bool):
    """The standard loop's step (``standard._train_step_fn``) of ResNet-20 x ``width``, as the loop builds it."""
    keras.utils.set_random_seed(0)
    model = build_builtin("resnet20", SHAPE, CLASSES, width_mult=width)
    train = cfg.base_config().train
    train.nesterov, train.jit_compile = True, jit
    strategy = tf.distribute.get_strategy()
    data = data_lib.DatasetInfo("synthetic", "classification", CLASSES, SHAPE, {"train": batch}, (0.5,), (0.25,),
                                "none", None, tuple(map(str, range(CLASSES))), "", 0)
    _, optimizer, step, _ = standard.training_state(train, model, strategy, f"/tmp/step_speed_{os.getpid()}", 100, batch)
    return model, standard._train_step_fn(model, optimizer, strategy, data, train, batch, step, True)


def timed(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def part_step(widths, batch: int, rounds: int, steps: int) -> dict[float, float]:
    rng = np.random.default_rng(0)
    b = (tf.constant(rng.normal(size=(batch, *SHAPE)), tf.float32), tf.constant(rng.integers(0, CLASSES, batch)))
    plain_ms = {}
    for w in widths:
        fns = {}
        for jit in (False, True):
            model, fn = train_step(w, batch, jit)
            fns[jit] = lambda fn=fn: [t.numpy() for t in fn(b)]
            for _ in range(3):
                fns[jit]()
        times = {jit: [] for jit in fns}
        for _ in range(rounds):
            for jit, fn in fns.items():
                times[jit].append(timed(fn, steps))
        plain, xla = (statistics.median(times[j]) * 1e3 for j in (False, True))
        macs = flops.count_keras_model(model)["macs"]
        plain_ms[w] = plain
        print(f"step  resnet20 x{w} ({macs / 1e6:.1f}M MACs), batch {batch}: plain {plain:.0f} ms, "
              f"jit_compile {xla:.0f} ms; plain/jit {plain / xla:.2f}x")
    return plain_ms


def part_input(batch: int, plain_ms: float | None) -> None:
    c = cfg.base_config().data
    c.name, c.batch_size, c.augment, c.cache = "fashion_mnist", batch, "flip", True
    source = data_lib.make_data_source(c, seed=0)
    for epoch in range(2):  # the first fills the cache
        t, n = time.perf_counter(), 0
        for _ in source.make_train(epoch, 0, None):
            n += 1
        per = (time.perf_counter() - t) / n * 1e3
        print(f"input epoch {epoch} ({'fills the cache' if epoch == 0 else 'from the cache'}): {n} batches, "
              f"{per:.1f} ms/batch" + (f" = {per / plain_ms:.1%} of a plain full-width step" if plain_ms else ""))


def part_eval(batch_sizes, examples: int, rounds: int) -> None:
    keras.utils.set_random_seed(0)
    supernet = Supernet(build_builtin("resnet20", SHAPE, CLASSES))
    half = {g.id: np.arange(g.size // 2) for g in supernet.graph.groups if g.prunable}
    selection = supernet.trace_selection(half)
    step = kernel.make_eval_step(lambda x, s: supernet(x, selection=s, training=False), "classification")
    rng = np.random.default_rng(0)
    images = rng.normal(size=(examples, *SHAPE)).astype(np.float32)
    labels = rng.integers(0, CLASSES, examples)
    sets = {bs: [(tf.constant(images[i:i + bs]), tf.constant(labels[i:i + bs])) for i in range(0, examples, bs)]
            for bs in batch_sizes}
    for bs in batch_sizes:
        kernel.evaluate(step, sets[bs], selection)
    times = {bs: [] for bs in batch_sizes}
    for _ in range(rounds):
        for bs in batch_sizes:
            times[bs].append(timed(lambda bs=bs: kernel.evaluate(step, sets[bs], selection), 1))
    base = statistics.median(times[batch_sizes[0]])
    for bs in batch_sizes:
        t = statistics.median(times[bs])
        print(f"eval  half-width supernet, {examples} images at batch {bs}: {examples / t:.0f} images/s "
              f"({base / t:.2f}x batch {batch_sizes[0]})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="step,input,eval", help="comma-separated: step, input, eval")
    p.add_argument("--widths", default="1.0,0.7", help="ResNet-20 width factors for the step part")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--eval_batches", default="250,500,1000,2000")
    p.add_argument("--eval_examples", type=int, default=2000)
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    print(f"host: {schema.host_line()}; ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}")
    plain = {}
    if "step" in parts:
        plain = part_step([float(w) for w in args.widths.split(",")], args.batch, args.rounds, args.steps)
    if "input" in parts:
        part_input(args.batch, plain.get(1.0))
    if "eval" in parts:
        part_eval([int(b) for b in args.eval_batches.split(",")], args.eval_examples, args.rounds)


if __name__ == "__main__":
    main()
