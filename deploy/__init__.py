"""cafe-tf deployment: TFLite export, quantization, parity checks, Edge TPU readiness, benchmarks.

Modules (each program runs as ``python -m deploy.<name>``; ``--help`` says how):

* ``export``: ``.keras`` -> ``.tflite`` (fp32, fp16, dynamic, int8, qat), metadata, refusals.
* ``qat``: the tf-keras / tensorflow-model-optimization adapter (the only tf-keras user).
* ``verify``: LiteRT vs Keras parity on evaluation batches -> ``verify.json``.
* ``edgetpu``: Edge TPU readiness without the compiler, ``edgetpu_compiler`` log parsing.
* ``benchmark``: host (LiteRT + XNNPACK), Android (adb + benchmark_model), Coral -> ``benchmark.json``.
* ``latency_table``: per-layer latency tables and the additive predictor a width search budgets with.
* ``op_profile``: latency tables from per-op ``benchmark_model`` profiles of whole subnets (host or adb).
* ``tflite_model``, ``representative``: reading / running ``.tflite`` files; calibration images.
"""
