"""Rollout time per TTRL step: TRL's own ``model.generate`` vs the project's sampler through TRL's
``rollout_func`` (``ttrl.rollout``), on the first questions of a prepared training set.

    python benchmarks/ttrl_rollouts.py MODEL {sampler,trl} STEPS QUESTIONS_PER_STEP OUT \\
        [--train data/prepared/train.jsonl] [--n-shots 4] [--tag NAME]

Prints (and writes ``OUT/<mode>.json``) the seconds spent generating per step (TRL's
``_generate``, timed), the run's training time, and the per-step completion lengths and rewards.
Defaults of ``ttrl`` otherwise (8 generations, 128 new tokens, 4 shots; LoRA as ``finetune``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("mode", choices=["sampler", "trl"])
    p.add_argument("steps", type=int)
    p.add_argument("questions_per_step", type=int)
    p.add_argument("out", type=Path)
    p.add_argument("--train", default="data/prepared/train.jsonl")
    p.add_argument("--n-shots", type=int, default=4, help="ttrl.n_shots (exemplars per prompt)")
    p.add_argument("--tag", default="", help="suffix of the output names (several runs, one OUT)")
    a = p.parse_args()

    import torch
    from trl import GRPOTrainer

    from selfimprove.config.training import FinetuneConfig
    from selfimprove.core.io import read_jsonl
    from selfimprove.recipes.ttrl import TtrlParams
    from selfimprove.training.ttrl import ttrl

    torch.set_num_threads(1)
    questions = read_jsonl(a.train)[: a.steps * a.questions_per_step]
    gen_s: list[float] = []
    original = GRPOTrainer._generate

    def timed(self, prompts):
        t0 = time.perf_counter()
        result = original(self, prompts)
        gen_s.append(time.perf_counter() - t0)
        return result

    GRPOTrainer._generate = timed
    knobs = TtrlParams(
        rollout=a.mode, questions_per_step=a.questions_per_step, n_shots=a.n_shots
    )
    t0 = time.perf_counter()
    name = a.mode + (f"-{a.tag}" if a.tag else "")
    out = a.out / f"model-{name}"
    info = ttrl(Path(a.model), questions, out, FinetuneConfig(), 0, knobs=knobs)
    log = read_jsonl(out / "train_log.jsonl")
    result = {
        "model": a.model,
        "mode": a.mode,
        "steps": a.steps,
        "questions_per_step": a.questions_per_step,
        "num_generations": knobs.num_generations,
        "n_shots": knobs.n_shots,
        "max_new_tokens": knobs.max_new_tokens,
        "generate_s_per_step": [round(x, 2) for x in gen_s],
        "train_runtime_s": info["runtime_s"],
        "tokens_trained": info.get("tokens_trained"),
        "tokens_sampled": info.get("tokens_sampled"),
        "total_s": round(time.perf_counter() - t0, 1),
        "completion_length": [r.get("completion_length") for r in log],
        "clipped_ratio": [r.get("clipped_ratio") for r in log],
        "reward": [r.get("reward") for r in log],
    }
    print(json.dumps(result))
    (a.out / f"{name}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
