"""Pipeline stages: skipped when the artifact is valid, re-run when not, failures named."""

import json

import pytest

from cafe_tf.stages import Stage, StageError, run_stages


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
