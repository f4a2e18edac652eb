"""report stage: accuracy / vote-agreement / kept-fraction tables and plots over every round."""

from pathlib import Path

from selfimprove.pipeline import ROUNDS, stage_main

OUT = Path("data/report")


@stage_main(__doc__)
def main(args, params):
    from selfimprove.report import build_report
    from selfimprove.tracking import log_report

    rounds = ["r0", *params.rounds]
    files = build_report(ROUNDS, rounds, OUT, params.report)
    print(f"report: {len(files)} files in {OUT} for rounds {', '.join(rounds)}")
    if params.report.log_mlflow and params.tracking.enabled:
        pngs = [f for f in files if f.suffix == ".png"]
        tables = [f for f in files if f.parent == OUT and f.suffix in (".csv", ".json")]
        run_id = log_report(params.tracking, pngs + tables)
        print(f"report: logged {len(pngs) + len(tables)} files to MLflow parent run {run_id}")


if __name__ == "__main__":
    main()
