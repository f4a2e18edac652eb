from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from selfimprove.config.tracking import TrackingConfig
from selfimprove.core.digest import file_sha256
from selfimprove.core.io import InputError
from selfimprove.tracking.health import check_tracking
from selfimprove.tracking.provenance import git_info
from selfimprove.tracking.registry import MODEL_CODE, MODEL_CODE_NAME
from selfimprove.tracking.runs import DatasetSpec, log_round
from selfimprove.tracking.tags import DIGEST_CHARS, file_digest, flatten

PIPE = "unit-pipe"


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One sqlite database for the whole module; each test sets the env var to it."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


@pytest.fixture
def uri(db, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return f"sqlite:///{db}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("round")
    train = d / "train.jsonl"
    train.write_text('{"question": "1+1?", "rationale": "1+1=2. The answer is 2."}\n')
    evalp = d / "eval_predictions.jsonl"
    evalp.write_text('{"question": "2+2?", "pred": "4", "correct": true}\n')
    adapter = d / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    merged = d / "merged"
    (merged / "sub").mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    (merged / "sub" / "w.bin").write_bytes(b"\1" * 8)
    (merged / "half.tmp").write_text("partial")
    metrics = d / "metrics.json"
    metrics.write_text(json.dumps({"accuracy": 0.5}))
    return {
        "dir": d,
        "train": train,
        "eval": evalp,
        "adapter": adapter,
        "merged": merged,
        "metrics": metrics,
    }


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _log(cfg, files, round_name, index, **kw):
    args = dict(
        round_name=round_name,
        round_index=index,
        params={"sample": {"n": 4, "temperature": 0.7}, "lora": {"targets": ["q", "v"]}},
        metrics={"accuracy": 0.25 + 0.25 * index, "bad": math.nan, "note": "x"},
        datasets=[
            DatasetSpec(files["train"], "train", "training"),
            DatasetSpec(files["eval"], "gsm8k-test", "evaluation"),
        ],
        artifacts=[files["metrics"], files["adapter"]],
        model_dir=files["merged"],
        adapter_dir=files["adapter"],
        base_model_ref="tiny-llama@abc",
        tags={"git.commit": "deadbeef", "method": "lmsi"},
        tables={"predictions": [{"question": "2+2?", "pred": "4", "paths": ["a", "b"]}]},
    )
    args.update(kw)
    return log_round(cfg, **args)


def _artifact_paths(client, run_id, path=None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        if a.is_dir:
            out |= _artifact_paths(client, run_id, a.path)
        else:
            out.add(a.path)
    return out


@pytest.fixture(scope="module")
def two_rounds(db, files):
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    try:
        cfg = TrackingConfig(pipeline=PIPE)
        r0 = _log(cfg, files, "r0", 0, adapter_dir=None)
        r1 = _log(cfg, files, "r1", 1)
    finally:
        mp.undo()
    return r0, r1


def test_parent_and_children(uri, two_rounds, files):
    r0, r1 = two_rounds
    client = _client(uri)
    exp = client.get_experiment_by_name("selfimprove")
    parents = client.search_runs(
        [exp.experiment_id],
        f"tags.`selfimprove.pipeline` = '{PIPE}' and tags.`selfimprove.role` = 'parent'",
    )
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == PIPE and parent.info.status == "FINISHED"
    for rid, name, idx in ((r0, "r0", 0), (r1, "r1", 1)):
        run = client.get_run(rid)
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"{PIPE}/{name}"
        t = run.data.tags
        assert t["mlflow.parentRunId"] == parent.info.run_id
        assert t["selfimprove.round"] == name and t["selfimprove.round_index"] == str(idx)
        assert t["git.commit"] == "deadbeef" and t["method"] == "lmsi"
        assert t["selfimprove.skipped_metrics"] == "2"
        assert t["selfimprove.base_model"] == "tiny-llama@abc"
        assert run.data.params["sample.temperature"] == "0.7"
        assert run.data.params["lora.targets"] == '["q", "v"]'
        # provenance: the environment, and no absolute path in any param or tag
        assert t["env.lock"] and t["env.torch"] and t["selfimprove.host"]
        values = list(run.data.params.values()) + list(t.values())
        assert not [v for v in values if Path(v).is_absolute() or "file:" in v]
        assert (Path.cwd() / t["selfimprove.model_dir"]).resolve() == files["merged"].resolve()
        assert run.data.metrics == {"accuracy": 0.25 + 0.25 * idx}
        hist = client.get_metric_history(rid, "accuracy")
        assert [m.step for m in hist] == [idx]
    hist = client.get_metric_history(parent.info.run_id, "accuracy")
    assert sorted((m.step, m.value) for m in hist) == [(0, 0.25), (1, 0.5)]
    assert "bad" not in client.get_run(parent.info.run_id).data.metrics


def test_dataset_inputs(uri, two_rounds, files):
    run = _client(uri).get_run(two_rounds[1])
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "gsm8k-test"}
    train = inputs["train"]
    assert train.dataset.digest == file_sha256(files["train"])[:DIGEST_CHARS]
    assert json.loads(train.dataset.source)["uri"] == str(files["train"])
    assert train.dataset.source_type == "local"
    ctx = {t.key: t.value for t in train.tags}["mlflow.data.context"]
    assert ctx == "training"
    ctx = {t.key: t.value for t in inputs["gsm8k-test"].tags}["mlflow.data.context"]
    assert ctx == "evaluation"


def test_artifacts(uri, db, two_rounds):
    client = _client(uri)
    r0, r1 = two_rounds
    # the database is not in the cwd: artifacts live next to it
    assert client.get_run(r1).info.artifact_uri.startswith((db.parent / "mlruns").as_uri())
    paths = _artifact_paths(client, r1)
    assert {
        "datasets/training/train.jsonl",
        "datasets/evaluation/eval_predictions.jsonl",
        "artifacts/metrics.json",
        "artifacts/adapter/adapter_config.json",
        "model/adapter/adapter_config.json",
        "model/adapter/adapter_model.safetensors",
        "tables/predictions.json",
    } <= paths
    assert not any(p.startswith("model/merged") for p in paths)
    table = json.loads(Path(client.download_artifacts(r1, "tables/predictions.json")).read_text())
    assert table["columns"] == ["question", "pred", "paths"]
    assert table["data"] == [["2+2?", "4", '["a", "b"]']]
    # r0 had no adapter: nothing under model/
    assert not any(p.startswith("model/") for p in _artifact_paths(client, r0))


def test_merged_model_skips_tmp(uri, files):
    # registry off: the merged folder is logged as plain files (with it on: as an MLflow model)
    cfg = TrackingConfig(pipeline="merged-pipe", log_model="merged", registered_model=None)
    rid = _log(cfg, files, "r1", 1, datasets=[], artifacts=[], tables=None)
    paths = _artifact_paths(_client(uri), rid)
    assert paths == {"model/merged/config.json", "model/merged/sub/w.bin"}


def test_rerun_marks_old_superseded(uri, files):
    cfg = TrackingConfig(pipeline="rerun-pipe", log_model="none")
    kw = dict(datasets=[], artifacts=[], tables=None)
    first = _log(cfg, files, "r1", 1, **kw)
    other = _log(cfg, files, "r2", 2, **kw)
    second = _log(cfg, files, "r1", 1, **kw)
    client = _client(uri)
    assert first != second
    assert client.get_run(first).data.tags["selfimprove.superseded"] == "true"
    assert client.get_run(second).data.tags["selfimprove.superseded"] == "false"
    assert client.get_run(other).data.tags["selfimprove.superseded"] == "false"
    assert _artifact_paths(client, second) == set()  # log_model=none


def test_failure_marks_run_failed(uri, files, monkeypatch):
    import selfimprove.tracking.runs as tr

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(tr, "_table_frame", boom)
    cfg = TrackingConfig(pipeline="fail-pipe", log_model="none")
    with pytest.raises(RuntimeError, match="boom"):
        _log(cfg, files, "r0", 0, datasets=[], artifacts=[])
    client = _client(uri)
    exp = client.get_experiment_by_name("selfimprove")
    runs = client.search_runs(
        [exp.experiment_id],
        "tags.`selfimprove.pipeline` = 'fail-pipe' and tags.`selfimprove.role` = 'round'",
    )
    assert [r.info.status for r in runs] == ["FAILED"]


def test_missing_inputs_raise_before_any_run(uri, files):
    cfg = TrackingConfig(pipeline="missing-pipe")
    missing = files["dir"] / "nope.jsonl"
    with pytest.raises(InputError, match="nope.jsonl"):
        _log(cfg, files, "r0", 0, datasets=[DatasetSpec(missing, "x", "training")])
    with pytest.raises(InputError, match="round_name"):
        _log(cfg, files, "r'0", 0)
    client = _client(uri)
    exp = client.get_experiment_by_name("selfimprove")
    assert not client.search_runs(
        [exp.experiment_id], "tags.`selfimprove.pipeline` = 'missing-pipe'"
    )


def test_disabled_logs_nothing(tmp_path, monkeypatch, files):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/off/m.db")
    assert _log(TrackingConfig(enabled=False), files, "r0", 0) == ""
    check_tracking(TrackingConfig(enabled=False))
    assert not (tmp_path / "off").exists()


def test_config_validation():
    with pytest.raises(ValidationError):
        TrackingConfig(unknown=1)
    with pytest.raises(ValidationError):
        TrackingConfig(log_model="full")
    with pytest.raises(ValidationError):
        TrackingConfig(pipeline="it's")
    assert TrackingConfig.model_fields["pipeline"].description


def test_flatten():
    flat = flatten({"a": {"b": 1, "c": {"d": True}}, "e": [1, 2], "f": "x" * 7000})
    assert flat["a.b"] == "1" and flat["a.c.d"] == "True" and flat["e"] == "[1, 2]"
    assert len(flat["f"]) == 6000 and flat["f"].endswith("...")


def test_file_digest_and_git_info(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("{}\n")
    assert file_digest(f) == file_sha256(f)[:DIGEST_CHARS]
    d = tmp_path / "m"
    d.mkdir()
    (d / "w.bin").write_bytes(b"1")
    before = file_digest(d)
    (d / "x.tmp").write_text("ignored")
    assert file_digest(d) == before
    (d / "w.bin").write_bytes(b"2")
    assert file_digest(d) != before
    with pytest.raises(InputError):
        file_digest(tmp_path / "missing")

    assert git_info(tmp_path) == {}
    try:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        for args in (
            ["add", "x.jsonl"],
            ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "init"],
        ):
            subprocess.run(["git", "-C", str(tmp_path), *args], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not usable here")
    info = git_info(tmp_path)
    assert len(info["commit"]) == 40 and info["dirty"] == "false"
    f.write_text("changed\n")
    assert git_info(tmp_path)["dirty"] == "true"


# --------------------------------------------------------------------------- model registry


def _lora_round(prev: Path, out: Path, seed: int) -> Path:
    """A round folder as finetune writes it: merged weights + adapter/ trained on ``prev``."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(prev, dtype=torch.float32)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(out / "adapter")  # random, non-zero update
    base = AutoModelForCausalLM.from_pretrained(prev, dtype=torch.float32)
    PeftModel.from_pretrained(base, out / "adapter").merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(prev).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from selfimprove.tiny import make_tiny_model

    d = tmp_path_factory.mktemp("chain")
    r0 = make_tiny_model(d / "r0")
    r1 = _lora_round(r0, d / "r1", 1)
    r2 = _lora_round(r1, d / "r2", 2)
    return {"r0": r0, "r1": r1, "r2": r2}


IDS = [[5, 6, 7, 8, 9, 10]]
KEY = "arith_1step.fewshot_cot.strict"


def _logits(model):
    import torch

    with torch.no_grad():
        return model(torch.tensor(IDS)).logits


def _source_logits(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return _logits(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))


def _log_model_round(cfg, chain, name, value, **kw):
    folder = chain[name]
    adapter = folder / "adapter"
    return log_round(
        cfg,
        round_name=name,
        round_index=int(name[1:]),
        metrics={"arith_1step": {"fewshot_cot": {"strict": value}}, "other": 1.0},
        model_dir=folder,
        adapter_dir=adapter if adapter.is_dir() else None,
        base_model_ref="tiny-base",
        **kw,
    )


def _pyfunc_config(model_uri: str) -> dict:
    import mlflow

    return mlflow.models.get_model_info(model_uri).flavors["python_function"]["config"]


def _versions(client, name):
    return {mv.version: mv for mv in client.search_model_versions(f"name = '{name}'")}


def test_registry_adapter_chain_and_best_alias(uri, chain):
    import mlflow
    import torch

    cfg = TrackingConfig(pipeline="reg-adapter")
    name = "selfimprove-reg-adapter"
    runs = {
        r: _log_model_round(cfg, chain, r, v) for r, v in (("r0", 0.2), ("r1", 0.5), ("r2", 0.4))
    }
    client = _client(uri)
    versions = _versions(client, name)
    assert sorted(mv.tags["round"] for mv in versions.values()) == ["r0", "r1", "r2"]
    by_round = {mv.tags["round"]: mv for mv in versions.values()}
    assert {r: by_round[r].run_id for r in runs} == runs
    best = client.get_model_version_by_alias(name, "best")
    assert best.tags["round"] == "r1"
    assert client.get_registered_model(name).tags["best_round"] == "r1"
    assert client.get_run(runs["r1"]).data.tags["selfimprove.registered_model"] == (
        f"{name}/{best.version}"
    )
    # r1 was trained on r0's model: its MLflow model points at r0's version, not at a folder
    conf = _pyfunc_config(f"models:/{name}/{best.version}")
    assert conf["base_model_uri"] == f"models:/{name}/{by_round['r0'].version}"
    assert not conf["base_path"] and not conf["allow_hub_fallback"]
    r0_conf = _pyfunc_config(f"models:/{name}/{by_round['r0'].version}")
    # the base folder is recorded relative to the project root (the cwd), never absolute
    assert not Path(r0_conf["base_path"]).is_absolute() and r0_conf["base_digest"]
    # models from code: no pickled class whose module path a rename could break (see
    # test_mlflow_model.py's model logged before now)
    flavor = mlflow.models.get_model_info(f"models:/{name}/{best.version}").flavors
    assert flavor["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert (Path.cwd() / r0_conf["base_path"]).resolve() == chain["r0"].resolve()
    # the model carries its code: a copy of tracking/mlflow_model.py, under its old file name
    code = mlflow.artifacts.download_artifacts(f"models:/{name}/{best.version}/{MODEL_CODE_NAME}")
    assert Path(code).read_text() == MODEL_CODE.read_text()

    loaded = mlflow.pyfunc.load_model(f"models:/{name}@best")
    inner = loaded.unwrap_python_model()
    torch.testing.assert_close(_logits(inner.model), _source_logits(chain["r1"]), rtol=0, atol=1e-5)
    # one greedy generation, same as the source folder's
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chain["r1"])
    src = AutoModelForCausalLM.from_pretrained(chain["r1"], dtype=torch.float32)
    enc = tok("Q: 5 + 6 =", return_tensors="pt")
    ids = src.generate(**enc, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert loaded.predict(["Q: 5 + 6 ="]) == [expected]

    # rerun r2 with a better score: alias moves, the old r2 version is superseded
    new_r2 = _log_model_round(cfg, chain, "r2", 0.6)
    versions = _versions(client, name)
    best = client.get_model_version_by_alias(name, "best")
    assert best.run_id == new_r2 and best.tags["round"] == "r2"
    old_r2 = next(mv for mv in versions.values() if mv.run_id == runs["r2"])
    assert old_r2.tags["selfimprove.superseded"] == "true"
    # r2 -> r1 version -> r0 folder: two adapters applied in turn
    inner = mlflow.pyfunc.load_model(f"models:/{name}@best").unwrap_python_model()
    torch.testing.assert_close(_logits(inner.model), _source_logits(chain["r2"]), rtol=0, atol=1e-5)


def test_registry_merged_roundtrip(uri, chain):
    import mlflow
    import torch

    cfg = TrackingConfig(pipeline="reg-merged", log_model="merged")
    name = "selfimprove-reg-merged"
    _log_model_round(cfg, chain, "r0", 0.3)
    r1 = _log_model_round(cfg, chain, "r1", 0.1)
    client = _client(uri)
    assert client.get_model_version_by_alias(name, "best").tags["round"] == "r0"
    # weights are in the MLflow model, not duplicated as run artifacts
    assert not any(p.startswith("model/") for p in _artifact_paths(client, r1))
    flavors = mlflow.models.get_model_info(f"models:/{name}@best").flavors
    assert flavors["python_function"]["loader_module"] == "mlflow.transformers"  # no own code
    comp = mlflow.transformers.load_model(f"models:/{name}@best", return_type="components")
    torch.testing.assert_close(_logits(comp["model"]), _source_logits(chain["r0"]), rtol=0, atol=0)
    comp = mlflow.transformers.load_model(f"models:/{name}/2", return_type="components")
    torch.testing.assert_close(_logits(comp["model"]), _source_logits(chain["r1"]), rtol=0, atol=0)


def test_registry_off_and_missing_metric(uri, chain, caplog):
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    run = _log_model_round(
        TrackingConfig(pipeline="reg-off", registered_model=None), chain, "r0", 1
    )
    assert "selfimprove.registered_model" not in client.get_run(run).data.tags
    with pytest.raises(MlflowException):
        client.get_registered_model("selfimprove-reg-off")

    cfg = TrackingConfig(pipeline="reg-nometric", best_metric="arith_1step.fewshot_cot.strikt")
    with caplog.at_level("WARNING", logger="selfimprove.tracking.registry"):
        _log_model_round(cfg, chain, "r0", 0.5)
    assert "did you mean arith_1step.fewshot_cot.strict" in caplog.text
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("selfimprove-reg-nometric", "best")


def test_registry_base_folder_changed_or_missing(uri, chain, tmp_path):
    import shutil

    import mlflow
    import torch

    # r1's adapter trained on a base folder that no registered version holds -> a folder ref
    base = shutil.copytree(chain["r0"], tmp_path / "base")
    r1 = shutil.copytree(chain["r1"], tmp_path / "r1")
    conf_file = r1 / "adapter" / "adapter_config.json"
    conf = json.loads(conf_file.read_text()) | {"base_model_name_or_path": str(base)}
    conf_file.write_text(json.dumps(conf))
    (base / "extra.txt").write_text("makes the digest differ from the chain's r0")
    cfg = TrackingConfig(pipeline="reg-changed")
    log_round(
        cfg, round_name="r1", round_index=1, metrics={KEY: 0.2}, model_dir=r1,
        adapter_dir=r1 / "adapter",
    )  # fmt: skip
    best = "models:/selfimprove-reg-changed@best"
    base_path = _pyfunc_config(best)["base_path"]
    assert not Path(base_path).is_absolute()
    assert (Path.cwd() / base_path).resolve() == base.resolve()
    assert not _pyfunc_config(best)["base_model_uri"]
    (base / "config.json").write_text((base / "config.json").read_text() + " ")
    with pytest.raises(Exception, match="changed since this model was logged"):
        mlflow.pyfunc.load_model(best)
    shutil.rmtree(base)
    with pytest.raises(Exception, match="not found; restore it"):
        mlflow.pyfunc.load_model(best)
    # a load-time override points at another copy of the base
    inner = mlflow.pyfunc.load_model(
        best, model_config={"base_override": str(chain["r0"])}
    ).unwrap_python_model()
    torch.testing.assert_close(_logits(inner.model), _source_logits(chain["r1"]), rtol=0, atol=1e-5)


def test_registry_config_validation():
    assert TrackingConfig(pipeline="p1").registered_model_name() == "selfimprove-p1"
    assert TrackingConfig(registered_model="shared").registered_model_name() == "shared"
    with pytest.raises(ValidationError, match="must not contain"):
        TrackingConfig(registered_model="a/b")
    with pytest.raises(ValidationError, match="rename the pipeline"):
        TrackingConfig(pipeline="exp:1")
    assert TrackingConfig(pipeline="exp:1", registered_model=None).registered_model_name() is None
    with pytest.raises(ValidationError):
        TrackingConfig(registered_model="")
