"""Study results kept in git in compact form: per-question scores recompute every figure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfimprove.config.evaluation import StatsConfig
from selfimprove.core.io import write_json, write_jsonl
from selfimprove.evaluation.intervals import QUESTION_SCORES, read_scores
from selfimprove.evaluation.question_scores import compact_round, write_question_scores
from selfimprove.study import Arm, parse_arm, plan, same_params, study_arms

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


STUDY = ["-m", "selfimprove.cli", "study", "table"]
MS3Q = ["--root", str(RESULTS / "ms3q"), "--methods", "lmsi", "format_only", "star"]
LF3 = ["--root", str(RESULTS / "lf3"), "--methods", "scpo", "--arm", "lmsi_exp", "lmsi"]


@pytest.mark.parametrize("name, table", [
    ("multi_seed", [str(ROOT / "benchmarks" / "multi_seed.py"), "table", "--root",
                    str(RESULTS / "multi_seed"), "--methods", "lmsi", "format_only", "star"]),
    ("ms3q", STUDY + MS3Q),  # through DVC's queue
    ("lf3", STUDY + LF3),  # ScPO and the weighted LMSI, the same questions and seeds
    ("label_free", STUDY + ["--root", str(RESULTS / "ms3q"), "--root", str(RESULTS / "lf3"),
                            "--root", str(RESULTS / "lf4"), "--root", str(RESULTS / "lf4b"),
                            "--root", str(RESULTS / "lf4c"),
                            "--methods", "star", "lmsi", "format_only", "scpo", "ttrl", "--arm",
                            "lmsi_exp", "lmsi", "--arm", "lmsi_pool4", "lmsi"]),  # all vs STaR
    ("lf4", STUDY + ["--root", str(RESULTS / "lf4"), "--methods", "ttrl", "--seeds", "0"]),
    ("lf4b", STUDY + ["--root", str(RESULTS / "lf4b"), "--methods", "ttrl", "--seeds", "1", "2"]),
    ("lf4c", STUDY + ["--root", str(RESULTS / "lf4c"), "--arm", "lmsi_pool4", "lmsi"]),  # 4x pool
    ("lf4c_vs_lmsi", STUDY + ["--root", str(RESULTS / "ms3q"), "--root", str(RESULTS / "lf4c"),
                              "--methods", "lmsi", "--arm", "lmsi_pool4", "lmsi"]),
])
def test_committed_study_tables_recompute_from_compact_files(tmp_path, name, table):
    """Every figure of a committed study's JSON, byte for byte, from git alone (no
    predictions): the old runner's three seeds, the same study through the queue, the
    label-free methods' study, the table of all against STaR, lf4's and lf4b's TTRL seeds, and
    LMSI on the 4x pool (lf4c) alone and against plain LMSI."""
    roots = [Path(table[i + 1]) for i, a in enumerate(table) if a == "--root"]
    for root in roots:
        assert not list(root.rglob("*.jsonl"))  # the predictions live in DVC, not in git
    out = tmp_path / f"{name}.json"
    seeds = [] if "--seeds" in table else ["--seeds", "0", "1", "2"]
    cmd = [sys.executable, *table, *seeds, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes() == (RESULTS / f"{name}.json").read_bytes()


def test_one_table_from_several_exported_studies(tmp_path):
    """--root twice: each method's runs from the study that has them give the same table as one
    folder, and so do a method's seeds split between them; a run in both studies is an error
    naming it and the folders."""
    import shutil

    from selfimprove.core.io import InputError
    from selfimprove.evaluation.study_table import study_folders

    a, b = tmp_path / "a", tmp_path / "b"
    for method, root in (("lmsi", a), ("format_only", b), ("star", b)):
        for k in (0, 1, 2):
            shutil.copytree(RESULTS / "ms3q" / f"{method}_s{k}", root / f"{method}_s{k}")
    out = tmp_path / "both.json"
    cmd = [sys.executable, "-m", "selfimprove.cli", "study", "table", "--root", str(a),
           "--root", str(b), "--methods", "lmsi", "format_only", "star", "--seeds", "0", "1",
           "2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes() == (RESULTS / "ms3q.json").read_bytes()
    # a method's seeds from two studies: the same table
    shutil.move(a / "lmsi_s2", b / "lmsi_s2")
    assert study_folders([a, b], ["lmsi"], [0, 1, 2])["lmsi"][1:] == [
        a / "lmsi_s1" / "data" / "rounds", b / "lmsi_s2" / "data" / "rounds"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes() == (RESULTS / "ms3q.json").read_bytes()
    shutil.copytree(b / "lmsi_s2", a / "lmsi_s2")
    with pytest.raises(InputError, match=f"lmsi_s2: in {a} and {b}"):
        study_folders([a, b], ["lmsi", "star"], [0, 1, 2])


def test_no_per_question_text_files_in_results():
    assert not list(RESULTS.rglob("*.jsonl"))
    assert len(list(RESULTS.rglob(QUESTION_SCORES))) >= 36


def test_compact_scores_read_back_like_the_predictions(tmp_path):
    """Greedy and self-consistency scores (old sc records without ``scores`` are scored from
    their answers); the compact file gives what the predictions give."""
    greedy = [{"id": f"q{i}", "correct_strict": i % 2 == 0, "correct_flexible": i < 3}
              for i in range(5)]
    sc = [{"id": "q0", "gold": "2", "answers": ["2", "3", "2"]},
          {"id": "q1", "gold": "5", "answers": ["4", "4", "5"]}]
    metrics = {"arith": {"fewshot_cot": {"n": 5, "strict": 0.6, "flexible": 0.6},
                         "sc": {"n": 2, "maj@1": 0.5, "maj@3": 0.5, "pass@3": 1.0}}}
    write_jsonl(tmp_path / "r1/eval/arith__fewshot_cot.jsonl", greedy)
    write_jsonl(tmp_path / "r1/eval/arith__sc.jsonl", sc)
    write_json(tmp_path / "r1/metrics.json", metrics)
    content = compact_round(tmp_path / "r1", metrics)
    assert content["scores"]["arith__sc"] == {"maj@1": [1, 0], "maj@3": [1, 0], "pass@3": [1, 1]}
    assert content["sources"]["eval/arith__sc.jsonl"].startswith("sha256:")
    from_preds = read_scores(tmp_path / "r1", metrics)[("arith", "fewshot_cot")]
    write_question_scores(tmp_path / "r1", content)
    (tmp_path / "r1/eval/arith__fewshot_cot.jsonl").unlink()
    (tmp_path / "r1/eval/arith__sc.jsonl").unlink()
    back = read_scores(tmp_path / "r1", metrics)
    assert back[("arith", "fewshot_cot")] == from_preds
    assert back[("arith", "sc")] == (["q0", "q1"], {"maj@1": [1.0, 0.0], "maj@3": [1.0, 0.0],
                                                      "pass@3": [1.0, 1.0]})
    metrics["arith"]["fewshot_cot"]["strict"] = 0.8  # predictions of another round: refused
    write_jsonl(tmp_path / "r1/eval/arith__fewshot_cot.jsonl", greedy)
    with pytest.raises(Exception, match="averages"):
        compact_round(tmp_path / "r1", metrics)


def test_study_plan_names_settings_and_params_match():
    runs = plan("s", ["lmsi", "star"], [0, 1], 0, ["generate.num_paths=4"])
    assert [r.name for r in runs] == ["s-lmsi-s0", "s-lmsi-s1", "s-star-s0", "s-star-s1"]
    star = runs[2]
    assert "finetune.init=base" in star.settings and "data.seed=0" in star.settings
    assert star.command()[:6] == ["dvc", "exp", "run", "--queue", "-n", "s-star-s0"]
    params = {"method": "star", "seed": 0, "data": {"seed": 0}, "finetune": {"init": "base"},
              "tracking": {"study": "s", "pipeline": "s-star-s0"}, "generate": {"num_paths": 4}}
    assert same_params(params, star.settings)
    assert not same_params(params | {"seed": 1}, star.settings)
    assert StatsConfig().n_resamples >= 100


def test_study_arms_run_a_method_with_their_own_params():
    """--arm LABEL METHOD KEY=VALUE...: its own experiment name, folder and params (after the
    study's --set, so an arm's value wins), the method's usual init; labels are unique."""
    from types import SimpleNamespace

    from selfimprove.core.io import InputError

    arm = parse_arm(["star_w", "star", "filter.weighting=exp", "filter.weight_beta=0.25"])
    runs = plan("s", ["lmsi", arm], [0], 0, ["filter.weighting=share"])
    assert [(r.name, r.folder, r.method) for r in runs] == [
        ("s-lmsi-s0", "lmsi_s0", "lmsi"), ("s-star_w-s0", "star_w_s0", "star")]
    w = runs[1].settings
    assert "method=star" in w and "finetune.init=base" in w
    assert w.index("filter.weighting=exp") > w.index("filter.weighting=share")
    assert "filter.weighting=exp" not in runs[0].settings
    args = SimpleNamespace(methods=None, arm=[["a", "lmsi"]])
    assert study_arms(args) == [Arm("a", "lmsi")]  # no default methods beside --arm
    assert [a.label for a in study_arms(SimpleNamespace(methods=None, arm=None))] == [
        "lmsi", "format_only", "star"]
    for bad, match in ((["x"], "LABEL METHOD"), (["a-b", "lmsi"], "letters"),
                       (["a", "lsmi"], "not a method; use one of"),
                       (["a", "lmsi", "filter.weighting"], "not KEY=VALUE")):
        with pytest.raises(InputError, match=match):
            parse_arm(bad)
    with pytest.raises(InputError, match="named twice: lmsi"):
        plan("s", ["lmsi", Arm("lmsi", "lmsi", ("seed=3",))], [0], 0)


