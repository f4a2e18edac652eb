"""Where the sampler's time goes: torch.profiler over one ``TransformersSampler.sample`` call.

Same workload as ``benchmarks/sampler.py`` (gsm_symbolic questions, the 8-shot CoT prompt, m = 8,
T = 0.7, 128 new tokens); prints the sampler's own time split (``last_stats``) and the operator
table (self CPU time). The profile figures in docs/speed.md came from:

    python benchmarks/sampler_profile.py --n 16 --batch-size 128

On real GSM8K questions, one thread (docs/speed.md):

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/sampler_profile.py --threads 1 \
        --gsm8k ../shared/data/gsm8k/test.jsonl --n 16
"""

from __future__ import annotations

import argparse
import itertools


def main(argv: list[str] | None = None) -> None:
    from torch.profiler import ProfilerActivity, profile

    from selfimprove.config.runtime import SamplerConfig
    from selfimprove.core.prompts import build_prompt
    from selfimprove.data.sources import gsm_symbolic_stream
    from selfimprove.sampling.base import SamplingParams
    from selfimprove.sampling.transformers_sampler import TransformersSampler

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="data/models/base", help="model folder")
    ap.add_argument("--n", type=int, default=16, help="questions")
    ap.add_argument("--batch-size", type=int, default=SamplerConfig().batch_size)
    ap.add_argument("--rows", type=int, default=30, help="operator rows to print")
    ap.add_argument("--gsm8k", help="a GSM8K-format jsonl read in place (default: gsm_symbolic)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0=default)")
    ap.add_argument("--question-level", action="store_true", help="the per-question cascade level")
    ap.add_argument("--flash-prefix", action="store_true",
                    help="the shared prefix's attention in torch's flash kernel, not the "
                    "AVX512-BF16 one (sampler.prefix_kernel: false)")  # fmt: skip
    args = ap.parse_args(argv)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.gsm8k:
        from selfimprove.core.io import iter_jsonl

        rows = list(itertools.islice(iter_jsonl(args.gsm8k, ["question", "answer"]), args.n))
    else:
        rows = list(itertools.islice(gsm_symbolic_stream(0, 4 * args.n + 16), args.n))
    prefix = build_prompt("", "fewshot_cot", 8)[0]
    suffixes = [build_prompt(r["question"], "fewshot_cot", 8)[1] for r in rows]
    params = SamplingParams(n=8, temperature=0.7, max_new_tokens=128, stop=("\n\nQ:", "\nQ:"))
    sampler = TransformersSampler(
        args.model,
        batch_size=args.batch_size,
        question_level=args.question_level,
        prefix_kernel=False if args.flash_prefix else "auto",
    )
    sampler.sample(prefix, suffixes[:2], params)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        sampler.sample(prefix, suffixes, params)
    print(sampler.last_stats)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    parts = attention_parts(prof, sampler.last_stats["prefix_tokens"])
    print("flash attention self CPU s by part:", parts)


def attention_parts(prof, prefix_tokens: int) -> dict:
    """The flash-attention kernel's self CPU seconds, split by part: the shared prefix (the
    calls whose keys are the prefix's ``prefix_tokens``, one batch of every row's queries) and
    the question + tail parts."""
    parts = {"prefix": 0.0, "question_and_tails": 0.0}
    for e in prof.key_averages(group_by_input_shape=True):
        if "flash_attention" in e.key:
            shapes = e.input_shapes
            keys = shapes[1][2] if len(shapes) > 1 and len(shapes[1]) == 4 else None
            part = "prefix" if keys == prefix_tokens and shapes[1][0] == 1 else "question_and_tails"
            parts[part] += e.self_cpu_time_total / 1e6
    return {k: round(v, 2) for k, v in parts.items()}


if __name__ == "__main__":
    main()
