"""Several seeds of several methods on the same questions, then one table with 95% intervals.

    python benchmarks/multi_seed.py run --root ../runs --methods lmsi format_only star \
        --seeds 0 1 2
    python benchmarks/multi_seed.py table --root ../runs --methods lmsi format_only star \
        --seeds 0 1 2 --json benchmarks/results/multi_seed.json

``run``: one clone of this repository's HEAD per (method, seed), ``<root>/<method>_s<seed>``,
all sharing one DVC cache (``<root>/cache``, so its run cache too) and one MLflow store
(``<root>/mlflow.db``: a study run named after ``<root>``, one child per clone with its rounds;
``mlflow ui --backend-store-uri sqlite:///<root>/mlflow.db``), each running
``dvc exp run -S method=<m> -S seed=<k> -S data.seed=<data-seed>`` (+ the method's usual
settings: ``star``/``rest_em`` retrain from the base model each round, as the papers do). The
data seed is fixed, so every run trains and evaluates on the same questions and only sampling and
training vary. The first method of each seed runs before the others of that seed: every stage
whose deps and params the methods share (data, warm start, round 0's evaluation, round 1's
sampling) is then restored from the run cache instead of recomputed. (In the README's runs,
made before, round 1's sampling was recomputed: DVC saves no run-cache entry for a stage with a
plain ``cache: false`` output, which generate.json then was; tests/integration/test_run_cache.py
now shows it restored.)
``--jobs`` runs that many at once, each with
``OMP_NUM_THREADS=--threads``. A run that was killed resumes where DVC left it (rerun the
command); a finished one is skipped.

``table``: per method, the round's accuracy averaged over seeds with a 95% interval (bootstrap
over seeds and questions), and each method minus the first with a paired interval (same
questions); rounds r0 (the no-training control) and ``--round``. Then, per method and paired
within each run (a seed's two rounds): ``--round`` minus the round before it (the most a stop
rule before the last round could have gained, negated) and the accuracy the label-free choice of
round (``tracking.best_by: label_free``) loses against the round truly best on that metric, both
averaged over seeds with an interval that resamples seeds and questions. Markdown on stdout, the
JSON (``compare_runs.py``'s rows, ``last_minus_prev``, ``label_free_loss``) in ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from compare_runs import _load, compare  # same folder

from selfimprove.config.evaluation import StatsConfig
from selfimprove.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]


def method_settings(method: str) -> list[str]:
    """A method's usual settings, as its paper runs it: the recipe's ``init`` (STaR/ReST-EM: from
    base each round)."""
    init = get_recipe(method).init
    return [f"finetune.init={init}"] if init else []


# Accuracies shown in the Markdown table (the JSON has every metric).
SHOWN = {"strict", "f1", "maj@8"}


def _clone(root: Path, name: str) -> Path:
    path = root / name
    if not (path / ".git").exists():
        subprocess.run(["git", "clone", "-q", str(REPO), str(path)], check=True)
        subprocess.run(["git", "-C", str(path), "checkout", "-q", _head()], check=True)
    shared = root / "shared"  # the project reads ../shared (benchmark data) from its root
    if not shared.exists() and (REPO.parent / "shared").exists():
        shared.symlink_to((REPO.parent / "shared").resolve())
    subprocess.run(
        [sys.executable, "-m", "dvc", "cache", "dir", "--local", str(root / "cache")],
        cwd=path,
        check=True,
    )
    return path


def _head() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _run_one(root: Path, method: str, seed: int, data_seed: int, threads: int) -> dict:
    name = f"{method}_s{seed}"
    path = _clone(root, name)
    # one MLflow store for the study (<root>/mlflow.db): a study run, one child per run (its
    # pipeline, named like the clone), each with its rounds
    sets = [
        f"method={method}",
        f"seed={seed}",
        f"data.seed={data_seed}",
        f"tracking.pipeline={name}",
        f"tracking.study={root.resolve().name}",
        *method_settings(method),
    ]
    cmd = [sys.executable, "-m", "dvc", "exp", "run", *(a for s in sets for a in ("-S", s))]
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONPATH=str(path / "src"),
        MLFLOW_TRACKING_URI=f"sqlite:///{(root / 'mlflow.db').resolve()}",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    t0 = time.perf_counter()
    with open(path / "multi_seed.log", "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(cmd, cwd=path, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    out = {"run": name, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1), "settings": sets}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def run(args) -> int:
    args.root.mkdir(parents=True, exist_ok=True)
    first, rest = args.methods[0], args.methods[1:]
    # The first method of every seed is queued first; each other method of a seed waits for it
    # (so it finds round 0's evaluation and round 1's sampling in the run cache) while the pool
    # keeps every worker busy. Waiting never deadlocks: a seed's first run is queued, so
    # started, before any run that waits for it.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        firsts = {
            k: pool.submit(_run_one, args.root, first, k, args.data_seed, args.threads)
            for k in args.seeds
        }

        def after_first(method: str, seed: int) -> dict:
            firsts[seed].result()
            return _run_one(args.root, method, seed, args.data_seed, args.threads)

        others = [pool.submit(after_first, m, k) for k in args.seeds for m in rest]
        results = [f.result() for f in [*firsts.values(), *others]]
    print(json.dumps({"runs": results}))
    return 0 if all(r["rc"] == 0 for r in results) else 1


def _fmt(side: dict) -> str:
    return f"{side['mean']:.3f} [{side['lo']:.3f}, {side['hi']:.3f}]"


def _fmt_diff(row: dict) -> str:
    return f"{row['diff']:+.3f} [{row['lo']:+.3f}, {row['hi']:+.3f}]"


def _rounds(folder: Path) -> dict[str, dict]:
    """Every round's nested metrics of one run, by round name."""
    from selfimprove.core.paths import round_index
    from selfimprove.evaluation.headline import read_round_scores

    found = sorted(folder.glob("r*/metrics.json"), key=lambda p: round_index(p.parent.name))
    return {p.parent.name: read_round_scores(p.parent) for p in found}


