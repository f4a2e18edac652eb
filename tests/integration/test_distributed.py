"""Multi-process fine-tuning: `accelerate launch` with 2 CPU processes (DDP, gloo).

Same global batch = same training: 1 process x batch 8, 1 process x batch 4 x grad_accum 2 and
2 processes x batch 4 (the finetune stage relaunching itself under $SELFIMPROVE_LAUNCH) give
the same loss at every step and the same merged weights.

Tolerance: the three runs see the same 8 examples per optimizer step (accelerate hands
consecutive per-process batches of the seeded permutation to the ranks) and transformers
normalises the loss by the token count of the whole global batch, so the only difference is
float32 summation order (two half-batch gradients all-reduced vs one batch); measured max
difference 1e-6 in the losses and 7e-7 in the weights. We allow 1e-4 relative on the losses and
1e-5 absolute on the weights: far below the per-step loss change (~1e-2) a real mismatch (other
examples, double counting, unsynchronised gradients) would cause. LoRA dropout is 0 here: with
dropout each rank draws its own masks, equal in distribution but not step by step.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tinyproject import ROOT, project_env

SETTINGS = {
    "epochs": 2,
    "logging_steps": 1,
    "learning_rate": 3e-3,
    "dtype": "float32",
    "max_length": 128,
    "lora": {"dropout": 0.0},
}
# --multi_gpu without GPUs = torchrun processes on CPU (accelerate picks gloo); --cpu would
# start a single process
LAUNCH = "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 "
LAUNCH += "--mixed_precision no --dynamo_backend no --main_process_port {port}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _examples() -> list[dict]:
    """32 examples with completions of different lengths (uneven token counts per rank)."""
    out = []
    for i in range(32):
        a, b = i * 7 % 50, i % 3 + 1
        steps = " ".join(f"{a} + {k} = {a + k}." for k in range(1, b + 1))
        out.append(
            {
                "prompt": f"Q: Jack has {a} stamps and buys {b} more. How many? A:",
                "completion": f" {steps} The answer is {a + b}.",
            }
        )
    return out


def _losses(model_dir: Path) -> list[tuple[int, float]]:
    lines = (model_dir / "train_log.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    from selfimprove.config.training import FinetuneConfig
    from selfimprove.training.finetune import finetune

    tmp = tmp_path_factory.mktemp("ddp")
    model = tiny_model
    examples = _examples()
    train = tmp / "train.jsonl"
    train.write_text("".join(json.dumps(e) + "\n" for e in examples))
    env = project_env(tmp, PYTHONPATH=str(ROOT))  # `-m stages.finetune` from this repository
    out: dict[str, Path] = {"base": model}

    # 1 process, batch 8 (the CLI, a subprocess)
    flat = {k: v for k, v in SETTINGS.items() if k != "lora"} | {"lora.dropout": 0.0}
    sets = [f"--set={k}={json.dumps(v)}" for k, v in (flat | {"batch_size": 8}).items()]
    cmd = [sys.executable, "-m", "selfimprove.training.finetune_cli", "--seed=1"]
    cmd += ["--model", str(model), "--train", str(train), "--out", str(tmp / "one"), *sets]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out["one"] = tmp / "one"

    # 1 process, batch 4 x grad_accum 2 (in this process)
    cfg = FinetuneConfig(**SETTINGS, batch_size=4, grad_accum=2)
    finetune(model, examples, tmp / "accum", cfg, seed=1)
    out["accum"] = tmp / "accum"

    # 2 processes x batch 4: the finetune stage relaunching itself under accelerate
    proj = tmp / "proj"
    (proj / "data" / "rounds" / "r1").mkdir(parents=True)
    shutil.copytree(model, proj / "data" / "rounds" / "r0" / "model")
    shutil.copy(train, proj / "data" / "rounds" / "r1" / "train.jsonl")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["seed"] = 0  # round r1 trains with seed + 1 = 1, like the runs above
    params["finetune"] |= {**SETTINGS, "batch_size": 4, "lora": {"dropout": 0.0}}
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    env2 = env | {"SELFIMPROVE_LAUNCH": LAUNCH.format(port=_free_port())}
    cmd = [sys.executable, "-m", "stages.finetune", "--round", "r1", "--prev", "r0"]
    proc = subprocess.run(cmd, cwd=proj, env=env2, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out["ddp"] = proj / "data" / "rounds" / "r1" / "model"
    out["ddp_stderr"] = proc.stderr
    return out


def test_two_processes_really_ran_distributed(runs):
    assert "launching accelerate launch --multi_gpu --num_processes 2" in runs["ddp_stderr"]
    info = json.loads((runs["ddp"].parents[0] / "finetune.json").read_text())
    one = json.loads((runs["one"] / "finetune_info.json").read_text())
    # 32 examples x 2 epochs / global batch 8 = 8 steps (not 16: the ranks split each batch)
    assert info["steps"] == one["steps"] == 8
    assert not (runs["ddp"].parent / "model.ckpt").exists()  # removed after success


def test_same_global_batch_same_loss_curve(runs):
    one, accum, ddp = (_losses(runs[k]) for k in ("one", "accum", "ddp"))
    assert [s for s, _ in one] == list(range(1, 9))
    assert [s for s, _ in ddp] == [s for s, _ in accum] == [s for s, _ in one]
    assert one[0][1] - one[-1][1] > 0.05  # the loss moves: the comparison means something
    for (_, a), (_, b), (_, c) in zip(one, accum, ddp, strict=True):
        assert b == pytest.approx(a, rel=1e-4)
        assert c == pytest.approx(a, rel=1e-4)


def test_same_global_batch_same_weights(runs):
    import torch

    one, ddp = _weights(runs["one"]), _weights(runs["ddp"])
    base = _weights(runs["base"])
    assert one.keys() == ddp.keys()
    moved = max((one[k] - base[k]).abs().max().item() for k in one)
    diff = max((one[k] - ddp[k]).abs().max().item() for k in one)
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)
    assert all(torch.isfinite(ddp[k]).all() for k in ddp)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED")],
)
def test_example_accelerate_configs_parse(name, kind):
    """The GPU example configs are valid accelerate configs (they were not run here)."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.value == kind and cfg.num_processes == 8
