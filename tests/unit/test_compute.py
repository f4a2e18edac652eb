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


def test_compute_keys_are_validated():
    from selfimprove.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match="compute.threads"):
        parse_params({"compute": {"threads": 0}})
    with pytest.raises(ConfigError, match="compute.matmul_precision"):
        parse_params({"compute": {"matmul_precision": "low"}})
