"""generate stage: m chain-of-thought paths per unlabeled question from the previous model."""

import shutil

from selfimprove.pipeline import PREPARED, add_round_arg, round_dir, round_seed, stage_main


def _args(p):
    add_round_arg(p)
    p.add_argument("--model", required=True, help="model folder to sample from")


@stage_main(__doc__, _args)
def main(args, params):
    from selfimprove.generate import generate
    from selfimprove.io import read_jsonl, write_json, write_jsonl

    questions = read_jsonl(PREPARED / "train.jsonl", required=["id", "question"])
    out = round_dir(args.round)
    shards = out / "samples.shards"  # resume state of a killed run; not a DVC output
    records, stats = generate(
        args.model,
        questions,
        params.generate,
        round_seed(params.seed, args.round),
        shard_dir=shards,
    )
    write_jsonl(out / "samples.jsonl", records)
    write_json(out / "generate.json", stats)
    shutil.rmtree(shards, ignore_errors=True)
    print(f"{args.round}: {stats}")


if __name__ == "__main__":
    main()