def _within_runs(pairs: list[tuple[tuple, tuple]], cfg: StatsConfig) -> dict:
    """``b - a`` where a and b come from the same run (two rounds of one seed): the per-question
    differences of each run, averaged over runs, with an interval that resamples runs and
    questions (questions every run scored)."""
    from selfimprove.evaluation.stats import seeds_bootstrap_ci

    sides = [side for pair in pairs for side in pair]
    common = [q for q in sides[0][0] if all(q in set(ids) for ids, _ in sides[1:])]

    def pick(ids, scores):
        pos = {q: i for i, q in enumerate(ids)}
        return [float(scores[pos[q]]) for q in common]

    diffs = [[b - a for a, b in zip(pick(*sa), pick(*sb), strict=True)] for sa, sb in pairs]
    iv = seeds_bootstrap_ci(diffs, cfg.seed, cfg.n_resamples, cfg.level)
    return {
        "diff": iv.estimate,
        "lo": iv.lo,
        "hi": iv.hi,
        "n_questions": len(common),
        "n_runs": len(pairs),
    }


def _read_runs(folders: list[Path]) -> tuple[list, list]:
    """Every run's rounds' metrics and per-question scores, read once."""
    from selfimprove.evaluation.intervals import read_scores

    runs = [(f, _rounds(f)) for f in folders]
    scores = [{r: read_scores(f / r, m) for r, m in rounds.items()} for f, rounds in runs]
    return runs, scores


