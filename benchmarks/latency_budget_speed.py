"""How fast a width search works under a latency bound: the model path against the widths path.

The model path extracts a plain Keras model per candidate and asks ``predict_ms(model)`` (what a
user's predictor gets); the widths path asks the latency table's ``predict_widths_ms(space,
widths)`` for whole batches, building no model. Both run here side by side, each from a fresh
checker and a fresh table (no cache carried over), on the same candidates, and must pick the same
ones; printed: seconds per operation of each path and their ratio (the absolute times depend on
the machine and its load, the ratio much less). The widths path's times include building its plan
and filling its memo on the fresh table.

    python benchmarks/latency_budget_speed.py --model resnet20 --input_size 32 --n 20
    python benchmarks/latency_budget_speed.py --model mobilenet_v2 --input_size 96 --table T.json

Without ``--table`` the table is synthetic (layers of uniform subnets at 1 ns per MAC, other widths
interpolated): prediction costs the same whatever the numbers in it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np

from cafe_tf import models, surgery
from cafe_tf.graph import ChannelGraph
from cafe_tf.search.budget import Budget, BudgetChecker
from cafe_tf.space import SearchSpace
from deploy import latency_table as lt


class ModelOnly:
    """A predictor with ``predict_ms(model)`` only: the checker builds a model per candidate."""

    def __init__(self, table: lt.LatencyTable):
        self.table = table

    def predict_ms(self, model) -> float:
        return self.table.predict_ms(model)


def synthetic_table(space: SearchSpace) -> lt.LatencyTable:
    """Layers of four uniform subnets at 1 ns per MAC plus 1 us each."""
    entries = {}
    for fraction in (1.0, 0.75, 0.5, 0.25):
        sub = surgery.extract(space.graph.model, space.channels(space.fixed(space.uniform_widths(fraction))),
                              graph=space.graph, copy_weights=False)
        entries.update({k: 1e-6 * k.macs() + 1e-3 for k in lt.layer_keys(sub)})
    return lt.LatencyTable(entries, constant_ms=0.05, scale=1.0)


def fresh(table: lt.LatencyTable) -> lt.LatencyTable:
    """The same table without its widths plans and memos."""
    return lt.LatencyTable(table.entries, table.constant_ms, table.scale, table.info)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--input_size", type=int, default=None, help="square input side (default: the model's own)")
    parser.add_argument("--table", default=None, help="a deploy.latency_table file (default: a synthetic table)")
    parser.add_argument("--budget", type=float, default=0.5, help="latency bound as a fraction of the full net's")
    parser.add_argument("--n", type=int, default=20, help="candidates per operation on both paths")
    parser.add_argument("--n_fast", type=int, default=1000, help="candidates sampled on the widths path alone (context)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    shape = None
    if args.input_size:
        shape = (args.input_size, args.input_size, models.DEFAULT_INPUT[args.model][0][-1])
    model = models.build(args.model, input_shape=shape)
    space = SearchSpace(ChannelGraph.from_model(model))
    table = lt.load(args.table) if args.table else synthetic_table(space)
    full_ms = float(table.predict_widths_ms(space, space.num_bins)[0])
    budget = Budget(max_latency_ms=args.budget * full_ms)
    print(f"model {args.model} input {tuple(model.inputs[0].shape[1:])}: {len(space.groups)} groups, "
          f"{len(lt.layer_keys(model))} costed layers; table {'synthetic' if not args.table else args.table} "
          f"({len(table.entries)} entries); bound {budget.max_latency_ms:.3f} ms = {args.budget:g} x full")

    def checkers():
        return (BudgetChecker(space, budget, latency=ModelOnly(fresh(table))),
                BudgetChecker(space, budget, latency=fresh(table)))

    rows = []
    # 1. Sampling n candidates in the window (rejection sampling over proposals, as the search starts).
    slow, fast = checkers()
    picked_slow, t_slow = timed(lambda: slow.sample(np.random.default_rng(args.seed), args.n))
    picked_fast, t_fast = timed(lambda: fast.sample(np.random.default_rng(args.seed), args.n))
    assert (slow.latency_path, fast.latency_path) == ("model", "widths")
    assert np.array_equal(picked_slow, picked_fast), "the two paths sampled different candidates"
    rows.append((f"sample {args.n} in the window", t_slow, t_fast))

    # 2. Latency of n random candidates, one at a time (what mutation and crossover ask).
    slow, fast = checkers()
    widths = space.sample_widths(np.random.default_rng(args.seed + 1), args.n)
    ms_slow, t_slow = timed(lambda: [slow.latency_ms(w) for w in widths])
    ms_fast, t_fast = timed(lambda: [fast.latency_ms(w) for w in widths])
    assert ms_slow == ms_fast, "the two paths predicted different latencies"
    rows.append((f"latency_ms of {args.n} candidates", t_slow, t_fast))

    # 3. Repairing n over-budget candidates into the window (one bin at a time).
    slow, fast = checkers()
    starts = np.minimum(np.asarray(picked_fast[: max(1, args.n // 4)]) + 2, space.num_bins)  # repair is the slowest
    fixed_slow, t_slow = timed(lambda: [slow.repair(w, np.random.default_rng(i)) for i, w in enumerate(starts)])
    fixed_fast, t_fast = timed(lambda: [fast.repair(w, np.random.default_rng(i)) for i, w in enumerate(starts)])
    assert all(np.array_equal(a, b) for a, b in zip(fixed_slow, fixed_fast)), "the two paths repaired differently"
    rows.append((f"repair {len(starts)} candidates", t_slow, t_fast))

    print(f"{'operation':<32} {'model path s':>13} {'widths path s':>14} {'ratio':>9}")
    for name, t_slow, t_fast in rows:
        print(f"{name:<32} {t_slow:>13.3f} {t_fast:>14.4f} {t_slow / t_fast:>8.0f}x")

    _, fast = checkers()
    picked, t_many = timed(lambda: fast.sample(np.random.default_rng(args.seed), args.n_fast))
    per_model = rows[1][1] / args.n
    print(f"widths path alone: sample {len(picked)} in the window in {t_many:.2f} s "
          f"(the model path at {per_model:.2f} s per model built would need ~{per_model * args.n_fast / 60:.0f} min "
          f"or more: one model per candidate judged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
