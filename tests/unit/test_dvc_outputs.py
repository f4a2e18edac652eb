"""dvc.yaml's outputs and what DVC does with them: every stage that should be restorable from
the run cache is (no plain ``cache: false`` output), the per-workspace ones never are, no output
records a wall-clock figure, and every output DVC would git-ignore is ignored by a committed
entry (``dvc repro`` writes no .gitignore)."""

from __future__ import annotations

import inspect
import json
import subprocess

import pytest
from tinyproject import ROOT

from selfimprove.core import timings

#: stages that must rerun in every workspace: they log into that workspace's MLflow store
PER_WORKSPACE = ("track_r0", "track@")
#: stages DVC reruns on every `dvc repro` (always_changed): never run-cached
ALWAYS_CHANGED = ("inputs",)


@pytest.fixture(scope="module")
def stages():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return [
            (
                st.addressing,
                st.always_changed,
                [(o.def_path, o.use_cache, o.is_metric or o.is_plot) for o in st.outs],
            )
            for st in repo.index.stages
        ]


def test_dvc_still_skips_the_run_cache_for_a_plain_uncached_output():
    """The rule this file enforces is DVC's (dvc/stage/__init__.py, Stage.run)."""
    from dvc.stage import Stage

    src = inspect.getsource(Stage.run)
    assert "run_cache=not no_commit and not no_cache_outs" in src
    assert "if not (out.is_metric or out.is_plot)" in src


def test_every_stage_but_the_per_workspace_ones_is_restorable(stages):
    wrong = {}
    for name, always, outs in stages:
        plain_uncached = [p for p, cached, metric in outs if not cached and not metric]
        if name.startswith(PER_WORKSPACE):
            if not plain_uncached:
                wrong[name] = "per workspace: needs a plain `cache: false` output (mlflow.json)"
        elif name in ALWAYS_CHANGED:
            if not always:
                wrong[name] = "expected always_changed"
        elif always or plain_uncached:
            wrong[name] = f"not restorable from the run cache: always={always} {plain_uncached}"
    assert not wrong, wrong
    assert any(n.startswith("generate@") for n, _, _ in stages)


def test_no_stage_writes_a_json_output_with_write_json_but_the_uncached_ones():
    """The stages' cached JSON records go through write_stage_json (timings split off)."""
    # metrics, mlflow.json, inputs; evaluate_refine's eval_refined.json holds outputs, no timings
    allowed = {"evaluate.py", "evaluate_refine.py", "filter.py", "track.py", "inputs.py"}
    for path in sorted((ROOT / "stages").glob("*.py")):
        if "write_json(" in path.read_text() and path.name not in allowed:
            pytest.fail(f"{path.name}: writes JSON without core.timings.write_stage_json")


def test_timings_leave_the_record_and_stay_with_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stats = {"n_paths": 4, "wall_s": 1.5, "tokens_per_s": 9.0, "shards_reused": 1}
    record = timings.write_stage_json("generate.json", stats, "generate@r1")
    assert record == {"n_paths": 4}
    assert json.loads((tmp_path / "generate.json").read_text()) == {"n_paths": 4}
    facts = timings.read_timings("generate.json", "generate@r1")
    assert facts == {"wall_s": 1.5, "tokens_per_s": 9.0, "shards_reused": 1}
    # a record restored from the run cache (other bytes than the timings were made for): none
    (tmp_path / "generate.json").write_text('{"n_paths": 5}\n')
    assert timings.read_timings("generate.json", "generate@r1") == {}
    assert timings.read_timings("other.json", "refine@r1") == {}


def _ignored(paths: list[str]) -> set[str]:
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=ROOT,
        input="\n".join(paths),
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return set(proc.stdout.split())


def test_committed_gitignore_covers_every_cached_output(stages):
    """DVC adds a .gitignore entry for a cached output unless git already ignores it: with every
    one committed, `dvc repro` leaves the tree clean. Uncached outputs go to git (not ignored)."""
    cached = [p for _, _, outs in stages for p, c, _ in outs if c]
    uncached = [p for _, _, outs in stages for p, c, _ in outs if not c]
    tracked = subprocess.run(
        ["git", "ls-files", "*.gitignore"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert ".gitignore" in tracked
    ignored = _ignored(cached + uncached)
    assert sorted(set(cached) - ignored) == []
    assert sorted(set(uncached) & ignored) == []
    assert "data/resources/generate@r1.json" in _ignored(
        ["data/resources/generate@r1.json"]
    )
