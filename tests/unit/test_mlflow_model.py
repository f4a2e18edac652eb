"""tracking/mlflow_model.py: the code copied into every logged adapter model.

It runs where selfimprove is not installed, so it imports nothing from the package and repeats
the folder digest; these tests keep both promises.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from selfimprove.core.digest import digest
from selfimprove.tracking import mlflow_model
from selfimprove.tracking.registry import MODEL_CODE, MODEL_CODE_NAME


def _selfimprove_imports(source: str) -> list[str]:
    """``import``s of selfimprove (or relative ones, which would need the package) in ``source``.

    >>> _selfimprove_imports("import os\\nfrom selfimprove.core import io\\nfrom . import x")
    ['line 2: selfimprove.core', 'line 3: relative import']
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append(f"line {node.lineno}: relative import")
                continue
            names = [node.module or ""]
        else:
            continue
        found += [f"line {node.lineno}: {n}" for n in names if n.split(".")[0] == "selfimprove"]
    return found


def test_model_code_imports_nothing_from_selfimprove():
    assert MODEL_CODE == Path(mlflow_model.__file__)
    bad = _selfimprove_imports(MODEL_CODE.read_text())
    assert not bad, (
        f"{MODEL_CODE} imports from selfimprove ({', '.join(bad)}); it is copied into logged "
        "models and must run without the package: copy the code you need into the file"
    )


def test_import_checker_catches_planted_imports():
    planted = "import json\nimport selfimprove\n\ndef f():\n    from selfimprove.core import x\n"
    assert _selfimprove_imports(planted) == ["line 2: selfimprove", "line 5: selfimprove.core"]


def _tree(root: Path) -> Path:
    files = {
        "config.json": "{}",
        "model.safetensors": "weights",
        "sub/deeper/tokenizer.json": '{"v": 1}',
        "sub/a.txt": "a",
        "partial.tmp": "an interrupted write",
        "shards.tmp/part-0": "skipped too",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("length", [None, 36])
def test_folder_digest_agrees_with_core_digest(tmp_path, length):
    root = _tree(tmp_path / "model")
    expected = digest(root, length)
    assert mlflow_model.folder_digest(root, length) == expected
    assert len(expected) == (64 if length is None else length)
    (root / "another.tmp").write_text("ignored by both")
    assert mlflow_model.folder_digest(root, length) == digest(root, length) == expected
    (root / "sub" / "a.txt").write_text("b")
    assert mlflow_model.folder_digest(root, length) == digest(root, length) != expected


def test_default_length_is_what_mlflow_stores(tmp_path):
    from selfimprove.tracking.tags import DIGEST_CHARS, file_digest

    root = _tree(tmp_path / "model")
    assert mlflow_model.folder_digest(root) == file_digest(root)
    assert len(file_digest(root)) == DIGEST_CHARS


def test_importing_the_package_module_registers_no_model(monkeypatch):
    import importlib

    import mlflow.models.model

    monkeypatch.setattr(mlflow.models.model, "__mlflow_model__", None)
    importlib.reload(mlflow_model)
    assert mlflow.models.model.__mlflow_model__ is None
    assert MODEL_CODE_NAME == "selfimprove_model.py"  # the name inside models logged so far


def test_resolve_base_messages(tmp_path):
    root = _tree(tmp_path / "base")
    cfg = {"base_path": str(root), "base_digest": digest(root, 36), "base_hub_id": "hub/x"}
    assert mlflow_model.resolve_base(cfg) == str(root)
    assert mlflow_model.resolve_base(cfg | {"base_override": "/other"}) == "/other"
    with pytest.raises(RuntimeError, match="changed since this model was logged"):
        mlflow_model.resolve_base(cfg | {"base_digest": "0" * 36})
    gone = cfg | {"base_path": str(tmp_path / "gone")}
    with pytest.raises(RuntimeError, match="allow_hub_fallback"):
        mlflow_model.resolve_base(gone)
    with pytest.warns(UserWarning, match="loading hub/x from the hub"):
        assert mlflow_model.resolve_base(gone | {"allow_hub_fallback": True}) == "hub/x"
    with pytest.raises(RuntimeError, match="no base model recorded"):
        mlflow_model.resolve_base({})


def test_resolve_base_relative_path(tmp_path, monkeypatch):
    """A base_path relative to the project root: under base_root, $SELFIMPROVE_PROJECT_ROOT,
    else the cwd or a parent of it; the first copy with the recorded digest wins."""
    monkeypatch.delenv(mlflow_model.ROOT_ENV, raising=False)
    proj = tmp_path / "clone"
    root = _tree(proj / "data" / "models" / "base")
    cfg = {"base_path": "data/models/base", "base_digest": digest(root, 36), "base_hub_id": "h/x"}
    (proj / "data" / "rounds" / "r1").mkdir(parents=True)
    monkeypatch.chdir(proj / "data" / "rounds" / "r1")  # found in a parent of the cwd
    assert mlflow_model.resolve_base(cfg) == str(root)
    # a folder at the same relative path nearer the cwd, with other content, is skipped
    _tree(proj / "data" / "rounds" / "r1" / "data" / "models" / "base")
    (proj / "data" / "rounds" / "r1" / "data" / "models" / "base" / "sub" / "a.txt").write_text("")
    assert mlflow_model.resolve_base(cfg) == str(root)
    with pytest.raises(RuntimeError, match="changed since this model was logged"):
        mlflow_model.resolve_base(cfg | {"base_digest": "0" * 36})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="not found; restore it.*base_root"):
        mlflow_model.resolve_base(cfg)
    assert mlflow_model.resolve_base(cfg | {"base_root": str(proj)}) == str(root)
    monkeypatch.setenv(mlflow_model.ROOT_ENV, str(proj))
    assert mlflow_model.resolve_base(cfg) == str(root)
    # an explicit root is the only place looked in
    assert mlflow_model.base_candidates("data/x", str(proj)) == [proj / "data" / "x"]
    assert mlflow_model.base_candidates(str(root)) == [root]
    with pytest.warns(UserWarning, match="loading h/x from the hub"):
        got = mlflow_model.resolve_base(
            cfg | {"base_root": str(tmp_path / "none"), "allow_hub_fallback": True}
        )
    assert got == "h/x"
    assert "base_root" in mlflow_model.PASS_DOWN  # a chain of models resolves every base there


