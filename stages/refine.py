"""refine stage: what the round's filter selects from, as the method's recipe says
(selfimprove.recipes, `Recipe.refine`).

none (lmsi, format_only): the samples unchanged. self_refine (self, lmsi_self): the model's own
feedback and refinement of every sampled path (no labels). gold (star, rest_em): which paths match
the gold (these baselines, and only they, read data/prepared/train_labels.jsonl); star also
rationalizes unsolved questions (star.rationalization)."""

from selfimprove.core.paths import TRAIN_LABELS, round_dir, round_seed
from selfimprove.pipeline import add_round_arg, stage_main


def _args(p):
    add_round_arg(p)
    p.add_argument("--model", required=True, help="the model that sampled the round's paths")


@stage_main(__doc__, _args)
def main(args, params):
    import logging

    from selfimprove.core.io import read_jsonl, write_jsonl
    from selfimprove.core.timings import write_stage_json
    from selfimprove.methods.refine import labels_by_id, refine_round
    from selfimprove.recipes import get_recipe

    out = round_dir(args.round)
    samples = read_jsonl(out / "samples.jsonl", required=["id", "question", "paths", "answers"])
    recipe, gen = get_recipe(params.method), params.generate
    if recipe.init is not None and params.finetune.init != recipe.init:
        logging.getLogger("stages.refine").warning(
            "method %s: the paper fine-tunes the %s model every round; set "
            "finetune.init: %s to match it (kept as configured: %s)",
            recipe.name,
            recipe.init,
            recipe.init,
            params.finetune.init,
        )

    def sampler():
        from selfimprove.sampling.factory import sampler_from_params

        return sampler_from_params(params.sampler, args.model)

    def golds() -> dict:
        return labels_by_id(read_jsonl(TRAIN_LABELS, required=["id", "answer"]), str(TRAIN_LABELS))

    knobs = recipe.knobs(params)
    records, more = refine_round(
        recipe.refine,
        samples,
        params.refine,
        round_seed(params.seed, args.round),
        sampler=sampler,
        golds=golds,
        rationalize=recipe.rationalize is not None and recipe.rationalize(knobs),
        n_shots=gen.n_shots,
    )
    stats = {"method": recipe.name} | more
    write_jsonl(out / "refined.jsonl", records)
    write_stage_json(out / "refine.json", stats, f"refine@{args.round}")
    print(f"{args.round}: {stats}")


if __name__ == "__main__":
    main()
