"""The ledger of a study: one cell record per done cell, and what ``status`` reports from it.

Layout of a study folder::

    manifest.json
    cells/<cell id>.json                      one record per done cell (written last, atomically)
    artifacts/<cell id>/<name>                files later cells read (SHA-256 in the record)
    checkpoints/<unit>/<cell id>/<name>       the latest checkpoint of a multi-cell unit

A cell record (``"schema": "cafe_tf.study_cell"``, version 1) holds ``id``, ``kind``, ``params``,
``manifest_sha256``, ``commit``, ``result``, ``artifacts`` and ``checkpoint`` (``{name: {"path",
"sha256", "bytes"}}``, paths relative to the study folder), ``cpu_seconds``, ``wall_seconds``,
``host`` (CPU model, features, cores, load average at start and end) and ``started`` / ``finished``
(UTC, ISO 8601).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from typing import Any

from cafe_tf import io
from cafe_tf.study import manifest as manifest_lib
from cafe_tf.study.manifest import StudyError

CELL_SCHEMA = "cafe_tf.study_cell"
CELL_VERSION = 1
CELL_REQUIRED = ("id", "kind", "manifest_sha256", "commit", "result", "artifacts", "checkpoint",
                 "cpu_seconds", "wall_seconds", "host")


def cell_path(study_dir: str, cell_id: str) -> str:
    return os.path.join(study_dir, "cells", cell_id + ".json")


def artifact_dir(study_dir: str, cell_id: str) -> str:
    return os.path.join(study_dir, "artifacts", cell_id)


def checkpoint_dir(study_dir: str, unit: str, cell_id: str) -> str:
    return os.path.join(study_dir, "checkpoints", unit, cell_id)


def read_record(study_dir: str, cell_id: str) -> dict[str, Any] | None:
    """The record of ``cell_id``, or None if the cell is not done."""
    path = cell_path(study_dir, cell_id)
    if not os.path.exists(path):
        return None
    return io.read_artifact(path, CELL_SCHEMA, (CELL_VERSION,), CELL_REQUIRED)


def records(study_dir: str) -> dict[str, dict[str, Any]]:
    """Every cell record in the study folder, by id (planned or not)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(study_dir, "cells", "*.json"))):
        cid = os.path.basename(path)[: -len(".json")]
        out[cid] = read_record(study_dir, cid)
    return out


def check_hashes(study_dir: str, recs: Mapping[str, Mapping[str, Any]], manifest_sha: str | None = None) -> str:
    """The one manifest hash of ``recs`` (and of the manifest, when given).

    Raises:
      StudyError: records of different manifest hashes, or records made under another manifest.
    """
    hashes = {r["manifest_sha256"] for r in recs.values()}
    if len(hashes) > 1:
        by_hash: dict[str, list[str]] = {}
        for cid, r in recs.items():
            by_hash.setdefault(r["manifest_sha256"], []).append(cid)
        detail = "; ".join(f"{h[:12]}: {sorted(c)[:5]}" for h, c in by_hash.items())
        raise StudyError(f"{study_dir}: cell records were made under {len(hashes)} different manifests ({detail}); "
                         "a study's cells must all come from one manifest")
    if manifest_sha is not None and hashes and hashes != {manifest_sha}:
        raise StudyError(f"{manifest_lib.manifest_path(study_dir)} has SHA-256 {manifest_sha[:12]}, but its "
                         f"{len(recs)} done cells were made under {next(iter(hashes))[:12]}: the manifest changed "
                         "after the first cell ran. Restore it (git checkout the committed manifest) or start a "
                         "new study folder")
    return next(iter(hashes)) if hashes else (manifest_sha or "")


