"""Cascade attention over one shared prefix + per-question prompts + per-row tails, and their KV.

The sampler keeps the few-shot prefix's keys/values once (``ACTIVE_PREFIX`` during a forward),
each question's prompt once for its m rows (:class:`QuestionKV`, ``ACTIVE_QUESTIONS`` during a
decode step; on CPU) and each row's tail (its generated tokens; with the question level off, the
question too) in a transformers cache whose layers are :func:`tail_layer_class` buffers;
:func:`prefix_attention` (registered with transformers as ``ATTN_NAME``) attends over all of them
as if they were one sequence.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

from selfimprove.sampling import decode_kernel

ATTN_NAME = "selfimprove_prefix"
# Per-layer (keys, values) of the shared prefix, each [kv_heads, prefix_len, head_dim], or None.
ACTIVE_PREFIX: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "selfimprove_active_prefix", default=None
)
# The per-question level of a decode step (a QuestionKV), or None.
ACTIVE_QUESTIONS: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "selfimprove_active_questions", default=None
)
# The shared prefix packed for decode_kernel.attend_prefix (per layer), or None (flash).
PACKED_PREFIX: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "selfimprove_packed_prefix", default=None
)
# Whether a decode step's tail part goes through selfimprove's kernel (decode_kernel.py).
DECODE_KERNEL: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "selfimprove_decode_kernel", default=False
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
    if ACTIVE_QUESTIONS.get() is not None:
        raise NotImplementedError("the per-question level runs on CPU only (the sampler's choice)")
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


# the last bool mask seen and its additive forms by dtype: every layer of a forward gets the
# same mask (flash takes it in the queries' dtype, the decode kernel in fp32)
_MASK_MEMO: list = [None, {}]


def _additive(attention_mask, dtype):
    """``attention_mask`` (bool, True = attend) as 0 / -inf in ``dtype``, memoized."""
    if _MASK_MEMO[0] is not attention_mask:
        _MASK_MEMO[:] = [attention_mask, {}]
    forms = _MASK_MEMO[1]
    if dtype not in forms:
        import torch

        zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
        forms[dtype] = zero.masked_fill(~attention_mask, float("-inf"))
    return forms[dtype]


def _flash_cascade(module, qg, key, value, attention_mask, scale: float, rep: int, q: int):
    """CPU attention of grouped queries qg [B, Hkv, rep*q, D] over prefix + tail, merged exactly.

    softmax over the concatenation = the two partial attentions weighted by their shares of
    the total exp-mass: w = sigmoid(lse_prefix - lse_tail) for the prefix part. A decode step
    (q = 1) takes the tail part through the decode kernel when ``DECODE_KERNEL`` is on.
    """
    import torch

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    b, hkv, rows, d = qg.shape
    if q == 1 and DECODE_KERNEL.get() and decode_kernel.fits(qg):
        add = None if attention_mask is None else _additive(attention_mask, torch.float32)
        add = None if add is None else add.reshape(b, -1)  # [B, T]
        out, lse = decode_kernel.attend(qg, key, value, add, scale)
    else:
        add = None if attention_mask is None else _additive(attention_mask, qg.dtype)
        if add is not None and q > 1 and rep > 1:  # row (r, i) of a group sees query i's mask
            t = add.shape[-1]
            add = add.unsqueeze(2).expand(b, 1, rep, q, t).reshape(b, 1, rows, t)
        out, lse = flash(qg, key, value, attn_mask=add, scale=scale)[:2]
    prefix = ACTIVE_PREFIX.get()
    questions = ACTIVE_QUESTIONS.get()
    parts = [(out, lse)]
    if prefix is not None:
        pk, pv = prefix[module.layer_idx]  # [Hkv, P, D]
        qp = qg.transpose(0, 1).reshape(hkv, b * rows, d)  # every query of a kv head
        packed = PACKED_PREFIX.get()
        if packed is not None and decode_kernel.fits(qp.unsqueeze(2)):
            out_p, lse_p = decode_kernel.attend_prefix(qp, packed[module.layer_idx], scale)
        else:
            out_p, lse_p = flash(qp.unsqueeze(0), pk.unsqueeze(0), pv.unsqueeze(0), scale=scale)[:2]
        parts.append(
            (
                out_p.view(hkv, b, rows, d).transpose(0, 1),
                lse_p.reshape(hkv, b, rows).transpose(0, 1),
            )
        )
    if questions is not None:
        parts.append(questions.attend(flash, qg, module.layer_idx, scale))
    if len(parts) == 1:
        return out
    if len(parts) == 2:
        (out, lse), (out_p, lse_p) = parts
        w = torch.sigmoid(lse_p - lse).unsqueeze(-1)
        return (out.float() + w * (out_p.float() - out.float())).to(qg.dtype)
    # each part weighted by its share of the total exp-mass (log-sum-exp of every part)
    lses = torch.stack([lp for _, lp in parts])
    weights = (lses - lses.logsumexp(0)).exp().unsqueeze(-1)
    merged = sum(w * o.float() for w, (o, _) in zip(weights, parts, strict=True))
    return merged.to(qg.dtype)


class QuestionKV:
    """The keys/values of the questions of a decode batch, one slot per admitted question (for
    its rows), left-padded to one width: every row attends to its question's slot, so a
    question's m rows read its prompt once (one small matrix product, not m vector ones).

    ``layers``: per layer (keys, values) [S, Hkv, L, D]; ``valid`` [S, L] bool; ``rows_slot``:
    each batch row's slot (every slot has a row). Queries are grouped per slot for the kernel:
    ``gather`` [S * g] the row at each of a slot's g places (short slots repeat a row, whose
    result is dropped), ``place`` [B] each row's place.
    """

    def __init__(self, layers: list, valid: Any, rows_slot: list[int]):
        import torch

        self.layers, self.valid, self.rows_slot = layers, valid, rows_slot
        groups: list[list[int]] = [[] for _ in range(valid.shape[0])]
        for r, s in enumerate(rows_slot):
            groups[s].append(r)
        self.g = g = max(len(x) for x in groups)
        gather, place = [], [0] * len(rows_slot)
        for s, rs in enumerate(groups):
            gather += rs + [rs[0]] * (g - len(rs))
            for j, r in enumerate(rs):
                place[r] = s * g + j
        dev = valid.device
        self.gather = torch.tensor(gather, device=dev)
        self.place = torch.tensor(place, device=dev)
        zero = torch.zeros((), dtype=layers[0][0].dtype, device=dev)
        self.add = zero.masked_fill(~valid, float("-inf")).view(valid.shape[0], 1, 1, -1)

    def attend(self, flash, qg, layer_idx: int, scale: float):
        """(out [B, Hkv, rows, D], lse [B, Hkv, rows]) of decode queries qg [B, Hkv, rows, D]
        over each row's question."""
        k, v = self.layers[layer_idx]
        s, g = k.shape[0], self.g
        _, hkv, rows, d = qg.shape
        x = qg.index_select(0, self.gather).view(s, g, hkv, rows, d).transpose(1, 2)
        out, lse = flash(x.reshape(s, hkv, g * rows, d), k, v, attn_mask=self.add, scale=scale)[:2]
        out = out.reshape(s, hkv, g, rows, d).transpose(1, 2).reshape(s * g, hkv, rows, d)
        lse = lse.reshape(s, hkv, g, rows).transpose(1, 2).reshape(s * g, hkv, rows)
        return out.index_select(0, self.place), lse.index_select(0, self.place)


