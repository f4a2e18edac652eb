"""SELF's meta-skill learning (before round 1): teach the model to give feedback and to refine.

From the small *labeled* seed set (``data.seed_set``; labels are used here and only here, as in
SELF) the round-0 model samples ``n_initial`` answers per question; a teacher
(:mod:`selfimprove.teachers`) writes feedback on each; the refined answer is the correct
solution (:func:`selfimprove.training.warmstart.solution_to_rationale`). The corpus gives three
kinds of training examples, all in the prompt formats the rounds use later
(:mod:`selfimprove.feedback`):

* feedback: (question, answer) -> feedback + verdict line -- the prompt has *no* reference
  answer, so the model learns to judge unlabeled questions;
* refinement: (question, answer, feedback, "Verdict: incorrect") -> the correct solution (only
  for answers the teacher judged incorrect);
* the seed QA pairs themselves (question -> solution) in ``qa_formats``.

The model is fine-tuned on them (:func:`selfimprove.training.finetune.finetune`) and becomes round
0's model. For methods that do not use SELF (lmsi, star, rest_em) the step copies the model.
"""

from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path

from selfimprove.config.methods import MetaSkillConfig
from selfimprove.config.runtime import SamplerConfig
from selfimprove.core.answers import answers_match, extract_answer, gold_answer
from selfimprove.core.io import InputError
from selfimprove.core.prompts.feedback import build_feedback_prompt, build_refine_prompt
from selfimprove.core.verdict import Feedback, feedback_completion, one_line

log = logging.getLogger(__name__)


def build_corpus(
    seed_records: list[dict],
    initial: list[list[str]],
    feedbacks: list[list[Feedback | None]],
    teacher: str = "rule",
    drop_false_approvals: bool = True,
) -> tuple[list[dict], dict]:
    """The meta-skill corpus: one record per (seed question, distinct initial answer) with
    usable teacher feedback. Returns ``(corpus, stats)``.

    ``initial[i]`` are the answers sampled for ``seed_records[i]``, ``feedbacks[i]`` the
    teacher's feedback on them (``None`` = no feedback, counted in ``n_no_feedback``).
    Identical answers of one question are kept once (``n_duplicates``).

    >>> from selfimprove.core.arith_check import check_solution
    >>> seed = [{"id": "s0", "question": "Tom has 3 apples and buys 2. How many?",
    ...          "answer": "Tom has 3 + 2 = <<3+2=5>>5 apples.\\n#### 5"}]
    >>> answers = [["3 + 2 = 6. The answer is 6.", "3 + 2 = 5. The answer is 5.", "x"]]
    >>> fbs = [[check_solution("", a, "5") for a in answers[0][:2]] + [None]]
    >>> corpus, stats = build_corpus(seed, answers, fbs)
    >>> [(c["verdict"], c["initial_correct"]) for c in corpus]
    [(False, False), (True, True)]
    >>> corpus[0]["refined_answer"]
    'Tom has 3 + 2 = 5 apples. The answer is 5.'
    >>> stats["n_items"], stats["n_no_feedback"], stats["n_corpus"]
    (3, 1, 2)
    """
    from selfimprove.training.warmstart import solution_to_rationale

    if len(initial) != len(seed_records) or len(feedbacks) != len(seed_records):
        raise InputError(
            f"build_corpus: {len(seed_records)} seed records but {len(initial)} answer lists "
            f"and {len(feedbacks)} feedback lists; pass one list per seed question"
        )
    corpus: list[dict] = []
    n_items = n_none = n_dup = n_false = 0
    for rec, answers, fbs in zip(seed_records, initial, feedbacks, strict=True):
        gold = gold_answer(rec["answer"])
        refined = solution_to_rationale(rec["answer"])
        seen: set[str] = set()
        for answer, fb in zip(answers, fbs, strict=True):
            n_items += 1
            text = one_line(answer)
            if text in seen:
                n_dup += 1
                continue
            seen.add(text)
            if fb is None:
                n_none += 1
                continue
            pred = extract_answer(text)
            right = answers_match(pred, gold)
            if drop_false_approvals and fb.verdict and not right:
                n_false += 1
                continue
            corpus.append(
                {
                    "id": rec["id"],
                    "question": rec["question"],
                    "gold": gold,
                    "initial_answer": text,
                    "initial_pred": pred,
                    "initial_correct": right,
                    "feedback": fb.text,
                    "verdict": fb.verdict,
                    "first_error": fb.first_error,
                    "refined_answer": refined,
                    "teacher": teacher,
                }
            )
    n = len(corpus)
    stats = {
        "n_seed": len(seed_records),
        "n_items": n_items,
        "n_duplicates": n_dup,
        "n_no_feedback": n_none,
        "no_feedback_rate": round(n_none / n_items, 4) if n_items else 0.0,
        "n_false_approvals": n_false,
        "n_corpus": n,
        "n_verdict_correct": sum(c["verdict"] for c in corpus),
        "n_verdict_incorrect": sum(not c["verdict"] for c in corpus),
        "initial_accuracy": round(sum(c["initial_correct"] for c in corpus) / n, 4) if n else 0.0,
        "verdict_agreement": round(sum(c["verdict"] == c["initial_correct"] for c in corpus) / n, 4)
        if n
        else 0.0,
    }
    return corpus, stats


