"""Preregistered studies that run in resumable cells: ``python -m cafe_tf.study run|status|summary DIR``.

A study is a folder ``benchmarks/studies/<name>/`` whose ``manifest.json`` (the plan: code commit,
recipe and its hash, search space, pool of nets, every planned cell, the claims with their decision
rules) is committed before the first cell runs and never changes. Each cell (at most about 30
minutes on 2 cores) runs the manifest's commit from a git worktree and writes one record,
atomically; the runner commits each cell's files as it finishes, so the repository alone carries a
study from one machine or run to the next.

* :mod:`cafe_tf.study.cells`: the registry of cell kinds (``register``) and :class:`CellContext`.
* :mod:`cafe_tf.study.manifest`: the manifest's schema, hash and cell order.
* :mod:`cafe_tf.study.runner`: ``run`` (worktree, one process per cell, commits) and ``run_cell``.
* :mod:`cafe_tf.study.ledger`: the cell records, verified artifacts, ``status``.
* :mod:`cafe_tf.study.claims`: the claims' statistics and decisions, ``summary``.
"""

from cafe_tf.study.cells import CellContext, register
from cafe_tf.study.claims import summary
from cafe_tf.study.ledger import status
from cafe_tf.study.manifest import StudyError, recipe_sha256
from cafe_tf.study.runner import run, run_cell

__all__ = ["CellContext", "StudyError", "recipe_sha256", "register", "run", "run_cell", "status", "summary"]
