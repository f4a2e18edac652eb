"""How much signal TTRL's majority-vote reward has on a round's samples: for each ``min_share``,
how many groups keep a reward (the rest are masked: no gradient) and how often their majority
answer is the held-aside label (analysis only; the reward never reads labels).

    python benchmarks/majority_reward.py data/rounds/r1/samples.jsonl \\
        data/prepared/train_labels.jsonl [--min-share 0 0.375 0.5] [--json OUT]

``samples.jsonl`` is a ``generate`` stage's output (``paths`` per question, the same few-shot
sampling TTRL's rollouts use); the masking is :func:`selfimprove.recipes.ttrl.group_rewards`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", type=Path)
    p.add_argument("labels", type=Path)
    p.add_argument("--min-share", type=float, nargs="+", default=[0.0, 0.375, 0.5])
    p.add_argument("--json", type=Path, help="also write the result here")
    a = p.parse_args(argv)

    from selfimprove.core.answers import extract_answer, gold_answer
    from selfimprove.core.io import read_jsonl
    from selfimprove.recipes.ttrl import group_rewards

    gold = {r["id"]: gold_answer(r["answer"]) for r in read_jsonl(a.labels)}
    groups = [(r["id"], [extract_answer(x) for x in r["paths"]]) for r in read_jsonl(a.samples)]
    rows = []
    for m in a.min_share:
        kept = [(qid, group_rewards(answers, m)[1]) for qid, answers in groups]
        kept = [(qid, major) for qid, major in kept if major is not None]
        right = sum(major == gold[qid] for qid, major in kept)
        rows.append({"min_share": m, "groups": len(groups), "rewarded": len(kept),
                     "masked_fraction": round(1 - len(kept) / len(groups), 4),
                     "majority_right": right,
                     "label_accuracy": round(right / len(kept), 4) if kept else None})
    result = {"samples": str(a.samples), "paths_per_group": len(groups[0][1]), "rows": rows}
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
