"""Fault tolerance of the real `dvc repro` on a tiny random model (one round, up to finetune).

- kill -9 (SIGKILL to the whole `dvc repro` process group) mid-generate, then mid-finetune;
  each rerun of `dvc repro` resumes (finished generate shards, the last finetune checkpoint)
  and the end result equals an uninterrupted run: samples.jsonl / train.jsonl byte for byte,
  the same losses and weights; no temporary is left where an output belongs.
- kill -9 of the finetune process (3 epochs) after a checkpoint inside epoch 2: the rerun
  resumes in a new process to a model folder byte-identical to an uninterrupted run's.
- a corrupt or truncated intermediate jsonl: `dvc repro` fails (exit != 0) with the file and
  line in stderr.
- disk full while saving the model: a clear error, the previous model folder untouched.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tinyproject import ROOT, dvc, new_project, project_env, run, stale_stages, tiny_params

pytestmark = pytest.mark.e2e
TARGET = "finetune@r1"
R1 = Path("data/rounds/r1")
# run-dependent numbers (timings): in data/resources/<stage>.json (facts), no longer in the step
# files; kept out of the comparisons should one come back
VOLATILE = {"wall_s", "tokens_per_s", "runtime_s", "shards_reused", "resumed_from_step"}
VOLATILE |= {"prefix_prefill_s", "suffix_prefill_s", "decode_s", "other_s"}


def _timings(proj: Path, stage: str) -> dict:
    """What ``stage`` recorded about its last run in ``proj`` (selfimprove.core.timings)."""
    return json.loads((proj / "data" / "resources" / f"{stage}.json").read_text())["facts"]


def _new_project(root: Path, model_dir: Path, **finetune) -> tuple[Path, dict]:
    """The tiny project, one round of 16 questions in shards of 2, checkpoints every 2 steps;
    ``finetune`` overrides finetune keys."""
    params = tiny_params(
        model_dir,
        rounds={"r1": {"prev": "r0"}},
        generate={"shard_size": 2, "max_new_tokens": 16},
        sampler={"dtype": "float32"},
        finetune={"epochs": 2, "batch_size": 2, "dtype": "float32", **finetune},
        tracking={"enabled": False},
    )
    params["data"]["train"]["n"] = 16
    return new_project(root, params, SELFIMPROVE_SAVE_STEPS="2")


def _repro(proj: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return run(dvc("repro", TARGET), proj, env, check=check)


def _repro_killed_when(
    proj: Path, env: dict, ready, timeout: float = 240, target: str = TARGET, delay: float = 0.0
) -> None:
    """Start `dvc repro`, SIGKILL its process group ``delay`` s after ``ready()``; fail if it
    ends before."""
    proc = subprocess.Popen(
        dvc("repro", target),
        cwd=proj,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    t0 = time.monotonic()
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(
                    f"dvc repro ended ({proc.returncode}) before the kill point:\n"
                    + proc.stderr.read().decode()[-3000:]
                )
            if time.monotonic() - t0 > timeout:
                raise AssertionError("kill point not reached in time")
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def _tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def _metrics(proj: Path, step: str) -> dict:
    data = json.loads((proj / R1 / f"{step}.json").read_text())
    return {k: v for k, v in data.items() if k not in VOLATILE}


def _losses(proj: Path) -> list[float]:
    lines = (proj / R1 / "model" / "train_log.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory):
    proj, env = _new_project(tmp_path_factory.mktemp("faults") / "clean", tiny_model)
    _repro(proj, env)
    return proj, env


@pytest.fixture(scope="module")
def killed_twice(tiny_model, tmp_path_factory):
    """kill -9 mid-generate, rerun and kill -9 mid-finetune, rerun to the end."""
    proj, env = _new_project(tmp_path_factory.mktemp("faults") / "killed", tiny_model)
    shards = proj / R1 / "samples.shards"
    notes = {}

    # 1) kill once the first generate shard is on disk
    _repro_killed_when(proj, env, lambda: (shards / "shard-00000.json").exists())
    notes["shards_after_kill"] = sorted(p.name for p in shards.glob("shard-*.json"))
    notes["samples_after_kill"] = (proj / R1 / "samples.jsonl").exists()

    # 2) rerun; kill once the first finetune checkpoint is complete
    ckpt = proj / R1 / "model.ckpt"
    marker = "selfimprove_complete.json"
    _repro_killed_when(proj, env, lambda: any(ckpt.glob(f"checkpoint-*/{marker}")))
    notes["model_after_kill"] = (proj / R1 / "model").exists()
    notes["ckpts_after_kill"] = sorted(p.name for p in ckpt.glob("checkpoint-*"))
    notes["generate_after_kill"] = _metrics(proj, "generate")
    notes["shards_reused"] = _timings(proj, "generate@r1")["shards_reused"]

    # 3) rerun to the end
    _repro(proj, env)
    return proj, env, notes


def test_kill9_mid_generate_resumes_from_shards(killed_twice, uninterrupted):
    proj, _, notes = killed_twice
    clean, _ = uninterrupted
    assert notes["shards_after_kill"] and len(notes["shards_after_kill"]) < 8  # 16 q / 2
    assert not notes["samples_after_kill"]  # killed before the output was written
    assert 1 <= notes["shards_reused"] < 8  # the rerun sampled only the missing shards
    for name in ("samples.jsonl", "refined.jsonl", "rationales.jsonl", "train.jsonl"):
        assert (proj / R1 / name).read_bytes() == (clean / R1 / name).read_bytes(), name
    assert _metrics(proj, "generate") == _metrics(clean, "generate")
    assert _metrics(proj, "filter") == _metrics(clean, "filter")
    assert not (proj / R1 / "samples.shards").exists()


def test_kill9_mid_finetune_resumes_from_checkpoint(killed_twice, uninterrupted):
    from safetensors.torch import load_file

    proj, _, notes = killed_twice
    clean, _ = uninterrupted
    assert not notes["model_after_kill"] and notes["ckpts_after_kill"]
    info = json.loads((proj / R1 / "finetune.json").read_text())
    ref = json.loads((clean / R1 / "finetune.json").read_text())
    resumed = _timings(proj, "finetune@r1")["resumed_from_step"]
    assert resumed is not None and resumed >= 2
    assert _timings(clean, "finetune@r1")["resumed_from_step"] is None
    assert info["steps"] == ref["steps"] > 4
    assert _losses(proj) == pytest.approx(_losses(clean), rel=1e-5)
    assert info["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-5)
    wa = load_file(proj / R1 / "model" / "model.safetensors")
    wb = load_file(clean / R1 / "model" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    assert not (proj / R1 / "model.ckpt").exists()


def test_no_half_written_outputs_and_up_to_date(killed_twice):
    proj, env, _ = killed_twice
    assert _tmp_files(proj / "data") == []
    assert not list((proj / "data").rglob(".*.old"))
    assert stale_stages(proj, env, TARGET) == {}


@pytest.mark.parametrize("fault", ["corrupt", "truncated"])
def test_bad_intermediate_jsonl_fails_naming_file_and_line(uninterrupted, tmp_path, fault):
    clean, env = uninterrupted
    proj = tmp_path / "proj"
    shutil.copytree(clean, proj, symlinks=True)
    samples = proj / R1 / "samples.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    if fault == "corrupt":
        lines[2] = '{"id": "broken", "paths": [\n'
        samples.write_text("".join(lines))
        want = "line 3: not valid JSON"
    else:  # cut in the middle of the last line, as a killed writer without atomic rename would
        data = "".join(lines)
        samples.write_text(data[: len(data) - len(lines[-1]) // 2])
        want = f"line {len(lines)}: not valid JSON"
    # -s: only the stage that reads it (a plain repro would regenerate the changed output)
    proc = run(dvc("repro", "-s", "refine@r1"), proj, env, check=False)
    assert proc.returncode != 0
    assert f"{R1 / 'samples.jsonl'} {want}" in proc.stderr, proc.stderr[-3000:]
    assert _tmp_files(proj / "data") == []


def test_disk_full_while_saving_model_keeps_previous(tiny_model, tmp_path, monkeypatch, capsys):
    from selfimprove.core.io import InputError
    from selfimprove.training import finetune as ft

    examples = [{"prompt": f"Q: {i} + 1? A:", "completion": f" {i + 1}."} for i in range(8)]
    cfg = ft.FinetuneConfig(epochs=1, batch_size=4, logging_steps=1)
    out = tmp_path / "model"
    ft.finetune(tiny_model, examples, out, cfg, seed=0)  # the previous output
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(model, tokenizer, folder):
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 1000)  # partly written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ft, "_save_model_folder", full)
    ckpt = tmp_path / "model.ckpt"
    with pytest.raises(InputError) as e:
        ft.finetune(tiny_model, examples, out, cfg, seed=1, ckpt_dir=ckpt, save_steps=1)
    msg = str(e.value)
    assert "disk full" in msg and "nothing was replaced" in msg and str(out) in msg
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp
    assert (ckpt / "checkpoint-2").is_dir()  # kept: a rerun after freeing space resumes

    # through the stage wrapper: exit code 2 and the message on stderr
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    rnd = tmp_path / "data" / "rounds"
    shutil.copytree(tiny_model, rnd / "r0" / "model")
    (rnd / "r1").mkdir()
    (rnd / "r1" / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in examples))
    shutil.copytree(out, rnd / "r1" / "model")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["finetune"] |= {"epochs": 1, "batch_size": 4, "processes": 1}  # patched here: 1 process
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    from stages import finetune as stage

    with pytest.raises(SystemExit) as ex:
        stage.main(["--round", "r1", "--prev", "r0"])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert "error: data/rounds/r1/model: disk full" in err and "nothing was replaced" in err
    assert (rnd / "r1" / "model" / "model.safetensors").read_bytes() == before[
        Path("model.safetensors")
    ]


def _running(pattern: str, cwd: Path):
    """A kill point: true once a process matching ``pattern`` runs in ``cwd`` (this project)."""

    def ready() -> bool:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        for pid in found.stdout.split():
            try:
                if os.readlink(f"/proc/{pid}/cwd") == str(cwd):
                    return True
            except OSError:
                continue
        return False

    return ready


@pytest.fixture(scope="module")
def killed_mid_filter_and_evaluate(tiny_model, tmp_path_factory):
    """kill -9 as the filter stage starts, rerun and kill -9 inside evaluate, rerun to the end."""
    proj, env = _new_project(tmp_path_factory.mktemp("faults") / "killed2", tiny_model)
    target = "evaluate@r1"
    _repro_killed_when(proj, env, _running("stages.filter --round r1", proj), target=target)
    notes = {"rationales_after_kill": (proj / R1 / "rationales.jsonl").exists()}
    ready_eval = _running("stages.evaluate --round r1", proj)
    _repro_killed_when(proj, env, ready_eval, target=target, delay=1.5)
    notes["metrics_after_kill"] = (proj / R1 / "metrics.json").exists()
    run(dvc("repro", target), proj, env)
    return proj, env, notes


def test_kill9_mid_filter_and_evaluate_redo_only_that_stage(
    killed_mid_filter_and_evaluate, uninterrupted
):
    proj, env, notes = killed_mid_filter_and_evaluate
    clean, clean_env = uninterrupted
    assert not notes["rationales_after_kill"]  # killed before filter wrote anything
    assert not notes["metrics_after_kill"]  # killed inside evaluate: no partial metrics
    run(dvc("repro", "evaluate@r1"), clean, clean_env)
    for name in ("rationales.jsonl", "train.jsonl", "metrics.json"):
        assert (proj / R1 / name).read_bytes() == (clean / R1 / name).read_bytes(), name
    for pred in sorted((clean / R1 / "eval").glob("*.jsonl")):
        assert (proj / R1 / "eval" / pred.name).read_bytes() == pred.read_bytes(), pred.name
    assert _tmp_files(proj / "data") == []
    assert stale_stages(proj, env, "evaluate@r1") == {}


def _model_files(proj: Path) -> dict[str, bytes]:
    folder = proj / R1 / "model"
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_kill9_finetune_in_epoch_2_of_3_resumes_to_identical_weights(tiny_model, tmp_path):
    """A real kill of a separate `python -m stages.finetune` (under `dvc repro`) after a
    checkpoint inside epoch 2 of 3; the rerun is a new process (fresh global RNG) that resumes
    there. Compared byte for byte (model.safetensors, the adapter, train_log.jsonl,
    finetune_info.json): on one machine with the same thread count the same ops run in the same
    order, so anything but identical bytes is a resume bug (a different data order or RNG state
    shows as a ~1e-4 weight difference), not float noise."""
    from safetensors.torch import load_file

    killed, env = _new_project(tmp_path / "killed", tiny_model, epochs=3, batch_size=4)
    run(dvc("repro", "filter@r1"), killed, env)
    n = len((killed / R1 / "train.jsonl").read_text().splitlines())
    per_epoch = -(-n // 4)
    assert per_epoch >= 4, f"{n} training examples: too few steps per epoch for this test"
    save = per_epoch + per_epoch // 2  # one checkpoint, in the middle of epoch 2 (next: epoch 4)
    clean = tmp_path / "clean"
    shutil.copytree(killed, clean, symlinks=True)  # the same generate/filter outputs
    env = env | {"SELFIMPROVE_SAVE_STEPS": str(save)}
    clean_env = project_env(clean, SELFIMPROVE_SAVE_STEPS=str(save))

    ckpt = killed / R1 / "model.ckpt" / f"checkpoint-{save}" / "selfimprove_complete.json"
    _repro_killed_when(killed, env, ckpt.exists)
    assert not (killed / R1 / "model").exists()  # killed before the end
    _repro(killed, env)
    _repro(clean, clean_env)

    info = json.loads((killed / R1 / "finetune.json").read_text())
    ref = json.loads((clean / R1 / "finetune.json").read_text())
    resumed = _timings(killed, "finetune@r1")["resumed_from_step"]
    assert per_epoch < resumed == save < 2 * per_epoch  # inside epoch 2
    assert _timings(clean, "finetune@r1")["resumed_from_step"] is None
    assert info["steps"] == ref["steps"] == 3 * per_epoch
    assert {k: v for k, v in info.items() if k not in VOLATILE} == {
        k: v for k, v in ref.items() if k not in VOLATILE
    }
    wa = load_file(killed / R1 / "model" / "model.safetensors")
    wb = load_file(clean / R1 / "model" / "model.safetensors")
    assert all(wa[k].equal(wb[k]) for k in wb)  # exact tensors (the bytes check below too)
    a, b = _model_files(killed), _model_files(clean)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []
    assert not (killed / R1 / "model.ckpt").exists()
