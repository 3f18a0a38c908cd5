"""Running a study's cells: pinned code from a git worktree, one process per cell, one commit per cell.

:func:`run` takes the planned cells that are not done, in dependency order, and runs each in its own
process (``<python> -m cafe_tf.study _cell DIR ID``) whose working directory and ``PYTHONPATH`` are a
git worktree of the manifest's commit, so the cell imports the pinned code, not the checkout's. The
cell process writes its record last and atomically (:func:`run_cell`), so a cell killed at any
moment leaves no record and runs again next time; its partial artifacts are cleared when it restarts.
After each cell the runner commits that cell's files only (record, artifacts, the unit's new
checkpoint, and the removal of the previous checkpoint). The cell process dies with the runner
(``PR_SET_PDEATHSIG``), so a killed runner leaves nothing running.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import fnmatch
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from cafe_tf import io
from cafe_tf.study import cells as cells_lib
from cafe_tf.study import ledger
from cafe_tf.study import manifest as manifest_lib
from cafe_tf.study.manifest import StudyError

WORKTREES_ENV = "CAFE_TF_WORKTREES"
DEFAULT_WORKTREES = os.path.join(tempfile.gettempdir(), "cafe_tf_worktrees")


# -------------------------------------------------------------------------------------------------
# git


def git(repo: str, *args: str, check: bool = True, retries: int = 60) -> subprocess.CompletedProcess:
    """Runs ``git -C repo *args``; retries while another git process holds ``index.lock``.

    Raises:
      StudyError: git failed (its stderr is in the message).
    """
    for attempt in range(retries + 1):
        proc = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)
        if proc.returncode == 0 or not check:
            return proc
        if "index.lock" in proc.stderr and attempt < retries:
            time.sleep(1.0)
            continue
        raise StudyError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip() or proc.stdout.strip()}")
    raise AssertionError("unreachable")


def repo_root(path: str) -> str:
    """The top folder of the git checkout holding ``path``."""
    return git(path, "rev-parse", "--show-toplevel").stdout.strip()


def ensure_worktree(repo: str, commit: str, base: str | None = None) -> str:
    """A detached git worktree of ``commit`` (created if missing), e.g. ``/tmp/cafe_tf_worktrees/<commit>``.

    Raises:
      StudyError: ``commit`` is not in the repository, or the worktree cannot be made.
    """
    base = base or os.environ.get(WORKTREES_ENV) or DEFAULT_WORKTREES
    path = os.path.join(base, commit)
    if os.path.isdir(path):
        head = git(path, "rev-parse", "HEAD", check=False).stdout.strip()
        if head == commit:
            return path
        shutil.rmtree(path)
    if git(repo, "cat-file", "-e", commit + "^{commit}", check=False).returncode != 0:
        raise StudyError(f"the manifest's commit {commit} is not in {repo}; fetch it or fix the manifest")
    os.makedirs(base, exist_ok=True)
    git(repo, "worktree", "prune")
    git(repo, "worktree", "add", "--detach", path, commit)
    return path


def _tracked(repo: str, paths: list[str]) -> list[str]:
    if not paths:
        return []
    out = git(repo, "ls-files", "--", *paths).stdout.split()
    return [os.path.join(repo, p) for p in out]


def commit_files(repo: str, added: list[str], removed: list[str], message: str) -> bool:
    """Commits exactly ``added`` (present files) and the removal of ``removed`` (tracked, deleted files).

    Returns:
      Whether a commit was made (False when nothing changed).
    """
    rel_added = [os.path.relpath(p, repo) for p in added]
    rel_removed = [os.path.relpath(p, repo) for p in removed]
    if rel_added:
        git(repo, "add", "--", *rel_added)
    if rel_removed:
        git(repo, "rm", "-q", "--cached", "--ignore-unmatch", "--", *rel_removed)
    paths = rel_added + rel_removed
    if not paths or not git(repo, "status", "--porcelain", "--", *paths).stdout.strip():
        return False
    git(repo, "commit", "-q", "-m", message, "--", *paths)
    return True


# -------------------------------------------------------------------------------------------------
# The cell process


def _cpu_info() -> dict[str, Any]:
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "fma")
    return {"model": model, "features": [f for f in wanted if f in flags], "cores": os.cpu_count()}


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_cell(study_dir: str, cell_id: str, manifest_sha256: str | None = None) -> dict[str, Any]:
    """Runs one cell in this process and writes its record (the body of ``_cell``).

    Args:
      study_dir: the study folder.
      cell_id: a planned cell whose dependencies are done.
      manifest_sha256: the manifest hash the runner checked; the cell refuses a different one.

    Returns:
      The cell record written to ``cells/<cell_id>.json``.

    Raises:
      StudyError: an unknown cell, a dependency not done, or a manifest hash other than expected.
    """
    import cafe_tf

    t_wall, t_cpu = time.time(), os.times()
    study_dir = os.path.abspath(study_dir)
    m = manifest_lib.load(study_dir)
    sha = manifest_lib.manifest_sha256(study_dir)
    if manifest_sha256 is not None and sha != manifest_sha256:
        raise StudyError(f"manifest SHA-256 is {sha[:12]}, the runner checked {manifest_sha256[:12]}")
    table = manifest_lib.cell_table(m)
    if cell_id not in table:
        raise StudyError(f"cell {cell_id!r} is not planned in {study_dir}; planned: {list(table)[:10]} ...")
    entry = table[cell_id]
    deps = {}
    for dep in entry["after"]:
        rec = ledger.read_record(study_dir, dep)
        if rec is None:
            raise StudyError(f"cell {cell_id!r} runs after {dep!r}, which is not done")
        deps[dep] = rec
    ledger.check_hashes(study_dir, deps, sha)
    cells_lib.load_modules(m["modules"])
    fn = cells_lib.get(entry["kind"])

    art = ledger.artifact_dir(study_dir, cell_id)
    shutil.rmtree(art, ignore_errors=True)  # what a killed run of this cell left
    ckpt = ledger.checkpoint_dir(study_dir, entry["unit"], cell_id) if entry["unit"] else None
    if ckpt:
        shutil.rmtree(ckpt, ignore_errors=True)
    prev = entry["_previous"]
    resume = os.path.join(study_dir, "checkpoints", entry["unit"], prev) if prev else None
    load_start, started = _load(), _now()
    scratch = tempfile.mkdtemp(prefix=f"cafe_tf_cell_{cell_id}_")
    try:
        ctx = cells_lib.CellContext(study_dir=study_dir, cell_id=cell_id, manifest=m, records=deps,
                                    scratch_dir=scratch, artifact_dir=art, checkpoint_dir=ckpt, resume_dir=resume)
        result = fn(dict(entry["params"]), ctx)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not isinstance(result, dict):
        raise StudyError(f"cell kind {entry['kind']!r} returned {type(result).__name__}; it must return a dict")
    t_end = os.times()
    head = git(os.path.dirname(os.path.dirname(os.path.abspath(cafe_tf.__file__))), "rev-parse", "HEAD",
               check=False).stdout.strip()
    record = {
        "id": cell_id, "kind": entry["kind"], "params": entry["params"], "unit": entry["unit"],
        "manifest_sha256": sha, "commit": head or m["commit"], "code_path": os.path.dirname(cafe_tf.__file__),
        "result": result,
        "artifacts": ledger.file_entries(study_dir, art), "checkpoint": ledger.file_entries(study_dir, ckpt),
        "cpu_seconds": round((t_end.user - t_cpu.user) + (t_end.system - t_cpu.system), 2),
        "wall_seconds": round(time.time() - t_wall, 2),
        "host": {**_cpu_info(), "load_start": load_start, "load_end": _load()},
        "started": started, "finished": _now(),
    }
    io.write_artifact(ledger.cell_path(study_dir, cell_id), ledger.CELL_SCHEMA, ledger.CELL_VERSION, record)
    return record


# -------------------------------------------------------------------------------------------------
# The runner


@contextlib.contextmanager
def _lock(repo: str, name: str) -> Iterator[None]:
    common = git(repo, "rev-parse", "--git-common-dir").stdout.strip()
    path = os.path.join(repo, common, f"cafe_tf_study_{name}.lock")
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(f"another `study run` of {name!r} holds {path}; wait for it or stop it") from None
        yield


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def cell_files(study_dir: str, record: dict[str, Any]) -> list[str]:
    """The files a done cell adds to the repository: its record, artifacts and checkpoint."""
    files = [ledger.cell_path(study_dir, record["id"])]
    for section in ("artifacts", "checkpoint"):
        files += [os.path.join(study_dir, e["path"]) for e in record[section].values()]
    return files


def _finish_cell(repo: str, study_dir: str, name: str, record: dict[str, Any], table: dict, commit: bool) -> None:
    entry = table[record["id"]]
    removed = []
    if entry["_previous"]:
        old = os.path.join(study_dir, "checkpoints", entry["unit"], entry["_previous"])
        if os.path.isdir(old):
            removed = _tracked(repo, [old]) if commit else []
            shutil.rmtree(old)
    if commit:
        commit_files(repo, cell_files(study_dir, record), removed, f"study {name}: cell {record['id']}")


def run(study_dir: str, cells: str | None = None, max_minutes: float | None = None, commit: bool = True,
        python: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the planned cells that are not done, in dependency order, each committed as it finishes.

    Args:
      study_dir: the study folder (its ``manifest.json`` committed, unless ``commit`` is False).
      cells: an ``fnmatch`` pattern of cell ids to run (cells outside it, and cells whose
        dependencies are not done, are left for later); None runs every cell.
      max_minutes: start no cell after this many minutes (a running cell finishes).
      commit: commit each cell's files (``git commit -- <files>``); False leaves them uncommitted.
      python: the interpreter of the cell processes (default: this one, the repository's venv).
      log: where progress lines go.

    Returns:
      ``{"ran": [ids], "failed": id or None, "left": number of planned cells not done}``.

    Raises:
      StudyError: the manifest is uncommitted or changed since the first cell, records of mixed
        hashes, another runner holds the study, or the pinned commit is missing.
    """
    study_dir = os.path.abspath(study_dir)
    m = manifest_lib.load(study_dir)
    sha = manifest_lib.manifest_sha256(study_dir)
    table = manifest_lib.cell_table(m)
    recs = ledger.records(study_dir)
    ledger.check_hashes(study_dir, recs, sha)
    repo = repo_root(study_dir)
    mpath = os.path.relpath(manifest_lib.manifest_path(study_dir), repo)
    if commit:
        if git(repo, "ls-files", "--error-unmatch", "--", mpath, check=False).returncode != 0:
            raise StudyError(f"{mpath} is not committed; commit the manifest before its first cell runs")
        if git(repo, "diff", "--quiet", "HEAD", "--", mpath, check=False).returncode != 0:
            raise StudyError(f"{mpath} differs from its committed version; a manifest never changes once committed")
    deadline = None if max_minutes is None else time.time() + 60.0 * max_minutes
    ran: list[str] = []
    with _lock(repo, m["name"]):
        if commit:  # records written by a runner killed before its commit
            for cid, rec in recs.items():
                if git(repo, "status", "--porcelain", "--", ledger.cell_path(study_dir, cid)).stdout.strip():
                    _finish_cell(repo, study_dir, m["name"], rec, table, commit)
        worktree = ensure_worktree(repo, m["commit"])
        env = {**os.environ, "PYTHONPATH": worktree}
        failed = None
        while True:
            done = set(ledger.records(study_dir))
            todo = [cid for cid in manifest_lib.order(table) if cid not in done
                    and (cells is None or fnmatch.fnmatchcase(cid, cells))
                    and all(d in done for d in table[cid]["after"])]
            if not todo:
                break
            if deadline is not None and time.time() >= deadline:
                log(f"study {m['name']}: --max_minutes={max_minutes} reached; {len(todo)} ready cells left")
                break
            cid = todo[0]
            log(f"study {m['name']}: cell {cid} ({table[cid]['kind']}) starts")
            proc = subprocess.Popen([python or sys.executable, "-m", "cafe_tf.study", "_cell", study_dir, cid,
                                     "--manifest_sha256", sha], cwd=worktree, env=env, preexec_fn=_die_with_parent)
            try:
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            rec = ledger.read_record(study_dir, cid)
            if rc != 0 or rec is None:
                log(f"study {m['name']}: cell {cid} failed (exit code {rc}); nothing recorded, it runs again next time")
                failed = cid
                break
            _finish_cell(repo, study_dir, m["name"], rec, table, commit)
            ran.append(cid)
            log(f"study {m['name']}: cell {cid} done in {rec['wall_seconds']:.0f} s wall, "
                f"{rec['cpu_seconds']:.0f} s CPU" + (" (committed)" if commit else ""))
    left = len(table) - len(set(ledger.records(study_dir)) & set(table))
    return {"ran": ran, "failed": failed, "left": left}
