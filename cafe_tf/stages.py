"""Stages of a pipeline: a program run in its own process, producing one artifact on disk.

Every arrow of the design's picture is a file, so a pipeline is its stages run in order, each
skipped when its artifact already exists and is valid. Each stage runs as a subprocess: a killed
pipeline resumes from the first stage without a valid artifact (and each program itself resumes from
its own checkpoints), and process-wide state one stage changes (the QAT adapter sets
``TF_USE_LEGACY_KERAS``) cannot leak into the next.
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import functools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence

from absl import logging


class StageError(ValueError):
    """A stage's program failed or did not leave a valid artifact (a user-facing, one-line error)."""


@dataclasses.dataclass
class Stage:
    """One step: ``python *command`` (e.g. ``["-m", "cafe_tf.search", ...]``) must leave a valid ``artifact``."""

    name: str
    command: list[str]
    artifact: str
    validate: Callable[[str], object]  # raises on an invalid artifact
    seconds: float | None = None
    skipped: bool = False

    def is_done(self) -> bool:
        """True when the artifact exists and passes validation."""
        if not os.path.exists(self.artifact):
            return False
        try:
            self.validate(self.artifact)
        except Exception as e:  # any failure means: run the stage again
            logging.warning("stage %s: artifact %s is invalid (%s); running it again", self.name, self.artifact, e)
            return False
        return True


def run_stages(stages: Sequence[Stage], log_dir: str, env: dict[str, str] | None = None,
               tensorflow_logs: bool | None = None) -> None:
    """Runs each stage whose artifact is missing or invalid; raises StageError on the first failure.

    A stage dies with the pipeline: SIGTERM and SIGINT are forwarded to it (then re-raised here once
    it has stopped), and on Linux it gets SIGTERM when this process dies (:mod:`cafe_tf.stage_launcher`).

    Args:
      stages: the stages, in order.
      log_dir: where each stage's log (all of its output) is written.
      env: variables added to this process's environment for the stages.
      tensorflow_logs: relay TensorFlow's start-up lines about CUDA (:func:`is_tensorflow_noise`) to
        stdout too. ``None``: when the stages' ``TF_CPP_MIN_LOG_LEVEL`` is 0 or 1 (the user asked for
        TensorFlow's INFO or WARNING lines). The log keeps them either way.
    """
    os.makedirs(log_dir, exist_ok=True)
    stage_env = {**os.environ, **(env or {})}
    if tensorflow_logs is None:
        tensorflow_logs = stage_env.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1")
    noise = None if tensorflow_logs else functools.partial(is_tensorflow_noise, cuda_driver=has_cuda_driver())
    for i, stage in enumerate(stages, 1):
        if stage.is_done():
            stage.skipped = True
            print(f"[{i}/{len(stages)}] {stage.name}: done already ({stage.artifact})", flush=True)
            continue
        log_path = os.path.join(log_dir, f"{i:02d}_{stage.name}.log")
        print(f"[{i}/{len(stages)}] {stage.name}: {shlex.join(stage.command)}", flush=True)
        print(f"      log: {log_path}", flush=True)
        start = time.time()
        code = _run_tied(stage.command, log_path, stage_env, noise)
        stage.seconds = time.time() - start
        if code != 0:
            raise StageError(f"stage {stage.name!r} failed with exit code {code}; see {log_path}")
        if not stage.is_done():
            raise StageError(f"stage {stage.name!r} finished but left no valid artifact {stage.artifact!r}; see {log_path}")
        print(f"      {stage.name} done in {stage.seconds:.0f} s", flush=True)


_FORWARDED = (signal.SIGTERM, signal.SIGINT)

# TensorFlow's start-up lines on a machine without a usable GPU. They print whatever
# TF_CPP_MIN_LOG_LEVEL says (cudart_stub logs before the level is read) or as errors although nothing
# failed (cuInit without a driver), and a user reads them as a failure.
_TF_LOG_PREFIX = rb"[IWE]\d{4} \d\d:\d\d:[\d.]+ +\d+ "
_TF_NOISE = re.compile(rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR\s*$|"
                       + _TF_LOG_PREFIX + rb"(cudart_stub\.cc:\d+\] Could not find cuda drivers"
                       rb"|cuda_(dnn|fft|blas)\.cc:\d+\] Unable to register)")
