from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
import yaml

from selfimprove.cli import main as cli_main
from selfimprove.config.evaluation import ReportConfig
from selfimprove.core.io import InputError, write_json, write_jsonl
from selfimprove.evaluation.report import (
    accuracy_rows,
    agreement_stats,
    build_report,
    compare_table,
    dvc_round_metrics,
    format_table,
    kept_rows,
    list_rounds,
)

ROOT = Path(__file__).resolve().parents[2]
ACC = {"r0": 0.25, "r1": 0.5, "r2": 0.375}


def _metrics(acc: float) -> dict:
    return {
        "arith_1step": {
            "fewshot_cot": {"n": 8, "strict": acc, "flexible": acc + 0.125, "no_answer": 0.0},
            "zeroshot_cot": {"n": 8, "strict": acc / 2, "flexible": acc, "no_answer": 0.25},
            "sc": {"n": 4, "maj@1": acc, "maj@8": acc + 0.25, "pass@8": 1.0},
        },
        "drop_gen": {"fewshot_cot": {"n": 4, "em": 0.5, "f1": 0.75, "no_answer": 0.0}},
    }


def _write_rounds(root: Path) -> Path:
    rounds = root / "data" / "rounds"
    for name, acc in ACC.items():
        d = rounds / name
        d.mkdir(parents=True)
        write_json(d / "metrics.json", _metrics(acc))
        if name == "r0":
            continue
        # r1: agreements 1, 1, .5, .25 ; r2: all 1
        agreements = [1.0, 1.0, 0.5, 0.25] if name == "r1" else [1.0, 1.0, 1.0, 1.0]
        write_jsonl(
            d / "rationales.jsonl",
            [
                {"id": f"q{i}", "agreement": a, "selected": a >= 0.5}
                for i, a in enumerate(agreements)
            ],
        )
        n_sel = sum(a >= 0.5 for a in agreements)
        write_json(
            d / "filter.json",
            {
                "n_questions": 4,
                "n_selected": n_sel,
                "selected_fraction": n_sel / 4,
                "n_paths": 16,
                "n_kept_paths": 2 * n_sel,
                "n_train_examples": 4 * n_sel,
                "mean_agreement": sum(agreements) / 4,
                "agreement_histogram": [0] * 10,
            },
        )
        write_json(d / "generate.json", {"n_questions": 4, "seconds": 1.5})
    return rounds


@pytest.fixture
def project(tmp_path):
    _write_rounds(tmp_path)
    return tmp_path


def test_dvc_round_metrics_and_table(project):
    rounds = project / "data" / "rounds"
    assert list_rounds(rounds) == ["r0", "r1", "r2"]
    m = dvc_round_metrics(rounds)
    assert m["r1"]["arith_1step.fewshot_cot.strict"] == 0.5
    assert m["r1"]["arith_1step.sc.maj@8"] == 0.75
    assert m["r2"]["filter.selected_fraction"] == 1.0
    assert m["r1"]["generate.seconds"] == 1.5
    assert "filter.agreement_histogram" not in m["r1"]  # lists are not metrics
    t = compare_table(m)
    assert t["columns"] == [
        "arith_1step.fewshot_cot.strict",
        "arith_1step.zeroshot_cot.strict",
        "filter.selected_fraction",
        "filter.mean_agreement",
    ]
    assert [r["round"] for r in t["rows"]] == ["r0", "r1", "r2"]
    assert t["rows"][0]["filter.selected_fraction"] is None
    assert t["rows"][2]["arith_1step.fewshot_cot.strict"] == 0.375
    # '@' and '_' spellings are the same metric (MLflow stores maj@8 as maj_8)
    mlflow_like = {"r0": {"arith_1step.sc.maj_8": 0.5}}
    assert compare_table(mlflow_like, ["arith_1step.sc.maj@8"])["columns"] == [
        "arith_1step.sc.maj_8"
    ]
    with pytest.raises(InputError, match="'nope' matches nothing; have: arith_1step"):
        compare_table(m, ["nope"])


def test_rounds_sort_numerically(tmp_path):
    for name in ("r10", "r2", "r0", "notes"):
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / "metrics.json", {"a": {"s": {"strict": 1.0}}})
    assert list_rounds(tmp_path) == ["r0", "r2", "r10"]
    text = format_table(compare_table(dvc_round_metrics(tmp_path), ["a.s.strict"]))
    assert [line.split()[0] for line in text.splitlines()] == ["round", "r0", "r2", "r10"]


