r"""CafeNet against its baselines and ablations at equal MACs and equal scoring noise, and the supernets' ranking quality.

    python -m cafe_tf.compare --config configs/fashion_mnist_resnet20.py --workdir runs/compare
    python -m cafe_tf.compare --config C --workdir W --budgets=0.5 --seeds=0,1 --ranking=20
    python -m cafe_tf.compare --config C --workdir W --arms=cafenet,fixed,zone_bins,r2,k4,k1_random,uniform_bins
    python -m cafe_tf.compare --config C --workdir W --summary_only    # tables from what exists

**Equal MACs.** Every arm's network lands within ``--macs_tolerance`` (default +-1%) of the same
target, ``budget x`` the full net's MACs, for each of ``--budgets``: searches keep candidates in
``[(1 - tol) T, (1 + tol) T]``, the uniform arm finds its one width factor by bisection.

**Equal scoring noise.** Every search arm scores a candidate with the evaluator's ``equal`` rule
(``cafe_tf.search.evaluator``): exactly ``search.num_candidates`` (K) evaluations on the same
validation images, evaluation i after BN recalibration on its own calibration set i, arrangement
``i mod L`` of the L arrangements the supernet's space offers (fixed sharing: the leftmost, K
times); the score is the best of the K for every arm alike. The noise itself is measured and
reported: each search arm's network at the first budget is evaluated under ``--noise_repeats``
calibration sets (leftmost arrangement); the std of those accuracies is the scoring noise.

Arms (``--arms``; each search arm: its supernet, then a search at every budget):

* ``cafenet``: the config's supernet (locally free sharing), evolution.
* ``fixed``: fixed-pattern sharing, same recipe, evolution.
* ``uniform``: one width factor for every group (rounded to ``supernet.channel_multiple``), by
  bisection to the target MACs, then an exact fit into the band (``cafe_tf.search.baselines.uniform_at``); no supernet.
* ``random``: the best of ``search.population x search.generations`` random nets in the band,
  scored by the cafenet supernet (the NAS sanity baseline: as many scores as the evolution).
* ablations of CafeNet's parts, each its own supernet, evolution: ``zone_bins`` /
  ``zone_channels`` (what r counts), ``r2``, ``r4``, ``k4`` (K = 4 candidates per min-min step),
  ``k1_random`` (one random arrangement per step, no min-min), ``uniform_bins`` /
  ``flops_bins`` (bin granularity), ``m8`` (``channel_multiple=8``: what rounding widths to multiples of 8
  costs against the config's multiple, usually 1).

Each arm's network is retrained once per ``--seeds`` seed (the same seeds for every arm, so
differences are paired). ``--ranking N`` (needs cafenet and fixed) draws N nets spread over
``RANKING_RANGE`` x the first budget, scores them with both supernets (equal rule), retrains each
once, and reports Kendall's tau-b and Spearman's rho with bootstrap 95% intervals.

Every step is a stage or a cached, atomically written file, so running the same command again
resumes. Writes into --workdir: ``supernets/<variant>/``, ``budget_<b>/<arm>/``, ``ranking/``,
``compare.json``, ``compare.md``, ``compare.png``.

Exit codes: 0 done, 1 a stage failed (its log is named), 2 usage or config error.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

from cafe_tf import programs
# The statistics live in cafe_tf.stats; re-exported here for the callers of compare.kendall_tau & co.
from cafe_tf.stats import bootstrap_ci, kendall_tau, paired_difference, ranks, spearman_rho  # noqa: F401


def define_flags() -> None:
    """The program's flags (defined only when it runs, so the library functions import anywhere)."""
    programs.define_config_flags()
    flags.DEFINE_list("seeds", ["0", "1", "2"], "retraining seeds (config.train.seed) of each arm's network; the same "
                      "for every arm, so differences are paired")
    flags.DEFINE_list("arms", list(DEFAULT_ARMS), f"which arms to run: {', '.join(ARMS)}")
    flags.DEFINE_list("budgets", ["0.3", "0.5", "0.7"], "target MACs as fractions of the full net's, each in (0, 1)")
    flags.DEFINE_float("macs_tolerance", 0.01, "every arm's network lands within this relative distance of the "
                       "target MACs")
    flags.DEFINE_integer("ranking", 20, f"nets within {RANKING_RANGE[0]}-{RANKING_RANGE[1]}x the first budget for the "
                         "ranking study (scored by the cafenet and fixed supernets, retrained once); 0 = none; runs "
                         "only when --arms includes both cafenet and fixed")
    flags.DEFINE_integer("noise_repeats", 8, "calibration sets under which each search arm's network is evaluated "
                         "to measure the scoring noise; 0 = not measured")
    flags.DEFINE_bool("summary_only", False, "run no stage: write compare.json/.md/.png from what exists")


