from __future__ import annotations

import pytest
from tinyproject import varied_model

from selfimprove.core.io import InputError
from selfimprove.sampling.base import SamplingParams, find_stop, resolve_dtype, row_seed
from selfimprove.sampling.transformers_sampler import (
    TransformersSampler,
    filter_logits,
    sample_tokens,
)

torch = pytest.importorskip("torch")

PREFIX = (
    "Q: There are 15 trees in the grove. How many trees did the grove workers plant today?\n"
    "A: 21 - 15 = 6. The answer is 6.\n\n"
)
PROMPTS = [
    "Q: Jack has 5 stamps. Jack buys 1 more. How many stamps does Jack have now?\nA:",
    "Q: 1 + 1?\nA:",
    "",
    "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
    "After they are done, there will be 21 trees.\nA:",
    "Q: 7 * 3?\nA:",
]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """Tiny Llama with larger random weights: varied greedy outputs (not one repeated token)."""
    return varied_model(tmp_path_factory.mktemp("tiny"), seed=1)


@pytest.fixture(scope="session")
def sampler(model_dir):
    return TransformersSampler(model_dir, dtype="float32", batch_size=3, device="cpu")


@pytest.fixture(scope="session")
def ref_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _greedy_ref(ref_model, ids: list[int], max_new_tokens: int) -> list[int]:
    out = ref_model.generate(
        torch.tensor([ids]), do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=1
    )
    return out[0, len(ids) :].tolist()


# ---------------------------------------------------------------- pure helpers


def test_find_stop_takes_earliest_of_all_stops():
    stops = ("\n\nQ:", "\nQ:")
    assert find_stop("6.\n\nQ: x", stops) == 2
    assert find_stop("6.\nQ: x\n\nQ:", stops) == 2
    assert find_stop("Q: at start", ("Q:",)) == 0
    assert find_stop("abc", ("zz", "c")) == 2
    assert find_stop("abc", ()) is None
    assert find_stop("", stops) is None


def test_sampling_params_validation():
    SamplingParams(n=4, temperature=0.7)
    assert SamplingParams(stop=["x"]).stop == ("x",)
    with pytest.raises(InputError, match="n=4 with temperature=0"):
        SamplingParams(n=4)
    with pytest.raises(InputError, match="top_p"):
        SamplingParams(temperature=1.0, top_p=0.0)
    with pytest.raises(InputError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(InputError, match="stop"):
        SamplingParams(stop=("",))


def test_row_seed_distinct():
    seeds = {row_seed(0, q, s) for q in range(20) for s in range(8)}
    assert len(seeds) == 160
    assert row_seed(1, 0, 0) != row_seed(0, 0, 0)


def test_filter_logits_matches_transformers_warpers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    for temp, k, p in [(0.7, 0, 0.9), (1.0, 5, 1.0), (1.3, 10, 0.5), (0.5, 0, 0.05)]:
        ref = TemperatureLogitsWarper(temp)(None, logits.clone())
        if k:
            ref = TopKLogitsWarper(k)(None, ref)
        if p < 1:
            ref = TopPLogitsWarper(p)(None, ref)
        mine = filter_logits(logits, temp, k, p)
        assert torch.equal(mine.isinf(), ref.isinf()), (temp, k, p)
        finite = ~mine.isinf()
        assert torch.allclose(mine[finite], ref[finite])


def _former_filter_logits(logits, temperature, top_k=0, top_p=1.0):
    """The hand-written filter the sampler used before transformers' warpers did temperature
    and top-k (the reference they must reproduce exactly)."""
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_filter_logits_and_draws_equal_the_former_filter(dtype):
    """The warpers give exactly the former filter's logits (same -inf mask, same values), so
    the same probabilities and the same seeded per-row draws, token for token."""
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(12, 49152, generator=g) * 4).to(dtype)  # SmolLM2's vocabulary size
    settings = [(0.7, 0, 1.0), (1.0, 0, 1.0), (0.7, 40, 1.0), (0.7, 0, 0.9), (1.3, 20, 0.8)]
    for temp, k, p in settings + [(0.5, 0, 0.05), (0.9, 49152, 0.95), (0.6, 1, 1.0)]:
        new, old = filter_logits(logits, temp, k, p), _former_filter_logits(logits, temp, k, p)
        assert torch.equal(new, old), (temp, k, p)
        assert torch.equal(new.softmax(-1), old.softmax(-1))
        params = SamplingParams(temperature=temp, top_k=k, top_p=p)
        gens = [torch.Generator().manual_seed(row_seed(3, i, 0)) for i in range(len(logits))]
        drawn = sample_tokens(logits, gens, params)
        cdf = old.softmax(-1).cumsum(-1)
        u = torch.stack(
            [
                torch.rand((), generator=torch.Generator().manual_seed(row_seed(3, i, 0)))
                for i in range(len(logits))
            ]
        )
        ref = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
        assert torch.equal(drawn, ref.clamp(max=cdf.shape[-1] - 1)), (temp, k, p)


