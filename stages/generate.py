"""generate stage: m chain-of-thought paths per unlabeled question from the previous model.

Many machines: set ``generate.ray_address`` (or export ``RAY_ADDRESS``) and the shards are
sampled by actors on that Ray cluster, one sampler per GPU (``selfimprove.methods.ray_generate``);
samples.jsonl is the same as a single-process run's. Finished shards are kept in
data/rounds/rK/samples.shards/ until the stage ends, so a killed run resumes from them.
"""

import shutil

from selfimprove.core.paths import TRAIN, round_dir, round_seed
from selfimprove.pipeline import add_round_arg, stage_main


def _args(p):
    add_round_arg(p)
    p.add_argument("--model", required=True, help="model folder to sample from")


@stage_main(__doc__, _args)
def main(args, params):
    from selfimprove.core.io import read_jsonl, write_jsonl
    from selfimprove.core.timings import write_stage_json
    from selfimprove.methods.generate import generate

    questions = read_jsonl(TRAIN, required=["id", "question"])
    out = round_dir(args.round)
    shards = out / "samples.shards"  # resume state of a killed run; not a DVC output
    records, stats = generate(
        args.model,
        questions,
        params.generate,
        round_seed(params.seed, args.round),
        shard_dir=shards,
        sampler_cfg=params.sampler,
        compute=params.compute,
    )
    write_jsonl(out / "samples.jsonl", records)
    write_stage_json(out / "generate.json", stats, f"generate@{args.round}")
    shutil.rmtree(shards, ignore_errors=True)
    print(f"{args.round}: {stats}")


if __name__ == "__main__":
    main()
