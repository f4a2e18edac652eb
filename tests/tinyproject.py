"""The tiny project every end-to-end test runs: a copy of this repository's pipeline (dvc.yaml,
stages/, src/, params.yaml) in a temp folder, a git repo with DVC initialised, params pointed at
a tiny random model and a handful of generated questions.

Use it with the ``tiny_model`` fixture (``tests/conftest.py``) and :func:`new_project`::

    proj, env = new_project(tmp_path / "proj", tiny_params(tiny_model))
    run(dvc("repro"), proj, env)
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: what a project copy holds (the rest of the repository is not part of the pipeline)
PIPELINE_DIRS = ("stages", "src")
PIPELINE_FILES = ("dvc.yaml", ".gitignore", ".dvcignore")
GIT_ID = ["-c", "user.email=t@t", "-c", "user.name=t"]


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd``; on failure (``check``) raise with the tail of its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def dvc(*args: str) -> list[str]:
    """``python -m dvc ARGS`` with this interpreter (the venv's dvc)."""
    return [sys.executable, "-m", "dvc", *args]


def git(*args: str) -> list[str]:
    """``git ARGS`` with a fixed author, for commits in a project copy."""
    return ["git", *GIT_ID, *args]


def tiny_params(model_dir: Path, **sections: dict) -> dict:
    """The repository's params.yaml, scaled down to seconds on a tiny model at ``model_dir``.

    ``sections`` update a section's keys (``finetune={"epochs": 2}``) or, for a non-dict value
    and for ``rounds`` (round names, not keys), replace it (``rounds={"r1": {"prev": "r0"}}``:
    one round).
    """
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_model"] |= {"source": "local", "local_path": str(model_dir), "pypi_sha256": None}
    params["data"] = {
        "train": {"source": "arith", "n": 6, "steps": [1]},
        "eval": {"arith": {"source": "arith", "n": 4, "steps": [1]}},
        "seed_set": None,
    }
    params["generate"] |= {"num_paths": 3, "max_new_tokens": 12, "n_shots": 1}
    params["sampler"] |= {"batch_size": 8}
    params["filter"] |= {"min_agreement": 0.0, "n_shots": 1}
    params["finetune"] |= {
        "epochs": 1, "batch_size": 4, "max_length": 256, "logging_steps": 1, "processes": 1
    }
    params["evaluate"] |= {
        "n_shots": 1,
        "max_new_tokens": 12,
        "sc_paths": 2,
        "sc_k": [1, 2],
        "sc_limit": 2,
    }
    params["tracking"]["pipeline"] = "e2e"
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(params.get(name), dict) and name != "rounds":
            params[name] = copy.deepcopy(params[name]) | value
        else:
            params[name] = value
    return params


def project_env(proj: Path, **extra: str) -> dict:
    """The environment a project's commands run in: offline, one thread, its own MLflow db, no
    distributed launch inherited; ``extra`` variables are added (or override)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{proj / 'mlflow.db'}"
    env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["PYTHONPATH"] = str(proj / "src")  # the copy's code runs (what its dvc.lock hashes)
    for key in ("SELFIMPROVE_LAUNCH", "RANK", "WORLD_SIZE", "LOCAL_RANK"):  # no launch inherited
        env.pop(key, None)
    return env | extra


def new_project(proj: Path, params: dict, **env_extra: str) -> tuple[Path, dict]:
    """A fresh project copy at ``proj`` with ``params``: git repo (one commit of the code and
    params), DVC initialised (no analytics). Returns ``(proj, env)``."""
    proj.mkdir(parents=True)
    for name in PIPELINE_DIRS:
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in PIPELINE_FILES:
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, proj / name)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(proj, **env_extra)
    run(["git", "init", "-q"], proj, env)
    run(dvc("init", "-q"), proj, env)
    run(dvc("config", "core.analytics", "false"), proj, env)
    run(["git", "add", "-A"], proj, env)
    run(git("commit", "-q", "-m", "init"), proj, env)
    return proj, env


#: stages DVC reruns on every `dvc repro` by design (dvc.yaml `always_changed`): `inputs`
#: re-digests the files outside the repository that params.yaml names; its output is
#: byte-identical when they did not change, so nothing downstream reruns.
ALWAYS_CHANGED = ("inputs",)


def stale_stages(proj: Path, env: dict, *targets: str) -> dict:
    """``dvc status --json`` minus the by-design ``always changed`` entries: {} = up to date."""
    import json

    status = json.loads(run(dvc("status", "--json", *targets), proj, env).stdout or "{}")
    return {
        k: v for k, v in status.items() if not (k in ALWAYS_CHANGED and v == ["always changed"])
    }


def ran_stages(repro_output: str) -> list[str]:
    """The stages a ``dvc repro`` output says it ran, in order."""
    import re

    return re.findall(r"Running stage '([^']+)'", repro_output)


def varied_model(root: Path, seed: int) -> Path:
    """The tiny Llama with larger random weights (N(0, 0.25) matrices, torch seed ``seed``) in
    ``root/varied``: its samples and greedy outputs vary instead of repeating one token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfimprove.tiny import make_tiny_model

    src = make_tiny_model(root / "model")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.25)
    out = root / "varied"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def import_stage(name: str):
    """``stages.<name>`` of this repository (``stages/`` is not an installed package: `pytest`
    alone does not see it; ``monkeypatch.syspath_prepend(ROOT)`` is the other way)."""
    import importlib

    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module(f"stages.{name}")
    finally:
        sys.path.remove(str(ROOT))
