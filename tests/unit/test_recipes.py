"""The recipe list is the one place a method lives: no method-name comparison outside
src/selfimprove/recipes, and the views and stages ask the recipes."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from selfimprove.config import METHOD_NAMES, ConfigError, parse_params
from selfimprove.recipes import RECIPES, get_recipe

ROOT = Path(__file__).resolve().parents[2]
#: names that stand for lists of methods (comparing against them is a method-name comparison)
METHOD_LISTS = {"SELF_METHODS", "LABEL_METHODS", "METHOD_NAMES", "METHODS"}


def _is_method_name(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in METHOD_NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_is_method_name(e) for e in node.elts)
    if isinstance(node, ast.Name | ast.Attribute):
        return (node.id if isinstance(node, ast.Name) else node.attr) in METHOD_LISTS
    if isinstance(node, ast.BinOp):
        return _is_method_name(node.left) or _is_method_name(node.right)
    return False


def method_comparisons(source: str, where: str = "") -> list[str]:
    """``file:line`` of every comparison (==, !=, in, not in, match case) with a method name or a
    list of them in ``source``.

    >>> method_comparisons("if method == 'star': pass\\nif m in SELF_METHODS: pass\\n")
    [':1', ':2']
    >>> method_comparisons("x = {'self', 'kwargs'}\\nif key == 'gold': pass\\n")
    []
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        operands: list[ast.AST] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.MatchValue):
            operands = [node.value]
        if any(_is_method_name(o) for o in operands):
            found.append(f"{where}:{node.lineno}")
    return found


def test_no_method_name_comparison_outside_the_recipes():
    files = [
        p
        for top in ("src", "stages")
        for p in sorted((ROOT / top).rglob("*.py"))
        if "recipes" not in p.relative_to(ROOT).parts
    ]
    assert len(files) > 20
    found = [
        hit for p in files for hit in method_comparisons(p.read_text(), str(p.relative_to(ROOT)))
    ]
    assert not found, (
        "method-name comparisons outside src/selfimprove/recipes (ask the method's recipe "
        f"instead: selfimprove.recipes.get_recipe(name).<field>): {found}"
    )


def test_the_checker_catches_a_planted_comparison():
    planted = "def f(params):\n    return params.method in ('star', 'rest_em')\n"
    assert method_comparisons(planted, "x.py") == ["x.py:2"]


def test_recipes_are_unique_and_the_default_first():
    names = [r.name for r in RECIPES]
    assert names[0] == "lmsi" == parse_params({}).method
    assert len(set(names)) == len(names) and tuple(names) == METHOD_NAMES
    assert {r.objective for r in RECIPES} == {"sft", "dpo", "grpo"}
    assert [r.name for r in RECIPES if r.pairs is not None] == ["scpo"]
    assert [r.name for r in RECIPES if r.objective == "grpo"] == ["ttrl"]
    assert [r.name for r in RECIPES if r.uses_labels] == ["star", "rest_em"]
    assert [r.name for r in RECIPES if r.needs_seed_set] == ["self", "lmsi_self"]
    assert [r.name for r in RECIPES if r.init == "base"] == ["star", "rest_em"]
    # only the gold step reads labels; only the self-refine step needs the meta-skill stage
    assert all(r.uses_labels == (r.refine == "gold") for r in RECIPES)
    assert all(r.needs_seed_set == (r.refine == "self_refine") for r in RECIPES)


def test_old_method_keys_name_their_new_place():
    raw = {"refine": {"require_consistency": False, "rest_em_max_per_question": 2,
                      "star_rationalization": False}}  # fmt: skip
    with pytest.raises(ConfigError) as e:
        parse_params(raw)
    msg = str(e.value)
    for old, new in (("refine.require_consistency", "lmsi_self.require_consistency"),
                     ("refine.rest_em_max_per_question", "rest_em.max_per_question"),
                     ("refine.star_rationalization", "star.rationalization")):  # fmt: skip
        assert f"{old}: moved to {new}" in msg


