"""Reading params.yaml so that no file can abuse the parser: one clear line for any bad file.

:func:`read_yaml_file` refuses, each with one :class:`~selfimprove.core.io.InputError` line
naming the file (and the line) and the fix:

* a directory, an unreadable file, a file over :data:`MAX_BYTES`, bytes that are not UTF-8;
* YAML anchors and aliases (``&a`` / ``*a``), at the first one, before anything is expanded: a
  "billion laughs" file is refused in milliseconds instead of growing to gigabytes;
* merge keys (``<<:``) and duplicate keys (PyYAML keeps the last one silently; DVC refuses the
  file), naming the key and both lines;
* YAML syntax errors and nesting too deep to parse.

Only plain YAML data (mappings, lists, strings, numbers, booleans, null) is ever built: the
loader derives from ``yaml.SafeLoader``. The values are then those DVC records
(:func:`as_dvc_reads`: YAML 1.2, so ``1e-4`` is a number, ``yes`` a string).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from selfimprove.config.base import clip, short
from selfimprove.core.io import InputError

#: params.yaml larger than this is refused (the shipped one is ~10 kB)
MAX_BYTES = 1 << 20

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """A construct this loader does not allow; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without anchors, aliases, merge keys or duplicate keys.

    >>> yaml.load("a: 1\\nb: [2, 3]\\n", Loader=StrictLoader)
    {'a': 1, 'b': [2, 3]}
    >>> yaml.load("a: &x 1\\nb: *x\\n", Loader=StrictLoader)
    Traceback (most recent call last):
    ...
    selfimprove.config.yaml_file._Refused: YAML anchor '&x' ...
    """

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                event.start_mark.line + 1,
                f"YAML alias '*{clip(event.anchor, 40)}' is not allowed (aliases can "
                "expand to gigabytes); write the value out in full",
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(
                event.start_mark.line + 1,
                f"YAML anchor '&{clip(anchor, 40)}' is not allowed (nor are aliases); "
                "remove it and write each value out in full",
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 (PyYAML's signature)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == _MERGE_TAG:
                    raise _Refused(line, "merge keys (<<) are not allowed; write the keys out")
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                    seen[key] = line
                except TypeError:  # unhashable key: SafeConstructor reports it
                    continue
                if first is not None:
                    raise _Refused(
                        line,
                        f"duplicate key {short(key)} (first at line {first}); keep only one",
                    )
        return super().construct_mapping(node, deep=deep)


def _yaml_error_line(path: Path, e: yaml.YAMLError, text: str) -> str:
    """One line for a PyYAML error: where, what, and the fix."""
    if isinstance(e, _Refused):
        return f"{path} line {e.line}: {e.message}"
    mark = getattr(e, "problem_mark", None)
    where = f"{path} line {mark.line + 1} column {mark.column + 1}" if mark else str(path)
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text[: e.position].count("\n") + 1
        c = e.character
        code = c if isinstance(c, int) else ord(c)
        return (
            f"{path} line {line}: not valid YAML: character U+{code:04X} is not allowed; remove it"
        )
    problem = getattr(e, "problem", None) or " ".join(str(e).split())
    context = getattr(e, "context", None)
    what = f"{problem} ({context})" if context else problem
    return f"{where}: not valid YAML: {clip(what, 160)}; fix the syntax"


def read_yaml_file(path: str | Path) -> Any:
    """The data of a YAML file (None when empty), or :class:`InputError` (one line).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "p.yaml"
    >>> _ = p.write_text("seed: 1\\nseed: 2\\n")
    >>> read_yaml_file(p)
    Traceback (most recent call last):
    ...
    selfimprove.core.io.InputError: ...p.yaml line 2: duplicate key 'seed' (first at line 1); ...
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a YAML file; give the params file's path")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise InputError(
                f"{path}: {size} bytes, more than a params file needs ({MAX_BYTES} at most); "
                "check that this is the right file"
            )
        with open(path, "rb") as f:  # a device or a stream has no size: read at most the cap
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise InputError(
                f"{path}: more than {MAX_BYTES} bytes, more than a params file needs; check "
                "that this is the right file"
            )
    except OSError as e:
        from selfimprove.core.io import os_reason

        raise InputError(f"{path}: cannot read it ({os_reason(e)}); check the path and its "
                         "permissions") from None  # fmt: skip
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(
            f"{path} line {line}: not UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); "
            "save the file as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise InputError(_yaml_error_line(path, e, text)) from None
    except RecursionError:
        raise InputError(
            f"{path}: nested too deeply to parse; params.yaml needs a few levels only"
        ) from None
    return as_dvc_reads(text, data, path)


def as_dvc_reads(text: str, data: Any, path: Path | str = "params.yaml") -> Any:
    """The values of a (checked) YAML text as DVC reads them: YAML 1.2 through ruamel.yaml, the
    parser DVC records params with. PyYAML reads YAML 1.1, where ``1e-4`` is a string,
    ``yes``/``on`` are booleans and ``010`` is 8; DVC sees the float 0.0001, the strings "yes"
    and "on" and the integer 10, and so does every stage. ``data``: PyYAML's result, kept
    where ruamel.yaml is missing.

    >>> as_dvc_reads("lr: 1e-4\\nflag: yes\\nn: 8\\n", None)
    {'lr': 0.0001, 'flag': 'yes', 'n': 8}
    """
    try:
        from ruamel.yaml import YAML
        from ruamel.yaml import YAMLError as RuamelError
    except ImportError:  # pragma: no cover (DVC depends on it)
        return data
    try:
        return YAML(typ="safe").load(text)
    except (RuamelError, ValueError) as e:
        raise InputError(
            f"{path}: not valid YAML 1.2 as DVC reads it ({clip(' '.join(str(e).split()), 160)}); "
            "fix the syntax"
        ) from None
    except RecursionError:
        raise InputError(
            f"{path}: nested too deeply to parse; params.yaml needs a few levels only"
        ) from None