def test_sample_tokens_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    rows = 4000
    logits = probs.log().expand(rows, -1)
    gens = [torch.Generator().manual_seed(row_seed(0, i, 0)) for i in range(rows)]
    tok = sample_tokens(logits, gens, SamplingParams(temperature=1.0))
    freq = torch.bincount(tok, minlength=4).float() / rows
    assert torch.allclose(freq, probs, atol=0.03), freq
    assert freq[3] == 0


# ---------------------------------------------------------------- the sampler


def test_empty_and_bad_inputs(sampler, tmp_path):
    assert sampler.sample(PREFIX, [], SamplingParams()) == []
    with pytest.raises(InputError, match="prompt 1 is empty and so is the prefix"):
        sampler.sample("", ["Q: 1?\nA:", ""], SamplingParams())
    with pytest.raises(InputError, match="max_position_embeddings"):
        sampler.sample(PREFIX, ["Q:"], SamplingParams(max_new_tokens=5000))
    with pytest.raises(InputError, match="no config.json"):
        TransformersSampler(tmp_path)
    with pytest.raises(InputError, match="dtype='fp8'"):
        resolve_dtype("fp8", "cpu")
    assert resolve_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)


@pytest.mark.parametrize("prefix", [PREFIX, ""])
def test_greedy_matches_generate(sampler, ref_model, prefix):
    """Prompts of different lengths, batch_size 3 < 5 prompts: exercises refill + cache merging."""
    prompts = PROMPTS if prefix else [p for p in PROMPTS if p]
    params = SamplingParams(max_new_tokens=12, stop=())
    out = sampler.sample(prefix, prompts, params)
    assert [len(o) for o in out] == [1] * len(prompts)
    tok = sampler.tokenizer
    for prompt, (c,) in zip(prompts, out, strict=True):
        ref = _greedy_ref(ref_model, sampler.input_ids(prefix, prompt), 12)
        assert c.n_tokens == len(ref)
        if ref[-1] in sampler.eos_ids:
            assert c.finish_reason == "eos"
            assert c.text == tok.decode(ref[:-1], skip_special_tokens=True)
        else:
            assert c.finish_reason == "length"
            assert c.text == tok.decode(ref, skip_special_tokens=True)