def corpus_examples(
    corpus: list[dict],
    seed_records: list[dict],
    n_shots: int = 3,
    qa_formats: list[str] | tuple[str, ...] = ("fewshot_cot", "zeroshot_cot"),
    qa_n_shots: int = 4,
    balance_verdicts: bool = False,
    seed: int = 0,
) -> list[dict]:
    """Training examples ``{"id", "format", "prompt", "completion"}`` of the corpus: feedback
    (format ``feedback``), refinement (``refine``, verdict incorrect only), seed QA pairs.
    ``balance_verdicts``: keep only as many 'incorrect' feedback examples as 'correct' ones
    (a seeded choice); every refinement example stays.

    >>> corpus = [{"id": "s0", "question": "Q?", "initial_answer": "2 + 2 = 5.",
    ...            "feedback": "The step is wrong.", "verdict": False,
    ...            "refined_answer": "2 + 2 = 4. The answer is 4."}]
    >>> ex = corpus_examples(corpus, [], n_shots=0, qa_formats=[])
    >>> for e in ex:
    ...     print(e["format"], repr(e["completion"]))
    feedback ' The step is wrong.\\nVerdict: incorrect'
    refine ' 2 + 2 = 4. The answer is 4.'
    >>> ex[1]["prompt"].endswith("Verdict: incorrect\\nRefined answer:")
    True
    >>> ok = dict(corpus[0], initial_answer="2 + 2 = 4.", feedback="Correct.", verdict=True)
    >>> ex = corpus_examples([corpus[0], corpus[0], ok], [], 0, [], balance_verdicts=True)
    >>> [(e["format"], e["completion"].split()[-1]) for e in ex]
    [('refine', '4.'), ('feedback', 'incorrect'), ('refine', '4.'), ('feedback', 'correct')]
    """
    import random

    from selfimprove.training.warmstart import seed_examples

    keep_feedback = set(range(len(corpus)))
    if balance_verdicts:
        wrong = [i for i, c in enumerate(corpus) if not c["verdict"]]
        n_ok = len(corpus) - len(wrong)
        if len(wrong) > n_ok:
            keep_feedback -= set(wrong) - set(random.Random(seed).sample(wrong, n_ok))
    out = []
    for i, c in enumerate(corpus):
        prefix, suffix = build_feedback_prompt(c["question"], c["initial_answer"], n_shots)
        if i in keep_feedback:
            out.append(
                {
                    "id": c["id"],
                    "format": "feedback",
                    "prompt": prefix + suffix,
                    "completion": feedback_completion(c["feedback"], c["verdict"]),
                }
            )
        if not c["verdict"]:
            prefix, suffix = build_refine_prompt(
                c["question"], c["initial_answer"], c["feedback"], n_shots
            )
            out.append(
                {
                    "id": c["id"],
                    "format": "refine",
                    "prompt": prefix + suffix,
                    "completion": " " + c["refined_answer"],
                }
            )
    if qa_formats:
        out.extend(seed_examples(seed_records, list(qa_formats), qa_n_shots))
    return out


def sample_initial(sampler, seed_records: list[dict], cfg: MetaSkillConfig, seed: int) -> list:
    """``cfg.n_initial`` few-shot CoT answers per seed question (texts)."""
    from selfimprove.core.prompts import build_prompt
    from selfimprove.sampling.base import SamplingParams

    prefix = build_prompt("", "fewshot_cot", cfg.n_shots)[0]
    suffixes = [build_prompt(r["question"], "fewshot_cot", cfg.n_shots)[1] for r in seed_records]
    params = SamplingParams(
        n=cfg.n_initial,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        seed=seed,
    )
    outs = sampler.sample(prefix, suffixes, params, desc="meta-skill initial answers")
    return [[c.text.strip() for c in o] for o in outs]