def merge_questions(old, keep_slots: list[int], new, rows_slot: list[int]):
    """A :class:`QuestionKV` of the kept slots of ``old`` (in ``keep_slots`` order) then the new
    ones: ``new`` = (prefill cache, valid [k, W], pick: the prefill row of each new slot) or
    None; ``rows_slot`` numbers the slots in that order. None when no slot is left."""
    import torch
    import torch.nn.functional as F

    parts = []  # (per-layer (keys, values), valid) of each source, rows picked
    if old is not None and keep_slots:
        idx = torch.tensor(keep_slots, device=old.valid.device)
        parts.append(([(k[idx], v[idx]) for k, v in old.layers], old.valid[idx]))
    if new is not None:
        cache, valid, pick = new
        parts.append(([(ly.keys[pick], ly.values[pick]) for ly in cache.layers], valid[pick]))
    if not parts:
        return None
    width = max(v.shape[1] for _, v in parts)

    def pad(x, left):  # [S, H, l, D] -> [S, H, width, D], zeros on the left
        return F.pad(x, (0, 0, left, 0)) if left else x

    layers = []
    for li in range(len(parts[0][0])):
        ks = [pad(ly[li][0], width - v.shape[1]) for ly, v in parts]
        vs = [pad(ly[li][1], width - v.shape[1]) for ly, v in parts]
        layers.append((torch.cat(ks), torch.cat(vs)))
    valid = torch.cat([F.pad(v, (width - v.shape[1], 0), value=False) for _, v in parts])
    return QuestionKV(layers, valid, rows_slot)


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, prefix_attention)


