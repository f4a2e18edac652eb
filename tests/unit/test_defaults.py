"""One source of truth for defaults: the config models' code defaults are the values params.yaml
sets, key by key, so a key left out of params.yaml (or deleted) changes nothing; every key in
params.yaml is commented and every config field is described.

params.yaml repeats the code defaults; where the two disagreed, the params.yaml value won (the
default run's results stay the same).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from selfimprove.config import ConfigError, Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
RAW = yaml.safe_load(PARAMS.read_text())
#: keys with no default: leaving one out is an error that names it, never another value
REQUIRED = {"data.train.source", "data.train.n"}

Key = tuple[str, ...]


def _section_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The model of field ``name`` when it is a section (None: a value, compared whole)."""
    ann = model.model_fields[name].annotation
    options = (ann,) if get_origin(ann) is dict else (ann, *get_args(ann))  # X | None: X
    return next((t for t in options if isinstance(t, type) and issubclass(t, BaseModel)), None)


def _keys(raw: dict, model: type[BaseModel] = Params, prefix: Key = ()) -> list[tuple[Key, Any]]:
    """Every key params.yaml sets, with the model that owns it and whether it is a leaf.

    Sections (a mapping for a model) are walked into; a mapping-valued field such as
    ``data.eval`` or ``rounds`` (user-chosen names) is one leaf, compared as a whole.
    """
    out = []
    for name, value in raw.items():
        key = (*prefix, name)
        sub = _section_model(model, name) if isinstance(value, dict) else None
        out.append((key, model, sub is None))
        if sub is not None:
            out += _keys(value, sub, key)
    return out


def _get(dumped: dict, key: Key) -> Any:
    for part in key:
        dumped = dumped[part]
    return dumped


def _mismatches(raw: dict) -> list[str]:
    """One line per leaf key of ``raw`` whose code default differs from its value in ``raw``."""
    code, shipped = Params().model_dump(), parse_params(copy.deepcopy(raw)).model_dump()
    out = []
    for key, model, leaf in _keys(raw):
        if leaf and _get(code, key) != _get(shipped, key):
            out.append(
                f"{'.'.join(key)}: params.yaml sets {_get(shipped, key)!r} but the code default "
                f"is {_get(code, key)!r}; fix: make the default of "
                f"{model.__module__}.{model.__name__}.{key[-1]} the params.yaml value (it wins: "
                "the default run's results must not change)"
            )
    return out


def test_code_defaults_equal_params_yaml():
    problems = _mismatches(RAW)
    assert not problems, "\n".join(problems)
    assert parse_params({}) == load_params(PARAMS)  # the whole file, too


def test_a_planted_disagreement_is_named():
    raw = copy.deepcopy(RAW)
    raw["evaluate"]["max_new_tokens"] = 160
    raw["data"]["eval"]["arith_1step"]["n"] = 99
    problems = _mismatches(raw)
    assert len(problems) == 2, problems
    assert problems[0].startswith("data.eval: params.yaml sets {")
    assert "selfimprove.config.data.DataConfig.eval" in problems[0]
    assert problems[1].startswith(
        "evaluate.max_new_tokens: params.yaml sets 160 but the code default is 128; fix: make "
        "the default of selfimprove.config.evaluation.EvaluateConfig.max_new_tokens"
    )


def test_the_walk_covers_sections_and_whole_mappings():
    walked = {".".join(k): leaf for k, _, leaf in _keys(RAW)}
    assert walked["evaluate"] is False and walked["evaluate.max_new_tokens"] is True
    assert walked["warmstart.finetune.epochs"] is True and walked["data.seed_set"] is True
    assert walked["data.eval"] is True and "data.eval.arith_1step" not in walked
    assert walked["rounds"] is True and "rounds.r1" not in walked
    assert len([k for k, leaf in walked.items() if leaf]) > 90


def _flat(dumped: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in dumped.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _without(raw: dict, key: Key) -> dict:
    raw = copy.deepcopy(raw)
    parent = _get(raw, key[:-1])
    del parent[key[-1]]
    return raw


def test_deleting_any_key_changes_nothing():
    """Leaving a key (or a whole section) out of params.yaml gives the value it sets there —
    nested defaults included (``warmstart.finetune`` without ``epochs`` still trains 3 epochs)
    — or, for a required key, an error that names it."""
    shipped = load_params(PARAMS)
    changed, required = [], set()
    for key, _, _ in _keys(RAW):
        name = ".".join(key)
        try:
            got = parse_params(_without(RAW, key))
        except ConfigError as e:
            assert ".".join(key[:-1]) in str(e), (name, str(e))
            required.add(name)
            continue
        if got != shipped:
            have, want = _flat(got.model_dump()), _flat(shipped.model_dump())
            diff = [
                f"{k} = {have.get(k)!r} (params.yaml: {want.get(k)!r})"
                for k in sorted(have.keys() | want.keys())
                if have.get(k) != want.get(k)
            ]
            changed.append(f"deleting {name} gives {'; '.join(diff)}")
    assert not changed, "\n".join(changed)
    assert required == REQUIRED


_KEY_LINE = re.compile(r"^\s*[A-Za-z_]\w*\s*:")
_COMMENT = re.compile(r"(^|\s)#")


def test_every_params_key_has_a_comment():
    """Every key line in params.yaml carries a comment (on the line or just above it)."""
    lines = PARAMS.read_text().splitlines()
    missing = [
        f"params.yaml:{i + 1}: {line.strip()}"
        for i, line in enumerate(lines)
        if _KEY_LINE.match(line)
        and not _COMMENT.search(line)
        and not (i and lines[i - 1].lstrip().startswith("#"))
    ]
    assert not missing, "add a comment to:\n" + "\n".join(missing)


def _models(model: type[BaseModel] = Params, seen: set | None = None) -> list[type[BaseModel]]:
    """``model`` and every model its fields hold (sections, dict values, optionals)."""
    seen = set() if seen is None else seen
    seen.add(model)
    for field in model.model_fields.values():
        todo = [field.annotation]
        while todo:
            t = todo.pop()
            todo += get_args(t)
            if isinstance(t, type) and issubclass(t, BaseModel) and t not in seen:
                _models(t, seen)
    return sorted(seen, key=lambda m: m.__name__)


def test_every_config_field_has_a_description():
    models = _models()
    assert {"RoundConfig", "SourceConfig", "LoraSection", "FormatsConfig"} <= {
        m.__name__ for m in models
    }
    missing = [
        f"{m.__module__}.{m.__name__}.{name}"
        for m in models
        for name, field in m.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, "add Field(description=...) to:\n" + "\n".join(missing)


@pytest.mark.parametrize("section", ["warmstart", "meta_skill"])
def test_nested_finetune_epochs_default_when_the_section_is_partial(section):
    want = getattr(Params(), section).finetune.epochs
    got = getattr(parse_params({section: {"finetune": {"batch_size": 2}}}), section).finetune
    assert (got.epochs, got.batch_size) == (want, 2)
