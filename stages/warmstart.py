"""warmstart stage: the warm model (data/models/warm) -- the base model, or the base fine-tuned on
the labeled seed; the meta_skill stage turns it into round 0's model."""

from selfimprove.core.paths import BASE_MODEL, SEED, WARM_MODEL, round_dir
from selfimprove.pipeline import stage_main


@stage_main(__doc__)
def main(args, params):
    from selfimprove.core.io import read_jsonl
    from selfimprove.core.timings import write_stage_json
    from selfimprove.training.warmstart import warmstart

    seed_records = read_jsonl(SEED, required=["id", "question", "answer"])
    info = warmstart(BASE_MODEL, seed_records, WARM_MODEL, params.warmstart, params.seed)
    write_stage_json(round_dir("r0") / "warmstart.json", info, "warmstart")


if __name__ == "__main__":
    main()
