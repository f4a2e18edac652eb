"""Fast batched sampling of many completions per prompt with a shared few-shot prefix.

LMSI samples ``m`` chain-of-thought paths for every question, all behind the same few-shot
prefix. :class:`TransformersSampler` avoids the waste of a naive
``model.generate(num_return_sequences=m)`` per question:

* the prefix is run through the model **once** per :meth:`TransformersSampler.sample` call; its
  keys/values are kept as a single copy and attended to by every row through a custom attention
  function ("cascade" attention: scores against the shared prefix and against the row's own tail
  are merged in one softmax), so the prefix is neither recomputed nor copied per row;
* each question's suffix (``"Q: ...\\nA:"``) is prefilled once and its cache is shared by its
  ``n`` sample rows (with ``question_level``, on CPU, its keys/values are kept once for them:
  a third level of the cascade, :class:`~selfimprove.sampling.cascade.QuestionKV`, and each
  row's tail holds only its generated tokens);
* rows stop at the first stop string, at EOS or at ``max_new_tokens``; freed slots are refilled
  with the next (length-sorted) questions (continuous batching), so the batch stays full;
* the rows' tail keys/values live in per-layer buffers with spare columns, so a decode step
  writes its new column in place instead of copying the whole cache (``torch.cat``); finished
  rows are dropped lazily - the cache is compacted (one copy) only when enough slots are free for
  new questions, or when a quarter of the batch is finished rows - since a copy of the cache
  costs about as much as a decode step;
* a stop string is looked for only in the text of a row's last few tokens (enough tokens to hold
  the longest stop string's bytes), not in its whole decoded text at every step.

The cache of the active rows holds only their tails (generated tokens; suffix + generated tokens
with ``question_level`` off), right-aligned: ``[pad ... pad | generated]``; pad columns are
masked out. Every row carries its own
position ids, so rows of different questions and ages share one batch.

Reproducibility: every row (prompt ``i``, sample ``j``) draws its random numbers from its own
``torch.Generator`` seeded from ``(params.seed, index_offset + i, j)``. The same seed, inputs,
model, dtype and machine give identical outputs; changing ``batch_size`` (or the other prompts in
the call) changes only the floating-point rounding of the logits, so outputs are the same up to
rare near-tie flips. ``index_offset`` lets a caller that splits its prompts into shards keep the
global index of each prompt in its seed (shard size or a resume then does not move the seeds).

After each :meth:`TransformersSampler.sample` call, ``sampler.last_stats`` says where the time
went: prefix prefill (once), suffix prefill (once per question), decode forward passes, and the
rest (sampling, stop checks, cache bookkeeping).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from selfimprove.core.cache import cache_kwarg
from selfimprove.core.heap import release_heap
from selfimprove.core.io import InputError
from selfimprove.sampling.base import (
    Completion,
    SamplingParams,
    bos_ids,
    find_stop,
    resolve_dtype,
    row_seed,
    seed_indices,
)
from selfimprove.sampling.cascade import (
    ACTIVE_PREFIX,
    ACTIVE_QUESTIONS,
    ATTN_NAME,
    DECODE_KERNEL,
    PACKED_PREFIX,
    merge_questions,
    rebuild,
    register_attention,
)
from selfimprove.sampling.decode_kernel import choose as decode_kernel_choice
from selfimprove.sampling.decode_kernel import choose_prefix as prefix_kernel_choice
from selfimprove.sampling.decode_kernel import pack_prefix
from selfimprove.sampling.packed import pack_linears

log = logging.getLogger(__name__)

# where TransformersSampler.sample spends its time (see ``last_stats``)
_TIMERS = ("prefix_prefill_s", "suffix_prefill_s", "decode_s")


def filter_logits(logits, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """Scale ``logits`` [rows, vocab] by 1/temperature and mask (-inf) tokens outside top-k/top-p.

    In ``generate``'s order: temperature, then top-k (transformers' logits warpers: stateless,
    so a custom decode loop can call them), then top-p: keep the smallest set of most likely
    tokens whose probability reaches ``top_p``. Top-p stays ours because transformers'
    TopPLogitsWarper sums the probabilities in ascending order, whose rounding over a 49k
    vocabulary moves the nucleus boundary in some rows (and breaks ties otherwise), which would
    change the seeded draws of existing top_p < 1 runs.

    >>> import torch
    >>> x = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    >>> filter_logits(x, 1.0, top_k=2).isinf().tolist()
    [[False, False, True, True]]
    >>> filter_logits(x, 1.0, top_p=0.6).isinf().tolist()
    [[False, True, True, True]]
    """
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

    logits = TemperatureLogitsWarper(temperature)(None, logits.float())
    if top_k > 0:
        logits = TopKLogitsWarper(top_k)(None, logits)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p (always keep the first)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits, generators: list, params: SamplingParams):
    """Next token per row: argmax if greedy, else one draw per row from that row's generator.

    Sampling inverts the CDF with one uniform number per row, so a row's draw depends only on
    its own generator (not on the other rows of the batch).

    >>> import torch
    >>> x = torch.tensor([[0.0, 5.0, 1.0]])
    >>> sample_tokens(x, [None], SamplingParams()).tolist()
    [1]
    >>> g = [torch.Generator().manual_seed(0)]
    >>> sample_tokens(x, g, SamplingParams(temperature=1.0, top_k=1)).tolist()
    [1]
    """
    import torch

    if params.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits, params.temperature, params.top_k, params.top_p).softmax(-1)
    cdf = probs.cumsum(-1)
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(cdf.device)
    # side="right": the first index whose cdf exceeds u * total; never a zero-probability token
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp_(max=cdf.shape[-1] - 1)


def _empty_tails(cache):
    """A stand-in for ``cache`` with no columns: the rows of the question level start with an
    empty tail (their question's keys/values are in the QuestionKV)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        layers=[
            SimpleNamespace(keys=ly.keys[:, :, :0], values=ly.values[:, :, :0])
            for ly in cache.layers
        ]
    )


