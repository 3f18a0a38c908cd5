"""Dagger vs L1-norm vs uniform width at 50% of the MACs: Fashion-MNIST ResNet-20, several seeds.

For each seed: train ResNet-20 to convergence with the standard loop (once, shared by the
methods), then for each method prune to the target with the same exact-target routine, fine-tune
with the same recipe, and compare test accuracy with the unpruned model (goal: Dagger's drop
<= 0.5 pt). Prints one table and writes ``<workdir>/benchmark.json``.

    python benchmarks/dagger_fashion_mnist.py                 # full: configs/fashion_mnist_resnet20_dagger.py, 3 seeds
    python benchmarks/dagger_fashion_mnist.py --quick         # minutes: small subsets, 1 epoch per stage, 1 seed
    python benchmarks/dagger_fashion_mnist.py --methods dagger --tag dagger_ramp \
        --set dagger.target_ramp=0.5                           # an ablation arm on the same pretrained models
    python benchmarks/dagger_fashion_mnist.py --methods dagger --tag dagger_ft10 --reuse_selection dagger \
        --set finetune.epochs=10                               # fine-tuning alone, on the dagger arm's selection
    python benchmarks/dagger_fashion_mnist.py --methods dagger,l1,uniform --tag '{method}_kd' \
        --reuse_selection '{method}' --set finetune.distill_weight=0.5   # every arm again, distilled
    python benchmarks/dagger_fashion_mnist.py --summary_only  # the table from what exists so far

The table gives each arm's mean ± std over seeds and its paired difference against ``--baseline``
(same seed: same pretrained model, data and MACs target) with a 95% t-interval.

Every stage resumes (rerun the same command after an interruption). The full run needs about
30 + 10 + 3 x 20 training epochs of ResNet-20 on 55k images per seed, about 16 h on 2 CPU cores
(an epoch takes 80-130 s there). The figures in docs/results/dagger.md come from a shorter run, plus the 10-epoch
fine-tuning arms and the control listed there:

    python benchmarks/dagger_fashion_mnist.py --shared_pretrain --pretrain_epochs 10 --gate_epochs 1.5 \
        --finetune_epochs 3
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


def _parse_sets(items: list[str]) -> dict[str, object]:
    """``--set section.key=value`` items -> {dotted key: Python value}."""
    import ast

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set {item!r}: expected section.key=value, e.g. dagger.target_ramp=0.5")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw  # a bare string, e.g. dagger.main=frozen
    return out


def _config(args: argparse.Namespace, seed: int, arm: bool = True):
    """The config of one seed; ``arm``: with the ``--set`` overrides (the shared pretraining has none)."""
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
    for key, value in (_parse_sets(args.set) if arm else {}).items():
        section, name = key.split(".", 1)
        if section in ("train", "data", "model"):
            raise SystemExit(f"--set {key}: the arms share each seed's pretrained model and data; "
                             "override only prune.*, dagger.* or finetune.*")
        if section not in c or name not in c[section]:
            raise SystemExit(f"--set {key}: no such config key (sections: {sorted(c.keys())})")
        c[section][name] = value
    return c


def _reuse_selection(source: str, arm_dir: str) -> None:
    """Copies the finished gate and prune stages of the arm folder ``source`` into ``arm_dir`` (those
    it lacks), so the arm resumes at fine-tuning; the pipeline's settings check refuses them if the
    arm's method, target or gate settings differ."""
    import shutil

    if not os.path.isfile(os.path.join(source, "prune", "widths.json")):
        raise SystemExit(f"--reuse_selection: {source} has no finished prune stage (prune/widths.json); "
                         "run that arm first")
    for stage in ("gates", "prune"):
        src, dst = os.path.join(source, stage), os.path.join(arm_dir, stage)
        if os.path.isdir(src) and not os.path.exists(dst):
            shutil.rmtree(dst + ".partial", ignore_errors=True)
            shutil.copytree(src, dst + ".partial")
            os.replace(dst + ".partial", dst)  # all or nothing: an interrupted copy is redone


def _summary_rows(workdir: str, tags: list[str], seeds: list[int]) -> list[dict]:
    """One row per (seed, arm) whose pipeline finished (its summary.json exists)."""
    from cafe_tf import io
    from cafe_tf.dagger import pipeline

    rows = []
    for seed in seeds:
        for tag in tags:
            path = os.path.join(workdir, f"seed{seed}", tag, "summary.json")
            if not os.path.isfile(path):
                continue
            summary = io.read_artifact(path, pipeline.SUMMARY_SCHEMA, (pipeline.SUMMARY_VERSION,))
            acc = summary["accuracy"]
            rows.append({"seed": seed, "method": tag, "pretrained": acc["pretrained"],
                         "before_finetune": acc.get("pruned_before_finetune"), "finetuned": acc["finetuned_test"],
                         "macs_ratio": summary["exact_target"]["achieved_ratio"],
                         "relative_error": summary["exact_target"]["relative_error"],
                         "pretrained_model": summary["pretrained"]})
    return rows



