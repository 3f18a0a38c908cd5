r"""A multi-width bundle: several networks of one supernet, retrained, exported to TFLite and timed.

    python -m cafe_tf.bundle --config configs/fashion_mnist_resnet20.py --workdir runs/demo
    python -m cafe_tf.bundle --config C --workdir W --config.bundle.budgets=0.3,0.5,0.7
    python -m cafe_tf.bundle --config C --workdir W --config.bundle.size=4 --config.bundle.format=int8

One network per MACs budget (``config.bundle.budgets``: fractions of the full net's MACs, each in
(0, 1]; with none given, ``config.bundle.size`` evenly spaced ones, k / size for k = 1..size). Each
budget gets its own search on the supernet (``python -m cafe_tf.search`` with ``max_macs`` = the
fraction of the full MACs; the searches share their scores, so a width scored once is never scored
again), the winner is retrained with the config's retraining recipe (``config.train``;
``config.retrain.init_from_supernet`` fine-tunes from the supernet instead) and exported to
``config.bundle.format`` and checked against its Keras net on ``config.bundle.verify_examples`` test
images (``python -m deploy.verify``). Then every entry is timed on the host in one process, interleaved
(``python -m deploy.benchmark --target host --bundle``), and the latencies are written into the
manifest. Under ``<workdir>``:

    supernet.keras                  python -m cafe_tf.train_supernet (the pipeline's; trained if missing)
    bundle/bundle.json              the manifest (schema cafe_tf.bundle, written atomically)
    bundle/<id>_<format>.tflite     one network per budget, <id> = macs<percent>, e.g. macs30
    bundle/work/<id>/               its search (widths.json, search_cache.json), retrain/ and verify_<format>.json
    bundle/logs/                    one log per stage

Each step is a stage skipped when its artifact is valid and newer than its input, so running the same
command again resumes and redoes only what changed. ``bundle/`` without ``work/`` and ``logs/`` is
what an app ships; it reads the manifest with ``load_bundle`` (which checks every file's SHA-256)
and chooses with ``pick(bundle, max_latency_ms=..., target="host")``.

Exit codes: 0 done, 1 a stage failed (its log is named) or a budget is infeasible, 2 usage or config error.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from typing import Any

from cafe_tf import io, programs

SCHEMA = "cafe_tf.bundle"
VERSION = 1
MANIFEST = "bundle.json"
ENTRY_KEYS = ("id", "budget_ratio", "max_macs", "macs", "params", "widths", "accuracy", "file", "sha256", "latency")
LATENCY_STATISTICS = ("p50", "mean")  # pick() reads the first one a target reports (Android gives only the mean)


def bundle_section():
    """Defaults of ``config.bundle``: which networks a bundle holds, in which format, and how they are timed."""
    import ml_collections

    return ml_collections.ConfigDict(dict(
        budgets=(),  # fractions of the full net's MACs, each in (0, 1], e.g. (0.3, 0.5, 0.7); () = use size
        size=3,  # with no budgets: k / size for k = 1..size (3: 33%, 67%, 100%)
        format="fp32",  # the TFLite format of every entry: one of cafe_tf.pipeline.DEPLOY_FORMATS
        verify_examples=1000,  # test images each entry's .tflite is checked on against its Keras net (deploy.verify)
        benchmark_runs=50,  # host benchmark runs per entry
        benchmark_rounds=5,  # interleaved rounds the runs are split over, so load hits every entry alike
    ))


def budget_id(ratio: float) -> str:
    """An entry's id: ``macs30`` for 0.3, ``macs33.3`` for 1/3 (a tenth of a percent)."""
    return f"macs{round(100 * ratio, 1):g}"


