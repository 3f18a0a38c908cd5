"""Android target: the official TFLite ``benchmark_model`` binary run over ``adb``.

Steps: find ``adb`` (``--adb`` or PATH), list the attached devices (``adb devices -l``) and pick one
(``--serial``, or the only one), read the device's properties, push the model and the user-supplied
``benchmark_model`` binary to ``/data/local/tmp``, run it (optionally under ``taskset <mask>`` to pin
it to the big cores) with ``--num_threads``, ``--num_runs``, ``--warmup_runs``, ``--use_xnnpack``,
``--use_gpu``, ``--use_nnapi``, ``--enable_op_profiling`` and ``--report_peak_memory_footprint``,
then parse its report (:func:`parse_benchmark_output`): the
``Inference timings in us: Init, First inference, Warmup (avg), Inference (avg)`` line, the
``count= first= curr= min= max= avg= std= [p5= median= p95=]`` line of the timed runs, the peak
memory lines and the per-op profile tables.

Each problem gets one message: no adb, an adb server that does not answer (every call has a
timeout), no device / an unauthorised or offline one / an unknown serial / several without a
serial, a missing or non-Android binary, a run that printed no timings (with the tool's last lines).
No real device is part of the tests: they drive a scripted stand-in for adb that replays recorded
``benchmark_model`` output, and the real adb with no device attached.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from deploy.benchmark import schema
from deploy.errors import DeployError

REMOTE_DIR = "/data/local/tmp"
REMOTE_BINARY = "benchmark_model"
# Device properties recorded in benchmark.json's environment.
_PROPERTIES = {
    "ro.product.manufacturer": "manufacturer",
    "ro.product.model": "model",
    "ro.product.device": "device",
    "ro.build.version.release": "android_version",
    "ro.build.version.sdk": "sdk",
    "ro.product.cpu.abi": "abi",
    "ro.soc.manufacturer": "soc_manufacturer",
    "ro.soc.model": "soc_model",
    "ro.board.platform": "board_platform",
}


@dataclasses.dataclass(frozen=True)
class Device:
    """One line of ``adb devices -l``."""

    serial: str
    state: str  # "device" (ready), "unauthorized", "offline", "recovery", ...
    info: Mapping[str, str]


class Adb:
    """Runs adb commands against one server with a timeout, turning failures into :class:`DeployError`."""

    def __init__(self, adb: str | None = None, serial: str | None = None, timeout_s: float = 60.0, env: Mapping[str, str] | None = None):
        self.env = dict(os.environ if env is None else env)
        self.path = find_adb(adb, search_path=self.env.get("PATH"))
        self.serial = serial
        self.timeout_s = timeout_s

    def run(self, args: Sequence[str], timeout_s: float | None = None, check: bool = True, device: bool = True) -> subprocess.CompletedProcess:
        command = [self.path]
        if device and self.serial:
            command += ["-s", self.serial]
        command += list(args)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.env, check=False)
        except subprocess.TimeoutExpired:
            raise DeployError(
                f"adb did not answer within {timeout:.0f} s ({shlex.join(command)}); if the adb server is stuck, "
                "run `adb kill-server` and retry"
            ) from None
        except OSError as e:
            raise DeployError(f"cannot run adb at {self.path!r}: {e}") from None
        if check and proc.returncode != 0:
            message = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[-1]
            if "cannot connect to daemon" in message or "failed to start daemon" in message:
                raise DeployError(f"the adb server could not start or be reached: {message}")
            raise DeployError(f"`{shlex.join(command)}` failed: {message}")
        return proc

    def devices(self) -> list[Device]:
        """The devices the adb server sees."""
        proc = self.run(["devices", "-l"], device=False)
        return parse_devices(proc.stdout)

    def shell(self, command: str, timeout_s: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["shell", command], timeout_s=timeout_s, check=check)

    def push(self, local: str, remote: str) -> None:
        self.run(["push", local, remote], timeout_s=max(self.timeout_s, 300))


def find_adb(adb: str | None = None, search_path: str | None = None) -> str:
    """The adb executable: ``adb`` if given (a path or a name on PATH), else ``adb`` on PATH
    (``search_path``, default ``$PATH``)."""
    name = adb or "adb"
    if os.sep in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return name
        raise DeployError(f"--adb={name!r} is not an executable file")
    found = shutil.which(name, path=search_path)
    if found is None:
        raise DeployError(
            f"{name!r} not found on PATH: install Android's platform-tools (Debian: `apt-get install adb`) "
            "or pass --adb=/path/to/adb"
        )
    return found


def parse_devices(text: str) -> list[Device]:
    """Parses ``adb devices -l`` output (daemon start-up chatter and blank lines are ignored)."""
    devices = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("*") or line.startswith("List of devices"):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        info = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
        devices.append(Device(parts[0], parts[1], info))
    return devices


def select_device(devices: Sequence[Device], serial: str | None) -> Device:
    """The device to use: ``serial`` if given, else the only one; a clear error otherwise."""
    if not devices:
        raise DeployError(
            "no Android device attached (`adb devices` lists none): connect a phone with USB debugging "
            "enabled (or `adb connect HOST:PORT` for a network device) and retry"
        )
    if serial is not None:
        for device in devices:
            if device.serial == serial:
                break
        else:
            raise DeployError(f"device {serial!r} is not attached; attached: {[d.serial for d in devices]}")
    elif len(devices) > 1:
        raise DeployError(f"{len(devices)} devices attached {[d.serial for d in devices]}; choose one with --serial")
    else:
        device = devices[0]
    if device.state == "unauthorized":
        raise DeployError(f"device {device.serial!r} is unauthorized: accept the USB debugging prompt on the phone and retry")
    if device.state != "device":
        raise DeployError(f"device {device.serial!r} is {device.state!r}, not ready; reconnect it (state must be 'device')")
    return device


def parse_getprop(text: str) -> dict[str, str]:
    """Parses ``adb shell getprop`` lines ``[key]: [value]``."""
    props = {}
    for match in re.finditer(r"^\[([^\]]+)\]: \[([^\]]*)\]\s*$", text, re.MULTILINE):
        props[match.group(1)] = match.group(2)
    return props


def check_binary(path: str | None) -> str:
    """The local ``benchmark_model`` binary, checked to exist and to be an ELF executable."""
    if not path:
        raise DeployError(
            "--benchmark_binary is required for --target android: the official TFLite benchmark_model for "
            "Android (arm64: the 'android_aarch64_benchmark_model' prebuilt, or `bazel build -c opt "
            "--config=android_arm64 //tensorflow/lite/tools/benchmark:benchmark_model`)"
        )
    if not os.path.isfile(path):
        raise DeployError(f"benchmark binary {path!r} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"\x7fELF":
        raise DeployError(f"benchmark binary {path!r} is not an ELF executable (first bytes {magic!r}); pass the Android benchmark_model binary")
    return path


# --------------------------------------------------------------------------------------------
# benchmark_model's report

_NUM = r"([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)"
_PREFIX = r"^(?:[A-Z]\s+\w+\s*:\s*|INFO:\s*|[A-Z]/\w+\(\s*\d+\):\s*)?"  # logcat / INFO: prefixes
_TIMINGS = re.compile(
    r"Inference timings in us: Init: " + _NUM + r", First inference: " + _NUM + r", Warmup \(avg\): " + _NUM + r", Inference \(avg\): " + _NUM
)
_COUNT = re.compile(_PREFIX + r"count=(\d+)(?: first=" + _NUM + r")? curr=" + _NUM + r"(?: min=" + _NUM + r" max=" + _NUM + r" avg=" + _NUM + r" std=" + _NUM + r")?(?: p5=" + _NUM + r" median=" + _NUM + r" p95=" + _NUM + r")?", re.MULTILINE)


def _f(value: str | None) -> float | None:
    return None if value is None else float(value)


def parse_benchmark_output(text: str) -> dict[str, Any]:
    """Parses ``benchmark_model``'s console report into timings (ms), memory and the op profile.

    Raises:
      DeployError: the report has no ``Inference timings`` line (the run failed; the message quotes
        the tool's last lines).
    """
    timings = _TIMINGS.search(text)
    if timings is None:
        tail = [line for line in text.strip().splitlines() if line.strip()][-6:]
        raise DeployError("benchmark_model printed no 'Inference timings' line; its last lines:\n  " + "\n  ".join(tail or ["(no output)"]))
    init_us, first_us, warmup_us, avg_us = (float(v) for v in timings.groups())
    runs = [m for m in _COUNT.finditer(text) if m.group(6) is not None]  # lines with min/max/avg/std
    regular = runs[-1] if runs else None  # the warm-up line comes first, the timed runs last
    result: dict[str, Any] = {
        "init_ms": init_us / 1000.0,
        "first_inference_ms": first_us / 1000.0,
        "warmup_avg_ms": warmup_us / 1000.0,
        "inference_avg_ms": avg_us / 1000.0,
        "runs": int(regular.group(1)) if regular else None,
        "warmup_runs": int(runs[0].group(1)) if len(runs) > 1 else None,
        "latency_ms": {"mean": avg_us / 1000.0, "std": None, "min": None, "max": None, "p50": None, "p90": None, "p99": None},
    }
    if regular:

        def ms(i: int) -> float | None:
            return None if regular.group(i) is None else float(regular.group(i)) / 1000.0

        result["latency_ms"].update({"min": ms(4), "max": ms(5), "std": ms(7), "p5": ms(8), "p50": ms(9), "p95": ms(10)})
    peak = re.search(r"Overall peak memory footprint \(MB\) via periodic monitoring: " + _NUM, text)
    delta = re.search(r"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): init=" + _NUM + r" overall=" + _NUM, text)
    result["peak_memory_mb"] = float(peak.group(1)) if peak else (float(delta.group(2)) if delta else None)
    result["memory_scope"] = (
        "benchmark_model's periodic peak memory footprint (--report_peak_memory_footprint)" if peak
        else "benchmark_model's memory footprint delta from the tool's start (overall)" if delta else None
    )
    result["memory_footprint_delta_mb"] = {"init": float(delta.group(1)), "overall": float(delta.group(2))} if delta else None
    head = text.split("Profiling Info for", 1)[0]  # the profile tables name delegate nodes too
    result["delegate_log"] = [line.strip() for line in head.splitlines() if re.search(r"delegate", line, re.IGNORECASE)][:20]
    result["op_profile"] = parse_op_profile(text)
    return result


def _table_rows(lines: list[str], start: int) -> tuple[list[list[str]], int]:
    """Tab-separated rows after a ``[...]`` header line at ``start``; returns (rows, next index)."""
    rows = []
    i = start + 1
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("=") or "\t" not in line:
            break
        rows.append([cell.strip() for cell in line.strip("\n").split("\t") if cell.strip()])
        i += 1
    return rows, i


def parse_op_profile(text: str) -> dict[str, Any] | None:
    """The "Operator-wise Profiling Info for Regular Benchmark Runs" tables, or None without one.

    Returns ``{"per_op": [{node_type, name, avg_ms, percent, times_called}],
    "by_type": [{node_type, count, avg_ms, percent}]}``.
    """
    start = text.find("Operator-wise Profiling Info for Regular Benchmark Runs")
    if start < 0:
        return None
    lines = text[start:].splitlines()
    per_op, by_type = [], []
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if "==== Run Order ====" in line:
            section = "run_order"
        elif "==== Summary by node type ====" in line:
            section = "by_type"
        elif "====" in line:
            section = None
        elif section == "run_order" and "[node type]" in line:
            rows, i = _table_rows(lines, i)
            for cells in rows:
                if len(cells) >= 9:
                    per_op.append({
                        "node_type": cells[0], "name": cells[8], "first_ms": float(cells[2]), "avg_ms": float(cells[3]),
                        "percent": float(cells[4].rstrip("%")), "times_called": int(float(cells[7])),
                    })
            section = None
            continue
        elif section == "by_type" and "[Node type]" in line:
            rows, i = _table_rows(lines, i)
            for cells in rows:
                if len(cells) >= 4:
                    by_type.append({
                        "node_type": cells[0], "count": int(cells[1]), "avg_ms": float(cells[2]),
                        "percent": float(cells[3].rstrip("%")),
                    })
            section = None
            continue
        i += 1
    if not per_op and not by_type:
        return None
    return {"per_op": per_op, "by_type": by_type}


# --------------------------------------------------------------------------------------------
# The run


def benchmark_command(
    remote_model: str,
    threads: int,
    runs: int,
    warmup: int,
    use_xnnpack: bool,
    use_gpu: bool,
    use_nnapi: bool,
    op_profiling: bool,
    report_memory: bool,
    taskset: str | None = None,
    extra_args: Sequence[str] = (),
) -> str:
    """The shell command run on the device."""

    def flag(v: bool) -> str:
        return "true" if v else "false"

    args = [
        posixpath.join(REMOTE_DIR, REMOTE_BINARY),
        f"--graph={remote_model}",
        f"--num_threads={threads}",
        f"--num_runs={runs}",
        f"--warmup_runs={warmup}",
        f"--use_xnnpack={flag(use_xnnpack)}",
        f"--use_gpu={flag(use_gpu)}",
        f"--use_nnapi={flag(use_nnapi)}",
        f"--enable_op_profiling={flag(op_profiling)}",
        f"--report_peak_memory_footprint={flag(report_memory)}",
        *extra_args,
    ]
    if taskset:
        args = ["taskset", taskset, *args]
    return shlex.join(args)


def benchmark_android(
    model_path: str,
    benchmark_binary: str | None,
    serial: str | None = None,
    threads: int = 4,
    runs: int = 50,
    warmup: int = 5,
    use_xnnpack: bool = True,
    use_gpu: bool = False,
    use_nnapi: bool = False,
    op_profiling: bool = True,
    report_memory: bool = True,
    taskset: str | None = None,
    adb: str | None = None,
    adb_timeout_s: float = 60.0,
    run_timeout_s: float = 900.0,
    cleanup: bool = True,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Benchmarks ``model_path`` on an Android device; returns the ``benchmark.json`` payload."""
    from deploy import tflite_model

    tflite_model.read_model_bytes(model_path)  # a clear error for a missing / non-TFLite model first
    if threads < 1 or runs < 1 or warmup < 0:
        raise DeployError(f"need threads >= 1, runs >= 1, warmup >= 0; got {threads}, {runs}, {warmup}")
    if use_gpu and use_nnapi:
        raise DeployError("choose one of --use_gpu and --use_nnapi")
    if taskset is not None and not re.fullmatch(r"(0x)?[0-9a-fA-F]+", taskset):
        raise DeployError(f"--taskset must be a hexadecimal CPU mask such as f0 (the big cores of an 8-core phone), got {taskset!r}")
    binary = check_binary(benchmark_binary)
    client = Adb(adb, serial=None, timeout_s=adb_timeout_s, env=env)
    device = select_device(client.devices(), serial)
    client.serial = device.serial
    properties = parse_getprop(client.shell("getprop", check=False).stdout)
    remote_model = posixpath.join(REMOTE_DIR, os.path.basename(model_path))
    remote_binary = posixpath.join(REMOTE_DIR, REMOTE_BINARY)
    client.push(binary, remote_binary)
    client.shell(f"chmod 755 {shlex.quote(remote_binary)}")
    client.push(model_path, remote_model)
    command = benchmark_command(remote_model, threads, runs, warmup, use_xnnpack, use_gpu, use_nnapi, op_profiling, report_memory, taskset)
    try:
        proc = client.shell(command, timeout_s=run_timeout_s, check=False)
    finally:
        if cleanup:
            client.shell(f"rm -f {shlex.quote(remote_model)}", check=False)
    output = proc.stdout + ("\n" + proc.stderr if proc.stderr else "")
    parsed = parse_benchmark_output(output)
    delegate = "gpu" if use_gpu else "nnapi" if use_nnapi else "xnnpack" if use_xnnpack else "none"
    environment = {
        "adb_serial": device.serial,
        **{name: properties[key] for key, name in _PROPERTIES.items() if key in properties},
        **{f"adb_{k}": v for k, v in device.info.items()},
        "taskset": taskset,
        "benchmark_binary": os.path.abspath(binary),
        "command": command,
    }
    return schema.make_record(
        model_path,
        target="android",
        threads=threads,
        delegate=delegate,
        warmup=parsed["warmup_runs"] if parsed["warmup_runs"] is not None else warmup,
        runs=parsed["runs"] or runs,
        latency_ms=parsed["latency_ms"],
        environment=environment,
        init_ms=parsed["init_ms"],
        first_inference_ms=parsed["first_inference_ms"],
        peak_memory_mb=parsed["peak_memory_mb"],
        memory_scope=parsed["memory_scope"],
        op_profile=parsed["op_profile"],
        extra={"warmup_avg_ms": parsed["warmup_avg_ms"], "delegate_log": parsed["delegate_log"]},
    )
