"""inputs stage: content digests of the files outside the repo that params.yaml names
(base_model.local_path, data.*.path, a local meta_skill.teacher_model) in data/inputs/<stage>.json;
the stage that reads them depends on its file, so new content at the same path reruns it."""

from selfimprove.pipeline import stage_main


@stage_main(__doc__)
def main(args, params):
    from selfimprove.inputs import write_inputs

    for stage, path in write_inputs(params).items():
        print(f"inputs of {stage}: {path}")


if __name__ == "__main__":
    main()
