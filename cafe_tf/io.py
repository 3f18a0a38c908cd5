"""Atomic file writes and versioned JSON artifacts.

Every artifact cafe-tf writes (``widths.json``, ``benchmark.json``, ``verify.json``, reports,
``.keras`` and ``.tflite`` files) goes through this module, so a killed job never leaves a
half-written file: data is written to a temporary file in the same folder and renamed over the
target (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any


class ArtifactError(ValueError):
    """A file that cafe-tf reads is missing, malformed or of an unsupported schema."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` only if the block succeeds.

    ``suffix`` defaults to the target's extension, so writers that dispatch on it (``.keras``) work.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if suffix is None:
        suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=folder)
    os.close(fd)
    os.unlink(tmp)  # writers such as keras refuse to overwrite; they create the file themselves
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, without importing numpy here.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_artifact(path: str | os.PathLike, kind: str, version: int, payload: Mapping[str, Any]) -> None:
    """Writes a versioned artifact: ``{"schema": kind, "schema_version": version, **payload}``."""
    write_json(path, {"schema": kind, "schema_version": version, **payload})


def read_artifact(
    path: str | os.PathLike,
    kind: str,
    versions: tuple[int, ...],
    required: tuple[str, ...] = (),
    validate: Callable[[dict[str, Any]], None] | None = None,
    writer: str | None = None,
) -> dict[str, Any]:
    """Reads and validates a versioned artifact written by :func:`write_artifact`.

    Args:
      path: the file.
      kind: its ``schema``.
      versions: the schema versions this reader accepts (one: the version the writer writes).
      required: top-level keys the file must hold.
      validate: raises ValueError / TypeError / KeyError on a malformed payload.
      writer: the stage or program that writes the file, named when a file of another version is refused.

    Returns:
      The file's JSON object.

    Raises:
      ArtifactError: naming the file and what is wrong (missing, not JSON, wrong schema or
        version, missing keys, or whatever ``validate`` rejects).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"{kind} file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{kind} file {path!r} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{kind} file {path!r} must hold a JSON object, found {type(obj).__name__}")
    if obj.get("schema") != kind:
        raise ArtifactError(f"{path!r} has schema {obj.get('schema')!r}; expected {kind!r}")
    if obj.get("schema_version") not in versions:
        supported = " or ".join(str(v) for v in versions)
        raise ArtifactError(
            f"{kind} file {path!r} has schema_version {obj.get('schema_version')!r}; this cafe-tf reads version "
            f"{supported} only: re-run {writer or 'the stage that writes it'} to write it again"
        )
    missing = [k for k in required if k not in obj]
    if missing:
        raise ArtifactError(f"{kind} file {path!r} lacks required keys {missing}")
    if validate is not None:
        try:
            validate(obj)
        except (ValueError, TypeError, KeyError) as e:
            raise ArtifactError(f"{kind} file {path!r} is invalid: {e}") from None
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (fingerprints a supernet, a .keras model, a benchmarked .tflite)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