def resolve_budgets(section) -> list[float]:
    """The MACs fractions ``config.bundle`` asks for, ascending; raises ConfigError naming a bad one."""
    from cafe_tf.config import ConfigError

    budgets = tuple(section.budgets)
    if not budgets:
        if not isinstance(section.size, int) or section.size < 1:
            raise ConfigError(f"config.bundle.size={section.size!r} is invalid; it must be >= 1 (or give "
                              "config.bundle.budgets)")
        return [round(k / section.size, 3) for k in range(1, section.size + 1)]
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b <= 1:
            raise ConfigError(f"config.bundle.budgets={budgets!r} is invalid: {b!r} is not a fraction of the full "
                              "net's MACs in (0, 1]")
    seen: dict[str, float] = {}
    for b in budgets:
        if budget_id(b) in seen:
            raise ConfigError(f"config.bundle.budgets={budgets!r} is invalid: {seen[budget_id(b)]!r} and {b!r} are "
                              f"the same budget ({budget_id(b)}: budgets are told apart to 0.1% of the MACs)")
        seen[budget_id(b)] = b
    return sorted(float(b) for b in budgets)


def validate_bundle(section) -> None:
    """Checks ``config.bundle``; raises ConfigError naming the key, the value and what is valid."""
    from cafe_tf.config import ConfigError
    from cafe_tf.pipeline import DEPLOY_FORMATS

    resolve_budgets(section)
    if section.format not in DEPLOY_FORMATS:
        raise ConfigError(f"config.bundle.format={section.format!r} is invalid; valid values: {list(DEPLOY_FORMATS)}")
    for key in ("verify_examples", "benchmark_runs", "benchmark_rounds"):
        if section[key] < 1:
            raise ConfigError(f"config.bundle.{key}={section[key]!r} is invalid; it must be >= 1")
    if section.benchmark_rounds > section.benchmark_runs:
        raise ConfigError(f"config.bundle.benchmark_rounds={section.benchmark_rounds!r} is invalid; it must be <= "
                          f"config.bundle.benchmark_runs ({section.benchmark_runs})")


# -------------------------------------------------------------------------------------------------
# The manifest: written by the bundle program, timed by deploy.benchmark, read by an app


def _validate_manifest(obj: dict[str, Any]) -> None:
    entries = obj["entries"]
    if not isinstance(entries, list) or not entries:
        raise ValueError("'entries' must be a non-empty list")
    ids = set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ValueError(f"entries[{i}] must be an object")
        missing = [k for k in ENTRY_KEYS if k not in e]
        if missing:
            raise ValueError(f"entries[{i}] lacks {missing}")
        if e["id"] in ids:
            raise ValueError(f"entry id {e['id']!r} appears twice")
        ids.add(e["id"])
        if not isinstance(e["file"], str) or os.path.isabs(e["file"]) or ".." in e["file"].split("/"):
            raise ValueError(f"entry {e['id']!r}: file {e['file']!r} must be a path relative to the manifest's folder")
        if not isinstance(e["sha256"], str) or len(e["sha256"]) != 64:
            raise ValueError(f"entry {e['id']!r}: sha256 {e['sha256']!r} is not a hex SHA-256")
        for key in ("macs", "params", "max_macs"):
            if isinstance(e[key], bool) or not isinstance(e[key], int) or e[key] < 1:
                raise ValueError(f"entry {e['id']!r}: {key}={e[key]!r} must be a positive integer")
        if not isinstance(e["accuracy"], dict) or not isinstance(e["accuracy"].get("test"), (int, float)):
            raise ValueError(f"entry {e['id']!r}: accuracy must hold the retrained net's 'test' accuracy")
        if not isinstance(e["latency"], dict):
            raise ValueError(f"entry {e['id']!r}: latency must map a target name to its measurement")
        for target, m in e["latency"].items():
            stats = m.get("latency_ms") if isinstance(m, dict) else None
            if not isinstance(stats, dict) or not any(isinstance(stats.get(s), (int, float)) for s in LATENCY_STATISTICS):
                raise ValueError(f"entry {e['id']!r}: latency[{target!r}] lacks latency_ms with one of "
                                 f"{list(LATENCY_STATISTICS)}")


