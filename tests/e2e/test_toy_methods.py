"""End to end: two methods added from inside the test, each one module in the project copy's
``src/selfimprove/recipes/`` plus one entry in its ``RECIPES`` list, run through `dvc repro` of the
tiny pipeline (one round; the second method reuses the first one's samples).

* ``toy_sft``: an SFT method that keeps every sampled path (its answer, or 0 where none was
  extracted), with no vote;
* ``toy_direct``: its filter keeps nothing; its train step reads the round's records
  (refined.jsonl = the samples) directly and trains on every path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tinyproject import dvc, new_project, ran_stages, run, tiny_params

pytestmark = pytest.mark.e2e

TOY_SFT = '''"""toy_sft (a test's method): keep every sampled path, no vote."""

from selfimprove.core.voting import majority_vote
from selfimprove.recipes.base import Choice, Recipe


def choose(i, rec, rnd):
    answers = [a if a is not None else "0" for a in rec["answers"]]
    eligible = [True] * len(answers)
    return Choice(rec["paths"], answers, eligible, *majority_vote(rec["answers"]))


RECIPE = Recipe(name="toy_sft", summary="every path (test)", choose=choose,
                cap=lambda cfg, knobs: 0)
'''

TOY_DIRECT = '''"""toy_direct (a test's method): the train step reads the round's records itself."""

from pathlib import Path

from selfimprove.core.io import read_jsonl
from selfimprove.core.voting import majority_vote
from selfimprove.recipes.base import Choice, Recipe


def choose(i, rec, rnd):
    n = len(rec["paths"])
    return Choice(rec["paths"], rec["answers"], [False] * n, *majority_vote(rec["answers"]),
                  selected=False)


def train_inputs(round_dir):
    return [
        {"prompt": f"Q: {r['question']}\\nA:", "completion": " " + p.strip()}
        for r in read_jsonl(Path(round_dir) / "refined.jsonl")
        for p in r["paths"]
        if p.strip()
    ]


RECIPE = Recipe(name="toy_direct", summary="trains on the samples (test)", choose=choose,
                train_inputs=train_inputs)
'''

TOYS = {"toy_sft": TOY_SFT, "toy_direct": TOY_DIRECT}


def add_method(src: Path, name: str, code: str) -> None:
    """One module in ``src/selfimprove/recipes/`` and one entry in its list."""
    pkg = src / "selfimprove" / "recipes"
    (pkg / f"{name}.py").write_text(code)
    init = pkg / "__init__.py"
    text = init.read_text()
    anchor = "RECIPES: tuple[Recipe, ...] = (\n"
    assert anchor in text
    head, _, rest = text.partition(anchor)
    entries, _, tail = rest.partition("\n)\n")
    init.write_text(
        f"{head}from selfimprove.recipes import {name}  # noqa: E402\n\n"
        f"{anchor}{entries}\n    {name}.RECIPE,\n)\n{tail}"  # the one list entry
    )


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def project(tiny_model, tmp_path_factory):
    params = tiny_params(tiny_model, method="toy_sft", rounds={"r1": {"prev": "r0"}},
                         tracking={"pipeline": "e2e-toys"})  # fmt: skip
    proj, env = new_project(tmp_path_factory.mktemp("e2e-toys") / "project", params)
    for name, code in TOYS.items():
        add_method(proj / "src", name, code)
    run(["git", "add", "-A"], proj, env)
    first = run(dvc("repro"), proj, env)
    r1 = proj / "data" / "rounds" / "r1"
    sft = {f: (r1 / f).read_text() for f in ("train.jsonl", "finetune.json", "rationales.jsonl")}
    params["method"] = "toy_direct"
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    second = run(dvc("repro"), proj, env)
    return proj, sft, first.stdout, second.stdout


def test_toy_sft_trains_on_every_path(project):
    proj, sft, first, _ = project
    samples = _jsonl(proj / "data" / "rounds" / "r1" / "samples.jsonl")
    n_paths = sum(len(s["paths"]) for s in samples)
    rats = [json.loads(x) for x in sft["rationales.jsonl"].splitlines()]
    assert {r["method"] for r in rats} == {"toy_sft"}
    n_kept = sum(sum(r["kept"]) for r in rats)
    assert 0 < n_kept <= n_paths
    info = json.loads(sft["finetune.json"])
    assert info["n_examples"] == len(sft["train.jsonl"].splitlines()) > 0
    assert not info["skipped"] and "finetune@r1" in ran_stages(first)


def test_toy_direct_train_step_reads_the_samples(project):
    proj, _, _, second = project
    r1 = proj / "data" / "rounds" / "r1"
    assert (r1 / "train.jsonl").read_text() == ""  # its filter keeps nothing
    samples = _jsonl(r1 / "samples.jsonl")
    info = json.loads((r1 / "finetune.json").read_text())
    assert info["n_examples"] == sum(1 for s in samples for p in s["paths"] if p.strip()) > 0
    assert not info["skipped"]
    ran = ran_stages(second)
    assert "generate@r1" not in ran  # the samples are shared
    assert {"refine@r1", "filter@r1", "finetune@r1", "evaluate@r1"} <= set(ran)
    assert json.loads((r1 / "refine.json").read_text())["method"] == "toy_direct"
