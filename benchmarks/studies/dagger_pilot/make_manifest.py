"""Writes the Dagger pilot's manifest.json (run once, before the first cell; the manifest never changes).

    .venv/bin/python benchmarks/studies/dagger_pilot/make_manifest.py --commit <40-hex commit>

The pilot, on Fashion-MNIST ResNet-20 (full training set, the validation split held out), one net
pretrained 10 epochs on a cosine schedule (a unit of two 5-epoch cells):

1. Budget. The unpruned net and L1 at 25% and at 15% of the MACs are fine-tuned 2 epochs, 3 seeds.
   The budget is the first of 25%, 15% at which L1 trails the unpruned net by at least 1 point of
   validation accuracy (mean of the 3 paired differences) with a 95% t-interval (2 df) above zero;
   with none, 15%, recorded as "no headroom found".
2. Variants at that budget, 2 epochs of gate training each, then 2 epochs of fine-tuning, 3 seeds:
   default; macs_steps (dagger.step_scaling=macs); l1_head (dagger.head_init=l1); per_mac
   (prune.rank_by=score_per_mac, on the default's gates); combined (all three).
3. Selection. The variant with the largest mean paired gain in validation accuracy over the default
   (same fine-tuning seeds) is chosen, if that gain is at least 0.3 points; otherwise the default.
   Ties: the variant listed first. Test accuracy is recorded and never used for a decision.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)

from cafe_tf import io  # noqa: E402
from cafe_tf.study import manifest as manifest_lib  # noqa: E402

SEEDS = (0, 1, 2)
CANDIDATES = (0.25, 0.15)
MIN_DROP = 0.01
MIN_GAIN = 0.003
VARIANTS = {
    "default": {},
    "macs_steps": {"dagger.step_scaling": "macs"},
    "l1_head": {"dagger.head_init": "l1"},
    "per_mac": {"prune.rank_by": "score_per_mac"},
    "combined": {"dagger.step_scaling": "macs", "dagger.head_init": "l1", "prune.rank_by": "score_per_mac"},
}
# The gate-training run each variant's fine-tuning reads (rank_by changes only the exact-target step).
GATES_OF = {"default": "default", "macs_steps": "macs_steps", "l1_head": "l1_head", "per_mac": "default",
            "combined": "combined"}

RECIPE = {
    "data": {"name": "fashion_mnist", "data_dir": "/tmp/cafe_tf_data/fashion_mnist", "batch_size": 128,
             "augment": "crop_flip", "cache": True},
    "model": {"name": "resnet20"},
    "pretrain": {"epochs": 10, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine", "log_every": 100,
                 "eval_every": 5},
    "finetune": {"epochs": 2, "lr": 0.01, "weight_decay": 5e-4, "schedule": "cosine", "log_every": 100,
                 "eval_every": 0},
    "prune": {"tolerance": 0.01, "bn_calibration_batches": 100},
    "dagger": {"epochs": 2.0, "log_every": 50, "checkpoint_every": 200},
    "variants": VARIANTS,
}


def ratio_tag(r: float) -> str:
    return f"r{round(100 * r):02d}"


def build(commit: str) -> dict:
    pre = {"pretrained": "pretrain_b"}
    cells = [
        {"id": "pretrain_a", "kind": "dagger_pretrain", "unit": "pretrain", "params": {"seed": 0, "stop_after_epoch": 5}},
        {"id": "pretrain_b", "kind": "dagger_pretrain", "unit": "pretrain",
         "params": {"seed": 0, "stop_after_epoch": 10}},
    ]
    none = [f"ft_none_s{s}" for s in SEEDS]
    cells += [{"id": c, "kind": "dagger_finetune", "after": ["pretrain_b"], "params": {**pre, "arm": "none", "seed": s}}
              for c, s in zip(none, SEEDS)]
    l1 = {r: [f"ft_l1_{ratio_tag(r)}_s{s}" for s in SEEDS] for r in CANDIDATES}
    for r in CANDIDATES:
        cells += [{"id": c, "kind": "dagger_finetune", "after": ["pretrain_b"],
                   "params": {**pre, "arm": "l1", "seed": s, "target_ratio": r}} for c, s in zip(l1[r], SEEDS)]
    cells.append({"id": "budget", "kind": "dagger_budget", "after": none + [c for r in CANDIDATES for c in l1[r]],
                  "params": {"unpruned": none, "min_drop": MIN_DROP, "key": "validation_accuracy",
                             "candidates": [{"target_ratio": r, "l1": l1[r]} for r in CANDIDATES]}})
    for g in sorted(set(GATES_OF.values()), key=list(VARIANTS).index):
        cells.append({"id": f"gates_{g}", "kind": "dagger_gates", "after": ["pretrain_b", "budget"],
                      "params": {**pre, "variant": g, "budget": "budget", "seed": 0}})
    arms = {}
    for v in VARIANTS:
        arms[v] = [f"ft_dagger_{v}_s{s}" for s in SEEDS]
        cells += [{"id": c, "kind": "dagger_finetune", "after": ["pretrain_b", "budget", f"gates_{GATES_OF[v]}"],
                   "params": {**pre, "arm": "dagger", "seed": s, "budget": "budget", "variant": v,
                              "gates": f"gates_{GATES_OF[v]}"}} for c, s in zip(arms[v], SEEDS)]
    cells.append({"id": "select", "kind": "dagger_pilot_select",
                  "after": [c for cs in arms.values() for c in cs] + ["budget"] + [c for r in CANDIDATES for c in l1[r]],
                  "params": {"arms": arms, "min_gain": MIN_GAIN, "key": "validation_accuracy", "budget": "budget",
                             "l1": {str(r): l1[r] for r in CANDIDATES}}})
    claims = [{"id": f"headroom_{ratio_tag(r)}", "statistic": "paired_difference",
               "pairs": [[f"{a}:validation_accuracy", f"{b}:validation_accuracy"] for a, b in zip(none, l1[r])],
               "rule": {"estimate_at_least": MIN_DROP, "ci_low_above": 0.0},
               "description": f"the unpruned net minus L1 at {r:.0%} of the MACs, both fine-tuned 2 epochs "
                              "(validation accuracy, 3 paired seeds)"} for r in CANDIDATES]
    claims += [{"id": f"gain_{v}", "statistic": "paired_difference",
                "pairs": [[f"{a}:validation_accuracy", f"{b}:validation_accuracy"] for a, b in zip(arms[v], arms["default"])],
                "rule": {"estimate_at_least": MIN_GAIN},
                "description": f"Dagger {v} ({VARIANTS[v]}) minus Dagger with today's defaults at the chosen budget"}
               for v in VARIANTS if v != "default"]
    return {
        "name": "dagger_pilot", "commit": commit, "modules": ["cafe_tf.study.dagger"],
        "recipe": RECIPE, "recipe_sha256": manifest_lib.recipe_sha256(RECIPE),
        "cells": cells, "claims": claims,
        "budget_rule": {"candidates": list(CANDIDATES), "min_drop": MIN_DROP, "interval": "95% t, paired over seeds",
                        "key": "validation_accuracy", "text": __doc__.split("1. Budget. ")[1].split("2. ")[0].strip()},
        "selection_rule": {"default": "default", "min_gain": MIN_GAIN, "key": "validation_accuracy",
                           "text": __doc__.split("3. Selection. ")[1].strip()},
        "seeds": list(SEEDS),
        "hardware_note": "2-core CPU host; cells record their CPU model, features and load",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", required=True, help="the 40-hex commit every cell runs")
    args = parser.parse_args()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifest.json")
    if os.path.exists(path):
        raise SystemExit(f"{path} exists; a manifest never changes once written")
    m = build(args.commit)
    io.write_artifact(path, manifest_lib.SCHEMA, manifest_lib.VERSION, m)
    manifest_lib.load(os.path.dirname(path))  # validates ids, kinds, dependencies
    print(f"wrote {path}: {len(m['cells'])} cells, {len(m['claims'])} claims")


if __name__ == "__main__":
    main()
