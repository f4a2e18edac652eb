"""Provenance tags: which DVC lock entries and which git commit produced a round."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path


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


def git_info(repo_dir: str | os.PathLike) -> dict[str, str]:
    """``{"commit": <HEAD sha>, "dirty": "true"|"false"}`` for a git work tree, else ``{}``.

    "dirty" ignores untracked files (DVC outputs are git-ignored anyway).

    >>> import tempfile
    >>> git_info(tempfile.mkdtemp())
    {}
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": "true" if dirty else "false"}
