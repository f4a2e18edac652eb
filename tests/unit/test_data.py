from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from selfimprove.data import (
    DataConfig,
    SourceConfig,
    final_answer,
    generate_arith,
    normalize_question,
    prepare,
    question_numbers,
)
from selfimprove.io import InputError, read_jsonl

GSM8K_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gsm8k"
ANN_RE = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>")


def _check_solution(rec: dict) -> int:
    """Recompute every calculator annotation; return the number of operations.

    Each operand must be a number of the question or an earlier result, every question number
    must be used, no result may be negative, and the final ``#### N`` is the last result.
    """
    q_nums = [int(x) for x in question_numbers(rec["question"])]
    available = list(q_nums)
    results: list[int] = []
    anns = ANN_RE.findall(rec["answer"])
    assert anns, rec
    for a, op, b, r in anns:
        a, b, r = int(a), int(b), int(r)
        true = {"+": a + b, "-": a - b, "*": a * b}.get(op)
        if op == "/":
            assert a % b == 0, rec
            true = a // b
        if op == "*":
            assert true < 200, rec
        assert true == r >= 0, rec
        for x in (a, b):
            assert x in available, (x, rec)
            available.remove(x)
        available.append(r)
        results.append(r)
    assert available == [results[-1]], rec  # every number of the question was used
    assert rec["answer"].splitlines()[-1] == f"#### {results[-1]}"
    assert final_answer(rec["answer"]) == str(results[-1])
    assert all(1 <= x <= 20 for x in q_nums), rec
    return len(anns)


def _write(path: Path, rows: list, blank_after: int | None = None) -> Path:
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def _gsm_rows(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "question": f"Sam has {i + offset} pens and {2 * i + 1} caps. How many items?",
            "answer": f"{i + offset} + {2 * i + 1} = <<{i + offset}+{2 * i + 1}="
            f"{3 * i + offset + 1}>>{3 * i + offset + 1}\n#### {3 * i + offset + 1:,}",
        }
        for i in range(n)
    ]


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ arith generator


def test_generate_arith_deterministic_and_seeded():
    a = generate_arith(50, [1, 2, 3], seed=7)
    assert a == generate_arith(50, [1, 2, 3], seed=7)
    b = generate_arith(50, [1, 2, 3], seed=8)
    assert [r["question"] for r in a] != [r["question"] for r in b]
    assert [r["id"] for r in a] == [f"arith-{i}" for i in range(50)]
    assert all(set(r) == {"id", "question", "answer"} for r in a)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_generate_arith_steps_respected_and_solutions_correct(k):
    recs = generate_arith(150, [k], seed=1)
    assert [_check_solution(r) for r in recs] == [k] * 150
    ops = {"".join(m[1] for m in ANN_RE.findall(r["answer"])) for r in recs}
    assert len(ops) >= {1: 4, 2: 6, 3: 10}[k], ops  # + - * / in many combinations
    skeletons = {re.sub(r"\d+", "N", r["question"]) for r in recs}
    assert len(skeletons) > 120  # varied names, items and verbs, not one template


def test_generate_arith_mix_and_unique_numbers():
    recs = generate_arith(400, [1, 2, 3], seed=3)
    counts = {k: 0 for k in (1, 2, 3)}
    for r in recs:
        counts[_check_solution(r)] += 1
    assert all(c > 80 for c in counts.values()), counts
    keys = [question_numbers(r["question"]) for r in recs]
    assert len(set(keys)) == len(keys)
    assert len({r["question"].split()[0] for r in recs}) > 10  # many names
    assert len({normalize_question(r["question"]) for r in recs}) == 400


def test_generate_arith_too_many_one_step_problems():
    with pytest.raises(InputError, match=r"could only make \d+ of n=1000 .*lower n"):
        generate_arith(1000, [1], seed=0)


# ------------------------------------------------------------------------------ configs


def test_source_config_validation():
    with pytest.raises(ValidationError, match="needs path"):
        SourceConfig(source="jsonl")
    with pytest.raises(ValidationError, match="needs n"):
        SourceConfig(source="arith")
    with pytest.raises(ValidationError, match="steps"):
        SourceConfig(source="arith", n=5, steps=[4])
    with pytest.raises(ValidationError, match="steps"):
        SourceConfig(source="arith", n=5, steps=[])
    with pytest.raises(ValidationError):
        SourceConfig(source="arith", n=5, size=3)
    assert SourceConfig(source="arith", n=5, steps=[3, 1, 3]).steps == [1, 3]
    assert SourceConfig(source="gsm8k_hub").n is None
    assert all(f.description for f in SourceConfig.model_fields.values())
    assert all(f.description for f in DataConfig.model_fields.values())


