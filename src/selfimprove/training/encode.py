"""The fine-tuning step "encode": (prompt, completion) pairs as token ids and labels, and the
collator that pads them per batch (:mod:`selfimprove.training.finetune` runs the other steps).

Prompt and completion are tokenized separately and their ids concatenated (as the sampler
does), EOS is appended to the completion, only completion tokens carry a loss (prompt and padding
are labelled -100), and over-long examples lose tokens from the *left of the prompt*, never from
the completion.
"""

from __future__ import annotations

import logging
from pathlib import Path

from selfimprove.core.io import InputError
from selfimprove.training.shared_prefix import IGNORE_INDEX, batch_prefix

log = logging.getLogger(__name__)


def build_example(
    prompt_ids: list[int],
    completion_ids: list[int],
    eos_id: int,
    max_length: int,
    bos_id: int | None = None,
) -> tuple[dict[str, list[int]] | None, bool]:
    """Concatenate prompt + completion + EOS; labels are -100 on the prompt.

    Too long: drop tokens from the left of the prompt (keeping a leading ``bos_id``). If the
    completion + EOS alone leave no room for one prompt token, return ``None`` (drop it).
    Returns ``(example or None, truncated)``.

    >>> ex, cut = build_example([1, 2, 3], [7, 8], eos_id=0, max_length=5)
    >>> ex["input_ids"], ex["labels"], cut
    ([2, 3, 7, 8, 0], [-100, -100, 7, 8, 0], True)
    >>> build_example([1, 2], [7, 8, 9], eos_id=0, max_length=4)
    (None, True)
    """
    completion = list(completion_ids) + [eos_id]
    prompt = list(prompt_ids)
    budget = max_length - len(completion)
    keep_bos = bos_id is not None and len(prompt) > 0 and prompt[0] == bos_id
    if budget < 1 + int(keep_bos):
        return None, True
    truncated = len(prompt) > budget
    if truncated:
        prompt = prompt[:1] + prompt[len(prompt) - budget + 1 :] if keep_bos else prompt[-budget:]
    return {
        "input_ids": prompt + completion,
        "labels": [IGNORE_INDEX] * len(prompt) + completion,
    }, truncated


def encode_examples(
    tokenizer, examples: list[dict], max_length: int
) -> tuple[list[dict[str, list[int]]], int, int]:
    """Tokenize (prompt, completion) pairs; return ``(features, n_truncated, n_dropped)``.

    The prompt is tokenized as the sampler does (with the tokenizer's special tokens, e.g. a
    BOS), the completion without special tokens, and the ids concatenated.
    """
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise InputError("tokenizer has no eos_token; set eos_token in the model's tokenizer files")
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id != eos_id else None
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict):
            raise InputError(f"examples[{i}]: expected a dict, got {type(ex).__name__}")
        for key in ("prompt", "completion"):
            if not isinstance(ex.get(key), str):
                raise InputError(
                    f"examples[{i}]: key {key!r} must be a string, got {ex.get(key)!r:.60} "
                    f"(has: {', '.join(ex) or 'none'}); each example needs 'prompt' and "
                    "'completion' strings"
                )
    if not examples:
        return [], 0, 0
    prompts = tokenizer([ex["prompt"] for ex in examples])["input_ids"]
    completions = tokenizer([ex["completion"] for ex in examples], add_special_tokens=False)[
        "input_ids"
    ]
    features, n_truncated, n_dropped = [], 0, 0
    for ex, p, c in zip(examples, prompts, completions, strict=True):
        feat, cut = build_example(p, c, eos_id, max_length, bos_id)
        n_truncated += int(cut and feat is not None)
        if feat is None:
            n_dropped += 1
        else:
            if "weight" in ex:  # a weighted example (filter.weighting): its loss is scaled
                feat["weight"] = ex["weight"]
            features.append(feat)
    return normalize_weights(features), n_truncated, n_dropped


def normalize_weights(features: list[dict]) -> list[dict]:
    """Features of weighted examples with their weights scaled to mean 1 over the set (a
    feature without one weighs 1), so the learning rate means what it means unweighted; no
    weights: the features unchanged.

    >>> [f["weight"] for f in normalize_weights([{"weight": 1.0}, {"weight": 2.0}, {}])]
    [0.75, 1.5, 0.75]
    """
    if not any("weight" in f for f in features):
        return features
    weights = [float(f.get("weight", 1.0)) for f in features]
    if any(w < 0 or w != w for w in weights) or not sum(weights):
        raise InputError(f"training example weights must be >= 0, not all 0: {weights[:8]}")
    mean = sum(weights) / len(weights)
    return [f | {"weight": w / mean} for f, w in zip(features, weights, strict=True)]


class CompletionCollator:
    """Pad a list of ``{"input_ids", "labels"}`` features on the right, per batch.

    Padding gets ``pad_id`` in ``input_ids``, -100 in ``labels`` and 0 in ``attention_mask``.
    ``pad_fraction`` is the share of padding among all token slots collated so far (what
    ``group_by_length`` saves). ``share_prefix``: a batch whose rows share a prompt prefix
    worth computing once also gets ``prefix_len`` (an int) and ``prefix_rows`` (bool, per row)
    (:func:`selfimprove.training.shared_prefix.batch_prefix`).

    >>> c = CompletionCollator(pad_id=0)
    >>> batch = c([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...            {"input_ids": [5], "labels": [5]}])
    >>> batch["attention_mask"].tolist()
    [[1, 1, 1], [1, 0, 0]]
    >>> round(c.pad_fraction, 3)
    0.333
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int = 1, share_prefix: bool = False):
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.share_prefix = share_prefix
        self.n_real = 0
        self.n_slots = 0

    @property
    def pad_fraction(self) -> float:
        return 1.0 - self.n_real / self.n_slots if self.n_slots else 0.0

    def __call__(self, features: list[dict]) -> dict:
        import torch

        m = self.pad_to_multiple_of
        width = max(len(f["input_ids"]) for f in features)
        width = -(-width // m) * m
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(f["labels"], dtype=torch.long)
            mask[row, :n] = 1
        self.n_real += sum(len(f["input_ids"]) for f in features)
        self.n_slots += len(features) * width
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if any("weight" in f for f in features):  # per-row loss weights (filter.weighting)
            batch["weights"] = torch.tensor([float(f.get("weight", 1.0)) for f in features])
        if self.share_prefix:
            prefix_len, rows = batch_prefix(features)
            if prefix_len:
                flags = torch.zeros(len(features), dtype=torch.bool)
                flags[rows] = True
                batch |= {"prefix_len": prefix_len, "prefix_rows": flags}
        return batch


def encode(model_dir: Path, examples: list[dict], max_length: int):
    """Step 1 of a fine-tuning run: ``(tokenizer, features, n_truncated, n_dropped)`` of the
    model folder ``model_dir`` and ``examples`` (:func:`encode_examples`), with a clear error
    when ``model_dir`` is not a model folder."""
    from transformers import AutoTokenizer

    if not (Path(model_dir) / "config.json").exists():
        raise InputError(
            f"{model_dir}: not a model folder (no config.json); check the model path "
            "or run the stage that makes it"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    features, n_truncated, n_dropped = encode_examples(tokenizer, examples, max_length)
    if n_truncated:
        log.info("finetune: %d example(s) truncated from the left of the prompt", n_truncated)
    if n_dropped:
        log.warning(
            "finetune: %d example(s) dropped: completion longer than max_length=%d",
            n_dropped,
            max_length,
        )
    return tokenizer, features, n_truncated, n_dropped
