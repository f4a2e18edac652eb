"""Fine-tuning without redundant work: the loss of a batch computed only where the result needs it.

Two things the plain ``model(input_ids, attention_mask, labels)`` spends time on that the loss
does not need:

* **the LM head at prompt positions.** Only positions whose next token is a completion token
  carry a loss (most tokens are prompt); :func:`completion_loss` runs the decoder to hidden
  states and applies the LM head and the cross-entropy at those positions only.
* **a prompt prefix shared by the batch's rows, once per row.** The few-shot formats repeat the
  same exemplars in every example. :func:`batch_prefix` picks the prompt prefix of a batch's
  rows whose single pass saves the most decoder positions (``finetune.shared_prefix``);
  :func:`completion_loss` runs it
  once, with gradients (LoRA on q/k/v/o changes its keys/values), copies its KV cache to every
  row (autograd sums the rows' gradients into the one prefix pass) and runs each row's rest
  after it; rows without that prefix run whole, with the prefix masked out. Batches have such
  a prefix because :func:`prefix_groups` keys each example by the prompt prefix it shares with
  a global batch's worth of others and the sampler fills batches with one group's examples
  (:func:`grouped_order`, length-grouped inside the group; used by
  :func:`selfimprove.training.resume.epoch_order`).

Same loss and gradients as the plain forward up to float rounding (LoRA dropout 0; with dropout
the shared prefix draws one mask for all rows instead of one per row). The loss is the same
sum over completion tokens divided by transformers' ``num_items_in_batch`` (the token count of
the whole accumulated, all-process batch) when the Trainer passes it, else their mean.

:func:`use_completion_loss` makes a model's ``forward`` do this, so a Trainer, DDP and
accelerate's autocast call it as they call the model (DDP needs its own ``forward`` to run for
the gradient all-reduce).
"""

from __future__ import annotations

import types
from itertools import pairwise

IGNORE_INDEX = -100
#: shorter shared prefixes are not worth the extra decoder pass (tokens)
MIN_SHARED_PREFIX = 16
#: attention implementations that take the explicit 4D mask of the shared-prefix pass
PREFIX_ATTENTION = ("sdpa", "eager", "selfimprove_eager_recomputed")


# ----------------------------------------------------------------------------- prefixes