@dataclasses.dataclass(frozen=True)
class Arm:
    """An arm: the supernet variant it searches with (None: no supernet), the search method, a description."""

    supernet: str | None
    method: str
    about: str


# Supernet variants: config.supernet overrides on top of the config's own settings.
SUPERNETS = {
    "cafenet": {"sharing": "locally_free"},
    "fixed": {"sharing": "fixed"},
    "zone_bins": {"sharing": "locally_free", "zone_unit": "bins"},
    "zone_channels": {"sharing": "locally_free", "zone_unit": "channels"},
    "r2": {"sharing": "locally_free", "r": 2},
    "r4": {"sharing": "locally_free", "r": 4},
    "k4": {"sharing": "locally_free", "num_candidates": 4},
    "k1_random": {"sharing": "locally_free", "num_candidates": 1},
    "uniform_bins": {"sharing": "locally_free", "granularity": "uniform"},
    "flops_bins": {"sharing": "locally_free", "granularity": "flops_sensitive"},
    "m8": {"sharing": "locally_free", "channel_multiple": 8},
}
ARMS = {
    "cafenet": Arm("cafenet", "evolution", "locally free sharing (the config's supernet), evolution"),
    "fixed": Arm("fixed", "evolution", "fixed-pattern sharing, evolution"),
    "uniform": Arm(None, "uniform", "one width factor, bisection to the target MACs"),
    "random": Arm("cafenet", "random", "best of population x generations random nets, cafenet supernet"),
    **{name: Arm(name, "evolution", f"ablation: supernet.{', '.join(f'{k}={v!r}' for k, v in over.items() if k != 'sharing')}")
       for name, over in SUPERNETS.items() if name not in ("cafenet", "fixed")},
}
DEFAULT_ARMS = ("cafenet", "fixed", "uniform", "random")
RANKING_RANGE = (0.6, 1.0)  # of the (first) budget: near the budget is where a search must rank well


def parse_seeds(values) -> list[int]:
    try:
        seeds = [int(v) for v in values]
    except ValueError:
        raise programs.UsageError(f"--seeds={','.join(values)} is invalid; give comma-separated integers, e.g. 0,1,2")
    if not seeds or len(set(seeds)) != len(seeds):
        raise programs.UsageError(f"--seeds={','.join(values)} is invalid; give distinct integers, e.g. 0,1,2")
    return seeds


def parse_arms(values) -> list[str]:
    bad = [a for a in values if a not in ARMS]
    if bad or not values:
        raise programs.UsageError(f"--arms={','.join(values)} is invalid; choose from {list(ARMS)}")
    return list(dict.fromkeys(values))


def parse_budgets(values) -> list[float]:
    try:
        budgets = [float(v) for v in values]
    except ValueError:
        budgets = []
    if not budgets or any(not 0 < b < 1 for b in budgets) or len({budget_key(b) for b in budgets}) != len(budgets):
        raise programs.UsageError(f"--budgets={','.join(values)} is invalid; give distinct fractions of the full "
                                  "net's MACs in (0, 1), e.g. 0.3,0.5,0.7")
    return budgets


def budget_key(budget: float) -> str:
    return f"{budget:g}"


