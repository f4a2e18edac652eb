"""Provenance of a round: which DVC lock entries, which git commit (and whether the code or params
differ from it), and which environment (lock file, package versions, machine) produced it.

What each round run records (see :func:`provenance_tags`, :func:`environment_tags`):

* ``dvc_lock``: :func:`dvc_lock_digest` of the round's ``dvc.lock`` entries;
* ``git_commit`` / ``mlflow.source.git.commit``: HEAD; ``git_dirty``: ``true`` only when a tracked
  file other than the ones DVC rewrites itself differs from HEAD (:func:`counts_as_dirty`), and
  then ``git_dirty_files``: those files (JSON list, truncated);
* ``env.lock``: the lock file the environment was installed from (:data:`LOCK_FILES`), relative
  to the project root, and ``env.lock_sha256``: its sha256; both ``none`` when no lock matches
  what is installed (e.g. a GPU user's own environment), and then ``env.lock_mismatch`` says why;
* ``env.<package>``: the installed version of each of :data:`ENV_PACKAGES`, and ``env.python``;
* ``selfimprove.host``: the machine (the only machine-specific tag).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import subprocess
from pathlib import Path, PurePosixPath

from selfimprove.tracking.tags import MAX_TAG_VALUE, TAG_HOST, truncate

#: The lock files an environment can be installed from, relative to the project root, in the
#: order they are tried (`make lock` writes the CPU one; a vLLM lock goes here too).
LOCK_FILES: tuple[str, ...] = ("requirements/cpu.txt",)
#: The packages whose installed versions every round run records (tag ``env.<name>``).
ENV_PACKAGES: tuple[str, ...] = ("torch", "transformers", "peft", "accelerate", "dvc", "mlflow")
#: Tracked files DVC itself rewrites during ``dvc repro``, which don't make a run "dirty": every
#: ``dvc.lock``, and the ``.gitignore`` files DVC keeps next to its outputs (under these folders
#: of the project root).
DVC_LOCK_NAME = "dvc.lock"
DVC_OUTPUT_DIRS: tuple[str, ...] = ("data",)
NONE = "none"


def dvc_lock_digest(round_name: str, lock_path: str | Path = "dvc.lock") -> str:
    """sha256 (16 hex) of the dvc.lock entries of the stages that made ``round_name``.

    Those entries (deps, params, outs with their md5s) are written by DVC before the round's
    track stage runs, so the digest pins exactly what the logged round was made from.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "dvc.lock"
    >>> _ = p.write_text("schema: '2.0'\\nstages:\\n  generate@r1:\\n    cmd: x\\n")
    >>> len(dvc_lock_digest("r1", p)), dvc_lock_digest("r2", p)
    (16, '')
    """
    import yaml

    path = Path(lock_path)
    if not path.exists():
        return ""
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    mine = {
        k: v
        for k, v in stages.items()
        if k.endswith(f"@{round_name}") or k.endswith(f"_{round_name}")
    }
    if not mine:
        return ""
    return hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- git


def counts_as_dirty(path: str) -> bool:
    """Whether a changed tracked file (posix path relative to the project root) makes the work
    tree "dirty": every file does except those DVC rewrites during ``dvc repro`` (any
    ``dvc.lock``; a ``.gitignore`` inside :data:`DVC_OUTPUT_DIRS`). A path outside the project
    (``../x``, in a larger git repo) counts.

    >>> [counts_as_dirty(p) for p in ("dvc.lock", "data/models/.gitignore", "data/.gitignore")]
    [False, False, False]
    >>> [counts_as_dirty(p) for p in ("params.yaml", "src/a.py", ".gitignore", "data/README.md")]
    [True, True, True, True]
    >>> counts_as_dirty("../other/dvc.lock"), counts_as_dirty("../data/x/.gitignore")
    (False, True)
    """
    p = PurePosixPath(path)
    if p.name == DVC_LOCK_NAME:
        return False
    in_outputs = len(p.parts) > 1 and p.parts[0] in DVC_OUTPUT_DIRS  # ("../data" is not)
    return not (in_outputs and p.name == ".gitignore")


def _porcelain_paths(out: str, prefix: str) -> list[str]:
    """Paths of ``git status --porcelain=v1 -z`` output, relative to the folder at ``prefix``
    (``git rev-parse --show-prefix``); a rename gives both its paths.

    >>> _porcelain_paths(" M src/a.py\\0R  new.py\\0old.py\\0", "")
    ['src/a.py', 'new.py', 'old.py']
    >>> _porcelain_paths(" M proj/data/.gitignore\\0 M README.md\\0", "proj/")
    ['data/.gitignore', '../README.md']
    """
    fields = out.split("\0")
    paths, i = [], 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if entry[0] in "RC":  # the source path follows as its own field
            paths.append(fields[i])
            i += 1
    depth = prefix.rstrip("/").count("/") + 1 if prefix else 0
    out_paths = []
    for p in paths:
        if prefix and p.startswith(prefix):
            out_paths.append(p[len(prefix) :])
        elif prefix:
            out_paths.append("/".join([".."] * depth + [p]))
        else:
            out_paths.append(p)
    return out_paths


def git_info(repo_dir: str | os.PathLike) -> dict:
    """``{"commit": <HEAD sha>, "dirty": "true"|"false", "dirty_files": [...]}`` for a git work
    tree (``repo_dir`` = the project root, possibly a subfolder of the repo), else ``{}``.

    "dirty" is true only when a tracked file that :func:`counts_as_dirty` differs from HEAD
    (in the work tree or the index); untracked files never count (DVC outputs are git-ignored).
    ``dirty_files`` lists those files, relative to ``repo_dir``.

    >>> import tempfile
    >>> git_info(tempfile.mkdtemp())
    {}
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "core.quotepath=off", *args],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        prefix = git("rev-parse", "--show-prefix").strip()
        status = git("status", "--porcelain=v1", "-z", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    dirty = sorted({p for p in _porcelain_paths(status, prefix) if counts_as_dirty(p)})
    return {"commit": commit, "dirty": "true" if dirty else "false", "dirty_files": dirty}


# --------------------------------------------------------------------------- environment


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)\s*(?:;(.*))?$")


