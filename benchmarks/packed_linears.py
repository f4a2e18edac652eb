"""Benchmark: the sampler with its linear weights packed for oneDNN vs unpacked; prints one JSON.

The same ``TransformersSampler`` and ``sample`` call (the 8-shot CoT prompt, m samples per
question, T = 0.7, 128 new tokens) alternates between its packed linears (the default on CPU
bf16, ``selfimprove.sampling.packed``) and torch's ``F.linear`` (the packing removed), ``--reps``
times each, in one process: the ratio of the two is the packing's gain on this machine, and the
outputs of every pass are compared with the first (the packing must not move a token). Real
GSM8K questions (read in place) and gsm_symbolic (``--both``):

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 taskset -c 1 python benchmarks/packed_linears.py \
        --gsm8k ../shared/data/gsm8k/test.jsonl --both --n 12 --reps 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _unpack(sampler) -> None:
    for m in sampler.model.modules():
        m.__dict__.pop("forward", None)


def workload(sampler, args, packs: dict) -> dict:
    from sampler import load_questions

    from selfimprove.core.prompts import build_prompt
    from selfimprove.sampling.base import SamplingParams

    questions, source = load_questions(args)
    prefix = build_prompt("", "fewshot_cot", args.shots)[0]
    suffixes = [build_prompt(q["question"], "fewshot_cot", args.shots)[1] for q in questions]
    params = SamplingParams(n=args.m, temperature=0.7, max_new_tokens=128, seed=args.seed)
    runs: dict[str, list] = {"packed": [], "unpacked": []}
    first, identical = None, True
    for _ in range(args.reps):
        for mode in ("packed", "unpacked"):
            _unpack(sampler)
            if mode == "packed":
                for m, fwd in packs.items():
                    m.forward = fwd
            out = sampler.sample(prefix, suffixes, params, desc=mode)
            texts = [c.text for cs in out for c in cs]
            first = texts if first is None else first
            identical &= texts == first
            st = sampler.last_stats
            runs[mode].append(
                {
                    "useful_tok_s": round(
                        sum(c.n_tokens for cs in out for c in cs) / st["wall_s"], 1
                    ),
                    "wall_s": st["wall_s"],
                    "decode_s": st["decode_s"],
                }
            )
    med = {k: statistics.median(r["useful_tok_s"] for r in v) for k, v in runs.items()}
    return {
        "source": source,
        "runs": runs,
        "median_useful_tok_s": med,
        "packed_over_unpacked": round(med["packed"] / med["unpacked"], 3),
        "outputs_identical": identical,
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    from selfimprove.sampling.transformers_sampler import TransformersSampler

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="data/models/base", help="model folder")
    ap.add_argument("--gsm8k", help="a GSM8K-format jsonl (question, answer) read in place")
    ap.add_argument("--both", action="store_true", help="--gsm8k, then gsm_symbolic")
    ap.add_argument("--n", type=int, default=12, help="questions")
    ap.add_argument("--m", type=int, default=8, help="samples per question")
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2, help="passes of each, alternated")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    sampler = TransformersSampler(args.model, dtype="auto", batch_size=args.batch_size)
    result = {
        "command": " ".join(sys.argv),
        "dtype": str(sampler.dtype),
        "threads": args.threads,
        "packed_linears": sampler.packed_linears,
        "load_and_pack_s": round(time.perf_counter() - t, 2),
        "torch": torch.__version__,
        "workloads": {},
    }
    if not sampler.packed_linears:
        sys.exit(
            "error: nothing packed here (not CPU bf16, or the bits differ): nothing to compare"
        )
    packs = {m: m.forward for m in sampler.model.modules() if "forward" in m.__dict__}
    names = ["gsm8k", "gsm_symbolic"] if args.both else ["gsm8k" if args.gsm8k else "gsm_symbolic"]
    for name in names:
        wl = argparse.Namespace(**vars(args), source="gsm_symbolic")
        if name == "gsm_symbolic":
            wl.gsm8k = None
        result["workloads"][name] = workload(sampler, wl, packs)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
