"""base_model stage: materialize the starting model as a safetensors folder (data/models/base)."""

from selfimprove.core.paths import BASE_MODEL
from selfimprove.pipeline import stage_main


@stage_main(__doc__)
def main(args, params):
    from selfimprove.training.base_model import check_source, materialize

    check_source(params.base_model)
    info = materialize(params.base_model, BASE_MODEL)
    print(f"base model ready in {BASE_MODEL}: {info}")


if __name__ == "__main__":
    main()
