"""Files outside the repo that params.yaml names are part of the DVC graph (the `inputs` stage).

On a tiny project: new content at the same path (a data.eval jsonl file, the base_model.local_path
folder) reruns the stage that reads it; unchanged content does not, and data/inputs/<stage>.json
stays byte for byte the same. Only the inputs, data and base_model stages run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tinyproject import dvc, new_project, run, tiny_params

pytestmark = pytest.mark.e2e


def _gsm(path: Path, n: int, offset: int = 0) -> None:
    """``n`` GSM8K-format records ({question, answer ending in #### N})."""
    rows = [
        {
            "question": f"Tom has {i + offset} apples and buys 2 more. How many apples has he?",
            "answer": f"{i + offset} + 2 = {i + offset + 2}\n#### {i + offset + 2}",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _repro(stage: str, proj: Path, env: dict) -> str:
    return run(dvc("repro", stage), proj, env).stdout


def _ran(stage: str, out: str) -> bool:
    if f"Stage '{stage}' didn't change, skipping" in out:
        return False
    assert f"Running stage '{stage}'" in out, out
    return True


def test_new_content_of_an_external_file_reruns_data(tmp_path, tiny_model):
    ext = tmp_path / "ext"
    ext.mkdir()
    _gsm(ext / "gsm.jsonl", 4)
    data = {"eval": {"gsm": {"source": "jsonl", "path": "../ext/gsm.jsonl"}}}
    proj, env = new_project(tmp_path / "proj", tiny_params(tiny_model, data=data))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as on a user's machine: __pycache__/ in src/
    record = proj / "data/inputs/data.json"

    assert _ran("data", _repro("data", proj, env))
    first = record.read_bytes()
    inputs = json.loads(first)
    assert inputs["data.eval.gsm"]["path"] == "../ext/gsm.jsonl"  # as params say it
    assert inputs["data.train"] is None and inputs["data.seed_set"] is None  # generated
    assert str(tmp_path) not in first.decode()  # no path of this machine params don't name

    out = _repro("data", proj, env)  # same content: the inputs stage reruns, data does not
    assert not _ran("data", out) and _ran("inputs", out)
    assert record.read_bytes() == first
    assert list((proj / "src/selfimprove/core").glob("__pycache__/*.pyc"))  # ignored by DVC

    _gsm(ext / "gsm.jsonl", 4, offset=10)  # new content, same path
    assert _ran("data", _repro("data", proj, env))
    assert record.read_bytes() != first
    assert "Tom has 10 apples" in (proj / "data/prepared/eval/gsm.jsonl").read_text()


def test_new_content_of_the_local_model_folder_reruns_base_model(tmp_path, tiny_model):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    base = {"source": "local", "local_path": str(model)}
    proj, env = new_project(tmp_path / "proj", tiny_params(tiny_model, base_model=base))
    record = proj / "data/inputs/base_model.json"

    assert _ran("base_model", _repro("base_model", proj, env))
    first = record.read_bytes()
    assert json.loads(first)["base_model.local"]["path"] == str(model)
    assert not _ran("base_model", _repro("base_model", proj, env))
    assert record.read_bytes() == first

    config = json.loads((model / "config.json").read_text())  # same path, new content
    (model / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 1024}))
    assert _ran("base_model", _repro("base_model", proj, env))
    assert (
        json.loads((proj / "data/models/base/config.json").read_text())["max_position_embeddings"]
        == 1024
    )
