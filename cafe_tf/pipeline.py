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

Exit codes: 0 done, 1 a stage failed (its log is named), 2 usage or config error.
"""

from __future__ import annotations

import importlib.util
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from cafe_tf import programs  # noqa: E402



def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


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


def build_stages(config, workdir: str, config_args: list[str] | None = None) -> tuple[list, list[str]]:
    """The stages for ``config`` and notes on any stage whose program is not available.

    ``config_args`` (default: this process's ``--config`` and ``--config.*`` flags) go to every
    stage that takes a config.
    """
    from cafe_tf.space import read_widths
    from cafe_tf.stages import Stage, is_keras_file, is_tflite, read_json

    cfg = programs.config_argv() if config_args is None else list(config_args)
    w = lambda *p: os.path.join(workdir, *p)  # noqa: E731
    notes: list[str] = []
    stages = [
        Stage("supernet", ["-m", "cafe_tf.train_supernet", *cfg, f"--workdir={workdir}"], w("supernet.keras"), is_keras_file),
        Stage("search", ["-m", "cafe_tf.search", *cfg, f"--workdir={workdir}"], w("widths.json"), read_widths),
        Stage("retrain", ["-m", "cafe_tf.train", *cfg, f"--workdir={w('retrain')}", f"--widths={w('widths.json')}"]
              + ([f"--init_from_supernet={w('supernet.keras')}"]
                 if config.get("retrain", {}).get("init_from_supernet") else []),
              w("retrain", "model.keras"), is_keras_file),
    ]
    deploy = config.get("deploy", {})
    dataset = config.data.name
    data_dir = [f"--data_dir={config.data.data_dir}"] if config.data.get("data_dir") else []
    if _have("deploy.export"):
        for quant in ("fp32", deploy.get("quantization", "int8")):
            stages.append(Stage(
                f"export_{quant}",
                ["-m", "deploy.export", f"--model={w('retrain', 'model.keras')}", f"--quant={quant}",
                 f"--out={w('deploy', f'model_{quant}.tflite')}", f"--dataset={dataset}",
                 f"--num_calibration={deploy.get('representative_examples', 200)}", *data_dir],
                w("deploy", f"model_{quant}.tflite"), is_tflite))
    else:
        notes.append("TFLite export skipped: deploy.export is not available in this checkout")
    if _have("deploy.verify"):
        quant = deploy.get("quantization", "int8")
        stages.append(Stage(
            f"verify_{quant}",
            ["-m", "deploy.verify", f"--model={w('retrain', 'model.keras')}", f"--tflite={w('deploy', f'model_{quant}.tflite')}",
             f"--dataset={dataset}", f"--out={w('deploy', f'verify_{quant}.json')}", *data_dir],
            w("deploy", f"verify_{quant}.json"), read_json))
    else:
        notes.append("parity check skipped: deploy.verify is not available in this checkout")
    if _have("deploy.benchmark.__main__") or _have("deploy.benchmark.cli"):
        for quant in ("fp32", deploy.get("quantization", "int8")):
            stages.append(Stage(
                f"benchmark_{quant}",
                ["-m", "deploy.benchmark", "--target=host", f"--model={w('deploy', f'model_{quant}.tflite')}",
                 f"--out={w('deploy', f'benchmark_{quant}.json')}", f"--runs={deploy.get('benchmark_runs', 50)}"],
                w("deploy", f"benchmark_{quant}.json"), read_json))
    else:
        notes.append("host benchmark skipped: deploy.benchmark is not available in this checkout")
    return stages, notes


def _maybe(path: str) -> dict | None:
    from cafe_tf.stages import read_json

    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _latency_ms(bench: dict | None) -> float | None:
    if not bench:
        return None
    lat = bench.get("latency_ms") or bench.get("latency") or {}
    return lat.get("p50") or lat.get("mean") if isinstance(lat, dict) else None


def write_run_report(config, workdir: str, stages, notes: list[str]) -> str:
    """Collects the artifacts of a run into report.md / report.png."""
    from cafe_tf.report import write_report

    w = lambda *p: os.path.join(workdir, *p)  # noqa: E731
    widths = _maybe(w("widths.json")) or {}
    metrics = _maybe(w("retrain", "metrics.json")) or {}
    quant = config.get("deploy", {}).get("quantization", "int8")
    verify = _maybe(w("deploy", f"verify_{quant}.json")) or {}
    bench = {q: _maybe(w("deploy", f"benchmark_{q}.json")) for q in ("fp32", quant)}
    seconds = {s.name: s.seconds for s in stages}
    test_acc = (metrics.get("final") or metrics).get("test", {}).get("accuracy") if metrics else None
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
            rows.append({"stage": f"tflite {q}", "macs": widths.get("macs"), "latency_ms": _latency_ms(bench[q]),
                         "size_kb": round(os.path.getsize(path) / 1024, 1),
                         "accuracy": verify.get("tflite_accuracy") if q == quant else None,
                         "artifact": f"deploy/model_{q}.tflite", "seconds": seconds.get(f"export_{q}")})
    pareto = widths.get("pareto") or widths.get("pareto_set") or []
    candidates = [{"macs": p["macs"], "score": p["score"]} for p in pareto if "macs" in p and "score" in p]
    history = widths.get("evaluated") or []
    candidates += [{"macs": p["macs"], "score": p["score"]} for p in history if "macs" in p and "score" in p]
    chosen = {"macs": widths.get("macs"), "params": widths.get("params"), "score": widths.get("score")} if widths else None
    finals = [{"name": "searched", "macs": widths.get("macs"), "accuracy": test_acc}] if widths else []
    budget = (widths.get("budget") or {}).get("max_macs") if isinstance(widths.get("budget"), dict) else None
    return write_report(
        workdir, f"cafe-tf run: {config.model.name} on {config.data.name}", rows, candidates, chosen,
        baselines=widths.get("baselines", []), groups=widths.get("groups", []), finals=finals, budget_macs=budget,
        notes=notes + [f"verify: {json.dumps({k: v for k, v in verify.items() if not isinstance(v, (list, dict))})}"]
        if verify else notes,
    )


def main(config, workdir: str) -> None:
    from cafe_tf.stages import run_stages

    stages, notes = build_stages(config, workdir)
    for n in notes:
        print(f"note: {n}", flush=True)
    run_stages(stages, os.path.join(workdir, "logs"))
    path = write_run_report(config, workdir, stages, notes)
    print(f"report: {path}\n        {os.path.join(workdir, 'report.png')}", flush=True)


if __name__ == "__main__":
    programs.define_config_flags()
    programs.run_program(main)