@pytest.mark.parametrize("question_level", [False, True])
def test_greedy_matches_generate_through_reallocations_and_compactions(
    model_dir, ref_model, monkeypatch, question_level
):
    """Tail buffers with 2 spare columns (reallocated every 2 steps); rows that finish at
    different steps (a common token made an end token) stay until the cache is compacted, while
    new questions join: every row still gets generate's tokens (also with each question's
    prompt kept once for its rows: the cascade's third level)."""
    from collections import Counter

    from selfimprove.sampling import cascade

    monkeypatch.setattr(cascade, "_HEADROOM", 2)
    s = TransformersSampler(
        model_dir, dtype="float32", batch_size=4, device="cpu", question_level=question_level
    )
    prompts = [p for p in PROMPTS if p] * 2
    refs = [_greedy_ref(ref_model, s.input_ids(PREFIX, p), 25) for p in prompts]
    end = Counter(t for r in refs for t in set(r[2:20])).most_common(1)[0][0]
    s.eos_ids = s.eos_ids | {end}
    out = s.sample(PREFIX, prompts, SamplingParams(max_new_tokens=25, stop=()))
    lengths = set()
    for ref, (c,) in zip(refs, out, strict=True):
        cut = next((i for i, t in enumerate(ref) if t in s.eos_ids), None)
        want = ref if cut is None else ref[: cut + 1]
        lengths.add(len(want))
        assert c.n_tokens == len(want)
        text = want[:-1] if want[-1] in s.eos_ids else want
        assert c.text == s.tokenizer.decode(text, skip_special_tokens=True)
    assert len(lengths) >= 3  # rows of different ages shared the batch
    assert s.last_stats["cache_compactions"] >= 2


def test_input_ids_are_prefix_then_prompt(sampler):
    tok = sampler.tokenizer
    ids = sampler.input_ids(PREFIX, PROMPTS[1])
    assert ids == tok(PREFIX, add_special_tokens=False).input_ids + tok(PROMPTS[1]).input_ids


@pytest.mark.parametrize("span", [(8, 10), (3, 24)])
def test_stop_string_cuts_output(sampler, ref_model, span):
    """A short and a long stop string (the sampler looks for them in the last tokens' text)."""
    tok = sampler.tokenizer
    prompt = PROMPTS[0]
    ref = _greedy_ref(ref_model, sampler.input_ids(PREFIX, prompt), 30)
    full = tok.decode(ref, skip_special_tokens=True)
    stop = full[span[0] : span[1]]  # a stop string from the middle of the greedy continuation
    cut = full.find(stop)
    k = next(j for j in range(1, len(ref) + 1) if stop in tok.decode(ref[:j]))
    (c,), (c2,) = sampler.sample(PREFIX, [prompt, prompt], SamplingParams(stop=(stop, "zzzz")))
    assert c == c2
    assert c.finish_reason == "stop"
    assert c.text == full[:cut]
    assert stop not in c.text
    assert c.n_tokens == k


def test_eos_finishes_row(model_dir, ref_model):
    s = TransformersSampler(model_dir, dtype="float32", batch_size=8, device="cpu")
    ref = _greedy_ref(ref_model, s.input_ids(PREFIX, PROMPTS[1]), 10)
    eos_tok = ref[3]
    first = ref.index(eos_tok)
    s.eos_ids = {eos_tok}
    ((c,),) = s.sample(PREFIX, [PROMPTS[1]], SamplingParams(max_new_tokens=10, stop=()))
    assert c.finish_reason == "eos"
    assert c.n_tokens == first + 1
    assert c.text == s.tokenizer.decode(ref[:first], skip_special_tokens=True)


def test_sampling_reproducible_n_and_limits(sampler, model_dir):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=9, stop=("e",), seed=3)
    a = sampler.sample(PREFIX, PROMPTS, params)
    assert [len(o) for o in a] == [4] * len(PROMPTS)
    assert a == sampler.sample(PREFIX, PROMPTS, params)
    for cs in a:
        for c in cs:
            assert 1 <= c.n_tokens <= 9
            assert "e" not in c.text
            assert c.finish_reason in ("stop", "eos", "length")
            if c.finish_reason == "length":
                assert c.n_tokens == 9
    reasons = {c.finish_reason for cs in a for c in cs}
    assert {"stop", "length"} <= reasons
    texts = {c.text for cs in a for c in cs}
    assert len(texts) > len(PROMPTS)  # samples differ from each other
    # another seed gives other samples
    other = sampler.sample(PREFIX, PROMPTS, SamplingParams(**{**params.__dict__, "seed": 4}))
    assert other != a
    # per-row random streams: same result whatever the batching (n split over batches of 2,
    # or everything in one batch of 64)
    for bs in (2, 64):
        s = TransformersSampler(model_dir, dtype="float32", batch_size=bs, device="cpu")
        assert s.sample(PREFIX, PROMPTS, params) == a


