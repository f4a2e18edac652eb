"""filter stage: self-consistency vote; keep agreeing paths; write rationales and the training set."""

from selfimprove.pipeline import add_round_arg, round_dir, stage_main


@stage_main(__doc__, add_round_arg)
def main(args, params):
    from selfimprove.filter import filter_samples
    from selfimprove.io import read_jsonl, write_json, write_jsonl

    out = round_dir(args.round)
    samples = read_jsonl(out / "samples.jsonl", required=["id", "question", "paths", "answers"])
    rationales, train, stats = filter_samples(samples, params.filter)
    write_jsonl(out / "rationales.jsonl", rationales)
    write_jsonl(out / "train.jsonl", train)
    write_json(out / "filter.json", stats)
    print(f"{args.round}: {stats}")


if __name__ == "__main__":
    main()