def load_bundle(path: str | os.PathLike, check_files: bool = True) -> dict[str, Any]:
    """Reads and validates a ``bundle.json``; each entry gains ``path``, its file's absolute path.

    With ``check_files`` every entry's file must exist and still have the SHA-256 the manifest records.

    Raises:
      io.ArtifactError: naming the manifest and what is wrong; a missing or changed file names the
        entry, the file and (changed) both hashes.
    """
    path = os.path.abspath(os.fspath(path))
    bundle = io.read_artifact(path, SCHEMA, (VERSION,), ("model", "format", "full_macs", "entries"),
                              _validate_manifest)
    root = os.path.dirname(path)
    for e in bundle["entries"]:
        e["path"] = os.path.join(root, e["file"])
        if not check_files:
            continue
        if not os.path.isfile(e["path"]):
            raise io.ArtifactError(f"bundle {path!r}: entry {e['id']!r}: file {e['path']!r} is missing")
        actual = io.file_sha256(e["path"])
        if actual != e["sha256"]:
            raise io.ArtifactError(f"bundle {path!r}: entry {e['id']!r}: file {e['path']!r} changed since the bundle "
                                   f"was written: SHA-256 {e['sha256']} recorded, {actual} now")
    return bundle


def write_bundle(path: str | os.PathLike, bundle: Mapping[str, Any]) -> None:
    """Writes a manifest atomically (validated first, so nothing invalid is written); ``path`` keys are dropped."""
    payload = {k: v for k, v in bundle.items() if k not in ("schema", "schema_version")}
    payload["entries"] = [{k: v for k, v in e.items() if k != "path"} for e in bundle["entries"]]
    _validate_manifest(payload)
    io.write_artifact(path, SCHEMA, VERSION, payload)


def entry_latency_ms(entry: Mapping[str, Any], target: str) -> float | None:
    """The entry's measured latency on ``target`` (p50, else the mean), or None when it was not timed there."""
    m = entry["latency"].get(target)
    if m is None:
        return None
    stats = m["latency_ms"]
    return next(float(stats[s]) for s in LATENCY_STATISTICS if isinstance(stats.get(s), (int, float)))


def pick(bundle: Mapping[str, Any], max_latency_ms: float, target: str = "host") -> dict[str, Any] | None:
    """The most accurate entry (retrained test accuracy; ties: the faster) whose latency measured on
    ``target`` is at most ``max_latency_ms``; None when none is that fast.

    Raises ValueError when ``max_latency_ms`` is not > 0 or an entry was not timed on ``target``.
    """
    if isinstance(max_latency_ms, bool) or not isinstance(max_latency_ms, (int, float)) or not max_latency_ms > 0:
        raise ValueError(f"max_latency_ms={max_latency_ms!r} is invalid; it must be a number > 0")
    untimed = [e["id"] for e in bundle["entries"] if target not in e["latency"]]
    if untimed:
        measured = sorted({t for e in bundle["entries"] for t in e["latency"]})
        raise ValueError(f"bundle entries {untimed} have no latency measured on target {target!r} (measured: "
                         f"{measured}); time them with `python -m deploy.benchmark --target host --bundle "
                         "bundle.json` on that target")
    fits = [e for e in bundle["entries"] if entry_latency_ms(e, target) <= max_latency_ms]
    if not fits:
        return None
    return max(fits, key=lambda e: (e["accuracy"]["test"], -entry_latency_ms(e, target)))


def latency_record(benchmark: Mapping[str, Any]) -> dict[str, Any]:
    """What a manifest keeps of a ``benchmark.json`` payload: statistics, settings, the file timed, the CPU."""
    env = benchmark["environment"]
    return {
        "latency_ms": dict(benchmark["latency_ms"]),
        "target": benchmark["target"], "delegate": benchmark["delegate"], "threads": benchmark["threads"],
        "runs": benchmark["runs"], "rounds": benchmark.get("rounds", 1), "sha256": benchmark["model"]["sha256"],
        "environment": {k: env.get(k) for k in ("cpu", "cpu_features", "int8_dot_product", "machine", "system",
                                                "ai_edge_litert", "load_average_1m")},
        "created": benchmark["created"],
    }


