"""Pipeline stages: skipped when the artifact is valid, re-run when not, failures named, dying with the pipeline."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cafe_tf.stages import Stage, StageError, has_cuda_driver, is_tensorflow_noise, run_stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stage(tmp_path, name, payload=None, code=None):
    path = tmp_path / f"{name}.json"
    code = code or f"import json; json.dump({payload!r}, open({str(path)!r}, 'w'))"
    return Stage(name, ["-c", code], str(path), lambda p: json.load(open(p))["ok"] or 1 / 0)


def test_runs_then_skips_valid_artifacts(tmp_path, capsys):
    stages = [_stage(tmp_path, "a", {"ok": True}), _stage(tmp_path, "b", {"ok": True})]
    run_stages(stages, str(tmp_path / "logs"))
    assert all(not s.skipped and s.seconds is not None for s in stages)
    again = [_stage(tmp_path, "a", {"ok": True}), _stage(tmp_path, "b", {"ok": True})]
    run_stages(again, str(tmp_path / "logs"))
    assert all(s.skipped for s in again)
    assert "done already" in capsys.readouterr().out


def test_invalid_artifact_is_rebuilt(tmp_path):
    (tmp_path / "a.json").write_text("{truncated")
    stage = _stage(tmp_path, "a", {"ok": True})
    assert not stage.is_done()
    run_stages([stage], str(tmp_path / "logs"))
    assert not stage.skipped and json.loads((tmp_path / "a.json").read_text()) == {"ok": True}


def test_failure_names_stage_and_log(tmp_path):
    stages = [_stage(tmp_path, "bad", code="raise SystemExit(3)"), _stage(tmp_path, "never", {"ok": True})]
    with pytest.raises(StageError, match=r"stage 'bad' failed with exit code 3; see .*01_bad.log"):
        run_stages(stages, str(tmp_path / "logs"))
    assert not (tmp_path / "never.json").exists()


def test_missing_artifact_after_success_is_an_error(tmp_path):
    stage = _stage(tmp_path, "lazy", code="pass")
    with pytest.raises(StageError, match="finished but left no valid artifact"):
        run_stages([stage], str(tmp_path / "logs"))


# What TensorFlow prints at start-up on a machine without CUDA (TF 2.21), between two lines of the stage's own.
_TF_STARTUP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796703257.466095   19992 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "E0000 00:00:1796703271.533863   19992 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
]


def _noisy_stage(tmp_path):
    lines = ["epoch 1/2: loss 0.5", *_TF_STARTUP, "E0000 00:00:1.0   1 kernel.cc:9] a real error"]
    code = ("import sys, json\n"
            f"for line in {lines!r}:\n"
            "    print(line, file=sys.stderr if line[0] in 'IEW' else sys.stdout, flush=True)\n"
            f"json.dump({{'ok': True}}, open({str(tmp_path / 'n.json')!r}, 'w'))")
    (tmp_path / "noisy.py").write_text(code)  # a file, so the command line the pipeline prints holds no such line
    return Stage("noisy", [str(tmp_path / "noisy.py")], str(tmp_path / "n.json"), lambda p: json.load(open(p))["ok"])


@pytest.mark.skipif(has_cuda_driver(), reason="with a CUDA driver a failed cuInit is relayed")
def test_tensorflow_cuda_lines_stay_in_the_log_unless_asked_for(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    run_stages([_noisy_stage(tmp_path)], str(tmp_path / "logs"), env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    out = capfd.readouterr().out
    assert "epoch 1/2: loss 0.5" in out and "kernel.cc:9] a real error" in out
    assert not any(line in out for line in _TF_STARTUP) and "cuInit" not in out and "cudart" not in out
    log = (tmp_path / "logs" / "01_noisy.log").read_text()
    assert all(line in log for line in _TF_STARTUP)  # the log keeps everything

    (tmp_path / "n.json").unlink()
    run_stages([_noisy_stage(tmp_path)], str(tmp_path / "logs"), env={"TF_CPP_MIN_LOG_LEVEL": "0"})  # asked for
    out = capfd.readouterr().out
    assert all(line in out for line in _TF_STARTUP)


def test_a_failed_cuinit_is_relayed_where_a_cuda_driver_is_installed():
    assert is_tensorflow_noise(_TF_STARTUP[2].encode() + b"\n", cuda_driver=False)
    assert not is_tensorflow_noise(_TF_STARTUP[2].encode() + b"\n", cuda_driver=True)
    assert is_tensorflow_noise(_TF_STARTUP[1].encode() + b"\n", cuda_driver=True)
    assert not is_tensorflow_noise(b"I0000 00:00:1.5   7 cpu_feature_guard.cc:227] This TensorFlow binary ...\n")
    assert not is_tensorflow_noise(b"a line that mentions cudart_stub.cc:31] Could not find cuda drivers\n")


# A pipeline stand-in: run_stages (the real stage launcher) over a quick stage and one that hangs
# while the file `hang` exists, each leaving its pid and a count of its runs.
_RUNNER = """
import os
import signal
import sys
from cafe_tf.stages import Stage, read_json, run_stages