def arm_tags(methods: list[str], tag: str, reuse_selection: str) -> tuple[list[str], list[str]]:
    """(arm folder per method, the arm folder it reuses the selection of, or "") from --tag and
    --reuse_selection, where ``{method}`` stands for each method."""
    if tag and len(methods) != 1 and "{method}" not in tag:
        raise SystemExit(f"--tag {tag!r} names one arm; give one method (got --methods {','.join(methods)!r}) or "
                         "a tag with {method} in it, e.g. --tag {method}_kd")
    tags = [tag.replace("{method}", m) for m in methods] if tag else list(methods)
    sources = [reuse_selection.replace("{method}", m) for m in methods]
    if reuse_selection and any(not tag or t == s for t, s in zip(tags, sources)):
        raise SystemExit(f"--reuse_selection {reuse_selection!r} needs a --tag of its own for the new arm "
                         f"(got --tag {tag!r})")
    return tags, sources


def summarize(rows: list[dict], tags: list[str], baseline: str) -> tuple[dict, list[str]]:
    """Per arm: mean ± std over seeds (sample std, n - 1) of the fine-tuned accuracy, and the paired
    difference against ``baseline`` on the same seed (same pretrained model, data and MACs target) with
    its 95% t-interval (``compare.paired_difference``). Returns ({arm: numbers}, markdown lines)."""
    import numpy as np

    from cafe_tf.compare import paired_difference

    base = {r["seed"]: r["finetuned"] for r in rows if r["method"] == baseline}
    lines = [f"| arm | seeds | MACs ratio | before fine-tuning | fine-tuned test acc (mean ± std) | drop vs unpruned (pt) "
             f"| minus {baseline}, same seed (pt) [95% t-interval] | per seed |",
             "|---|---|---|---|---|---|---|---|"]
    table = {}
    for tag in tags:
        sel = [r for r in rows if r["method"] == tag]
        if not sel:
            continue
        acc = np.array([r["finetuned"] for r in sel])
        std = float(acc.std(ddof=1)) if len(acc) > 1 else float("nan")
        drop = 100 * (np.array([r["pretrained"] for r in sel]) - acc)
        before = [r["before_finetune"] for r in sel if r["before_finetune"] is not None]
        paired = paired_difference({r["seed"]: 100 * r["finetuned"] for r in sel},
                                   {s: 100 * a for s, a in base.items()})
        table[tag] = {"seeds": [r["seed"] for r in sel], "accuracy_mean": float(acc.mean()),
                      "accuracy_std": std, "drop_pt_mean": float(drop.mean()),
                      "before_finetune_mean": float(np.mean(before)) if before else None,
                      "baseline": baseline, "minus_baseline_pt": paired,
                      "macs_ratio": [r["macs_ratio"] for r in sel]}
        if paired is None:
            vs = "n/a"
        elif paired["low"] is None:
            vs = f"{paired['mean']:+.2f} (1 seed)"
        else:
            vs = f"{paired['mean']:+.2f} [{paired['low']:+.2f}, {paired['high']:+.2f}] ({paired['n']} seeds)"
        lines.append(f"| {tag} | {len(sel)} | {np.mean([r['macs_ratio'] for r in sel]):.4f} | "
                     f"{100 * np.mean(before) if before else float('nan'):.2f}% | "
                     f"{100 * acc.mean():.2f}% ± {100 * std:.2f} | {drop.mean():+.2f} | {vs} | "
                     f"{', '.join(f'{100 * a:.2f}' for a in acc)} |")
    unpruned = {r["pretrained_model"]: r["pretrained"] for r in rows}  # one value per pretrained model
    values = np.array(list(unpruned.values()))
    lines.append(f"| unpruned ({len(unpruned)} model{'s' if len(unpruned) > 1 else ''}) | | 1.0000 | | "
                 f"{100 * values.mean():.2f}% ± {100 * values.std(ddof=1) if len(values) > 1 else float('nan'):.2f} "
                 f"| | | {', '.join(f'{100 * a:.2f}' for a in values)} |")
    spread = {}
    for seed in sorted({r["seed"] for r in rows}):
        ratios = [r["macs_ratio"] for r in rows if r["seed"] == seed]
        spread[seed] = (max(ratios) - min(ratios)) / min(ratios)
    lines.append("MACs spread between the arms of a seed (max/min - 1): "
                 + ", ".join(f"seed {k} {v:.3%}" for k, v in spread.items()))
    return table, lines


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
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any config key of the arms, e.g. dagger.target_ramp=0.5 (repeatable)")
    parser.add_argument("--tag", default="",
                        help="folder name of the arm (default: the method); with several methods it must contain "
                             "{method}, e.g. --tag {method}_kd")
    parser.add_argument("--seed_ids", default="", help="comma-separated seeds to run (default: 0 .. --seeds - 1)")
    parser.add_argument("--shared_pretrain", action="store_true",
                        help="every seed prunes seed 0's pretrained model (the seeds vary gate training and "
                             "fine-tuning only; a third of the pretraining time)")
    parser.add_argument("--reuse_selection", default="", metavar="ARM",
                        help="start the arm (--tag) from arm ARM's gate training and pruned model of the same "
                             "seed, so only fine-tuning runs (e.g. with --set finetune.epochs=10); ARM may contain "
                             "{method}: --methods dagger,l1 --tag {method}_kd --reuse_selection {method}")
    parser.add_argument("--baseline", default="l1", metavar="ARM",
                        help="the arm every other is compared with on the same seed (default l1; e.g. l1_ft10 "
                             "for arms fine-tuned as long as it)")
    parser.add_argument("--summary_only", action="store_true",
                        help="tabulate the finished arms (--methods, or folder names) without training")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    seed_ids = [int(s) for s in args.seed_ids.split(",") if s.strip()] or list(range(seeds))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tags, sources = arm_tags(methods, args.tag, args.reuse_selection)
    overridden = any(v is not None for v in (args.pretrain_epochs, args.gate_epochs, args.finetune_epochs,
                                              args.max_train_examples))
    workdir = os.path.join(args.workdir, ("quick" if args.quick else ("custom" if overridden else "full"))
                           + ("_shared" if args.shared_pretrain else ""))

    from absl import logging

    from cafe_tf import data as data_lib
    from cafe_tf import io
    from cafe_tf.config import validate
    from cafe_tf.dagger import pipeline

    logging.set_verbosity(logging.WARNING)
    rows = []
    for seed in ([] if args.summary_only else seed_ids):
        pre_seed = 0 if args.shared_pretrain else seed
        base = _config(args, pre_seed, arm=False)
        validate(base, extra_validators=pipeline.extra_validators())
        seed_dir = os.path.join(workdir, f"seed{seed}")
        data = data_lib.make_data_source(base.data, seed=pre_seed, eval_splits=("test",))
        t0 = time.time()
        _, pretrained = pipeline.stage_pretrain(base, os.path.join(workdir, f"seed{pre_seed}"), data)
        print(f"seed {seed}: pretrained {pretrained} ({time.time() - t0:.0f} s)", flush=True)
        for method, tag, source in zip(methods, tags, sources):
            c = _config(args, seed)
            c.prune.method = method
            c.prune.pretrained = pretrained
            c.finetune.eval_splits = ("test",)
            t0 = time.time()
            if args.reuse_selection:
                _reuse_selection(os.path.join(seed_dir, source), os.path.join(seed_dir, tag))
            pipeline.run(c, os.path.join(seed_dir, tag))
            rows += _summary_rows(workdir, [tag], [seed])  # the row the summary table reads, too
            r = rows[-1]
            r["seconds"] = round(time.time() - t0, 1)
            print(f"seed {seed} {tag:<8} MACs {r['macs_ratio']:.4f} ({r['relative_error']:+.3%})  "
                  f"pretrained {r['pretrained']:.4f}  pruned {r['before_finetune']:.4f}  "
                  f"fine-tuned {r['finetuned']:.4f}  ({r['seconds']:.0f} s)", flush=True)

    import numpy as np

    if args.summary_only:  # every finished arm folder, the given methods first
        found = sorted({d for seed in seed_ids for d in (os.listdir(os.path.join(workdir, f"seed{seed}"))
                                                         if os.path.isdir(os.path.join(workdir, f"seed{seed}"))
                                                         else []) if d != "pretrain"})
        tags = [t for t in tags if t in found] + [t for t in found if t not in tags]
    rows = _summary_rows(workdir, tags, seed_ids) if args.summary_only else rows
    if not rows:
        print(f"no finished arm under {workdir}")
        return 1
    print(f"\n{args.model} on Fashion-MNIST at {args.target:.2f} of the MACs, seeds {seed_ids}"
          f"{' [QUICK: subsets, few epochs; not the benchmark]' if args.quick else ''}"
          f"{' [custom epochs / data: not the full recipe]' if overridden and not args.quick else ''}")
    table, lines = summarize(rows, tags, args.baseline)
    print("\n".join(lines))
    unpruned = {r["pretrained_model"]: r["pretrained"] for r in rows}  # one value per pretrained model
    io.write_json(os.path.join(workdir, "benchmark.json"),
                  {"quick": args.quick, "overrides": {k: getattr(args, k) for k in (
                      "pretrain_epochs", "gate_epochs", "finetune_epochs", "max_train_examples", "set")},
                   "model": args.model, "target": args.target, "seeds": seed_ids,
                   "unpruned_accuracy_mean": float(np.mean(list(unpruned.values()))), "arms": table, "runs": rows})
    print(f"written: {os.path.join(workdir, 'benchmark.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