# -------------------------------------------------------------------------------------------------
# Paths and stages


def supernet_path(workdir: str, variant: str) -> str:
    return os.path.join(workdir, "supernets", variant, "supernet.keras")


def arm_dir(workdir: str, budget: float, arm: str) -> str:
    return os.path.join(workdir, f"budget_{budget_key(budget)}", arm)


def variants_of(arms: list[str], ranking: int) -> list[str]:
    """The supernet variants the arms (and the ranking study) need, in a stable order."""
    need = {ARMS[a].supernet for a in arms if ARMS[a].supernet}
    if "uniform" in arms and not need:
        need.add("cafenet")  # the uniform arm reads the model and its groups from a supernet
    if ranking:
        need |= {"cafenet", "fixed"}
    return [v for v in SUPERNETS if v in need]


def supernet_stages(workdir: str, variants: list[str]) -> list:
    from cafe_tf.stages import Stage, is_keras_file

    cfg = programs.config_argv()
    return [Stage(f"supernet_{v}", ["-m", "cafe_tf.train_supernet", *cfg,
                                    *[f"--config.supernet.{k}={val}" for k, val in SUPERNETS[v].items()],
                                    f"--workdir={os.path.dirname(supernet_path(workdir, v))}"],
                  supernet_path(workdir, v), is_keras_file) for v in variants]


def search_stages(config, workdir: str, arms: list[str], budgets: list[float], full_macs: int,
                  tolerance: float) -> list:
    """The search stage of every search arm at every budget (equal scoring, the +-tolerance band)."""
    from cafe_tf.search.baselines import band
    from cafe_tf.space import read_widths
    from cafe_tf.stages import Stage

    cfg = programs.config_argv()
    stages = []
    for budget in budgets:
        lo, hi = band(budget * full_macs, tolerance)
        for arm in arms:
            spec = ARMS[arm]
            if spec.supernet is None:
                continue
            folder = arm_dir(workdir, budget, arm)
            extra = ([f"--config.search.random_samples={config.search.population * config.search.generations}"]
                     if spec.method == "random" else [])
            stages.append(Stage(f"{arm}_search_{budget_key(budget)}", [
                "-m", "cafe_tf.search", *cfg, f"--config.search.method={spec.method}",
                f"--config.search.supernet={supernet_path(workdir, spec.supernet)}",
                f"--config.search.max_macs={int(hi)}", f"--config.search.lower_ratio={lo / int(hi):.9f}",
                "--config.search.scoring=equal", *extra, f"--workdir={folder}"],
                os.path.join(folder, "widths.json"), read_widths))
    return stages


def retrain_stage(name: str, widths: str, workdir: str, seed: int):
    from cafe_tf.stages import Stage, is_metrics_file

    return Stage(name, ["-m", "cafe_tf.cli.train", *programs.config_argv(), f"--config.train.seed={seed}",
                        f"--workdir={workdir}", f"--widths={widths}"], os.path.join(workdir, "metrics.json"),
                 is_metrics_file)


# -------------------------------------------------------------------------------------------------
# The uniform arm


def write_uniform(workdir: str, budget: float, tolerance: float, multiple: int) -> str:
    """Writes the uniform arm's ``widths.json`` at ``budget`` (idempotent); returns its path."""
    from cafe_tf.search import run as search_run
    from cafe_tf.search.baselines import uniform_at
    from cafe_tf.space import write_widths

    path = os.path.join(arm_dir(workdir, budget, "uniform"), "widths.json")
    if os.path.isfile(path):
        return path
    source = next(supernet_path(workdir, v) for v in SUPERNETS if os.path.isfile(supernet_path(workdir, v)))
    _, record, _, supernet, space = search_run.load_supernet(source)
    target = budget * float(space.cost.macs())
    factor, selection = uniform_at(space, target, tolerance, multiple)
    write_widths(path, supernet.graph, selection, record["model"],
                 {"method": "uniform (bisection)", "width_factor": factor, "target_macs": target})
    return path


