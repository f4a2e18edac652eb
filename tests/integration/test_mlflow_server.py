"""The tracking code against a real ``mlflow server`` (sqlite backend, proxied artifacts).

Starts the server as a subprocess in its own session on a free port, logs two tiny rounds
(r0: the tiny model; r1: a LoRA adapter on it) through ``http://127.0.0.1:PORT``, and checks
with ``MlflowClient`` that runs, metrics, dataset inputs, artifacts, the registered model and
its ``best`` alias are there, and that the best model loads back through the server with the
source folder's logits. The server's process group is killed in a ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from selfimprove.config.tracking import TrackingConfig
from selfimprove.core.io import InputError
from selfimprove.tracking.health import check_tracking
from selfimprove.tracking.runs import DatasetSpec, log_report, log_round

START_TIMEOUT_S = 60
PIPE = "server-pipe"
NAME = f"selfimprove-{PIPE}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = open(tmp / "server.log", "w")  # noqa: SIM115 - closed in the finally
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination", str(tmp / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.Popen(
        cmd, cwd=tmp, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                log_file.flush()
                tail = (tmp / "server.log").read_text()[-3000:]
                pytest.fail(f"mlflow server did not come up on {url}:\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log_file.close()


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    """r0 = a tiny model folder; r1 = merged weights + adapter/ trained (randomly) on r0."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfimprove.tiny import make_tiny_model

    d = tmp_path_factory.mktemp("rounds")
    r0 = make_tiny_model(d / "r0")
    r1 = d / "r1"
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(r0, dtype=torch.float32)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(r1 / "adapter")
    base = AutoModelForCausalLM.from_pretrained(r0, dtype=torch.float32)
    PeftModel.from_pretrained(base, r1 / "adapter").merge_and_unload().save_pretrained(r1)
    AutoTokenizer.from_pretrained(r0).save_pretrained(r1)
    (d / "rationales.jsonl").write_text('{"id": "q1", "agreement": 1.0, "majority": "2"}\n')
    (d / "train.jsonl").write_text('{"prompt": "Q: 1+1?\\nA:", "completion": " 2."}\n')
    (d / "metrics.json").write_text(json.dumps({"arith_1step": {"fewshot_cot": {"strict": 0.5}}}))
    return {"dir": d, "r0": r0, "r1": r1}


@pytest.fixture(scope="module")
def logged(server, rounds):
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", server)
    try:
        cfg = TrackingConfig(pipeline=PIPE)
        check_tracking(cfg)
        d = rounds["dir"]
        runs = {}
        for name, acc in (("r0", 0.25), ("r1", 0.5)):
            folder = rounds[name]
            adapter = folder / "adapter"
            runs[name] = log_round(
                cfg,
                round_name=name,
                round_index=int(name[1:]),
                params={"generate": {"num_paths": 4}},
                metrics={"arith_1step": {"fewshot_cot": {"strict": acc}}, "filter": {"kept": 1}},
                datasets=[
                    DatasetSpec(d / "rationales.jsonl", f"{name}-rationales", "rationales"),
                    DatasetSpec(d / "train.jsonl", f"{name}-train", "training"),
                ],
                artifacts=[d / "metrics.json"],
                model_dir=folder,
                adapter_dir=adapter if adapter.is_dir() else None,
                base_model_ref="tiny-base",
                tags={"method": "lmsi"},
                tables={"predictions": [{"q": "1+1?", "pred": "2"}]},
            )
        parent = log_report(cfg, [d / "metrics.json"])
    finally:
        mp.undo()
    return runs, parent


def test_runs_metrics_inputs_artifacts(server, logged, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)  # MLflow falls back to it in places
    runs, parent_id = logged
    client = MlflowClient(tracking_uri=server)
    parent = client.get_run(parent_id)
    assert parent.data.tags["selfimprove.role"] == "parent" and parent.info.run_name == PIPE
    hist = client.get_metric_history(parent_id, "arith_1step.fewshot_cot.strict")
    assert sorted((m.step, m.value) for m in hist) == [(0, 0.25), (1, 0.5)]
    for name, run_id in runs.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["selfimprove.round"] == name and run.data.tags["method"] == "lmsi"
        assert run.data.params["generate.num_paths"] == "4"
        assert run.data.metrics["filter.kept"] == 1.0
        inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
        assert set(inputs) == {f"{name}-rationales", f"{name}-train"}
        assert len(inputs[f"{name}-train"].dataset.digest) == 36
    arts = {a.path for a in client.list_artifacts(runs["r1"])}
    assert {"artifacts", "datasets", "model", "tables"} <= arts
    adapter = {a.path for a in client.list_artifacts(runs["r1"], "model/adapter")}
    assert "model/adapter/adapter_config.json" in adapter
    table = json.loads(
        Path(client.download_artifacts(runs["r1"], "tables/predictions.json")).read_text()
    )
    assert table["data"] == [["1+1?", "2"]]
    assert {a.path for a in client.list_artifacts(parent_id, "report")} == {"report/metrics.json"}


def test_registered_model_and_best_alias(server, logged, rounds, monkeypatch):
    import mlflow
    import torch
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    runs, _ = logged
    client = MlflowClient(tracking_uri=server)
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert sorted(mv.tags["round"] for mv in versions) == ["r0", "r1"]
    assert {mv.run_id for mv in versions} == set(runs.values())
    best = client.get_model_version_by_alias(NAME, "best")
    assert best.tags["round"] == "r1" and best.run_id == runs["r1"]

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@best").unwrap_python_model().model
    src = AutoModelForCausalLM.from_pretrained(rounds["r1"], dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, src(ids).logits, rtol=0, atol=1e-5)


def test_check_tracking_dead_port_fails_fast(monkeypatch):
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    t0 = time.monotonic()
    with pytest.raises(InputError, match="does not answer"):
        check_tracking(TrackingConfig())
    assert time.monotonic() - t0 < 5
    with pytest.raises(InputError):  # log_round checks before creating anything
        log_round(TrackingConfig(), round_name="r0", round_index=0, metrics={"a": 1.0})
