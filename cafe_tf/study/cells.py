"""The registry of study cell kinds, and what a cell sees while it runs (:class:`CellContext`).

A cell kind is a function ``fn(params: dict, ctx: CellContext) -> dict``: it reads its inputs
(artifacts and results of cells it depends on, a checkpoint of its unit), does at most about 30
minutes of work on 2 cores, writes the files later cells need under :meth:`CellContext.artifact_path`
(and, inside a multi-cell unit, its next checkpoint under :meth:`CellContext.checkpoint_path`), and
returns its result as a JSON-able dict. The runner records that result, every file's SHA-256, the
CPU and wall seconds and the host in one cell record, written atomically once the function returns::

    from cafe_tf.study import cells

    @cells.register("toy_square")
    def toy_square(params, ctx):
        return {"value": params["x"] ** 2}

A study's manifest lists the modules that register its kinds (``"modules"``); the cell process
imports them from the manifest's pinned commit before it looks a kind up.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cafe_tf import io

CellFn = Callable[[dict, "CellContext"], dict]

_KINDS: dict[str, CellFn] = {}


def register(kind: str) -> Callable[[CellFn], CellFn]:
    """Decorator: registers ``fn(params, ctx) -> dict`` as the cell kind ``kind``.

    Args:
      kind: the name manifests use in a cell's ``"kind"``; letters, digits and ``_``.

    Returns:
      The decorator, which returns the function unchanged.

    Raises:
      ValueError: ``kind`` is not a valid name, or another function already has it.
    """
    if not kind or not kind.replace("_", "").isalnum():
        raise ValueError(f"cell kind {kind!r} must be a non-empty name of letters, digits and '_'")

    def decorate(fn: CellFn) -> CellFn:
        known = _KINDS.get(kind)
        if known is not None and (known.__module__, known.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"cell kind {kind!r} is already registered by {known.__module__}.{known.__qualname__}")
        _KINDS[kind] = fn
        return fn

    return decorate


def kinds() -> list[str]:
    """Names of the registered cell kinds, sorted."""
    return sorted(_KINDS)


def load_modules(modules: Sequence[str]) -> None:
    """Imports the modules that register a study's cell kinds (the manifest's ``"modules"``)."""
    for name in modules:
        importlib.import_module(name)


def get(kind: str) -> CellFn:
    """The function of cell kind ``kind``.

    Raises:
      KeyError: naming the kind and the registered ones.
    """
    if kind not in _KINDS:
        raise KeyError(f"unknown cell kind {kind!r}; registered kinds: {kinds()} (is its module in the "
                       "manifest's \"modules\"?)")
    return _KINDS[kind]


@dataclasses.dataclass
class CellContext:
    """What a running cell may read and where it writes.

    Attributes:
      study_dir: the study folder (``benchmarks/studies/<name>``), absolute.
      cell_id: this cell's id.
      manifest: the study's manifest (read only).
      records: the cell records of the cells this one depends on, by id (read only).
      scratch_dir: a private folder, empty at the start, deleted after the cell; nothing in it survives.
      artifact_dir: ``<study>/artifacts/<cell_id>/``; every file written here is recorded with its
        SHA-256 and committed with the cell record.
      checkpoint_dir: ``<study>/checkpoints/<unit>/<cell_id>/`` for a cell of a multi-cell unit
        (``None`` otherwise); what is written here is the unit's next checkpoint, committed with the
        cell; the previous cell's checkpoint is removed in the same commit.
      resume_dir: the previous cell of the unit's checkpoint folder, its files verified against that
        cell's record (``None`` for a unit's first cell or a cell outside a unit).
    """

    study_dir: str
    cell_id: str
    manifest: Mapping[str, Any]
    records: Mapping[str, Mapping[str, Any]]
    scratch_dir: str
    artifact_dir: str
    checkpoint_dir: str | None = None
    resume_dir: str | None = None

    def artifact_path(self, name: str) -> str:
        """Where this cell writes its artifact ``name`` (a file name, no folders); write it atomically."""
        _check_name(name)
        os.makedirs(self.artifact_dir, exist_ok=True)
        return os.path.join(self.artifact_dir, name)

    def checkpoint_path(self, name: str) -> str:
        """Where this cell writes the file ``name`` of its unit's next checkpoint.

        Raises:
          ValueError: the cell is not part of a multi-cell unit (its manifest entry has no ``"unit"``).
        """
        _check_name(name)
        if self.checkpoint_dir is None:
            raise ValueError(f"cell {self.cell_id!r} has no \"unit\" in the manifest, so it has no checkpoint")
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        return os.path.join(self.checkpoint_dir, name)

    def resume_path(self, name: str) -> str | None:
        """The previous cell's checkpoint file ``name`` (SHA-256 verified), or None for a unit's first cell.

        Raises:
          cafe_tf.io.ArtifactError: the file is not in the previous cell's record, or its bytes changed.
        """
        if self.resume_dir is None:
            return None
        from cafe_tf.study import ledger

        unit_prev = self.manifest_cell()["_previous"]
        return ledger.verified_file(self.study_dir, self.records[unit_prev], "checkpoint", name)

    def input(self, cell_id: str, name: str) -> str:
        """The path of artifact ``name`` of the done cell ``cell_id`` (a dependency), SHA-256 verified.

        Raises:
          KeyError: ``cell_id`` is not a dependency of this cell.
          cafe_tf.io.ArtifactError: the artifact is missing from the record, or its bytes changed.
        """
        from cafe_tf.study import ledger

        return ledger.verified_file(self.study_dir, self.record(cell_id), "artifacts", name)

    def result(self, cell_id: str) -> dict:
        """The result of the done cell ``cell_id`` (a dependency)."""
        return dict(self.record(cell_id)["result"])

    def record(self, cell_id: str) -> Mapping[str, Any]:
        """The cell record of the dependency ``cell_id``.

        Raises:
          KeyError: ``cell_id`` is not among this cell's dependencies (``"after"`` in the manifest).
        """
        if cell_id not in self.records:
            raise KeyError(f"cell {self.cell_id!r} may read only the cells it runs after: {sorted(self.records)}; "
                           f"got {cell_id!r} (add it to \"after\" in the manifest)")
        return self.records[cell_id]

    def manifest_cell(self) -> dict:
        """This cell's manifest entry, with ``"_previous"`` (the unit's previous cell id, or None)."""
        from cafe_tf.study import manifest as manifest_lib

        return manifest_lib.cell_table(self.manifest)[self.cell_id]


def _check_name(name: str) -> None:
    if not name or os.path.basename(name) != name or name.startswith("."):
        raise ValueError(f"file name {name!r} must be a plain name without folders, not starting with '.'")


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON atomically (a cell's own artifact or checkpoint metadata)."""
    io.write_json(path, obj)
