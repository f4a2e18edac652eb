"""Benchmark TransformersSampler against a naive generate(num_return_sequences=m) per question.

Prints one JSON object. Example (CPU, SmolLM2-135M):

    python benchmarks/sampler.py --model /tmp/smollm2-base --prompts 16 --naive-prompts 4

"Useful" tokens are the tokens up to and including the first stop string (what LMSI keeps);
the naive baseline generates past the stop until EOS or ``max_new_tokens``. The naive run can be
limited to the first ``--naive-prompts`` questions to save time; its per-question wall time is
then extrapolated to all prompts (``naive_wall_s_extrapolated``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

PREFIX = (
    "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
    "After they are done, there will be 21 trees. How many trees did the grove workers plant "
    "today?\nA: There are 15 trees originally. Then there were 21 trees after some more were "
    "planted. So there must have been 21 - 15 = 6. The answer is 6.\n\n"
    "Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the "
    "parking lot?\nA: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is "
    "5.\n\n"
    "Q: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they "
    "have left in total?\nA: Originally, Leah had 32 chocolates. Her sister had 42. So in total "
    "they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39.\n\n"
    "Q: Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How "
    "many lollipops did Jason give to Denny?\nA: Jason started with 20 lollipops. Then he had 12 "
    "after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8.\n\n"
)

QUESTIONS = [
    "Tom has 7 apples. He buys 5 more and eats 3. How many apples does he have now?",
    "A baker makes 24 muffins and sells 17. How many muffins are left?",
    "Sara reads 12 pages a day. How many pages does she read in 6 days?",
    "A box holds 8 pencils. How many pencils are in 9 boxes?",
    "Mike had 50 dollars. He spent 18 dollars on a book and 7 dollars on lunch. "
    "How much money does he have left?",
    "There are 4 rows of chairs with 11 chairs in each row. How many chairs are there?",
    "A farmer has 36 eggs and puts them into cartons of 6. How many cartons does he fill?",
    "Anna is 9 years old. Her brother is 4 years older. How old will her brother be in 3 years?",
    "A train travels 60 miles per hour for 3 hours. How far does it travel?",
    "Lisa had 45 stickers. She gave 12 to her friend and got 9 from her mom. "
    "How many stickers does she have?",
    "A class has 28 students. Half of them are girls. How many boys are in the class?",
    "John buys 3 shirts for 15 dollars each. How much does he pay?",
    "A garden has 5 rows of 7 tulips and 3 rows of 4 roses. How many flowers are there?",
    "Ben runs 2 miles every morning and 3 miles every evening. How many miles does he run "
    "in a week?",
    "A pizza is cut into 8 slices. If 3 friends each eat 2 slices, how many slices are left?",
    "Emma saves 5 dollars every week. How many weeks does she need to save 65 dollars?",
]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/smollm2-base")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--naive-prompts", type=int, default=4, help="0 = skip the naive baseline")
    ap.add_argument("--m", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args(argv)

    import torch

    from selfimprove.sampler import SamplingParams, TransformersSampler, find_stop

    prompts = [f"Q: {q}\nA:" for q in (QUESTIONS * 8)[: args.prompts]]
    t = time.perf_counter()
    sampler = TransformersSampler(args.model, dtype=args.dtype, batch_size=args.batch_size)
    load_s = time.perf_counter() - t
    params = SamplingParams(
        n=args.m, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=0
    )
    t = time.perf_counter()
    out = sampler.sample(PREFIX, prompts, params)
    wall = time.perf_counter() - t
    useful = sum(c.n_tokens for cs in out for c in cs)
    reasons: dict[str, int] = {}
    for cs in out:
        for c in cs:
            reasons[c.finish_reason] = reasons.get(c.finish_reason, 0) + 1
    result = {
        "model": str(args.model),
        "dtype": str(sampler.dtype).removeprefix("torch."),
        "device": sampler.device,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "prefix_tokens": len(sampler.input_ids(PREFIX, "")),
        "prompts": len(prompts),
        "m": args.m,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "load_s": round(load_s, 2),
        "sampler_wall_s": round(wall, 2),
        "sampler_useful_tokens": useful,
        "sampler_useful_tok_s": round(useful / wall, 1),
        "sampler_finish_reasons": reasons,
        "example": out[0][0].text,
    }

    if args.naive_prompts > 0:
        model, tok = sampler.model, sampler.tokenizer
        model.set_attn_implementation("sdpa")
        k = min(args.naive_prompts, len(prompts))
        naive_useful = naive_total = 0
        t = time.perf_counter()
        with torch.inference_mode():
            for i, p in enumerate(prompts[:k]):
                ids = torch.tensor([sampler.input_ids(PREFIX, p)], device=sampler.device)
                torch.manual_seed(i)
                g = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=args.temperature,
                    top_p=1.0,
                    top_k=0,
                    num_return_sequences=args.m,
                    max_new_tokens=args.max_new_tokens,
                    pad_token_id=tok.pad_token_id or tok.eos_token_id,
                )
                for row in g[:, ids.shape[1] :].tolist():
                    gen = [x for x in row if x != (tok.pad_token_id or tok.eos_token_id)]
                    naive_total += len(row)
                    # useful = tokens until the stop string first appears
                    for j in range(1, len(gen) + 1):
                        if find_stop(tok.decode(gen[:j]), params.stop) is not None:
                            break
                    naive_useful += j if gen else 0
        naive_wall = time.perf_counter() - t
        result.update(
            {
                "naive_prompts": k,
                "naive_wall_s": round(naive_wall, 2),
                "naive_wall_s_extrapolated": round(naive_wall / k * len(prompts), 2),
                "naive_generated_tokens": naive_total,
                "naive_useful_tokens": naive_useful,
                "naive_useful_tok_s": round(naive_useful / naive_wall, 1),
                "speedup_wall_per_question": round(naive_wall / k / (wall / len(prompts)), 2),
            }
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
