"""Characterization: every method's filter outputs (rationales.jsonl, train.jsonl, filter.json,
vote.json) on hand-made records (tests/unit/filter_cases.py) keep the bytes the filter wrote
before the recipes refactor (sha256 prefixes in tests/unit/data/filter_golden.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from filter_cases import CASES, records

from selfimprove.config.methods import FilterConfig
from selfimprove.core.io import write_json, write_jsonl
from selfimprove.methods.filter import select, vote_summary
from selfimprove.recipes import get_recipe

GOLDEN = Path(__file__).parent / "data" / "filter_golden.json"
METHODS = ["lmsi", "self", "lmsi_self", "star", "rest_em", "format_only"]
#: the old keyword arguments of the filter -> (method, key of its params section)
OLD_KNOBS = {
    "require_consistency": ("lmsi_self", "require_consistency"),
    "rest_em_max_per_question": ("rest_em", "max_per_question"),
}


def outputs(tmp: Path) -> dict[str, dict[str, str]]:
    got = {}
    for case, (cfg_kw, old, seed) in CASES.items():
        for name in METHODS:
            recipe = get_recipe(name)
            own = {k: v for key, (m, k) in OLD_KNOBS.items() if m == name for v in [old.get(key)]
                   if v is not None}  # fmt: skip
            knobs = recipe.params(**own) if recipe.params is not None else None
            for which, recs in (("recs", records()), ("empty", [])):
                rats, train, stats = select(recs, recipe, FilterConfig(**cfg_kw), knobs, seed)
                write_jsonl(tmp / "rationales.jsonl", rats)
                write_jsonl(tmp / "train.jsonl", train)
                write_json(tmp / "filter.json", stats)
                write_json(tmp / "vote.json", vote_summary(stats))
                got[f"{case}/{name}/{which}"] = {
                    f: hashlib.sha256((tmp / f).read_bytes()).hexdigest()[:16]
                    for f in ("rationales.jsonl", "train.jsonl", "filter.json", "vote.json")
                }
    return got


def test_every_method_writes_the_bytes_it_wrote_before(tmp_path):
    want = json.loads(GOLDEN.read_text())
    got = outputs(tmp_path)
    assert got.keys() == want.keys()
    diff = {k: [f for f in v if v[f] != want[k][f]] for k, v in got.items() if v != want[k]}
    assert not diff, f"outputs changed: {diff}"
