"""Compare a run's held-out metrics with a reference run, within a tolerance; prints JSON.

    python benchmarks/compare_default.py                      # data/rounds vs this CPU's reference
    python benchmarks/compare_default.py --rerun              # `dvc repro` first, then compare
    python benchmarks/compare_default.py --tolerance 0.05 --reference benchmarks/results/X
    python benchmarks/compare_default.py --no-intervals      # leave the ``ci`` bounds out

The default reference is the one `make repro` made on this CPU type (``REFERENCES``: bf16 with
AMX, or AVX512-BF16 without it; ``chosen_by`` in the JSON says which). A reference is a folder
with ``<round>/scores.json`` (what a run's ``data/rounds`` holds;
``benchmarks/results/`` keeps the runs of the docs, made before the split, whose ``metrics.json``
holds every score: either is read, by ``selfimprove.evaluation.headline.read_round_scores``).
Every numeric leaf of every reference round's scores (accuracies, maj@k, EM/F1, no-answer
rates, intervals; the ``n`` counts must match exactly) is compared: ``|run - reference| <=
tolerance``. ``--no-intervals`` leaves out the bootstrap interval bounds (``<set>.<style>.ci.*``;
they move when only the bootstrap code changes) and compares every other metric. Tolerance 0
(the default) asks for identical figures: what the same lock on the same machine type gives for
greedy metrics. Across machines use docs/reproducibility.md's spread. Exit code 0 when everything is
within tolerance, 1 otherwise; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

#: the default's reference per bf16 path (`make repro` at compute.threads 1): the figures are
#: identical only on the CPU type that made them (docs/reproducibility.md)
REFERENCES = {
    # Xeon with AMX, made before the kernels and finetune.processes 2: equal with
    # sampler.decode_kernel false, sampler.prefix_kernel false, finetune.processes 1
    "amx_bf16": Path("benchmarks/results/lmsi_default_locked"),
    # AMD EPYC, the defaults since 2026-12-08: decode and prefix kernels on, finetune.processes
    # 2; lmsi_default_kernel_avx512bf16 / lmsi_default_flash_avx512bf16 are the ones before
    "avx512_bf16": Path("benchmarks/results/lmsi_default_locked_avx512bf16"),
}
DEFAULT_REFERENCE = REFERENCES["amx_bf16"]


def default_reference(flags: set[str] | None = None) -> tuple[Path, str]:
    """The reference made on this CPU's bf16 path, and why it was chosen: AMX first, then
    AVX512-BF16; a CPU with neither runs fp32 (``sampler.dtype: auto``) and has no reference
    of its own (the AMX one, to compare within a tolerance).

    >>> default_reference({"avx512f", "avx512_bf16"})[0].name
    'lmsi_default_locked_avx512bf16'
    >>> default_reference({"avx512_bf16", "amx_bf16"})[0].name
    'lmsi_default_locked'
    >>> default_reference(set())[1]
    'no reference for this CPU (neither amx_bf16 nor avx512_bf16): compare with a tolerance'
    """
    if flags is None:
        flags = cpu_flags()
    for flag, path in REFERENCES.items():
        if flag in flags:
            return path, f"CPU flag {flag}"
    return DEFAULT_REFERENCE, ("no reference for this CPU (neither amx_bf16 nor avx512_bf16): "
                               "compare with a tolerance")


def cpu_flags() -> set[str]:
    """The CPU's flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def flat(d: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested metrics as ``a.b.c`` keys.

    >>> flat({"arith": {"fewshot_cot": {"strict": 0.5, "n": 4}, "note": "x"}})
    {'arith.fewshot_cot.strict': 0.5, 'arith.fewshot_cot.n': 4}
    """
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flat(v, key + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


def without_intervals(metrics: dict[str, float]) -> dict[str, float]:
    """Flat metrics without the interval bounds and level (``<set>.<style>.ci.…``).

    >>> without_intervals({"a.cot.strict": 0.5, "a.cot.ci.strict.lo": 0.4, "a.cot.ci.level": 0.95})
    {'a.cot.strict': 0.5}
    """
    return {k: v for k, v in metrics.items() if ".ci." not in f".{k}"}


def compare(run: dict[str, float], ref: dict[str, float], tolerance: float) -> list[dict]:
    """One row per reference metric that the run misses or differs on beyond ``tolerance``
    (counts ``*.n`` exactly).

    >>> compare({"a.strict": 0.5, "a.n": 4}, {"a.strict": 0.52, "a.n": 4}, 0.05)
    []
    >>> for row in compare({"a.strict": 0.5}, {"a.strict": 0.6, "a.n": 4}, 0.05):
    ...     print(row)
    {'metric': 'a.strict', 'run': 0.5, 'reference': 0.6}
    {'metric': 'a.n', 'run': None, 'reference': 4}
    """
    bad = []
    for key, want in ref.items():
        got = run.get(key)
        tol = 0 if key.endswith(".n") else tolerance
        if got is None or abs(got - want) > tol + 1e-12:
            bad.append({"metric": key, "run": got, "reference": want})
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, default=None,
                    help="default: the reference made on this CPU type (REFERENCES)")
    ap.add_argument("--rounds-dir", type=Path, default=Path("data/rounds"))
    ap.add_argument("--tolerance", type=float, default=0.0)
    ap.add_argument("--rerun", action="store_true", help="run `dvc repro` first")
    ap.add_argument(
        "--no-intervals",
        action="store_true",
        help="leave the interval bounds (ci.*) out; compare every other metric",
    )
    args = ap.parse_args(argv)
    if args.rerun:
        subprocess.run([sys.executable, "-m", "dvc", "repro"], check=True)
    from selfimprove.evaluation.headline import read_round_scores, scores_path

    chosen = "--reference"
    if args.reference is None:
        args.reference, chosen = default_reference()
    rounds = sorted(p.name for p in args.reference.glob("*/") if scores_path(p).exists())
    if not rounds:
        print(f"error: {args.reference}: no <round>/scores.json or metrics.json", file=sys.stderr)
        return 2
    result = {
        "reference": str(args.reference),
        "chosen_by": chosen,
        "tolerance": args.tolerance,
        "intervals": not args.no_intervals,
        "rounds": {},
    }
    ok = True
    for rnd in rounds:
        ref = flat(read_round_scores(args.reference / rnd))
        if args.no_intervals:
            ref = without_intervals(ref)
        path = scores_path(args.rounds_dir / rnd)
        run = flat(read_round_scores(path.parent)) if path.exists() else {}
        bad = compare(run, ref, args.tolerance)
        ok &= not bad
        result["rounds"][rnd] = {"n_metrics": len(ref), "outside": bad}
    result["ok"] = ok
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
