"""cafe-tf deployment: TFLite export, quantization, parity checks, Edge TPU readiness, benchmarks."""
