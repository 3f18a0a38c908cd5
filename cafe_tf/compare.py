r"""CafeNet against its baselines on one budget, retrained alike, and the supernets' ranking quality.

    python -m cafe_tf.compare --config configs/fashion_mnist_resnet20.py --workdir runs/compare
    python -m cafe_tf.compare --config C --workdir W --seeds=0,1,2 --ranking=8
    python -m cafe_tf.compare --config C --workdir W --summary_only    # tables from what exists

Arms, each searched at ``config.search``'s budget like the pipeline: ``cafenet`` (locally free
sharing), ``fixed`` (fixed-pattern sharing, same recipe) and ``uniform`` (one width factor, scored
by the cafenet supernet, or the fixed one when cafenet is not run). Each arm's network is retrained
once per ``--seeds`` seed. ``--ranking N`` (with both cafenet and fixed) scores N networks spread
over MACs with both supernets, retrains them once and reports Kendall's tau-b (the protocol:
docs/papers.md).

Every step is a stage or a cached, atomically written file, so running the same command again
resumes. Writes into --workdir: ``<arm>/``, ``ranking/``, ``compare.json``, ``compare.md``, ``compare.png``.

Exit codes: 0 done, 1 a stage failed (its log is named), 2 usage or config error.
"""

from __future__ import annotations

import os

from absl import flags

from cafe_tf import programs


def define_flags() -> None:
    """The program's flags (defined only when it runs, so the library functions import anywhere)."""
    programs.define_config_flags()
    flags.DEFINE_list("seeds", ["0", "1", "2"], "retraining seeds (config.train.seed) of each arm's network")
    flags.DEFINE_list("arms", list(ARMS), "which arms to run: cafenet, fixed, uniform")
    flags.DEFINE_integer("ranking", 8, "width assignments spread over MACs for the ranking study (scored by the "
                         "cafenet and fixed supernets, retrained once); 0 = no ranking study; runs only when --arms "
                         "includes both cafenet and fixed")
    flags.DEFINE_bool("summary_only", False, "run no stage: write compare.json/.md/.png from what exists")


ARMS = ("cafenet", "fixed", "uniform")
RANKING_RANGE = (0.25, 0.95)  # of the full net's MACs
SHARING = {"cafenet": "locally_free", "fixed": "fixed"}


