r"""The whole CafeNet job: supernet -> search -> retrain -> TFLite formats -> verify -> benchmark -> report.

    python -m cafe_tf.pipeline --config configs/fashion_mnist_resnet20.py --workdir runs/demo
    python -m cafe_tf.pipeline --config configs/fashion_mnist_resnet20.py --workdir runs/demo \
        --config.search.macs_ratio=0.3          # overrides reach every stage that takes --config

Each stage is a program run in its own process (``cafe_tf.stages``); a stage is skipped when its
artifact exists and is valid, so running the same command again after a kill resumes where it
stopped (and each stage resumes from its own checkpoints). Artifacts, all under --workdir:

    supernet.keras               python -m cafe_tf.train_supernet
    widths.json                  python -m cafe_tf.search
    retrain/model.keras          cafe-tf train --widths widths.json
    deploy/model_<f>.tflite      python -m deploy.export --quant <f>   (each f of config.deploy.formats)
    deploy/verify_<f>.json       python -m deploy.verify   (each model against retrain/model.keras)
    deploy/benchmark_<f>.json    python -m deploy.benchmark --target host   (all models in one process,
                                 interleaved rounds: config.deploy.benchmark_runs, benchmark_rounds)
    report.md, report.png        cafe_tf.report; it recommends the fastest format whose accuracy drop
                                 is within config.deploy.max_accuracy_drop (recommend_format)

Every config section is validated before the first stage runs. Each stage dies with the pipeline:
SIGTERM and SIGINT are forwarded to it, and on Linux it stops when the pipeline is killed. A
stage's log (``logs/``) keeps all its output; what the pipeline relays leaves out TensorFlow's
CUDA start-up lines on a machine without a GPU, unless ``TF_CPP_MIN_LOG_LEVEL=0`` (or 1) asks for
TensorFlow's logs.

Exit codes: 0 done, 1 a stage failed (its log is named), 2 usage or config error.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cafe_tf import programs

# Sections every pipeline config has; retrain and deploy fall back to their defaults below.
REQUIRED_SECTIONS = ("supernet", "search")


def retrain_section():
    """Defaults of ``config.retrain``: how the pipeline's retrain stage trains the searched widths."""
    import ml_collections

    return ml_collections.ConfigDict(dict(
        init_from_supernet=False,  # False: from scratch (the paper's protocol); True: fine-tune from the supernet
    ))


def deploy_section():
    """Defaults of ``config.deploy``: what the pipeline's deploy stages export, calibrate and time."""
    import ml_collections

    return ml_collections.ConfigDict(dict(
        # Exported, verified and timed on the host; the report recommends the fastest within the drop
        # below (int8 is not always the fastest: without int8 dot-product instructions it can be slower).
        formats=("fp32", "int8"),  # any of DEPLOY_FORMATS
        max_accuracy_drop=0.5,  # test-accuracy points a format may lose against the Keras model
        representative_examples=200,  # training images calibrating int8 (export's --num_calibration)
        verify_examples=1000,  # test images each format's accuracy is measured on (deploy.verify)
        benchmark_runs=50,  # host benchmark runs per model
        benchmark_rounds=5,  # interleaved rounds the runs are split over, so load hits every format alike
    ))


# What the deploy stage may export (qat needs a fine-tuning run of its own: python -m deploy.export).
DEPLOY_FORMATS = ("fp32", "fp16", "dynamic", "int8")
VERIFY_BATCH = 100  # images per deploy.verify batch


def validate_deploy(section) -> None:
    """Checks ``config.deploy``; raises ConfigError naming the key, the value and what is valid."""
    from cafe_tf.config import ConfigError

    formats = tuple(section.formats)
    bad = [f for f in formats if f not in DEPLOY_FORMATS]
    if not formats or bad or len(set(formats)) != len(formats):
        raise ConfigError(f"config.deploy.formats={formats!r} is invalid; give one or more distinct formats of "
                          f"{list(DEPLOY_FORMATS)}" + (f" ({bad[0]!r} is not one)" if bad else ""))
    if not section.max_accuracy_drop >= 0:
        raise ConfigError(f"config.deploy.max_accuracy_drop={section.max_accuracy_drop!r} is invalid; it must be "
                          ">= 0 (test-accuracy points)")
    for key in ("representative_examples", "verify_examples", "benchmark_runs", "benchmark_rounds"):
        if section[key] < 1:
            raise ConfigError(f"config.deploy.{key}={section[key]!r} is invalid; it must be >= 1")
    if section.benchmark_rounds > section.benchmark_runs:
        raise ConfigError(f"config.deploy.benchmark_rounds={section.benchmark_rounds!r} is invalid; it must be <= "
                          f"config.deploy.benchmark_runs ({section.benchmark_runs})")