def record_latencies(path: str | os.PathLike, target: str, benchmarks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Writes one ``benchmark.json`` payload per entry (in manifest order) into the manifest as
    ``latency[target]``, atomically; each must have timed that entry's very file. Returns the bundle."""
    bundle = load_bundle(path)
    if len(benchmarks) != len(bundle["entries"]):
        raise ValueError(f"{len(benchmarks)} measurements for the {len(bundle['entries'])} entries of {path}")
    for e, b in zip(bundle["entries"], benchmarks):
        if b["model"]["sha256"] != e["sha256"]:
            raise io.ArtifactError(f"bundle {os.fspath(path)!r}: entry {e['id']!r}: the benchmark timed a file with "
                                   f"SHA-256 {b['model']['sha256']}, the manifest records {e['sha256']}")
        e["latency"][target] = latency_record(b)
    write_bundle(path, bundle)
    return bundle


def is_timed(path: str, target: str = "host") -> None:
    """Raises unless every entry of the manifest at ``path`` was timed on ``target`` as the file it is now."""
    bundle = load_bundle(path)
    for e in bundle["entries"]:
        m = e["latency"].get(target)
        if m is None or m.get("sha256") != e["sha256"]:
            raise ValueError(f"entry {e['id']!r} has no {target} latency of its current file")


def mark_dominated(entries: list[dict[str, Any]]) -> None:
    """Sets each entry's ``dominated_by``: the entries with at most its MACs and at least its test
    accuracy, better in one (an entry off the accuracy/MACs front is kept, since its budget was asked for)."""
    for e in entries:
        e["dominated_by"] = [o["id"] for o in entries if o is not e and o["macs"] <= e["macs"]
                             and o["accuracy"]["test"] >= e["accuracy"]["test"]
                             and (o["macs"], o["accuracy"]["test"]) != (e["macs"], e["accuracy"]["test"])]


# -------------------------------------------------------------------------------------------------
# The program's stages


def _newer_than(validate, *inputs: str):
    """A stage validator: the artifact passes ``validate`` and is no older than any file of ``inputs`` (an
    artifact made from an older input is made again)."""
    def check(path: str) -> None:
        validate(path)
        for i in inputs:
            if os.path.exists(i) and os.path.getmtime(path) < os.path.getmtime(i):
                raise ValueError(f"{path} is older than {i}")
    return check


def _search_done(max_macs: int, supernet_sha: str):
    def check(path: str) -> None:
        from cafe_tf.search.evaluator import CACHE_SCHEMA, CACHE_VERSION
        from cafe_tf.space import read_widths

        record = read_widths(path)
        if float((record.get("budget") or {}).get("max_macs") or 0) != float(max_macs):
            raise ValueError(f"{path} was searched under another budget")
        cache = os.path.join(os.path.dirname(path), "search_cache.json")
        if os.path.exists(cache):
            stored = io.read_artifact(cache, CACHE_SCHEMA, (CACHE_VERSION,), ("fingerprint",))
            if stored["fingerprint"].get("supernet_sha256", supernet_sha) != supernet_sha:
                raise ValueError(f"{path} was searched on another supernet")
    return check


def _trained(path: str) -> None:
    from cafe_tf.stages import is_keras_file, is_metrics_file

    is_keras_file(path)
    is_metrics_file(os.path.join(os.path.dirname(path), "metrics.json"))


def _exported(model: str, recorded: Mapping[str, Any] | None):
    """Export's validator: a .tflite no older than its model; when the manifest recorded this entry from
    the same model, still the file it recorded (a file changed by hand is exported again)."""
    from cafe_tf.stages import is_tflite

    def check(path: str) -> None:
        _newer_than(is_tflite, model)(path)
        if recorded and recorded.get("keras_sha256") == io.file_sha256(model) and io.file_sha256(path) != recorded["sha256"]:
            raise ValueError(f"{path} changed since the manifest recorded it (SHA-256 {recorded['sha256']})")
    return check


def entry_stages(config, workdir: str, config_args: list[str], ratio: float, max_macs: int, supernet: str,
                 supernet_sha: str, recorded: Mapping[str, Any] | None = None) -> list:
    """The search, retrain, export and verify stages of the entry at MACs fraction ``ratio`` (``recorded``:
    the previous manifest's entry, if any)."""
    from cafe_tf.pipeline import VERIFY_BATCH
    from cafe_tf.stages import Stage, read_json

    section = config.bundle
    ident = budget_id(ratio)
    work = os.path.join(workdir, "bundle", "work", ident)
    widths, model = os.path.join(work, "widths.json"), os.path.join(work, "retrain", "model.keras")
    tflite = os.path.join(workdir, "bundle", f"{ident}_{section.format}.tflite")
    retrain = ["-m", "cafe_tf.cli.train", *config_args, f"--workdir={os.path.dirname(model)}", f"--widths={widths}"]
    if "retrain" in config and config.retrain.init_from_supernet:
        retrain.append(f"--init_from_supernet={supernet}")
    data_dir = [f"--data_dir={config.data.data_dir}"] if config.data.data_dir else []
    representative = config.deploy.representative_examples if "deploy" in config else 200
    return [
        Stage(f"search_{ident}", ["-m", "cafe_tf.search", *config_args, f"--workdir={work}",
                                  f"--config.search.max_macs={max_macs}", f"--config.search.supernet={supernet}"],
              widths, _search_done(max_macs, supernet_sha)),
        Stage(f"retrain_{ident}", retrain, model, _newer_than(_trained, widths)),
        Stage(f"export_{ident}", ["-m", "deploy.export", f"--model={model}", f"--quant={section.format}",
                                  f"--out={tflite}", f"--dataset={config.data.name}",
                                  f"--num_calibration={representative}",
                                  f"--input_scaling={config.model.input_scaling}", *data_dir],
              tflite, _exported(model, recorded)),
        # parity with the Keras net (fp32 must match, or the export is wrong) and the .tflite's own accuracy
        Stage(f"verify_{ident}", ["-m", "deploy.verify", f"--model={model}", f"--tflite={tflite}",
                                  f"--dataset={config.data.name}", f"--out={os.path.join(work, f'verify_{section.format}.json')}",
                                  f"--batch_size={min(VERIFY_BATCH, section.verify_examples)}",
                                  f"--num_batches={-(-section.verify_examples // VERIFY_BATCH)}",
                                  f"--input_scaling={config.model.input_scaling}",
                                  *([] if section.format == "fp32" else ["--report_only"]), *data_dir],
              os.path.join(work, f"verify_{section.format}.json"), _newer_than(read_json, tflite)),
    ]


def seed_score_cache(dest: str, sources: Sequence[str], supernet_sha: str) -> int:
    """Writes ``dest`` (a search_cache.json) holding every score of ``sources`` made on this supernet with the
    same evaluator settings as the first such source, so a search at another budget rescores nothing.
    Returns the number of scores; 0 (and nothing written) when ``dest`` exists or no source fits."""
    from cafe_tf.search.evaluator import CACHE_SCHEMA, CACHE_VERSION

    if os.path.exists(dest):
        return 0
    fingerprint, records = None, {}
    for path in sources:
        if not os.path.isfile(path):
            continue
        stored = io.read_artifact(path, CACHE_SCHEMA, (CACHE_VERSION,), ("fingerprint", "records"))
        if stored["fingerprint"].get("supernet_sha256") != supernet_sha:
            continue
        fingerprint = fingerprint or stored["fingerprint"]
        if stored["fingerprint"] == fingerprint:
            records.update(stored["records"])
    if not records:
        return 0
    io.write_artifact(dest, CACHE_SCHEMA, CACHE_VERSION, {"fingerprint": fingerprint, "records": records})
    return len(records)


def supernet_costs(path: str) -> tuple[int, int, int]:
    """(full MACs, full params, smallest sub-network's MACs) of the search space of a trained supernet.keras."""
    import numpy as np

    from cafe_tf.search.run import load_supernet

    _, _, _, _, space = load_supernet(path)
    return int(space.cost.macs()), int(space.cost.params()), int(space.macs(np.ones_like(space.num_bins)))


def check_budgets(ratios: Sequence[float], full_macs: int, smallest_macs: int) -> None:
    """Raises BudgetError naming the first fraction whose budget is below the smallest sub-network."""
    from cafe_tf.search.budget import BudgetError

    low = [r for r in ratios if r * full_macs < smallest_macs]
    if low:
        raise BudgetError(f"config.bundle budget {low[0]!r} x {full_macs:,} MACs = {int(low[0] * full_macs):,} MACs "
                          f"is below the smallest sub-network ({smallest_macs:,} MACs); the feasible fractions are "
                          f"[{smallest_macs / full_macs:.3f}, 1]")


def build_manifest(config, workdir: str, ratios: Sequence[float], full: tuple[int, int], supernet: str,
                   supernet_sha: str, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of the finished entries; latencies of ``previous`` are kept for files that did not change."""
    from cafe_tf.space import read_widths
    from cafe_tf.stages import read_json

    fmt = config.bundle.format
    old = {e["id"]: e for e in (previous or {}).get("entries", [])}
    entries, model = [], None
    for ratio in ratios:
        ident = budget_id(ratio)
        work = os.path.join(workdir, "bundle", "work", ident)
        widths = read_widths(os.path.join(work, "widths.json"))
        final = read_json(os.path.join(work, "retrain", "metrics.json"))["final"]
        verify = read_json(os.path.join(work, f"verify_{fmt}.json"))
        file = f"{ident}_{fmt}.tflite"
        path = os.path.join(workdir, "bundle", file)
        sha = io.file_sha256(path)
        model = model or widths["model"]
        kept = (old.get(ident) or {}).get("latency", {})
        entries.append({
            "id": ident, "budget_ratio": ratio, "max_macs": int(widths["budget"]["max_macs"]),
            "macs": int(widths["macs"]), "params": int(widths["params"]), "macs_ratio": widths["macs"] / full[0],
            "widths": [{"name": g["name"], "size": g["size"], "width": len(g["channels"])} for g in widths["groups"]],
            "accuracy": {"validation_score": widths.get("score"), "score_metric": widths.get("score_metric"),
                         "test": (final.get("test") or {}).get("accuracy"),
                         "validation": (final.get("validation") or {}).get("accuracy"),
                         "tflite": verify.get("tflite_accuracy"), "tflite_images": verify.get("num_images"),
                         "tflite_top1_agreement": verify.get("top1_agreement")},
            "file": file, "sha256": sha, "size_bytes": os.path.getsize(path), "format": fmt,
            "keras_sha256": io.file_sha256(os.path.join(work, "retrain", "model.keras")),
            "latency": {t: m for t, m in kept.items() if m.get("sha256") == sha},
        })
    mark_dominated(entries)
    return {
        "model": model, "dataset": config.data.name, "input_scaling": config.model.input_scaling, "format": fmt,
        "full_macs": full[0], "full_params": full[1],
        "supernet": {"path": supernet, "sha256": supernet_sha},
        "retrain": "from_supernet" if "retrain" in config and config.retrain.init_from_supernet else "from_scratch",
        "train_epochs": config.train.epochs,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "entries": entries,
    }


def summary_lines(bundle: Mapping[str, Any]) -> list[str]:
    """A table of the entries: MACs, accuracy, latency per target."""
    targets = sorted({t for e in bundle["entries"] for t in e["latency"]})
    lines = [f"{'entry':<10} {'MACs':>12} {'of full':>8} {'val score':>9} {'test acc':>8} "
             + " ".join(f"{t + ' ms':>9}" for t in targets)]
    for e in bundle["entries"]:
        acc = e["accuracy"]
        lat = " ".join(f"{entry_latency_ms(e, t):>9.3f}" for t in targets)
        val = "" if acc.get("validation_score") is None else f"{acc['validation_score']:.4f}"
        lines.append(f"{e['id']:<10} {e['macs']:>12,} {e['macs'] / bundle['full_macs']:>8.1%} {val:>9} "
                     f"{acc['test']:>8.4f} {lat}" + ("  (dominated by " + ", ".join(e["dominated_by"]) + ")"
                                                     if e.get("dominated_by") else ""))
    cpus = {m["environment"].get("cpu") for e in bundle["entries"] for m in e["latency"].values()}
    if cpus:
        lines.append(f"latency: p50 ms, timed interleaved on {', '.join(sorted(c or 'unknown CPU' for c in cpus))}")
    return lines


def main(config, workdir: str) -> None:
    """Trains the supernet if missing, then searches, retrains and exports each entry, writes and times the manifest."""
    from absl import logging

    from cafe_tf import pipeline
    from cafe_tf.stages import Stage, run_stages

    section = config.bundle
    ratios = resolve_budgets(section)
    cfg = programs.config_argv()
    logs = os.path.join(workdir, "bundle", "logs")
    supernet = os.path.abspath(os.path.expanduser(config.search.supernet)) if config.search.supernet else None
    if supernet is None:
        supernet = os.path.join(workdir, "supernet.keras")
        run_stages([s for s in pipeline.build_stages(config, workdir, cfg) if s.name == "supernet"], logs)
    elif not os.path.isfile(supernet):
        raise ValueError(f"config.search.supernet={config.search.supernet!r} does not exist")
    full_macs, full_params, smallest = supernet_costs(supernet)
    check_budgets(ratios, full_macs, smallest)  # before any entry is searched: a bad budget costs nothing
    supernet_sha = io.file_sha256(supernet)
    manifest = os.path.join(workdir, "bundle", MANIFEST)
    previous = load_bundle(manifest, check_files=False) if os.path.exists(manifest) else None
    recorded = {e["id"]: e for e in (previous or {}).get("entries", [])}
    caches = [os.path.join(os.path.dirname(supernet), "search_cache.json")]
    for ratio in ratios:
        max_macs = int(ratio * full_macs)
        stages = entry_stages(config, workdir, cfg, ratio, max_macs, supernet, supernet_sha,
                              recorded.get(budget_id(ratio)))
        work = os.path.dirname(stages[0].artifact)
        if not stages[0].is_done():
            n = seed_score_cache(os.path.join(work, "search_cache.json"), caches[::-1], supernet_sha)
            if n:
                logging.info("bundle %s: its search starts with %d scores of earlier searches", budget_id(ratio), n)
        caches.append(os.path.join(work, "search_cache.json"))
        run_stages(stages, logs)
    write_bundle(manifest, build_manifest(config, workdir, ratios, (full_macs, full_params), supernet, supernet_sha,
                                          previous))
    run_stages([Stage("benchmark", ["-m", "deploy.benchmark", "--target=host", f"--bundle={manifest}",
                                    f"--runs={section.benchmark_runs}", f"--rounds={section.benchmark_rounds}"],
                      manifest, is_timed)], logs)
    bundle = load_bundle(manifest)
    print("\n".join(summary_lines(bundle) + [f"bundle: {manifest}"]), flush=True)


def validators() -> dict:
    """The sections the bundle program checks before its first stage, besides cafe_tf.config's own."""
    from cafe_tf import pipeline

    return {**pipeline.validators(), "bundle": validate_bundle}


__all__ = ["SCHEMA", "VERSION", "bundle_section", "validate_bundle", "resolve_budgets", "budget_id", "load_bundle",
           "write_bundle", "pick", "entry_latency_ms", "record_latencies", "latency_record", "is_timed",
           "mark_dominated", "seed_score_cache", "check_budgets", "build_manifest", "summary_lines"]


if __name__ == "__main__":
    programs.define_config_flags()
    programs.run_program(main, extra_validators=validators(), required=("supernet", "search", "bundle"))