# -------------------------------------------------------------------------------------------------
# Ranking study


def write_ranking_candidates(workdir: str, count: int, budget: float, tolerance: float, seed: int) -> list[str]:
    """Writes ``ranking/c<i>/widths.json`` for ``count`` nets spread over RANKING_RANGE x the budget, each
    within ``tolerance`` of its own target (idempotent); returns the paths."""
    import numpy as np

    from cafe_tf.search import run as search_run
    from cafe_tf.search.baselines import band
    from cafe_tf.search.budget import Budget, BudgetChecker
    from cafe_tf.space import write_widths

    paths = [os.path.join(workdir, "ranking", f"c{i}", "widths.json") for i in range(count)]
    if all(os.path.isfile(p) for p in paths):
        return paths
    _, record, _, supernet, space = search_run.load_supernet(supernet_path(workdir, "cafenet"))
    target = budget * float(space.cost.macs())
    lo, hi = RANKING_RANGE
    rng = np.random.default_rng([seed, 0x7A0])
    for i, ratio in enumerate(np.linspace(lo, hi, count) if count > 1 else [hi]):
        if os.path.isfile(paths[i]):
            continue
        low, high = band(ratio * target, tolerance)
        found = BudgetChecker(space, Budget(max_macs=high, lower_ratio=low / high)).sample(rng, 1)
        if not found:
            raise ValueError(f"no net of this space lies within {100 * tolerance:g}% of {int(ratio * target):,} MACs "
                             "(ranking study); widen --macs_tolerance")
        write_widths(paths[i], supernet.graph, space.channels(space.fixed(found[0])), record["model"],
                     {"method": "ranking sample", "target_macs": float(ratio * target),
                      "target_budget_ratio": float(ratio)})
    return paths


def bins_in(space, record) -> list[int]:
    """The bin widths of a widths.json ``record`` in ``space`` (channel counts must fall on bin bounds)."""
    by_name = {g["name"]: len(g["channels"]) for g in record["groups"]}
    out = []
    for g in space.groups:
        if g.name not in by_name or by_name[g.name] not in g.bounds[1:]:
            raise ValueError(f"group {g.name!r} has {by_name.get(g.name)} channels, not a bin bound of this "
                             f"space ({list(g.bounds[1:])})")
        out.append(g.bounds.index(by_name[g.name]))
    return out


def equal_scoring(config, num_candidates: int | None = None):
    """A copy of ``config`` whose search scores with the equal rule (and ``num_candidates`` evaluations)."""
    import copy

    c = copy.deepcopy(config)
    c.search.scoring = "equal"
    if num_candidates is not None:
        c.search.num_candidates = int(num_candidates)
    return c


def score_nets(config, workdir: str, variant: str, records: dict[str, dict], data=None) -> dict[str, float]:
    """Scores (equal rule) of ``records`` (name -> widths.json record) by a supernet variant, cached in
    ranking/scores_<variant>.json. ``data`` (a ``cafe_tf.data.DataSource``) replaces the one ``config.data`` describes.
    """
    from cafe_tf.search import run as search_run
    from cafe_tf.search.evaluator import ScoreCache

    config = equal_scoring(config)
    path, _, _, supernet, space = search_run.load_supernet(supernet_path(workdir, variant))
    evaluator, fingerprint = search_run.make_evaluator(config, supernet, space, path, _data(config, data, workdir))
    cache = ScoreCache(evaluator, os.path.join(workdir, "ranking", f"scores_{variant}.json"), fingerprint)
    return {name: cache(bins_in(space, rec)) for name, rec in records.items()}


def _data(config, data, workdir):
    from cafe_tf import data as data_lib

    if data is not None:
        return data
    return data_lib.make_data_source(config.data, seed=config.search.seed, eval_splits=("validation",),
                                     input_scaling=config.model.input_scaling, workdir=workdir)