def lock_pins(text: str) -> dict[str, tuple[str, str]]:
    """``{canonical name: (version, marker)}`` of the ``name==version`` lines of a pip lock
    (``uv pip compile`` / pip-tools output; hashes, comments and options skipped).

    >>> text = "torch==2.13.0+cpu \\\\\\n    --hash=sha256:ab\\n    # via x\\n"
    >>> lock_pins(text + "Py_Yaml==6.0 ; python_version < '4'\\n")
    {'torch': ('2.13.0+cpu', ''), 'py-yaml': ('6.0', "python_version < '4'")}
    """
    pins = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].rstrip(" \\")
        m = _PIN.match(line)
        if m:
            pins[_canonical(m.group(1))] = (m.group(3), (m.group(4) or "").strip())
    return pins


def _same_version(a: str, b: str) -> bool:
    try:
        from packaging.version import Version

        return Version(a) == Version(b)
    except Exception:  # not PEP 440: compare the strings
        return a == b


def _marker_applies(marker: str) -> bool:
    if not marker:
        return True
    try:
        from packaging.markers import Marker

        return Marker(marker).evaluate()
    except Exception:  # unparsable: assume it applies
        return True


def installed_versions() -> dict[str, str]:
    """``{canonical name: version}`` of every installed distribution."""
    from importlib.metadata import distributions

    out = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(_canonical(name), dist.version)
    return out


def lock_mismatches(pins: dict[str, tuple[str, str]], installed: dict[str, str]) -> list[str]:
    """What differs between a lock's pins and the installed versions (empty: installed from it).

    >>> lock_mismatches({"torch": ("2.13.0+cpu", ""), "peft": ("0.21", "")},
    ...                 {"torch": "2.13.0+cu128", "peft": "0.21.0"})
    ['torch 2.13.0+cu128 (lock 2.13.0+cpu)']
    >>> lock_mismatches({"vllm": ("0.9", "")}, {})
    ['vllm missing (lock 0.9)']
    """
    bad = []
    for name, (version, marker) in sorted(pins.items()):
        if not _marker_applies(marker):
            continue
        have = installed.get(name)
        if have is None:
            bad.append(f"{name} missing (lock {version})")
        elif not _same_version(have, version):
            bad.append(f"{name} {have} (lock {version})")
    return bad


def lock_in_use(
    root: str | os.PathLike, installed: dict[str, str] | None = None
) -> tuple[str | None, list[str]]:
    """The first of :data:`LOCK_FILES` (under ``root``) whose every pin is installed at its
    version, and, when none is, why (per existing lock: the first few mismatches)."""
    installed = installed_versions() if installed is None else installed
    why = []
    for rel in LOCK_FILES:
        path = Path(root) / rel
        if not path.is_file():
            continue
        bad = lock_mismatches(lock_pins(path.read_text()), installed)
        if not bad:
            return rel, []
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        why.append(f"{rel}: {', '.join(bad[:3])}{more}")
    return None, why


def environment_tags(root: str | os.PathLike) -> dict[str, str]:
    """The environment tags of a round run (module docstring): lock, versions, host."""
    from importlib.metadata import PackageNotFoundError, version

    from selfimprove.core.digest import file_sha256

    lock, why = lock_in_use(root)
    tags = {
        "env.lock": lock or NONE,
        "env.lock_sha256": file_sha256(Path(root) / lock) if lock else NONE,
        "env.python": platform.python_version(),
    }
    if why:
        tags["env.lock_mismatch"] = truncate("; ".join(why), MAX_TAG_VALUE)
    for name in ENV_PACKAGES:
        try:
            tags[f"env.{name}"] = version(name)
        except PackageNotFoundError:
            tags[f"env.{name}"] = NONE
    tags[TAG_HOST] = socket.gethostname() or "unknown"
    return tags


def provenance_tags(git: dict, lock_digest: str, method: str) -> dict[str, str]:
    """The git and DVC tags of a round run from :func:`git_info` and :func:`dvc_lock_digest`.

    >>> provenance_tags({"commit": "ab", "dirty": "true", "dirty_files": ["a.py"]}, "d", "lmsi")
    ... # doctest: +NORMALIZE_WHITESPACE
    {'dvc_lock': 'd', 'method': 'lmsi', 'git_commit': 'ab', 'git_dirty': 'true',
     'mlflow.source.git.commit': 'ab', 'git_dirty_files': '["a.py"]'}
    >>> provenance_tags({}, "", "lmsi")
    {'dvc_lock': '', 'method': 'lmsi'}
    """
    tags = {"dvc_lock": lock_digest, "method": method}
    if git.get("commit"):
        tags |= {
            "git_commit": git["commit"],
            "git_dirty": git.get("dirty", ""),
            "mlflow.source.git.commit": git["commit"],
        }
        if git.get("dirty_files"):
            tags["git_dirty_files"] = truncate(json.dumps(git["dirty_files"]), MAX_TAG_VALUE)
    return tags
