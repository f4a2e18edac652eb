"""filter stage: select the round's training paths from refined.jsonl as the method's recipe says
(selfimprove.recipes; lmsi: self-consistency vote; self: the model's own verdict; lmsi_self: both;
star/rest_em: the gold; format_only: as many random questions as the vote keeps, one random path
each; scpo: most- vs least-voted preference pairs); write
rationales, the training set, the preference pairs (pairs.jsonl; empty unless the recipe makes
pairs), its statistics (filter.json) and the vote's summary (vote.json, the DVC metric compared
across experiments)."""

import sys

from selfimprove.core.paths import round_dir, round_seed
from selfimprove.pipeline import add_round_arg, stage_main


@stage_main(__doc__, add_round_arg)
def main(args, params):
    from selfimprove.core.io import read_jsonl, write_json, write_jsonl
    from selfimprove.core.timings import write_stage_json
    from selfimprove.methods.filter import select, vote_summary
    from selfimprove.recipes import get_recipe

    out = round_dir(args.round)
    records = read_jsonl(out / "refined.jsonl", required=["id", "question", "paths", "answers"])
    recipe = get_recipe(params.method)
    rationales, train, stats = select(
        records,
        recipe,
        params.filter,
        recipe.knobs(params),
        seed=round_seed(params.seed, args.round),  # format_only's draws
    )
    pairs = []
    if recipe.pairs is not None:  # the pair counts are in stats already (the recipe's plan)
        pairs, _ = recipe.pairs(records, params.filter, recipe.knobs(params))
    write_jsonl(out / "rationales.jsonl", rationales)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "pairs.jsonl", pairs)
    write_stage_json(out / "filter.json", stats, f"filter@{args.round}")
    write_json(out / "vote.json", vote_summary(stats))
    print(f"{args.round}: {stats}")
    if not train and not pairs:
        print(
            f"warning: {args.round}: the filter kept no training examples ({len(records)} "
            f"questions, method {params.method}; see {out / 'filter.json'}); finetune will "
            "record this round as skipped. With a vote (lmsi, lmsi_self): lower "
            "filter.min_agreement or sample more paths (generate.num_paths)",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    main()