# spare tail columns a rebuilt cache gets: decode steps that write in place before a realloc
_HEADROOM = 32

#: what the tail store allocated: buffers, bytes, and the longest row (tests bound them)
STORE_STATS = {"buffers": 0, "bytes": 0, "max_width": 0}


def _store(like, guard: int, rows: int, row_len: int):
    """Zeroed slot-major store [guard + rows * row_len, H, D] like ``like`` [.., H, .., D] (every
    slot finite: a masked score times a value must stay finite)."""
    h, d = like.shape[1], like.shape[-1]
    STORE_STATS["buffers"] += 1
    STORE_STATS["bytes"] += (guard + rows * row_len) * h * d * like.element_size()
    STORE_STATS["max_width"] = max(STORE_STATS["max_width"], row_len)
    return like.new_zeros(guard + rows * row_len, h, d)


def _rows_of(buf, guard: int, rows: int, row_len: int):
    """The rows' own slots of a store: [rows, row_len, H, D]."""
    return buf[guard:].view(rows, row_len, buf.shape[1], buf.shape[2])


@functools.cache
def tail_layer_class():
    """A transformers ``DynamicLayer`` whose keys/values live in a store of ``row_len`` slots
    per row, read as a [B, H, width, D] view.

    Row ``b``'s column ``t`` is slot ``start + b * row_len + (t - start)`` of the store, where
    ``start`` <= every row's first attended column: a row keeps only its tail (and spare
    slots), while its leading pad columns - masked, so only their being finite matters - read
    the previous row's slots (row 0's: a zeroed guard of ``start`` slots). The attention kernel
    sees the same width and the same values in every attended column as with one padded buffer
    per row, so the same outputs, bit for bit (tests/unit/test_sampler.py). A decode step
    writes its column in place (``DynamicLayer`` concatenates, copying the whole cache every
    step); when
    a row's slots are full, the next update moves the store to one ``_HEADROOM`` slots longer.
    """
    from transformers.cache_utils import DynamicLayer

    class TailLayer(DynamicLayer):
        _kb = _vb = None
        _rows = _row_len = _start = _end = 0

        def adopt(self, kb, vb, rows: int, row_len: int, start: int, end: int) -> None:
            """Take stores ``kb``/``vb`` (:func:`_store`, guard ``start``) holding columns
            ``start:end`` of every row."""
            import torch

            self._kb, self._vb = kb, vb
            self._rows, self._row_len, self._start, self._end = rows, row_len, start, end
            h, d = kb.shape[1], kb.shape[2]
            shape, stride = (rows, h, end, d), (row_len * h * d, d, h * d, 1)
            offset = 0  # row 0's column 0 is the guard's first slot
            self.keys = torch.as_strided(kb, shape, stride, offset)
            self.values = torch.as_strided(vb, shape, stride, offset)
            self.is_initialized = True
            self.dtype, self.device = kb.dtype, kb.device

        def update(self, key_states, value_states, *args, **kwargs):
            if self._kb is None:  # not a rebuilt cache: transformers' own layer
                return super().update(key_states, value_states, *args, **kwargs)
            rows, s, old = self._rows, self._start, self._end
            end = old + key_states.shape[-2]
            kb, vb, row_len = self._kb, self._vb, self._row_len
            if end - s > row_len:  # a row's slots are full: a longer store
                row_len = end - s + _HEADROOM
                kb, vb = _store(kb, s, rows, row_len), _store(vb, s, rows, row_len)
                for new, prev in ((kb, self._kb), (vb, self._vb)):
                    dst = _rows_of(new, s, rows, row_len)
                    dst[:, : old - s] = _rows_of(prev, s, rows, self._row_len)[:, : old - s]
            _rows_of(kb, s, rows, row_len)[:, old - s : end - s] = key_states.transpose(1, 2)
            _rows_of(vb, s, rows, row_len)[:, old - s : end - s] = value_states.transpose(1, 2)
            self.adopt(kb, vb, rows, row_len, s, end)
            return self.keys, self.values

    return TailLayer


