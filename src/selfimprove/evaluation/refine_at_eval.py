"""Inference-time self-refinement for the evaluate step (``evaluate.refine_iterations`` > 0).

Its own stage (``evaluate_refine``, before ``evaluate``) runs it, so that the evaluate stage
does not import the refine step's code (``methods/refine.py``, ``methods/feedback.py``): editing
that code reruns this stage, and the evaluate stage only when the refined outputs change (with
``refine_iterations: 0``, the default, they are always ``{}``).

For every GSM8K-format set and chain-of-thought style, it makes the greedy outputs the way the
evaluate step does (the same pooled sampler call with the same parameters), rewrites them with
the refine step's feedback/refine loop (:func:`selfimprove.methods.refine.refine_outputs`, with
the ``refine`` section's prompts and token budgets, ``max_iterations`` =
``evaluate.refine_iterations``) and returns ``{"<set>__<style>": {"ids", "outputs", "refine"}}``
(``refine``: the loop's stats). The evaluate step scores those outputs as ``<style>_refined``
beside the plain ones; nothing is scored here.
"""

from __future__ import annotations

from pathlib import Path

from selfimprove.config.evaluation import EvaluateConfig
from selfimprove.config.methods import RefineConfig
from selfimprove.config.runtime import SamplerConfig
from selfimprove.core.answers import STOP_SEQUENCES
from selfimprove.evaluation.evaluate import _greedy, _pooled_pass, refined_styles, set_format
from selfimprove.methods.refine import refine_outputs
from selfimprove.sampling import factory  # factory.sampler_from_params: tests replace it


def refine_for_evaluation(
    model_dir: str | Path,
    eval_sets: dict[str, list[dict]],
    cfg: EvaluateConfig,
    seed: int,
    refine: RefineConfig | None = None,
    sampler_cfg: SamplerConfig | None = None,
) -> dict[str, dict]:
    """The refined greedy outputs of every GSM8K-format set and CoT style (see the module
    docstring); ``{}`` without loading a model when nothing is to be refined.

    ``refine``: the ``refine`` params section (``None`` = its defaults); ``sampler_cfg``: the
    ``sampler`` section, as for :func:`selfimprove.evaluation.evaluate.evaluate`.
    """
    sets = {n: r for n, r in eval_sets.items() if r and set_format(r, n) == "gsm"}
    styles = refined_styles(cfg)
    if not sets or not styles:
        return {}
    sampler = factory.sampler_from_params(sampler_cfg, model_dir)
    limited = {n: (r[: cfg.limit] if cfg.limit else r) for n, r in sets.items()}
    rcfg = (refine or RefineConfig()).model_copy(update={"max_iterations": cfg.refine_iterations})
    out: dict[str, dict] = {}
    for style in styles:
        greedy = _pooled_pass(
            sampler, "gsm", limited, style, cfg, _greedy(cfg, seed, STOP_SEQUENCES), style
        )
        for name, records in limited.items():
            plain = [o[0].text for o in greedy[name]]
            questions = [r["question"] for r in records]
            refined, stats = refine_outputs(sampler, questions, plain, rcfg, seed)
            out[f"{name}__{style}"] = {
                "ids": [r["id"] for r in records],
                "outputs": refined,
                "refine": stats,
            }
    return out
