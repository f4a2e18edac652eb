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
    one = {"processes": 1}
    problems = preflight(_params(base_model=base, generate=gen, sampler=smp, compute=one))
    assert len(problems) == 1 and problems[0].startswith("sampler.batch_size=1000000 cannot")
    fit = _fit(problems[0], "sampler.batch_size")
    assert 32 <= fit < 1_000_000
    fits = {"batch_size": fit}
    assert preflight(_params(base_model=base, generate=gen, sampler=fits, compute=one)) == []
    # each sampling process holds its own model and cache: at that batch, 2 do not fit
    (msg,) = preflight(_params(base_model=base, generate=gen, sampler=fits,
                               compute={"processes": 2}))
    assert msg.startswith("compute.processes=2: generate.num_paths=4096 in 2 sampling processes")
    assert msg.endswith("use compute.processes: 1")
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
        tracking={"best_metric": "gsm.fewshot_cot.strict"},
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
        "tracking": {"best_metric": "gsm.fewshot_cot.strict"},
        "rounds": {"r1": {"prev": "r0"}},
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


# --------------------------------------------------------------------------- second round:
# what the run needs of the params file, the model and the names params gives


def test_check_params_file_must_build_a_round(tmp_path):
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "dvc.yaml").write_text((root / "dvc.yaml").read_text())
    uri = f"sqlite:///{tmp_path}/m.db"
    for text in ("", "# only a comment\n", "rounds: {}\n", "rounds:\n"):
        (tmp_path / "params.yaml").write_text(text)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        cmd = [sys.executable, "-m", "selfimprove.cli", "check"]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 2, (text, proc.stdout)
        assert "rounds" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]
    # a section a stage lists under params: but the file leaves out (DVC stops on it)
    shipped = yaml.safe_load((root / "params.yaml").read_text())
    del shipped["generate"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shipped))
    problems = pf.params_file_problems(tmp_path / "params.yaml", tmp_path)
    assert len(problems) == 1 and "generate" in problems[0] and "missing param" in problems[0]
    (tmp_path / "params.yaml").write_text((root / "params.yaml").read_text())
    assert pf.params_file_problems(tmp_path / "params.yaml", tmp_path) == []
    # a passing check creates nothing: not the sqlite database's folders, no probe file
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/a/b/m.db"}
    cmd = [sys.executable, "-m", "selfimprove.cli", "check"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]


def _fake_model(folder: Path, modules: list[str], context: int = 256) -> Path:
    """A model folder without weights: config.json and a safetensors header (no tensor data)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**SMOL, "max_position_embeddings": context}))
    header = {f"model.layers.0.{m}.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
              for m in modules}  # fmt: skip
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    return folder


def test_lora_targets_and_token_budget_checked_against_the_model(project):
    _fake_model(project / "m", ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"], 1024)
    base = {"source": "local", "local_path": "m"}
    ok = {"lora": {"target_modules": ["q_proj", "v_proj"]}}
    assert pf.model_fit_problems(_params(base_model=base, finetune=ok), project) == []
    bad = {"lora": {"target_modules": ["q_proj", "qkv", "c_attn"]}}
    problems = pf.model_fit_problems(_params(base_model=base, finetune=bad), project)
    assert len(problems) == 1 and "['qkv', 'c_attn']" in problems[0], problems
    assert "q_proj" in problems[0].split("e.g.")[1]  # the fix names modules the model has
    assert (
        pf.model_fit_problems(_params(base_model=base, finetune={**bad, "method": "full"}), project)
        == []
    )  # full fine-tuning: no targets
    problems = pf.model_fit_problems(
        _params(base_model=base, finetune=ok, generate={"max_new_tokens": 1000}), project
    )
    assert len(problems) == 1 and "generate.max_new_tokens=1000" in problems[0]
    assert "context of 1024 tokens" in problems[0]
    assert pf.model_fit_problems(_params(base_model=base, finetune=bad), project / "none") == []
    budgets = {"refine": {"feedback_max_new_tokens": 2000}, "finetune": {**ok, "max_length": 4096}}
    problems = pf.model_fit_problems(_params(base_model=base, **budgets), project)
    assert len(problems) == 2, problems
    assert "refine.feedback_max_new_tokens=2000 exceeds the model's context of 1024" in problems[0]
    assert "finetune.max_length=4096" in problems[1] and "<= 1024" in problems[1]


def test_best_metric_must_name_an_evaluate_metric(project):
    assert pf.metric_name_problems(_params()) == []
    for name in (
        "arith_1step.fewshot_cot.strictt",
        "nope.fewshot_cot.strict",
        "arith_1step.sc.maj@99",
        "arith_1step",
        "arith_1step.fewshot_cot.strict.x",
    ):
        problems = pf.metric_name_problems(_params(tracking={"best_metric": name}))
        assert len(problems) == 1 and repr(name) in problems[0], name
    good = ("arith_1step.sc.maj@8", "arith_1step.zeroshot_cot.flexible")
    for name in good:
        assert pf.metric_name_problems(_params(tracking={"best_metric": name})) == [], name
    label_free = _params(tracking={"best_metric": "x", "best_by": "label_free"})
    assert pf.metric_name_problems(label_free) == []  # not used
    unused = _params(tracking={"best_metric": "x", "registered_model": None})
    assert pf.metric_name_problems(unused) == []
    other = _params(tracking={"best_metric": "filter.mean_agreement"})
    assert pf.metric_name_problems(other) == []  # another step's logged metric


def test_hub_ids_must_be_well_formed(project):
    for bad in ("org/name/extra", "bad id", "org/na..me", "-org/x"):
        params = _params(base_model={"source": "hub", "hub_id": bad})
        problems = pf.hub_id_problems(params, project)
        assert len(problems) == 1 and "not a valid hub id" in problems[0], bad
    params = _params(base_model={"source": "hub", "hub_id": "HuggingFaceTB/SmolLM2-135M"})
    assert pf.hub_id_problems(params, project) == []
    data = {"eval": {"d": {"source": "drop_hub", "hub_id": "a b"}}}
    assert len(pf.hub_id_problems(_params(data=data), project)) == 1


def test_model_folder_that_is_a_file_or_a_symlink_loop(project):
    (project / "model.bin").write_text("x")
    (project / "loop").symlink_to(project / "loop")
    problems = preflight(_params(base_model={"source": "local", "local_path": "model.bin"}))
    assert any("is a file, expected a folder" in p for p in problems), problems
    problems = preflight(_params(base_model={"source": "local", "local_path": "loop"}))
    assert any("symlink loop" in p for p in problems), problems
    ms = {"teacher": "lm", "teacher_model": "./model.bin"}
    seed = {"source": "arith", "n": 8}
    problems = preflight(_params(method="self", data={"seed_set": seed}, meta_skill=ms))
    assert any("is a file, expected a folder" in p for p in problems), problems


def test_hub_model_checked_from_the_local_cache(project, monkeypatch):
    """A hub base model not fetched into data/models/base yet: its cached config.json and
    safetensors header are read (no download, no weights)."""
    import huggingface_hub

    snap = _fake_model(project / "cache" / "snap", ["self_attn.q_proj"], 1024)
    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(snap / "config.json")
    )
    params = _params(
        base_model={"source": "hub", "hub_id": "org/model"},
        finetune={"lora": {"target_modules": ["q_proj", "up_proj"]}},
    )
    problems = pf.model_fit_problems(params, project)
    assert len(problems) == 1 and "['up_proj']" in problems[0], problems