def scoring_noise(config, workdir: str, budget: float, arm: str, repeats: int, data=None) -> dict | None:
    """Accuracies of ``arm``'s network (leftmost arrangement) under ``repeats`` calibration sets, cached in
    ``<arm>/noise.json``: {"scores", "mean", "std", "repeats", "calibration_examples", "eval_examples"}."""
    import numpy as np

    from cafe_tf import io
    from cafe_tf.search import run as search_run
    from cafe_tf.space import read_widths
    from cafe_tf.stages import read_json

    folder = arm_dir(workdir, budget, arm)
    path = os.path.join(folder, "noise.json")
    if os.path.isfile(path):
        stored = read_json(path)
        if stored.get("repeats") == repeats:
            return stored
    widths_path = os.path.join(folder, "widths.json")
    variant = ARMS[arm].supernet
    if repeats < 2 or variant is None or not os.path.isfile(widths_path):
        return None
    sn_path, _, _, supernet, space = search_run.load_supernet(supernet_path(workdir, variant))
    c = equal_scoring(config, repeats)
    evaluator, _ = search_run.make_evaluator(c, supernet, space, sn_path, _data(c, data, workdir))
    scores = evaluator.repeat_scores(bins_in(space, read_widths(widths_path)))
    out = {"arm": arm, "supernet": variant, "scores": scores, "mean": float(np.mean(scores)),
           "std": float(np.std(scores, ddof=1)), "repeats": repeats,
           "calibration_examples": int(c.search.calibration_examples), "eval_examples": int(c.search.eval_examples)}
    io.write_json(path, out)
    return out


# -------------------------------------------------------------------------------------------------
# Summary


def _test_accuracy(path: str) -> float | None:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None
    return ((metrics.get("final") or {}).get("test") or {}).get("accuracy")