def test_top_k_one_equals_greedy(sampler):
    greedy = sampler.sample(PREFIX, PROMPTS[:2], SamplingParams(max_new_tokens=8))
    topk1 = sampler.sample(
        PREFIX, PROMPTS[:2], SamplingParams(n=2, temperature=0.9, top_k=1, max_new_tokens=8)
    )
    for g, t in zip(greedy, topk1, strict=True):
        assert t == [g[0], g[0]]


def test_index_offset_keeps_global_seeds(sampler):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=7, stop=(), seed=9)
    full = sampler.sample(PREFIX, PROMPTS, params)
    tail = sampler.sample(PREFIX, PROMPTS[2:], params, index_offset=2)
    assert tail == full[2:]
    # without the offset, the same prompts get other seeds
    assert sampler.sample(PREFIX, PROMPTS[2:], params) != full[2:]
    with pytest.raises(InputError, match="index_offset=-1"):
        sampler.sample(PREFIX, PROMPTS, params, index_offset=-1)
    # one index per prompt: two sets pooled in one call, each question keeping its own seeds
    pooled = sampler.sample(PREFIX, PROMPTS[:2] + PROMPTS[:3], params, index_offset=[0, 1, 0, 1, 2])
    assert pooled[:2] == full[:2] and pooled[2:] == full[:3]
    with pytest.raises(InputError, match="1 indices for 2 prompts"):
        sampler.sample(PREFIX, PROMPTS[:2], params, index_offset=[0])


def test_last_stats_split_the_time(sampler):
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, stop=())
    out = sampler.sample(PREFIX, PROMPTS, params)
    st = sampler.last_stats
    assert st["prompts"] == len(PROMPTS) and st["rows"] == 2 * len(PROMPTS)
    assert st["generated_tokens"] == sum(c.n_tokens for cs in out for c in cs)
    assert st["prefix_tokens"] == len(sampler.input_ids(PREFIX, "")) - 1  # last one is carried
    assert st["decode_steps"] >= 5 and 1 <= st["mean_decode_batch"] <= sampler.batch_size
    assert st["suffix_prefill_calls"] >= 4  # 10 rows through batches of 3
    parts = ("prefix_prefill_s", "suffix_prefill_s", "decode_s", "other_s")
    assert all(st[k] >= 0 for k in parts) and st["decode_s"] > 0 and st["prefix_prefill_s"] > 0
    assert sum(st[k] for k in parts) == pytest.approx(st["wall_s"], abs=2e-3)
    sampler.sample(PREFIX, [], params)
    assert sampler.last_stats == {}


