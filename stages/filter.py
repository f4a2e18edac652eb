"""filter stage: select the round's training paths by method (lmsi: self-consistency vote; self:
the model's own verdict; lmsi_self: both; star/rest_em: the gold; format_only: as many random
questions as the vote keeps, one random path each) from refined.jsonl; write
rationales, the training set, its statistics (filter.json) and the vote's summary (vote.json,
the DVC metric compared across experiments)."""

import sys

from selfimprove.core.paths import round_dir, round_seed
from selfimprove.pipeline import add_round_arg, stage_main

#: filter.json's collapse monitors that vote.json repeats
COLLAPSE_KEYS = ("answer_entropy", "distinct_answers", "mean_path_tokens")


def vote_summary(stats: dict) -> dict:
    """The few numbers of filter.json worth comparing across experiments (`dvc metrics show`).

    >>> vote_summary({"selected_fraction": 0.5, "mean_agreement": 0.75, "n_kept_paths": 6})
    {'kept_fraction': 0.5, 'mean_agreement': 0.75, 'n_kept': 6}
    >>> vote_summary({"selected_fraction": 0.5, "mean_agreement": 0.75, "n_kept_paths": 6,
    ...               "answer_entropy": 0.4, "distinct_answers": 1.5, "mean_path_tokens": 40.0})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'kept_fraction': 0.5, 'mean_agreement': 0.75, 'n_kept': 6, 'answer_entropy': 0.4,
     'distinct_answers': 1.5, 'mean_path_tokens': 40.0}
    """
    return {
        "kept_fraction": stats["selected_fraction"],  # questions whose vote passed
        "mean_agreement": stats["mean_agreement"],  # majority share, averaged over questions
        "n_kept": stats["n_kept_paths"],  # paths that became training data
        # collapse monitors (methods.filter.collapse_monitors), where filter.json has them
        **{k: stats[k] for k in COLLAPSE_KEYS if k in stats},
    }


@stage_main(__doc__, add_round_arg)
def main(args, params):
    from selfimprove.core.io import read_jsonl, write_json, write_jsonl
    from selfimprove.core.timings import write_stage_json
    from selfimprove.methods.filter import filter_refined

    out = round_dir(args.round)
    records = read_jsonl(out / "refined.jsonl", required=["id", "question", "paths", "answers"])
    rationales, train, stats = filter_refined(
        records,
        params.filter,
        params.method,
        require_consistency=params.refine.require_consistency,
        rest_em_max_per_question=params.refine.rest_em_max_per_question,
        seed=round_seed(params.seed, args.round),  # format_only's draws
    )
    write_jsonl(out / "rationales.jsonl", rationales)
    write_jsonl(out / "train.jsonl", train)
    write_stage_json(out / "filter.json", stats, f"filter@{args.round}")
    write_json(out / "vote.json", vote_summary(stats))
    print(f"{args.round}: {stats}")
    if not train:
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
