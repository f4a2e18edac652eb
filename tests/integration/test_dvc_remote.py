"""Share a pipeline through a DVC remote: repro, push, fresh clone, pull, nothing to rerun.

A temp project (the repo's stages/src/dvc.yaml and its .dvc/config with the default remote
``local``, re-pointed at a temp folder), one round on a tiny random model, tracking off (the
MLflow side is tested elsewhere). ``dvc push`` then a ``git clone`` + ``dvc pull`` must give the
same files, and ``dvc status`` / ``dvc repro`` in the clone must find everything up to date.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from tinyproject import (
    ALWAYS_CHANGED,
    ROOT,
    dvc,
    git,
    new_project,
    project_env,
    ran_stages,
    run,
    stale_stages,
    tiny_params,
)

pytestmark = pytest.mark.e2e


def _out(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = run(cmd, cwd, env)
    return proc.stdout + proc.stderr


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_repo_config_has_default_local_remote():
    from configobj import ConfigObj  # what DVC parses its config with

    cfg = ConfigObj(str(ROOT / ".dvc" / "config"))
    default = cfg["core"]["remote"]
    url = cfg[f'remote "{default}"']["url"]
    # relative to .dvc/: a folder next to the repository, outside its git work tree
    target = (ROOT / ".dvc" / url).resolve()
    assert target.parent == ROOT.parent, target


def test_push_clone_pull_up_to_date(tiny_model, tmp_path):
    storage, clone = tmp_path / "storage", tmp_path / "clone"
    params = tiny_params(tiny_model, rounds={"r1": {"prev": "r0"}}, tracking={"enabled": False})
    proj, env = new_project(tmp_path / "project", params)
    shutil.copy(ROOT / ".dvc" / "config", proj / ".dvc" / "config")  # the repo's remote setup
    assert _out(dvc("remote", "default"), proj, env).strip() == "local"
    run(dvc("remote", "modify", "local", "url", str(storage)), proj, env)

    run(dvc("repro"), proj, env)
    assert (proj / "data" / "report" / "accuracy.png").is_file()
    run(["git", "add", "-A"], proj, env)
    run(git("commit", "-qm", "pipeline run"), proj, env)
    out = _out(dvc("push"), proj, env)
    assert "pushed" in out, out
    assert any(storage.rglob("*")), "nothing in the remote"

    run(["git", "clone", "-q", str(proj), str(clone)], tmp_path, env)
    env = project_env(clone)  # the clone's own commands
    assert not (clone / "data" / "rounds" / "r1" / "model").exists()
    run(dvc("pull"), clone, env)
    for folder in ("data/rounds/r1/model", "data/prepared", "data/report"):
        assert _digest(clone / folder) == _digest(proj / folder), folder
    assert stale_stages(clone, env) == {}
    repro = _out(dvc("repro"), clone, env)
    assert ran_stages(repro) == list(ALWAYS_CHANGED), repro  # only the input digests

    # the top-level plots of dvc.yaml render from the pulled report
    plots = json.loads(_out(dvc("plots", "show", "--json"), clone, env))
    assert not plots.get("errors"), plots["errors"]
    names = set(plots["data"])
    assert {"data/report/accuracy.png", "data/report/plots/kept.csv"} <= names, names
    assert any(n.startswith("data/report/plots/accuracy/") for n in names), names
    assert any(n.startswith("data/report/plots/agreement/r1") for n in names), names