def summarize(config, workdir: str, arms: list[str], budgets: list[float], seeds: list[int], ranking: int,
              scores: dict[str, dict[str, float]], noise: dict[str, dict] | None = None,
              tolerance: float = 0.01) -> dict:
    """The comparison record (compare.json) from the artifacts in ``workdir``."""
    import numpy as np

    from cafe_tf.space import read_widths

    out = {"model": config.model.name, "data": config.data.name, "seeds": seeds, "budgets": budgets,
           "macs_tolerance": tolerance, "arms": {}, "paired": {}, "noise": dict(noise or {}), "ranking": None}
    for budget in budgets:
        key = budget_key(budget)
        rows = out["arms"][key] = {}
        for arm in arms:
            widths_path = os.path.join(arm_dir(workdir, budget, arm), "widths.json")
            if not os.path.isfile(widths_path):
                continue
            rec = read_widths(widths_path)
            accs = {str(s): _test_accuracy(os.path.join(arm_dir(workdir, budget, arm), f"retrain_s{s}",
                                                        "metrics.json")) for s in seeds}
            done = [a for a in accs.values() if a is not None]
            target = budget * rec["full_macs"]
            rows[arm] = {
                "macs": rec["macs"], "params": rec["params"], "full_macs": rec["full_macs"],
                "macs_vs_target": rec["macs"] / target, "in_band": abs(rec["macs"] - target) <= tolerance * target,
                "supernet_score": rec.get("score"), "widths": [len(g["channels"]) for g in rec["groups"]],
                "test_accuracy": accs,
                "mean": float(np.mean(done)) if done else None,
                "std": float(np.std(done, ddof=1)) if len(done) > 1 else None, "runs": len(done),
            }
        if "cafenet" in rows:
            out["paired"][key] = {arm: paired_difference(r["test_accuracy"], rows["cafenet"]["test_accuracy"])
                                  for arm, r in rows.items() if arm != "cafenet"}
    if ranking and scores:
        nets = []
        for i in range(ranking):
            name = f"c{i}"
            acc = _test_accuracy(os.path.join(workdir, "ranking", name, "retrain", "metrics.json"))
            rec_path = os.path.join(workdir, "ranking", name, "widths.json")
            if acc is None or not os.path.isfile(rec_path) or not all(name in s for s in scores.values()):
                continue
            rec = read_widths(rec_path)
            nets.append({"name": name, "macs": rec["macs"], "test_accuracy": acc,
                         **{f"score_{v}": s[name] for v, s in scores.items()}})
        stats = {}
        for v in scores:
            if len(nets) >= 2:
                x, y = [r[f"score_{v}"] for r in nets], [r["test_accuracy"] for r in nets]
                stats[v] = {"kendall_tau": kendall_tau(x, y), "kendall_tau_ci": bootstrap_ci(kendall_tau, x, y),
                            "spearman_rho": spearman_rho(x, y), "spearman_rho_ci": bootstrap_ci(spearman_rho, x, y)}
        out["ranking"] = {"nets": nets, "stats": stats, "retrain_seed": seeds[0], "budget": budgets[0],
                          "range_of_budget": list(RANKING_RANGE)}
    return out


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def write_summary(workdir: str, summary: dict) -> None:
    from cafe_tf import io

    io.write_json(os.path.join(workdir, "compare.json"), summary)
    tol = summary["macs_tolerance"]
    lines = [f"# CafeNet vs baselines at equal MACs: {summary['model']} on {summary['data']}", "",
             "![compare](compare.png)", "",
             f"Every arm's network is within ±{100 * tol:g}% of the target MACs; every search scores a candidate as "
             "the best of the same number of evaluations on the same validation images, each after BN "
             "recalibration on its own calibration set (`search.scoring=equal`). Seeds are shared, so "
             "differences are paired.", "",
             "| budget | arm | MACs (% of full; ÷ target) | supernet score | test accuracy % (mean ± std) | runs | "
             "per seed |", "|---|---|---|---|---|---|---|"]
    for key, rows in summary["arms"].items():
        for arm, r in rows.items():
            std = "" if r["std"] is None else f" ± {100 * r['std']:.2f}"
            score = "–" if r["supernet_score"] is None else f"{r['supernet_score']:.4f}"
            lines.append(f"| {key} | {arm} | {r['macs'] / 1e6:.3f}M ({100 * r['macs'] / r['full_macs']:.1f}%; "
                         f"{r['macs_vs_target']:.4f}) | {score} | {_pct(r['mean'])}{std} | {r['runs']} | "
                         + ", ".join(_pct(a) for a in r["test_accuracy"].values()) + " |")
    if any(summary["paired"].values()):
        lines += ["", "Paired differences (arm − cafenet, same seeds), test accuracy points, 95% t-interval:", "",
                  "| budget | arm − cafenet | pairs | mean | 95% interval |", "|---|---|---|---|---|"]
        for key, rows in summary["paired"].items():
            for arm, d in rows.items():
                if d is None:
                    continue
                ci = "– (needs ≥ 2 pairs)" if d["low"] is None else f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
                lines.append(f"| {key} | {arm} | {d['n']} | {100 * d['mean']:+.2f} | {ci} |")
    if summary["noise"]:
        lines += ["", "Scoring noise: one network (each arm's, first budget, leftmost arrangement) evaluated after "
                  "recalibration on different calibration sets:", "",
                  "| arm | supernet | sets | calibration images | validation images | mean % | std (points) |",
                  "|---|---|---|---|---|---|---|"]
        for arm, n in summary["noise"].items():
            lines.append(f"| {arm} | {n['supernet']} | {n['repeats']} | {n['calibration_examples']} | "
                         f"{n['eval_examples'] or 'all'} | {100 * n['mean']:.2f} | {100 * n['std']:.2f} |")
    rank = summary.get("ranking")
    if rank:
        lo, hi = rank["range_of_budget"]
        lines += ["", f"Ranking: {len(rank['nets'])} nets within {lo}-{hi}x the {rank['budget']:g} budget, retrained "
                  f"once (seed {rank['retrain_seed']}); each supernet's score against the retrained test accuracy, "
                  "bootstrap 95% intervals over the nets:", "",
                  "| supernet | Kendall tau-b | 95% interval | Spearman rho | 95% interval |", "|---|---|---|---|---|"]
        for v, s in rank["stats"].items():
            lines.append(f"| {v} | {s['kendall_tau']:.3f} | [{s['kendall_tau_ci'][0]:.3f}, {s['kendall_tau_ci'][1]:.3f}]"
                         f" | {s['spearman_rho']:.3f} | [{s['spearman_rho_ci'][0]:.3f}, {s['spearman_rho_ci'][1]:.3f}] |")
        variants = sorted(k[6:] for k in (rank["nets"][0] if rank["nets"] else {}) if k.startswith("score_"))
        lines += ["", "| net | MACs | test accuracy | " + " | ".join(f"{v} score" for v in variants) + " |",
                  "|---|---|---|" + "---|" * len(variants)]
        for r in rank["nets"]:
            lines.append(f"| {r['name']} | {r['macs'] / 1e6:.3f}M | {100 * r['test_accuracy']:.2f}% | "
                         + " | ".join(f"{r[f'score_{v}']:.4f}" for v in variants) + " |")
    io.write_text(os.path.join(workdir, "compare.md"), "\n".join(lines) + "\n")
    io.write_bytes(os.path.join(workdir, "compare.png"), render(summary))


