"""data.seed: the questions' own seed. null (the default) = the global seed, so today's data is
byte-identical; fixed, the global seed can vary (sampling, training) over the same questions."""

from __future__ import annotations

from pathlib import Path

import yaml
from tinyproject import import_stage

data_stage = import_stage("data")

DATA = {
    "train": {"source": "arith", "n": 12, "steps": [1]},
    "eval": {"arith": {"source": "arith", "n": 5, "steps": [1, 2]}},
}


def _prepare(root: Path, monkeypatch, **params) -> dict[str, bytes]:
    root.mkdir()
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    data_stage.main([])
    prepared = root / "data/prepared"
    return {p.relative_to(prepared).as_posix(): p.read_bytes() for p in prepared.rglob("*.jsonl")}


def test_data_seed(tmp_path, monkeypatch):
    default = _prepare(tmp_path / "a", monkeypatch, seed=3, data=DATA)
    same = _prepare(tmp_path / "b", monkeypatch, seed=3, data=DATA | {"seed": None})
    fixed = _prepare(tmp_path / "c", monkeypatch, seed=9, data=DATA | {"seed": 3})
    moved = _prepare(tmp_path / "d", monkeypatch, seed=9, data=DATA)
    assert set(default) == {"train.jsonl", "train_labels.jsonl", "seed.jsonl", "eval/arith.jsonl"}
    assert same == default  # null = the global seed: the same bytes as before the key existed
    assert fixed == default  # data.seed 3 with global seed 9: the seed-3 questions
    assert moved["train.jsonl"] != default["train.jsonl"]  # without it the questions move
