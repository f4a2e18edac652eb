"""Profile one evaluate run: per sampler call (set, style) its wall time, tokens and stop reasons.

Runs :func:`selfimprove.evaluation.evaluate.evaluate` on the eval sets the data stage wrote
(``data/prepared/eval``) with the ``evaluate`` section of params.yaml, recording every
``sampler.sample`` call. Prints one JSON object: total wall, per call ``desc``, wall, prompts,
rows, generated tokens, finish reasons (stop / eos / length), the sampler's ``last_stats`` and
the metrics; ``--dump FILE`` also writes every completion (text, tokens, finish) as JSON lines.

    python benchmarks/eval_profile.py                        # the base model, all sets
    python benchmarks/eval_profile.py --limit 8 --sc-limit 4 # a quick look
    python benchmarks/eval_profile.py --model data/rounds/r1/model --dump /tmp/r1.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="data/models/base")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--limit", type=int, default=None, help="evaluate.limit override")
    ap.add_argument("--sc-limit", type=int, default=None, help="evaluate.sc_limit override")
    ap.add_argument("--sets", nargs="*", default=None, help="only these eval sets")
    ap.add_argument("--dump", type=Path, default=None, help="write every completion here")
    ap.add_argument("--metrics", type=Path, default=None, help="write metrics.json here")
    args = ap.parse_args(argv)

    import selfimprove.sampling.factory as factory
    from selfimprove.config import load_params
    from selfimprove.evaluation.evaluate import evaluate
    from selfimprove.evaluation.refine_at_eval import refine_for_evaluation
    from selfimprove.pipeline import load_eval_sets

    params = load_params(args.params)
    update = {}
    if args.limit is not None:
        update["limit"] = args.limit
    if args.sc_limit is not None:
        update["sc_limit"] = args.sc_limit
    cfg = params.evaluate.model_copy(update=update)
    sets = load_eval_sets(args.sets or params.evaluate.sets)

    calls: list[dict] = []
    dump = []
    real_make = factory.make_sampler

    class Recording:
        def __init__(self, inner):
            self.inner = inner
            self.model_dir = inner.model_dir
            self.last_stats = {}

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def sample(self, prefix, prompts, p, desc="sampling", index_offset=0):
            t = time.perf_counter()
            outs = self.inner.sample(prefix, prompts, p, desc=desc, index_offset=index_offset)
            wall = time.perf_counter() - t
            self.last_stats = self.inner.last_stats
            comps = [c for o in outs for c in o]
            calls.append(
                {
                    "desc": desc,
                    "wall_s": round(wall, 2),
                    "prompts": len(prompts),
                    "rows": len(comps),
                    "max_new_tokens": p.max_new_tokens,
                    "stop": list(p.stop),
                    "generated_tokens": sum(c.n_tokens for c in comps),
                    "finish": dict(Counter(c.finish_reason for c in comps)),
                    "stats": self.inner.last_stats,
                }
            )
            for i, o in enumerate(outs):
                for j, c in enumerate(o):
                    dump.append(
                        {"desc": desc, "i": i, "j": j, "text": c.text, "n_tokens": c.n_tokens}
                        | {"finish": c.finish_reason}
                    )
            return outs

    factory.make_sampler = lambda *a, **k: Recording(real_make(*a, **k))
    t = time.perf_counter()
    refined = None  # the evaluate_refine stage's part, when evaluate.refine_iterations > 0
    if cfg.refine_iterations:
        refined = refine_for_evaluation(
            args.model, sets, cfg, params.seed, params.refine, params.sampler
        )
    metrics, _ = evaluate(
        args.model, sets, cfg, params.seed, refined=refined, sampler_cfg=params.sampler
    )
    total = time.perf_counter() - t
    factory.make_sampler = real_make
    result = {
        "model": args.model,
        "wall_s": round(total, 2),
        "sampling_s": round(sum(c["wall_s"] for c in calls), 2),
        "generated_tokens": sum(c["generated_tokens"] for c in calls),
        "calls": calls,
        "metrics": metrics,
        "cmd": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.dump:
        with args.dump.open("w") as f:
            for row in dump:
                f.write(json.dumps(row) + "\n")
    if args.metrics:
        args.metrics.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
