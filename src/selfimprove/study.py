"""Studies through DVC's experiment queue: seeds x methods (x any params) of one pipeline on
the same questions, run by ``dvc queue start -j N``, then one table with intervals.

``selfimprove study run`` (the CLI, docs/studies.md) does, with DVC doing the work:

1. per (method, seed) one experiment named ``<study>-<method>-s<seed>``, queued with
   ``dvc exp run --queue -n NAME -S method=.. -S seed=.. -S data.seed=.. -S ...`` (the method's
   usual settings: ``finetune.init`` of its recipe; MLflow: ``tracking.study``/``pipeline``);
   an experiment of that name already finished with the same params, queued or running is left
   alone, a failed one (or a running one whose process is gone: its worker was killed) is queued
   again: a killed study resumes with only what is missing (and DVC's run cache restores every
   stage a finished run already computed);
2. ``dvc queue start -j N``, then waits, printing each experiment's state as it changes
   (``dvc exp show --json``);
3. exports each finished experiment (its files at its revision, through ``DVCFileSystem``: git
   and the DVC cache) into ``<out>/<method>_s<seed>/``: the rounds' JSON files, the compact
   per-question scores (:mod:`selfimprove.evaluation.question_scores`) instead of the
   predictions, the report's CSV/JSON files, and the command and revision that made it; then
   writes the table (:func:`selfimprove.evaluation.study_table.study_table`); ``--push
   REMOTE``: ``dvc exp push REMOTE`` the experiments (git refs and their DVC outputs).

Queued experiments run in a temporary copy of the workspace (``.dvc/tmp/exps/...``); every stage
imports that copy's ``src/`` (``stages/__init__.py`` puts it first on ``sys.path``), so an
experiment queued with an edited module runs the edited module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from selfimprove.core.io import InputError

#: experiment states of ``dvc exp show --json`` that are not over yet
PENDING = ("queued", "running")
#: a study's methods when neither --methods nor --arm is given
DEFAULT_METHODS = ("lmsi", "format_only", "star")


@dataclass(frozen=True)
class Arm:
    """One column of a study's table: a label, the method (recipe) it runs and its own params
    (``-S key=value``), e.g. ``Arm("lmsi_exp", "lmsi", ("filter.weighting=exp",))``."""

    label: str
    method: str
    settings: tuple[str, ...] = ()


def parse_arm(values: Sequence[str]) -> Arm:
    """``--arm LABEL METHOD [KEY=VALUE ...]`` as an :class:`Arm` (errors say how to fix).

    >>> parse_arm(["lmsi_exp", "lmsi", "filter.weighting=exp"])
    Arm(label='lmsi_exp', method='lmsi', settings=('filter.weighting=exp',))
    """
    import re

    from selfimprove.recipes import get_recipe

    example = "e.g. --arm lmsi_exp lmsi filter.weighting=exp"
    if len(values) < 2:
        raise InputError(f"--arm {' '.join(values)}: expected LABEL METHOD [KEY=VALUE ...], "
                         f"{example}")
    label, method, *settings = values
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_]*", label):
        raise InputError(f"--arm {label!r}: a label is letters, digits and _ (it names the "
                         f"experiment and its folder), {example}")
    try:
        get_recipe(method)
    except InputError as e:
        raise InputError(f"--arm {label}: not a method; use one of: {e}") from None
    bad = [v for v in settings if "=" not in v]
    if bad:
        raise InputError(f"--arm {label}: {bad[0]!r} is not KEY=VALUE, {example}")
    return Arm(label, method, tuple(settings))


@dataclass(frozen=True)
class Run:
    """One experiment of a study."""

    method: str  # the recipe it runs
    seed: int
    name: str  # the DVC experiment's name
    settings: tuple[str, ...]  # its ``-S key=value`` params
    arm: str = ""  # its column of the table (default: the method)

    @property
    def label(self) -> str:
        return self.arm or self.method

    @property
    def folder(self) -> str:
        return f"{self.label}_s{self.seed}"

    def command(self) -> list[str]:
        sets = [a for s in self.settings for a in ("-S", s)]
        return ["dvc", "exp", "run", "--queue", "-n", self.name, *sets]


def plan(study: str, methods: Sequence[str | Arm], seeds: Sequence[int], data_seed: int,
         extra: Sequence[str] = ()) -> list[Run]:
    """The study's experiments, arm by arm: the first arm's run of every seed comes before any
    other arm's, so with several workers the others of a seed start after it and restore its
    shared stages (data, round 0's evaluation and sampling) from the run cache.
    ``methods``: method names, or :class:`Arm` for a method with its own params (a weighted
    variant beside the plain method)."""
    from selfimprove.recipes import get_recipe

    bad = [s for s in extra if "=" not in s]
    if bad:
        raise InputError(f"--set {bad[0]!r}: expected KEY=VALUE, e.g. --set generate.num_paths=16")
    arms = [m if isinstance(m, Arm) else Arm(m, m) for m in methods]
    labels = [a.label for a in arms]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise InputError(f"study arms named twice: {', '.join(twice)}; give each --arm its own "
                         "label")
    runs = []
    for arm in arms:
        for seed in seeds:
            init = get_recipe(arm.method).init
            name = f"{study}-{arm.label}-s{seed}"
            settings = (f"method={arm.method}", f"seed={seed}", f"data.seed={data_seed}",
                        *([f"finetune.init={init}"] if init else []),
                        f"tracking.study={study}", f"tracking.pipeline={name}", *extra,
                        *arm.settings)
            runs.append(Run(arm.method, seed, name, settings, arm.label))
    return runs


def _say(line: str) -> None:
    """A progress line, flushed (a study's output often goes to a log file)."""
    print(line, flush=True)


def dvc_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) with this interpreter's bin folder first on PATH.
    ``dvc queue start`` spawns its workers as ``dvc exp queue-worker`` and the stages run
    ``python -m stages...``, both looked up on PATH: run as ``.venv/bin/selfimprove`` without an
    activated environment, the workers would silently never start (or the stages would run
    another Python)."""
    import os

    env = dict(os.environ if env is None else env)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep)
                                             if p and p != bin_dir)])
    return env


def run_captured(cmd: Sequence[str], cwd: Path, env: dict | None = None):
    """``subprocess.run`` with stdout and stderr captured in temporary files, not pipes: ``dvc
    queue start`` leaves its workers running with the caller's stdout and stderr, so a pipe would
    stay open (and ``subprocess.run`` wait) until the queue is empty - the study printed no
    progress until the end."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(list(cmd), cwd=cwd, env=env, stdout=out, stderr=err).returncode
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(list(cmd), code, out.read(), err.read())


def _dvc(args: Sequence[str], cwd: Path, env: dict | None = None) -> str:
    proc = run_captured([sys.executable, "-m", "dvc", *args], cwd, dvc_env(env))
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise InputError(f"dvc {' '.join(args)} failed: " + " | ".join(tail))
    return proc.stdout


#: ``dvc exp show`` tries before a study gives up: it fails now and then while a worker removes
#: a finished experiment's temporary copy (``directory '.dvc/tmp/exps/tmp.../.dvc' does not
#: exist``), and succeeds a moment later
SHOW_TRIES = 5


def _show(repo: Path, tries: int = SHOW_TRIES, wait_s: float = 2.0) -> str:
    args = ["exp", "show", "--json", "--no-fetch"]
    for _ in range(tries - 1):
        try:
            return _dvc(args, repo)
        except InputError:
            time.sleep(wait_s)
    return _dvc(args, repo)  # the last try's error is the study's


def _alive(pid) -> bool:
    """Whether process ``pid`` exists (``None``: unknown, taken as alive)."""
    import os

    if not pid:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def experiments(repo: Path) -> dict[str, dict]:
    """The workspace baseline's experiments by name (``dvc exp show --json``): ``rev``,
    ``state`` (success, queued, running, failed), ``params`` (params.yaml's contents) and
    ``pid`` (the running experiment's process, ``None`` otherwise)."""
    out: dict[str, dict] = {}
    for baseline in json.loads(_show(repo) or "[]"):
        for exp in baseline.get("experiments") or []:
            rev = (exp.get("revs") or [{}])[0]
            name = exp.get("name") or rev.get("name")
            if not name:
                continue
            executor = exp.get("executor") or {}
            state = executor.get("state") or "success"
            params = ((rev.get("data") or {}).get("params") or {}).get("params.yaml", {})
            out[name] = {"rev": rev.get("rev"), "state": state, "params": params.get("data", {}),
                         "pid": (executor.get("local") or {}).get("pid")}
    return out


def _get(params: dict, key: str):
    for part in key.split("."):
        if not isinstance(params, dict) or part not in params:
            return None
        params = params[part]
    return params


def same_params(params: dict, settings: Sequence[str]) -> bool:
    """Whether an experiment's params hold every ``key=value`` of ``settings``."""
    return all(_get(params, k) == yaml.safe_load(v)
               for k, v in (s.split("=", 1) for s in settings))


def queue(runs: Sequence[Run], repo: Path, say: Callable[[str], None] = _say) -> list[Run]:
    """Queue every run that has not finished with its params and is not queued or running;
    returns those queued. A finished experiment of the name with other params is an error."""
    found = experiments(repo)
    queued = []
    for run in runs:
        exp = found.get(run.name)
        if exp and exp["state"] == "success":
            if not same_params(exp["params"], run.settings):
                raise InputError(
                    f"experiment {run.name} exists with other params; choose another --name or "
                    f"remove it (dvc exp remove {run.name})")
            say(f"{run.name}: finished, kept")
            continue
        if exp and exp["state"] == "running" and not _alive(exp.get("pid")):
            # its worker was killed (a stopped machine, a closed session): DVC still says
            # running; ``dvc queue kill`` marks it failed. DVC refuses while a live worker has
            # the task (it is collecting the finished run's results): then it is running.
            try:
                _dvc(["queue", "kill", run.name], repo)
                say(f"{run.name}: its process {exp['pid']} is gone; queued again")
                exp = {**exp, "state": "failed"}
            except InputError:
                pass
        if exp and exp["state"] in PENDING:
            say(f"{run.name}: {exp['state']} already")
            continue
        if exp and exp["state"] == "failed":
            _dvc(["queue", "remove", run.name], repo)
        _dvc(run.command()[1:], repo)
        say(f"{run.name}: queued ({' '.join(run.settings)})")
        queued.append(run)
    return queued


#: the most of one core the waiting loop's polls take: ``dvc exp show`` costs seconds of CPU
#: once a repository holds many experiments (10-15 s here at 40 %), which every 10 s took a
#: third of a core from the runs on a 2-core machine; the loop sleeps at least
#: ``1 / POLL_SHARE - 1`` times its last poll's duration (a finish is seen that much later)
POLL_SHARE = 0.1


def start_and_wait(runs: Sequence[Run], repo: Path, jobs: int, poll_s: float = 10.0,
                   say: Callable[[str], None] = _say) -> dict[str, str]:
    """``dvc queue start -j jobs``, then wait until none of ``runs`` is queued or running,
    saying each state change; returns each run's final state. It polls every ``poll_s``
    seconds, or less often when a poll is slow (:data:`POLL_SHARE`)."""
    names = [r.name for r in runs]
    if any(experiments(repo).get(n, {}).get("state") in PENDING for n in names):
        _dvc(["queue", "start", "-j", str(jobs)], repo)
    seen: dict[str, str] = {}
    times = read_times(repo)
    t0 = time.monotonic()
    interval = poll_s
    while True:
        polled = time.monotonic()
        found = experiments(repo)
        interval = max(poll_s, (time.monotonic() - polled) * (1 / POLL_SHARE - 1))
        states = {n: found.get(n, {}).get("state", "missing") for n in names}
        changed = {n: s for n, s in states.items() if seen.get(n) != s}
        if changed:
            done = sum(s == "success" for s in states.values())
            say(f"[{time.monotonic() - t0:.0f} s] {done}/{len(names)} finished; "
                + ", ".join(f"{n}: {s}" for n, s in changed.items()))
            seen = states
            note_times(times, changed, time.time(), round(interval, 1))
            write_times(repo, times)
        if not any(s in PENDING for s in states.values()):
            return states
        time.sleep(interval)


#: when the study saw each experiment start and finish (by name; the wall time a study
#: records per run), kept across study invocations beside DVC's own queue state
TIMES_FILE = Path(".dvc/tmp/selfimprove-study-times.json")


def read_times(repo: Path) -> dict[str, dict]:
    path = repo / TIMES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_times(repo: Path, times: dict[str, dict]) -> None:
    from selfimprove.core.io import write_json

    write_json(repo / TIMES_FILE, times)


def note_times(times: dict[str, dict], changed: dict[str, str], now: float,
               poll_s: float) -> None:
    """Record state changes: ``running`` (again) starts a run's clock, ``success`` stops it.
    Seen by polling every ``poll_s`` seconds: each end is known to that resolution.

    >>> t = {}
    >>> note_times(t, {"a": "running", "b": "queued"}, 100.0, 10)
    >>> note_times(t, {"a": "success"}, 160.0, 10); t
    {'a': {'started': 100.0, 'poll_s': 10, 'finished': 160.0}}
    >>> note_times(t, {"a": "running"}, 200.0, 10); t  # requeued: a new clock
    {'a': {'started': 200.0, 'poll_s': 10}}
    """
    for name, state in changed.items():
        if state == "running":
            times[name] = {"started": now, "poll_s": poll_s}
        elif state == "success" and "started" in times.get(name, {}) \
                and "finished" not in times[name]:
            times[name]["finished"] = now


def wall_record(entry: dict | None) -> dict | None:
    """``wall.json`` of an exported run: its start, end and wall time as the study saw them.

    >>> wall_record({"started": 0.0, "finished": 90.5, "poll_s": 10})["wall_s"]
    90.5
    >>> wall_record({"started": 0.0}) is None
    True
    """
    from datetime import UTC, datetime

    if not entry or "finished" not in entry:
        return None
    iso = {k: datetime.fromtimestamp(entry[k], UTC).isoformat(timespec="seconds")
           for k in ("started", "finished")}
    return {"wall_s": round(entry["finished"] - entry["started"], 1), **iso,
            "resolution_s": entry["poll_s"]}


#: files of a run a study keeps in git (small); the predictions become question_scores.json
_KEPT_SUFFIXES = (".json", ".csv")


def export(run: Run, rev: str, repo: Path, out: Path, wall: dict | None = None) -> Path:
    """Write a finished experiment's results (at ``rev``) in compact form to ``out/<folder>``:
    the rounds' JSON files, ``question_scores.json`` per round, the report's CSV/JSON files,
    command.txt, commit.txt and ``wall`` as wall.json (:func:`wall_record`, when a study command
    saw it run). The folder is replaced whole."""
    import shutil

    from dvc.api import DVCFileSystem

    from selfimprove.core.io import atomic_path
    from selfimprove.evaluation.headline import read_round_scores
    from selfimprove.evaluation.question_scores import compact_round, write_question_scores

    fs = DVCFileSystem(str(repo), rev=rev)
    target = out / run.folder
    with tempfile.TemporaryDirectory() as tmp, atomic_path(target, is_dir=True) as dest:
        dest.mkdir(parents=True, exist_ok=True)
        for top in ("data/rounds", "data/report"):
            if not fs.isdir(top):
                continue
            for path in sorted(fs.find(top)):
                rel = path.lstrip("/")
                parts = rel.split("/")
                in_eval = top == "data/rounds" and len(parts) == 5 and parts[3] == "eval"
                kept = len(parts) == (4 if top == "data/rounds" else 3) and rel.endswith(
                    _KEPT_SUFFIXES)
                if in_eval or kept:
                    local = Path(tmp if in_eval else dest) / rel
                    local.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(path, str(local))
        for round_dir in sorted((dest / "data/rounds").glob("r*")):
            staged = Path(tmp) / "data/rounds" / round_dir.name
            if (staged / "eval").is_dir():
                shutil.copytree(round_dir, staged, dirs_exist_ok=True)
                content = compact_round(staged, read_round_scores(staged))
                write_question_scores(round_dir, content)
        (dest / "command.txt").write_text(f"$ {' '.join(run.command())}\n")
        (dest / "commit.txt").write_text(f"{rev}\n")
        if wall:  # the queue's wall time of this run
            (dest / "wall.json").write_text(json.dumps(wall, indent=1) + "\n")
    return target


def study_arms(args) -> list[Arm]:
    """The study's columns: ``--methods`` (each a method with the usual params), then every
    ``--arm``; ``--methods`` defaults to lmsi format_only star when no ``--arm`` is given."""
    methods = args.methods if args.methods is not None else (
        [] if args.arm else list(DEFAULT_METHODS))
    return [Arm(m, m) for m in methods] + [parse_arm(a) for a in args.arm or []]


def run_study(args) -> int:
    """``selfimprove study run``: queue, start, wait, export, table."""
    if not args.poll > 0:
        raise InputError(f"--poll {args.poll}: expected seconds > 0, e.g. --poll 10")
    repo = Path(args.repo).resolve()
    runs = plan(args.name, study_arms(args), args.seeds, args.data_seed, args.set or [])
    queue(runs, repo)
    if args.no_start:
        return 0
    states = start_and_wait(runs, repo, args.jobs, args.poll)
    failed = [n for n, s in states.items() if s != "success"]
    if failed:
        print(f"error: {len(failed)} experiment(s) did not finish: {', '.join(failed)} "
              f"(`dvc queue logs NAME`; rerun this command to run only those)", file=sys.stderr)
        return 1
    return export_and_table(runs, repo, args)


def export_and_table(runs: Sequence[Run], repo: Path, args) -> int:
    """Export every run of the study (finished, with its params) and write the table."""
    found = experiments(repo)
    missing = [r.name for r in runs if found.get(r.name, {}).get("state") != "success"
               or not same_params(found[r.name]["params"], r.settings)]
    if missing:
        raise InputError(f"not finished with the study's params: {', '.join(missing)}; run "
                         "`selfimprove study run` with the same arguments")
    out = Path(args.out) if args.out else repo / "benchmarks/results" / args.name
    times = read_times(repo)
    for run in runs:
        wall = wall_record(times.get(run.name))
        print(f"{run.name}: exported to {export(run, found[run.name]['rev'], repo, out, wall)}")
    if args.push:  # the experiments' git refs to the git remote, their outputs to DVC's remote
        _dvc(["exp", "push", args.push, *(r.name for r in runs)], repo)
        print(f"pushed {len(runs)} experiment(s) to {args.push} and the default DVC remote")
    return write_table(out, args)


def write_table(root: Path | list[Path], args) -> int:
    """The study table from the compact files under ``root`` (one exported study, or several,
    each method's runs in one of them): Markdown on stdout, the JSON in ``--json``."""
    from pydantic import ValidationError

    from selfimprove.config.evaluation import StatsConfig
    from selfimprove.core.io import output_problem
    from selfimprove.evaluation.study_table import study_folders, study_table

    try:
        cfg = StatsConfig(level=args.level, n_resamples=args.resamples, seed=args.stats_seed)
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(f"--{err['loc'][0].replace('n_resamples', 'resamples')}: "
                         f"{err['msg']}") from None
    problem = output_problem(Path(args.json)) if args.json else None
    if problem:
        raise InputError(f"--json {args.json}: {problem}")
    labels = [a.label for a in study_arms(args)]
    text, data = study_table(study_folders(root, labels, args.seeds), list(args.seeds),
                             args.round, cfg)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    return 0

