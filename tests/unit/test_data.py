from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from selfimprove.config.data import DataConfig, SourceConfig
from selfimprove.core.io import InputError, read_jsonl
from selfimprove.data.arith import generate_arith
from selfimprove.data.dedupe import normalize_question, question_numbers
from selfimprove.data.prepare import make_set, prepare
from selfimprove.data.sources import final_answer

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
    assert cfg.seed_set is None and cfg.eval["e1"].steps == [1]  # the default of params.yaml
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
        "stats.json",
        "train.jsonl",
        "train_labels.jsonl",
    ]
    assert json.loads(fa["stats.json"]) == json.loads(json.dumps(stats))
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


# ------------------------------------------------------------------------------ DROP sources

REAL_DROP = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "drop"


def _drop_row(passage: str, question: str, ref_text: str) -> dict:
    return {
        "context": f"Passage: {passage}\nQuestion: {question}\nAnswer:",
        "completion": " " + ref_text.split("|")[0],
        "ref_text": ref_text,
    }


def _drop_file(path: Path, n: int, dup_of: int | None = None) -> Path:
    rows = [
        _drop_row(f"Team {i} scored {i + 3} points.", "How many points?", str(i + 3))
        for i in range(n)
    ]
    if dup_of is not None:  # same passage and question up to case/punctuation, other gold
        r = rows[dup_of]
        rows.append(dict(r, context=r["context"].replace("How many", "how many"), ref_text="0"))
    return _write(path, rows)


def test_drop_sources_config():
    assert SourceConfig(source="drop_hub").hub_id == "ucinlp/drop"
    assert SourceConfig(source="drop_hub").split == "validation"
    assert SourceConfig(source="gsm8k_hub").hub_id == "openai/gsm8k"
    assert SourceConfig(source="gsm8k_hub").split == "test"
    assert SourceConfig(source="drop_hub", hub_id="me/drop", split="train").hub_id == "me/drop"
    with pytest.raises(ValidationError, match="drop_jsonl needs path"):
        SourceConfig(source="drop_jsonl")
    with pytest.raises(ValidationError, match="drop_gen needs n"):
        SourceConfig(source="drop_gen")
    for key in ("train", "seed_set"):
        with pytest.raises(ValidationError, match=rf"{key}\n.*drop_gen .* eval-only"):
            DataConfig.model_validate({key: {"source": "drop_gen", "n": 5}})
    DataConfig(eval={"d": SourceConfig(source="drop_gen", n=3)})


def test_prepare_drop_gen_and_jsonl(tmp_path):
    f = _drop_file(tmp_path / "mini_drop.jsonl", 30, dup_of=4)
    cfg = DataConfig(
        train=SourceConfig(source="arith", n=20, steps=[1]),
        eval={
            "arith": SourceConfig(source="arith", n=5, steps=[1]),
            "gen_a": SourceConfig(source="drop_gen", n=7),
            "gen_b": SourceConfig(source="drop_gen", n=5),
            "real": SourceConfig(source="drop_jsonl", path=str(f), n=12),
            "rest": SourceConfig(source="drop_jsonl", path=str(f)),
        },
    )
    stats = prepare(cfg, tmp_path / "a", seed=0)
    prepare(cfg, tmp_path / "b", seed=0)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    prepare(cfg, tmp_path / "c", seed=1)
    fc = _files(tmp_path / "c")
    assert fc["eval/real.jsonl"] != _files(tmp_path / "a")["eval/real.jsonl"]
    assert fc["eval/gen_a.jsonl"] != _files(tmp_path / "a")["eval/gen_a.jsonl"]
    ev = {n: read_jsonl(tmp_path / "a" / "eval" / f"{n}.jsonl") for n in cfg.eval}
    assert {n: len(v) for n, v in ev.items()} == {
        "arith": 5,
        "gen_a": 7,
        "gen_b": 5,
        "real": 12,
        "rest": 18,  # 30 questions, 12 taken by "real", the duplicate dropped
    }
    for name in ("gen_a", "gen_b", "real", "rest"):
        for r in ev[name]:
            assert set(r) == {"id", "passage", "question", "answers"}
            assert r["answers"] and all(isinstance(a, list) and a for a in r["answers"])
    # source ids are kept; the real subset keeps file order; the duplicate (row 30) never wins
    idx = [int(r["id"].split("-")[1]) for r in ev["real"] + ev["rest"]]
    assert sorted(idx) == list(range(30)) and idx[:12] == sorted(idx[:12])
    assert all(r["id"].startswith("gen-0-") for r in ev["gen_a"] + ev["gen_b"])
    keys = [(r["passage"], r["question"]) for n in ("gen_a", "gen_b") for r in ev[n]]
    assert len(set(keys)) == 12  # no question in two DROP sets
    info = stats["sets"]["eval/rest"]
    assert info["format"] == "drop" and info["available"] == 31
    assert info["dropped"] == {"duplicate_in_source": 1, "in_other_set": 12}
    assert stats["counts"]["eval/gen_a"] == 7 and stats["sets"]["eval/real"]["sha256"]
    assert all("gen_" not in pair and "real" not in pair for pair in stats["overlap"]["text"])
    # GSM-format sets are unchanged by adding DROP sets
    plain = DataConfig(train=cfg.train, eval={"arith": cfg.eval["arith"]})
    prepare(plain, tmp_path / "plain", seed=0)
    fp, fa = _files(tmp_path / "plain"), _files(tmp_path / "a")
    assert all(fp[k] == fa[k] for k in fp if k != "stats.json")  # stats.json lists every set


