"""dvc.yaml is generated from dvc.in.yaml (selfimprove.dvc_yaml)."""

from __future__ import annotations

from pathlib import Path

import yaml

from selfimprove.dvc_yaml import SPEC, render

ROOT = Path(__file__).resolve().parents[2]


def test_generated_equals_the_hand_written_dvc_yaml():
    """The description gives the very pipeline the hand-written dvc.yaml was: same stages,
    cmds, deps (in order), params, outs, metrics, foreach and plots."""
    generated = yaml.safe_load(render((ROOT / SPEC).read_text()))
    assert generated == yaml.safe_load((ROOT / "dvc.yaml").read_text())