def kendall_tau(x, y) -> float:
    """Kendall's tau-b of two equally long sequences (ties in either count as neither concordant nor discordant)."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau needs two 1-D sequences of one length, got shapes {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ValueError(f"kendall_tau needs at least 2 pairs, got {len(x)}")
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = float(np.sum(dx * dy))
    pairs_x, pairs_y = float(np.sum(dx != 0)), float(np.sum(dy != 0))
    if pairs_x == 0 or pairs_y == 0:
        return float("nan")  # one side is constant: no ranking to compare
    return concordant_minus_discordant / float(np.sqrt(pairs_x * pairs_y))


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


# -------------------------------------------------------------------------------------------------
# Stages


def search_stages(workdir: str, arms: list[str]) -> list:
    """Supernet and search stages of the arms (``uniform`` reads the cafenet supernet, or the fixed one)."""
    from cafe_tf.space import read_widths
    from cafe_tf.stages import Stage, is_keras_file

    cfg = programs.config_argv()

    def w(*parts: str) -> str:
        return os.path.join(workdir, *parts)

    stages = []
    for arm in ("cafenet", "fixed"):
        if arm in arms or (arm == "cafenet" and "uniform" in arms and "fixed" not in arms):
            stages.append(Stage(f"{arm}_supernet", ["-m", "cafe_tf.train_supernet", *cfg,
                                                    f"--config.supernet.sharing={SHARING[arm]}", f"--workdir={w(arm)}"],
                                w(arm, "supernet.keras"), is_keras_file))
        if arm in arms:
            stages.append(Stage(f"{arm}_search", ["-m", "cafe_tf.search", *cfg, "--config.search.method=evolution",
                                                  f"--workdir={w(arm)}"], w(arm, "widths.json"), read_widths))
    if "uniform" in arms:
        source = "cafenet" if any(s.name == "cafenet_supernet" for s in stages) else "fixed"
        stages.append(Stage("uniform_search", ["-m", "cafe_tf.search", *cfg, "--config.search.method=uniform",
                                               f"--config.search.supernet={w(source, 'supernet.keras')}",
                                               f"--workdir={w('uniform')}"], w("uniform", "widths.json"), read_widths))
    return stages


def retrain_stage(name: str, widths: str, workdir: str, seed: int):
    from cafe_tf.stages import Stage, is_metrics_file

    return Stage(name, ["-m", "cafe_tf.train", *programs.config_argv(), f"--config.train.seed={seed}",
                        f"--workdir={workdir}", f"--widths={widths}"], os.path.join(workdir, "metrics.json"),
                 is_metrics_file)


def supernet_path(workdir: str, arm: str) -> str:
    return os.path.join(workdir, arm, "supernet.keras")


# -------------------------------------------------------------------------------------------------
# Ranking study


def write_ranking_candidates(workdir: str, count: int, seed: int) -> list[str]:
    """Writes ``ranking/c<i>/widths.json`` for ``count`` nets spread over MACs (idempotent); returns the paths."""
    import numpy as np

    from cafe_tf.search import run as search_run
    from cafe_tf.search.budget import Budget, BudgetChecker
    from cafe_tf.space import write_widths

    paths = [os.path.join(workdir, "ranking", f"c{i}", "widths.json") for i in range(count)]
    if all(os.path.isfile(p) for p in paths):
        return paths
    source = next(supernet_path(workdir, a) for a in ("cafenet", "fixed") if os.path.isfile(supernet_path(workdir, a)))
    _, record, _, supernet, space = search_run.load_supernet(source)
    full = float(space.cost.macs())
    lo, hi = RANKING_RANGE
    rng = np.random.default_rng([seed, 0x7A0])
    for i, ratio in enumerate(np.linspace(lo, hi, count) if count > 1 else [hi]):
        if os.path.isfile(paths[i]):
            continue
        checker = BudgetChecker(space, Budget(max_macs=ratio * full, lower_ratio=0.9))
        (widths,) = checker.sample(rng, 1)
        write_widths(paths[i], supernet.graph, space.channels(space.fixed(widths)), record["model"],
                     {"method": "ranking sample", "target_macs_ratio": float(ratio)})
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


def score_nets(config, workdir: str, arm: str, records: dict[str, dict], data=None) -> dict[str, float]:
    """Scores of ``records`` (name -> widths.json record) by ``arm``'s supernet, cached in ranking/scores_<arm>.json.

    ``data`` (a ``cafe_tf.data.DataSource``) replaces the one ``config.data`` describes.
    """
    from cafe_tf import data as data_lib
    from cafe_tf.search import run as search_run
    from cafe_tf.search.evaluator import ScoreCache

    path, _, _, supernet, space = search_run.load_supernet(supernet_path(workdir, arm))
    if data is None:
        data = data_lib.make_data_source(config.data, seed=config.search.seed, eval_splits=("validation",),
                                         input_scaling=config.model.input_scaling)
    evaluator, fingerprint = search_run.make_evaluator(config, supernet, space, path, data)
    cache = ScoreCache(evaluator, os.path.join(workdir, "ranking", f"scores_{arm}.json"), fingerprint)
    return {name: cache(bins_in(space, rec)) for name, rec in records.items()}


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


def summarize(config, workdir: str, arms: list[str], seeds: list[int], ranking: int,
              scores: dict[str, dict[str, float]]) -> dict:
    """The comparison record (compare.json) from the artifacts in ``workdir``."""
    import numpy as np

    from cafe_tf.space import read_widths

    out = {"model": config.model.name, "data": config.data.name, "seeds": seeds, "arms": {}, "ranking": None}
    for arm in arms:
        widths_path = os.path.join(workdir, arm, "widths.json")
        if not os.path.isfile(widths_path):
            continue
        rec = read_widths(widths_path)
        accs = {s: _test_accuracy(os.path.join(workdir, arm, f"retrain_s{s}", "metrics.json")) for s in seeds}
        done = [a for a in accs.values() if a is not None]
        out["arms"][arm] = {
            "macs": rec["macs"], "params": rec["params"], "full_macs": rec["full_macs"],
            "supernet_score": rec.get("score"), "widths": [len(g["channels"]) for g in rec["groups"]],
            "test_accuracy": {str(s): a for s, a in accs.items()},
            "mean": float(np.mean(done)) if done else None,
            "std": float(np.std(done, ddof=1)) if len(done) > 1 else None,
            "min": min(done) if done else None, "max": max(done) if done else None, "runs": len(done),
        }
    if ranking and scores:
        rows = []
        names = [f"c{i}" for i in range(ranking)] + [f"arm:{a}" for a in arms]
        for name in names:
            if name.startswith("arm:"):
                arm = name[4:]
                acc = _test_accuracy(os.path.join(workdir, arm, f"retrain_s{seeds[0]}", "metrics.json"))
                rec_path = os.path.join(workdir, arm, "widths.json")
            else:
                acc = _test_accuracy(os.path.join(workdir, "ranking", name, "retrain", "metrics.json"))
                rec_path = os.path.join(workdir, "ranking", name, "widths.json")
            if acc is None or not os.path.isfile(rec_path) or not all(name in s for s in scores.values()):
                continue
            rec = read_widths(rec_path)
            rows.append({"name": name, "macs": rec["macs"], "test_accuracy": acc,
                         **{f"score_{arm}": s[name] for arm, s in scores.items()}})
        taus = {}
        for arm in scores:
            if len(rows) >= 2:
                taus[arm] = kendall_tau([r[f"score_{arm}"] for r in rows], [r["test_accuracy"] for r in rows])
        out["ranking"] = {"nets": rows, "kendall_tau": taus, "retrain_seed": seeds[0],
                          "macs_range": list(RANKING_RANGE)}
    return out


def write_summary(workdir: str, summary: dict) -> None:
    from cafe_tf import io

    io.write_json(os.path.join(workdir, "compare.json"), summary)
    lines = [f"# CafeNet vs baselines: {summary['model']} on {summary['data']}", "", "![compare](compare.png)", "",
             "| arm | MACs | params | supernet score | test accuracy (mean ± std) | runs | per seed |",
             "|---|---|---|---|---|---|---|"]
    for arm, r in summary["arms"].items():
        mean = "–" if r["mean"] is None else f"{100 * r['mean']:.2f}%"
        std = "" if r["std"] is None else f" ± {100 * r['std']:.2f}"
        per = ", ".join("–" if a is None else f"{100 * a:.2f}" for a in r["test_accuracy"].values())
        score = "–" if r["supernet_score"] is None else f"{r['supernet_score']:.4f}"
        lines.append(f"| {arm} | {r['macs'] / 1e6:.2f}M ({100 * r['macs'] / r['full_macs']:.1f}%) | {r['params']:,} "
                     f"| {score} | {mean}{std} | {r['runs']} | {per} |")
    rank = summary.get("ranking")
    if rank:
        lines += ["", f"Ranking: {len(rank['nets'])} nets, retrained once (seed {rank['retrain_seed']}); Kendall tau-b "
                  "of each supernet's score against the retrained test accuracy:", ""]
        lines += [f"- {arm} supernet: tau = {tau:.3f}" for arm, tau in rank["kendall_tau"].items()]
        arms = sorted(k[6:] for k in (rank["nets"][0] if rank["nets"] else {}) if k.startswith("score_"))
        lines += ["", "| net | MACs | test accuracy | " + " | ".join(f"{a} score" for a in arms) + " |",
                  "|---|---|---|" + "---|" * len(arms)]
        for r in rank["nets"]:
            lines.append(f"| {r['name']} | {r['macs'] / 1e6:.2f}M | {100 * r['test_accuracy']:.2f}% | "
                         + " | ".join(f"{r[f'score_{a}']:.4f}" for a in arms) + " |")
    io.write_text(os.path.join(workdir, "compare.md"), "\n".join(lines) + "\n")
    io.write_bytes(os.path.join(workdir, "compare.png"), render(summary))


def render(summary: dict) -> bytes:
    """PNG: test accuracy per arm (every seed and the mean), and supernet score vs retrained accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cafe_tf.report import figure_png

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    ax = axes[0]
    for i, (arm, r) in enumerate(summary["arms"].items()):
        accs = [100 * a for a in r["test_accuracy"].values() if a is not None]
        ax.scatter([i] * len(accs), accs, color="tab:gray", s=18, zorder=3)
        if r["mean"] is not None:
            ax.errorbar([i], [100 * r["mean"]], yerr=[100 * (r["std"] or 0)], fmt="o", color="tab:red", capsize=6,
                        zorder=4)
    ax.set_xticks(range(len(summary["arms"])))
    ax.set_xticklabels([f"{a}\n{r['macs'] / 1e6:.1f}M MACs" for a, r in summary["arms"].items()])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Retrained at the same budget (mean ± std, seeds in gray)")
    ax.grid(alpha=0.3)
    ax = axes[1]
    rank = summary.get("ranking")
    if rank and rank["nets"]:
        for arm, marker in (("cafenet", "o"), ("fixed", "s")):
            key = f"score_{arm}"
            if key in rank["nets"][0]:
                tau = rank["kendall_tau"].get(arm, float("nan"))
                ax.scatter([r[key] for r in rank["nets"]], [100 * r["test_accuracy"] for r in rank["nets"]],
                           marker=marker, label=f"{arm} supernet (tau {tau:.2f})")
        ax.legend(fontsize=8)
    ax.set_xlabel("supernet validation score")
    ax.set_ylabel("retrained test accuracy (%)")
    ax.set_title("Ranking quality")
    ax.grid(alpha=0.3)
    return figure_png(fig, dpi=100)


