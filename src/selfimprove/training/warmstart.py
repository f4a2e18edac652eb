"""The warmstart step: optional supervised fine-tuning on a small *labeled* seed set before round 1.

This is the one place labels enter training, and only when ``warmstart.enabled`` is true; the
self-improvement rounds themselves never read labels. Disabled, round 0's model is the base model.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from selfimprove.config.training import WarmstartConfig

_CALC = re.compile(r"<<[^>]*>>")


def solution_to_rationale(solution: str) -> str:
    """A GSM8K worked solution as a chain-of-thought ending "The answer is N.".

    >>> solution_to_rationale("Jack has 5 + 3 = <<5+3=8>>8 stamps.\\n#### 8")
    'Jack has 5 + 3 = 8 stamps. The answer is 8.'
    >>> solution_to_rationale("Half of 12 is <<12/2=6>>6.\\nSo 6 + 1,000 = 1,006.\\n#### 1,006")
    'Half of 12 is 6. So 6 + 1,000 = 1,006. The answer is 1006.'
    """
    body, _, final = solution.rpartition("####")
    steps = " ".join(line.strip() for line in _CALC.sub("", body).splitlines() if line.strip())
    answer = final.strip().replace(",", "")
    return f"{steps} The answer is {answer}.".strip()


def seed_examples(records: list[dict], formats: list[str], n_shots: int) -> list[dict]:
    """Training examples (prompt, completion) from labeled seed records."""
    from selfimprove.core.prompts import build_prompt

    out = []
    for rec in records:
        completion = " " + solution_to_rationale(rec["answer"])
        for fmt in formats:
            prefix, suffix = build_prompt(rec["question"], fmt, n_shots)
            out.append(
                {
                    "id": rec["id"],
                    "format": fmt,
                    "prompt": prefix + suffix,
                    "completion": completion,
                }
            )
    return out


def warmstart(
    base_dir: Path, seed_records: list[dict], out_dir: Path, cfg: WarmstartConfig, seed: int
) -> dict:
    """Write round 0's model to ``out_dir``: the base model, or the base fine-tuned on the seed."""
    from selfimprove.core.io import atomic_path

    if not cfg.enabled:
        with atomic_path(out_dir, is_dir=True) as tmp:
            shutil.copytree(base_dir, tmp, dirs_exist_ok=True)
        return {"enabled": False, "n_examples": 0}
    from selfimprove.training.finetune import finetune

    examples = seed_examples(seed_records, cfg.formats, cfg.n_shots)
    info = finetune(base_dir, examples, out_dir, cfg.finetune, seed)
    return {"enabled": True, "n_seed": len(seed_records)} | info
