"""generate stage: m chain-of-thought paths per unlabeled question from the previous model.

Split across processes/machines (outside DVC): run ``python -m stages.generate --round rK
--model M --worker-index i --num-workers n`` for i = 0..n-1 (e.g. one per GPU); each samples
its share of the shards into data/rounds/rK/samples.shards/. Then ``dvc repro`` (or this
command with ``--merge-only``) reads them all back into samples.jsonl, equal to a single run.
"""

import shutil

from selfimprove.core.paths import TRAIN, round_dir, round_seed
from selfimprove.pipeline import add_round_arg, stage_main


def _args(p):
    add_round_arg(p)
    p.add_argument("--model", required=True, help="model folder to sample from")
    p.add_argument(
        "--worker-index",
        type=int,
        default=0,
        help="this worker's index i: samples shards k with k %% num_workers == i into "
        "samples.shards/ and writes no samples.jsonl (with --num-workers > 1)",
    )
    p.add_argument(
        "--num-workers", type=int, default=1, help="number of workers splitting the shards"
    )
    p.add_argument(
        "--merge-only",
        action="store_true",
        help="sample nothing: merge the workers' shards into samples.jsonl (fails if any is "
        "missing)",
    )


@stage_main(__doc__, _args)
def main(args, params):
    from selfimprove.core.io import read_jsonl, write_json, write_jsonl
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
        worker=args.worker_index,
        num_workers=args.num_workers,
        merge_only=args.merge_only,
    )
    if args.num_workers > 1:
        print(
            f"{args.round}: worker {args.worker_index}/{args.num_workers} done "
            f"({len(records)} questions in {shards}); merge with `dvc repro` or --merge-only"
        )
        return
    write_jsonl(out / "samples.jsonl", records)
    write_json(out / "generate.json", stats)
    shutil.rmtree(shards, ignore_errors=True)
    print(f"{args.round}: {stats}")


if __name__ == "__main__":
    main()
