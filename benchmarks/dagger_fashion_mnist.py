"""Dagger vs L1-norm vs uniform width at 50% of the MACs: Fashion-MNIST ResNet-20, several seeds.

For each seed: train ResNet-20 to convergence with the standard loop (once, shared by the
methods), then for each method prune to the target with the same exact-target routine, fine-tune
with the same recipe, and compare test accuracy with the unpruned model (goal: Dagger's drop
<= 0.5 pt). Prints one table and writes ``<workdir>/benchmark.json``.

    python benchmarks/dagger_fashion_mnist.py                 # full: configs/fashion_mnist_resnet20_dagger.py, 3 seeds
    python benchmarks/dagger_fashion_mnist.py --quick         # minutes: small subsets, 1 epoch per stage, 1 seed

Every stage resumes (rerun the same command after an interruption). The full run needs about
30 + 10 + 3 x 20 training epochs of ResNet-20 on 55k images per seed; see the module's numbers in
the issue note for the time it takes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = os.path.join(ROOT, "configs", "fashion_mnist_resnet20_dagger.py")


def _config(args: argparse.Namespace, seed: int):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.train.seed = seed
    c.finetune.seed = seed
    c.prune.target_macs_ratio = args.target
    c.model.name = args.model
    if args.quick:
        c.data.max_train_examples = 4096
        c.data.max_eval_examples = 2000
        c.data.augment = "flip"
        c.train.epochs = 3
        c.dagger.epochs = 2.0
        c.dagger.log_every = 16
        c.finetune.epochs = 2
        c.train.log_every = c.finetune.log_every = 16
    # Explicit overrides (a "medium" run between --quick and the full recipe).
    if args.max_train_examples is not None:
        c.data.max_train_examples = args.max_train_examples
    if args.pretrain_epochs is not None:
        c.train.epochs = args.pretrain_epochs
    if args.gate_epochs is not None:
        c.dagger.epochs = args.gate_epochs
    if args.finetune_epochs is not None:
        c.finetune.epochs = args.finetune_epochs
    return c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small subsets, few epochs, 1 seed (a smoke run)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 1 with --quick)")
    parser.add_argument("--methods", default="dagger,l1,uniform", help="comma-separated: dagger, free, l1, uniform")
    parser.add_argument("--target", type=float, default=0.5, help="target MACs ratio (default 0.5)")
    parser.add_argument("--model", default="resnet20", help="registry model (default resnet20)")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_dagger_fashion_mnist"))
    parser.add_argument("--pretrain_epochs", type=int, default=None, help="override config.train.epochs")
    parser.add_argument("--gate_epochs", type=float, default=None, help="override config.dagger.epochs")
    parser.add_argument("--finetune_epochs", type=int, default=None, help="override config.finetune.epochs")
    parser.add_argument("--max_train_examples", type=int, default=None, help="override (0 = all)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    overridden = any(v is not None for v in (args.pretrain_epochs, args.gate_epochs, args.finetune_epochs,
                                              args.max_train_examples))
    workdir = os.path.join(args.workdir, "quick" if args.quick else ("custom" if overridden else "full"))

    from absl import logging

    from cafe_tf import io
    from cafe_tf.config import validate
    from cafe_tf.dagger import pipeline
    from cafe_tf.train import standard

    logging.set_verbosity(logging.WARNING)
    rows = []
    for seed in range(seeds):
        base = _config(args, seed)
        validate(base, extra_validators=pipeline.extra_validators())
        seed_dir = os.path.join(workdir, f"seed{seed}")
        data = standard.make_data_source(base.data, seed=seed, eval_splits=("test",))
        t0 = time.time()
        _, pretrained = pipeline.stage_pretrain(base, seed_dir, data)
        print(f"seed {seed}: pretrained {pretrained} ({time.time() - t0:.0f} s)", flush=True)
        for method in methods:
            c = _config(args, seed)
            c.prune.method = method
            c.prune.pretrained = pretrained
            c.finetune.eval_splits = ("test",)
            t0 = time.time()
            summary = pipeline.run(c, os.path.join(seed_dir, method))
            acc = summary["accuracy"]
            rows.append({"seed": seed, "method": method, "pretrained": acc["pretrained"],
                         "before_finetune": acc.get("pruned_before_finetune"), "finetuned": acc["finetuned_test"],
                         "macs_ratio": summary["exact_target"]["achieved_ratio"],
                         "relative_error": summary["exact_target"]["relative_error"],
                         "seconds": round(time.time() - t0, 1)})
            r = rows[-1]
            print(f"seed {seed} {method:<8} MACs {r['macs_ratio']:.4f} ({r['relative_error']:+.3%})  "
                  f"pretrained {r['pretrained']:.4f}  pruned {r['before_finetune']:.4f}  "
                  f"fine-tuned {r['finetuned']:.4f}  ({r['seconds']:.0f} s)", flush=True)

    import numpy as np

    print(f"\n{args.model} on Fashion-MNIST at {args.target:.2f} of the MACs, {seeds} seed(s)"
          f"{' [QUICK: subsets, few epochs; not the benchmark]' if args.quick else ''}"
          f"{' [custom epochs / data: not the full recipe]' if overridden and not args.quick else ''}")
    print(f"{'method':<9} {'test acc (mean ± std)':>22} {'drop vs unpruned (pt)':>22} {'MACs ratio':>11}")
    table = {}
    for method in methods:
        sel = [r for r in rows if r["method"] == method]
        acc = np.array([r["finetuned"] for r in sel])
        drop = 100 * (np.array([r["pretrained"] for r in sel]) - acc)
        table[method] = {"accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
                         "drop_pt_mean": float(drop.mean()), "macs_ratio": [r["macs_ratio"] for r in sel]}
        print(f"{method:<9} {acc.mean():>14.4f} ± {acc.std():.4f} {drop.mean():>22.2f} "
              f"{np.mean([r['macs_ratio'] for r in sel]):>11.4f}")
    unpruned = np.mean([r["pretrained"] for r in rows if r["method"] == methods[0]])
    print(f"{'unpruned':<9} {unpruned:>14.4f}")
    io.write_json(os.path.join(workdir, "benchmark.json"),
                  {"quick": args.quick, "overrides": {k: getattr(args, k) for k in (
                      "pretrain_epochs", "gate_epochs", "finetune_epochs", "max_train_examples")},
                   "model": args.model, "target": args.target, "seeds": seeds,
                   "unpruned_accuracy_mean": float(unpruned), "methods": table, "runs": rows})
    print(f"written: {os.path.join(workdir, 'benchmark.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
