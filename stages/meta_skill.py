"""meta_skill stage: round 0's model -- the warm model fine-tuned on SELF's meta-skill corpus
(feedback + refinement on the labeled seed set) for method self/lmsi_self, else a plain copy."""

from selfimprove.pipeline import PREPARED, round_dir, stage_main
from stages.warmstart import WARM_MODEL


@stage_main(__doc__)
def main(args, params):
    from selfimprove.filter import SELF_METHODS
    from selfimprove.io import read_jsonl, write_json, write_jsonl
    from selfimprove.meta_skill import meta_skill

    seed_records = []
    if params.method in SELF_METHODS:
        seed_records = read_jsonl(PREPARED / "seed.jsonl", required=["id", "question", "answer"])
    out = round_dir("r0")
    corpus, info = meta_skill(
        WARM_MODEL,
        seed_records,
        out / "model",
        params.meta_skill,
        params.method,
        params.seed,
        n_shots=params.refine.n_shots,
        feedback_max_new_tokens=params.refine.feedback_max_new_tokens,
    )
    write_jsonl(out / "meta_skill.jsonl", corpus)
    write_json(out / "meta_skill.json", info)
    print(f"r0 meta-skill: {info}")


if __name__ == "__main__":
    main()
