"""Cascade attention over one shared prefix + per-row tails, and the tails' KV store.

The sampler keeps the few-shot prefix's keys/values once (``ACTIVE_PREFIX`` during a forward) and
each row's tail (question + generated tokens) in a transformers cache whose layers are
:func:`tail_layer_class` buffers; :func:`prefix_attention` (registered with transformers as
``ATTN_NAME``) attends over both as if they were one sequence.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

ATTN_NAME = "selfimprove_prefix"
# Per-layer (keys, values) of the shared prefix, each [kv_heads, prefix_len, head_dim], or None.
ACTIVE_PREFIX: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "selfimprove_active_prefix", default=None
)


def prefix_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention over [shared prefix (one copy) ; this row's tail], with an explicit bool mask.

    query [B, Hq, q, D]; key/value [B, Hkv, T, D] (the rows' tails); attention_mask
    [B, 1, q, T] bool (True = attend) for the tail part; the prefix is visible to every query.
    Returns [B, q, Hq, D] like the other transformers attention functions.

    On CPU the two parts run through torch's fused flash-attention kernel, which also returns
    each query's log-sum-exp, and are merged exactly (``_flash_cascade``); it reads the tail
    keys/values through their strides (bmm would first copy a view of the tail store).
    """
    import torch

    b, hq, q, d = query.shape
    hkv, t = key.shape[1], key.shape[2]
    rep = hq // hkv
    scale = scaling if scaling is not None else d**-0.5
    if query.device.type == "cpu":
        out = _flash_cascade(
            module, query.reshape(b, hkv, rep * q, d), key, value, attention_mask, scale, rep, q
        )
        return out.reshape(b, hq, q, d).transpose(1, 2).contiguous(), None
    qg = (query * scale).reshape(b, hkv, rep * q, d)  # query heads are grouped per kv head
    s_tail = torch.matmul(qg, key.transpose(-1, -2))  # [B, Hkv, rep*q, T]
    if attention_mask is not None:
        neg = torch.finfo(s_tail.dtype).min
        s_tail = (
            s_tail.view(b, hkv, rep, q, t)
            .masked_fill(~attention_mask.unsqueeze(2), neg)
            .view(b, hkv, rep * q, t)
        )
    prefix = ACTIVE_PREFIX.get()
    if prefix is None:
        probs = s_tail.float().softmax(-1).to(value.dtype)
        out = torch.matmul(probs, value)
    else:
        pk, pv = prefix[module.layer_idx]  # [Hkv, P, D]
        p = pk.shape[1]
        qp = qg.transpose(0, 1).reshape(hkv, b * rep * q, d)
        s_pre = torch.matmul(qp, pk.transpose(-1, -2)).view(hkv, b, rep * q, p).transpose(0, 1)
        probs = torch.cat([s_pre, s_tail], dim=-1).float().softmax(-1).to(value.dtype)
        w_pre, w_tail = probs.split([p, t], dim=-1)
        out_pre = torch.matmul(w_pre.transpose(0, 1).reshape(hkv, b * rep * q, p), pv)
        out = out_pre.view(hkv, b, rep * q, d).transpose(0, 1) + torch.matmul(w_tail, value)
    return out.reshape(b, hq, q, d).transpose(1, 2).contiguous(), None


# the additive form of the last bool mask seen: every layer of a forward gets the same mask
_MASK_MEMO: list = [None, None]


def _flash_cascade(module, qg, key, value, attention_mask, scale: float, rep: int, q: int):
    """CPU attention of grouped queries qg [B, Hkv, rep*q, D] over prefix + tail, merged exactly.

    softmax over the concatenation = the two partial attentions weighted by their shares of
    the total exp-mass: w = sigmoid(lse_prefix - lse_tail) for the prefix part.
    """
    import torch

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    b, hkv, rows, d = qg.shape
    add = None
    if attention_mask is not None:
        if _MASK_MEMO[0] is not attention_mask:
            zero = torch.zeros((), dtype=qg.dtype, device=qg.device)
            _MASK_MEMO[:] = [attention_mask, zero.masked_fill(~attention_mask, float("-inf"))]
        add = _MASK_MEMO[1]  # [B, 1, q, T]
        if q > 1 and rep > 1:  # row (r, i) of a kv head's group sees query i's mask row
            t = add.shape[-1]
            add = add.unsqueeze(2).expand(b, 1, rep, q, t).reshape(b, 1, rows, t)
    out, lse = flash(qg, key, value, attn_mask=add, scale=scale)[:2]
    prefix = ACTIVE_PREFIX.get()
    if prefix is None:
        return out
    pk, pv = prefix[module.layer_idx]  # [Hkv, P, D]
    qp = qg.transpose(0, 1).reshape(1, hkv, b * rows, d)
    out_p, lse_p = flash(qp, pk.unsqueeze(0), pv.unsqueeze(0), scale=scale)[:2]
    out_p = out_p.view(hkv, b, rows, d).transpose(0, 1)
    w = torch.sigmoid(lse_p.view(hkv, b, rows).transpose(0, 1) - lse).unsqueeze(-1)
    return (out.float() + w * (out_p.float() - out.float())).to(qg.dtype)


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, prefix_attention)


# spare tail columns a rebuilt cache gets: decode steps that write in place before a realloc
_HEADROOM = 32

#: key/value block of torch's CPU flash-attention kernel (kvSplitSize): leading columns that every
#: row masks are dropped in whole blocks, which leaves each block's arithmetic - and so the
#: outputs - bit-identical (tests/unit/test_sampler.py), while the cache stops growing
KV_BLOCK = 512

