"""Content digests: the one definition of "same file" and "same folder" in the package.

A folder's digest covers every file's relative path and sha256, in sorted order (``*.tmp``
files and folders skipped), so it does not depend on where the folder lives or on file times.
The MLflow model code (``tracking/mlflow_model.py``, copied into every logged model and so
importing nothing from this package) repeats :func:`digest`; a test checks that both agree.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from selfimprove.core.io import InputError


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = p.write_text("hello")
    >>> file_sha256(p)[:16]
    '2cf24dba5fb0a30e'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def text_sha256(parts: list[str]) -> str:
    """sha256 of strings, each length-prefixed (so ["ab", "c"] != ["a", "bc"]).

    >>> text_sha256(["ab", "c"]) != text_sha256(["a", "bc"])
    True
    """
    h = hashlib.sha256()
    for p in parts:
        b = p.encode()
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def folder_files(root: str | os.PathLike) -> list[Path]:
    """The files a folder's digest covers, in order, relative to ``root`` (``*.tmp`` skipped).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "b").mkdir(); _ = (d / "b" / "x").write_text("1"); _ = (d / "a.tmp").write_text("")
    >>> [p.as_posix() for p in folder_files(d)]
    ['b/x']
    """
    root = Path(root)
    rels = (p.relative_to(root) for p in sorted(root.rglob("*")) if p.is_file())
    return [rel for rel in rels if not any(part.endswith(".tmp") for part in rel.parts)]


def digest(path: str | os.PathLike, length: int | None = None) -> str:
    """sha256 hex (first ``length`` characters, or all) of a file, or of a folder's files.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text("{}")
    >>> a = digest(d)
    >>> e = pathlib.Path(tempfile.mkdtemp()) / "elsewhere"
    >>> _ = e.mkdir(); _ = (e / "config.json").write_text("{}")
    >>> a == digest(d) == digest(e), len(digest(d, 36))
    (True, 36)
    >>> _ = (d / "model.safetensors").write_text("w")
    >>> a == digest(d)
    False
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found; run the stage that makes it or fix the path")
    if path.is_file():
        return file_sha256(path)[:length]
    h = hashlib.sha256()
    for rel in folder_files(path):
        h.update(f"{rel.as_posix()}\0{file_sha256(path / rel)}\n".encode())
    return h.hexdigest()[:length]
