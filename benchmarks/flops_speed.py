"""How fast the analytic cost model counts MACs: one assignment at a time and in batches.

The search calls it for every candidate, so it must be fast enough to call 10^5 times. Printed: the
time of 10^5 single calls, of one batched call over 10^5 assignments, and both against the time
of counting one extracted Keras model's layers (the slow way the cost model replaces).

    python benchmarks/flops_speed.py --model mobilenet_v2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np

from cafe_tf import models
from cafe_tf.flops import count_keras_model
from cafe_tf.graph import ChannelGraph
from cafe_tf.space import SearchSpace
from cafe_tf.surgery import extract


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    model = models.build(args.model)
    graph = ChannelGraph.from_model(model)
    space = SearchSpace(graph)
    rng = np.random.default_rng(0)
    widths = space.channel_widths(space.sample_widths(rng, args.n))
    cost = space.cost

    t = time.perf_counter()
    single = [cost.macs(w) for w in widths]
    t_single = time.perf_counter() - t
    t = time.perf_counter()
    batched = cost.macs(widths)
    t_batch = time.perf_counter() - t
    assert batched.tolist() == single

    sel = space.channels(space.fixed(space.sample_widths(rng)))
    t = time.perf_counter()
    counted = count_keras_model(extract(model, sel, graph, copy_weights=False))
    t_keras = time.perf_counter() - t
    assert counted["macs"] == cost.macs(cost.widths_of(sel))

    print(f"model {args.model}: {len(graph.groups)} groups, {len(cost._macs.coef)} MACs terms")
    print(f"{args.n} single calls: {t_single:.2f} s ({t_single / args.n * 1e6:.1f} us/call)")
    print(f"one batched call over {args.n}: {t_batch * 1e3:.1f} ms ({t_batch / args.n * 1e9:.0f} ns/assignment)")
    print(f"extract + count Keras layers once: {t_keras * 1e3:.0f} ms "
          f"(x{t_keras / (t_single / args.n):.0f} a single analytic call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
