"""The study runner on a toy study: pinned worktree, kill -9 and resume, status, summary, refusals, artifacts.

Each test builds a scratch git repository holding a copy of ``cafe_tf`` and a module of cheap cell
kinds, commits it, writes a manifest pinned to that commit, commits the manifest, and runs the real
program (``python -m cafe_tf.study``), so the cells really run from a git worktree in their own
processes.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cafe_tf.study import claims, ledger, manifest as manifest_lib
from cafe_tf.study.manifest import StudyError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOY_KINDS = '''
import os
import time

import cafe_tf
from cafe_tf import io
from cafe_tf.study import cells


@cells.register("toy_value")
def toy_value(params, ctx):
    return {"value": params["value"]}


@cells.register("toy_where")
def toy_where(params, ctx):
    return {"cafe_tf_file": cafe_tf.__file__, "cwd": os.getcwd()}


@cells.register("toy_wait")
def toy_wait(params, ctx):
    io.write_text(ctx.artifact_path("partial.txt"), "half")
    deadline = time.time() + params["timeout"]
    while not os.path.exists(params["release"]) and time.time() < deadline:
        time.sleep(0.05)
    return {"value": 1.0}


@cells.register("toy_artifact")
def toy_artifact(params, ctx):
    io.write_text(ctx.artifact_path("data.txt"), params["text"])
    return {}


@cells.register("toy_reader")
def toy_reader(params, ctx):
    with open(ctx.input(params["source"], "data.txt")) as f:
        return {"text": f.read()}


@cells.register("toy_step")
def toy_step(params, ctx):
    prev = ctx.resume_path("state.json")
    count = 0 if prev is None else io.read_artifact(prev, "toy_state", (1,))["count"]
    io.write_artifact(ctx.checkpoint_path("state.json"), "toy_state", 1, {"count": count + 1})
    return {"count": count + 1}
'''


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def make_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(os.path.join(ROOT, "cafe_tf"), repo / "cafe_tf", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "toy_kinds.py").write_text(TOY_KINDS)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "code")
    return repo, _git(repo, "rev-parse", "HEAD").strip()


def write_manifest(repo, commit, cells, claims_=(), name="toy", commit_it=True):
    study = repo / "studies" / name
    study.mkdir(parents=True, exist_ok=True)
    recipe = {"epochs": 1}
    m = {"schema": manifest_lib.SCHEMA, "schema_version": manifest_lib.VERSION, "name": name, "commit": commit,
         "modules": ["toy_kinds"], "recipe": recipe, "recipe_sha256": manifest_lib.recipe_sha256(recipe),
         "space": {}, "pool": [], "cells": list(cells), "claims": list(claims_)}
    (study / "manifest.json").write_text(json.dumps(m, indent=2))
    if commit_it:
        _git(repo, "add", "studies")
        _git(repo, "commit", "-q", "-m", "manifest", "--", "studies")
    return study


def study_cmd(tmp_path, *args):
    env = {**os.environ, "CAFE_TF_WORKTREES": str(tmp_path / "worktrees"), "PYTHONPATH": ROOT}
    return [sys.executable, "-m", "cafe_tf.study", *map(str, args)], env


def run_study(tmp_path, *args, check=True):
    cmd, env = study_cmd(tmp_path, *args)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_pinned_commit_status_and_commits(tmp_path):
    repo, commit = make_repo(tmp_path)
    cells = [{"id": "where", "kind": "toy_where"},
             {"id": "s1", "kind": "toy_step", "unit": "u"}, {"id": "s2", "kind": "toy_step", "unit": "u"},
             {"id": "s3", "kind": "toy_step", "unit": "u"}]
    study = write_manifest(repo, commit, cells)
    # The checkout moves on after the manifest: the cells must still run the pinned commit.
    (repo / "cafe_tf" / "later.py").write_text("X = 1\n")
    _git(repo, "add", "cafe_tf/later.py")
    _git(repo, "commit", "-q", "-m", "later")
    out = run_study(tmp_path, "run", study)
    assert "ran 4 cells; 0 planned cells not done" in out.stdout
    rec = ledger.read_record(str(study), "where")
    worktree = os.path.realpath(tmp_path / "worktrees" / commit)
    assert os.path.realpath(rec["result"]["cafe_tf_file"]).startswith(worktree + os.sep)
    assert rec["commit"] == commit and rec["manifest_sha256"] == manifest_lib.manifest_sha256(str(study))
    assert not os.path.exists(os.path.join(worktree, "cafe_tf", "later.py"))
    for key in ("cpu_seconds", "wall_seconds"):
        assert rec[key] >= 0
    assert rec["host"]["model"] and isinstance(rec["host"]["features"], list) and rec["host"]["load_start"]
    # The unit resumed its checkpoint, cell by cell; only the latest checkpoint is left and tracked.
    assert [ledger.read_record(str(study), c)["result"]["count"] for c in ("s1", "s2", "s3")] == [1, 2, 3]
    tracked = _git(repo, "ls-files", "studies").split()
    assert "studies/toy/checkpoints/u/s3/state.json" in tracked
    assert not any("/s1/" in p or "/s2/" in p for p in tracked)
    assert not os.path.exists(study / "checkpoints" / "u" / "s1")
    log = _git(repo, "log", "--format=%s")
    assert "study toy: cell where" in log and "study toy: cell s3" in log
    assert _git(repo, "status", "--porcelain", "studies") == ""  # every cell's files committed
    s = json.loads(run_study(tmp_path, "status", study, "--json").stdout)
    assert (s["planned"], s["done"]) == (4, 4)
    assert s["kinds"]["toy_step"]["planned"] == 3 and s["kinds"]["toy_step"]["done"] == 3
    assert s["kinds"]["toy_where"]["cpu_seconds"] == rec["cpu_seconds"]
    assert "ran 0 cells" in run_study(tmp_path, "run", study).stdout  # done cells are not re-run


def test_kill_minus_9_and_resume(tmp_path):
    repo, commit = make_repo(tmp_path)
    release = tmp_path / "release"
    cells = [{"id": "a", "kind": "toy_value", "params": {"value": 1.0}},
             {"id": "b", "kind": "toy_wait", "params": {"release": str(release), "timeout": 60}},
             {"id": "c", "kind": "toy_value", "params": {"value": 2.0}, "after": ["b"]}]
    study = write_manifest(repo, commit, cells)
    cmd, env = study_cmd(tmp_path, "run", study)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "cell b (toy_wait) starts" in line:
            break
    deadline = time.time() + 30
    while not (study / "artifacts" / "b" / "partial.txt").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (study / "artifacts" / "b" / "partial.txt").exists(), "".join(lines)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert ledger.read_record(str(study), "a") is not None
    assert not (study / "cells" / "b.json").exists()
    assert os.listdir(study / "cells") == ["a.json"]  # no half-written record, no temporary file
    a_started = ledger.read_record(str(study), "a")["started"]
    assert "study toy: cell a" in _git(repo, "log", "--format=%s")
    s = json.loads(run_study(tmp_path, "status", study, "--json").stdout)
    assert (s["planned"], s["done"], s["next"]) == (3, 1, ["b"])
    release.write_text("go")
    out = run_study(tmp_path, "run", study)
    assert "cell a " not in out.stdout and "ran 2 cells" in out.stdout
    assert ledger.read_record(str(study), "a")["started"] == a_started
    assert ledger.read_record(str(study), "c")["result"] == {"value": 2.0}


def test_summary_statistics_on_known_numbers(tmp_path):
    from scipy import stats as sps

    repo, commit = make_repo(tmp_path)
    a = [0.91, 0.90, 0.93, 0.92]
    b = [0.89, 0.90, 0.90, 0.88]
    x = [0.1, 0.4, 0.2, 0.8, 0.5]
    y = [1.0, 3.0, 2.0, 5.0, 6.0]
    cells = ([{"id": f"a{i}", "kind": "toy_value", "params": {"value": v}} for i, v in enumerate(a)]
             + [{"id": f"b{i}", "kind": "toy_value", "params": {"value": v}} for i, v in enumerate(b)]
             + [{"id": f"x{i}", "kind": "toy_value", "params": {"value": v}} for i, v in enumerate(x)]
             + [{"id": f"y{i}", "kind": "toy_value", "params": {"value": v}} for i, v in enumerate(y)])
    claim_list = [
        {"id": "diff", "statistic": "paired_difference", "rule": {"estimate_at_least": 0.01, "ci_low_above": 0.0},
         "pairs": [[f"a{i}:value", f"b{i}:value"] for i in range(4)]},
        {"id": "tau", "statistic": "kendall_tau", "pairs": [[f"x{i}:value", f"y{i}:value"] for i in range(5)]},
        {"id": "rho", "statistic": "spearman_rho", "rule": {"estimate_at_least": 0.5},
         "pairs": [[f"x{i}:value", f"y{i}:value"] for i in range(5)]},
    ]
    study = write_manifest(repo, commit, cells, claim_list)
    run_study(tmp_path, "run", study, "--cells", "a*")
    run_study(tmp_path, "run", study, "--cells", "b[01]")
    part = {c["id"]: c for c in claims.summary(str(study))["claims"]}
    assert part["diff"]["n"] == 2 and part["diff"]["decision"] == "pending"  # complete pairs only, not decided
    run_study(tmp_path, "run", study)
    got = {c["id"]: c for c in json.loads(run_study(tmp_path, "summary", study, "--json").stdout)["claims"]}
    d = np.subtract(a, b)
    half = sps.t.ppf(0.975, 3) * d.std(ddof=1) / 2.0
    assert got["diff"]["estimate"] == pytest.approx(0.0225)
    assert (got["diff"]["ci_low"], got["diff"]["ci_high"]) == (pytest.approx(0.0225 - half), pytest.approx(0.0225 + half))
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert got["diff"]["ci_low"] == pytest.approx(ci.low) and got["diff"]["ci_high"] == pytest.approx(ci.high)
    assert got["diff"]["n"] == 4 and got["diff"]["decision"] == ("pass" if ci.low > 0 else "fail")
    assert got["tau"]["estimate"] == pytest.approx(sps.kendalltau(x, y).statistic)
    assert got["tau"]["ci_low"] <= got["tau"]["estimate"] <= got["tau"]["ci_high"]
    assert got["tau"]["decision"] == "reported"
    assert got["rho"]["estimate"] == pytest.approx(sps.spearmanr(x, y).statistic) == pytest.approx(0.9)
    assert got["rho"]["decision"] == "pass"
    assert "diff" in run_study(tmp_path, "summary", study).stdout


def test_manifest_change_and_mixed_hashes_refused(tmp_path):
    repo, commit = make_repo(tmp_path)
    cells = [{"id": "a", "kind": "toy_value", "params": {"value": 1.0}},
             {"id": "b", "kind": "toy_value", "params": {"value": 2.0}}]
    study = write_manifest(repo, commit, cells)
    # An uncommitted edit is refused before anything runs.
    text = (study / "manifest.json").read_text()
    (study / "manifest.json").write_text(text.replace('"value": 2.0', '"value": 3.0'))
    out = run_study(tmp_path, "run", study, check=False)
    assert out.returncode == 2 and "differs from its committed version" in out.stderr
    assert not (study / "cells").exists()
    (study / "manifest.json").write_text(text)
    run_study(tmp_path, "run", study, "--cells", "a")
    (study / "manifest.json").write_text(text.replace('"value": 2.0', '"value": 3.0'))
    # A committed edit is refused too: the first cell ran under the old hash.
    _git(repo, "commit", "-q", "-m", "edit", "--", "studies/toy/manifest.json")
    out = run_study(tmp_path, "run", study, check=False)
    assert out.returncode == 2 and "the manifest changed after the first cell ran" in out.stderr
    assert not (study / "cells" / "b.json").exists()
    for sub in ("status", "summary"):
        assert run_study(tmp_path, sub, study, check=False).returncode == 2
    # Records of two manifests in one folder: summary and status refuse to mix them.
    (study / "manifest.json").write_text(text)
    rec = json.loads((study / "cells" / "a.json").read_text())
    rec.update(id="b", manifest_sha256="0" * 64)
    (study / "cells" / "b.json").write_text(json.dumps(rec))
    with pytest.raises(StudyError, match="2 different manifests"):
        claims.summary(str(study))
    with pytest.raises(StudyError, match="2 different manifests"):
        ledger.status(str(study))


def test_artifact_sha_checked_when_read(tmp_path):
    repo, commit = make_repo(tmp_path)
    cells = [{"id": "make", "kind": "toy_artifact", "params": {"text": "hello"}},
             {"id": "read", "kind": "toy_reader", "params": {"source": "make"}, "after": ["make"]},
             {"id": "read2", "kind": "toy_reader", "params": {"source": "make"}, "after": ["make"]}]
    study = write_manifest(repo, commit, cells)
    run_study(tmp_path, "run", study, "--cells", "rea[d]")  # dependency not done: nothing runs
    assert not (study / "cells" / "read.json").exists()
    run_study(tmp_path, "run", study, "--cells", "make")
    run_study(tmp_path, "run", study, "--cells", "read")
    rec = ledger.read_record(str(study), "make")
    assert rec["artifacts"]["data.txt"]["path"] == os.path.join("artifacts", "make", "data.txt")
    assert ledger.read_record(str(study), "read")["result"] == {"text": "hello"}
    assert "studies/toy/artifacts/make/data.txt" in _git(repo, "ls-files", "studies")
    (study / "artifacts" / "make" / "data.txt").write_text("tampered")
    out = run_study(tmp_path, "run", study, check=False)
    assert out.returncode == 1 and "changed after the cell ran" in out.stdout + out.stderr
    assert not (study / "cells" / "read2.json").exists()


def test_manifest_validation_names_the_problem(tmp_path):
    repo, commit = make_repo(tmp_path)
    study = write_manifest(repo, commit, [{"id": "a", "kind": "toy_value", "after": ["b"]},
                                          {"id": "b", "kind": "toy_value", "after": ["a"]}], commit_it=False)
    with pytest.raises(Exception, match="cycle"):
        manifest_lib.load(str(study))
    study = write_manifest(repo, commit, [{"id": "a", "kind": "toy_value", "after": ["zz"]}], commit_it=False)
    with pytest.raises(Exception, match="unknown cells"):
        manifest_lib.load(str(study))
    out = run_study(tmp_path, "run", study, check=False)
    assert out.returncode == 2 and "unknown cells" in out.stderr


def test_ranking_statistics_on_known_numbers():
    from scipy import stats as sps

    score = [0.90, 0.80, 0.85, 0.70, 0.95, 0.60]
    truth = [0.91, 0.89, 0.80, 0.85, 0.88, 0.70]
    recs = {f"s{i}": {"result": {"v": v}} for i, v in enumerate(score)}
    recs.update({f"t{i}": {"result": {"v": v}} for i, v in enumerate(truth)})
    pairs = [[f"s{i}:v", f"t{i}:v"] for i in range(6)]

    def ev(statistic, **kw):
        return claims.evaluate({"id": statistic, "statistic": statistic, "pairs": pairs, **kw}, recs)

    top = [0, 1, 4]  # the top half by truth: 0.91, 0.89, 0.88
    got = ev("kendall_tau_top_half")
    assert got["estimate"] == pytest.approx(sps.kendalltau([score[i] for i in top], [truth[i] for i in top]).statistic)
    assert got["n"] == 6 and got["ci_low"] <= got["ci_high"]
    # Best 2 by score: items 4, 0; by truth: 0, 1 -> one shared of two.
    assert ev("top_k_overlap", k=2)["estimate"] == pytest.approx(0.5)
    # The best-scored item (4) has truth 0.88; the best truth is 0.91.
    assert ev("regret")["estimate"] == pytest.approx(0.03)
    d = claims.evaluate({"id": "d", "statistic": "kendall_tau_difference",
                         "triples": [[f"t{i}:v", f"s{i}:v", f"t{i}:v"] for i in range(6)]}, recs)
    assert d["estimate"] == pytest.approx(1.0 - sps.kendalltau(score, truth).statistic)
    with pytest.raises(ValueError, match="unknown statistic"):
        claims.evaluate({"id": "x", "statistic": "median", "pairs": pairs}, recs)
    with pytest.raises(ValueError, match="rule keys"):
        claims.evaluate({"id": "x", "statistic": "regret", "pairs": pairs, "rule": {"at_least": 1}}, recs)
