"""dvc.yaml is generated from dvc.in.yaml (selfimprove.dvc_yaml), and the committed copy is
what dvc.in.yaml gives (its parsed YAML was first checked equal to the hand-written dvc.yaml it
replaced: same stages, cmds, deps in order, params, outs, metrics, foreach and plots)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from selfimprove.dvc_yaml import HEADER, OUT, SPEC, SpecError, differences, main, render

ROOT = Path(__file__).resolve().parents[2]

TINY = """\
# the pipeline
shared_deps:
  - src/selfimprove/pipeline.py
stages:
  data:
    cmd: python -m stages.data
    outs:
      - data/prepared
  filter:
    foreach: ${rounds}
    do:
      cmd: python -m stages.filter --round ${key}
      deps:
        - src/selfimprove/methods/filter.py  # its step
        - data/rounds/${key}/refined.jsonl
      params:
        - filter
"""


def test_committed_dvc_yaml_is_fresh():
    generated = render((ROOT / SPEC).read_text())
    assert (ROOT / OUT).read_text() == generated, (
        f"{OUT} is stale: it is not what {SPEC} gives. Edit {SPEC} (not {OUT}), then run "
        "`make dvc.yaml` and commit both"
    )


def test_every_stage_gets_its_script_and_the_shared_deps():
    out = render(TINY)
    assert out.startswith("# GENERATED from dvc.in.yaml by `make dvc.yaml`")
    assert "# the pipeline\n" in out and "shared_deps" not in out[len(HEADER) :]
    stages = yaml.safe_load(out)["stages"]
    assert stages["data"] == {  # no deps in the description: they are added before outs
        "cmd": "python -m stages.data",
        "deps": ["stages/__init__.py", "stages/data.py", "src/selfimprove/pipeline.py"],
        "outs": ["data/prepared"],
    }
    assert list(stages["data"]) == ["cmd", "deps", "outs"]
    assert stages["filter"]["foreach"] == "${rounds}"
    assert stages["filter"]["do"]["deps"] == [
        "stages/__init__.py",
        "stages/filter.py",
        "src/selfimprove/pipeline.py",
        "src/selfimprove/methods/filter.py",
        "data/rounds/${key}/refined.jsonl",
    ]
    assert "- src/selfimprove/methods/filter.py  # its step\n" in out  # comments kept
    own = "        # its own step and data\n        - src/selfimprove/methods/filter.py"
    assert out[len(HEADER) :].count("# its own step and data") == 1 and own in out


@pytest.mark.parametrize(
    "edit, error",
    [
        (("cmd: python -m stages.data", "cmd: python stages/data.py"), "stage data: cmd"),
        (("cmd: python -m stages.data", "cmd: python -m stagesX.data"), "stage data: cmd"),
        (("  - src/selfimprove/methods/filter.py", "  - src/selfimprove/pipeline.py"), "lists"),
        (("shared_deps:\n  - src/selfimprove/pipeline.py\n", ""), "shared_deps"),
    ],
)
def test_a_bad_description_is_one_clear_error(edit, error):
    with pytest.raises(SpecError, match=error):
        render(TINY.replace(*edit))


def test_check_fails_on_a_stale_copy_and_writing_fixes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / SPEC).write_text(TINY)
    assert main(["--check"]) == 1  # no dvc.yaml yet
    assert main([]) == 0 and main(["--check"]) == 0
    (tmp_path / SPEC).write_text(TINY.replace("- filter\n", "- filter\n        - seed\n"))
    assert main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "dvc.yaml is stale" in err and "(filter: params)" in err
    assert main([]) == 0 and main(["--check"]) == 0
    assert "- seed" in (tmp_path / OUT).read_text()
    (tmp_path / SPEC).write_text("stages: [\n")
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_another_launcher_and_a_comment_only_change():
    spec = TINY.replace("python -m stages.data", "accelerate launch -m stages.data --x 1")
    assert yaml.safe_load(render(spec))["stages"]["data"]["deps"][1] == "stages/data.py"
    edited = render(TINY).replace("# its step", "# its step, reworded")
    assert differences(render(TINY), edited) == ["comments"]
