"""Multi-process fine-tuning: `accelerate launch` with 2 CPU processes (DDP, gloo).

Same global batch = same training: 1 process x batch 8, 1 process x batch 4 x grad_accum 2 and
2 processes splitting each batch of 8 (`finetune.processes: 2`: the finetune stage launches
them) give the same loss at every step and the same merged weights.

Tolerance: the three runs see the same 8 examples per optimizer step (accelerate hands
consecutive per-process batches of the seeded permutation to the ranks) and transformers
normalises the loss by the token count of the whole global batch, so the only difference is
float32 summation order (two half-batch gradients all-reduced vs one batch); measured max
difference 1e-6 in the losses and 7e-7 in the weights. We allow 1e-4 relative on the losses and
1e-5 absolute on the weights: far below the per-step loss change (~1e-2) a real mismatch (other
examples, double counting, unsynchronised gradients) would cause. LoRA dropout is 0 here: with
dropout each rank draws its own masks, equal in distribution but not step by step.

Two machines: the same 2 processes as two `accelerate launch --num_machines 2` commands (one
process each, machine ranks 0 and 1; on loopback here), each in its own copy of the project as
on real machines: the same losses and weights, and machine 1 writes nothing (only the global
rank 0 writes outputs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
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
# the same 2 processes on 2 machines (--num_processes counts all machines' processes): one
# command per machine, machine 0 hosting the rendezvous at --main_process_ip:port
NODES = LAUNCH.replace("--num_machines 1", "--num_machines 2 --machine_rank {rank}")
NODES += " --main_process_ip 127.0.0.1"
RENDEZVOUS = ("group_rank", "group_world_size", "local_ranks", "global_ranks", "global_world_sizes")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _examples() -> list[dict]:
    """32 examples with completions of different lengths (uneven token counts per rank); half
    of them few-shot (one exemplar prefix, computed once per batch: finetune.shared_prefix)."""
    exemplar = (
        "Q: There are 15 trees in the grove. How many trees did the grove workers plant today?"
        "\nA: There are 15 trees originally. The answer is 6.\n\n"
    )
    out = []
    for i in range(32):
        a, b = i * 7 % 50, i % 3 + 1
        steps = " ".join(f"{a} + {k} = {a + k}." for k in range(1, b + 1))
        out.append(
            {
                "prompt": (exemplar if i % 2 else "")
                + f"Q: Jack has {a} stamps and buys {b} more. How many? A:",
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
    # `-m stages.finetune` and selfimprove from this checkout (also in a worktree)
    env = project_env(tmp, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src")]))
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

    # finetune.processes 2, batch 8: the finetune stage launching 2 processes of batch 4
    proj = _project(tmp / "proj", model, train, processes=2)
    (out["ddp_stderr"],) = _run_stages([(proj, "")], env)
    out["ddp"] = proj / "data" / "rounds" / "r1" / "model"
    out |= {"train": train, "env": env, "tmp": tmp}
    return out


def _project(proj: Path, model: Path, train: Path, processes: int = 1) -> Path:
    """A project folder whose round r1 fine-tunes ``model`` (as r0's) on ``train``: batch 4 per
    process of a launcher of one's own, or ``processes`` splitting a batch of 8."""
    (proj / "data" / "rounds" / "r1").mkdir(parents=True)
    shutil.copytree(model, proj / "data" / "rounds" / "r0" / "model")
    shutil.copy(train, proj / "data" / "rounds" / "r1" / "train.jsonl")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["seed"] = 0  # round r1 trains with seed + 1 = 1, like the runs above
    batch = {"batch_size": 8 if processes > 1 else 4, "processes": processes}
    params["finetune"] |= {**SETTINGS, **batch, "lora": {"dropout": 0.0}}
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    return proj


def _run_stages(machines: list[tuple[Path, str]], env: dict, timeout: float = 300) -> list[str]:
    """Run round r1's finetune stage in each ``(project, $SELFIMPROVE_LAUNCH)`` at once (the
    machines of one distributed launch; "": no launcher); each one's output (stdout + stderr).
    One failing or all past ``timeout``: the others are stopped (they would wait for it) and the
    test fails."""
    cmd = [sys.executable, "-m", "stages.finetune", "--round", "r1", "--prev", "r0"]
    logs = [proj.with_name(f"{proj.name}.log") for proj, _ in machines]
    procs = []
    for (proj, launch), log in zip(machines, logs, strict=True):
        with log.open("w") as f:  # a file, not a pipe: no machine blocks on a full pipe
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=proj,
                    env=env | {"SELFIMPROVE_LAUNCH": launch},
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
            )
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and not any(p.returncode for p in procs):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:  # SIGTERM: torchrun stops its workers (their own sessions)
            os.killpg(p.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
    outs = [log.read_text() for log in logs]
    for p, o in zip(procs, outs, strict=True):
        assert p.returncode == 0, (p.returncode, o[-6000:])
    return outs


@pytest.fixture(scope="module")
def machines(runs):
    """The 2-process run as 2 machines: 2 launches (machine ranks 0, 1) in 2 project copies."""
    tmp, port = runs["tmp"], _free_port()
    projs = [_project(tmp / f"machine{r}", runs["base"], runs["train"]) for r in (0, 1)]
    launches = [NODES.format(port=port, rank=r) for r in (0, 1)]
    files_1 = _files(projs[1])
    env = runs["env"] | {"LOGLEVEL": "INFO"}  # torchrun logs each machine's rendezvous result
    outs = _run_stages(list(zip(projs, launches, strict=True)), env)
    model = projs[0] / "data" / "rounds" / "r1" / "model"
    return {"projs": projs, "outs": outs, "model": model, "files_1": files_1}


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def test_two_processes_really_ran_distributed(runs):
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in runs["ddp_stderr"]
    assert "--num_cpu_threads_per_process 1" in runs["ddp_stderr"]  # compute.threads each
    info = json.loads((runs["ddp"].parents[0] / "finetune.json").read_text())
    one = json.loads((runs["one"] / "finetune_info.json").read_text())
    # 32 examples x 2 epochs / global batch 8 = 8 steps (not 16: the ranks split each batch)
    assert info["steps"] == one["steps"] == 8
    # compute: every token of both epochs once, whichever process computed it
    assert info["tokens_trained"] == one["tokens_trained"] > 0
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


def test_two_machines_really_ran_distributed(machines):
    for rank, out in enumerate(machines["outs"]):
        assert f"--num_machines 2 --machine_rank {rank}" in out  # the stage relaunched itself
        # torchrun's rendezvous result (LOGLEVEL=INFO): machine `rank` of 2, running global
        # rank `rank` of 2 as its local rank 0
        result = dict(re.findall(r"\]\s+(\w+)=(.*)", out.split("Rendezvous complete", 1)[-1]))
        assert {k: result.get(k) for k in RENDEZVOUS} == {
            "group_rank": str(rank),
            "group_world_size": "2",
            "local_ranks": "[0]",
            "global_ranks": f"[{rank}]",
            "global_world_sizes": "[2]",
        }, out[-4000:]
    info = json.loads((machines["model"].parent / "finetune.json").read_text())
    assert info["steps"] == 8  # global batch 2 x 4 (one process alone: 16 steps)


def test_two_machines_same_losses_and_weights(runs, machines):
    one, nodes = _losses(runs["one"]), _losses(machines["model"])
    assert [s for s, _ in nodes] == [s for s, _ in one]
    for (_, a), (_, b) in zip(one, nodes, strict=True):
        assert b == pytest.approx(a, rel=1e-4)
    ref, got = _weights(runs["one"]), _weights(machines["model"])
    assert ref.keys() == got.keys()
    diff = max((ref[k] - got[k]).abs().max().item() for k in ref)
    assert diff < 1e-5, diff


def test_only_machine_0_writes(machines):
    """Machine 1's process is local rank 0 but global rank 1: it writes nothing at all (no
    model, finetune.json, checkpoint or temporary folder) in its project copy."""
    assert _files(machines["projs"][1]) == machines["files_1"]
    r1 = machines["projs"][0] / "data" / "rounds" / "r1"
    assert sorted(p.name for p in r1.iterdir()) == ["finetune.json", "model", "train.jsonl"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED")],
)
def test_example_accelerate_configs_parse(name, kind):
    """The GPU example configs are valid accelerate configs (they were not run here)."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.value == kind and cfg.num_processes == 8
