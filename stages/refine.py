"""refine stage: per method, what the round's filter selects from.

lmsi, format_only: the samples unchanged. self / lmsi_self: the model's own feedback and
refinement of every sampled path (no labels). star / rest_em: which paths match the gold (these
baselines, and only they, read data/prepared/train_labels.jsonl); star also rationalizes
unsolved questions."""

from selfimprove.core.paths import TRAIN_LABELS, round_dir, round_seed
from selfimprove.pipeline import add_round_arg, stage_main


def _args(p):
    add_round_arg(p)
    p.add_argument("--model", required=True, help="the model that sampled the round's paths")


@stage_main(__doc__, _args)
def main(args, params):
    from selfimprove.core.io import read_jsonl, write_json, write_jsonl
    from selfimprove.methods.table import LABEL_METHODS, SELF_METHODS

    out = round_dir(args.round)
    samples = read_jsonl(out / "samples.jsonl", required=["id", "question", "paths", "answers"])
    method, cfg, seed = params.method, params.refine, round_seed(params.seed, args.round)
    gen = params.generate
    stats: dict = {"method": method}
    if method in SELF_METHODS:
        from selfimprove.methods.refine import refine_samples
        from selfimprove.sampling.factory import sampler_from_params

        sampler = sampler_from_params(params.sampler, args.model)
        records, more = refine_samples(sampler, samples, cfg, seed)
        stats |= more
    elif method in LABEL_METHODS:
        import logging

        from selfimprove.methods.refine import label_records, labels_by_id, star_rationalize

        if params.finetune.init != "base":
            logging.getLogger("stages.refine").warning(
                "method %s: the paper fine-tunes the base model every round; set "
                "finetune.init: base to match it (kept as configured: %s)",
                method,
                params.finetune.init,
            )

        labels_path = TRAIN_LABELS
        golds = labels_by_id(read_jsonl(labels_path, required=["id", "answer"]), str(labels_path))
        records, more = label_records(samples, golds)
        stats |= more
        if method == "star" and cfg.star_rationalization:
            from selfimprove.sampling.factory import sampler_from_params

            sampler = sampler_from_params(params.sampler, args.model)
            stats |= star_rationalize(sampler, records, cfg, gen.n_shots, seed)
    else:  # lmsi, format_only: nothing to add
        records = samples
    write_jsonl(out / "refined.jsonl", records)
    write_json(out / "refine.json", stats)
    print(f"{args.round}: {stats}")


if __name__ == "__main__":
    main()