def verified_file(study_dir: str, record: Mapping[str, Any], section: str, name: str) -> str:
    """The absolute path of file ``name`` in ``record[section]`` after checking its SHA-256.

    Raises:
      cafe_tf.io.ArtifactError: the record has no such file, the file is missing, or its bytes changed.
    """
    files = record.get(section) or {}
    if name not in files:
        raise io.ArtifactError(f"cell {record['id']!r} recorded no {section} file {name!r}; it has {sorted(files)}")
    entry = files[name]
    path = os.path.join(study_dir, entry["path"])
    if not os.path.isfile(path):
        raise io.ArtifactError(f"{section} file {path!r} of cell {record['id']!r} is missing")
    got = io.file_sha256(path)
    if got != entry["sha256"]:
        raise io.ArtifactError(f"{section} file {path!r} of cell {record['id']!r} has SHA-256 {got[:12]}, "
                               f"recorded {entry['sha256'][:12]}: it changed after the cell ran")
    return path


def file_entries(study_dir: str, folder: str | None) -> dict[str, dict[str, Any]]:
    """``{name: {"path", "sha256", "bytes"}}`` of the plain files directly in ``folder``."""
    if folder is None or not os.path.isdir(folder):
        return {}
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        out[name] = {"path": os.path.relpath(path, study_dir), "sha256": io.file_sha256(path),
                     "bytes": os.path.getsize(path)}
    return out


def status(study_dir: str) -> dict[str, Any]:
    """Planned and done cells, and CPU time, per cell kind.

    Returns:
      ``{"name", "manifest_sha256", "commit", "planned", "done", "cpu_seconds", "wall_seconds",
      "kinds": {kind: {"planned", "done", "cpu_seconds", "wall_seconds"}}, "next": [ids of cells
      ready to run], "unplanned": [ids of records the manifest does not plan]}``.

    Raises:
      StudyError: records of mixed manifest hashes, or of a manifest other than the present one.
    """
    m = manifest_lib.load(study_dir)
    sha = manifest_lib.manifest_sha256(study_dir)
    table = manifest_lib.cell_table(m)
    recs = records(study_dir)
    check_hashes(study_dir, recs, sha)
    kinds: dict[str, dict[str, float]] = {}
    for cid, entry in table.items():
        k = kinds.setdefault(entry["kind"], {"planned": 0, "done": 0, "cpu_seconds": 0.0, "wall_seconds": 0.0})
        k["planned"] += 1
        if cid in recs:
            k["done"] += 1
            k["cpu_seconds"] += float(recs[cid]["cpu_seconds"])
            k["wall_seconds"] += float(recs[cid]["wall_seconds"])
    ready = [cid for cid in manifest_lib.order(table)
             if cid not in recs and all(d in recs for d in table[cid]["after"])]
    return {
        "name": m["name"], "manifest_sha256": sha, "commit": m["commit"],
        "planned": len(table), "done": sum(1 for c in table if c in recs),
        "cpu_seconds": sum(k["cpu_seconds"] for k in kinds.values()),
        "wall_seconds": sum(k["wall_seconds"] for k in kinds.values()),
        "kinds": kinds, "next": ready, "unplanned": sorted(c for c in recs if c not in table),
    }


def render_status(s: Mapping[str, Any]) -> str:
    """``status`` as a table."""
    lines = [f"study {s['name']}  manifest {s['manifest_sha256'][:12]}  commit {s['commit'][:12]}",
             f"{'kind':<28} {'done':>6} {'planned':>8} {'CPU h':>8} {'wall h':>8}"]
    for kind, k in s["kinds"].items():
        lines.append(f"{kind:<28} {k['done']:>6} {k['planned']:>8} {k['cpu_seconds'] / 3600:>8.2f} "
                     f"{k['wall_seconds'] / 3600:>8.2f}")
    lines.append(f"{'total':<28} {s['done']:>6} {s['planned']:>8} {s['cpu_seconds'] / 3600:>8.2f} "
                 f"{s['wall_seconds'] / 3600:>8.2f}")
    if s["next"]:
        lines.append(f"ready to run: {', '.join(s['next'][:8])}" + (" ..." if len(s["next"]) > 8 else ""))
    if s["unplanned"]:
        lines.append(f"records the manifest does not plan: {', '.join(s['unplanned'])}")
    return "\n".join(lines) + "\n"