_CUINIT_FAILED = re.compile(_TF_LOG_PREFIX + rb"cuda_platform\.cc:\d+\] failed call to cuInit")


def has_cuda_driver() -> bool:
    """Whether the CUDA driver library (``libcuda``) is installed, i.e. a failed cuInit means something."""
    return ctypes.util.find_library("cuda") is not None


def is_tensorflow_noise(line: bytes, cuda_driver: bool = False) -> bool:
    """Whether ``line`` of a stage's output is TensorFlow's CUDA start-up chatter (kept in the log only).

    Args:
      line: one line of output.
      cuda_driver: the CUDA driver is installed; a failed cuInit is then relayed (the GPU is unusable).

    Returns:
      True for the absl pre-init notice, ``cudart_stub``'s "Could not find cuda drivers", cuDNN / cuFFT /
      cuBLAS registration lines and, without a driver, the failed cuInit.
    """
    return bool(_TF_NOISE.match(line) or (not cuda_driver and _CUINIT_FAILED.match(line)))


def filter_own_stderr() -> Callable[[], None] | None:
    """Routes this process's file descriptor 2 through a thread that drops TensorFlow's CUDA start-up lines.

    For a program started by the ``cafe-tf`` command before it imports TensorFlow, whose C++ runtime
    prints those lines before any setting can quiet it. Nothing is filtered when the user asked for
    TensorFlow's logs (``TF_CPP_MIN_LOG_LEVEL`` 0 or 1). Child processes inherit the filtered
    descriptor. Returns the function that flushes and restores the descriptor (registered to run at
    exit too), or None when nothing was filtered.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1"):
        return None
    cuda_driver = has_cuda_driver()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def relay() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            for line in iter(pipe.readline, b""):
                if not is_tensorflow_noise(line, cuda_driver):
                    os.write(saved, line)

    thread = threading.Thread(target=relay, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        if thread.is_alive():
            sys.stderr.flush()
            os.dup2(saved, 2)  # closes the pipe's last write end in this process: the relay sees EOF
            thread.join(timeout=5)

    import atexit

    atexit.register(restore)
    return restore


def _run_tied(command: Sequence[str], log_path: str, env: Mapping[str, str],
              noise: Callable[[bytes], bool] | None = None) -> int:
    """Runs ``python *command``, teeing its output to ``log_path`` and stdout (less what ``noise`` matches);
    returns its exit code."""
    argv = [sys.executable, "-m", "cafe_tf.stage_launcher", str(os.getpid()), *command]
    with open(log_path, "ab") as log:
        # Its own process group: a terminal's Ctrl-C reaches only the pipeline, which forwards it once.
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env), process_group=0)
        received: list[int] = []

        def forward(signum: int, frame: object) -> None:
            received.append(signum)
            proc.send_signal(signum)

        # Signal handlers can only be set from the main thread; elsewhere the launcher's tie remains.
        main_thread = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, forward) for s in _FORWARDED} if main_thread else {}
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # tee, a line at a time: the user sees progress, the log keeps everything
                log.write(line)
                if noise is not None and noise(line):
                    continue
                sys.stdout.buffer.write(b"      " + line)
                sys.stdout.flush()
            code = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    if received:  # the stage has stopped: now let the signal do to the pipeline what it was sent to do
        if previous.get(received[0]) == signal.SIG_IGN:  # started ignoring it, yet forwarded it: die of it
            signal.signal(received[0], signal.SIG_DFL)
        signal.raise_signal(received[0])
    return code


# Artifact validators for Stage.validate.


def is_keras_file(path: str) -> None:
    """Validates a .keras archive (a zip file)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras archive")


def is_metrics_file(path: str) -> None:
    """Validates a finished training job's metrics.json (it holds the final evaluation)."""
    if not (read_json(path).get("final") or {}):
        raise ValueError(f"{path} holds no final evaluation")


def is_tflite(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ValueError(f"{path} is not a TFLite flatbuffer")


def read_json(path: str) -> dict:
    """The JSON object in ``path`` (raises on a missing or malformed file)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
