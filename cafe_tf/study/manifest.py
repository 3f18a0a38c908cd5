"""A study's ``manifest.json``: the plan, fixed before the first cell runs.

Schema (``"schema": "cafe_tf.study_manifest"``, version 1)::

    {
      "name": "cafenet_pilot",
      "commit": "<40 hex digits>",          # the code every cell runs (from a git worktree)
      "modules": ["cafe_tf.study.cafenet"],  # import these to register the cell kinds
      "recipe": {...}, "recipe_sha256": "<sha256 of the recipe's canonical JSON>",
      "space": {...}, "pool": [{"id": ..., "widths": [...]}, ...],
      "cells": [{"id": "a", "kind": "k", "params": {...}, "after": ["b"], "unit": "u"}, ...],
      "claims": [{"id": ..., "statistic": ..., "pairs": [...], "rule": {...}}, ...],
      ...                                    # anything else the study wants fixed (selection rules)
    }

``after`` lists the cells whose results or artifacts a cell reads; cells sharing a ``unit`` form one
longer job (a 10-epoch supernet) that runs in manifest order, each resuming the previous one's
checkpoint (the previous cell is added to ``after`` implicitly). The manifest's hash is the SHA-256
of the file's bytes; every cell record carries it, and the runner refuses a manifest whose hash
differs from the records already made.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from cafe_tf import io

SCHEMA = "cafe_tf.study_manifest"
VERSION = 1
REQUIRED = ("name", "commit", "modules", "recipe", "recipe_sha256", "cells", "claims")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class StudyError(ValueError):
    """A study folder, manifest or ledger that the runner refuses, with what is wrong and what is valid."""


def recipe_sha256(recipe: Any) -> str:
    """SHA-256 of ``recipe`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_path(study_dir: str) -> str:
    return os.path.join(study_dir, "manifest.json")


def manifest_sha256(study_dir: str) -> str:
    """SHA-256 of the study's ``manifest.json`` bytes."""
    return io.file_sha256(manifest_path(study_dir))


def _validate(m: dict) -> None:
    if not re.fullmatch(r"[0-9a-f]{40}", str(m["commit"])):
        raise ValueError(f"commit {m['commit']!r} must be a full 40-hex-digit git commit")
    if recipe_sha256(m["recipe"]) != m["recipe_sha256"]:
        raise ValueError(f"recipe_sha256 {m['recipe_sha256']!r} does not match the recipe "
                         f"({recipe_sha256(m['recipe'])})")
    if not isinstance(m["modules"], list) or not all(isinstance(x, str) for x in m["modules"]):
        raise ValueError(f"modules must be a list of module names, got {m['modules']!r}")
    cell_table(m)  # ids, kinds, dependencies, cycles
    ids = [c.get("id") for c in m["claims"]]
    if len(set(ids)) != len(ids) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"claim ids must be unique strings, got {ids}")


def load(study_dir: str) -> dict[str, Any]:
    """Reads and validates ``<study_dir>/manifest.json``.

    Raises:
      cafe_tf.io.ArtifactError: the file is missing, not JSON, of another schema, or invalid (names what).
    """
    return io.read_artifact(manifest_path(study_dir), SCHEMA, (VERSION,), REQUIRED, _validate)


def cell_table(m: dict) -> dict[str, dict]:
    """``{cell id: entry}`` in manifest order, each entry with ``"after"`` completed and ``"_previous"``.

    Raises:
      ValueError: a duplicate or malformed id, a cell without ``kind``, an unknown dependency, a cycle.
    """
    table: dict[str, dict] = {}
    last_of_unit: dict[str, str] = {}
    for raw in m["cells"]:
        cid = raw.get("id")
        if not isinstance(cid, str) or not _ID.match(cid):
            raise ValueError(f"cell id {cid!r} must match {_ID.pattern}")
        if cid in table:
            raise ValueError(f"cell id {cid!r} appears twice")
        if not isinstance(raw.get("kind"), str):
            raise ValueError(f"cell {cid!r} needs a \"kind\" (a registered cell kind name)")
        entry = {"params": {}, "after": [], "unit": None, **raw}
        entry["after"] = list(entry["after"])
        unit = entry["unit"]
        entry["_previous"] = last_of_unit.get(unit) if unit else None
        if entry["_previous"] and entry["_previous"] not in entry["after"]:
            entry["after"].append(entry["_previous"])
        if unit:
            last_of_unit[unit] = cid
        table[cid] = entry
    for cid, entry in table.items():
        unknown = [d for d in entry["after"] if d not in table]
        if unknown:
            raise ValueError(f"cell {cid!r} runs after unknown cells {unknown}")
    order(table)
    return table


def order(table: dict[str, dict]) -> list[str]:
    """Cell ids in dependency order (manifest order where free).

    Raises:
      ValueError: the dependencies have a cycle (names the cells on it).
    """
    out: list[str] = []
    state: dict[str, int] = {}

    def visit(cid: str, path: list[str]) -> None:
        if state.get(cid) == 2:
            return
        if state.get(cid) == 1:
            raise ValueError(f"cells depend on each other in a cycle: {' -> '.join(path + [cid])}")
        state[cid] = 1
        for dep in table[cid]["after"]:
            visit(dep, path + [cid])
        state[cid] = 2
        out.append(cid)

    for cid in table:
        visit(cid, [])
    return out