def test_data_config_validation():
    with pytest.raises(ValidationError, match="a-z, 0-9"):
        DataConfig(eval={"Bad-Name": SourceConfig(source="arith", n=5)})
    with pytest.raises(ValidationError, match="reserved"):
        DataConfig(eval={"train": SourceConfig(source="arith", n=5)})
    cfg = DataConfig.model_validate(
        {"train": {"source": "arith", "n": 10}, "eval": {"e1": {"source": "arith", "n": 5}}}
    )
    assert cfg.seed_set is None and cfg.eval["e1"].steps == [1, 2]
    DataConfig()  # the defaults are valid


# ------------------------------------------------------------------------------ prepare


def _arith_cfg(small_jsonl: Path, train_n: int = 200) -> DataConfig:
    return DataConfig(
        train=SourceConfig(source="arith", n=train_n, steps=[1, 2]),
        eval={
            "easy": SourceConfig(source="arith", n=60, steps=[1, 2]),
            "hard": SourceConfig(source="arith", n=30, steps=[3]),
            "real": SourceConfig(source="jsonl", path=str(small_jsonl), n=12),
        },
        seed_set=SourceConfig(source="arith", n=8, steps=[1]),
    )


@pytest.fixture()
def small_jsonl(tmp_path) -> Path:
    return _write(tmp_path / "small.jsonl", _gsm_rows(20))


def test_prepare_writes_sets_deterministic_and_disjoint(tmp_path, small_jsonl):
    cfg = _arith_cfg(small_jsonl)
    stats = prepare(cfg, tmp_path / "a", seed=0)
    prepare(cfg, tmp_path / "b", seed=0)
    prepare(cfg, tmp_path / "c", seed=1)
    fa, fb, fc = (_files(tmp_path / x) for x in "abc")
    assert sorted(fa) == [
        "eval/easy.jsonl",
        "eval/hard.jsonl",
        "eval/real.jsonl",
        "seed.jsonl",
        "train.jsonl",
        "train_labels.jsonl",
    ]
    assert fa == fb  # byte-identical for the same seed
    assert fa["train.jsonl"] != fc["train.jsonl"] and fa["eval/easy.jsonl"] != fc["eval/easy.jsonl"]

    d = tmp_path / "a"
    train = read_jsonl(d / "train.jsonl")
    labels = read_jsonl(d / "train_labels.jsonl")
    assert all(set(r) == {"id", "question"} for r in train)  # no labels in the training pool
    assert [r["id"] for r in train] == [f"train-{i}" for i in range(200)]
    assert [r["id"] for r in labels] == [r["id"] for r in train]
    sets = {"train": [{**q, **a} for q, a in zip(train, labels, strict=True)]}
    sets["seed"] = read_jsonl(d / "seed.jsonl")
    for name in ("easy", "hard", "real"):
        sets[name] = read_jsonl(d / "eval" / f"{name}.jsonl")
        assert [r["id"] for r in sets[name]] == [f"{name}-{i}" for i in range(len(sets[name]))]
    assert {k: len(v) for k, v in sets.items()} == {
        "train": 200,
        "seed": 8,
        "easy": 60,
        "hard": 30,
        "real": 12,
    }
    assert stats["counts"] == {
        "seed": 8,
        "train": 200,
        "eval/easy": 60,
        "eval/hard": 30,
        "eval/real": 12,
    }
    for name in ("train", "seed", "easy", "hard"):
        ops = [_check_solution(r) for r in sets[name]]
        want = {"hard": {3}, "seed": {1}}.get(name, {1, 2})
        assert set(ops) == want, name

    # disjoint: no shared question text between any two sets, no shared number tuple
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ta = {normalize_question(r["question"]) for r in sets[a]}
            tb = {normalize_question(r["question"]) for r in sets[b]}
            assert not ta & tb, (a, b)
            na = {question_numbers(r["question"]) for r in sets[a]}
            nb = {question_numbers(r["question"]) for r in sets[b]}
            assert not na & nb, (a, b)
    assert set(stats["overlap"]["text"].values()) == {0}
    assert set(stats["overlap"]["numbers"].values()) == {0}
    assert stats["sets"]["eval/real"]["sha256"]
    assert sum(stats["sets"]["train"]["steps_made"].values()) == 200
    json.dumps(stats)  # serializable


