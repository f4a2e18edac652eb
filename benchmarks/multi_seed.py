"""Several seeds of several methods on the same questions, then one table with 95% intervals.

    python benchmarks/multi_seed.py run --root ../runs --methods lmsi format_only star \
        --seeds 0 1 2
    python benchmarks/multi_seed.py table --root ../runs --methods lmsi format_only star \
        --seeds 0 1 2 --json benchmarks/results/multi_seed.json

``run``: one clone of this repository's HEAD per (method, seed), ``<root>/<method>_s<seed>``,
all sharing one DVC cache (``<root>/cache``, so its run cache too), each running
``dvc exp run -S method=<m> -S seed=<k> -S data.seed=<data-seed>`` (+ the method's usual
settings: ``star``/``rest_em`` retrain from the base model each round, as the papers do). The
data seed is fixed, so every run trains and evaluates on the same questions and only sampling and
training vary. The first method of each seed runs before the others of that seed: round 0's
evaluation and round 1's sampling (which no method changes) are then restored from the run cache
instead of recomputed. ``--jobs`` runs that many at once, each with
``OMP_NUM_THREADS=--threads``. A run that was killed resumes where DVC left it (rerun the
command); a finished one is skipped.

``table``: per method, the round's accuracy averaged over seeds with a 95% interval (bootstrap
over seeds and questions), and each method minus the first with a paired interval (same
questions); rounds r0 (the no-training control) and ``--round``. Markdown on stdout, the JSON
(``compare_runs.py``'s rows) in ``--json``.
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

REPO = Path(__file__).resolve().parents[1]
# The methods' usual settings, as the README runs them (STaR/ReST-EM: from base each round).
METHOD_SETTINGS = {"star": ["finetune.init=base"], "rest_em": ["finetune.init=base"]}
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
    subprocess.run([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(root / "cache")],
                   cwd=path, check=True)
    return path


def _head() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def _run_one(root: Path, method: str, seed: int, data_seed: int, threads: int) -> dict:
    name = f"{method}_s{seed}"
    path = _clone(root, name)
    sets = [f"method={method}", f"seed={seed}", f"data.seed={data_seed}",
            *METHOD_SETTINGS.get(method, [])]
    cmd = [sys.executable, "-m", "dvc", "exp", "run", *(a for s in sets for a in ("-S", s))]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(path / "src"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
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
        firsts = {k: pool.submit(_run_one, args.root, first, k, args.data_seed, args.threads)
                  for k in args.seeds}

        def after_first(method: str, seed: int) -> dict:
            firsts[seed].result()
            return _run_one(args.root, method, seed, args.data_seed, args.threads)

        others = [pool.submit(after_first, m, k) for k in args.seeds for m in rest]
        results = [f.result() for f in [*firsts.values(), *others]]
    print(json.dumps({"runs": results}))
    return 0 if all(r["rc"] == 0 for r in results) else 1


def _fmt(side: dict) -> str:
    return f"{side['mean']:.3f} [{side['lo']:.3f}, {side['hi']:.3f}]"


def table(args) -> int:
    cfg = StatsConfig(level=args.level, n_resamples=args.resamples, seed=args.stats_seed)
    folders = {m: [args.root / f"{m}_s{k}" / "data" / "rounds" for k in args.seeds]
               for m in args.methods}
    missing = [str(f) for fs in folders.values() for f in fs
               if not (f / args.round / "metrics.json").exists()]
    if missing:
        print(f"error: no {args.round}/metrics.json in: {', '.join(missing)} (run them first)",
              file=sys.stderr)
        return 2
    base = args.methods[0]
    out = {"seeds": args.seeds, "round": args.round, "level": cfg.level, "rows": {}}
    lines = ["| set / style / metric | r0 (no training) | "
             + " | ".join(f"{m} {args.round}" for m in args.methods)
             + " | " + " | ".join(f"{m} − {base}" for m in args.methods[1:]) + " |",
             "|---" * (2 + 2 * len(args.methods) - 1) + "|"]
    r0 = compare(_load(folders[base], "r0"), _load(folders[base], args.round), cfg)
    by_method = {m: compare(_load(folders[base], args.round), _load(folders[m], args.round), cfg)
                 for m in args.methods[1:]}
    out["rows"]["r0_vs_" + base] = r0
    out["rows"].update({f"{m}_vs_{base}": rows for m, rows in by_method.items()})
    for row in r0:
        if row["metric"] not in SHOWN:
            continue
        key = (row["set"], row["style"], row["metric"])
        others = [next(r for r in by_method[m] if (r["set"], r["style"], r["metric"]) == key)
                  for m in args.methods[1:]]
        cells = [_fmt(row["a"]), _fmt(row["b"]), *(_fmt(o["b"]) for o in others),
                 *(f"{o['diff']:+.3f} [{o['lo']:+.3f}, {o['hi']:+.3f}]" for o in others)]
        lines.append(f"| {' / '.join(key)} (n={row['n_questions']}) | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["run", "table"])
    ap.add_argument("--root", type=Path, required=True, help="folder of the runs' clones")
    ap.add_argument("--methods", nargs="+", default=["lmsi", "format_only", "star"],
                    help="methods (params.yaml `method`); the first is the reference")
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