if os.environ.get("RUNNER_IGNORES_SIGINT"):  # started as a background job of a script: SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_IGN)
d = sys.argv[1]
code = (
    "import json, os, sys, time\\n"
    "d, name = sys.argv[1], sys.argv[2]\\n"
    "open(os.path.join(d, name + '.pid'), 'w').write(str(os.getpid()))\\n"
    "open(os.path.join(d, name + '.runs'), 'a').write('run\\\\n')\\n"
    "while name == 'slow' and os.path.exists(os.path.join(d, 'hang')):\\n"
    "    time.sleep(0.1)\\n"
    "json.dump({'ok': True}, open(os.path.join(d, name + '.json'), 'w'))\\n"
)
run_stages([Stage(n, ["-c", code, d, n], f"{d}/{n}.json", read_json) for n in ("quick", "slow")], f"{d}/logs")
"""


def _alive(pid: int) -> bool:
    # A killed orphan may stay a zombie until some reaper collects it: that counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _runner(tmp_path, ignore_sigint: bool = False):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RUNNER_IGNORES_SIGINT", None)
    if ignore_sigint:
        env["RUNNER_IGNORES_SIGINT"] = "1"
    return subprocess.Popen([sys.executable, "-c", _RUNNER, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
@pytest.mark.parametrize("sig,ignore_sigint", [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGKILL, False),
                                               (signal.SIGINT, True)],
                         ids=["SIGTERM", "SIGINT", "SIGKILL", "SIGINT-started-ignoring-SIGINT"])
def test_a_killed_pipeline_takes_its_stage_with_it_and_resumes(tmp_path, sig, ignore_sigint):
    # ignore_sigint: the pipeline started with SIGINT ignored (`make demo &` in a script); its stage
    # must still stop on the SIGINT the pipeline forwards.
    (tmp_path / "hang").touch()
    runner, stage_pid = _runner(tmp_path, ignore_sigint), None
    try:
        assert _wait_for(lambda: (tmp_path / "slow.pid").exists(), 60), runner.communicate(timeout=5)[0]
        stage_pid = int((tmp_path / "slow.pid").read_text())
        runner.send_signal(sig)
        out = runner.communicate(timeout=30)[0]
        # SIGTERM / SIGINT: forwarded, the stage stops, then the pipeline dies of the same signal.
        assert runner.returncode == -sig, out
        assert _wait_for(lambda: not _alive(stage_pid), 10), f"stage {stage_pid} outlived its pipeline ({sig.name})"
    finally:
        runner.kill()
        if stage_pid is not None and _alive(stage_pid):  # the test failed: leave no orphan behind
            os.kill(stage_pid, signal.SIGKILL)
    assert not (tmp_path / "slow.json").exists()
    (tmp_path / "hang").unlink()
    rerun = _runner(tmp_path)
    out = rerun.communicate(timeout=60)[0]
    assert rerun.returncode == 0, out
    assert "quick: done already" in out
    assert (tmp_path / "quick.runs").read_text() == "run\n" and (tmp_path / "slow.runs").read_text() == "run\nrun\n"
    assert json.loads((tmp_path / "slow.json").read_text()) == {"ok": True}


@pytest.mark.skipif(has_cuda_driver(), reason="with a CUDA driver a failed cuInit is relayed")
def test_the_cafe_tf_command_filters_its_own_and_its_childrens_tensorflow_lines():
    # A process whose fd 2 gets TensorFlow's start-up lines (its own and a child's, as the C++ runtime
    # writes them) and lines of its own, the last one written as it exits.
    child = f"import os; os.write(2, {_TF_STARTUP[1]!r}.encode() + bytes([10])); os.write(2, b'kept: child' + bytes([10]))"
    code = "\n".join([
        "import os, subprocess, sys",
        "from cafe_tf import stages",
        "stages.filter_own_stderr()",
        f"for line in {_TF_STARTUP!r}:",
        "    os.write(2, line.encode() + bytes([10]))",
        "os.write(2, b'kept: mine' + bytes([10]))",
        f"subprocess.run([sys.executable, '-c', {child!r}], check=True)",
        "sys.stderr.write('kept: last words' + chr(10))",
        "sys.exit(3)",
    ])
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 3
    assert proc.stderr.splitlines() == ["kept: mine", "kept: child", "kept: last words"], proc.stderr
    asked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"},
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert all(line in asked.stderr for line in _TF_STARTUP)