def _ref_probs(ref_model, ids, temperature, top_k=0, top_p=1.0):
    """Next-token probabilities of the plain model, filtered by transformers' own warpers."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    with torch.no_grad():
        logits = ref_model(torch.tensor([ids])).logits[:, -1, :]
    logits = TemperatureLogitsWarper(temperature)(None, logits)
    if top_k:
        logits = TopKLogitsWarper(top_k)(None, logits)
    if top_p < 1:
        logits = TopPLogitsWarper(top_p)(None, logits)
    return logits.softmax(-1)[0]


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.8, 6, 1.0), (1.0, 0, 0.6)])
def test_first_token_follows_the_reference_distribution(
    model_dir, ref_model, temperature, top_k, top_p
):
    """The prefix-cache path samples from the same next-token distribution as the plain model."""
    s = TransformersSampler(model_dir, dtype="float32", batch_size=500, device="cpu")
    prompt = PROMPTS[0]
    n = 3000
    params = SamplingParams(
        n=n, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=1, stop=(), seed=1
    )
    (outs,) = s.sample(PREFIX, [prompt], params)
    probs = _ref_probs(ref_model, s.input_ids(PREFIX, prompt), temperature, top_k, top_p)
    tok = s.tokenizer
    want: dict[str, float] = {}
    for t in probs.nonzero().flatten().tolist():
        text = "" if t in s.eos_ids else tok.decode([t], skip_special_tokens=True)
        want[text] = want.get(text, 0.0) + float(probs[t])
    got: dict[str, float] = {}
    for c in outs:
        got[c.text] = got.get(c.text, 0.0) + 1 / n
    assert set(got) <= set(want)  # never a token outside top-k / top-p
    assert len(want) >= 2  # a real distribution, not a single token
    for text, p in want.items():
        assert abs(got.get(text, 0.0) - p) < 0.035, (text, p, got.get(text))


def test_two_token_samples_match_generate_distribution(model_dir, ref_model):
    """Joint law of 2-token continuations: ours vs model.generate(do_sample=True), same prompt."""
    s = TransformersSampler(model_dir, dtype="float32", batch_size=512, device="cpu")
    prompt = PROMPTS[1]
    n = 3000
    params = SamplingParams(n=n, temperature=0.9, top_k=3, max_new_tokens=2, stop=(), seed=2)
    (outs,) = s.sample(PREFIX, [prompt], params)
    ids = torch.tensor([s.input_ids(PREFIX, prompt)])
    torch.manual_seed(0)
    with torch.no_grad():
        ref = ref_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=0.9,
            top_k=3,
            top_p=1.0,
            num_return_sequences=n,
            max_new_tokens=2,
            pad_token_id=1,
        )[:, ids.shape[1] :].tolist()
    tok = s.tokenizer

    def text(row):
        row = row[: next((i for i, t in enumerate(row) if t in s.eos_ids), len(row))]
        return tok.decode(row, skip_special_tokens=True)

    ours: dict[str, int] = {}
    theirs: dict[str, int] = {}
    for c in outs:
        ours[c.text] = ours.get(c.text, 0) + 1
    for row in ref:
        t = text(row)
        theirs[t] = theirs.get(t, 0) + 1
    assert len(theirs) >= 3
    for key in set(ours) | set(theirs):
        assert abs(ours.get(key, 0) - theirs.get(key, 0)) / n < 0.045, (key, ours, theirs)


def _padded_rebuild(widths: list[int]):
    """The cache layout before the tail store: every row padded (zeros) to the widest column
    ever kept, in plain transformers layers (``widths`` records each rebuilt width)."""
    import torch.nn.functional as F
    from transformers.cache_utils import DynamicLayer

    def rebuild(old, new, new_cache, headroom=None):
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
        widths.append(width)
        cache = new_cache()
        cache.layers = [DynamicLayer() for _ in parts[0][0].layers]
        for li, layer in enumerate(cache.layers):
            ks, vs = [], []
            for c, _, _, _, idx in parts:
                k, val = c.layers[li].keys[idx], c.layers[li].values[idx]
                ks.append(F.pad(k, (0, 0, width - k.shape[2], 0)))
                vs.append(F.pad(val, (0, 0, width - val.shape[2], 0)))
            layer.keys, layer.values = torch.cat(ks), torch.cat(vs)
            layer.is_initialized, layer.dtype, layer.device = True, ks[0].dtype, ks[0].device
        valid = torch.cat([F.pad(v, (width - v.shape[1], 0), value=False) for _, v, *_ in parts])
        return (
            cache,
            valid,
            torch.cat([p for _, _, p, _, _ in parts]),
            torch.cat([lg for _, _, _, lg, _ in parts]),
        )

    return rebuild


@pytest.mark.parametrize("question_level", [False, True])
def test_tail_store_stays_bounded_and_outputs_bit_identical(model_dir, monkeypatch, question_level):
    """Over many compactions, each row of the tail
    store holds its tail + the steps until the next compaction, while padded rows grew one column
    per decode step; the seeded samples are bit-identical to the padded layout's (with or
    without the per-question level)."""
    from selfimprove.sampling import cascade
    from selfimprove.sampling import transformers_sampler as ts

    s = TransformersSampler(
        model_dir, dtype="float32", batch_size=4, device="cpu", question_level=question_level
    )
    prompts = [f"Q: {i} + {i % 7}?\nA:" for i in range(90)]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=3)

    import weakref

    real_store = cascade._store
    live = {"now": 0, "peak": 0, "max_guard": 0}

    def counted_store(like, guard, rows, row_len):  # the bytes the stores hold at once
        buf = real_store(like, guard, rows, row_len)
        size = buf.numel() * buf.element_size()
        live["now"] += size
        live["peak"] = max(live["peak"], live["now"])
        live["max_guard"] = max(live["max_guard"], guard)
        weakref.finalize(buf, lambda: live.__setitem__("now", live["now"] - size))
        return buf

    def run():
        monkeypatch.setattr(cascade, "STORE_STATS", {"buffers": 0, "bytes": 0, "max_width": 0})
        out = s.sample(PREFIX, prompts, params)
        return [[(c.text, c.n_tokens) for c in cs] for cs in out], dict(cascade.STORE_STATS)

    monkeypatch.setattr(cascade, "_store", counted_store)
    fixed, stats = run()
    monkeypatch.setattr(cascade, "_store", real_store)
    steps = s.last_stats["decode_steps"]
    assert s.last_stats["cache_compactions"] > 50
    # a row's slots: its tail (carry token + prompt + tokens so far) + steps to the next
    # compaction (<= max_new_tokens) + headroom
    longest_tail = max(len(s._encode(p)) + 2 for p in prompts) + 16
    bound = longest_tail + 16 + cascade._HEADROOM
    assert stats["max_width"] <= bound
    head_bytes = 2 * 16 * 4  # kv heads x head_dim x float32 bytes of the tiny model
    # + a guard for row 0's pad columns (one row's worth: at most the width, <= decode steps)
    assert stats["bytes"] <= stats["buffers"] * (steps + 4 * bound) * head_bytes
    # held at once, over all the compactions: one cache's stores (keys and values of every
    # layer) + one layer's pair twice (a rebuild frees each old layer as it copies it, a full
    # row moves to a longer store) -- not a store per compaction, and all freed at the end
    layers = s.model.config.num_hidden_layers
    assert live["max_guard"] <= steps
    assert live["peak"] <= (2 * layers + 2) * (live["max_guard"] + 4 * bound) * head_bytes
    assert stats["bytes"] > 20 * live["peak"] and live["now"] == 0
    widths: list[int] = []
    monkeypatch.setattr(ts, "rebuild", _padded_rebuild(widths))
    padded, _ = run()
    assert max(widths) > 4 * bound  # the padded rows' width: about one column per decode step
    assert fixed == padded


def test_question_level_samples_like_the_default(model_dir):
    """The per-question level moves only float rounding: seeded fp32 samples of the tiny model
    are the default layout's, and it refuses a non-CPU device."""
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=5)
    prompts = [p for p in PROMPTS if p]
    outs = []
    for level in (False, True):
        s = TransformersSampler(
            model_dir, dtype="float32", batch_size=4, device="cpu", question_level=level
        )
        outs.append(
            [[(c.text, c.n_tokens) for c in cs] for cs in s.sample(PREFIX, prompts, params)]
        )
    assert outs[0] == outs[1]
    with pytest.raises(InputError, match="CPU only"):
        TransformersSampler(model_dir, dtype="float32", device="meta", question_level=True)
