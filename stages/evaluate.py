"""evaluate stage: held-out accuracy of a round's model (greedy per style, maj@k) with 95%
bootstrap intervals and the label-free self-consistency agreement, and the predictions.

Writes every figure to scores.json and its headline (one accuracy per set and style) to
metrics.json, the DVC metric (selfimprove.evaluation.headline)."""

import json

from selfimprove.core.paths import round_dir
from selfimprove.pipeline import add_round_arg, load_eval_sets, stage_main


@stage_main(__doc__, add_round_arg)
def main(args, params):
    from selfimprove.core.io import atomic_path, write_json, write_jsonl
    from selfimprove.evaluation.evaluate import evaluate
    from selfimprove.evaluation.headline import METRICS_FILE, SCORES_FILE, headline
    from selfimprove.evaluation.intervals import annotate_metrics

    out = round_dir(args.round)
    sets = load_eval_sets(params.evaluate.sets)
    refined = None  # inference-time refinement: the evaluate_refine stage's outputs
    if params.evaluate.refine_iterations:
        refined = json.loads((out / "eval_refined.json").read_text(encoding="utf-8"))
    metrics, predictions = evaluate(
        out / "model",
        sets,
        params.evaluate,
        params.seed,
        refined=refined,
        sampler_cfg=params.sampler,
        compute=params.compute,
    )
    # 95% intervals next to every accuracy, the label-free sc agreement (from the predictions)
    metrics = annotate_metrics(metrics, predictions, params.stats)
    with atomic_path(out / "eval", is_dir=True) as tmp:
        for name, preds in predictions.items():
            write_jsonl(tmp / f"{name}.jsonl", preds)
    write_json(out / SCORES_FILE, metrics)
    write_json(out / METRICS_FILE, headline(metrics))
    print(f"{args.round}: {headline(metrics)}")


if __name__ == "__main__":
    main()