def within_tolerance(drop_pt: float | None, max_accuracy_drop: float) -> bool:
    """Whether an accuracy drop (points; None = unknown) is within the tolerance. Rounded to 1e-6 points:
    verify's drop is a difference of two float accuracies, so an equal accuracy can come out as 1e-14."""
    return drop_pt is not None and round(drop_pt, 6) <= max_accuracy_drop


def recommend_format(rows: list[dict], max_accuracy_drop: float, environment: dict | None = None
                     ) -> tuple[str | None, list[str]]:
    """(the recommended format, the sentences saying why) from per-format measurements.

    ``rows``: one dict per format with ``format``, ``latency_ms`` and ``drop_pt`` (accuracy points lost
    against the Keras model; None = unknown). The pick is the fastest format whose drop is known and
    at most ``max_accuracy_drop``; ``environment`` (benchmark.json's) names the CPU in the reasons.
    """
    timed = [r for r in rows if r.get("latency_ms") is not None]
    within = [r for r in timed if within_tolerance(r.get("drop_pt"), max_accuracy_drop)]
    why = []
    for r in timed:
        if r not in within:
            why.append(f"{r['format']} is excluded: " + ("its accuracy is unknown (no labelled verify run)"
                       if r.get("drop_pt") is None else
                       f"it loses {r['drop_pt']:.2f} points, over the {max_accuracy_drop:g}-point tolerance"))
    choice = min(within, key=lambda r: r["latency_ms"]) if within else None
    if choice is None:
        why.insert(0, f"No format is recommended: none was measured within the {max_accuracy_drop:g}-point "
                      "accuracy tolerance (config.deploy.max_accuracy_drop).")
    else:
        others = [r for r in within if r is not choice]
        beaten = "; ".join(f"{r['format']} {r['latency_ms']:.3f} ms" for r in others)
        why.insert(0, f"Recommended: **{choice['format']}**, {choice['latency_ms']:.3f} ms: the fastest format "
                      f"within the {max_accuracy_drop:g}-point accuracy tolerance"
                      + (f" (against {beaten})." if beaten else " (the only one within it)."))
    by_format = {r["format"]: r for r in timed}
    if "int8" in by_format and "fp32" in by_format and by_format["int8"]["latency_ms"] > by_format["fp32"]["latency_ms"]:
        env = environment or {}
        features = env.get("cpu_features") or {}
        have = [k for k, v in features.items() if v]
        cpu = env.get("cpu") or "this host's CPU"
        cause = ("it has no int8 dot-product instructions (none of VNNI, AMX-INT8, Arm dotprod, i8mm)"
                 if env.get("int8_dot_product") is False else f"features: {', '.join(have) or 'unknown'}")
        why.append(f"On this host int8 is slower than fp32 ({by_format['int8']['latency_ms']:.3f} ms against "
                   f"{by_format['fp32']['latency_ms']:.3f} ms, {by_format['int8']['latency_ms'] / by_format['fp32']['latency_ms']:.2f}x): "
                   f"{cpu}; {cause}.")
    return (choice["format"] if choice else None), why


def validators() -> dict[str, Callable]:
    """Validators of the sections the stages read, besides cafe_tf.config's own (data, model, train, distribute)."""
    from cafe_tf.search.run import validate_search
    from cafe_tf.training.supernet import validate_supernet

    return {"supernet": validate_supernet, "search": validate_search, "deploy": validate_deploy}


def _section(config, name: str):
    return config[name] if name in config else {"retrain": retrain_section, "deploy": deploy_section}[name]()