def _common_len(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two id lists.

    >>> _common_len([1, 2, 3], [1, 2, 4, 5]), _common_len([], [1])
    (2, 0)
    """
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def sharable(feature: dict) -> list[int]:
    """The ids of ``feature`` that another row may share: the prompt minus its last token (the
    hidden state at a shared position must not predict a completion token).

    >>> sharable({"input_ids": [5, 6, 7, 8, 0], "labels": [-100, -100, -100, 8, 0]})
    [5, 6]
    """
    labels = feature["labels"]
    n_prompt = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
    return list(feature["input_ids"][: max(n_prompt - 1, 0)])


def prefix_groups(features: list[dict], min_rows: int, min_len: int = MIN_SHARED_PREFIX) -> list:
    """A group per feature (an int, -1 = none); features with the same group share a prompt
    prefix of at least ``min_len`` tokens, and a group has at least ``min_rows`` features.

    Sorted by their sharable ids, the features sharing ``d`` tokens with a feature form a run
    around it. Each feature takes, among its runs of at least ``min_rows`` features, the one
    sharing the most tokens in all (depth x features): for the few-shot formats that is the
    set of all examples of the format (its exemplars), not the handful that also share the
    first words of the question (a split that would only sort fewer rows by length together).

    >>> ex = lambda *ids: {"input_ids": [*ids, 9, 0], "labels": [-100] * len(ids) + [9, 0]}
    >>> feats = [ex(1, 2, 3, 4, 7), ex(5, 6), ex(1, 2, 3, 4, 8), ex(1, 2, 3, 5, 9), ex(5, 7)]
    >>> prefix_groups(feats, min_rows=2, min_len=3)  # 3 rows x 3 tokens > 2 rows x 4 tokens
    [0, -1, 0, 0, -1]
    >>> prefix_groups(feats, min_rows=2, min_len=4), prefix_groups(feats, min_rows=4, min_len=3)
    ([0, -1, 0, -1, -1], [-1, -1, -1, -1, -1])
    """
    n = len(features)
    if min_rows < 2 or n < min_rows:
        return [-1] * n
    seqs = [sharable(f) for f in features]
    order = sorted(range(n), key=lambda i: seqs[i])
    lcp = [_common_len(seqs[a], seqs[b]) for a, b in pairwise(order)]
    best: list[tuple[int, tuple]] = [(0, ())] * n  # (shared tokens, run) per sorted position
    for depth in sorted({h for h in lcp if h >= min_len}):
        start = 0
        for k in range(n):  # a run of rows sharing >= depth tokens ends at k
            if k < n - 1 and lcp[k] >= depth:
                continue
            if k + 1 - start >= min_rows:
                score = depth * (k + 1 - start)
                for pos in range(start, k + 1):
                    if score > best[pos][0]:
                        best[pos] = (score, (depth, start))
            start = k + 1
    ids = {run: g for g, run in enumerate(sorted({run for _, run in best if run}))}
    groups = [-1] * n
    for pos, i in enumerate(order):
        if best[pos][1]:
            groups[i] = ids[best[pos][1]]
    return groups


def grouped_order(lengths: list[int], groups: list[int], batch_size: int, generator) -> list[int]:
    """One epoch's order in which the examples of a group (:func:`prefix_groups`) fill whole
    batches of ``batch_size`` together.

    Each group is ordered by transformers' length grouping (a random permutation, mega-batches
    of as many batches as for the whole set, sorted by length inside), cut into batches; the
    groups' leftovers (fewer than a batch each) are batched together. The batches come in
    random order, the one holding the longest example first (an out-of-memory error shows at
    once), a partial batch last. Random draws come from ``generator`` only.

    >>> import torch
    >>> lengths, groups = [5, 9, 3, 4, 8, 2, 7], [0, -1, 0, -1, 0, 0, -1]
    >>> order = grouped_order(lengths, groups, 2, torch.Generator().manual_seed(0))
    >>> sorted(order) == list(range(7)), [groups[i] for i in order[:2]]
    (True, [-1, -1])
    >>> [sorted(groups[i] for i in order[k : k + 2]) for k in (2, 4)]
    [[0, 0], [0, 0]]
    """
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    mult = max(min(len(lengths) // (batch_size * 4), 50), 1)  # as transformers for the whole set
    batches, leftovers = [], []
    for g in sorted(set(groups)):
        members = [i for i, x in enumerate(groups) if x == g]
        sub = get_length_grouped_indices(
            [lengths[i] for i in members], batch_size, mega_batch_mult=mult, generator=generator
        )
        order = [members[k] for k in sub]
        full = len(order) - len(order) % batch_size
        batches += [order[k : k + batch_size] for k in range(0, full, batch_size)]
        leftovers += order[full:]
    batches += [leftovers[k : k + batch_size] for k in range(0, len(leftovers), batch_size)]
    last = batches.pop() if batches and len(batches[-1]) < batch_size else []
    batches = [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]
    if batches:
        top = max(range(len(batches)), key=lambda k: max(lengths[i] for i in batches[k]))
        batches[0], batches[top] = batches[top], batches[0]
    return [i for batch in batches for i in batch] + last


def batch_prefix(features: list[dict], min_len: int = MIN_SHARED_PREFIX) -> tuple[int, list]:
    """``(prefix_len, rows)``: the prompt prefix of the batch to compute once, and which rows
    (by index) start with it; ``(0, [])`` when none pays.

    The decoder then runs ``prefix_len + rows x the longest rest`` positions (rows without the
    prefix run whole) instead of ``rows x the longest row``; the prefix that minimizes that
    count is taken, among the common prefixes (of at least ``min_len`` tokens) of rows that are
    consecutive in sorted order (every set of rows sharing a prefix is such a run), when it
    saves at least ``min_len`` positions per row (less does not pay for the extra pass).

    >>> ex = lambda *ids: {"input_ids": [*ids, 9, 0], "labels": [-100] * len(ids) + [9, 0]}
    >>> batch = [ex(1, 2, 3, 4, 5, 6), ex(7, 8), ex(1, 2, 3, 4, 5, 7)]
    >>> batch_prefix(batch, min_len=2)  # 5 + 3 x 4 positions instead of 3 x 8
    (5, [0, 2])
    >>> batch_prefix(batch + [ex(*range(20, 26))], min_len=2)  # a long row without: no gain
    (0, [])
    """
    seqs = [sharable(f) for f in features]
    lengths = [len(f["input_ids"]) for f in features]
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    lcp = [_common_len(seqs[a], seqs[b]) for a, b in pairwise(order)]
    plain = len(lengths) * max(lengths, default=0)
    best = (plain - min_len * len(lengths), 0, [])  # positions, prefix length, rows
    for s in range(len(lcp)):
        length = lcp[s]
        for e in range(s, len(lcp)):
            length = min(length, lcp[e])
            if length < min_len:
                break
            rows = set(order[s : e + 2])
            rest = max(n - length * (i in rows) for i, n in enumerate(lengths))
            if length + len(lengths) * rest < best[0]:
                best = (length + len(lengths) * rest, length, sorted(rows))
    return best[1], best[2]


def decoder_slots(
    features: list[dict], share_prefix: bool = True, min_len: int = MIN_SHARED_PREFIX
) -> int:
    """Token positions the decoder runs for this batch: rows x the longest row, or with a
    shared prefix (:func:`batch_prefix`) the prefix once + rows x the longest rest.

    >>> ex = lambda *ids: {"input_ids": [*ids, 9, 0], "labels": [-100] * len(ids) + [9, 0]}
    >>> batch = [ex(1, 2, 3, 4, 5, 6), ex(7, 8), ex(1, 2, 3, 4, 5, 7)]
    >>> decoder_slots(batch, share_prefix=False), decoder_slots(batch, min_len=2)  # 3x8, 5 + 3x4
    (24, 17)
    """
    lengths = [len(f["input_ids"]) for f in features]
    prefix_len, rows = batch_prefix(features, min_len) if share_prefix else (0, [])
    rest = [n - prefix_len * (i in rows) for i, n in enumerate(lengths)]
    return prefix_len + len(lengths) * max(rest)


# ----------------------------------------------------------------------------- loss


def _causal_lm(model):
    """The transformers causal LM inside ``model`` (a peft model or the LM itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def completion_loss(
    model,
    input_ids,
    attention_mask,
    labels,
    prefix_len: int = 0,
    prefix_rows=None,
    num_items_in_batch=None,
    weights=None,
):
    """The causal-LM loss of a right-padded batch, as ``model(..., labels=labels).loss``.

    Position ``t`` predicts ``labels[:, t + 1]``; the LM head and the cross-entropy run only
    where that label is not -100. ``prefix_len`` > 0: the rows flagged in ``prefix_rows``
    (bool [B]) start with the same ``prefix_len`` ids and carry no loss there (see
    :func:`batch_prefix`); that prefix runs once (see the module docstring). The loss is
    the sum over those tokens / ``num_items_in_batch``, or their mean when it is None.
    ``weights`` (float [B]): each row's tokens count that many times in the sum.
    """
    import torch
    import torch.nn.functional as F

    lm = _causal_lm(model)
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # what each position predicts
    if prefix_len and (
        prefix_rows is None
        or not bool(prefix_rows.any())  # e.g. a DataParallel replica's rows without the prefix
        or getattr(lm.config, "_attn_implementation", "sdpa") not in PREFIX_ATTENTION
    ):
        prefix_len = 0  # the plain pass (flash-attention, for one, takes no 4D mask)
    if prefix_len:
        hidden, targets = _prefix_pass(
            lm, decoder, input_ids, attention_mask, targets, prefix_len, prefix_rows
        )
    else:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = hidden.last_hidden_state
    keep = targets != IGNORE_INDEX
    logits = head(hidden[keep]).float()  # as transformers: the loss in float32
    if weights is not None:  # weighted rows: the same sum with each token's row weight
        per_token = F.cross_entropy(logits, targets[keep], reduction="none")
        w = weights.to(per_token.device, per_token.dtype).unsqueeze(1).expand(targets.shape)
        loss = (per_token * w[keep]).sum()
        if num_items_in_batch is None:
            return loss / per_token.numel()
    elif num_items_in_batch is None:
        return F.cross_entropy(logits, targets[keep])
    else:
        loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def _prefix_pass(lm, decoder, input_ids, attention_mask, targets, prefix_len, prefix_rows):
    """Run the shared prefix once and every row's rest after it: ``(hidden, targets)`` of the
    rest, [B, S, H] and [B, S] (S: the longest rest; padding targets -100)."""
    import torch
    from transformers import DynamicCache

    from selfimprove.core.cache import cache_kwarg

    dev = input_ids.device
    b = input_ids.shape[0]
    p = prefix_len
    rows = prefix_rows.to(dev).bool()
    first = int(rows.nonzero()[0, 0])
    cache = DynamicCache(config=lm.config)
    # `cache` (transformers >= 5.2x) or `past_key_values` (5.19, the vLLM environment's): an
    # unknown keyword would be swallowed by **kwargs and the cache silently unused
    kw = cache_kwarg(decoder)
    decoder(
        input_ids=input_ids[first : first + 1, :p],
        position_ids=torch.arange(p, device=dev).unsqueeze(0),
        use_cache=True,
        **{kw: cache},
    )
    cache.batch_repeat_interleave(b)  # one copy per row; its backward sums over the rows

    # each row's rest, left-aligned: from position p (rows with the prefix) or 0 (the others)
    offset = rows.long() * p
    rest = attention_mask.sum(1) - offset
    width = int(rest.max())
    col = torch.arange(width, device=dev)
    valid = col.unsqueeze(0) < rest.unsqueeze(1)  # [B, S]
    pos = (offset.unsqueeze(1) + col).clamp(max=input_ids.shape[1] - 1)
    ids = input_ids.gather(1, pos)
    tgt = targets.gather(1, pos).masked_fill(~valid, IGNORE_INDEX)
    # attend to the prefix (rows that have it) and causally to the row's own valid rest
    causal = col.unsqueeze(1) >= col.unsqueeze(0)  # [S, S]
    own = causal.unsqueeze(0) & valid.unsqueeze(1)  # [B, S, S]
    pre = rows.view(b, 1, 1).expand(b, width, p)
    allowed = torch.cat([pre, own], dim=2).unsqueeze(1)  # [B, 1, S, P + S]
    dtype = decoder.get_input_embeddings().weight.dtype
    if torch.is_autocast_enabled(dev.type):
        dtype = torch.get_autocast_dtype(dev.type)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=dev)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    out = decoder(
        input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{kw: cache}
    )
    return out.last_hidden_state, tgt


def use_completion_loss(model) -> None:
    """Make ``model(input_ids=, attention_mask=, labels=, [prefix_len=, prefix_rows=,
    num_items_in_batch=, weights=])`` return its loss by :func:`completion_loss` (an output without
    logits). Any other call (no labels, other arguments) goes to the model's own forward."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    plain = model.forward

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        labels=None,
        prefix_len=0,
        prefix_rows=None,
        num_items_in_batch=None,
        weights=None,
        **kwargs,
    ):
        if labels is None or input_ids is None or attention_mask is None or kwargs:
            if weights is not None:
                raise ValueError("weighted rows need the completion loss (labels, no extras)")
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return plain(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
            )
        loss = completion_loss(
            self, input_ids, attention_mask, labels, prefix_len, prefix_rows, num_items_in_batch,
            weights,
        )
        return CausalLMOutputWithPast(loss=loss)

    model.forward = types.MethodType(forward, model)
