"""Which keras.applications families the engine takes, and how well: one row per family.

For each family (``weights=None``, the small input of ``tests/test_applications.py``): accepted by
the channel graph or refused (and why); analytic MACs against the per-layer count of the Keras
model; prunable groups; the largest |difference| between the supernet running a random locally free
sub-network and the extracted model; whether the extracted model converts to full-integer int8
TFLite and loads in LiteRT; seconds taken. Prints a Markdown table (and ``--json``).

    python benchmarks/applications_support.py                    # every family (about 15 min on 2 cores)
    python benchmarks/applications_support.py --families MobileNetV3 ConvNeXt
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import numpy as np  # noqa: E402

from test_applications import FAMILIES, build, independent_macs, random_locally_free  # noqa: E402


def row(family: str) -> dict:
    from cafe_tf.flops import CostModel
    from cafe_tf.graph import ChannelGraph, UnsupportedModelError
    from cafe_tf.slim import Supernet
    from deploy import export
    from deploy.benchmark import host

    start = time.perf_counter()
    ctor, kwargs = FAMILIES[family]
    out = {"family": family, "model": ctor, "input": list(kwargs["input_shape"])}
    model = build(family)
    try:
        graph = ChannelGraph.from_model(model)
    except UnsupportedModelError as e:
        return dict(out, accepted=False, reason=str(e), seconds=round(time.perf_counter() - start, 1))
    cost = CostModel(graph)
    out.update(accepted=True, macs=cost.macs(), macs_counted=independent_macs(model), params=cost.params(),
               params_keras=model.count_params(), groups=len(graph.groups), prunable=len(graph.prunable_groups))
    supernet = Supernet(model, graph)
    channels = random_locally_free(graph)
    x = np.random.default_rng(3).uniform(0, 255, (2, *kwargs["input_shape"])).astype(np.float32)
    plain = supernet.extract(channels)
    want = plain(x, training=False).numpy()
    got = supernet(x, selection=supernet.selection(channels), training=False).numpy()
    out["parity_max_abs"] = float(np.abs(got - want).max())
    out["output_scale"] = float(np.abs(want).max())
    calibration = np.random.default_rng(5).uniform(0, 255, (8, *kwargs["input_shape"])).astype(np.float32)
    try:
        data = export.convert_keras(plain, "int8", batch_size=1, calibration=calibration, io_type="int8",
                                    image_input=False)
        host.make_interpreter(data, 1, use_xnnpack=True)
        out["int8_tflite_kb"] = round(len(data) / 1024)
    except Exception as e:  # a row of the table, not a crash: report what failed
        out["int8_tflite_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = []
    print("| family | model @ input | accepted | MACs (ours / per-layer count) | params = count_params | "
          "prunable groups | parity max abs diff | int8 TFLite |")
    print("|---|---|---|---|---|---|---|---|")
    for family in args.families:
        r = row(family)
        rows.append(r)
        if not r["accepted"]:
            print(f"| {family} | {r['model']} @ {r['input'][0]} | no: {r['reason'][:120]} | | | | | |", flush=True)
            continue
        int8 = f"{r['int8_tflite_kb']} KB" if "int8_tflite_kb" in r else r["int8_tflite_error"]
        print(f"| {family} | {r['model']} @ {r['input'][0]} | yes | {r['macs']:,} / {r['macs_counted']:,} | "
              f"{r['params'] == r['params_keras']} | {r['prunable']} of {r['groups']} | "
              f"{r['parity_max_abs']:.1e} (outputs up to {r['output_scale']:.2g}) | {int8} |", flush=True)
    if args.json:
        from cafe_tf import io

        io.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