def build_stages(config, workdir: str, config_args: list[str] | None = None) -> list:
    """The stages for ``config``, in order.

    ``config_args`` (default: this process's ``--config`` and ``--config.*`` flags) go to every
    stage that takes a config.
    """
    from cafe_tf.space import read_widths
    from cafe_tf.stages import Stage, is_keras_file, is_tflite, read_json

    cfg = programs.config_argv() if config_args is None else list(config_args)
    deploy = _section(config, "deploy")

    def w(*parts: str) -> str:
        return os.path.join(workdir, *parts)

    retrain = ["-m", "cafe_tf.cli.train", *cfg, f"--workdir={w('retrain')}", f"--widths={w('widths.json')}"]
    if _section(config, "retrain").init_from_supernet:
        retrain.append(f"--init_from_supernet={w('supernet.keras')}")
    stages = [
        Stage("supernet", ["-m", "cafe_tf.train_supernet", *cfg, f"--workdir={workdir}"], w("supernet.keras"),
              is_keras_file),
        Stage("search", ["-m", "cafe_tf.search", *cfg, f"--workdir={workdir}"], w("widths.json"), read_widths),
        Stage("retrain", retrain, w("retrain", "model.keras"), is_keras_file),
    ]
    data_dir = [f"--data_dir={config.data.data_dir}"] if config.data.data_dir else []
    formats = tuple(deploy.formats)
    for quant in formats:
        stages.append(Stage(
            f"export_{quant}",
            ["-m", "deploy.export", f"--model={w('retrain', 'model.keras')}", f"--quant={quant}",
             f"--out={w('deploy', f'model_{quant}.tflite')}", f"--dataset={config.data.name}",
             f"--num_calibration={deploy.representative_examples}",
             f"--input_scaling={config.model.input_scaling}", *data_dir],
            w("deploy", f"model_{quant}.tflite"), is_tflite))
    batches = -(-deploy.verify_examples // VERIFY_BATCH)
    for quant in formats:
        stages.append(Stage(
            f"verify_{quant}",
            ["-m", "deploy.verify", f"--model={w('retrain', 'model.keras')}",
             f"--tflite={w('deploy', f'model_{quant}.tflite')}", f"--dataset={config.data.name}",
             f"--out={w('deploy', f'verify_{quant}.json')}", f"--batch_size={min(VERIFY_BATCH, deploy.verify_examples)}",
             f"--num_batches={batches}", f"--input_scaling={config.model.input_scaling}",
             # a quantized format below the agreement criterion is reported, and its accuracy drop
             # decides (config.deploy.max_accuracy_drop); fp32 must match Keras or the export is wrong
             *([] if quant == "fp32" else ["--report_only"]), *data_dir],
            w("deploy", f"verify_{quant}.json"), read_json))
    # One process times every format in interleaved rounds, so background load hits them alike.
    pairs = [(w("deploy", f"model_{q}.tflite"), w("deploy", f"benchmark_{q}.json")) for q in formats]
    stages.append(Stage(
        "benchmark",
        ["-m", "deploy.benchmark", "--target=host", *[a for m, o in pairs for a in (f"--model={m}", f"--out={o}")],
         f"--runs={deploy.benchmark_runs}", f"--rounds={deploy.benchmark_rounds}"],
        pairs[0][1], lambda _: benchmarks_match(pairs)))
    return stages


def benchmarks_match(pairs: list[tuple[str, str]]) -> None:
    """Raises unless each benchmark.json of ``pairs`` ((model, benchmark.json)) is valid and timed that
    very model file (a re-exported model makes the whole interleaved benchmark run again)."""
    from deploy.benchmark import schema

    for model, out in pairs:
        record = schema.read_benchmark(out)
        if record["model"]["sha256"] != schema.model_record(model)["sha256"]:
            raise ValueError(f"{out} timed another version of {model}")


def _maybe(path: str) -> dict:
    """The JSON object an artifact holds, or {} when that stage has not written it."""
    from cafe_tf.stages import read_json

    return read_json(path) if os.path.exists(path) else {}


def write_run_report(config, workdir: str, stages) -> str:
    """Collects the artifacts of a run (those that exist) into report.md / report.png."""
    from cafe_tf.report import write_report

    def w(*parts: str) -> str:
        return os.path.join(workdir, *parts)

    widths = _maybe(w("widths.json"))
    final = _maybe(w("retrain", "metrics.json")).get("final") or {}
    deploy = _section(config, "deploy")
    seconds = {s.name: s.seconds for s in stages}
    test_acc = final.get("test", {}).get("accuracy")
    rows = [
        {"stage": "full network", "macs": widths.get("full_macs"), "params": widths.get("full_params")},
        {"stage": "supernet", "artifact": "supernet.keras", "seconds": seconds.get("supernet")},
        {"stage": "search", "macs": widths.get("macs"), "params": widths.get("params"), "accuracy": widths.get("score"),
         "artifact": "widths.json", "seconds": seconds.get("search")},
        {"stage": "retrain", "macs": widths.get("macs"), "params": widths.get("params"), "accuracy": test_acc,
         "artifact": "retrain/model.keras", "seconds": seconds.get("retrain")},
    ]
    formats, environment, notes, parity = [], None, [], []
    check = widths.get("latency_check") or {}
    if check.get("measured_ms") is not None:  # a search under max_latency_ms, checked on the table's target
        rows[2]["latency_ms"] = check["measured_ms"]
        error = check.get("stated_error_pct")
        notes.append(f"search latency on {check['target']} ({check['quant']}, {check['threads']} thread(s), "
                     f"{check.get('device') or '?'}): measured {check['measured_ms']:.3f} ms, predicted "
                     f"{check['predicted_ms']:.3f} ms by the {check.get('method', 'isolated')} table; budget "
                     f"{check['budget_ms']:g} ms, table error {'none stated' if error is None else f'{error:.1f}%'}")
    for q in deploy.formats:
        path = w("deploy", f"model_{q}.tflite")
        if os.path.exists(path):
            bench = _maybe(w("deploy", f"benchmark_{q}.json"))
            verify = _maybe(w("deploy", f"verify_{q}.json"))
            environment = environment or bench.get("environment")
            latency = bench.get("latency_ms") or {}
            # p50 is None when a target reports only the mean (benchmark.json schema).
            row = {"format": q, "latency_ms": latency.get("p50") or latency.get("mean"),
                   "size_kb": round(os.path.getsize(path) / 1024, 1), "accuracy": verify.get("tflite_accuracy"),
                   "drop_pt": verify.get("accuracy_drop_pt"), "agreement": verify.get("top1_agreement")}
            formats.append(row)
            rows.append({"stage": f"tflite {q}", "macs": widths.get("macs"), "latency_ms": row["latency_ms"],
                         "size_kb": row["size_kb"], "accuracy": row["accuracy"],
                         "artifact": f"deploy/model_{q}.tflite", "seconds": seconds.get(f"export_{q}")})
            if verify:
                parity.append({**verify, "format": q, "size_kb": row["size_kb"]})
    choice, why = recommend_format(formats, deploy.max_accuracy_drop, environment) if formats else (None, [])
    for row in formats:
        row["within"] = within_tolerance(row["drop_pt"], deploy.max_accuracy_drop)
        row["chosen"] = row["format"] == choice
    candidates = [{"macs": p["macs"], "score": p["score"]} for p in widths.get("evaluated", [])]
    chosen = {"macs": widths["macs"], "params": widths["params"], "score": widths["score"]} if widths else None
    finals = [{"name": "searched", "macs": widths["macs"], "accuracy": test_acc}] if widths else []
    return write_report(
        workdir, f"cafe-tf run: {config.model.name} on {config.data.name}", rows, candidates, chosen,
        baselines=widths.get("baselines", []), groups=widths.get("groups", []), finals=finals,
        budget_macs=widths.get("budget", {}).get("max_macs"), notes=notes, formats=formats,
        format_choice=why, environment=environment, parity=parity,
    )


def main(config, workdir: str) -> None:
    """Runs the stages that have no valid artifact yet, then writes the run report."""
    from cafe_tf.stages import run_stages

    stages = build_stages(config, workdir)
    run_stages(stages, os.path.join(workdir, "logs"))
    path = write_run_report(config, workdir, stages)
    print(f"report: {path}\n        {os.path.join(workdir, 'report.png')}", flush=True)


if __name__ == "__main__":
    programs.define_config_flags()
    programs.run_program(main, extra_validators=validators(), required=REQUIRED_SECTIONS)