def _within_rows(read: tuple[list, list], choose, cfg: StatsConfig) -> list[dict]:
    """Per shown (set, style, metric): ``choose(rounds_metrics, flat_key) -> (round_a, round_b)``
    for every run (``read``: :func:`_read_runs`), then :func:`_within_runs` of b - a."""
    runs, scores = read
    keys = set.intersection(
        *(
            {
                (st, sy, m)
                for by_style in sc.values()
                for (st, sy), (_, per) in by_style.items()
                for m in per
            }
            for sc in scores
        )
    )
    rows = []
    for set_name, style, metric in sorted(k for k in keys if k[2] in SHOWN):
        picks = [choose(rounds, f"{set_name}.{style}.{metric}") for _, rounds in runs]
        if any(p is None for p in picks):
            continue
        pairs = []
        for (a, b), sc in zip(picks, scores, strict=True):
            (ids_a, per_a), (ids_b, per_b) = sc[a][(set_name, style)], sc[b][(set_name, style)]
            pairs.append(((ids_a, per_a[metric]), (ids_b, per_b[metric])))
        rows.append(
            {
                "set": set_name,
                "style": style,
                "metric": metric,
                "rounds": [list(p) for p in picks],
                **_within_runs(pairs, cfg),
            }
        )
    return rows


# Collapse monitors summarized over seeds (filter.json; precision: analysis only, training labels).
MONITORS = (
    "selected_fraction",
    "mean_agreement",
    "answer_entropy",
    "distinct_answers",
    "mean_path_tokens",
    "selected_precision",
    "kept_precision",
)


def _monitors(folders: list[Path]) -> dict[str, dict[str, list]]:
    """Per round, per monitor: the values of every run (seed) that has them."""
    from selfimprove.core.paths import round_index
    from selfimprove.evaluation.report import read_labels
    from selfimprove.evaluation.summaries import monitor_rows

    out: dict[str, dict[str, list]] = {}
    for folder in folders:
        rounds = sorted({p.parent.name for p in folder.glob("r*/filter.json")}, key=round_index)
        labels_path = folder.parent / "prepared" / "train_labels.jsonl"
        labels = read_labels(labels_path) if labels_path.exists() else None
        for row in monitor_rows(folder, rounds, labels):
            name = row["round_name"]
            stats = json.loads((folder / name / "filter.json").read_text())
            row["selected_fraction"] = stats.get("selected_fraction")
            for key in MONITORS:
                if row.get(key) is not None:
                    out.setdefault(name, {}).setdefault(key, []).append(row[key])
    return out


def _label_free_vs_best(rounds: dict[str, dict], key: str) -> tuple[str, str] | None:
    """(the label-free choice of round, the round truly best on ``key``) of one run."""
    from selfimprove.evaluation.analysis import flatten_metrics
    from selfimprove.tracking.selection import choose_round

    flat = {r: flatten_metrics(m) for r, m in rounds.items()}
    chosen, best = choose_round(flat, "label_free"), choose_round(flat, "metric", key)
    return None if chosen is None or best is None else (chosen, best)


