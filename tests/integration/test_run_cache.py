"""DVC's run cache across workspaces, and a clean `git status` after `dvc repro`.

One origin project (the tiny pipeline, one round) and clones of it sharing one DVC cache, as the
multi-seed runner's clones do:

- clone ``a`` runs everything; afterwards ``git status`` lists only the run's results for git
  (dvc.lock and the uncached outputs: DVC's metrics, data/inputs/, mlflow.json): no .gitignore
  written or changed, nothing modified; committed, the tree is clean.
- clone ``b``, same params: DVC restores every stage from the run cache ("Stage '...' is cached -
  skipping run") but the ones that must run per workspace: ``inputs`` (always_changed), the
  ``track`` stages (they log into the workspace's MLflow store) and ``report`` (it depends on
  track's run ids).
- clone ``c``, another method of the same seed: round 1's sampling (``generate@r1``) is restored.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from tinyproject import dvc, git, new_project, run, tiny_params

pytestmark = pytest.mark.e2e

CACHED_MSG = re.compile(r"Stage '([^']+)' is cached - skipping run")
#: stages that run in every workspace, and why (dvc.yaml says so too)
PER_WORKSPACE = {
    "inputs": "always_changed: digests the files outside the repository",
    "track_r0": "logs into this workspace's MLflow store",
    "track@r1": "logs into this workspace's MLflow store",
    "report": "depends on the track stages' mlflow.json (run ids of this store)",
}


def _clone(origin, dest, cache, env, **params):
    run(["git", "clone", "-q", str(origin), str(dest)], dest.parent, env)
    run(dvc("config", "--local", "cache.dir", str(cache)), dest, env)
    run(dvc("config", "--local", "core.analytics", "false"), dest, env)
    if params:
        p = yaml.safe_load((dest / "params.yaml").read_text()) | params
        (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = env | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{dest / 'mlflow.db'}",
        "PYTHONPATH": str(dest / "src"),
    }
    out = run(dvc("repro"), dest, env)
    return out.stdout + out.stderr, env


def _porcelain(proj, env) -> list[str]:
    args = ["status", "--porcelain", "--untracked-files=all"]
    return run(["git", *args], proj, env).stdout.splitlines()


@pytest.fixture(scope="module")
def clones(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("runcache")
    params = tiny_params(tiny_model, rounds={"r1": {"prev": "r0"}})
    origin, env = new_project(root / "origin", params)
    cache = root / "cache"
    a_out, a_env = _clone(origin, root / "a", cache, env)
    status_a = _porcelain(root / "a", a_env)
    b_out, _ = _clone(origin, root / "b", cache, env)
    c_out, _ = _clone(origin, root / "c", cache, env, method="format_only")
    return root, {"a": (a_out, a_env, status_a), "b": b_out, "c": c_out}


def test_repro_leaves_only_its_results_for_git(clones):
    root, runs = clones
    out, env, status = runs["a"]
    proj = root / "a"
    assert status and all(line.startswith("?? ") for line in status), status
    untracked = {line[3:] for line in status}
    # the cached outputs are git-ignored by committed entries: no .gitignore is written, and
    # what is left is what DVC leaves for git (dvc.lock, DVC's metrics, uncached outputs)
    assert "dvc.lock" in untracked and "data/rounds/r1/metrics.json" in untracked
    results = ("dvc.lock", "metrics.json", "vote.json", "mlflow.json")
    assert all(p.endswith(results) or p.startswith("data/inputs/") for p in untracked), untracked
    run(["git", "add", "-A"], proj, env)
    run(git("commit", "-q", "-m", "results"), proj, env)
    assert _porcelain(proj, env) == []


def test_a_second_workspace_restores_every_stage_but_the_per_workspace_ones(clones):
    root, runs = clones
    a_out = runs["a"][0]
    ran_a = set(re.findall(r"Running stage '([^']+)'", a_out))
    assert "generate@r1" in ran_a and not CACHED_MSG.findall(a_out)
    restored = set(CACHED_MSG.findall(runs["b"]))
    ran_b = set(re.findall(r"Running stage '([^']+)'", runs["b"]))
    assert ran_b == set(PER_WORKSPACE), runs["b"][-3000:]
    assert restored == ran_a - set(PER_WORKSPACE)
    # the restored record is the same bytes as the one made in a; its timings stayed in a
    a, b = root / "a", root / "b"
    gen = "data/rounds/r1/generate.json"
    assert (a / gen).read_bytes() == (b / gen).read_bytes()
    assert (a / "data/resources/generate@r1.json").exists()
    assert not (b / "data/resources/generate@r1.json").exists()
    assert "wall_s" not in json.loads((b / gen).read_text())


def test_another_method_of_the_same_seed_reuses_round_1s_sampling(clones):
    _, runs = clones
    restored = set(CACHED_MSG.findall(runs["c"]))
    assert {"base_model", "data", "warmstart", "generate@r1"} <= restored, runs["c"][-3000:]