# ------------------------------------------------------------------ models logged before now

#: an adapter model logged by an older selfimprove (tests/fixtures/make_mlflow_adapter_model.py)
OLD_MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "mlflow_adapter_model"


def test_model_logged_before_references_no_selfimprove_module():
    """A logged adapter model carries its own code (MLflow "models from code": no pickled class,
    no code_paths), so moving or renaming selfimprove's modules cannot break loading it."""
    import yaml

    mlmodel = yaml.safe_load((OLD_MODEL / "MLmodel").read_text())
    assert set(mlmodel["flavors"]) == {"python_function"}
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(pyfunc["model_code_path"]).name == MODEL_CODE_NAME
    assert "python_model" not in pyfunc and not pyfunc["code"]
    assert not [p for p in OLD_MODEL.rglob("*") if p.suffix in (".pkl", ".pickle")]
    assert _selfimprove_imports((OLD_MODEL / MODEL_CODE_NAME).read_text()) == []
    # a model logged now may be trained on it: it passes these load-time keys down the chain
    assert set(mlflow_model.PASS_DOWN) <= set(pyfunc["config"])


def test_model_logged_before_loads(tmp_path):
    import mlflow
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from selfimprove.tiny import make_tiny_model

    model_dir = tmp_path / "old_model"
    shutil.copytree(OLD_MODEL, model_dir)
    base = make_tiny_model(tmp_path / "base", seed=0, hidden_size=16)
    loaded = mlflow.pyfunc.load_model(str(model_dir), model_config={"base_override": str(base)})
    got = loaded.unwrap_python_model().model.state_dict()
    start = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    plain = {k: v.clone() for k, v in start.state_dict().items()}
    want = PeftModel.from_pretrained(start, model_dir / "artifacts" / "adapter").merge_and_unload()
    want = want.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert any(not torch.equal(got[k], plain[k]) for k in plain)  # the adapter was applied
    out = loaded.predict(["Q: 5 + 6 ="])
    assert len(out) == 1 and isinstance(out[0], str)
    # the recorded base (relative path + digest) is still looked up as before
    with pytest.raises(RuntimeError, match="base model folder data/models/base not found"):
        mlflow.pyfunc.load_model(str(model_dir), model_config={"base_root": str(tmp_path)})