def test_queue_resumes_with_only_what_is_missing(monkeypatch):
    """Finished with the same params: kept; queued/running: left alone; failed: removed from
    the queue and queued again; never run: queued; running with its process gone (a killed
    worker): killed in DVC's queue (marks it failed), then like failed; finished with other
    params: an error."""
    from selfimprove import study
    from selfimprove.core.io import InputError

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    runs = plan("s", ["lmsi"], [0, 1, 2, 3, 4], 0)
    params = {r.name: {"method": "lmsi", "seed": r.seed, "data": {"seed": 0},
                       "tracking": {"study": "s", "pipeline": r.name}} for r in runs}
    found = {"s-lmsi-s0": {"rev": "a", "state": "success", "params": params["s-lmsi-s0"]},
             "s-lmsi-s1": {"rev": "b", "state": "running", "params": {}, "pid": os.getpid()},
             "s-lmsi-s2": {"rev": "c", "state": "failed", "params": {}},
             "s-lmsi-s4": {"rev": "d", "state": "running", "params": {}, "pid": gone.pid}}
    calls = []
    monkeypatch.setattr(study, "experiments", lambda repo: found)
    monkeypatch.setattr(study, "_dvc", lambda args, cwd, env=None: calls.append(args) or "")
    queued = study.queue(runs, Path("."), say=lambda _: None)
    assert [r.name for r in queued] == ["s-lmsi-s2", "s-lmsi-s3", "s-lmsi-s4"]
    assert [c[:5] for c in calls] == [["queue", "remove", "s-lmsi-s2"],
                                      ["exp", "run", "--queue", "-n", "s-lmsi-s2"],
                                      ["exp", "run", "--queue", "-n", "s-lmsi-s3"],
                                      ["queue", "kill", "s-lmsi-s4"],
                                      ["queue", "remove", "s-lmsi-s4"],
                                      ["exp", "run", "--queue", "-n", "s-lmsi-s4"]]
    # DVC refuses the kill while a live worker still has the task: left alone as running
    def refuse_kill(args, cwd, env=None):
        if args[:2] == ["queue", "kill"]:
            raise InputError("dvc queue kill failed: ERROR: Task s-lmsi-s4 is running")
        calls.append(args)
        return ""

    calls.clear()
    monkeypatch.setattr(study, "_dvc", refuse_kill)
    assert [r.name for r in study.queue(runs, Path("."), say=lambda _: None)] == [
        "s-lmsi-s2", "s-lmsi-s3"]
    assert not any("s-lmsi-s4" in c for c in calls)  # neither removed nor queued again
    found["s-lmsi-s0"]["params"] = params["s-lmsi-s0"] | {"seed": 7}
    with pytest.raises(InputError, match="other params"):
        study.queue(runs, Path("."), say=lambda _: None)