def test_method_sections_are_validated():
    params = parse_params({"method": "rest_em", "rest_em": {"max_per_question": 2}})
    assert get_recipe(params.method).knobs(params).max_per_question == 2
    assert get_recipe("lmsi").knobs(params) is None
    bad_sections = [
        {"rest_em": {"max_per_question": True}},
        {"rest_em": {"max_per_question": -1}},
        {"star": {"rationalization": 1}},
        {"lmsi_self": {"consistency": True}},
    ]
    for bad in bad_sections:
        with pytest.raises(ConfigError, match=next(iter(bad))):
            parse_params(bad)
    with pytest.raises(Exception, match="not one of"):
        get_recipe("magic")


def test_a_method_added_to_the_list_is_selectable(monkeypatch):
    """A recipe added to the list is what get_recipe (and so the filter) finds by name."""
    import selfimprove.recipes as recipes
    from selfimprove.config.methods import FilterConfig
    from selfimprove.core.voting import majority_vote
    from selfimprove.methods.filter import filter_refined
    from selfimprove.recipes.base import Choice, Recipe

    def choose(i, rec, rnd):
        answers = [a if a is not None else "0" for a in rec["answers"]]
        return Choice(rec["paths"], answers, [True] * len(answers), *majority_vote(answers))

    toy = Recipe(name="toy", summary="every path", choose=choose, cap=lambda cfg, knobs: 0)
    monkeypatch.setattr(recipes, "RECIPES", (*recipes.RECIPES, toy))
    recs = [{"id": "a", "question": "Q?", "paths": ["1 + 1 = 2.", "hm"], "answers": ["2", None]}]
    rats, train, stats = filter_refined(recs, FilterConfig(), "toy")
    assert rats[0]["kept"] == [True, True] and rats[0]["method"] == "toy"
    assert stats["n_kept_paths"] == 2 and len(train) == 2 * 2 + 2


def test_refine_stage_asks_the_recipe(tmp_path, monkeypatch, caplog):
    """lmsi: the samples unchanged; rest_em: gold marks, and the warning that its paper starts
    every round from the base model (finetune.init kept as configured)."""
    import yaml
    from tinyproject import import_stage

    from selfimprove.core.io import read_jsonl, write_jsonl

    refine_stage = import_stage("refine")
    monkeypatch.chdir(tmp_path)
    samples = [{"id": "a", "question": "Q?", "paths": ["x", "y"], "answers": ["4", "5"]}]
    write_jsonl(tmp_path / "data/rounds/r1/samples.jsonl", samples)
    write_jsonl(tmp_path / "data/prepared/train_labels.jsonl", [{"id": "a", "answer": "#### 4"}])
    out = tmp_path / "data/rounds/r1"
    for method in ("lmsi", "rest_em"):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"method": method}))
        with caplog.at_level("WARNING"):
            refine_stage.main(["--round", "r1", "--model", "unused"])
        stats = json.loads((out / "refine.json").read_text())
        assert stats["method"] == method
    assert read_jsonl(out / "refined.jsonl")[0]["correct"] == [True, False]
    assert stats["n_correct_paths"] == 1
    assert "method rest_em: the paper fine-tunes the base model every round" in caplog.text


def test_round_analysis_logs_refined_records_only_for_a_refine_step(tmp_path):
    from selfimprove.core.io import write_json, write_jsonl
    from selfimprove.evaluation.analysis import round_analysis

    out = tmp_path / "r1"
    rat = {"id": "a", "majority": "4", "selected": True, "answers": ["4"], "kept": [True]}
    write_jsonl(out / "rationales.jsonl", [rat])
    write_jsonl(out / "train.jsonl", [])
    write_jsonl(out / "refined.jsonl", [{"id": "a", "paths": ["x"], "answers": ["4"]}])
    write_json(out / "filter.json", {"n_kept_paths": 1})
    write_json(out / "scores.json", {"arith": {"fewshot_cot": {"strict": 0.5}}})
    write_jsonl(tmp_path / "labels.jsonl", [{"id": "a", "answer": "#### 4"}])
    metrics, datasets = round_analysis(
        out, tmp_path / "labels.jsonl", has_refined=False, round_name="r1"
    )
    assert metrics["filter.n_kept_paths"] == 1
    assert metrics["arith.fewshot_cot.strict"] == 0.5
    assert [c for _, c in datasets] == ["rationales", "training"]
    assert any(k.startswith("analysis.") for k in metrics)
    _, datasets = round_analysis(out, tmp_path / "labels.jsonl", has_refined=True, round_name="r1")
    assert [(p.name, c) for p, c in datasets][-1] == ("refined.jsonl", "refinement")
