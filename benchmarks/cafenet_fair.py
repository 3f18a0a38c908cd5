"""CafeNet measured fairly: equal MACs, equal scoring noise, lengths that can separate arms.

Runs ``python -m cafe_tf.compare`` on Fashion-MNIST ResNet-20 with a recipe long enough for the
differences to separate from the noise, and prints the expected CPU time first. Every stage
resumes: run the same command again after an interruption.

    python benchmarks/cafenet_fair.py --workdir runs/cafenet_fair               # the full recipe (below)
    python benchmarks/cafenet_fair.py --workdir runs/cafenet_fair --dry_run     # the command and the time estimate
    python benchmarks/cafenet_fair.py --workdir runs/cf_ablate --arms cafenet,zone_bins,r2,k4,k1_random,uniform_bins \
        --budgets 0.5 --ranking 0                                              # the ablations at one budget
    python benchmarks/cafenet_fair.py --workdir runs/cf_quick --quick          # minutes: a smoke run, decides nothing

Full recipe (our choice; the paper's numbers are unavailable): supernets 12 epochs (SGD 0.1 cosine,
K = 2, locally free zones of r = 1 channel), evolution with population 32 x 10 generations in a
+-1% band around each budget, every candidate scored by the equal rule (K = 2 evaluations on 2,000
validation images, each after BN recalibration on its own 256 training images), each arm's net
retrained from scratch for 10 epochs with seeds 0, 1, 2 (paired across arms), 20 ranking nets within
0.6-1.0x the first budget retrained for 10 epochs, the scoring noise over 8 calibration sets.

The estimate scales one measured number, ``--epoch_seconds`` (a plain ResNet-20 epoch on the 55k
training images: 80-130 s on 2 cores of an Intel Xeon (KVM) host, benchmarks/dagger_fashion_mnist.py),
by each stage's size: a min-min supernet epoch costs about one plain epoch
(benchmarks/minmin_cost.py), a retraining epoch about its MACs ratio of one, and scoring runs
forward passes at about 3x the training throughput.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "fashion_mnist_resnet20.py")
TRAIN_IMAGES = 55000

FULL = {"supernet.epochs": 12, "train.epochs": 10, "search.population": 32, "search.generations": 10,
        "search.parents": 8, "search.eval_examples": 2000, "search.calibration_examples": 256,
        "search.num_candidates": 2, "supernet.eval_examples": 2000}
QUICK = {"data.max_train_examples": 4000, "supernet.epochs": 1, "train.epochs": 1, "search.population": 8,
         "search.generations": 2, "search.parents": 2, "search.eval_examples": 1000,
         "search.calibration_examples": 128, "search.num_candidates": 2, "supernet.eval_examples": 500,
         "supernet.calibration_examples": 128}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="where the comparison lives (resumed when it exists)")
    p.add_argument("--arms", default="cafenet,fixed,uniform,random", help="compare's --arms")
    p.add_argument("--budgets", default="0.3,0.5,0.7", help="compare's --budgets (fractions of the full MACs)")
    p.add_argument("--seeds", default="0,1,2", help="compare's --seeds (retraining seeds, paired across arms)")
    p.add_argument("--ranking", type=int, default=20, help="ranking nets (0 = none)")
    p.add_argument("--noise_repeats", type=int, default=8, help="calibration sets for the scoring noise")
    p.add_argument("--quick", action="store_true", help="a smoke run of minutes (4,000 training images, 1 epoch per "
                   "stage): checks the machinery, decides nothing")
    p.add_argument("--epoch_seconds", type=float, default=100.0, help="seconds of one plain ResNet-20 epoch on 55k "
                   "images on this machine (for the estimate)")
    p.add_argument("--dry_run", action="store_true", help="print the command and the estimate, run nothing")
    return p.parse_args(argv)


def recipe(args: argparse.Namespace) -> dict[str, object]:
    return dict(QUICK if args.quick else FULL)


def command(args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "cafe_tf.compare", f"--config={CONFIG}", f"--workdir={args.workdir}",
            f"--arms={args.arms}", f"--budgets={args.budgets}", f"--seeds={args.seeds}", f"--ranking={args.ranking}",
            f"--noise_repeats={args.noise_repeats}", *[f"--config.{k}={v}" for k, v in recipe(args).items()]]


def estimate(args: argparse.Namespace) -> dict[str, float]:
    """Expected CPU seconds per stage kind (see the module doc for the scaling)."""
    from cafe_tf import compare

    r = recipe(args)
    arms, budgets = args.arms.split(","), [float(b) for b in args.budgets.split(",")]
    seeds = len(args.seeds.split(","))
    ranking = args.ranking if {"cafenet", "fixed"} <= set(arms) else 0
    images = float(r.get("data.max_train_examples") or TRAIN_IMAGES) / TRAIN_IMAGES
    epoch = args.epoch_seconds * images
    forward_images_per_s = 3 * TRAIN_IMAGES / args.epoch_seconds
    variants = compare.variants_of(arms, ranking)
    search_arms = [a for a in arms if compare.ARMS[a].supernet]
    per_candidate = r["search.num_candidates"] * (r["search.eval_examples"] + r["search.calibration_examples"])
    candidates = r["search.population"] * r["search.generations"]
    lo, hi = compare.RANKING_RANGE
    return {
        "supernets": len(variants) * r["supernet.epochs"] * epoch,
        "searches": len(search_arms) * len(budgets) * candidates * per_candidate / forward_images_per_s,
        "retraining": len(arms) * seeds * sum(budgets) * r["train.epochs"] * epoch,
        "ranking": ranking * r["train.epochs"] * epoch * budgets[0] * (lo + hi) / 2,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    est = estimate(args)
    cmd = command(args)
    print(" \\\n    ".join(cmd))
    print(f"expected CPU time at {args.epoch_seconds:g} s per plain ResNet-20 epoch:")
    for stage, seconds in est.items():
        print(f"  {stage:<10} {seconds / 3600:6.2f} h")
    print(f"  {'total':<10} {sum(est.values()) / 3600:6.2f} h")
    if args.dry_run:
        return 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
