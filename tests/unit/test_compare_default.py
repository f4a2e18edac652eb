"""benchmarks/compare_default.py against the locked reference's own files: a copy matches at
tolerance 0; ``--no-intervals`` leaves out exactly the interval bounds, so a moved bound fails
only without it and a moved accuracy fails either way."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCKED = ROOT / "benchmarks/results/lmsi_default_locked"


def _bench():
    spec = importlib.util.spec_from_file_location(
        "compare_default", ROOT / "benchmarks/compare_default.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy(tmp_path: Path) -> Path:
    rounds = tmp_path / "rounds"
    for f in sorted(LOCKED.glob("*/metrics.json")):
        (rounds / f.parent.name).mkdir(parents=True)
        shutil.copy(f, rounds / f.parent.name / "metrics.json")
    return rounds


def _run(bench, rounds: Path, capsys, *extra: str) -> tuple[int, dict]:
    code = bench.main(["--reference", str(LOCKED), "--rounds-dir", str(rounds), *extra])
    return code, json.loads(capsys.readouterr().out.splitlines()[-1])


def _edit(rounds: Path, rnd: str, change) -> None:
    path = rounds / rnd / "metrics.json"
    metrics = json.loads(path.read_text())
    change(metrics)
    path.write_text(json.dumps(metrics))


def test_no_intervals_leaves_out_exactly_the_bounds(tmp_path, capsys):
    bench = _bench()
    rounds = _copy(tmp_path)
    code, full = _run(bench, rounds, capsys)
    assert code == 0 and full["ok"] and full["intervals"]
    code, lean = _run(bench, rounds, capsys, "--no-intervals")
    assert code == 0 and lean["ok"] and not lean["intervals"]
    for rnd, row in full["rounds"].items():
        ref = bench.flat(json.loads((LOCKED / rnd / "metrics.json").read_text()))
        n_ci = sum(".ci." in k for k in ref)
        assert n_ci > 0 and lean["rounds"][rnd]["n_metrics"] == row["n_metrics"] - n_ci

    # an interval bound moves: only the full comparison fails
    set_name = next(iter(json.loads((rounds / "r1/metrics.json").read_text())))

    def move_bound(m):
        m[set_name]["fewshot_cot"]["ci"]["strict"]["lo"] += 0.01

    _edit(rounds, "r1", move_bound)
    code, full = _run(bench, rounds, capsys)
    assert code == 1 and [r["metric"] for r in full["rounds"]["r1"]["outside"]] == [
        f"{set_name}.fewshot_cot.ci.strict.lo"
    ]
    assert _run(bench, rounds, capsys, "--no-intervals")[0] == 0

    # an accuracy moves: both fail
    def move_accuracy(m):
        m[set_name]["fewshot_cot"]["strict"] += 1e-9

    _edit(rounds, "r1", move_accuracy)
    code, lean = _run(bench, rounds, capsys, "--no-intervals")
    assert code == 1
    assert [r["metric"] for r in lean["rounds"]["r1"]["outside"]] == [
        f"{set_name}.fewshot_cot.strict"
    ]


def test_each_cpu_type_has_a_committed_reference(capsys):
    """REFERENCES names a committed r0-r2 reference per bf16 path; the default is picked by
    the CPU's flags and named in the JSON."""
    bench = _bench()
    for path in bench.REFERENCES.values():
        assert sorted(p.name for p in (ROOT / path).iterdir()) == ["r0", "r1", "r2"]
    assert bench.default_reference({"avx512_bf16"})[0] == bench.REFERENCES["avx512_bf16"]
    rounds = ROOT / bench.REFERENCES["avx512_bf16"]
    code = bench.main(["--reference", str(rounds), "--rounds-dir", str(rounds)])
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 0 and out["ok"] and out["chosen_by"] == "--reference"
