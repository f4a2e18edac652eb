"""dvc.yaml is generated from dvc.in.yaml, the pipeline's short description.

Every stage runs the same few files (its ``stages/<name>.py``, ``stages/__init__.py``, the
package's entry points and config models) and lists them as deps, and DVC cannot splice a shared
list into ``deps`` (dvc issues #7151 and #8171; a YAML alias stands for one whole list, and a
list nested in ``deps`` is an error). So dvc.in.yaml writes them once (``shared_deps``) and each
stage lists only its own step and data; this module writes dvc.yaml with each stage's deps
beginning ``stages/__init__.py``, ``stages/<name>.py`` (from its ``cmd``), then ``shared_deps``.
Everything else (comments included) is copied as it is, through ruamel.yaml, the YAML library
DVC reads dvc.yaml with.

Usage (from the project root)::

    make dvc.yaml                            # = python -m selfimprove.dvc_yaml
    python -m selfimprove.dvc_yaml --check   # exit 1 when dvc.yaml is not what dvc.in.yaml gives

tests/unit/test_dvc_yaml.py fails when the committed dvc.yaml is stale.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path

SPEC = "dvc.in.yaml"
OUT = "dvc.yaml"
#: the key of dvc.in.yaml that lists the deps of every stage (not written to dvc.yaml)
SHARED = "shared_deps"
#: the stage module a cmd runs: ``python -m stages.<name>`` (or another launcher's ``-m``)
CMD = re.compile(r"(?:^|\s)-m\s+stages\.(\w+)(?:\s|$)")
#: where a stage's deps go when dvc.in.yaml gives it none: before the first of these keys
_AFTER_DEPS = ("params", "outs", "metrics", "plots")
#: the comment that opens a stage's own deps in dvc.yaml
OWN = "its own step and data"
HEADER = """\
# GENERATED from dvc.in.yaml by `make dvc.yaml` (python -m selfimprove.dvc_yaml): edit dvc.in.yaml
# and rerun it, not this file (tests/unit/test_dvc_yaml.py fails when this copy is stale). Every
# stage's deps begin with the same lines: stages/__init__.py, its stages/<name>.py and the code
# every stage runs (dvc.in.yaml's shared_deps); then, after `# its own step and data`, the rest.
#
"""


class SpecError(ValueError):
    """dvc.in.yaml does not describe a pipeline this module can write."""


def _yaml():
    from ruamel.yaml import YAML

    y = YAML()  # round trip: comments, key order and quoting are kept
    y.preserve_quotes = True
    y.width = 4096  # never fold a long line
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def render(spec_text: str) -> str:
    """The text of dvc.yaml for the text of dvc.in.yaml.

    >>> spec = '''\\
    ... shared_deps: [src/selfimprove/pipeline.py]
    ... stages:
    ...   data:
    ...     cmd: python -m stages.data
    ...     deps:
    ...       - src/selfimprove/data
    ...     outs:
    ...       - data/prepared
    ... '''
    >>> print(render(spec).split("#\\n", 1)[1], end="")
    stages:
      data:
        cmd: python -m stages.data
        deps:
          - stages/__init__.py
          - stages/data.py
          - src/selfimprove/pipeline.py
          # its own step and data
          - src/selfimprove/data
        outs:
          - data/prepared
    """
    from ruamel.yaml.comments import CommentedSeq

    y = _yaml()
    spec = y.load(spec_text)
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), dict):
        raise SpecError(f"{SPEC}: no `stages:` mapping")
    shared = spec.pop(SHARED, None)
    if not isinstance(shared, list) or not all(isinstance(d, str) for d in shared):
        raise SpecError(f"{SPEC}: `{SHARED}:` must be a list of paths (the deps of every stage)")
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage) if isinstance(stage, dict) else None
        cmd = body.get("cmd") if isinstance(body, dict) else None
        m = CMD.search(cmd) if isinstance(cmd, str) else None
        if m is None:
            raise SpecError(f"{SPEC}: stage {name}: cmd {cmd!r} is not `python -m stages.<name>`")
        first = ["stages/__init__.py", f"stages/{m.group(1)}.py", *shared]
        deps = body.get("deps")
        if deps is None:
            deps = CommentedSeq()
            keys = list(body)
            at = next((keys.index(k) for k in _AFTER_DEPS if k in body), len(keys))
            body.insert(at, "deps", deps)
        twice = [d for d in deps if d in first]
        if twice:
            raise SpecError(
                f"{SPEC}: stage {name} lists {twice} in its deps, which every stage gets "
                f"({SHARED} and its stages/ files); remove them there"
            )
        for i, dep in enumerate(first):
            deps.insert(i, dep)
        if len(deps) > len(first):  # a line where the stage's own deps begin
            indent = 8 if body is not stage else 6  # a foreach stage's `do:` is one level deeper
            deps.yaml_set_comment_before_after_key(len(first), before=OWN, indent=indent)
    out = io.StringIO()
    y.dump(spec, out)
    return HEADER + out.getvalue()


def differences(
    old: str, new: str, first: str = "the first", second: str = "the second"
) -> list[str]:
    """What differs between two dvc.yaml texts, stage by stage (``comments`` when only
    comments or layout do).

    >>> differences("stages: {a: {cmd: x}, b: {cmd: y}}", "stages: {a: {cmd: z}, c: {cmd: y}}")
    ['only in the first: b', 'only in the second: c', 'a: cmd']
    """
    import yaml

    a, b = yaml.safe_load(old) or {}, yaml.safe_load(new) or {}
    sa, sb = a.get("stages") or {}, b.get("stages") or {}
    out = [f"only in {first}: {s}" for s in sa if s not in sb]
    out += [f"only in {second}: {s}" for s in sb if s not in sa]
    for s in (s for s in sa if s in sb and sa[s] != sb[s]):
        x, y = sa[s].get("do", sa[s]), sb[s].get("do", sb[s])
        keys = [k for k in dict.fromkeys([*x, *y]) if x.get(k) != y.get(k)] or ["foreach"]
        out.append(f"{s}: {', '.join(keys)}")
    out += [k for k in dict.fromkeys([*a, *b]) if k != "stages" and a.get(k) != b.get(k)]
    return out or ["comments"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m selfimprove.dvc_yaml",
        description=f"Write {OUT} from {SPEC} (run from the project root).",
    )
    ap.add_argument("--check", action="store_true", help=f"only check that {OUT} is up to date")
    args = ap.parse_args(argv)
    spec, out = Path(SPEC), Path(OUT)
    if not spec.is_file():
        print(f"error: {spec.resolve()} not found; run from the project root", file=sys.stderr)
        return 2
    try:
        text = render(spec.read_text())
    except Exception as e:  # a YAML error or a SpecError: one line, exit 2
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if args.check:
        if out.is_file() and out.read_text() == text:
            return 0
        what = [f"no {OUT}"]
        if out.is_file():
            what = differences(out.read_text(), text, OUT, f"the rendering of {SPEC}")
        print(
            f"{OUT} is stale: it is not what {SPEC} gives ({'; '.join(what)}); port any hand "
            f"edit of {OUT} to {SPEC}, then run `make dvc.yaml`",
            file=sys.stderr,
        )
        return 1
    if not out.is_file() or out.read_text() != text:
        from selfimprove.core.io import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text(text)
        print(f"wrote {OUT} from {SPEC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