def test_prepare_drop_errors(tmp_path):
    f = _drop_file(tmp_path / "mini.jsonl", 5)
    cfg = DataConfig(eval={"d": SourceConfig(source="drop_jsonl", path=str(f), n=6)})
    with pytest.raises(InputError, match=r"data\.eval\.d\.n=6 but mini\.jsonl has only 5 usable"):
        prepare(cfg, tmp_path / "out", seed=0)
    missing = DataConfig(eval={"d": SourceConfig(source="drop_jsonl", path="no/drop.jsonl.gz")})
    with pytest.raises(InputError, match=r"data\.eval\.d\.path: file .* not found.*simple-evals"):
        prepare(missing, tmp_path / "out", seed=0)
    _write(f, [{"context": "no passage here", "ref_text": "1"}])
    with pytest.raises(InputError, match=r"mini\.jsonl line 1: .*Passage"):
        prepare(
            DataConfig(eval={"d": SourceConfig(source="drop_jsonl", path=str(f))}),
            tmp_path / "o",
            0,
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_drop_hub_offline_error_and_rows(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'ucinlp/drop' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    cfg = DataConfig(eval={"drop": SourceConfig(source="drop_hub", n=2)})
    with pytest.raises(
        InputError,
        match=r"data\.eval\.drop \('ucinlp/drop', split 'validation'\): .*offline.*"
        r"source: drop_jsonl",
    ):
        prepare(cfg, tmp_path / "out", seed=0)
    assert not (tmp_path / "out").exists()

    class FakeDataset(list):
        column_names = ["query_id", "passage", "question", "answers_spans"]

    calls = []

    def fake(hub_id, split):
        calls.append((hub_id, split))
        return FakeDataset(
            {
                "query_id": f"q{i}",
                "passage": f"P{i} with {i} goals.",
                "question": "How many goals?",
                "answers_spans": {"spans": [str(i)], "types": ["number"]},
            }
            for i in range(10)
        )

    monkeypatch.setattr(datasets, "load_dataset", fake)
    stats = prepare(cfg, tmp_path / "out", seed=0)
    ev = read_jsonl(tmp_path / "out" / "eval" / "drop.jsonl")
    assert calls == [("ucinlp/drop", "validation")]
    assert len(ev) == 2 and all(r["id"].startswith("q") for r in ev)
    assert ev[0]["answers"] == [[ev[0]["id"][1:]]] and stats["sets"]["eval/drop"]["available"] == 10


def test_make_set_matches_prepare(tmp_path):
    f = _drop_file(tmp_path / "mini.jsonl", 20)
    for sc in (
        SourceConfig(source="drop_jsonl", path=str(f), n=6),
        SourceConfig(source="drop_gen", n=4),
        SourceConfig(source="jsonl", path=str(_write(tmp_path / "g.jsonl", _gsm_rows(20))), n=5),
        SourceConfig(source="arith", n=5, steps=[2]),
    ):
        recs, info = make_set("ev", sc, seed=3)
        prepare(
            DataConfig(train=SourceConfig(source="arith", n=1), eval={"ev": sc}), tmp_path / "o", 3
        )
        assert recs == read_jsonl(tmp_path / "o" / "eval" / "ev.jsonl") and len(recs) == sc.n
        assert info["source"] == sc.source
    with pytest.raises(InputError, match="set name 'train'"):
        make_set("train", SourceConfig(source="drop_gen", n=1), seed=0)


@pytest.mark.skipif(not (REAL_DROP / "drop_v0_dev.jsonl.gz").exists(), reason="no DROP copy")
def test_real_drop_file(tmp_path):
    path = str(REAL_DROP / "drop_v0_dev.jsonl.gz")
    recs, info = make_set("drop", SourceConfig(source="drop_jsonl", path=path, n=200), seed=0)
    assert len(recs) == 200 and info["available"] == 9536
    assert info["dropped"]["duplicate_in_source"] > 800  # 9,536 rows, ~8,660 distinct questions
    assert info["sha256"].startswith("7a58d355")
    assert len({(r["passage"], r["question"]) for r in recs}) == 200
    idx = [int(r["id"].rsplit("-", 1)[1]) for r in recs]
    assert idx == sorted(idx)
    assert make_set("drop", SourceConfig(source="drop_jsonl", path=path, n=200), seed=0)[0] == recs
