"""Small, dependency-free file helpers: jsonl with line-numbered errors, atomic writes.

Every stage writes its outputs through these helpers so that a killed stage never leaves a
half-written file or folder behind (write to a temporary sibling, fsync it, then ``os.replace``
and fsync the folder). A folder that already exists is swapped with the new one in one step
(``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames, with a moment between them where
the path does not exist: ``rename(2)`` cannot put a folder over a non-empty one).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path


class InputError(Exception):
    """Bad user input (a file, a line, a setting): the message says what and how to fix it."""


#: longest quoted value in an error message (characters)
MAX_SHOWN = 80
#: longest line a jsonl reader accepts (bytes): a record is a few kB; a file with no newline (a
#: device, a stream) is refused at this length instead of growing in memory
MAX_LINE_BYTES = 1 << 23


def shorten(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting a value in an error message.

    >>> shorten("abc"), shorten("x" * 100, 12)
    ("'abc'", "'xxxxxxxxxx…")
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON, write a number or null")


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, bytes)`` of a file (``.gz``: decompressed); every failure to read
    it (a directory, a missing or unreadable file, a truncated or corrupt gzip) is one
    :class:`InputError` naming the file (and the line)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise InputError(
            f"{path}: file not found; check the path (or run the stage that makes it)"
        ) from None
    except OSError as e:  # a symlink loop, a part of the path that is a file
        raise InputError(f"{path}: {os_reason(e)}") from None
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a .jsonl file; give the file's path")
    lineno = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            while raw := f.readline(MAX_LINE_BYTES + 1):  # a stream with no newline: bounded
                lineno += 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise InputError(
                        f"{path} line {lineno}: longer than {MAX_LINE_BYTES} bytes (a line with "
                        "no end, or not a .jsonl file); one JSON record per line is expected"
                    )
                yield lineno, raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise InputError(
            f"{path} line {lineno + 1}: the gzip data is truncated or corrupt "
            f"({' '.join(str(e).split())}); download or regenerate the file"
        ) from None
    except OSError as e:
        raise InputError(
            f"{path}: cannot read it ({e.strerror or e}); check the path and its permissions"
        ) from None


def _decode_line(path: Path, lineno: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path} line {lineno}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
            "save the file as UTF-8"
        ) from None


def _numbered_records(path: Path) -> Iterator[tuple[int, dict]]:
    for lineno, raw in _raw_lines(path):
        line = _decode_line(path, lineno, raw)
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_constant=_reject_constant)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{path} line {lineno}: not valid JSON ({e.msg}); fix or regenerate the file"
            ) from None
        except ValueError as e:  # NaN/Infinity, or an integer too long to convert
            what = "a number has too many digits" if "digits" in str(e) else str(e)
            raise InputError(
                f"{path} line {lineno}: not valid JSON ({what}); fix or regenerate the file"
            ) from None
        except RecursionError:
            raise InputError(
                f"{path} line {lineno}: JSON nested too deeply to read (over ~1000 levels); fix "
                "or regenerate the file"
            ) from None
        if not isinstance(obj, dict):
            raise InputError(
                f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__} "
                f"{shorten(obj, 40)}; write one {{...}} object per line"
            )
        yield lineno, obj


def iter_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> Iterator[dict]:
    """Yield one dict per non-empty line of a ``.jsonl`` (or ``.jsonl.gz``) file.

    A missing file, a directory, bytes that are not UTF-8, a truncated ``.gz``, a line that is
    not a JSON object (NaN/Infinity and nesting too deep included), or a record without one of
    the ``required`` keys raises :class:`InputError` naming the file and the 1-based line.

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
                keys = [k if len(k) <= 40 else k[:39] + "…" for k in list(obj)[:20]]
                has = ", ".join(keys) or "none"
                raise InputError(f"{path} line {lineno}: missing key {key!r} (has: {has})")
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
        _fsync_tree(tmp)
        if is_dir and (path.exists() or path.is_symlink()):
            if _exchange(tmp, path):  # one step: ``path`` is never missing
                _remove(tmp)  # now the old folder (or file, or link)
            else:  # no renameat2: two renames, ``path`` is missing between them
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename into it) durable; a no-op where folders can't be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder, before it is renamed into place
    (else a power cut can leave the new name pointing at empty data)."""
    if not path.is_dir():
        _fsync_file(path)
        return
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                _fsync_file(p)
        _fsync_dir(Path(dirpath))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a read-only descriptor flushes too (a 0444 file)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``, glibc >= 2.28);
    False where the call or the file system lacks it (``os.replace`` cannot put a folder over a
    non-empty one)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def output_problem(out: Path, inputs: tuple[Path, ...] = ()) -> str | None:
    """Why ``out`` cannot be written as an output file (None when it can): the same file as an
    input (also through a symlink or a hard link: same device and inode), a directory, a
    parent that is not a folder or not writable.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> output_problem(d), output_problem(d / "x.json")
    ('is a directory; give a file path', None)
    """
    try:
        st = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as e:  # a symlink loop, a parent that is a file, ...
        return os_reason(e)
    if st is not None:
        for inp in inputs:
            try:
                ist = os.stat(inp)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (ist.st_dev, ist.st_ino):
                return f"is the input {str(inp)!r} (same file); write the output elsewhere"
        if os.path.isdir(out):
            return "is a directory; give a file path"
        import stat

        if not stat.S_ISREG(st.st_mode):  # /dev/null, a pipe: a rename would replace the node
            return "is a device or a pipe, not a file; give a file path"
    parent = Path(os.path.abspath(out)).parent
    if not parent.exists():
        ancestor = parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            return f"{str(ancestor)!r} is a file, expected a folder"
        return None  # created on write
    if not parent.is_dir():
        return f"{str(parent)!r} is a file, expected a folder"
    if not os.access(parent, os.W_OK | os.X_OK) or (st is not None and not os.access(out, os.W_OK)):
        return "cannot be written (permission denied); choose a writable path"
    return None


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not an existing folder (None when it is): missing, a symlink loop, a
    file.

    >>> folder_problem("/") is None, folder_problem(__file__)
    (True, 'is a file, expected a folder')
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "not found"
    except OSError as e:
        return os_reason(e)
    import stat

    return None if stat.S_ISDIR(st.st_mode) else "is a file, expected a folder"


def os_reason(e: OSError) -> str:
    """An ``OSError`` as a short reason (a symlink loop named as such)."""
    import errno

    if e.errno == errno.ELOOP:
        return "is a symlink loop; fix the link"
    if e.errno == errno.ENOTDIR:
        return "a part of the path is a file, expected a folder"
    return f"{e.strerror or e}"


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
    path = Path(path)
    return [n for n, raw in _raw_lines(path) if _decode_line(path, n, raw).strip()]