def test_experiments_retry_a_failed_exp_show(monkeypatch):
    """``dvc exp show`` fails now and then while a worker removes a finished experiment's
    temporary copy (seen in CI): the study tries again, and gives up only after SHOW_TRIES."""
    from selfimprove import study
    from selfimprove.core.io import InputError

    shown = json.dumps([{"experiments": [{"name": "s-lmsi-s0", "revs": [{"rev": "r1"}],
                                          "executor": {"state": "running",
                                                       "local": {"pid": 42}}}]}])
    answers = [InputError("dvc exp show --json --no-fetch failed: ERROR: failed to show "
                          "experiments - directory '.dvc/tmp/exps/tmpx/.dvc' does not exist"),
               shown]

    def fake_dvc(args, cwd, env=None):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(study, "_dvc", fake_dvc)
    monkeypatch.setattr(study.time, "sleep", lambda s: None)
    assert study.experiments(Path(".")) == {
        "s-lmsi-s0": {"rev": "r1", "state": "running", "params": {}, "pid": 42}}
    monkeypatch.setattr(study, "_dvc", lambda args, cwd, env=None: (_ for _ in ()).throw(
        InputError("dvc exp show failed: broken")))
    with pytest.raises(InputError, match="broken"):
        study.experiments(Path("."))


