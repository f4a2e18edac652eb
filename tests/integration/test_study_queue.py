"""A study through DVC's experiment queue on the tiny pipeline (one method, one seed, one round):

- an experiment queued with an edited module runs the edited module from its own temporary
  workspace (``.dvc/tmp/exps/...``), not the project's ``src`` (which the editable install and
  PYTHONPATH point at): the edit makes its first stage fail with the path it ran from;
- ``selfimprove study run`` queues, runs (``dvc queue start``), waits, exports the compact
  results and prints the table; a plain ``dvc repro`` of the same params and commit, computed
  again (``--no-run-cache``), writes the experiment's metrics.json byte for byte; run again,
  it finds the experiment finished with the same params
  and queues nothing (a killed study resumes with only what is missing), then pushes it: its
  git ref to a git remote, its outputs to the DVC remote.
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from tinyproject import dvc, new_project, run, tiny_params

from selfimprove.study import plan

pytestmark = pytest.mark.e2e

MARKER = "edited in the queued workspace:"


def _study(proj, env, *extra):
    cmd = [sys.executable, "-m", "selfimprove.cli", "study", "run", "--name", "t", "--methods",
           "lmsi", "--seeds", "0", "--jobs", "1", "--poll", "1", "--round", "r1",
           "--resamples", "100", "--out", str(proj / "results"), *extra]
    return run(cmd, proj, env)


def test_queued_experiments_run_their_own_code_and_a_study_resumes(tiny_model, tmp_path):
    params = tiny_params(tiny_model, rounds={"r1": {"prev": "r0"}})
    params["data"]["seed"] = None  # a key of the real params.yaml the study sets
    proj, env = new_project(tmp_path / "proj", params)
    env.pop("PYTHONPATH")  # as a user has it: the editable install's src (not this copy's)
    try:
        module = proj / "src/selfimprove/inputs.py"
        original = module.read_text()
        module.write_text(original + f"raise SystemExit({MARKER!r} + __file__)\n")
        run(dvc("exp", "run", "--queue", "-n", "edited"), proj, env)
        module.write_text(original)  # the queue holds the edited snapshot
        out = _study(proj, env)  # starts the queue: `edited` fails, the study's run finishes
        assert "t-lmsi-s0: queued" in out.stdout and "1/1 finished" in out.stdout
        logs = run(dvc("queue", "logs", "edited"), proj, env, check=False)
        ran_from = logs.stdout.split(MARKER, 1)[1].split()[0]
        assert "/.dvc/tmp/exps/" in ran_from and ran_from.endswith("src/selfimprove/inputs.py")
        # the study's results, compact: JSON files, question scores, no predictions
        folder = proj / "results/lmsi_s0"
        assert (folder / "data/rounds/r1/question_scores.json").is_file()
        assert (folder / "data/rounds/r1/metrics.json").is_file()
        assert not list(folder.rglob("*.jsonl"))
        assert "t-lmsi-s0" in (folder / "command.txt").read_text()
        assert "| arith / fewshot_cot / strict (n=4) |" in out.stdout
        # its compute: tokens sampled and trained, and the wall time the study saw it run
        assert json.loads((folder / "wall.json").read_text())["wall_s"] > 0
        compute = out.stdout.split("| method | tokens sampled |", 1)[1].splitlines()[2]
        assert compute.startswith("| lmsi | ") and "-" not in compute.replace("–", " ")

        # plain `dvc repro` of the experiment's params and commit, every stage computed again
        params = yaml.safe_load((proj / "params.yaml").read_text())
        for setting in plan("t", ["lmsi"], [0], 0)[0].settings:
            key, value = setting.split("=", 1)
            *path, last = key.split(".")
            node = params
            for part in path:
                node = node[part]
            node[last] = yaml.safe_load(value)
        (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(dvc("repro", "--no-run-cache"), proj, env)
        for rnd in ("r0", "r1"):
            plain = (proj / f"data/rounds/{rnd}/metrics.json").read_bytes()
            assert plain == (folder / f"data/rounds/{rnd}/metrics.json").read_bytes(), rnd

        # run again: nothing queued; then the experiment is pushed (git ref + DVC outputs)
        run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], tmp_path, env)
        run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], proj, env)
        # --local: DVC reads an experiment's remote from its commit's config, or the local one
        run(dvc("remote", "add", "--local", "-d", "store", str(tmp_path / "store")), proj, env)
        again = _study(proj, env, "--json", str(proj / "t.json"), "--push", "origin")
        assert "t-lmsi-s0: finished, kept" in again.stdout and ": queued" not in again.stdout
        assert json.loads((proj / "t.json").read_text())["round"] == "r1"
        refs = run(["git", "ls-remote", "origin"], proj, env).stdout
        assert "refs/exps/" in refs and refs.rstrip().endswith("/t-lmsi-s0")
        assert any((tmp_path / "store").rglob("*"))  # the predictions and models, in DVC
    finally:
        run(dvc("queue", "stop"), proj, env, check=False)
