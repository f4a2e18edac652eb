"""Provenance of a round run: git_dirty in real git repos (DVC's own edits don't count), the
environment tags (lock file in use, package versions), no absolute paths in params or tags, and
a logged adapter model that finds its base in a copy of the project at another path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from selfimprove.config.tracking import TrackingConfig
from selfimprove.core.digest import file_sha256
from selfimprove.tracking import mlflow_model
from selfimprove.tracking.provenance import (
    ENV_PACKAGES,
    LOCK_FILES,
    environment_tags,
    git_info,
    installed_versions,
    lock_in_use,
)
from selfimprove.tracking.runs import DatasetSpec, log_round
from selfimprove.tracking.tags import TAG_HOST, TAG_MODEL_DIR, portable_path

GIT_ID = ["-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *GIT_ID, *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.fixture
def repo(tmp_path):
    """A committed git repo shaped like the project (code, params, DVC's tracked files)."""
    root = tmp_path / "repo"
    root.mkdir()
    try:
        _git(root, "init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not usable here")
    _write(
        root,
        {
            "src/pkg/a.py": "x = 1\n",
            "stages/s.py": "print(1)\n",
            "params.yaml": "seed: 0\n",
            "dvc.yaml": "stages: {}\n",
            "dvc.lock": "schema: '2.0'\n",
            ".gitignore": "/mlflow.db\n",
            "data/.gitignore": "/prepared\n",
            "data/models/.gitignore": "/base\n",
            "data/README.md": "what is where\n",
            "requirements/cpu.txt": "torch==2.0\n",
        },
    )
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    return root


def test_clean_repo(repo):
    info = git_info(repo)
    assert len(info["commit"]) == 40
    assert info == {"commit": info["commit"], "dirty": "false", "dirty_files": []}


def test_dvc_own_edits_and_untracked_files_are_not_dirty(repo):
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {a: {cmd: x}}\n")
    (repo / "data/models/.gitignore").write_text("/base\n/warm\n")
    (repo / "data/.gitignore").unlink()
    _write(repo, {"data/rounds/r1/.gitignore": "/model\n", "mlflow.db": "", "notes.txt": "x"})
    _git(repo, "add", "data/rounds/r1/.gitignore")  # a new DVC .gitignore, even staged
    assert "dvc.lock" in _git(repo, "status", "--porcelain")  # the tree does differ ...
    assert git_info(repo)["dirty"] == "false"  # ... only in what DVC writes


@pytest.mark.parametrize(
    "change, expected",
    [
        ("edit_code", ["src/pkg/a.py"]),
        ("edit_params", ["params.yaml"]),
        ("edit_root_gitignore", [".gitignore"]),
        ("edit_lock_file", ["requirements/cpu.txt"]),
        ("stage_only", ["stages/s.py"]),
        ("delete", ["dvc.yaml"]),
        ("rename", ["src/pkg/a.py", "src/pkg/b.py"]),
        ("edit_data_readme", ["data/README.md"]),
    ],
)
def test_tracked_code_or_params_changes_are_dirty(repo, change, expected):
    if change == "edit_code":
        (repo / "src/pkg/a.py").write_text("x = 2\n")
    elif change == "edit_params":
        (repo / "params.yaml").write_text("seed: 1\n")
    elif change == "edit_root_gitignore":
        (repo / ".gitignore").write_text("")
    elif change == "edit_lock_file":
        (repo / "requirements/cpu.txt").write_text("torch==2.1\n")
    elif change == "stage_only":  # changed in the index, work tree = index
        (repo / "stages/s.py").write_text("print(2)\n")
        _git(repo, "add", "stages/s.py")
    elif change == "delete":
        (repo / "dvc.yaml").unlink()
    elif change == "rename":
        _git(repo, "mv", "src/pkg/a.py", "src/pkg/b.py")
    elif change == "edit_data_readme":
        (repo / "data/README.md").write_text("changed\n")
    (repo / "dvc.lock").write_text("changed by dvc\n")  # never counts, alongside
    info = git_info(repo)
    assert info["dirty"] == "true" and info["dirty_files"] == expected


def test_project_in_a_subfolder_of_the_repo(tmp_path):
    top = tmp_path / "mono"
    top.mkdir()
    try:
        _git(top, "init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not usable here")
    _write(top, {"README.md": "x\n", "proj/params.yaml": "a: 1\n", "proj/data/.gitignore": "/x\n"})
    _write(top, {"proj/dvc.lock": "l\n"})
    _git(top, "add", "-A")
    _git(top, "commit", "-qm", "init")
    proj = top / "proj"
    (proj / "data/.gitignore").write_text("/x\n/y\n")
    (proj / "dvc.lock").write_text("l2\n")
    assert git_info(proj)["dirty"] == "false"
    (top / "README.md").write_text("y\n")  # outside the project, in its repo: counts
    assert git_info(proj)["dirty_files"] == ["../README.md"]
    (proj / "params.yaml").write_text("a: 2\n")
    assert git_info(proj)["dirty_files"] == ["../README.md", "params.yaml"]


def test_real_dvc_repro_is_not_dirty(repo):
    """What a fresh clone's `dvc repro` does: rewrite a tracked data/**/.gitignore and dvc.lock."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")

    def dvc(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    stage = "import time; open('data/out/a.txt', 'w').write(str(time.time_ns()))"
    _write(
        repo,
        {
            "dvc.yaml": f'stages:\n  make:\n    cmd: python -c "{stage}"\n'
            "    outs: [data/out/a.txt]\n",
            "data/out/.gitignore": "# DVC adds its outputs here\n",
        },
    )
    (repo / "dvc.lock").unlink()
    dvc("init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "dvc")
    dvc("repro")  # appends /a.txt to the tracked data/out/.gitignore
    assert " M data/out/.gitignore" in _git(repo, "status", "--porcelain")
    assert git_info(repo)["dirty"] == "false"
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "lock")
    dvc("repro", "-f")  # a new output hash in the tracked dvc.lock
    assert " M dvc.lock" in _git(repo, "status", "--porcelain")
    assert git_info(repo)["dirty"] == "false"
    (repo / "params.yaml").write_text("seed: 3\n")
    assert git_info(repo) | {"commit": ""} == {
        "commit": "",
        "dirty": "true",
        "dirty_files": ["params.yaml"],
    }


# --------------------------------------------------------------------------- environment


def _lock_of(names: list[str], installed: dict[str, str], **override: str) -> str:
    lines = ["# a lock", "--index-url https://example.invalid/simple"]
    for name in names:
        lines += [f"{name}=={override.get(name, installed[name])} \\", "    --hash=sha256:00"]
        lines.append("    # via selfimprove (pyproject.toml)")
    return "\n".join(lines) + "\n"


def test_lock_in_use_matches_installed_pins(tmp_path):
    installed = installed_versions()
    names = ["torch", "transformers", "pyyaml"]
    assert lock_in_use(tmp_path, installed) == (None, [])  # no lock at all
    lock = tmp_path / LOCK_FILES[0]
    lock.parent.mkdir(parents=True)
    lock.write_text(_lock_of(names, installed))
    assert lock_in_use(tmp_path, installed) == (LOCK_FILES[0], [])
    tags = environment_tags(tmp_path)
    assert tags["env.lock"] == LOCK_FILES[0] and tags["env.lock_sha256"] == file_sha256(lock)
    assert "env.lock_mismatch" not in tags
    # a GPU user's own environment: another torch build than the lock's
    lock.write_text(_lock_of(names, installed, torch="2.0.0+cu121"))
    used, why = lock_in_use(tmp_path, installed)
    assert used is None and why == [
        f"{LOCK_FILES[0]}: torch {installed['torch']} (lock 2.0.0+cu121)"
    ]
    tags = environment_tags(tmp_path)
    assert tags["env.lock"] == tags["env.lock_sha256"] == "none"
    assert "torch" in tags["env.lock_mismatch"]
    lock.write_text(_lock_of(names, installed) + "not-a-real-package-xyz==1.0\n")
    assert "not-a-real-package-xyz missing" in lock_in_use(tmp_path, installed)[1][0]


def test_environment_tags_versions_and_host(tmp_path):
    tags = environment_tags(tmp_path)
    assert tags["env.lock"] == "none" and tags["env.lock_sha256"] == "none"
    for name in ENV_PACKAGES:
        assert tags[f"env.{name}"] == version(name)
    assert tags["env.python"] == ".".join(map(str, sys.version_info[:3]))
    assert tags[TAG_HOST]


def test_the_repository_lock_is_the_first_tried():
    assert LOCK_FILES[0] == "requirements/cpu.txt"
    assert (Path(__file__).resolve().parents[2] / LOCK_FILES[0]).is_file()


def test_portable_path_through_a_symlinked_root(tmp_path):
    real = tmp_path / "real" / "proj"
    (real / "data").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    assert portable_path(link / "proj" / "data", real) == "data"
    assert portable_path(real / "data", link / "proj") == "data"


# --------------------------------------------------------------------------- logged runs


@pytest.fixture
def uri(tmp_path, monkeypatch):
    db = tmp_path / "store" / "mlflow.db"  # outside every project folder below
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv(mlflow_model.ROOT_ENV, raising=False)
    return f"sqlite:///{db}"


def _absolute_values(run) -> dict[str, str]:
    """Params and tags of ``run`` whose value holds an absolute path (or a file: URI)."""
    values = {f"param {k}": v for k, v in run.data.params.items()}
    values |= {f"tag {k}": v for k, v in run.data.tags.items()}
    return {k: v for k, v in values.items() if os.path.isabs(v) or "file:" in v}


def _adapter_round(base: Path, out: Path, ref: str) -> Path:
    """``out``: merged weights + adapter/ trained (randomly) on ``base``, whose adapter_config
    names its base as ``ref`` (finetune writes the project-relative path)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out / "adapter")
    conf = out / "adapter" / "adapter_config.json"
    conf.write_text(json.dumps(json.loads(conf.read_text()) | {"base_model_name_or_path": ref}))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    PeftModel.from_pretrained(model, out / "adapter").merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def _logits(model):
    import torch

    with torch.no_grad():
        return model(torch.tensor([[5, 6, 7, 8, 9]])).logits