def test_prepare_eval_stable_when_train_size_changes(tmp_path, small_jsonl):
    prepare(_arith_cfg(small_jsonl, train_n=100), tmp_path / "a", seed=0)
    prepare(_arith_cfg(small_jsonl, train_n=300), tmp_path / "b", seed=0)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    for name in ("eval/easy.jsonl", "eval/hard.jsonl", "eval/real.jsonl", "seed.jsonl"):
        assert fa[name] == fb[name], name
    assert fa["train.jsonl"] != fb["train.jsonl"]


def test_prepare_no_seed_set_and_stale_eval_removed(tmp_path):
    out = tmp_path / "out"
    two = {"x": SourceConfig(source="arith", n=5), "y": SourceConfig(source="arith", n=5)}
    prepare(DataConfig(train=SourceConfig(source="arith", n=10), eval=two), out, seed=0)
    assert (out / "eval" / "y.jsonl").exists()
    one = {"x": SourceConfig(source="arith", n=5)}
    stats = prepare(DataConfig(train=SourceConfig(source="arith", n=10), eval=one), out, seed=0)
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["x.jsonl"]
    assert (out / "seed.jsonl").read_text() == "" and stats["counts"]["seed"] == 0
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporaries left


def test_prepare_missing_path_fails_before_any_work(tmp_path):
    cfg = DataConfig(
        train=SourceConfig(source="arith", n=10),
        eval={"gsm": SourceConfig(source="jsonl", path=str(tmp_path / "nope.jsonl"))},
    )
    with pytest.raises(InputError, match=r"data\.eval\.gsm\.path: file '.*nope\.jsonl' not found"):
        prepare(cfg, tmp_path / "out", seed=0)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ jsonl source


def test_jsonl_missing_key_names_file_and_line(tmp_path):
    rows = _gsm_rows(3)
    rows[2] = {"question": "no answer here"}
    p = _write(tmp_path / "bad.jsonl", rows, blank_after=1)  # the bad record is on line 4
    cfg = DataConfig(eval={"e": SourceConfig(source="jsonl", path=str(p))})
    with pytest.raises(InputError, match=r"bad\.jsonl line 4: missing key 'answer'"):
        prepare(cfg, tmp_path / "out", seed=0)


def test_jsonl_bad_final_answer_names_file_and_line(tmp_path):
    rows = _gsm_rows(3)
    rows[1]["answer"] = "The answer is 7."
    p = _write(tmp_path / "bad.jsonl", rows, blank_after=0)  # record 2 is on line 3
    cfg = DataConfig(eval={"e": SourceConfig(source="jsonl", path=str(p))})
    with pytest.raises(InputError, match=r"bad\.jsonl line 3: 'answer' must end with .*####"):
        prepare(cfg, tmp_path / "out", seed=0)
    _write(p, ["{not json"])
    with pytest.raises(InputError, match=r"bad\.jsonl line 1: not valid JSON"):
        prepare(cfg, tmp_path / "out", seed=0)


def test_jsonl_subset_commas_duplicates_and_too_many(tmp_path):
    rows = _gsm_rows(400)
    rows.append(dict(rows[0], question=rows[0]["question"].upper() + "  "))  # a duplicate
    p = _write(tmp_path / "pool.jsonl", rows)
    cfg = DataConfig(
        train=SourceConfig(source="jsonl", path=str(p)),  # all the rest
        eval={"e": SourceConfig(source="jsonl", path=str(p), n=50)},
    )
    stats = prepare(cfg, tmp_path / "out", seed=0)
    ev = read_jsonl(tmp_path / "out" / "eval" / "e.jsonl")
    tr = read_jsonl(tmp_path / "out" / "train_labels.jsonl")
    assert len(ev) == 50 and len(tr) == 350  # the duplicate of an earlier row is dropped
    assert stats["sets"]["train"]["dropped"] == {"duplicate_in_source": 1, "in_other_set": 50}
    big = [r for r in ev + tr if "," in r["answer"].splitlines()[-1]]
    assert not big  # '#### 1,000' became '#### 1000'
    assert any(r["answer"].endswith("#### 1000") for r in ev + tr)
    # the subset is seeded and keeps file order
    qs = [r["question"] for r in read_jsonl(tmp_path / "out" / "eval" / "e.jsonl")]
    order = [int(q.split()[2]) for q in qs]
    assert order == sorted(order)
    prepare(cfg, tmp_path / "out2", seed=1)
    assert read_jsonl(tmp_path / "out2" / "eval" / "e.jsonl") != ev

    cfg = DataConfig(eval={"e": SourceConfig(source="jsonl", path=str(p), n=500)})
    with pytest.raises(InputError, match=r"data\.eval\.e\.n=500 .* only 400 usable"):
        prepare(cfg, tmp_path / "out3", seed=0)


@pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").exists(), reason="no local GSM8K copy")
def test_real_gsm8k_files(tmp_path):
    cfg = DataConfig(
        train=SourceConfig(source="jsonl", path=str(GSM8K_DIR / "train.jsonl"), n=300),
        eval={
            "gsm8k": SourceConfig(source="jsonl", path=str(GSM8K_DIR / "test.jsonl")),
            "arith": SourceConfig(source="arith", n=50),
        },
        seed_set=SourceConfig(source="jsonl", path=str(GSM8K_DIR / "train.jsonl"), n=8),
    )
    stats = prepare(cfg, tmp_path / "out", seed=0)
    test = read_jsonl(tmp_path / "out" / "eval" / "gsm8k.jsonl")
    assert len(test) == 1319 and stats["counts"]["eval/gsm8k"] == 1319
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", final_answer(r["answer"]) or "") for r in test)
    assert test[0]["question"].startswith("Janet")  # n: null keeps the file's order
    assert test[0]["answer"].endswith("#### 18")
    seed = {r["question"] for r in read_jsonl(tmp_path / "out" / "seed.jsonl")}
    train = {r["question"] for r in read_jsonl(tmp_path / "out" / "train.jsonl")}
    assert len(seed) == 8 and len(train) == 300 and not seed & train


# ------------------------------------------------------------------------------ gsm_symbolic


def test_gsm_symbolic(tmp_path):
    cfg = DataConfig(
        train=SourceConfig(source="gsm_symbolic", n=60),
        eval={"sym": SourceConfig(source="gsm_symbolic", n=40)},
    )
    stats = prepare(cfg, tmp_path / "a", seed=0)
    prepare(cfg, tmp_path / "b", seed=0)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    ev = read_jsonl(tmp_path / "a" / "eval" / "sym.jsonl")
    tr = read_jsonl(tmp_path / "a" / "train.jsonl")
    assert len(ev) == 40 and len(tr) == 60 and stats["warnings"] == []
    for r in ev:
        assert "Do not include units" not in r["question"]
        value = final_answer(r["answer"])
        assert value is not None and not value.startswith("-")
        assert r["answer"].splitlines()[-1] == f"#### {value}"
    nums_ev = {question_numbers(r["question"]) for r in ev}
    nums_tr = {question_numbers(r["question"]) for r in tr}
    assert len(nums_ev) == 40 and len(nums_tr) == 60 and not nums_ev & nums_tr


# ------------------------------------------------------------------------------ hub source


def test_hub_offline_error(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    cfg = DataConfig(eval={"gsm8k": SourceConfig(source="gsm8k_hub")})
    with pytest.raises(InputError, match=r"data\.eval\.gsm8k .*offline.*source: jsonl"):
        prepare(cfg, tmp_path / "out", seed=0)
    assert not (tmp_path / "out").exists()


def test_hub_rows_are_mapped(tmp_path, monkeypatch):
    import datasets

    class FakeDataset(list):
        column_names = ["question", "answer"]

    calls = []

    def fake(hub_id, config, split):
        calls.append((hub_id, config, split))
        return FakeDataset(_gsm_rows(30))

    monkeypatch.setattr(datasets, "load_dataset", fake)
    cfg = DataConfig(eval={"gsm8k": SourceConfig(source="gsm8k_hub", n=10, split="test")})
    stats = prepare(cfg, tmp_path / "out", seed=0)
    assert calls == [("openai/gsm8k", "main", "test")]
    ev = read_jsonl(tmp_path / "out" / "eval" / "gsm8k.jsonl")
    assert len(ev) == 10 and stats["sets"]["eval/gsm8k"]["available"] == 30
