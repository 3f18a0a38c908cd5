"""Does screening (``config.search.screen_fraction``) keep the search's ranking? Cost and rank agreement.

    python benchmarks/scoring_screen.py --config configs/fashion_mnist_resnet20.py --workdir runs/demo
    python benchmarks/scoring_screen.py --config C --workdir W --candidates 40 --fractions 0.5,0.25

Takes the trained supernet of ``--workdir`` (``supernet.keras``, as the pipeline leaves it) and a
fixed set of ``--candidates`` width assignments drawn (seeded) inside the search's budget window,
and scores every one with the config's evaluator (K arrangements, BN recalibration, validation
images) twice per fraction: every arrangement on every image, and screened (the K arrangements
ranked on the fraction, the best finished on the rest). Candidates are interleaved so machine
noise hits both alike. Reports, per fraction: Kendall's tau-b and Spearman's rho between the two
score lists with bootstrap 95% intervals (over candidates), how often the screen kept the
arrangement full scoring picks, whether the top candidate and the top 5 agree, and the cost ratio
(validation images run, and wall time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from cafe_tf import config as cfg
from cafe_tf import data as data_lib
from cafe_tf.compare import kendall_tau
from cafe_tf.search import BudgetChecker, SupernetEvaluator
from cafe_tf.search.run import budget_from_section, load_supernet, make_evaluator
from deploy.benchmark import schema


def spearman_rho(x, y) -> float:
    """Spearman's rho: the Pearson correlation of the ranks (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # ties share their average rank
            r[v == value] = r[v == value].mean()
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def bootstrap(stat, x, y, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% percentile interval of ``stat(x, y)`` over candidates resampled with replacement."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x), np.asarray(y)
    values = [stat(x[i], y[i]) for i in (rng.integers(0, len(x), len(x)) for _ in range(n))]
    values = np.asarray([v for v in values if np.isfinite(v)])
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def candidates_in_window(checker: BudgetChecker, n: int, seed: int) -> list[np.ndarray]:
    """``n`` distinct width assignments inside the search window, drawn with ``seed``."""
    rng, found = np.random.default_rng(seed), {}
    for _ in range(200):
        for w in checker.propose(rng, 1024):
            if len(found) < n and checker.in_window(w):
                found.setdefault(tuple(int(v) for v in w), w)
        if len(found) >= n:
            break
    if len(found) < n:
        raise SystemExit(f"only {len(found)} distinct candidates in the window; ask for fewer with --candidates")
    return list(found.values())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True, help="holds the trained supernet.keras and supernet.json")
    p.add_argument("--candidates", type=int, default=30)
    p.add_argument("--fractions", default="0.5")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    config = cfg.sibling_config(args.config, os.path.basename(args.config))
    print(f"host: {schema.host_line()}")
    path, _, _, supernet, space = load_supernet(os.path.join(args.workdir, "supernet.keras"))
    checker = BudgetChecker(space, budget_from_section(config.search, space.cost.macs()))
    data = data_lib.make_data_source(config.data, seed=config.search.seed, eval_splits=("validation",),
                                     input_scaling=config.model.input_scaling)
    full, _ = make_evaluator(config, supernet, space, path, data)
    widths = candidates_in_window(checker, args.candidates, args.seed)
    print(f"{len(widths)} candidates in [{config.search.lower_ratio}, 1] x {checker.budget.bounds()}; K = "
          f"{full.num_candidates}, {sum(len(b[1]) for b in full.validation)} validation images in "
          f"{len(full.validation)} batches")
    for fraction in (float(f) for f in args.fractions.split(",")):
        screened = SupernetEvaluator(supernet, space, full.calibration, full.validation, full.num_candidates,
                                     seed=full.seed, task=full.task, screen_fraction=fraction)
        a, b, same, seconds = [], [], 0, [0.0, 0.0]
        images = [full.images_evaluated, screened.images_evaluated]
        for w in widths:
            t = time.perf_counter()
            ra = full(w)
            seconds[0] += time.perf_counter() - t
            t = time.perf_counter()
            rb = screened(w)
            seconds[1] += time.perf_counter() - t
            a.append(ra["score"])
            b.append(rb["score"])
            same += ra["arrangement"] == rb["arrangement"]
        images = [full.images_evaluated - images[0], screened.images_evaluated - images[1]]
        tau, rho = kendall_tau(a, b), spearman_rho(a, b)
        top_a, top_b = np.argsort(a)[::-1], np.argsort(b)[::-1]
        print(f"screen_fraction {fraction}: Kendall tau {tau:.3f} (95% CI {bootstrap(kendall_tau, a, b)[0]:.3f}.."
              f"{bootstrap(kendall_tau, a, b)[1]:.3f}), Spearman rho {rho:.3f} (95% CI "
              f"{bootstrap(spearman_rho, a, b)[0]:.3f}..{bootstrap(spearman_rho, a, b)[1]:.3f}); same arrangement "
              f"{same}/{len(widths)}; same best candidate: {bool(top_a[0] == top_b[0])}; top-5 overlap "
              f"{len(set(top_a[:5]) & set(top_b[:5]))}/5; max |score difference| {np.max(np.abs(np.subtract(a, b))):.4f}")
        print(f"  cost: {images[1]} against {images[0]} validation images ({images[1] / images[0]:.2f}x), "
              f"{seconds[1]:.1f} s against {seconds[0]:.1f} s ({seconds[1] / seconds[0]:.2f}x)")


if __name__ == "__main__":
    main()