def copy_model(model_dir: Path, out_dir: Path) -> None:
    """Copy a model folder (atomically)."""
    from selfimprove.core.io import atomic_path

    with atomic_path(out_dir, is_dir=True) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)


def meta_skill(
    model_dir: str | Path,
    seed_records: list[dict],
    out_dir: str | Path,
    cfg: MetaSkillConfig,
    method: str,
    seed: int,
    n_shots: int = 3,
    feedback_max_new_tokens: int = 64,
    teacher=None,
    sampler=None,
    sampler_cfg: SamplerConfig | None = None,
) -> tuple[list[dict], dict]:
    """Round 0's model in ``out_dir``: ``model_dir`` fine-tuned on the meta-skill corpus
    (method self/lmsi_self), else a copy. Returns ``(corpus, info)``.

    ``n_shots`` / ``feedback_max_new_tokens`` are the refine step's (``refine.n_shots``,
    ``refine.feedback_max_new_tokens``): the corpus uses the prompts the rounds use.
    ``teacher`` / ``sampler`` override the configured ones (tests). ``sampler_cfg``: the
    ``sampler`` params section (``None`` = its defaults; an lm teacher samples with it too).
    """
    from selfimprove.recipes import get_recipe

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not get_recipe(method).needs_seed_set:
        copy_model(model_dir, out_dir)
        return [], {"enabled": False, "method": method, "n_corpus": 0}
    if not seed_records:
        raise InputError(
            f"method {method!r} learns its meta-skills from labeled seed questions, but "
            "data/prepared/seed.jsonl is empty; set data.seed_set (e.g. {source: arith, n: 64})"
        )
    from selfimprove.methods.teachers import make_teacher

    if teacher is None:  # checked (endpoint health, model folder) before any sampling
        teacher = make_teacher(
            cfg,
            n_shots=cfg.teacher_n_shots,
            max_new_tokens=feedback_max_new_tokens,
            sampler_cfg=sampler_cfg,
        )
    own_sampler = sampler is None
    if own_sampler:
        from selfimprove.sampling.factory import sampler_from_params

        sampler = sampler_from_params(sampler_cfg, model_dir)
    initial = sample_initial(sampler, seed_records, cfg, seed)
    if own_sampler:
        del sampler
        gc.collect()
    if cfg.judge_gold_solution:  # approvals for the corpus: the teacher judges the gold too
        from selfimprove.training.warmstart import solution_to_rationale

        initial = [
            [*answers, solution_to_rationale(r["answer"])]
            for r, answers in zip(seed_records, initial, strict=True)
        ]
    items = [
        {"question": r["question"], "answer": a, "gold": r["answer"]}
        for r, answers in zip(seed_records, initial, strict=True)
        for a in answers
    ]
    flat = teacher.feedback(items)
    if len(flat) != len(items):
        raise InputError(
            f"teacher {teacher.name!r} returned {len(flat)} feedbacks for {len(items)} answers"
        )
    if hasattr(teacher, "close"):
        teacher.close()
    feedbacks, k = [], 0
    for answers in initial:
        feedbacks.append(flat[k : k + len(answers)])
        k += len(answers)
    corpus, stats = build_corpus(
        seed_records, initial, feedbacks, cfg.teacher, cfg.drop_false_approvals
    )
    if not corpus:
        raise InputError(
            f"meta-skill corpus is empty: teacher {cfg.teacher!r} gave no usable feedback on "
            f"{stats['n_items']} answers ({stats['n_no_feedback']} without feedback, "
            f"{stats['n_false_approvals']} false approvals dropped); check the teacher (its "
            "replies must end with 'Verdict: correct' or 'Verdict: incorrect') or use "
            "meta_skill.teacher: rule"
        )
    examples = corpus_examples(
        corpus, seed_records, n_shots, cfg.qa_formats, cfg.n_shots, cfg.balance_verdicts, seed
    )
    from selfimprove.training.finetune import finetune

    info = finetune(model_dir, examples, out_dir, cfg.finetune, seed)
    counts = {
        f"n_examples_{fmt}": sum(e["format"] == fmt for e in examples)
        for fmt in ("feedback", "refine", *cfg.qa_formats)
    }
    head = {"enabled": True, "method": method, "teacher": cfg.teacher}
    errors = {"teacher_errors": getattr(teacher, "n_errors", 0)}
    return corpus, head | stats | errors | counts | {"finetune": info}
