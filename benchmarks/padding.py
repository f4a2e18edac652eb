"""Padding of fine-tuning batches: uniformly random vs ``finetune.group_by_length``.

The LMSI/SELF training sets mix few-shot (long) and zero-shot (short) examples, so a random
batch pads most rows to its few-shot member. This counts, for a real training set, the token
slots the forward/backward pass processes under both samplers (no training; seconds on a CPU)::

    python benchmarks/padding.py --train data/rounds/r1/train.jsonl --model data/models/base

Prints JSON: per sampler the mean padding fraction and token slots per epoch over ``--seeds``
shuffles, and ``slots_ratio`` (random / grouped), the expected compute saving of grouping.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def batch_slots(lengths: list[int], order: list[int], batch_size: int) -> tuple[int, int]:
    """``(real tokens, token slots)`` when ``order`` is cut into batches padded to their longest.

    >>> batch_slots([2, 8, 2, 8], [0, 1, 2, 3], 2)
    (20, 32)
    >>> batch_slots([2, 8, 2, 8], [1, 3, 0, 2], 2)
    (20, 20)
    """
    real = slots = 0
    for i in range(0, len(order), batch_size):
        batch = [lengths[j] for j in order[i : i + batch_size]]
        real += sum(batch)
        slots += max(batch) * len(batch)
    return real, slots


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", required=True, help="a train.jsonl (prompt/completion records)")
    ap.add_argument("--model", required=True, help="model folder whose tokenizer to use")
    ap.add_argument("--batch-size", type=int, default=8, help="examples per batch (default 8)")
    ap.add_argument("--max-length", type=int, default=768, help="finetune.max_length (768)")
    ap.add_argument("--seeds", type=int, default=5, help="shuffles averaged (default 5)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from selfimprove.core.io import read_jsonl
    from selfimprove.training.finetune import encode_examples

    tok = AutoTokenizer.from_pretrained(args.model)
    feats, _, _ = encode_examples(tok, read_jsonl(args.train), args.max_length)
    lengths = [len(f["input_ids"]) for f in feats]
    out: dict = {"train": args.train, "n_examples": len(lengths), "batch_size": args.batch_size}
    for name in ("random", "group_by_length"):
        pads, slots = [], []
        for seed in range(args.seeds):
            g = torch.Generator().manual_seed(seed)
            if name == "random":
                order = torch.randperm(len(lengths), generator=g).tolist()
            else:  # what transformers' LengthGroupedSampler yields
                order = get_length_grouped_indices(lengths, args.batch_size, generator=g)
            real, s = batch_slots(lengths, order, args.batch_size)
            pads.append(1 - real / s)
            slots.append(s)
        out[name] = {
            "pad_fraction": round(statistics.mean(pads), 4),
            "token_slots_per_epoch": round(statistics.mean(slots)),
        }
    out["real_tokens_per_epoch"] = sum(lengths)
    out["slots_ratio"] = round(
        out["random"]["token_slots_per_epoch"] / out["group_by_length"]["token_slots_per_epoch"], 3
    )
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
