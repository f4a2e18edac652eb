"""data stage: unlabeled training questions, labeled held-out sets and the optional seed set."""

from selfimprove.core.paths import PREPARED
from selfimprove.pipeline import stage_main


@stage_main(__doc__)
def main(args, params):
    from selfimprove.data.prepare import prepare

    stats = prepare(params.data, PREPARED, params.data_seed)  # data.seed, or the global seed
    print(f"data ready in {PREPARED}: {stats}")


if __name__ == "__main__":
    main()
