"""Byte-identical reruns: the tiny pipeline (2 rounds, MLflow tracking on, each project with its
own sqlite db) run in two separate project copies gives the same hash for every DVC output in
the two dvc.lock files, except the outputs named in :data:`RUN_SPECIFIC` (each with why).

Same machine, same thread count, same code and params: nothing a user controls differs, so any
other difference is a leak of the run (a time, a run id, an absolute path, a set's order) into
an output, which breaks `dvc repro`'s promise that others pulling the artifacts get the same.
The two pipelines run at the same time (one thread each, the machine's 2 cores): ~90 s.
"""

from __future__ import annotations

import subprocess
from fnmatch import fnmatch

import pytest
import yaml
from tinyproject import dvc, new_project, tiny_params

pytestmark = pytest.mark.e2e

#: DVC outputs that by nature carry a run id or a time (glob over the output path), and why.
RUN_SPECIFIC = {
    "data/rounds/*/mlflow.json": "the MLflow run id of the round",
}  # timings are no output (data/resources/<stage>.json, selfimprove.core.timings)


def _outs(proj) -> dict[str, str]:
    """``{output path: hash}`` of every output in the project's dvc.lock."""
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    outs = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            outs[out["path"]] = out.get("md5") or out.get("hash") or out.get("etag")
    return outs


def _run_specific(path: str) -> bool:
    return any(fnmatch(path, pattern) for pattern in RUN_SPECIFIC)


@pytest.fixture(scope="module")
def two_runs(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    params = tiny_params(tiny_model)  # the default 2 rounds, tracking on
    projects = [new_project(root / name, params) for name in ("a", "b")]
    procs = [
        subprocess.Popen(
            dvc("repro"),
            cwd=proj,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for proj, env in projects
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, out[-3000:] + err[-5000:]
    return [proj for proj, _ in projects]


def test_every_dvc_output_is_identical_across_two_clones(two_runs):
    a, b = (_outs(p) for p in two_runs)
    assert a.keys() == b.keys()
    assert any(k.startswith("data/rounds/r2/") for k in a)  # the whole pipeline ran
    differ = sorted(k for k in a if a[k] != b[k] and not _run_specific(k))
    assert differ == [], f"outputs that differ between two identical runs: {differ}"
    # every exclusion names outputs of this pipeline (no stale entries), and tracking ran
    assert all(any(fnmatch(k, pattern) for k in a) for pattern in RUN_SPECIFIC)
    assert all((p / "mlflow.db").exists() for p in two_runs)