def rebuild(old, new, new_cache, headroom: int | None = None):
    """One cache for the kept old rows + the new rows, right-aligned, in fresh buffers.

    old: (cache, valid, pos, logits, keep index) or None; new: ((cache, valid, pos, logits),
    pick index: the prefill row of every new sample row) or None. Returns (cache, valid, pos,
    logits); each tensor is copied once (pad columns zeroed: masked scores times a value must
    stay finite), and each layer of the old caches is released as soon as it is copied (they
    are not used afterwards), so a rebuild holds one layer twice, not the whole cache. The
    width (every row right-aligned to the oldest column still kept) grows over a ``sample``
    call as before - the attention kernel sees the same columns - but each row stores only its
    own tail (:func:`tail_layer_class`); padded rows took one more column per decode step.
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
    width = max(v.shape[1] for _, v, _, _, _ in parts)
    # first column any row attends to (rows are right-aligned, each valid to the end; new rows
    # of the question level start with an empty tail)
    start = min(
        width - v.shape[1] + int(v.any(0).byte().argmax()) if v.any() else width
        for _, v, _, _, _ in parts
    )
    rows = sum(v.shape[0] for _, v, _, _, _ in parts)
    row_len = width - start + headroom
    cache = new_cache()
    layer_cls = tail_layer_class()
    cache.layers = [layer_cls() for _ in parts[0][0].layers]
    for li, layer in enumerate(cache.layers):
        k0, v0 = parts[0][0].layers[li].keys, parts[0][0].layers[li].values
        kb, vb = _store(k0, start, rows, row_len), _store(v0, start, rows, row_len)
        krows, vrows = _rows_of(kb, start, rows, row_len), _rows_of(vb, start, rows, row_len)
        r = 0
        for c, _, _, _, idx in parts:
            k, val = c.layers[li].keys, c.layers[li].values
            t, nb = k.shape[2], len(idx)
            lo = max(start, width - t)  # this part's first column in the store (all before: pad)
            cut = lo - (width - t)
            krows[r : r + nb, lo - start : width - start] = k[idx, :, cut:].transpose(1, 2)
            vrows[r : r + nb, lo - start : width - start] = val[idx, :, cut:].transpose(1, 2)
            r += nb
        layer.adopt(kb, vb, rows, row_len, start, width)
        for c, _, _, _, _ in parts:  # the old layer is copied: free it now, not after all layers
            c.layers[li] = type(c.layers[li])()
    valid = torch.cat([F.pad(v, (width - v.shape[1], 0), value=False) for _, v, _, _, _ in parts])
    pos = torch.cat([p for _, _, p, _, _ in parts])
    logits = torch.cat([lg for _, _, _, lg, _ in parts])
    return cache, valid, pos, logits
