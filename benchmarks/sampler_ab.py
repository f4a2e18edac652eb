"""Benchmark: one sampler setting against another, alternated in one process; prints one JSON.

The same ``TransformersSampler`` and ``sample`` call (the 8-shot CoT prompt, m samples per
question, T = 0.7, 128 new tokens) alternates between the two sides of ``--compare``, ``--reps``
times each, so a load that changes over minutes moves both; the ratio of their median useful
tokens/s is the setting's gain on this machine:

* ``packing``: the linear layers' packed weights (the default on CPU bf16,
  ``selfimprove.sampling.packed``) vs torch's ``F.linear``; they must give the same tokens
  (``outputs_identical``);
* ``decode_kernel``: ``sampler.decode_kernel`` (``selfimprove.sampling.decode_kernel``) vs
  torch's flash kernel; equal up to rounding, so the samples differ: the answers' no-answer
  rate and distinct answers say whether they are alike in kind;
* ``prefix_kernel``: ``sampler.prefix_kernel`` (the shared prefix's attention in
  ``decode_kernel.attend_prefix``, AVX512-BF16) vs torch's flash kernel; equal up to rounding,
  so the samples differ, like ``decode_kernel``;
* ``question_level``: ``sampler.question_level`` vs the default layout (the same kind).

Real GSM8K questions (read in place) and gsm_symbolic (``--both``):

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 taskset -c 1 python benchmarks/sampler_ab.py \\
        --compare packing --gsm8k ../shared/data/gsm8k/test.jsonl --both --n 12 --reps 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def sides(sampler, compare: str) -> dict:
    """``{name: set-up}`` of the two sides: the baseline first, then the change."""
    from selfimprove.sampling.packed import unpack_linears

    packs = {m: m.forward for m in sampler.model.modules() if "forward" in m.__dict__}

    def packed(on: bool):
        def setup():
            unpack_linears(sampler.model)
            for m, fwd in packs.items() if on else ():
                m.forward = fwd

        return setup

    def attr(name: str, value: bool):
        return lambda: setattr(sampler, name, value)

    if compare == "packing":
        if not packs:
            sys.exit("error: nothing packed here (not CPU bf16, or the bits differ)")
        return {"unpacked": packed(False), "packed": packed(True)}
    if compare in ("decode_kernel", "prefix_kernel"):
        return {"flash": attr(compare, False), "kernel": attr(compare, True)}
    return {
        "default": attr("question_level", False),
        "question_level": attr("question_level", True),
    }


def workload(sampler, args, setups: dict) -> dict:
    from sampler import answer_summary, load_questions

    from selfimprove.core.prompts import build_prompt
    from selfimprove.sampling.base import SamplingParams

    questions, source = load_questions(args)
    prefix = build_prompt("", "fewshot_cot", args.shots)[0]
    suffixes = [build_prompt(q["question"], "fewshot_cot", args.shots)[1] for q in questions]
    golds = [q["gold"] for q in questions]
    params = SamplingParams(n=args.m, temperature=0.7, max_new_tokens=128, seed=args.seed)
    runs: dict[str, list] = {name: [] for name in setups}
    texts: dict[str, list] = {}
    answers: dict[str, dict] = {}
    identical = True
    for _ in range(args.reps):
        for name, setup in setups.items():
            setup()
            out = sampler.sample(prefix, suffixes, params, desc=name)
            got = [c.text for cs in out for c in cs]
            identical &= got == texts.setdefault(name, got)  # each side reproduces itself
            answers.setdefault(name, answer_summary([[c.text for c in cs] for cs in out], golds))
            st = sampler.last_stats
            useful = sum(c.n_tokens for cs in out for c in cs)
            runs[name].append(
                {
                    "useful_tok_s": round(useful / st["wall_s"], 1),
                    "wall_s": st["wall_s"],
                    "decode_s": st["decode_s"],
                }
            )
    first, second = setups
    med = {k: statistics.median(r["useful_tok_s"] for r in v) for k, v in runs.items()}
    return {
        "source": source,
        "runs": runs,
        "median_useful_tok_s": med,
        f"{second}_over_{first}": round(med[second] / med[first], 3),
        "outputs_identical": texts[first] == texts[second],
        "each_side_reproduces_itself": identical,
        "answers": answers,
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    from selfimprove.sampling.transformers_sampler import TransformersSampler

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--compare",
        choices=["packing", "decode_kernel", "prefix_kernel", "question_level"],
        required=True,
    )
    ap.add_argument("--model", default="data/models/base", help="model folder")
    ap.add_argument("--gsm8k", help="a GSM8K-format jsonl (question, answer) read in place")
    ap.add_argument("--both", action="store_true", help="--gsm8k, then gsm_symbolic")
    ap.add_argument("--n", type=int, default=12, help="questions")
    ap.add_argument("--m", type=int, default=8, help="samples per question")
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2, help="passes of each side, alternated")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    sampler = TransformersSampler(
        args.model,
        dtype="auto",
        batch_size=args.batch_size,
        decode_kernel=True if args.compare == "decode_kernel" else "auto",  # else the default
        prefix_kernel=True if args.compare == "prefix_kernel" else "auto",  # as decode_kernel
    )
    result = {
        "command": " ".join(sys.argv),
        "compare": args.compare,
        "dtype": str(sampler.dtype),
        "threads": args.threads,
        "packed_linears": sampler.packed_linears,
        "decode_kernel": sampler.decode_kernel,
        "prefix_kernel": sampler.prefix_kernel,
        "load_s": round(time.perf_counter() - t, 2),
        "torch": torch.__version__,
        "workloads": {},
    }
    setups = sides(sampler, args.compare)
    names = ["gsm8k", "gsm_symbolic"] if args.both else ["gsm8k" if args.gsm8k else "gsm_symbolic"]
    for name in names:
        wl = argparse.Namespace(**vars(args), source="gsm_symbolic")
        if name == "gsm_symbolic":
            wl.gsm8k = None
        result["workloads"][name] = workload(sampler, wl, setups)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
