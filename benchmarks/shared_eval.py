"""Score a model on the real GSM8K test set and DROP dev set, read in place from ../shared/data.

GSM8K: a seeded subset of ``test.jsonl`` (``--gsm8k-n``), greedy, 8-shot chain of thought (Wei et
al. exemplars) and zero-shot chain of thought ("Let's think step by step."), scored strict (the
number after "The answer is") and flexible (the last number). DROP: a seeded subset of the
simple-evals ``drop_v0_dev.jsonl.gz`` (``--drop-n``, duplicate questions dropped), greedy,
few-shot chain of thought (3 exemplars), DROP EM and F1.

The sets are made by :func:`selfimprove.data.prepare.make_set` (the same subset the data stage
writes for an eval set of the same name, path and seed) and scored by
:func:`selfimprove.evaluation.evaluate.evaluate`; nothing is copied. Prints one JSON object: the
scores with 95% bootstrap intervals over the questions (``ci``), n, the truncation rate
(outputs that hit the token budget), wall times and the command.

    python benchmarks/shared_eval.py                          # the full run (data/models/base)
    python benchmarks/shared_eval.py --gsm8k-n 10 --drop-n 10 # a quick check
    python benchmarks/shared_eval.py --model data/rounds/r1/model --predictions /tmp/preds
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _relative(path: Path) -> str:
    """``path`` as written relative to the working directory when possible (the data stage's
    subset depends on the path string, e.g. ``../shared/data/gsm8k/test.jsonl``)."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)


def _truncated(preds: list[dict]) -> float:
    return sum(p.get("finish") == "length" for p in preds) / len(preds) if preds else 0.0


def _score(
    model: str, name: str, records: list[dict], cfg, smp, seed: int, out: Path | None
) -> dict:
    from selfimprove.core.io import write_jsonl
    from selfimprove.evaluation.evaluate import evaluate
    from selfimprove.evaluation.intervals import annotate_metrics

    t = time.perf_counter()
    metrics, preds = evaluate(model, {name: records}, cfg, seed, sampler_cfg=smp)
    metrics = annotate_metrics(metrics, preds)  # 95% bootstrap intervals over the questions
    result = {"wall_s": round(time.perf_counter() - t, 1)}
    for style, m in metrics[name].items():
        result[style] = m | {"truncated": _truncated(preds[f"{name}__{style}"])}
    if out is not None:
        for key, rows in preds.items():
            write_jsonl(out / f"{key}.jsonl", rows)
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "data" / "models" / "base"), help="model folder")
    ap.add_argument(
        "--data",
        default=str(ROOT.parent / "shared" / "data"),
        help="folder with gsm8k/test.jsonl and drop/drop_v0_dev.jsonl.gz",
    )
    ap.add_argument("--gsm8k-n", type=int, default=200, help="GSM8K test questions (0 = skip)")
    ap.add_argument("--drop-n", type=int, default=200, help="DROP dev questions (0 = skip)")
    ap.add_argument("--seed", type=int, default=0, help="subset seed (decoding is greedy)")
    ap.add_argument("--n-shots", type=int, default=8, help="GSM8K few-shot exemplars (max 8)")
    ap.add_argument(
        "--gsm8k-styles",
        nargs="+",
        default=["fewshot_cot", "zeroshot_cot"],
        help="GSM8K prompt styles (fewshot_cot fewshot_direct zeroshot_cot zeroshot_direct)",
    )
    ap.add_argument("--drop-styles", nargs="+", default=["fewshot_cot"], help="DROP prompt styles")
    ap.add_argument("--gsm8k-max-new-tokens", type=int, default=256, help="GSM8K token budget")
    ap.add_argument("--drop-max-new-tokens", type=int, default=128, help="DROP token budget")
    ap.add_argument("--batch-size", type=int, default=32, help="sequences decoded together")
    ap.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    ap.add_argument("--predictions", default=None, help="also write per-example predictions here")
    args = ap.parse_args(argv)

    import torch

    from selfimprove.config.data import SourceConfig
    from selfimprove.config.evaluation import EvaluateConfig
    from selfimprove.config.runtime import SamplerConfig
    from selfimprove.data.prepare import make_set
    from selfimprove.sampling.base import resolve_dtype

    t0 = time.perf_counter()
    data = Path(args.data)
    out = Path(args.predictions) if args.predictions else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Path(args.model)
    source_file = model / "selfimprove_source.json"
    result: dict = {
        "benchmark": "shared_eval",
        "model": str(model),
        "model_source": json.loads(source_file.read_text()) if source_file.exists() else None,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "dtype": str(resolve_dtype(args.dtype, device)).removeprefix("torch."),
        "seed": args.seed,
    }
    common = {"sc_paths": 0}
    smp = SamplerConfig(batch_size=args.batch_size, dtype=args.dtype)

    if args.gsm8k_n:
        path = _relative(data / "gsm8k" / "test.jsonl")
        sc = SourceConfig(source="jsonl", path=path, n=args.gsm8k_n)
        records, info = make_set("gsm8k", sc, args.seed)
        cfg = EvaluateConfig(
            styles=args.gsm8k_styles,
            n_shots=args.n_shots,
            max_new_tokens=args.gsm8k_max_new_tokens,
            **common,
        )
        result["gsm8k"] = {
            "file": path,
            "sha256": info["sha256"],
            "n": len(records),
            "n_shots": args.n_shots,
            "max_new_tokens": args.gsm8k_max_new_tokens,
        } | _score(str(model), "gsm8k", records, cfg, smp, args.seed, out)

    if args.drop_n:
        path = _relative(data / "drop" / "drop_v0_dev.jsonl.gz")
        sc = SourceConfig(source="drop_jsonl", path=path, n=args.drop_n)
        records, info = make_set("drop", sc, args.seed)
        cfg = EvaluateConfig(
            styles=args.drop_styles, max_new_tokens=args.drop_max_new_tokens, **common
        )
        result["drop"] = {
            "file": path,
            "sha256": info["sha256"],
            "n": len(records),
            "distinct_questions": info["available"] - info["dropped"]["duplicate_in_source"],
            "max_new_tokens": args.drop_max_new_tokens,
        } | _score(str(model), "drop", records, cfg, smp, args.seed, out)

    result["wall_s"] = round(time.perf_counter() - t0, 1)
    argv_used = sys.argv[1:] if argv is None else argv
    result["command"] = shlex.join(["python", "benchmarks/shared_eval.py", *argv_used])
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
