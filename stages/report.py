"""report stage: accuracy (with confidence bands) / vote-agreement / kept-fraction / collapse
monitor tables and plots over every round, paired differences between rounds, the label-free
choice of round and its cost, plus self-feedback verdict precision per round when method self /
lmsi_self ran (against data/prepared/train_labels.jsonl: analysis only)."""

from selfimprove.core.paths import REPORT, ROUNDS, TRAIN_LABELS
from selfimprove.pipeline import stage_main


@stage_main(__doc__)
def main(args, params):
    from selfimprove.evaluation.report import build_report
    from selfimprove.tracking.runs import log_report

    rounds = ["r0", *params.rounds]
    files = build_report(
        ROUNDS, rounds, REPORT, params.report, labels_path=TRAIN_LABELS, stats=params.stats
    )
    print(f"report: {len(files)} files in {REPORT} for rounds {', '.join(rounds)}")
    if (REPORT / "feedback.png").exists():
        print(f"report: self-feedback verdict precision in {REPORT / 'feedback.json'}")
    if params.report.log_mlflow and params.tracking.enabled:
        pngs = [f for f in files if f.suffix == ".png"]
        tables = [f for f in files if f.parent == REPORT and f.suffix in (".csv", ".json")]
        run_id = log_report(params.tracking, pngs + tables)
        print(f"report: logged {len(pngs) + len(tables)} files to MLflow parent run {run_id}")


if __name__ == "__main__":
    main()
