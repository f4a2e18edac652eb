"""finetune stage: LoRA (or full) fine-tuning on the round's training set; adapter + merged."""

from selfimprove.pipeline import add_round_arg, round_dir, round_seed, stage_main


def _args(p):
    add_round_arg(p)
    p.add_argument("--prev", required=True, help="previous round (its model is the default start)")


@stage_main(__doc__, _args)
def main(args, params):
    from selfimprove.finetune import finetune
    from selfimprove.io import read_jsonl, write_json

    cfg = params.finetune
    start = round_dir("r0" if cfg.init == "base" else args.prev) / "model"
    out = round_dir(args.round)
    examples = read_jsonl(out / "train.jsonl", required=["prompt", "completion"])
    info = finetune(start, examples, out / "model", cfg, round_seed(params.seed, args.round))
    write_json(out / "finetune.json", info | {"start": start.as_posix()})
    print(f"{args.round}: {info}")


if __name__ == "__main__":
    main()
