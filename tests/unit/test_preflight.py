"""preflight(): every problem the run would hit, at once and in well under a second, before any
model loads; and `selfimprove check` end to end (exit 2, one line per problem)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from selfimprove import preflight as pf
from selfimprove.config import parse_params
from selfimprove.preflight import memory_problems, preflight

GIB = 2**30
#: SmolLM2-135M's shape (the default base model): a config.json without weights
SMOL = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "vocab_size": 49152,
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project folder as the working directory, tracking to a sqlite file in it and
    8 GiB of memory available (so the memory verdicts do not depend on the machine)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(pf, "available_bytes", lambda: 8 * GIB)
    return tmp_path


def _params(**sections):
    return parse_params(sections)


def _fit(problem: str, key: str) -> int:
    m = re.search(rf"use {re.escape(key)} <= (\d+)", problem)
    assert m, problem
    return int(m.group(1))


def test_defaults_have_no_problem(project):
    assert preflight(_params()) == []


def test_num_paths_billion_refused_fast_with_a_value_that_fits(project):
    """Before: `generate` died with MemoryError after 52 s and 7 GB."""
    t0 = time.monotonic()
    problems = preflight(_params(generate={"num_paths": 1_000_000_000}))
    assert time.monotonic() - t0 < 1.0
    assert len(problems) == 1, problems
    (msg,) = problems
    assert msg.startswith("generate.num_paths=1000000000 cannot fit in memory")
    assert "8.0 GiB available" in msg and "\n" not in msg
    fit = _fit(msg, "generate.num_paths")
    assert 8 <= fit < 1_000_000_000
    assert preflight(_params(generate={"num_paths": fit})) == []


def test_memory_estimate_uses_the_model_config(project):
    """With the model's config.json (SmolLM2-135M shape), the KV cache of a huge decoding batch
    is refused, naming the batch key and a batch size that fits."""
    model = project / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(SMOL))
    base = {"source": "local", "local_path": "model"}
    gen, smp = {"num_paths": 4096, "shard_size": 32}, {"batch_size": 1_000_000}
    problems = preflight(_params(base_model=base, generate=gen, sampler=smp))
    assert len(problems) == 1 and problems[0].startswith("sampler.batch_size=1000000 cannot")
    fit = _fit(problems[0], "sampler.batch_size")
    assert 32 <= fit < 1_000_000
    assert preflight(_params(base_model=base, generate=gen, sampler={"batch_size": fit})) == []
    # the same settings without the model folder: only what does not depend on the model
    assert preflight(_params(generate=gen, sampler=smp)) == []


def test_evaluate_sc_paths_refused(project):
    problems = preflight(_params(evaluate={"sc_paths": 10**9, "sc_k": [1]}))
    assert len(problems) == 1 and problems[0].startswith("evaluate.sc_paths=1000000000")


def test_memory_problems_measured_floor():
    """The estimate rests on the measured floor: 128 x 8 default paths need well under 1 MiB."""
    params = _params()
    assert memory_problems(params, pf.BASE_BYTES + 2**20, None) == []
    assert memory_problems(params, pf.BASE_BYTES + 2**10, None)  # 1 KiB left: refused


def test_every_problem_at_once(project, monkeypatch):
    """Missing data files, a folder where a file belongs, a missing base model folder and
    in-memory tracking: all reported together, one line each."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///")
    (project / "adir").mkdir()
    params = _params(
        base_model={"source": "local", "local_path": "no-model"},
        data={
            "train": {"source": "jsonl", "path": "adir"},
            "eval": {"gsm": {"source": "jsonl", "path": "missing/test.jsonl", "n": 5}},
        },
    )
    problems = preflight(params)
    assert len(problems) == 4, problems
    joined = "\n".join(problems)
    assert "in-memory sqlite" in joined
    assert "data.train.path 'adir': not a file" in joined
    assert "data.eval.gsm.path 'missing/test.jsonl': file not found" in joined
    assert "base_model.local_path 'no-model'" in joined
    assert all("\n" not in p for p in problems)


def test_tracking_disabled_is_not_checked(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///")
    assert preflight(_params(tracking={"enabled": False})) == []


def test_local_teacher_model_must_exist(project):
    seed = {"source": "arith", "n": 8}
    ms = {"teacher": "lm", "teacher_model": "./teacher"}
    problems = preflight(_params(method="self", data={"seed_set": seed}, meta_skill=ms))
    assert len(problems) == 1 and "meta_skill.teacher_model './teacher'" in problems[0]
    (project / "teacher").mkdir()
    problems = preflight(_params(method="self", data={"seed_set": seed}, meta_skill=ms))
    assert len(problems) == 1 and "no config.json" in problems[0]
    # a hub id is not a local path: nothing to check offline here
    ms["teacher_model"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert preflight(_params(method="self", data={"seed_set": seed}, meta_skill=ms)) == []


# --------------------------------------------------------------------------- the command


def _check(cwd: Path, params: dict, uri: str) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "selfimprove.cli", "check"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_selfimprove_check_end_to_end(tmp_path):
    """Bad tracking, a missing file and an impossible setting: exit 2, each on its own line,
    no traceback, no secret, in seconds; then the fixed file says OK."""
    bad = {
        "generate": {"num_paths": 1_000_000_000},
        "data": {"eval": {"gsm": {"source": "jsonl", "path": "gone.jsonl", "n": 5}}},
    }
    t0 = time.monotonic()
    proc = _check(tmp_path, bad, "postgresql://mlflow:hunter2@127.0.0.1/mlflow?x=1")
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, proc.stderr
    assert "3 problem(s)" in proc.stderr and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
    assert any("generate.num_paths=1000000000" in e for e in errors)
    assert any("gone.jsonl" in e for e in errors)
    assert any("MLFLOW_TRACKING_URI=postgresql://mlflow:***@" in e for e in errors)

    proc = _check(tmp_path, {"rounds": {"r1": {"prev": "r0"}}}, f"sqlite:///{tmp_path}/m.db")
    assert proc.returncode == 0, proc.stderr
    assert (
        "params.yaml: OK" in proc.stdout and f"tracking: sqlite:///{tmp_path}/m.db" in proc.stdout
    )
