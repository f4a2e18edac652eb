"""Share a pipeline through a DVC remote: repro, push, fresh clone, pull, nothing to rerun.

A temp project (the repo's stages/src/dvc.yaml and its .dvc/config with the default remote
``local``, re-pointed at a temp folder), one round on a tiny random model, tracking off (the
MLflow side is tested elsewhere). ``dvc push`` then a ``git clone`` + ``dvc pull`` must give the
same files, and ``dvc status`` / ``dvc repro`` in the clone must find everything up to date.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _e2e_module():
    """tests/e2e/test_pipeline.py, for its tiny-model params (kept in step with the pipeline)."""
    spec = importlib.util.spec_from_file_location(
        "_e2e_pipeline", ROOT / "tests/e2e/test_pipeline.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-5000:]}"
        )
    return proc.stdout + proc.stderr


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def _git(*args: str) -> list[str]:
    return ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args]


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


def test_push_clone_pull_up_to_date(tmp_path):
    from selfimprove.tiny import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "tiny-model")
    proj, storage, clone = tmp_path / "project", tmp_path / "storage", tmp_path / "clone"
    proj.mkdir()
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, proj / name)
    params = _e2e_module()._tiny_params(model_dir)
    params["rounds"] = {"r1": {"prev": "r0"}}
    params["tracking"]["enabled"] = False
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'unused.db'}"
    _run(["git", "init", "-q"], proj, env)
    _run(_dvc("init", "-q"), proj, env)
    shutil.copy(ROOT / ".dvc" / "config", proj / ".dvc" / "config")  # the repo's remote setup
    assert _run(_dvc("remote", "default"), proj, env).strip() == "local"
    _run(_dvc("remote", "modify", "local", "url", str(storage)), proj, env)

    _run(_dvc("repro"), proj, env)
    assert (proj / "data" / "report" / "accuracy.png").is_file()
    _run(["git", "add", "-A"], proj, env)
    _run(_git("commit", "-qm", "pipeline run"), proj, env)
    out = _run(_dvc("push"), proj, env)
    assert "pushed" in out, out
    assert any(storage.rglob("*")), "nothing in the remote"

    _run(["git", "clone", "-q", str(proj), str(clone)], tmp_path, env)
    assert not (clone / "data" / "rounds" / "r1" / "model").exists()
    _run(_dvc("pull"), clone, env)
    for folder in ("data/rounds/r1/model", "data/prepared", "data/report"):
        assert _digest(clone / folder) == _digest(proj / folder), folder
    status = _run(_dvc("status"), clone, env)
    assert "Data and pipelines are up to date" in status, status
    repro = _run(_dvc("repro"), clone, env)
    assert "Data and pipelines are up to date" in repro, repro
    assert "Running stage" not in repro, repro

    # the top-level plots of dvc.yaml render from the pulled report
    plots = json.loads(_run(_dvc("plots", "show", "--json"), clone, env))
    assert not plots.get("errors"), plots["errors"]
    names = set(plots["data"])
    assert {"data/report/accuracy.png", "data/report/plots/kept.csv"} <= names, names
    assert any(n.startswith("data/report/plots/accuracy/") for n in names), names
    assert any(n.startswith("data/report/plots/agreement/r1") for n in names), names