def test_cli_compare_dvc(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    assert cli_main(["compare", "--metrics", "arith_1step.*.strict", "filter.kept*"]) == 2
    assert "'filter.kept*' matches nothing" in capsys.readouterr().err
    assert cli_main(["compare", "--metrics", "arith_1step.fewshot_cot.strict"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["round", "arith_1step.fewshot_cot.strict"]
    assert out[2].split() == ["r1", "0.500"]
    assert cli_main(["compare", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "dvc:data/rounds"
    assert data["rows"][1]["filter.mean_agreement"] == 0.6875
    assert cli_main(["compare", "--rounds-dir", "nowhere"]) == 2
    assert "no round folders" in capsys.readouterr().err


def test_cli_compare_mlflow(tmp_path, capsys, monkeypatch):
    from selfimprove.config.tracking import TrackingConfig
    from selfimprove.tracking.runs import log_round

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = TrackingConfig(pipeline="cmp", registered_model=None, log_model="none")
    for name, acc in (("r0", 0.25), ("r1", 0.5), ("r1", 0.625)):  # r1 rerun: supersedes
        metrics = _metrics(acc) | {"filter": {"selected_fraction": acc}}
        log_round(cfg, round_name=name, round_index=int(name[1:]), metrics=metrics)
    monkeypatch.chdir(tmp_path)  # no params.yaml here: defaults + flags
    args = ["compare", "--mlflow", "--pipeline", "cmp", "--json", "--metrics"]
    assert cli_main([*args, "arith_1step.fewshot_cot.strict", "arith_1step.sc.maj@8"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "mlflow:selfimprove/cmp"
    assert data["columns"] == ["arith_1step.fewshot_cot.strict", "arith_1step.sc.maj_8"]
    assert [(r["round"], r["arith_1step.fewshot_cot.strict"]) for r in data["rows"]] == [
        ("r0", 0.25),
        ("r1", 0.625),
    ]
    assert cli_main(["compare", "--mlflow", "--pipeline", "other"]) == 2
    assert "pipelines there: cmp" in capsys.readouterr().err


def test_accuracy_agreement_kept(project):
    rounds = project / "data" / "rounds"
    nested = {r: json.loads((rounds / r / "metrics.json").read_text()) for r in ACC}
    rows = accuracy_rows(nested)
    assert {r["metric"] for r in rows if r["style"] == "sc"} == {"maj@1", "maj@8", "pass@8"}
    assert not any(r["metric"] == "n" for r in rows)
    assert len(rows) == 3 * (3 + 3 + 3 + 3)  # per round: 2 styles x 3, sc 3, drop 3
    ag = agreement_stats(rounds, list(ACC), bins=4)
    assert set(ag) == {"r1", "r2"}  # r0 has no filter step
    assert ag["r1"]["counts"] == [0, 1, 1, 2] and ag["r1"]["edges"] == [0, 0.25, 0.5, 0.75, 1]
    assert ag["r2"]["counts"] == [0, 0, 0, 4] and ag["r2"]["mean_agreement"] == 1.0
    kept = kept_rows(rounds, list(ACC))
    assert [(k["round"], k["kept_fraction"], k["path_fraction"]) for k in kept] == [
        (1, 0.75, 0.375),
        (2, 1.0, 0.5),
    ]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_build_report_files(project):
    out = project / "data" / "report"
    files = build_report(project / "data" / "rounds", ["r2", "r0", "r1"], out, ReportConfig())
    names = {f.relative_to(out).as_posix() for f in files}
    assert {
        "accuracy.csv",
        "accuracy.json",
        "agreement.json",
        "kept.csv",
        "kept.json",
        "accuracy.png",
        "agreement.png",
        "kept.png",
        "plots/kept.csv",
        "plots/agreement/r1.csv",
        "plots/accuracy/arith_1step.fewshot_cot.csv",
        "plots/accuracy/arith_1step.sc_maj@8.csv",
        "plots/accuracy/drop_gen.fewshot_cot_em.csv",  # no 'strict': falls back to em
    } <= names
    with open(out / "accuracy.csv") as f:
        acc = list(csv.DictReader(f))
    assert list(acc[0]) == ["round", "round_index", "set", "style", "metric", "value"]
    assert acc[0]["round"] == "r0"
    series = (out / "plots" / "accuracy" / "arith_1step.fewshot_cot.csv").read_text().split()
    assert series == ["round,accuracy", "0,0.25", "1,0.5", "2,0.375"]
    drop = (out / "plots" / "accuracy" / "drop_gen.fewshot_cot_em.csv").read_text().split()
    assert drop[1] == "0,0.5"
    agreement = json.loads((out / "agreement.json").read_text())
    assert sum(agreement["r1"]["counts"]) == 4 and len(agreement["r1"]["counts"]) == 10
    for png in ("accuracy.png", "agreement.png", "kept.png"):
        w, h = _png_size(out / png)
        assert w >= 400 and h >= 300
    # rebuilding replaces the folder whole (no stale files)
    (out / "stale.txt").write_text("x")
    build_report(project / "data" / "rounds", ["r0", "r1"], out)
    assert not (out / "stale.txt").exists()
    assert not (out / "plots" / "agreement" / "r2.csv").exists()


def test_build_report_missing_round(project):
    with pytest.raises(InputError, match="no scores.json for round.*r3"):
        build_report(project / "data" / "rounds", ["r0", "r3"], project / "out")


def test_report_stage_logs_to_parent_run(project, monkeypatch):
    """stages/report.py in a project folder: files written, PNGs on the MLflow parent run."""
    from mlflow import MlflowClient

    monkeypatch.syspath_prepend(str(ROOT))
    from stages.report import main as stage_main

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tracking"] |= {"pipeline": "report-test", "registered_model": None}
    params["rounds"] = {"r1": {"prev": "r0"}, "r2": {"prev": "r1"}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{project}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(project)
    stage_main([])
    assert (project / "data" / "report" / "accuracy.png").is_file()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("selfimprove")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`selfimprove.role` = 'parent'")
    assert parent.data.tags["selfimprove.pipeline"] == "report-test"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/accuracy.png", "report/agreement.png", "report/kept.png"} <= logged
    assert "report/accuracy.csv" in logged


def test_a_skipped_round_is_shown_as_skipped(project, tmp_path):
    rounds = project / "data" / "rounds"
    reason = "filter kept nothing (0 training examples)"
    write_json(rounds / "r2" / "finetune.json", {"skipped": True, "skip_reason": reason})
    write_json(rounds / "r1" / "finetune.json", {"skipped": False, "steps": 3})
    kept = kept_rows(rounds, list(ACC))
    assert [(k["round_name"], k["skipped"], k["skip_reason"]) for k in kept] == [
        ("r1", False, ""),
        ("r2", True, reason),
    ]
    out = tmp_path / "report"
    build_report(rounds, list(ACC), out, ReportConfig())
    table = (out / "kept.csv").read_text().splitlines()
    assert table[0].endswith("skipped,skip_reason") and table[2].endswith(f"True,{reason}")
