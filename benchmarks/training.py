"""Fine-tuning wall time per epoch: the plain forward of before vs the one without redundant work.

``old``: the batches of before (length-grouped order) through ``model(input_ids,
attention_mask, labels)``, the LM head at every position, sdpa attention. ``new``: what
``finetune`` runs now: batches filled by shared-prefix groups, the shared prompt prefix once per
batch, the LM head only at completion tokens (``finetune.shared_prefix``), the attention kernel
of ``finetune.attn_implementation`` (auto: eager on CPU; ``--set attn_implementation=sdpa``
times the rest alone). Both are LoRA (or full)
models set up as the stage does (``finetune.dtype``; ``auto`` is bf16 on a CPU with AMX or
AVX512-BF16), with AdamW, in one process::

    python benchmarks/training.py --train data/rounds/r1/train.jsonl --model data/models/base \\
        --steps 12

Timing: ``--steps`` optimizer steps of each path (after one warm-up step) on the same randomly
drawn batch positions of its epoch (all of them when ``--steps`` >= batches per epoch),
alternating old / new (then new / old) so that a drift of the machine's speed hits both alike;
an epoch is estimated as the mean step time x batches per epoch. Token counts are
exact for the whole epoch: ``decoder_tokens`` (positions the decoder runs, padding included)
and ``head_tokens`` (positions the LM head runs). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _model(model_dir: Path, cfg, bf16: bool, fast: bool, seed: int):
    """The model the stage trains (LoRA: bf16 base + float32 adapters), its optimizer; the old
    path with transformers' default attention (sdpa), the new one with the stage's."""
    import torch

    from selfimprove.training.finetune import _load_model, _wrap_lora, train_attention
    from selfimprove.training.shared_prefix import use_completion_loss

    torch.manual_seed(seed)  # the same LoRA init for both paths
    attn = train_attention(cfg.attn_implementation) if fast else None
    if cfg.method == "lora":
        model = _wrap_lora(
            _load_model(model_dir, torch.bfloat16 if bf16 else torch.float32, attn), cfg.lora
        )
    else:
        model = _load_model(model_dir, torch.float32, attn)
    model.config.use_cache = False
    if fast:
        use_completion_loss(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _step(model, opt, batch: dict, autocast: bool) -> float:
    """One optimizer step on ``batch``; its wall time (s)."""
    import torch

    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", required=True, help="a train.jsonl (prompt/completion records)")
    ap.add_argument("--model", required=True, help="the start model folder")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps timed per path (12)")
    ap.add_argument("--seed", type=int, default=0, help="data order, batch draw, LoRA init (0)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a finetune setting (YAML value), e.g. --set batch_size=4 --set method=full",
    )
    args = ap.parse_args(argv)

    import torch
    import yaml
    from transformers import AutoTokenizer

    from selfimprove.config.training import FinetuneConfig
    from selfimprove.core.io import read_jsonl
    from selfimprove.sampling.base import resolve_dtype
    from selfimprove.training.finetune import CompletionCollator, encode_examples, train_attention
    from selfimprove.training.resume import epoch_order
    from selfimprove.training.shared_prefix import IGNORE_INDEX, decoder_slots, prefix_groups

    cfg = FinetuneConfig(**{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)})
    models_attn = train_attention(cfg.attn_implementation)
    bf16 = resolve_dtype(cfg.dtype, "cpu") == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(args.model)
    feats, _, _ = encode_examples(tok, read_jsonl(args.train), cfg.max_length)
    lengths = [len(f["input_ids"]) for f in feats]
    b = cfg.batch_size
    orders = {
        "old": epoch_order(lengths, b, args.seed, 0, True),
        "new": epoch_order(lengths, b, args.seed, 0, True, prefix_groups(feats, min_rows=b)),
    }
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    collate = {"old": CompletionCollator(pad), "new": CompletionCollator(pad, share_prefix=True)}
    batches = {
        k: [[feats[i] for i in o[j : j + b]] for j in range(0, len(o), b)]
        for k, o in orders.items()
    }
    n_batches = len(batches["old"])
    out: dict = {
        "train": args.train,
        "model": args.model,
        "n_examples": len(feats),
        "method": cfg.method,
        "dtype": "bfloat16" if bf16 else "float32",
        "batch_size": b,
        "batches_per_epoch": n_batches,
        "torch_threads": torch.get_num_threads(),
        "attention": {"old": "sdpa", "new": models_attn},
    }
    # the decoder: padded rows (old), the shared prefix once + the rest (new); the LM head:
    # every decoder position (old), completion tokens + EOS only (new)
    old_tokens = sum(decoder_slots(x, share_prefix=False) for x in batches["old"])
    out["old"] = {"decoder_tokens": old_tokens, "head_tokens": old_tokens}
    out["new"] = {
        "decoder_tokens": sum(decoder_slots(x) for x in batches["new"]),
        "head_tokens": sum(sum(t != IGNORE_INDEX for t in f["labels"]) for f in feats),
    }

    models = {
        name: _model(Path(args.model), cfg, bf16, name == "new", args.seed)
        for name in ("old", "new")
    }
    autocast = bf16 and cfg.method == "full"
    draw = random.Random(args.seed).sample(range(n_batches), min(args.steps, n_batches))
    for name in ("old", "new"):  # warm-up, not timed
        _step(*models[name], collate[name](batches[name][draw[0]]), autocast)
    times: dict[str, list[float]] = {"old": [], "new": []}
    for k, j in enumerate(draw):
        for name in ("old", "new") if k % 2 == 0 else ("new", "old"):
            times[name].append(_step(*models[name], collate[name](batches[name][j]), autocast))
    for name in ("old", "new"):
        step = statistics.mean(times[name])
        out[name] |= {
            "steps_timed": len(times[name]),
            "step_s_mean": round(step, 3),
            "step_s_median": round(statistics.median(times[name]), 3),
            "epoch_s_est": round(step * n_batches, 1),
        }
    out["epoch_ratio_old_over_new"] = round(
        out["old"]["epoch_s_est"] / out["new"]["epoch_s_est"], 3
    )
    out["decoder_tokens_ratio"] = round(
        out["old"]["decoder_tokens"] / out["new"]["decoder_tokens"], 3
    )
    out["head_tokens_ratio"] = round(out["old"]["head_tokens"] / out["new"]["head_tokens"], 3)
    if not math.isfinite(out["epoch_ratio_old_over_new"]):
        raise SystemExit("no steps timed; pass --steps >= 1")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