#: what the tail store allocated: buffers, bytes, and the widest buffer (tests bound them)
STORE_STATS = {"buffers": 0, "bytes": 0, "max_width": 0}


def _new_buffer(like, rows: int, heads: int, width: int, dim: int):
    STORE_STATS["buffers"] += 1
    STORE_STATS["bytes"] += rows * heads * width * dim * like.element_size()
    STORE_STATS["max_width"] = max(STORE_STATS["max_width"], width)
    return like.new_empty(rows, heads, width, dim)


@functools.cache
def tail_layer_class():
    """A transformers ``DynamicLayer`` whose keys/values are views of buffers with spare columns.

    ``keys``/``values`` are ``buffer[:, :, :end]``; a decode step writes its column at ``end``
    in place (``DynamicLayer`` concatenates, copying the whole cache every step). When the
    buffer is full, the next update reallocates with ``_HEADROOM`` spare columns.
    """
    from transformers.cache_utils import DynamicLayer

    class TailLayer(DynamicLayer):
        _kb = _vb = None
        _end = 0

        def adopt(self, kb, vb, end: int) -> None:
            """Take buffers ``kb``/``vb`` [B, H, capacity, D] holding data in columns ``:end``."""
            self._kb, self._vb, self._end = kb, vb, end
            self.keys, self.values = kb[:, :, :end], vb[:, :, :end]
            self.is_initialized = True
            self.dtype, self.device = kb.dtype, kb.device

        def update(self, key_states, value_states, *args, **kwargs):

            end = self._end + key_states.shape[-2]
            if self._kb is None or end > self._kb.shape[2]:  # first update, or the buffer is full
                b, h, _, d = key_states.shape
                kb = _new_buffer(key_states, b, h, end + _HEADROOM, d)
                vb = _new_buffer(value_states, b, h, end + _HEADROOM, value_states.shape[-1])
                if self._kb is not None:  # copied straight into the new buffer (no concatenation)
                    kb[:, :, : self._end], vb[:, :, : self._end] = self.keys, self.values
                kb[:, :, self._end : end] = key_states
                vb[:, :, self._end : end] = value_states
                self.adopt(kb, vb, end)
            else:
                self._kb[:, :, self._end : end] = key_states
                self._vb[:, :, self._end : end] = value_states
                self.adopt(self._kb, self._vb, end)
            return self.keys, self.values

    return TailLayer


def rebuild(old, new, new_cache, headroom: int | None = None):
    """One cache for the kept old rows + the new rows, right-aligned, in fresh buffers.

    old: (cache, valid, pos, logits, keep index) or None; new: ((cache, valid, pos, logits),
    pick index: the prefill row of every new sample row) or None. Returns (cache, valid, pos,
    logits); each tensor is copied once (pad columns zeroed: masked scores times a value must
    stay finite), and each layer of the old caches is released as soon as it is copied (they
    are not used afterwards), so a rebuild holds one layer twice, not the whole cache. Leading
    columns that no kept or new row attends to are dropped in whole :data:`KV_BLOCK` blocks:
    without that the cache grew by one column per decode step over a whole ``sample`` call
    (every row padded to the oldest column ever kept).
    """
    import torch
    import torch.nn.functional as F

    headroom = _HEADROOM if headroom is None else headroom
    parts = []
    if old is not None:
        c, v, p, lg, idx = old
        parts.append((c, v[idx], p[idx], lg[idx], idx))
    if new is not None:
        (c, v, p, lg), idx = new
        parts.append((c, v[idx], p[idx], lg[idx], idx))
    if not parts:
        return None, None, None, None
    full = max(v.shape[1] for _, v, _, _, _ in parts)  # the width without dropping
    # first column any row attends to (rows are right-aligned, each valid to the end)
    first = min(full - v.shape[1] + int(v.any(0).byte().argmax()) for _, v, _, _, _ in parts)
    drop = first // KV_BLOCK * KV_BLOCK
    width = full - drop
    rows = sum(v.shape[0] for _, v, _, _, _ in parts)
    cache = new_cache()
    layer_cls = tail_layer_class()
    cache.layers = [layer_cls() for _ in parts[0][0].layers]
    for li, layer in enumerate(cache.layers):
        k0, v0 = parts[0][0].layers[li].keys, parts[0][0].layers[li].values
        kb = _new_buffer(k0, rows, k0.shape[1], width + headroom, k0.shape[-1])
        vb = _new_buffer(v0, rows, v0.shape[1], width + headroom, v0.shape[-1])
        r = 0
        for c, _, _, _, idx in parts:
            k, val = c.layers[li].keys, c.layers[li].values
            t, nb = k.shape[2], len(idx)
            cut = max(0, t - width)  # leading columns of this part that were dropped
            kb[r : r + nb, :, : width - t + cut].zero_()
            vb[r : r + nb, :, : width - t + cut].zero_()
            kb[r : r + nb, :, width - t + cut : width] = k[idx, :, cut:]
            vb[r : r + nb, :, width - t + cut : width] = val[idx, :, cut:]
            r += nb
        layer.adopt(kb, vb, width)
        for c, _, _, _, _ in parts:  # the old layer is copied: free it now, not after all layers
            c.layers[li] = type(c.layers[li])()
    valid = torch.cat([F.pad(v, (full - v.shape[1], 0), value=False) for _, v, _, _, _ in parts])
    valid = valid[:, drop:]
    pos = torch.cat([p for _, _, p, _, _ in parts])
    logits = torch.cat([lg for _, _, _, lg, _ in parts])
    return cache, valid, pos, logits
