"""A bigger unlabeled pool (``data.train.max_operand``, docs/unlabeled-pool.md): at least 2,048
1-step training questions, none repeating a held-out question's computation, while the default
``data/prepared`` stays byte for byte what it was."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from selfimprove.config import parse_params
from selfimprove.config.data import DataConfig, SourceConfig
from selfimprove.core.io import InputError, read_jsonl
from selfimprove.data.arith import generate_arith
from selfimprove.data.prepare import prepare

#: sha256 of every file the default params write to data/prepared (seed 0), computed with the
#: generator before ``max_operand`` existed (the same bytes as /work/repro2/data/prepared)
DEFAULT_PREPARED_SHA256 = {
    "eval/arith_1step.jsonl": "ec448754b40d38efe8a26f4c247f99c440afdb05cb1fe5c037121f9d6fe4ee71",
    "eval/arith_2step.jsonl": "2aa2cf1b09a7432a2742a6c8e08e8e80bb73fc2f30922ce22619b337dc370a24",
    "eval/drop_gen.jsonl": "b52aa8d64f449cbd7c9a304430220f4d318e56848d5b9db6b80d22595605b1b3",
    "eval/gsm_symbolic.jsonl": "23b2a48417b99186460fdb3f6fe5d334697b2af65ac80017077504d53ff99bf4",
    "seed.jsonl": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "stats.json": "5afe7e4dc72e4a33b2289357f5b23ae0da32b321410556e2004010f8656c1df0",
    "train.jsonl": "baa8f91a59376d7f529679315436f3661d59339c3fab521a4928134380a96a26",
    "train_labels.jsonl": "dea376c0eaf49757a33f176acb5abea2b7ce6074081d13687b21c9d7f58696ea",
}
#: a calculator annotation of a worked solution: ``<<a op b=r>>``
ANN_RE = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>")


def _sha256s(d: Path) -> dict[str, str]:
    return {
        p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def computation(answer: str, commutative: bool = True) -> tuple[tuple[str, int, int], ...]:
    """A problem's (operation, operands) tuple, one per step, read from its worked solution
    (``+`` and ``*`` operands sorted unless ``commutative`` is False: 4 + 7 is 7 + 4)."""
    steps = []
    for a, op, b, _ in ANN_RE.findall(answer):
        x, y = int(a), int(b)
        if commutative and op in "+*":
            x, y = sorted((x, y))
        steps.append((op, x, y))
    return tuple(steps)


def test_default_prepared_is_byte_identical(tmp_path):
    params = parse_params({})
    assert params.data.train.n == 128 and params.data.train.max_operand is None
    prepare(params.data, tmp_path, params.data_seed)
    assert _sha256s(tmp_path) == DEFAULT_PREPARED_SHA256


def test_a_pool_of_2048_has_no_held_out_computation(tmp_path):
    """The default held-out sets (240 1-step, 60 2-step, ...) beside 2,048 1-step training
    questions with operands up to 64: no training question's (operation, operands) tuple is a
    held-out question's, or another training question's; the held-out sets stay as they are."""
    raw = {"data": {"train": {"source": "arith", "n": 2048, "steps": [1], "max_operand": 64}}}
    params = parse_params(raw)
    stats = prepare(params.data, tmp_path, params.data_seed)
    train = read_jsonl(tmp_path / "train_labels.jsonl")
    assert len(train) == stats["counts"]["train"] == 2048
    assert [len(computation(r["answer"])) for r in train] == [1] * 2048
    held_out = {
        computation(r["answer"])
        for name in ("arith_1step", "arith_2step")
        for r in read_jsonl(tmp_path / f"eval/{name}.jsonl")
    }
    assert len(held_out) > 200
    train_keys = [computation(r["answer"]) for r in train]
    assert not set(train_keys) & held_out
    assert len(set(train_keys)) == len(train_keys)
    # the wider operands are used, and the held-out sets are the default's bytes
    assert max(max(step[1:]) for key in train_keys for step in key) > 20
    for name in ("eval/arith_1step.jsonl", "eval/arith_2step.jsonl"):
        assert _sha256s(tmp_path)[name] == DEFAULT_PREPARED_SHA256[name]


def test_the_default_repeats_held_out_computations_the_wide_pool_does_not():
    """Why ``max_operand`` also checks computations: the default's numbers key sees "10 stamps in
    each of 4 boxes" and "4 boxes with 10 stamps in each" as different problems (kept as is: the
    default's bytes do not change)."""
    params = parse_params({})
    labeled = {}
    for mo in (None, 30):
        train = SourceConfig(source="arith", n=128, steps=[1], max_operand=mo)
        cfg = DataConfig(train=train, eval={"e": params.data.eval["arith_1step"]})
        labeled[mo] = _build_sets(cfg)
    for mo, sets in labeled.items():
        held = {computation(r["answer"], commutative=False) for r in sets["e"]}
        shared = {computation(r["answer"], commutative=False) for r in sets["train"]} & held
        assert bool(shared) == (mo is None), (mo, shared)


def _build_sets(cfg: DataConfig) -> dict[str, list[dict]]:
    from selfimprove.data.prepare import _build

    return _build(cfg, seed=0)[0]


def test_generate_arith_operands_follow_max_operand():
    recs = generate_arith(300, [1, 2], seed=0, max_operand=60)
    nums = [int(x) for r in recs for x in re.findall(r"\d+", r["question"])]
    assert 20 < max(nums) <= 60
    keys = [computation(r["answer"]) for r in recs]
    assert len(set(keys)) == len(keys)
    for r in recs:  # every annotation is right
        for a, op, b, res in ANN_RE.findall(r["answer"]):
            a, b, res = int(a), int(b), int(res)
            assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] == res >= 0
            assert op != "/" or a % b == 0
    assert generate_arith(5, [1], seed=0) == generate_arith(5, [1], seed=0, max_operand=None)


def test_max_operand_validation_and_too_small_a_range():
    with pytest.raises(ValidationError, match="max_operand=10"):
        SourceConfig(source="arith", n=5, max_operand=10)
    with pytest.raises(ValidationError, match="max_operand.*arith"):
        SourceConfig(source="gsm_symbolic", n=5, max_operand=50)
    with pytest.raises(InputError, match=r"could only make \d+ of n=3000 .*max_operand"):
        generate_arith(3000, [1], seed=0, max_operand=20)
