"""meta_skill stage: round 0's model -- the warm model fine-tuned on SELF's meta-skill corpus
(feedback + refinement on the labeled seed set) for method self/lmsi_self, else a plain copy."""

from selfimprove.core.paths import SEED, WARM_MODEL, round_dir
from selfimprove.pipeline import stage_main


@stage_main(__doc__)
def main(args, params):
    from selfimprove.core.io import read_jsonl, write_json, write_jsonl
    from selfimprove.methods.meta_skill import meta_skill
    from selfimprove.methods.table import SELF_METHODS

    seed_records = []
    if params.method in SELF_METHODS:
        seed_records = read_jsonl(SEED, required=["id", "question", "answer"])
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
        sampler_cfg=params.sampler,
    )
    write_jsonl(out / "meta_skill.jsonl", corpus)
    write_json(out / "meta_skill.json", info)
    print(f"r0 meta-skill: {info}")


if __name__ == "__main__":
    main()
