"""RetinaNet on four MobileNetV2 trunks at equal MACs: full, CafeNet-searched, uniform width, Dagger-pruned.

The measurement on the offline detection set (``fashion_mnist_detection``): for each trunk,
its detector's COCO mAP (Keras), the int8 ``.tflite``'s mAP and parity against Keras, and host
latency, the int8 files timed in one interleaved run.

    python benchmarks/detect_backbones.py --workdir runs/detect_backbones                 # seed 0
    python benchmarks/detect_backbones.py --workdir runs/detect_backbones --seeds 0,1,2   # paired t-intervals
    python benchmarks/detect_backbones.py --workdir runs/detect_backbones --summary_only   # the table so far

Stages (each skipped when its artifact is valid; rerun the command to resume):

1. ``full``: MobileNetV2-0.35 (BN momentum 0.9) trained as a Fashion-MNIST classifier at 32x32
   with the demo's retraining recipe (``configs/fashion_mnist_resnet20.py``: SGD, cosine,
   ``--class_epochs`` epochs from scratch) at 0.05 with a quarter epoch of warm-up (``RETRAIN``).
2. ``cafenet`` and ``uniform``: ``python -m cafe_tf.compare --arms=cafenet,uniform --budgets=<target>``
   on the same model and recipe: a min-min supernet (with the sandwich rule, ``SUPERNET``) and an
   evolution search (equal scoring noise),
   and uniform width by bisection, both within +-1% of the target MACs, each retrained from
   scratch with the same recipe, once per seed (one supernet and one search for all seeds).
3. ``dagger``: ``cafe-tf prune`` of the ``full`` classifier to the target
   (``configs/fashion_mnist_resnet20_dagger.py``, exact-target selection), ``--gate_epochs`` of gate
   training and ``--finetune_epochs`` of fine-tuning (SGD 0.01 cosine). It trains on top of the
   full net's epochs, so it has seen more training than the others (``--gate_epochs`` +
   ``--finetune_epochs`` more).
4. per arm: ``python -m cafe_tf.train_detector --config configs/detect_offline_mobilenet_v2.py``
   on the classifier (``--det_epochs`` epochs of 125 steps), then ``python -m
   cafe_tf.export_detector --quant int8`` (its parity verdict is recorded; a failed parity does not
   stop the benchmark).
5. ``python -m deploy.benchmark --target host`` on the int8 files, ``--rounds`` interleaved rounds.

Every classifier, Dagger run and detector is repeated per ``--seeds`` seed, the same seeds for every
arm, so the table's second part gives each arm's paired difference against ``--baseline`` (classifier
accuracy, AP50, int8 AP50, latency) with a 95% t-interval (``cafe_tf.compare.paired_difference``;
none from a single seed). Writes ``<workdir>/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARMS = ("full", "cafenet", "uniform", "dagger")
MODEL = ("--config.model.name=mobilenet_v2", "--config.model.width_mult=0.35", "--config.model.bn_momentum=0.9",
         "--config.data.image_size=32")
# The demo's supernet recipe does not train this MobileNetV2: at SGD 0.1 it diverges (loss nan at
# step 80), at 0.05 with warm-up too (step 293); one random width per step learns next to nothing
# (after 150 steps of 0.05: full-width validation accuracy 0.31 with fixed sharing, 0.20 with K = 1,
# 0.13 with channel_multiple 8), while the sandwich rule (the max and min nets every step as well)
# reaches 0.74 in the same 150 steps, at ~3x the step cost (docs/results/width-search.md).
SUPERNET = ("--config.supernet.lr=0.05", "--config.supernet.warmup_epochs=0.25", "--config.supernet.sandwich=True")
# The demo's retraining recipe (SGD 0.1 from scratch, no warm-up) collapsed the searched net to a
# constant output from epoch 2 (loss 2.303, 10% accuracy); every classifier here trains at half the
# rate with a quarter epoch of warm-up.
RETRAIN = ("--config.train.lr=0.05", "--config.train.warmup_epochs=0.25")
CLASS_CONFIG = os.path.join(ROOT, "configs", "fashion_mnist_resnet20.py")
DAGGER_CONFIG = os.path.join(ROOT, "configs", "fashion_mnist_resnet20_dagger.py")
DETECT_CONFIG = os.path.join(ROOT, "configs", "detect_offline_mobilenet_v2.py")


def budget_key(target: float) -> str:
    from cafe_tf.compare import budget_key as key

    return key(target)


def classifier_path(workdir: str, arm: str, target: float, seed: int) -> str:
    """Where each arm's trained classifier (the detector's trunk source) of ``seed`` lands."""
    compare = os.path.join(workdir, "compare", f"budget_{budget_key(target)}")
    return {
        "full": os.path.join(workdir, f"full_s{seed}", "model.keras"),
        "cafenet": os.path.join(compare, "cafenet", f"retrain_s{seed}", "model.keras"),
        "uniform": os.path.join(compare, "uniform", f"retrain_s{seed}", "model.keras"),
        "dagger": os.path.join(workdir, f"dagger_s{seed}", "finetune", "model.keras"),
    }[arm]


def classifier_metrics(workdir: str, arm: str, target: float, seed: int) -> str:
    return os.path.join(os.path.dirname(classifier_path(workdir, arm, target, seed)), "metrics.json")


def detector_dir(workdir: str, arm: str, seed: int) -> str:
    return os.path.join(workdir, f"det_{arm}_s{seed}")


def latency_path(workdir: str, arm: str, seed: int) -> str:
    return os.path.join(workdir, "latency", f"{arm}_s{seed}.json")


def classifier_stages(args, arms: list[str]) -> list:
    """The classifiers ``arms`` need, for every seed (the full one always: the dagger arm prunes it)."""
    from cafe_tf.stages import Stage, is_metrics_file, read_json

    w, t = args.workdir, args.target
    recipe = (f"--config.train.epochs={args.class_epochs}", *RETRAIN)
    stages = [Stage(f"full_classifier_s{s}", ["-m", "cafe_tf.cli.train", f"--config={CLASS_CONFIG}", *MODEL, *recipe,
                                              f"--config.train.seed={s}", f"--workdir={os.path.join(w, f'full_s{s}')}"],
                    classifier_metrics(w, "full", t, s), is_metrics_file) for s in args.seeds]
    if {"cafenet", "uniform"} & set(arms):  # one supernet and search; compare retrains the nets once per seed
        stages.append(Stage("cafenet_and_uniform", [
            "-m", "cafe_tf.compare", f"--config={CLASS_CONFIG}", *MODEL, *recipe, *SUPERNET,
            f"--workdir={os.path.join(w, 'compare')}", "--arms=cafenet,uniform", f"--budgets={t}",
            f"--seeds={','.join(map(str, args.seeds))}", "--ranking=0", "--noise_repeats=0"],
            os.path.join(w, "compare", "compare.json"), read_json))
    if "dagger" in arms:
        stages += [Stage(f"dagger_s{s}", [
            "-m", "cafe_tf.cli.prune", f"--config={DAGGER_CONFIG}", *MODEL, "--config.data.augment=flip",
            f"--config.prune.pretrained={classifier_path(w, 'full', t, s)}", f"--config.prune.target_macs_ratio={t}",
            f"--config.dagger.epochs={args.gate_epochs}", f"--config.finetune.epochs={args.finetune_epochs}",
            "--config.finetune.eval_every=0", f"--config.train.seed={s}", f"--config.finetune.seed={s}",
            f"--workdir={os.path.join(w, f'dagger_s{s}')}"],
            classifier_metrics(w, "dagger", t, s), is_metrics_file) for s in args.seeds]
    return stages


def detector_stages(args, arm: str, seed: int) -> tuple:
    """(training, int8 export) of ``arm``'s detector of ``seed`` (on that seed's classifier)."""
    from cafe_tf.stages import Stage, is_metrics_file

    det = detector_dir(args.workdir, arm, seed)
    common = [f"--config={DETECT_CONFIG}", f"--workdir={det}",
              f"--config.detector.backbone={classifier_path(args.workdir, arm, args.target, seed)}"]
    train = Stage(f"{arm}_detector_s{seed}", ["-m", "cafe_tf.train_detector", *common,
                                              f"--config.train.epochs={args.det_epochs}", f"--config.train.seed={seed}"],
                  os.path.join(det, "metrics.json"), is_metrics_file)
    export = Stage(f"{arm}_int8_s{seed}", ["-m", "cafe_tf.export_detector", *common, "--quant=int8"],
                   os.path.join(det, "export_int8.json"), _is_export_record)
    return train, export


def _is_export_record(path: str) -> None:
    from cafe_tf.stages import read_json

    if "parity" not in read_json(path):
        raise ValueError(f"{path} holds no parity record")


def latency_stage(args, arms: list[str]):
    """Every int8 detector timed in one run, interleaved (``--rounds``), so load hits them alike."""
    from cafe_tf.stages import Stage, read_json

    pairs, last = [], None
    for seed in args.seeds:
        for arm in arms:
            last = latency_path(args.workdir, arm, seed)
            pairs += ["--model", os.path.join(detector_dir(args.workdir, arm, seed), "detector_int8.tflite"),
                      "--out", last]
    return Stage("host_latency", ["-m", "deploy.benchmark", "--target=host", *pairs, f"--rounds={args.rounds}",
                                  f"--runs={args.runs}", "--threads=1"], last, read_json)


def collect(workdir: str, target: float, arms: list[str], seeds: list[int]) -> list[dict]:
    """One row per (arm, seed) from the artifacts that exist (missing figures are absent)."""
    from cafe_tf.stages import read_json

    rows = []
    for seed in seeds:
        for arm in arms:
            row: dict = {"arm": arm, "seed": seed}
            cls = classifier_metrics(workdir, arm, target, seed)
            if os.path.isfile(cls):
                row["classifier_test_acc"] = (read_json(cls).get("final") or {}).get("test", {}).get("accuracy")
            det = detector_dir(workdir, arm, seed)
            if os.path.isfile(os.path.join(det, "metrics.json")):
                m = read_json(os.path.join(det, "metrics.json"))
                row.update(trunk_macs=m.get("backbone_macs"), trunk_params=m.get("backbone_params"),
                           steps=m.get("steps"), AP=m["final"]["AP"], AP50=m["final"]["AP50"])
            if os.path.isfile(os.path.join(det, "export_int8.json")):
                e = read_json(os.path.join(det, "export_int8.json"))
                ready = e.get("edgetpu_readiness") or {}
                row.update(int8_AP=e["map_tflite"]["AP"], int8_AP50=e["map_tflite"]["AP50"],
                           parity_ok=e["parity"]["ok"], max_score_diff=e["parity"]["max_score_diff"],
                           mean_iou=e["parity"]["mean_iou"],
                           edgetpu_ops=f"{ready['ops_on_edgetpu']}/{ready['num_ops']}" if ready else None)
            if os.path.isfile(latency_path(workdir, arm, seed)):
                b = read_json(latency_path(workdir, arm, seed))
                env, ms = b.get("environment", {}), b.get("latency_ms", {})
                row.update(latency_ms_p50=ms.get("p50"), latency_ms_mean=ms.get("mean"), latency_ms_std=ms.get("std"),
                           cpu=env.get("cpu"),
                           cpu_features=sorted(k for k, v in env.get("cpu_features", {}).items() if v))
            rows.append(row)
    full = {r["seed"]: r.get("trunk_macs") for r in rows if r["arm"] == "full"}
    for r in rows:
        if full.get(r["seed"]) and r.get("trunk_macs"):
            r["trunk_macs_ratio"] = r["trunk_macs"] / full[r["seed"]]
    return rows


PAIRED = ("classifier_test_acc", "AP50", "int8_AP50", "latency_ms_p50")  # the figures compared seed by seed


def paired(rows: list[dict], baseline: str) -> dict:
    """{arm: {figure: compare.paired_difference(arm, baseline)}}: the mean difference over the seeds both
    have, with its 95% t-interval (from 2 seeds on)."""
    from cafe_tf.compare import paired_difference

    by = {(r["arm"], r["seed"]): r for r in rows}
    arms = sorted({r["arm"] for r in rows} - {baseline}, key=ARMS.index)
    seeds = sorted({r["seed"] for r in rows})
    return {arm: {k: paired_difference({s: by[arm, s].get(k) for s in seeds}, {s: by[baseline, s].get(k) for s in seeds})
                  for k in PAIRED} for arm in arms}


def table(rows: list[dict], differences: dict | None = None, baseline: str = "uniform") -> list[str]:
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    lines = ["| trunk | seed | trunk MACs (ratio) | trunk params | classifier test acc | AP / AP50 (Keras) | "
             "int8 AP / AP50 | int8 parity (max score diff, mean IoU) | Edge TPU ops (checker) | "
             "int8 host latency p50 (mean ± std) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        parity = "-" if r.get("parity_ok") is None else (
            f"{'ok' if r['parity_ok'] else 'fails'} ({r['max_score_diff']:.3f}, {r['mean_iou']:.3f})")
        lines.append(
            f"| {r['arm']} | {r['seed']} | {f(r.get('trunk_macs'), ',')} ({f(r.get('trunk_macs_ratio'), '.4f')}) "
            f"| {f(r.get('trunk_params'), ',')} | {f(r.get('classifier_test_acc'), '.4f')} "
            f"| {f(r.get('AP'), '.4f')} / {f(r.get('AP50'), '.4f')} | {f(r.get('int8_AP'), '.4f')} / "
            f"{f(r.get('int8_AP50'), '.4f')} | {parity} | {r.get('edgetpu_ops') or '-'} "
            f"| {f(r.get('latency_ms_p50'), '.3f')} ms ({f(r.get('latency_ms_mean'), '.3f')} ± "
            f"{f(r.get('latency_ms_std'), '.3f')}) |")
    if differences:
        lines += ["", f"Paired differences against {baseline} (same seed), mean [95% t-interval]:", "",
                  "| trunk | " + " | ".join(PAIRED) + " |", "|---" * (len(PAIRED) + 1) + "|"]
        for arm, figures in differences.items():
            cells = []
            for k in PAIRED:
                d = figures[k]
                cells.append("-" if d is None else f"{d['mean']:+.4f} " + (
                    f"[{d['low']:+.4f}, {d['high']:+.4f}]" if d["low"] is not None else f"(n = {d['n']}: no interval)"))
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "detect_backbones"))
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    parser.add_argument("--target", type=float, default=0.5, help="the MACs budget as a fraction of the full 32x32 classifier's, where compare and Dagger fit it (default 0.5)")
    parser.add_argument("--class_epochs", type=int, default=3, help="classifier epochs (full, cafenet, uniform)")
    parser.add_argument("--gate_epochs", type=float, default=1.0, help="dagger: gate-training epochs")
    parser.add_argument("--finetune_epochs", type=int, default=2, help="dagger: fine-tuning epochs")
    parser.add_argument("--det_epochs", type=int, default=6, help="detector epochs (125 steps of batch 16 each)")
    parser.add_argument("--rounds", type=int, default=5, help="host latency: interleaved rounds")
    parser.add_argument("--runs", type=int, default=500, help="host latency: runs split over the rounds")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds: each arm's classifier and detector per "
                        "seed (the same seeds for every arm, so differences are paired); e.g. 0,1,2")
    parser.add_argument("--baseline", default="uniform", help=f"the arm the others are compared with, from {', '.join(ARMS)}")
    parser.add_argument("--summary_only", action="store_true", help="tabulate what exists; run nothing")
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        parser.error(f"--arms={args.arms!r}: {bad or 'none'} invalid; choose from {', '.join(ARMS)}")
    if not 0 < args.target < 1:
        parser.error(f"--target={args.target} must be in (0, 1)")
    try:
        args.seeds = sorted({int(x) for x in args.seeds.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--seeds={args.seeds!r}: give comma-separated integers, e.g. 0,1,2")
    if not args.seeds:
        parser.error("--seeds is empty; give comma-separated integers, e.g. 0,1,2")
    if args.baseline not in arms:
        parser.error(f"--baseline={args.baseline!r} is not among --arms {arms}")

    from cafe_tf import io
    from cafe_tf.stages import StageError, run_stages

    logs = os.path.join(args.workdir, "logs")
    if not args.summary_only:
        run_stages(classifier_stages(args, arms), logs)
        for seed in args.seeds:
            for arm in arms:
                train, export = detector_stages(args, arm, seed)
                run_stages([train], logs)
                try:
                    run_stages([export], logs)
                except StageError as e:  # parity outside its tolerances exits 1 after writing its record
                    if not export.is_done():
                        raise
                    print(f"      {arm} seed {seed}: {e} (the record is kept: the table shows the parity figures)",
                          flush=True)
        run_stages([latency_stage(args, arms)], logs)
    rows = collect(args.workdir, args.target, arms, args.seeds)
    differences = paired(rows, args.baseline)
    lines = table(rows, differences, args.baseline)
    print("\n".join(lines))
    io.write_json(os.path.join(args.workdir, "results.json"), {"args": vars(args), "rows": rows,
                                                                "paired": differences})
    with io.atomic_path(os.path.join(args.workdir, "results.md")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