class TransformersSampler:
    """Sample ``n`` completions of ``prefix + prompt`` for many prompts with a transformers model.

    The model input for a prompt is ``ids(prefix) + ids(prompt)``: both are tokenized without
    special tokens, and the tokenizer's BOS is put in front of the prefix only when the tokenizer
    adds one by default (e.g. Llama-2); see :meth:`input_ids`.

    ``question_level``: keep each question's prompt once for its rows (the cascade's third
    level; CPU only) instead of in every row's tail. Off by default: it changes the rounding of
    the attention, so seeded samples differ from the default's (greedy fp32 outputs stay those
    of ``generate``); docs/speed.md has its measured effect.

    ``decode_kernel``: a decode step's attention over the rows' tails through
    :mod:`selfimprove.sampling.decode_kernel` (CPU, bf16, AVX-512; built at first use) instead
    of torch's flash kernel: faster, equal up to rounding (other bf16 samples). ``auto`` (the
    default) uses it where the model's decode steps fit it and it builds
    (:func:`selfimprove.sampling.decode_kernel.choose`); ``self.decode_kernel`` is the choice.

    ``prefix_kernel`` (``sampler.prefix_kernel``): the shared prefix's part of every step's
    attention through :func:`selfimprove.sampling.decode_kernel.attend_prefix` (AVX512-BF16
    dot products; CPU, bf16, head_dim 64) instead of torch's flash kernel: equal up to
    rounding, other bf16 samples than False. ``auto`` (the default): where it can run; True
    where it cannot is an :class:`InputError`; ``self.prefix_kernel`` is the choice.
    """

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "auto",
        batch_size: int = 32,
        device: str | None = None,
        question_level: bool = False,
        decode_kernel: bool | str = "auto",
        prefix_kernel: bool | str = "auto",
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise InputError(
                f"{model_dir}: no config.json, not a model folder; check the path "
                "(or run the stage that downloads/converts the base model)"
            )
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size} must be >= 1")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        if question_level and self.device != "cpu":
            raise InputError(f"question_level=True runs on CPU only, not on {self.device}")
        self.question_level = question_level
        if decode_kernel is True:  # refused before the model loads, when it cannot run here
            decode_kernel_choice(True, None, None, self.device)
        register_attention()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=self.dtype, attn_implementation=ATTN_NAME
        ).to(self.device)
        self.model.eval()
        # CPU bf16: linear weights packed once for oneDNN where that gives the same bits
        self.packed_linears = pack_linears(self.model)
        # whether decode steps go through selfimprove's kernel, and why (recorded in last_stats)
        self.decode_kernel, self.decode_kernel_why = decode_kernel_choice(
            decode_kernel, self.model.config, self.dtype, self.device
        )
        log.info("%s", self.decode_kernel_why)
        self.prefix_kernel, self.prefix_kernel_why = prefix_kernel_choice(
            prefix_kernel, self.model.config, self.dtype, self.device
        )
        self._packed: tuple = (None, None)  # (prefix_kv, its packed form) of the last call
        self.model_dir = model_dir
        self._cache_kwarg = cache_kwarg(self.model)

        eos: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source is not None:
                eos.update(int(x) for x in source)
        self.eos_ids = eos
        tok = self.tokenizer
        self._bos = bos_ids(tok)
        self.last_stats: dict = {}
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)

    # ------------------------------------------------------------------ tokenization
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def input_ids(self, prefix: str, prompt: str) -> list[int]:
        """The exact token ids the model is conditioned on for ``prefix + prompt``."""
        return self._bos + self._encode(prefix) + self._encode(prompt)

    # ------------------------------------------------------------------ model calls
    def _new_cache(self):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if any(cache.is_sliding) or any(getattr(cache, "is_linear", [])):
            raise InputError(
                f"{self.model_dir}: the model has sliding-window or linear-attention layers; "
                "TransformersSampler supports full-attention decoder models (Llama, Qwen2, ...)"
            )
        return cache

    def _forward(self, ids, positions, mask, cache, prefix_kv, questions=None):
        token = ACTIVE_PREFIX.set(prefix_kv)
        qtoken = ACTIVE_QUESTIONS.set(questions)
        ktoken = DECODE_KERNEL.set(self.decode_kernel)
        ptoken = PACKED_PREFIX.set(self._packed_prefix(prefix_kv))
        try:
            out = self.model(
                input_ids=ids,
                position_ids=positions,
                attention_mask=mask,
                **{self._cache_kwarg: cache},
                use_cache=True,
                logits_to_keep=1,
            )
        finally:
            PACKED_PREFIX.reset(ptoken)
            DECODE_KERNEL.reset(ktoken)
            ACTIVE_QUESTIONS.reset(qtoken)
            ACTIVE_PREFIX.reset(token)
        return out.logits[:, -1, :].float()

    def _packed_prefix(self, prefix_kv):
        """``prefix_kv`` packed for the prefix kernel (once per prefix), or None (flash)."""
        if not self.prefix_kernel or prefix_kv is None:
            return None
        if self._packed[0] is not prefix_kv:
            self._packed = (prefix_kv, pack_prefix(prefix_kv))
        return self._packed[1]

    def _prefix_kv(self, ids: list[int]):
        """Run the prefix once; return per-layer (keys, values) [Hkv, P, D], or None if empty."""
        import torch

        if not ids:
            return None
        n = len(ids)
        x = torch.tensor([ids], device=self.device)
        pos = torch.arange(n, device=self.device).unsqueeze(0)
        mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril().view(1, 1, n, n)
        cache = self._new_cache()
        self._forward(x, pos, mask, cache, None)
        return [(layer.keys[0], layer.values[0]) for layer in cache.layers]

    def _prefill(self, suffixes: list[list[int]], start: int, prefix_kv):
        """Prefill left-padded suffixes after the prefix -> (cache, valid, next_pos, logits)."""
        import torch

        dev = self.device
        k = len(suffixes)
        width = max(len(s) for s in suffixes)
        ids = torch.full((k, width), self._pad_id, dtype=torch.long)
        valid = torch.zeros(k, width, dtype=torch.bool)
        pos = torch.full((k, width), start, dtype=torch.long)
        for i, s in enumerate(suffixes):
            ids[i, width - len(s) :] = torch.tensor(s)
            valid[i, width - len(s) :] = True
            pos[i, width - len(s) :] = torch.arange(start, start + len(s))
        ids, valid, pos = ids.to(dev), valid.to(dev), pos.to(dev)
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        eye = torch.eye(width, dtype=torch.bool, device=dev)
        # pad queries see themselves only (keeps their unused states finite)
        mask = (causal.unsqueeze(0) & valid.unsqueeze(1)) | eye.unsqueeze(0)
        cache = self._new_cache()
        logits = self._forward(ids, pos, mask.unsqueeze(1), cache, prefix_kv)
        next_pos = torch.tensor([start + len(s) for s in suffixes], device=dev)
        return cache, valid, next_pos, logits

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        prefix: str,
        prompts: list[str],
        params: SamplingParams,
        desc: str = "sampling",
        index_offset: int | list[int] = 0,
    ) -> list[list[Completion]]:
        """For each prompt, ``params.n`` completions of ``prefix + prompt`` (in prompt order).

        Prompt ``i`` samples with the seeds of global index ``index_offset + i``: sampling
        prompts ``[k:]`` with ``index_offset=k`` gives the completions of sampling all prompts
        (up to rounding flips from the different batch mix), so callers can work in shards.
        A list gives each prompt its own global index (a caller pooling several sets keeps
        each question's index in its set).
        """
        self.last_stats = {}
        if not prompts:
            return []
        import torch
        from tqdm import tqdm

        if not isinstance(params, SamplingParams):
            raise InputError(f"params must be a SamplingParams, got {type(params).__name__}")
        seed_index = seed_indices(index_offset, len(prompts))
        t_start = time.perf_counter()
        timers = dict.fromkeys(_TIMERS, 0.0)
        with torch.inference_mode():
            prefix_ids = self._bos + self._encode(prefix)
            # keep the last prefix token out of the shared cache: every suffix then has >= 1
            # token (an empty prompt works) and its first logits come from the suffix prefill
            shared, carry = prefix_ids[:-1], prefix_ids[-1:]
            suffixes = []
            for i, p in enumerate(prompts):
                s = carry + self._encode(p)
                if not s:
                    raise InputError(
                        f"prompt {i} is empty and so is the prefix: nothing to condition on; "
                        "give a prefix or a non-empty prompt"
                    )
                suffixes.append(s)
            longest = len(shared) + max(len(s) for s in suffixes) + params.max_new_tokens
            if self.max_positions and longest > self.max_positions:
                raise InputError(
                    f"prefix + longest prompt + max_new_tokens = {longest} tokens exceeds the "
                    f"model's max_position_embeddings={self.max_positions}; shorten the few-shot "
                    "prefix or lower max_new_tokens"
                )
            t = time.perf_counter()
            prefix_kv = self._prefix_kv(shared)
            self._sync()
            timers["prefix_prefill_s"] = time.perf_counter() - t
            bar = tqdm(total=len(prompts), desc=desc, unit="q", file=sys.stderr, mininterval=1.0)
            try:
                results, counts = self._run(
                    suffixes, len(shared), prefix_kv, params, bar, seed_index, timers
                )
            finally:
                bar.close()
                release_heap()
        wall = time.perf_counter() - t_start
        timers["other_s"] = max(0.0, wall - sum(timers.values()))
        self.last_stats = {
            "prompts": len(prompts),
            "rows": len(prompts) * params.n,
            "prefix_tokens": len(shared),
            "suffix_tokens": sum(len(s) for s in suffixes),
            **counts,
            **{k: round(v, 4) for k, v in timers.items()},
            "wall_s": round(wall, 4),
            "decode_kernel": self.decode_kernel,
            "prefix_kernel": self.prefix_kernel,
        }
        self._packed = (None, None)  # not kept past the call
        return results

    def _sync(self) -> None:
        """Wait for queued GPU work, so the timers measure it (a no-op on CPU)."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def _tail_text(self, gen: list[int], chars: int) -> str:
        """The decoded text of the last tokens of ``gen``: at least ``chars`` characters, or all.

        Enough to find a stop string completed by the newest token (the caller then cuts the
        whole text), without decoding the whole row at every step.
        """
        w = chars
        text = self.tokenizer.decode(gen[-w:], skip_special_tokens=True)
        while len(text) < chars and w < len(gen):
            w *= 2
            text = self.tokenizer.decode(gen[-w:], skip_special_tokens=True)
        return text

    def _run(self, suffixes, start, prefix_kv, params: SamplingParams, bar, seed_index, timers):
        import torch

        n, bs = params.n, self.batch_size
        decode_steps = decode_rows = prefills = compactions = 0
        # work units: (prompt index, sample indices); a prompt is split only if n > batch_size
        order = sorted(range(len(suffixes)), key=lambda i: (len(suffixes[i]), i))
        units = [(qi, list(range(j, min(j + bs, n)))) for qi in order for j in range(0, n, bs)]
        units.reverse()  # pop() from the end = shortest first
        results: list[list[Completion | None]] = [[None] * n for _ in suffixes]
        left = [n] * len(suffixes)
        # new rows join when this many slots are free (one unit at least): each join copies the
        # cache once, so at a large batch_size several questions join together
        join_at = max(1, bs // 4)
        waiting = sum(len(u[1]) for u in units)  # rows not yet admitted
        # a stop string is searched for in the text of a row's last `window` tokens: a token
        # holds at least one byte, so this covers the longest stop string's bytes and one more
        longest_stop = max((len(x.encode()) for x in params.stop), default=0)
        stop_chars = longest_stop + 2

        # batch rows (python side, aligned with the batch dimension); finished rows stay until
        # the next compaction (alive[r] False), computed but ignored
        rows_q: list[int] = []
        rows_s: list[int] = []
        rows_gen: list[list[int]] = []
        rows_rng: list = []
        rows_slot: list[int] = []  # each row's question slot (question level)
        questions = None  # the QuestionKV of the batch (question level)
        alive: list[bool] = []
        n_alive = 0
        cache = None
        valid = pos = logits = None
        generated = 0
        t0 = time.perf_counter()

        while units or n_alive:
            # 1. admit new work once enough slots are free; drop finished rows on the way
            free = bs - n_alive
            admit = []
            if units and free >= min(max(join_at, len(units[-1][1])), waiting):
                taken = 0
                while units and taken + len(units[-1][1]) <= free:
                    taken += len(units[-1][1])
                    admit.append(units.pop())
                waiting -= taken
            dead = len(rows_q) - n_alive
            if admit or (dead and 4 * dead >= len(rows_q)):
                t = time.perf_counter()
                keep = [r for r in range(len(rows_q)) if alive[r]]
                rows_q = [rows_q[r] for r in keep]
                rows_s = [rows_s[r] for r in keep]
                rows_gen = [rows_gen[r] for r in keep]
                rows_rng = [rows_rng[r] for r in keep]
                kept_slots = sorted({rows_slot[r] for r in keep})
                renumber = {s: i for i, s in enumerate(kept_slots)}
                rows_slot = [renumber[rows_slot[r]] for r in keep]
                alive = [True] * len(keep)
                new = new_q = None
                if admit:
                    prefills += 1
                    qs = sorted({u[0] for u in admit})
                    where = {q: i for i, q in enumerate(qs)}
                    new = self._prefill([suffixes[q] for q in qs], start, prefix_kv)
                    pick = [where[q] for q, samples in admit for _ in samples]
                    if self.question_level:  # the prompt once per unit, the rows' tails empty
                        c, v, p, lg = new
                        units_pick = [where[q] for q, _ in admit]
                        new_q = (c, v, torch.tensor(units_pick, device=self.device))
                        new = (_empty_tails(c), v[:, :0], p, lg)
                    new = (new, torch.tensor(pick, device=self.device))
                    for slot, (q, samples) in enumerate(admit, start=len(kept_slots)):
                        for s in samples:
                            rows_slot.append(slot)
                            rows_q.append(q)
                            rows_s.append(s)
                            rows_gen.append([])
                            seed = row_seed(params.seed, seed_index[q], s)
                            rows_rng.append(torch.Generator().manual_seed(seed))
                            alive.append(True)
                old = None
                if cache is not None and keep:
                    old = (cache, valid, pos, logits, torch.tensor(keep, device=self.device))
                compactions += cache is not None
                if self.question_level:
                    questions = merge_questions(questions, kept_slots, new_q, rows_slot)
                cache, valid, pos, logits = rebuild(old, new, self._new_cache)
                n_alive = len(rows_q)
                self._sync()
                key = "suffix_prefill_s" if admit else "decode_s"
                timers[key] += time.perf_counter() - t
                if cache is None:
                    continue

            # 2. sample one token per live row
            live = [r for r in range(len(rows_q)) if alive[r]]
            if len(live) < len(rows_q):
                idx = torch.tensor(live, device=self.device)
                picked = sample_tokens(logits[idx], [rows_rng[r] for r in live], params).tolist()
                tokens = [self._pad_id] * len(rows_q)
                for r, tok in zip(live, picked, strict=True):
                    tokens[r] = tok
            else:
                tokens = sample_tokens(logits, rows_rng, params).tolist()
            for r in live:
                gen = rows_gen[r]
                tok = tokens[r]
                gen.append(tok)
                generated += 1
                done = None
                if tok in self.eos_ids:  # the text before it was checked for stops already
                    text = self.tokenizer.decode(gen[:-1], skip_special_tokens=True)
                    done = Completion(text, len(gen), "eos")
                else:
                    hit = (
                        bool(params.stop)
                        and find_stop(self._tail_text(gen, stop_chars), params.stop) is not None
                    )
                    if hit or len(gen) >= params.max_new_tokens:
                        text = self.tokenizer.decode(gen, skip_special_tokens=True)
                        cut = find_stop(text, params.stop) if hit else None
                        if cut is not None:
                            done = Completion(text[:cut], len(gen), "stop")
                        elif len(gen) >= params.max_new_tokens:
                            done = Completion(text, len(gen), "length")
                if done is None:
                    continue
                alive[r] = False
                n_alive -= 1
                q = rows_q[r]
                results[q][rows_s[r]] = done
                left[q] -= 1
                if left[q] == 0:
                    bar.update(1)
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(tok_s=f"{generated / elapsed:.1f}", refresh=False)
            if not n_alive and not units:
                break
            if not n_alive:
                continue  # every row finished: the next pass admits new work

            # 3. one decode step for every row (finished ones too, until they are dropped)
            t = time.perf_counter()
            x = torch.tensor(tokens, device=self.device).unsqueeze(1)
            valid = torch.cat([valid, valid.new_ones(len(tokens), 1)], dim=1)
            mask = valid.view(len(tokens), 1, 1, -1)
            logits = self._forward(x, pos.unsqueeze(1), mask, cache, prefix_kv, questions)
            self._sync()
            timers["decode_s"] += time.perf_counter() - t
            decode_steps += 1
            decode_rows += len(tokens)
            step = torch.tensor(alive, device=self.device)  # finished rows keep their position
            pos = pos + step
        counts = {
            "generated_tokens": generated,
            "suffix_prefill_calls": prefills,
            "decode_steps": decode_steps,
            "mean_decode_batch": round(decode_rows / decode_steps, 2) if decode_steps else 0.0,
            "cache_compactions": compactions,
        }
        return results, counts
