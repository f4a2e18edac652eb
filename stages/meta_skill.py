"""meta_skill stage: round 0's model -- the warm model fine-tuned on SELF's meta-skill corpus
(feedback + refinement on the labeled seed set) for method self/lmsi_self, else a plain copy."""

from selfimprove.core.paths import SEED, WARM_MODEL, round_dir
from selfimprove.pipeline import stage_main


@stage_main(__doc__)
def main(args, params):
    from selfimprove.core.io import read_jsonl, write_jsonl
    from selfimprove.core.timings import write_stage_json
    from selfimprove.methods.meta_skill import meta_skill
    from selfimprove.recipes import get_recipe

    seed_records = []
    if get_recipe(params.method).needs_seed_set:
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
    write_stage_json(out / "meta_skill.json", info, "meta_skill")
    print(f"r0 meta-skill: {info}")


if __name__ == "__main__":
    main()
