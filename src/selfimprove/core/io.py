"""Small, dependency-free file helpers: jsonl with line-numbered errors, atomic writes.

Every stage writes its outputs through these helpers so that a killed stage never leaves a
half-written file or folder behind (write to a temporary sibling, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


class InputError(Exception):
    """Bad user input (a file, a line, a setting): the message says what and how to fix it."""


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _numbered_records(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.exists():
        raise InputError(f"{path}: file not found; check the path (or run the stage that makes it)")
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"{path} line {lineno}: not valid JSON ({e.msg}); fix or regenerate the file"
                ) from None
            if not isinstance(obj, dict):
                raise InputError(
                    f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            yield lineno, obj


def iter_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> Iterator[dict]:
    """Yield one dict per non-empty line of a ``.jsonl`` (or ``.jsonl.gz``) file.

    A missing file, a line that is not a JSON object, or a record without one of the
    ``required`` keys raises :class:`InputError` naming the file and the 1-based line.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = p.write_text('{"a": 1}\\n\\n{"a": 2}\\n')
    >>> [r["a"] for r in iter_jsonl(p)]
    [1, 2]
    >>> _ = p.write_text('{"a": 1}\\n{"a": \\n')
    >>> list(iter_jsonl(p))
    Traceback (most recent call last):
    ...
    selfimprove.core.io.InputError: ...x.jsonl line 2: not valid JSON (Expecting value); fix or ...
    >>> _ = p.write_text('{"question": "1+1?"}\\n{"q": "oops"}\\n')
    >>> list(iter_jsonl(p, required=["question"]))
    Traceback (most recent call last):
    ...
    selfimprove.core.io.InputError: ...x.jsonl line 2: missing key 'question' (has: q)
    """
    path = Path(path)
    required = list(required)
    for lineno, obj in _numbered_records(path):
        for key in required:
            if key not in obj:
                raise InputError(
                    f"{path} line {lineno}: missing key {key!r} (has: {', '.join(obj) or 'none'})"
                )
        yield obj


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> list[dict]:
    """Read a whole jsonl file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path, required))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path`` (whole).

    On any exception the temporary is removed and ``path`` is left as it was.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "out.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "out.txt").read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o755 if is_dir else 0o644)  # mkdtemp/mkstemp create private (0700/0600)
        if is_dir:
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records as jsonl atomically; return how many were written."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj) -> None:
    """Write one JSON document atomically (pretty, sorted keys: stable for DVC diffs)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def nonblank_line_numbers(path: str | os.PathLike) -> list[int]:
    """1-based numbers of the non-blank lines (the records ``iter_jsonl`` yields)."""
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [i for i, line in enumerate(f, start=1) if line.strip()]
