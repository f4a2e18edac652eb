"""The ``compute`` params section applied by every stage, and the resources record it writes."""

from __future__ import annotations

import json
import logging
import os

import pytest

from selfimprove.core.paths import resources_file
from selfimprove.pipeline import add_round_arg, stage_main

torch = pytest.importorskip("torch")


def test_stage_main_applies_compute_and_records_resources(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("compute: {threads: 1, matmul_precision: highest}\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the param wins, and says so
    seen = {}

    @stage_main("a stage", add_round_arg)
    def main(args, params):
        seen.update(threads=torch.get_num_threads(), omp=os.environ["OMP_NUM_THREADS"])
        seen["precision"] = torch.get_float32_matmul_precision()

    with caplog.at_level(logging.INFO):
        main(["--round", "r2"])
    assert seen == {"threads": 1, "omp": "1", "precision": "highest"}
    assert "compute.threads=1 overrides OMP_NUM_THREADS=3" in caplog.text
    rec = json.loads(resources_file("test_compute", "r2").read_text())
    assert rec["stage"] == "test_compute" and rec["round"] == "r2" and rec["torch_threads"] == 1
    assert rec["peak_rss_bytes"] >= rec["peak_rss_self_bytes"] > 50 * 2**20  # torch is loaded
    assert rec["wall_s"] >= 0
    assert rec["compute"] == {"threads": 1, "processes": "auto", "matmul_precision": "highest"}


def test_one_resources_record_per_stage_logged_by_track(tmp_path, monkeypatch):
    # the stage's record facts and its peak RSS go to one file; track logs both while the record
    # is the one they were made with (a record restored from the run cache gets none)
    from selfimprove.core import timings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(timings, "_STARTED", set())
    (tmp_path / "params.yaml").write_text("compute: {threads: 1}\n")
    (tmp_path / "data" / "resources").mkdir(parents=True)
    # a stage is named by its file: this one is test_compute (a run left a record before)
    resources_file("test_compute", "r1").write_text('{"facts": {"stale": 1}, "old": 1}\n')

    @stage_main("a stage", add_round_arg)
    def main(args, params):
        timings.write_stage_json("gen.json", {"n": 2, "decode_s": 1.5}, "test_compute@r1")

    main(["--round", "r1"])
    rec = json.loads(resources_file("test_compute", "r1").read_text())
    assert rec["facts"] == {"decode_s": 1.5} and rec["of"] == "gen.json" and "old" not in rec
    assert rec["peak_rss_mb"] > 50 and rec["torch_threads"] == 1
    assert timings.read_timings("gen.json", "test_compute@r1") == {"decode_s": 1.5}
    resources_file("data").write_text('{"peak_rss_mb": 300.0, "wall_s": 2.0}\n')
    resources_file("track", "r1").write_text('{"peak_rss_mb": 400.0}\n')
    resources_file("evaluate", "r2").write_text('{"peak_rss_mb": 500.0}\n')
    got = timings.resources_metrics("r1", first=False)
    assert set(got) == {f"resources/test_compute/{k}" for k in timings.LOGGED}
    assert got["resources/test_compute/peak_rss_mb"] == rec["peak_rss_mb"]
    assert timings.resources_metrics("r0", first=True) == {
        "resources/data/peak_rss_mb": 300.0,
        "resources/data/wall_s": 2.0,
    }
    (tmp_path / "gen.json").write_text('{"n": 3}\n')  # restored: another record
    assert timings.resources_metrics("r1", first=False) == {}
    assert timings.read_timings("gen.json", "test_compute@r1") == {}


def test_compute_keys_are_validated():
    from selfimprove.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match="compute.threads"):
        parse_params({"compute": {"threads": 0}})
    with pytest.raises(ConfigError, match="compute.matmul_precision"):
        parse_params({"compute": {"matmul_precision": "low"}})


#: stages that never load a model: no torch math, so no `compute` param (inputs, data, filter
#: and report do not import torch; base_model does, but only to cast and save weights:
#: elementwise, the same bytes at any thread count)
NO_COMPUTE = {"inputs", "data", "filter", "report", "base_model"}


def test_every_stage_that_runs_a_model_depends_on_the_compute_params():
    # the thread count reaches dvc.lock through the params of every stage it can change
    import yaml
    from tinyproject import ROOT

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = []
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # foreach stages
        if name.removesuffix("_r0") not in NO_COMPUTE and "compute" not in stage.get("params", []):
            missing.append(name)
    assert missing == []
    assert NO_COMPUTE <= set(stages)
