"""evaluate_refine stage: inference-time self-refinement of a round's greedy CoT outputs
(``evaluate.refine_iterations`` > 0), for the evaluate stage to score; ``{}`` when off."""

from selfimprove.core.io import write_json
from selfimprove.core.paths import round_dir
from selfimprove.evaluation.refine_at_eval import refine_for_evaluation
from selfimprove.pipeline import add_round_arg, load_eval_sets, stage_main


@stage_main(__doc__, add_round_arg)
def main(args, params):
    out = round_dir(args.round)
    refined = {}
    if params.evaluate.refine_iterations:
        refined = refine_for_evaluation(
            out / "model",
            load_eval_sets(params.evaluate.sets),
            params.evaluate,
            params.seed,
            refine=params.refine,
            sampler_cfg=params.sampler,
        )
    write_json(out / "eval_refined.json", refined)
    print(f"{args.round}: refined {sorted(refined)}")


if __name__ == "__main__":
    main()
