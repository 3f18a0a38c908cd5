r"""The whole CafeNet job: supernet -> search -> retrain -> int8 TFLite -> verify -> benchmark -> report.

    python -m cafe_tf.pipeline --config configs/fashion_mnist_resnet20.py --workdir runs/demo
    python -m cafe_tf.pipeline --config configs/fashion_mnist_resnet20.py --workdir runs/demo \
        --config.search.macs_ratio=0.3          # overrides reach every stage that takes --config

Each stage is a program run in its own process (``cafe_tf.stages``); a stage is skipped when its
artifact exists and is valid, so running the same command again after a kill resumes where it
stopped (and each stage resumes from its own checkpoints). Artifacts, all under --workdir:

    supernet.keras               python -m cafe_tf.train_supernet
    widths.json                  python -m cafe_tf.search
    retrain/model.keras          python -m cafe_tf.train --widths widths.json
    deploy/model_fp32.tflite     python -m deploy.export --quant fp32
    deploy/model_int8.tflite     python -m deploy.export --quant int8   (int8: config.deploy.quantization)
    deploy/verify_int8.json      python -m deploy.verify   (that model against retrain/model.keras)
    deploy/benchmark_*.json      python -m deploy.benchmark --target host   (both models; config.deploy.benchmark_runs)
    report.md, report.png        cafe_tf.report

Every config section is validated before the first stage runs. Each stage dies with the pipeline:
SIGTERM and SIGINT are forwarded to it, and on Linux it stops when the pipeline is killed.

Exit codes: 0 done, 1 a stage failed (its log is named), 2 usage or config error.
"""

from __future__ import annotations

import json
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
        quantization="int8",  # exported besides fp32: fp16 | dynamic | int8 | qat
        representative_examples=200,  # training images calibrating int8 (export's --num_calibration)
        benchmark_runs=50,  # host benchmark runs per model
    ))


def validate_deploy(section) -> None:
    """Checks ``config.deploy``; raises ConfigError naming the key, the value and what is valid."""
    from cafe_tf.config import ConfigError
    from deploy.export import QUANT_MODES

    modes = [m for m in QUANT_MODES if m != "fp32"]  # fp32 is always exported
    if section.quantization not in modes:
        raise ConfigError(f"config.deploy.quantization={section.quantization!r} is invalid; valid values: {modes} "
                          "(fp32 is always exported besides it)")
    for key in ("representative_examples", "benchmark_runs"):
        if section[key] < 1:
            raise ConfigError(f"config.deploy.{key}={section[key]!r} is invalid; it must be >= 1")


def validators() -> dict[str, Callable]:
    """Validators of the sections the stages read, besides cafe_tf.config's own (data, model, train, distribute)."""
    from cafe_tf.search.run import validate_search
    from cafe_tf.train.supernet import validate_supernet

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

    retrain = ["-m", "cafe_tf.train", *cfg, f"--workdir={w('retrain')}", f"--widths={w('widths.json')}"]
    if _section(config, "retrain").init_from_supernet:
        retrain.append(f"--init_from_supernet={w('supernet.keras')}")
    stages = [
        Stage("supernet", ["-m", "cafe_tf.train_supernet", *cfg, f"--workdir={workdir}"], w("supernet.keras"),
              is_keras_file),
        Stage("search", ["-m", "cafe_tf.search", *cfg, f"--workdir={workdir}"], w("widths.json"), read_widths),
        Stage("retrain", retrain, w("retrain", "model.keras"), is_keras_file),
    ]
    data_dir = [f"--data_dir={config.data.data_dir}"] if config.data.data_dir else []
    quants = ("fp32", deploy.quantization)
    for quant in quants:
        stages.append(Stage(
            f"export_{quant}",
            ["-m", "deploy.export", f"--model={w('retrain', 'model.keras')}", f"--quant={quant}",
             f"--out={w('deploy', f'model_{quant}.tflite')}", f"--dataset={config.data.name}",
             f"--num_calibration={deploy.representative_examples}",
             f"--input_scaling={config.model.input_scaling}", *data_dir],
            w("deploy", f"model_{quant}.tflite"), is_tflite))
    stages.append(Stage(
        f"verify_{deploy.quantization}",
        ["-m", "deploy.verify", f"--model={w('retrain', 'model.keras')}",
         f"--tflite={w('deploy', f'model_{deploy.quantization}.tflite')}", f"--dataset={config.data.name}",
         f"--out={w('deploy', f'verify_{deploy.quantization}.json')}",
         f"--input_scaling={config.model.input_scaling}", *data_dir],
        w("deploy", f"verify_{deploy.quantization}.json"), read_json))
    for quant in quants:
        stages.append(Stage(
            f"benchmark_{quant}",
            ["-m", "deploy.benchmark", "--target=host", f"--model={w('deploy', f'model_{quant}.tflite')}",
             f"--out={w('deploy', f'benchmark_{quant}.json')}", f"--runs={deploy.benchmark_runs}"],
            w("deploy", f"benchmark_{quant}.json"), read_json))
    return stages


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
    quant = _section(config, "deploy").quantization
    verify = _maybe(w("deploy", f"verify_{quant}.json"))
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
    for q in ("fp32", quant):
        path = w("deploy", f"model_{q}.tflite")
        if os.path.exists(path):
            latency = _maybe(w("deploy", f"benchmark_{q}.json")).get("latency_ms") or {}
            # p50 is None when a target reports only the mean (benchmark.json schema).
            rows.append({"stage": f"tflite {q}", "macs": widths.get("macs"),
                         "latency_ms": latency.get("p50") or latency.get("mean"),
                         "size_kb": round(os.path.getsize(path) / 1024, 1),
                         "accuracy": verify.get("tflite_accuracy") if q == quant else None,
                         "artifact": f"deploy/model_{q}.tflite", "seconds": seconds.get(f"export_{q}")})
    candidates = [{"macs": p["macs"], "score": p["score"]} for p in widths.get("evaluated", [])]
    chosen = {"macs": widths["macs"], "params": widths["params"], "score": widths["score"]} if widths else None
    finals = [{"name": "searched", "macs": widths["macs"], "accuracy": test_acc}] if widths else []
    scalars = {k: v for k, v in verify.items() if not isinstance(v, (list, dict))}
    notes = [f"verify: {json.dumps(scalars)}"] if verify else []
    return write_report(
        workdir, f"cafe-tf run: {config.model.name} on {config.data.name}", rows, candidates, chosen,
        baselines=widths.get("baselines", []), groups=widths.get("groups", []), finals=finals,
        budget_macs=widths.get("budget", {}).get("max_macs"), notes=notes,
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