def render(summary: dict) -> bytes:
    """PNG: test accuracy against MACs (one point per arm, budget and seed), and supernet score vs retrained accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cafe_tf.report import figure_png
    from cafe_tf.search.baselines import band

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    colors = {arm: plt.get_cmap("tab10")(i % 10) for i, arm in enumerate(ARMS)}
    shown = set()
    for key, rows in summary["arms"].items():
        if rows:  # the target and its band
            target = float(key) * next(iter(rows.values()))["full_macs"] / 1e6
            low, high = band(target, summary["macs_tolerance"])
            ax.axvspan(low, high, color="tab:gray", alpha=0.12, zorder=1)
            ax.axvline(target, color="tab:gray", ls="--", lw=0.8, zorder=2)
        for arm, r in rows.items():
            accs = [100 * a for a in r["test_accuracy"].values() if a is not None]
            ax.scatter([r["macs"] / 1e6] * len(accs), accs, color=colors[arm], s=22, alpha=0.8, zorder=3,
                       label=None if arm in shown else arm)
            shown.add(arm)
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Retrained at equal MACs (±{100 * summary['macs_tolerance']:g}%), one point per seed")
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize=8)
    ax = axes[1]
    rank = summary.get("ranking")
    if rank and rank["nets"]:
        for v, marker in zip(sorted(rank["stats"]), "os^v"):
            tau = rank["stats"][v]["kendall_tau"]
            ax.scatter([r[f"score_{v}"] for r in rank["nets"]], [100 * r["test_accuracy"] for r in rank["nets"]],
                       marker=marker, label=f"{v} supernet (tau {tau:.2f})")
        ax.legend(fontsize=8)
    ax.set_xlabel("supernet validation score")
    ax.set_ylabel("retrained test accuracy (%)")
    ax.set_title("Ranking quality")
    ax.grid(alpha=0.3)
    return figure_png(fig, dpi=100)


# -------------------------------------------------------------------------------------------------


def main(config, workdir: str) -> None:
    from cafe_tf.config import ConfigError
    from cafe_tf.search import run as search_run
    from cafe_tf.space import read_widths
    from cafe_tf.stages import run_stages

    for section in ("supernet", "search"):
        if section not in config:
            raise ConfigError(f"the config has no {section!r} section; compare needs a CafeNet config "
                              "(see configs/fashion_mnist_resnet20.py)")
    f = flags.FLAGS
    if f.ranking < 0:
        raise programs.UsageError(f"--ranking={f.ranking} is invalid; it must be >= 0 (0 = no ranking study)")
    if f.noise_repeats < 0 or f.noise_repeats == 1:
        raise programs.UsageError(f"--noise_repeats={f.noise_repeats} is invalid; it must be 0 (off) or >= 2")
    if not 0 < f.macs_tolerance < 0.5:
        raise programs.UsageError(f"--macs_tolerance={f.macs_tolerance} is invalid; it must be in (0, 0.5), e.g. 0.01")
    seeds, arms, budgets = parse_seeds(f.seeds), parse_arms(f.arms), parse_budgets(f.budgets)
    tol = f.macs_tolerance
    ranking = f.ranking if {"cafenet", "fixed"} <= set(arms) else 0
    workdir = os.path.abspath(workdir)
    logs = os.path.join(workdir, "logs")
    if not f.summary_only:
        run_stages(supernet_stages(workdir, variants_of(arms, ranking)), logs)
        first = next(supernet_path(workdir, v) for v in SUPERNETS if os.path.isfile(supernet_path(workdir, v)))
        full_macs = int(search_run.load_supernet(first)[4].cost.macs())
        run_stages(search_stages(config, workdir, arms, budgets, full_macs, tol), logs)
        if "uniform" in arms:
            for budget in budgets:
                write_uniform(workdir, budget, tol, int(config.supernet.get("channel_multiple", 1)))
        # Seed by seed, so an early stop still leaves every arm compared on the first seeds.
        run_stages([retrain_stage(f"{arm}_{budget_key(b)}_retrain_s{s}",
                                  os.path.join(arm_dir(workdir, b, arm), "widths.json"),
                                  os.path.join(arm_dir(workdir, b, arm), f"retrain_s{s}"), s)
                    for s in seeds for b in budgets for arm in arms], logs)
        if ranking:
            paths = write_ranking_candidates(workdir, ranking, budgets[0], tol, config.search.seed)
            run_stages([retrain_stage(f"ranking_c{i}", p, os.path.join(os.path.dirname(p), "retrain"), seeds[0])
                        for i, p in enumerate(paths)], logs)
    noise = {}
    if f.noise_repeats:
        for arm in arms:
            if ARMS[arm].supernet and os.path.isfile(supernet_path(workdir, ARMS[arm].supernet)):
                n = scoring_noise(config, workdir, budgets[0], arm, f.noise_repeats)
                if n:
                    noise[arm] = n
    scores = {}
    if ranking and all(os.path.isfile(supernet_path(workdir, v)) for v in ("cafenet", "fixed")):
        records = {}
        for i in range(ranking):
            path = os.path.join(workdir, "ranking", f"c{i}", "widths.json")
            if os.path.isfile(path):
                records[f"c{i}"] = read_widths(path)
        scores = {v: score_nets(config, workdir, v, records) for v in ("cafenet", "fixed")}
    summary = summarize(config, workdir, arms, budgets, seeds, ranking, scores, noise, tol)
    write_summary(workdir, summary)
    for key, rows in summary["arms"].items():
        for arm, r in rows.items():
            std = "" if r["std"] is None else f" ± {100 * r['std']:.2f}"
            print(f"budget {key:<5} {arm:<13} {r['macs']:>12,} MACs ({r['macs_vs_target']:.4f} x target)  "
                  f"test accuracy {_pct(r['mean'])}%{std} ({r['runs']} runs)", flush=True)
    for arm, n in noise.items():
        print(f"scoring noise ({arm}'s net, {n['supernet']} supernet): std {100 * n['std']:.2f} points over "
              f"{n['repeats']} calibration sets")
    if summary["ranking"]:
        for v, s in summary["ranking"]["stats"].items():
            print(f"ranking: {v} supernet Kendall tau {s['kendall_tau']:.3f} {s['kendall_tau_ci']}, Spearman rho "
                  f"{s['spearman_rho']:.3f} {s['spearman_rho_ci']} over {len(summary['ranking']['nets'])} nets")
    print(f"report: {os.path.join(workdir, 'compare.md')}\n        {os.path.join(workdir, 'compare.png')}", flush=True)


if __name__ == "__main__":
    from cafe_tf.search.run import validate_search
    from cafe_tf.training.supernet import validate_supernet

    define_flags()
    programs.run_program(main, extra_validators={"supernet": validate_supernet, "search": validate_search})