def test_old_runner_points_to_the_study_command(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import multi_seed

    assert multi_seed.main(["run", "--root", "x"]) == 2
    assert "selfimprove study run" in capsys.readouterr().err


def test_dvc_runs_with_this_interpreters_bin_first_on_path(monkeypatch, tmp_path):
    """`dvc queue start` spawns `dvc exp queue-worker` and the stages run `python`, both from
    PATH: run as .venv/bin/selfimprove without an activated environment, the workers never
    started and the study waited forever. Every dvc call gets this interpreter's bin first."""
    import os

    from selfimprove import study

    seen = {}

    def fake_run(cmd, cwd, env=None):
        seen["cmd"], seen["env"] = cmd, env
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(study, "run_captured", fake_run)
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", str(Path(sys.executable).parent)]))
    study._dvc(["queue", "start", "-j", "2"], tmp_path)
    path = seen["env"]["PATH"].split(os.pathsep)
    assert path[0] == str(Path(sys.executable).parent) and "/usr/bin" in path
    assert path.count(path[0]) == 1 and seen["cmd"][:3] == [sys.executable, "-m", "dvc"]
    assert study.dvc_env({"PATH": ""})["PATH"] == str(Path(sys.executable).parent)


def test_a_command_leaving_a_daemon_behind_returns_at_once(tmp_path):
    """`dvc queue start` exits while its workers keep the caller's stdout open: read through a
    pipe, the call (and the study's progress) waited until the queue was empty."""
    import time

    from selfimprove.study import run_captured

    daemon = "import time; time.sleep(120)"
    cmd = [sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen([sys.executable, "
           f"'-c', {daemon!r}]); print(p.pid); print('bad', file=sys.stderr); sys.exit(3)"]
    t0 = time.monotonic()
    proc = run_captured(cmd, tmp_path)
    elapsed = time.monotonic() - t0
    import os
    import signal

    os.kill(int(proc.stdout.split()[0]), signal.SIGKILL)
    assert elapsed < 60 and proc.returncode == 3 and proc.stderr.strip() == "bad"


def test_study_compute_sums_the_rounds_tokens(tmp_path):
    """Tokens sampled (generate.json) and trained (finetune.json tokens_trained; a skipped
    round trained none) summed per run; a run whose records lack them shows None."""
    from selfimprove.evaluation.study_table import _compute

    runs = [tmp_path / "a", tmp_path / "b"]
    for k, run in enumerate(runs):
        for r, (gen, fit) in enumerate([(100, {"tokens_trained": 40}),
                                        (50, {"skipped": True, "tokens_trained": 0})], 1):
            write_json(run / f"r{r}/generate.json", {"tokens": gen + k})
            write_json(run / f"r{r}/finetune.json", fit if k == 0 else {"steps": 3})
    write_json(tmp_path / "wall.json", {"wall_s": 90.5})  # <label>_s<seed>/wall.json
    assert _compute(runs) == {"tokens_sampled": [150, 152], "tokens_trained": [40, None],
                              "wall_s": [None, None]}
    runs = [tmp_path / "x" / "data" / "rounds"]
    write_json(runs[0] / "r1/generate.json", {"tokens": 7})
    write_json(runs[0] / "r1/finetune.json", {"tokens_trained": 30, "tokens_sampled": 20})
    write_json(tmp_path / "x" / "wall.json", {"wall_s": 90.5})  # TTRL: + its online rollouts
    assert _compute(runs) == {"tokens_sampled": [27], "tokens_trained": [30], "wall_s": [90.5]}


def test_ttrl_masked_fraction_is_a_monitor_per_round(tmp_path):
    """TTRL's share of groups without a majority (finetune.json) beside the vote monitors;
    a method that does not record it has none."""
    from selfimprove.evaluation.study_table import _monitors

    runs = [tmp_path / m / "data" / "rounds" for m in ("ttrl_s0", "lmsi_s0")]
    for run in runs:
        write_json(run / "r1/filter.json", {"selected_fraction": 0.1, "mean_agreement": 0.3})
    write_json(runs[0] / "r1/finetune.json", {"mean_masked_fraction": 0.92, "tokens_trained": 5})
    write_json(runs[1] / "r1/finetune.json", {"tokens_trained": 5})
    assert _monitors(runs[:1])["r1"]["masked_fraction"] == [0.92]
    assert "masked_fraction" not in _monitors(runs[1:])["r1"]
    assert _monitors(runs[1:])["r1"]["selected_fraction"] == [0.1]


def test_the_study_records_each_runs_wall_time_across_invocations(monkeypatch, tmp_path):
    """start_and_wait notes when each experiment starts running and finishes (DVC's states,
    polled) in .dvc/tmp, so export's wall.json survives a killed and restarted study."""
    from selfimprove import study

    states = iter([{"s-lmsi-s0": "queued"}, {"s-lmsi-s0": "queued"},
                   {"s-lmsi-s0": "running"}, {"s-lmsi-s0": "running"},
                   {"s-lmsi-s0": "success"}])
    monkeypatch.setattr(study, "experiments", lambda repo: {
        n: {"state": s} for n, s in next(states).items()})
    calls = []
    monkeypatch.setattr(study, "_dvc", lambda args, cwd, env=None: calls.append(args) or "")
    clock = iter(range(0, 10**6, 30))
    monkeypatch.setattr(study.time, "time", lambda: float(next(clock)))
    monkeypatch.setattr(study.time, "sleep", lambda s: None)
    runs = plan("s", ["lmsi"], [0], 0)
    assert study.start_and_wait(runs, tmp_path, 2, 5, say=lambda line: None) == {
        "s-lmsi-s0": "success"}
    assert calls == [["queue", "start", "-j", "2"]]
    times = study.read_times(tmp_path)
    assert (tmp_path / study.TIMES_FILE).is_file()
    wall = study.wall_record(times["s-lmsi-s0"])
    assert wall["wall_s"] == 30.0 and wall["resolution_s"] == 5  # running at 30 s, done at 60


def test_a_slow_poll_waits_longer(monkeypatch, tmp_path):
    """The waiting loop's polls (``dvc exp show``, slow with many experiments) take at most
    POLL_SHARE of a core: a poll of 3 s is followed by 27 s of sleep, not poll_s."""
    from selfimprove import study

    states = iter(["queued", "queued", "running", "success"])
    now = [0.0]

    def show(repo):
        now[0] += 3.0  # each poll takes 3 s
        return {"s-lmsi-s0": {"state": next(states)}}

    monkeypatch.setattr(study, "experiments", show)
    monkeypatch.setattr(study, "_dvc", lambda args, cwd, env=None: "")
    monkeypatch.setattr(study.time, "monotonic", lambda: now[0])
    slept = []
    monkeypatch.setattr(study.time, "sleep", slept.append)
    runs = plan("s", ["lmsi"], [0], 0)
    assert study.start_and_wait(runs, tmp_path, 2, 5, say=lambda line: None) == {
        "s-lmsi-s0": "success"}
    assert slept == [pytest.approx(27.0)] * 2
    assert study.read_times(tmp_path)["s-lmsi-s0"]["poll_s"] == 27.0
