"""warmstart stage: the warm model (data/models/warm) -- the base model, or the base fine-tuned on
the labeled seed; the meta_skill stage turns it into round 0's model."""

from pathlib import Path

from selfimprove.pipeline import BASE_MODEL, PREPARED, round_dir, stage_main

WARM_MODEL = Path("data/models/warm")


@stage_main(__doc__)
def main(args, params):
    from selfimprove.io import read_jsonl, write_json
    from selfimprove.warmstart import warmstart

    seed_records = read_jsonl(PREPARED / "seed.jsonl", required=["id", "question", "answer"])
    info = warmstart(BASE_MODEL, seed_records, WARM_MODEL, params.warmstart, params.seed)
    write_json(round_dir("r0") / "warmstart.json", info)


if __name__ == "__main__":
    main()
