"""generate on a real Ray cluster: a head (no CPUs, so it runs no sampler) and 2 worker nodes of
1 CPU each, started with ``ray start`` on this machine, and the tiny model.

One test, in the order a user meets it: a node whose settings (here: torch version) differ from
the driver's is refused before it samples; a run with ``generate.ray_address`` that dies after its
first shard came back (the driver is interrupted; its shard is on disk), then the generate stage
with ``RAY_ADDRESS`` in the environment resumes it: 1 shard reused, the other 2 sampled by one
actor on each worker node, and ``samples.jsonl`` byte-identical to a single-process run.

The cluster's processes are ended by process group (each ``ray start --block`` runs in a
session of its own), never with ``ray stop``, which would end every Ray process on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from tinyproject import ROOT, varied_model

pytest.importorskip("ray")
torch = pytest.importorskip("torch")

QUESTIONS = [
    {"id": f"q{i}", "question": f"Tom has {i + 2} apples and buys {i % 3 + 1} more. How many?"}
    for i in range(5)
]
SMALL = {
    "num_paths": 2,
    "max_new_tokens": 6,
    "n_shots": 1,
    "shard_size": 2,
}
SMALL_SAMPLER = {"batch_size": 4, "dtype": "float32"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Every node on one machine needs its own agent/metrics ports (the defaults collide)."""
    return [
        f"--{name}={_free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    ]


def _wait_started(log: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"ray start did not come up:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def cluster():
    """Address of a head + 2 one-CPU worker nodes; ended by process group afterwards."""
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        pytest.skip("no `ray` command next to this Python")
    tmp = Path(tempfile.mkdtemp(prefix="si-ray-", dir="/tmp"))  # short: Ray's socket paths
    port = _free_port()
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=str(ROOT / "src"),
    )
    env.pop("RAY_ADDRESS", None)
    common = [
        "--block",
        "--node-ip-address=127.0.0.1",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
    ]
    nodes = [
        ["--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false"],
        [f"--address=127.0.0.1:{port}", "--num-cpus=1"],
        [f"--address=127.0.0.1:{port}", "--num-cpus=1"],
    ]
    procs = []
    try:
        for i, args in enumerate(nodes):  # one at a time: at once they time out on 2 cores
            log = tmp / f"node{i}.log"
            with open(log, "w") as out:
                procs.append(
                    subprocess.Popen(
                        [str(ray_cli), "start", *args, *common, *_node_ports()]
                        + ([f"--temp-dir={tmp}"] if i == 0 else []),
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            _wait_started(log, procs[-1])
        yield f"127.0.0.1:{port}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # SIGKILL: what is left after 3 s
            for p in procs:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.1)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny Llama with larger random weights, so its samples differ from each other."""
    return varied_model(tmp_path_factory.mktemp("tiny"), seed=2)


def test_killed_ray_run_resumed_by_the_stage_equals_one_process(
    cluster, model_dir, tmp_path, monkeypatch
):
    from selfimprove.config.methods import GenerateConfig
    from selfimprove.config.runtime import SamplerConfig
    from selfimprove.core.io import InputError, write_jsonl
    from selfimprove.core.paths import round_seed
    from selfimprove.methods import generate as gen_mod

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    seed = round_seed(0, "r1")
    smp = SamplerConfig(**SMALL_SAMPLER)
    single, _ = gen_mod.generate(model_dir, QUESTIONS, GenerateConfig(**SMALL), seed, None, smp)
    assert len({p for r in single for p in r["paths"]}) > 5  # the samples differ
    write_jsonl(tmp_path / "single.jsonl", single)

    proj = tmp_path / "proj"
    (proj / "data" / "prepared").mkdir(parents=True)
    (proj / "data" / "prepared" / "train.jsonl").write_text(
        "".join(json.dumps(q) + "\n" for q in QUESTIONS)
    )
    shards = proj / "data" / "rounds" / "r1" / "samples.shards"

    # 0. a node whose torch (model, code) differs from the driver's is refused before sampling
    real = gen_mod.run_settings
    monkeypatch.setattr(
        gen_mod, "run_settings", lambda *a: real(*a) | {"versions": {"torch": "0.0-other"}}
    )
    one = GenerateConfig(**SMALL, ray_address=cluster, ray_workers=1)
    with pytest.raises(InputError, match=r"Ray node .* would sample differently.*: versions"):
        gen_mod.generate(model_dir, QUESTIONS, one, seed, sampler_cfg=smp)
    monkeypatch.setattr(gen_mod, "run_settings", real)

    # 1. generate.ray_address set, 2 actors; the driver dies once the first shard is saved
    save = gen_mod.save_shard

    def save_then_die(*args):
        save(*args)
        raise KeyboardInterrupt("driver killed")

    monkeypatch.setattr(gen_mod, "save_shard", save_then_die)
    cfg = GenerateConfig(**SMALL, ray_address=cluster, ray_workers=2)
    with pytest.raises(KeyboardInterrupt):
        gen_mod.generate(model_dir, QUESTIONS, cfg, seed, shard_dir=shards, sampler_cfg=smp)
    assert len(list(shards.glob("shard-*.json"))) == 1

    # 2. the stage, Ray from RAY_ADDRESS (params: null), resumes: 2 shards left, 1 per node
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate"] |= SMALL
    params["sampler"] |= SMALL_SAMPLER
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["RAY_ADDRESS"] = cluster
    model = os.path.relpath(model_dir, proj)  # relative, as dvc.yaml gives it: actors resolve it
    cmd = [sys.executable, "-m", "stages.generate", "--round", "r1", "--model", model]
    done = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = proj / "data" / "rounds" / "r1"
    assert (out / "samples.jsonl").read_bytes() == (tmp_path / "single.jsonl").read_bytes()
    stats = json.loads((out / "generate.json").read_text())
    timings = json.loads((proj / "data/resources/generate@r1.json").read_text())["facts"]
    assert stats["shards"] == 3 and timings["shards_reused"] == 1
    ray_stats = stats["ray"]
    assert ray_stats["workers"] == 2 and ray_stats["nodes"] == 2
    assert [k for _, k in ray_stats["shards_per_node"]] == [1, 1]
    assert not shards.exists()
