"""The report stage's self-feedback precision plot (hand-made refined.jsonl, no model)."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
import yaml

from selfimprove.core.io import InputError, write_json, write_jsonl
from selfimprove.evaluation.report import build_report, feedback_rows, read_refined

ROOT = Path(__file__).resolve().parents[2]
LABELS = [{"id": "q0", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"}, {"id": "q1", "answer": "#### 7"}]


def _metrics(acc: float) -> dict:
    return {"arith_1step": {"fewshot_cot": {"n": 4, "strict": acc}}}


def _self_records(good: bool) -> list[dict]:
    """q0 (gold 4): a right path judged correct, a wrong one judged wrong then refined right.
    q1 (gold 7): a wrong path judged correct (good=False) or wrong and left wrong (good=True)."""
    return [
        {
            "id": "q0",
            "question": "2+2?",
            "paths": ["p", "p"],
            "answers": ["4", "5"],
            "refined_answers": ["4", "4"],
            "verdicts": [[True], [False, True]],
            "final_verdicts": [True, True],
        },
        {
            "id": "q1",
            "question": "3+4?",
            "paths": ["p"],
            "answers": ["6"],
            "refined_answers": ["6"],
            "verdicts": [[False, None]] if good else [[True]],
            "final_verdicts": [None] if good else [True],
        },
    ]


def _lmsi_records() -> list[dict]:
    return [{"id": "q0", "question": "2+2?", "paths": ["p"], "answers": ["4"]}]


def _project(root: Path, refined: dict[str, list[dict]], labels: bool = True) -> Path:
    rounds = root / "data" / "rounds"
    for i, name in enumerate(["r0", "r1", "r2", "r3"]):
        (rounds / name).mkdir(parents=True)
        write_json(rounds / name / "metrics.json", _metrics(0.25 * i))
        if name in refined:
            write_jsonl(rounds / name / "refined.jsonl", refined[name])
    if labels:
        write_jsonl(root / "data" / "prepared" / "train_labels.jsonl", LABELS)
    return rounds


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_feedback_files_for_self_rounds(tmp_path):
    # r1 poor verdicts, r2 a pure-lmsi round (no verdicts), r3 good verdicts; r0 no refine
    refined = {"r1": _self_records(False), "r2": _lmsi_records(), "r3": _self_records(True)}
    rounds = _project(tmp_path, refined)
    assert set(read_refined(rounds, ["r0", "r1", "r2", "r3"])) == {"r1", "r3"}
    out = tmp_path / "report"
    labels = tmp_path / "data" / "prepared" / "train_labels.jsonl"
    files = build_report(rounds, ["r0", "r1", "r2", "r3"], out, labels_path=labels)
    names = {f.relative_to(out).as_posix() for f in files}
    assert {"feedback.json", "feedback.png", "plots/feedback.csv", "kept.png"} <= names

    fb = json.loads((out / "feedback.json").read_text())
    assert [r["round_name"] for r in fb] == ["r1", "r3"]
    r1, r3 = fb
    # r1: "correct" on q0/4 (right) and q1/6 (wrong) -> precision 1/2; the one right answer
    # was judged correct -> recall 1; finals: 2 right of 3 "correct"
    assert (r1["precision"], r1["recall"]) == (0.5, 1.0)
    assert r1["final_precision"] == pytest.approx(2 / 3)
    assert (r1["n_judged"], r1["fixed"], r1["broken"], r1["n_unparsable"]) == (3, 1, 0, 0)
    # r3: the wrong q1 answer judged wrong -> precision 1; its final verdict is unparsable
    assert (r3["precision"], r3["recall"], r3["final_precision"]) == (1.0, 1.0, 1.0)
    assert (r3["n_unparsable"], r3["final_n"]) == (1, 2)

    with open(out / "plots" / "feedback.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["round", "round_name", "precision", "recall"]
    assert [(r["round"], float(r["precision"]), float(r["recall"])) for r in rows] == [
        ("1", 0.5, 1.0),
        ("3", 1.0, 1.0),
    ]
    w, h = _png_size(out / "feedback.png")
    assert w >= 400 and h >= 300


def test_pure_lmsi_writes_no_feedback(tmp_path):
    """lmsi rounds: refined.jsonl has no verdicts; labels are not even read (missing is fine)."""
    rounds = _project(tmp_path, {"r1": _lmsi_records(), "r2": _lmsi_records()}, labels=False)
    out = tmp_path / "report"
    missing = tmp_path / "data" / "prepared" / "train_labels.jsonl"
    files = build_report(rounds, ["r0", "r1", "r2"], out, labels_path=missing)
    assert json.loads((out / "feedback.json").read_text()) == []
    assert not (out / "feedback.png").exists()
    assert (out / "plots" / "feedback.csv").read_text().count("\n") == 1  # header only
    assert not any("feedback" in f.name for f in files if f.suffix == ".png")


def test_feedback_needs_labels(tmp_path):
    rounds = _project(tmp_path, {"r1": _self_records(True)}, labels=False)
    labels = tmp_path / "data" / "prepared" / "train_labels.jsonl"
    with pytest.raises(InputError, match="train_labels.jsonl: not found.*dvc repro data"):
        build_report(rounds, ["r0", "r1"], tmp_path / "report", labels_path=labels)
    # without labels_path the feedback part is skipped
    build_report(rounds, ["r0", "r1"], tmp_path / "report")
    assert json.loads((tmp_path / "report" / "feedback.json").read_text()) == []


def test_feedback_rows_skip_unlabeled():
    assert feedback_rows({"r1": _self_records(True)}, {}) == []


def test_report_stage_logs_feedback_png(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.syspath_prepend(str(ROOT))
    from stages.report import main as stage_main

    _project(tmp_path, {"r1": _self_records(False)})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tracking"] |= {"pipeline": "feedback-test", "registered_model": None}
    params["rounds"] = {"r1": {"prev": "r0"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    stage_main([])
    assert (tmp_path / "data" / "report" / "feedback.png").is_file()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("selfimprove")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`selfimprove.role` = 'parent'")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/feedback.png", "report/feedback.json"} <= logged