# -------------------------------------------------------------------------------------------------


def main(config, workdir: str) -> None:
    from cafe_tf.config import ConfigError
    from cafe_tf.space import read_widths
    from cafe_tf.stages import run_stages

    for section in ("supernet", "search"):
        if section not in config:
            raise ConfigError(f"the config has no {section!r} section; compare needs a CafeNet config "
                              "(see configs/fashion_mnist_resnet20.py)")
    f = flags.FLAGS
    if f.ranking < 0:
        raise programs.UsageError(f"--ranking={f.ranking} is invalid; it must be >= 0 (0 = no ranking study)")
    seeds, arms = parse_seeds(f.seeds), parse_arms(f.arms)
    ranking = f.ranking if {"cafenet", "fixed"} <= set(arms) else 0
    workdir = os.path.abspath(workdir)
    logs = os.path.join(workdir, "logs")
    if not f.summary_only:
        run_stages(search_stages(workdir, arms), logs)
        # Seed by seed, so an early stop still leaves every arm compared on the first seeds.
        retrains = [retrain_stage(f"{arm}_retrain_s{s}", os.path.join(workdir, arm, "widths.json"),
                                  os.path.join(workdir, arm, f"retrain_s{s}"), s) for s in seeds for arm in arms]
        run_stages(retrains, logs)
        if ranking:
            paths = write_ranking_candidates(workdir, ranking, config.search.seed)
            run_stages([retrain_stage(f"ranking_c{i}", p, os.path.join(os.path.dirname(p), "retrain"), seeds[0])
                        for i, p in enumerate(paths)], logs)
    scores = {}
    if ranking and all(os.path.isfile(supernet_path(workdir, a)) for a in ("cafenet", "fixed")):
        records = {}
        for i in range(ranking):
            path = os.path.join(workdir, "ranking", f"c{i}", "widths.json")
            if os.path.isfile(path):
                records[f"c{i}"] = read_widths(path)
        records.update({f"arm:{a}": read_widths(os.path.join(workdir, a, "widths.json")) for a in arms
                        if os.path.isfile(os.path.join(workdir, a, "widths.json"))})
        scores = {arm: score_nets(config, workdir, arm, records) for arm in ("cafenet", "fixed")}
    summary = summarize(config, workdir, arms, seeds, ranking, scores)
    write_summary(workdir, summary)
    for arm, r in summary["arms"].items():
        mean = "–" if r["mean"] is None else f"{100 * r['mean']:.2f}%"
        std = "" if r["std"] is None else f" ± {100 * r['std']:.2f}"
        print(f"{arm:<8} {r['macs']:>12,} MACs  test accuracy {mean}{std} ({r['runs']} runs)", flush=True)
    if summary["ranking"]:
        for arm, tau in summary["ranking"]["kendall_tau"].items():
            print(f"ranking: {arm} supernet Kendall tau {tau:.3f} over {len(summary['ranking']['nets'])} nets")
    print(f"report: {os.path.join(workdir, 'compare.md')}\n        {os.path.join(workdir, 'compare.png')}", flush=True)


if __name__ == "__main__":
    from cafe_tf.search.run import validate_search
    from cafe_tf.train.supernet import validate_supernet

    define_flags()
    programs.run_program(main, extra_validators={"supernet": validate_supernet, "search": validate_search})