def test_round_run_records_environment_and_no_absolute_paths(uri, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    proj = tmp_path / "proj"
    _write(proj, {"data/rounds/r1/train.jsonl": "{}\n", "data/rounds/r1/metrics.json": "{}"})
    outside = tmp_path / "models" / "tiny"
    monkeypatch.chdir(proj)
    run_id = log_round(
        TrackingConfig(pipeline="portable", log_model="none"),
        round_name="r1",
        round_index=1,
        params={
            "base_model": {"local_path": str(outside), "hub_id": "org/model"},
            "data": {"path": str(proj / "data" / "x.jsonl")},
            "uri": (proj / "mlruns").as_uri(),
        },
        metrics={"acc": 0.5},
        datasets=[DatasetSpec(Path("data/rounds/r1/train.jsonl"), "r1-train", "training")],
        artifacts=[Path("data/rounds/r1/metrics.json")],
        model_dir=proj / "data" / "rounds" / "r1",
        tags={"where": str(proj / "stages" / "track.py"), "git_dirty": "false"},
    )
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert _absolute_values(run) == {}
    p, t = run.data.params, run.data.tags
    assert p["base_model.local_path"] == "../models/tiny" and p["base_model.hub_id"] == "org/model"
    assert p["data.path"] == "data/x.jsonl" and p["uri"] == "mlruns"
    assert t[TAG_MODEL_DIR] == "data/rounds/r1" and t["where"] == "stages/track.py"
    assert not os.path.isabs(t["mlflow.source.name"])  # MLflow's own context tag too
    for name in ENV_PACKAGES:
        assert t[f"env.{name}"] == version(name)
    assert t["env.lock"] == t["env.lock_sha256"] == "none"  # no lock in this folder
    assert t[TAG_HOST] and t["git_dirty"] == "false"


def test_logged_model_finds_its_base_in_a_copy_elsewhere(uri, tmp_path, tiny_model, monkeypatch):
    import mlflow
    import torch
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM

    proj = tmp_path / "here" / "proj"
    base = proj / "data" / "models" / "base"
    shutil.copytree(tiny_model, base)
    _adapter_round(base, proj / "data" / "rounds" / "r1" / "model", "data/models/base")
    expected = _logits(
        AutoModelForCausalLM.from_pretrained(proj / "data/rounds/r1/model", dtype=torch.float32)
    )
    monkeypatch.chdir(proj)
    model = Path("data/rounds/r1/model")
    run_id = log_round(
        TrackingConfig(pipeline="moved"),
        round_name="r1",
        round_index=1,
        metrics={"arith_1step": {"fewshot_cot": {"strict": 0.5}}},
        model_dir=model,
        adapter_dir=model / "adapter",
        base_model_ref="org/tiny",
    )
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert _absolute_values(run) == {}  # model_config is logged as params too
    assert run.data.params["base_path"] == "data/models/base"
    best = "models:/selfimprove-moved@best"

    # the project moves to another machine (another path); the original is gone
    moved = tmp_path / "elsewhere" / "deeper" / "clone"
    shutil.copytree(proj, moved)
    shutil.rmtree(tmp_path / "here")
    for cwd in (moved, moved / "data" / "rounds"):  # the project root or a folder inside it
        monkeypatch.chdir(cwd)
        inner = mlflow.pyfunc.load_model(best).unwrap_python_model()
        torch.testing.assert_close(_logits(inner.model), expected, rtol=0, atol=1e-5)

    monkeypatch.chdir(tmp_path)  # outside the project: not found, unless told where it is
    with pytest.raises(Exception, match="not found; restore it"):
        mlflow.pyfunc.load_model(best)
    inner = mlflow.pyfunc.load_model(
        best, model_config={"base_root": str(moved)}
    ).unwrap_python_model()
    torch.testing.assert_close(_logits(inner.model), expected, rtol=0, atol=1e-5)
    monkeypatch.setenv(mlflow_model.ROOT_ENV, str(moved))
    inner = mlflow.pyfunc.load_model(best).unwrap_python_model()
    torch.testing.assert_close(_logits(inner.model), expected, rtol=0, atol=1e-5)

    # a different folder at the same relative path: refused by the digest
    (moved / "data" / "models" / "base" / "config.json").write_text("{}")
    with pytest.raises(Exception, match="changed since this model was logged"):
        mlflow.pyfunc.load_model(best)
    shutil.rmtree(moved / "data" / "models" / "base")
    with pytest.raises(Exception, match="not found; restore it"):
        mlflow.pyfunc.load_model(best)