def table(args) -> int:
    cfg = StatsConfig(level=args.level, n_resamples=args.resamples, seed=args.stats_seed)
    folders = {
        m: [args.root / f"{m}_s{k}" / "data" / "rounds" for k in args.seeds] for m in args.methods
    }
    missing = [
        str(f)
        for fs in folders.values()
        for f in fs
        if not (f / args.round / "metrics.json").exists()
    ]
    if missing:
        print(
            f"error: no {args.round}/metrics.json in: {', '.join(missing)} (run them first)",
            file=sys.stderr,
        )
        return 2
    base = args.methods[0]
    out = {"seeds": args.seeds, "round": args.round, "level": cfg.level, "rows": {}}
    lines = [
        "| "
        + " | ".join(
            [
                "set / style / metric",
                "r0 (no training)",
                *(f"{m} {args.round}" for m in args.methods),
                *(f"{m} − {base}" for m in args.methods[1:]),
            ]
        )
        + " |",
        "|---" * (2 + 2 * len(args.methods) - 1) + "|",
    ]
    r0 = compare(_load(folders[base], "r0"), _load(folders[base], args.round), cfg)
    by_method = {
        m: compare(_load(folders[base], args.round), _load(folders[m], args.round), cfg)
        for m in args.methods[1:]
    }
    out["rows"]["r0_vs_" + base] = r0
    out["rows"].update({f"{m}_vs_{base}": rows for m, rows in by_method.items()})
    for row in r0:
        if row["metric"] not in SHOWN:
            continue
        key = (row["set"], row["style"], row["metric"])
        others = [
            next(r for r in by_method[m] if (r["set"], r["style"], r["metric"]) == key)
            for m in args.methods[1:]
        ]
        cells = [
            _fmt(row["a"]),
            _fmt(row["b"]),
            *(_fmt(o["b"]) for o in others),
            *(_fmt_diff(o) for o in others),
        ]
        lines.append(f"| {' / '.join(key)} (n={row['n_questions']}) | " + " | ".join(cells) + " |")
    # Would a stop rule have helped? With these rounds it can only ever give back the previous
    # round's model, so the most it can gain is r_prev - r_last, paired within each run.
    from selfimprove.core.paths import round_index

    prev = f"r{round_index(args.round) - 1}"
    lines += [
        "",
        f"{args.round} − {prev} within each run (what a stop rule before "
        f"{args.round} could gain, negated), and the accuracy the label-free choice of "
        "round loses against the truly best round of each run:",
        "",
        "| method | set / style / metric | " + f"{args.round} − {prev} | "
        "label-free loss (best − chosen) | chosen / best rounds per seed |",
        "|---|---|---|---|---|",
    ]
    out["last_minus_prev"], out["label_free_loss"] = {}, {}
    for m in args.methods:
        read = _read_runs(folders[m])
        steps = _within_rows(
            read, lambda rounds, _k: (prev, args.round) if prev in rounds else None, cfg
        )
        loss = _within_rows(read, _label_free_vs_best, cfg)  # best - chosen
        out["last_minus_prev"][m], out["label_free_loss"][m] = steps, loss
        by_key = {(r["set"], r["style"], r["metric"]): r for r in loss}
        for row in steps:
            key = (row["set"], row["style"], row["metric"])
            lf = by_key.get(key)
            picks = ", ".join(f"{a}/{b}" for a, b in lf["rounds"]) if lf else "-"
            lines.append(
                f"| {m} | {' / '.join(key)} | {_fmt_diff(row)} | "
                f"{_fmt_diff(lf) if lf else '-'} | {picks} |"
            )
    lines += [
        "",
        "Collapse monitors of each round's sampled paths, mean over seeds (min–max); "
        "precision of the kept majorities uses the training labels (analysis only):",
        "",
        "| method | round | " + " | ".join(MONITORS) + " |",
        "|---|---|" + "---|" * len(MONITORS),
    ]
    out["monitors"] = {}
    for m in args.methods:
        out["monitors"][m] = mon = _monitors(folders[m])
        for name, values in mon.items():
            cells = [
                f"{sum(v) / len(v):.3g} ({min(v):.3g}–{max(v):.3g})"
                if (v := values.get(k))
                else "-"
                for k in MONITORS
            ]
            lines.append(f"| {m} | {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["run", "table"])
    ap.add_argument("--root", type=Path, required=True, help="folder of the runs' clones")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["lmsi", "format_only", "star"],
        help="methods (params.yaml `method`); the first is the reference",
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--data-seed", type=int, default=0, help="data.seed of every run")
    ap.add_argument("--round", default="r2", help="round compared (table)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per run")
    ap.add_argument("--json", type=Path, help="table: also write every row as JSON here")
    ap.add_argument("--level", type=float, default=StatsConfig().level)
    ap.add_argument("--resamples", type=int, default=StatsConfig().n_resamples)
    ap.add_argument("--stats-seed", type=int, default=StatsConfig().seed)
    args = ap.parse_args(argv)
    return run(args) if args.action == "run" else table(args)


if __name__ == "__main__":
    sys.exit(main())
