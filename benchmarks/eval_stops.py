"""What extra stop strings would do to an evaluate run, computed offline from its completions.

Reads the completions ``benchmarks/eval_profile.py --dump FILE`` wrote, cuts each one at the
first of the candidate stops (what the sampler would have returned with those stops: a greedy
row or a seeded sampled row produces the same tokens up to where it stops), re-scores every set
with the evaluate functions and prints, per candidate, the generated tokens it saves and every
metric that moves. ``--reference metrics.json`` first checks the uncut re-scoring reproduces it.

    python benchmarks/eval_profile.py --dump /tmp/r0.jsonl --metrics /tmp/r0.json
    python benchmarks/eval_stops.py /tmp/r0.jsonl --reference /tmp/r0.json \\
        --candidates '{"new_answer": {"gsm": ["\\nA:"]}, "blank_line": {"gsm": ["\\n\\n"]}}'

A candidate maps ``gsm`` / ``drop`` (every pass of that format) or ``gsm_<style>`` /
``drop_<style>`` / ``gsm_maj`` / ``drop_maj`` (one pass) to extra stop strings.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def flat(d: dict, prefix: str = "") -> dict:
    """Leaves of nested metrics as ``a.b`` keys.

    >>> flat({"s": {"fewshot_cot": {"strict": 0.5}}})
    {'s.fewshot_cot.strict': 0.5}
    """
    out = {}
    for k, v in d.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump", type=Path)
    ap.add_argument("--candidates", default="{}", help="JSON: name -> {pass: [stops]}")
    ap.add_argument("--reference", type=Path, default=None)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="data/models/base", help="tokenizer for token counts")
    ap.add_argument("--limit", type=int, default=None, help="the run's evaluate.limit")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from selfimprove.config import load_params
    from selfimprove.core.answers import extract_answer, gold_answer
    from selfimprove.evaluation.evaluate import (
        drop_self_consistency,
        score_drop_prediction,
        score_prediction,
        self_consistency,
        summarize,
        summarize_drop,
    )
    from selfimprove.evaluation.metrics.drop import extract_drop_answer
    from selfimprove.pipeline import load_eval_sets
    from selfimprove.sampling.base import find_stop

    tok = AutoTokenizer.from_pretrained(args.model)
    cfg = load_params(args.params).evaluate
    sets = load_eval_sets(None)
    calls: dict = defaultdict(lambda: defaultdict(list))
    for line in args.dump.open():
        r = json.loads(line)
        name, style = r["desc"].removeprefix("eval ").split("/")
        calls[(name, style)][r["i"]].append(r)  # "a+b/style": a pooled pass, sets in order

    def rescore(extra_for) -> tuple[dict, int, int]:
        metrics: dict = defaultdict(dict)
        tokens = saved = 0
        for (name, style), by_q in calls.items():
            names = name.split("+")
            drop = "passage" in sets[names[0]][0]
            kind = "maj" if style.startswith("maj@") else style
            extra = extra_for(drop, kind)
            texts = []
            for i in sorted(by_q):
                row = []
                for r in sorted(by_q[i], key=lambda r: r["j"]):
                    text, tokens = r["text"], tokens + r["n_tokens"]
                    cut = find_stop(text, extra) if extra else None
                    if cut is not None:
                        stop = min((s for s in extra if text.find(s) == cut), key=len)
                        n = len(tok(text[: cut + len(stop)], add_special_tokens=False).input_ids)
                        saved += max(0, r["n_tokens"] - n)
                        text = text[:cut]
                    row.append(text)
                texts.append(row)
            start = 0
            for one in names:
                recs = sets[one][: len(texts) if kind == "maj" else args.limit]
                part, start = texts[start : start + len(recs)], start + len(recs)
                if kind == "maj" and drop:
                    answers = [[extract_drop_answer(t) for t in q] for q in part]
                    golds = [r["answers"] for r in recs]
                    sc = drop_self_consistency(answers, golds, cfg.sc_k)
                    metrics[one]["sc"] = {"n": len(recs)} | sc
                elif kind == "maj":
                    answers = [[extract_answer(t) for t in q] for q in part]
                    golds = [gold_answer(r["answer"]) for r in recs]
                    sc = self_consistency(answers, golds, cfg.sc_k)
                    metrics[one]["sc"] = {"n": len(recs)} | sc
                elif drop:
                    pairs = zip(part, recs, strict=True)
                    scored = [score_drop_prediction(q[0], r["answers"]) for q, r in pairs]
                    metrics[one][style] = summarize_drop(scored)
                else:
                    pairs = zip(part, recs, strict=True)
                    scored = [score_prediction(q[0], r["answer"]) for q, r in pairs]
                    metrics[one][style] = summarize(scored)
        return flat(metrics), tokens, saved

    base, tokens, _ = rescore(lambda drop, kind: ())
    result: dict = {"tokens": tokens, "candidates": {}}
    if args.reference:
        result["reproduces_reference"] = flat(json.loads(args.reference.read_text())) == base
    for name, spec in json.loads(args.candidates).items():

        def extra_for(drop, kind, spec=spec):
            fmt = "drop" if drop else "gsm"
            return tuple(spec.get(f"{fmt}_{kind}", spec.get(fmt, [])))

        new, _, saved = rescore(extra_for)
        moved = {k: [base[k], new[k]] for k in base if abs(base[k] - new[k]) > 1e-12}
        result["candidates"][name] = {
            "stops": spec,
            "saved_tokens": saved,
            "saved_fraction": round(saved / tokens, 4) if tokens else 0.0,
            "moved": moved,
            "max_abs_change": max((abs(a - b) for a, b in moved.values()), default=0.0),
        }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
