"""track stage: log one round to MLflow (params, metrics, rationale datasets, model, provenance).

Provenance (selfimprove.tracking.provenance): git commit and git_dirty (DVC's own edits of
dvc.lock and data/**/.gitignore don't count), the round's dvc.lock digest, the lock file the
environment was installed from and the package versions; paths are logged relative to the
project root (the cwd of the stage)."""

from pathlib import Path

from selfimprove.core.paths import TRAIN_LABELS, round_dir
from selfimprove.pipeline import add_round_arg, stage_main


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


@stage_main(__doc__, add_round_arg)
def main(args, params):
    from selfimprove.core.io import read_jsonl, write_json
    from selfimprove.core.timings import read_timings
    from selfimprove.evaluation.analysis import (
        flatten_metrics,
        majority_precision,
        verdict_precision,
    )
    from selfimprove.evaluation.headline import METRICS_FILE, SCORES_FILE, read_round_scores
    from selfimprove.methods.table import LABEL_METHODS, SELF_METHODS
    from selfimprove.tracking.health import check_tracking
    from selfimprove.tracking.provenance import dvc_lock_digest, git_info, provenance_tags
    from selfimprove.tracking.runs import DatasetSpec, log_round

    cfg = params.tracking
    root = Path.cwd()  # the project root: DVC runs every stage there
    out = round_dir(args.round)
    if not cfg.enabled:
        write_json(out / "mlflow.json", {"enabled": False})
        return
    check_tracking(cfg)
    # every score (intervals and counts too), not only the headline DVC compares
    metrics = flatten_metrics(read_round_scores(out))
    for step in ("generate", "refine", "filter", "finetune", "warmstart", "meta_skill"):
        metrics |= flatten_metrics(_read_json(out / f"{step}.json"), f"{step}.")
        # this workspace's timings of the step, when it ran here (not restored from the run cache)
        stage = step if step in ("warmstart", "meta_skill") else f"{step}@{args.round}"
        metrics |= flatten_metrics(read_timings(out / f"{step}.json", stage), f"{step}.")
    datasets, tables = [], {}
    if (out / "rationales.jsonl").exists():
        rationales = read_jsonl(out / "rationales.jsonl")
        labels = {r["id"]: r["answer"] for r in read_jsonl(TRAIN_LABELS)}
        metrics |= flatten_metrics(majority_precision(rationales, labels), "analysis.")
        datasets = [
            DatasetSpec(out / "rationales.jsonl", f"{args.round}-rationales", "rationales"),
            DatasetSpec(out / "train.jsonl", f"{args.round}-train", "training"),
        ]
        refined = out / "refined.jsonl"
        # lmsi, format_only: refined.jsonl = samples.jsonl (nothing of their own to log)
        if params.method in SELF_METHODS + LABEL_METHODS and refined.exists():
            # per path: the model's feedback, verdicts and refined answers (or gold marks)
            datasets.append(DatasetSpec(refined, f"{args.round}-refined", "refinement"))
            refined_records = read_jsonl(refined)
            metrics |= flatten_metrics(
                verdict_precision(refined_records, labels), "analysis.verdict."
            )
    corpus = out / "meta_skill.jsonl"
    if corpus.exists() and corpus.stat().st_size > 0:  # r0 of self/lmsi_self
        datasets.append(DatasetSpec(corpus, f"{args.round}-meta_skill", "meta_skill"))
    for pred_file in sorted((out / "eval").glob("*.jsonl")):
        tables[f"predictions/{pred_file.stem}.json"] = read_jsonl(pred_file)
    model_dir = out / "model"
    adapter = model_dir / "adapter"
    run_id = log_round(
        cfg,
        round_name=args.round,
        round_index=params.round_index(args.round),
        params=params.model_dump(exclude={"rounds", "tracking"}),
        metrics=metrics,
        datasets=datasets,
        artifacts=[p for p in (out / "eval", out / SCORES_FILE, out / METRICS_FILE) if p.exists()],
        model_dir=model_dir if model_dir.exists() else None,
        adapter_dir=adapter if adapter.exists() else None,
        base_model_ref=params.base_model.hub_id,
        tags=provenance_tags(git_info(root), dvc_lock_digest(args.round), params.method),
        tables=tables,
        root=root,
    )
    write_json(out / "mlflow.json", {"run_id": run_id, "round": args.round})
    print(f"{args.round}: logged to MLflow run {run_id}")


if __name__ == "__main__":
    main()
