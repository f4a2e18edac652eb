"""track stage: log one round to MLflow (params, metrics, rationale datasets, model, provenance).

Provenance (selfimprove.tracking.provenance): git commit and git_dirty (DVC's own edits of
dvc.lock and data/**/.gitignore don't count), the round's dvc.lock digest, the lock file the
environment was installed from and the package versions; paths are logged relative to the
project root (the cwd of the stage)."""

from pathlib import Path

from selfimprove.core.paths import TRAIN_LABELS, round_dir
from selfimprove.pipeline import add_round_arg, stage_main


@stage_main(__doc__, add_round_arg)
def main(args, params):
    from selfimprove.core.io import read_jsonl, write_json
    from selfimprove.core.timings import resources_metrics
    from selfimprove.evaluation.analysis import round_analysis
    from selfimprove.evaluation.headline import METRICS_FILE, SCORES_FILE
    from selfimprove.recipes import get_recipe
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
    # refine step none (lmsi, format_only): refined.jsonl = samples.jsonl (nothing to log)
    recipe = get_recipe(params.method)
    has_refined = recipe.refine != "none"
    metrics, found = round_analysis(out, TRAIN_LABELS, has_refined, args.round)
    steps = []
    train_log = out / "model" / "train_log.jsonl"
    if recipe.objective == "grpo" and train_log.exists():  # online RL: per-step records
        from selfimprove.tracking.steps import round_label_accuracy, step_metrics

        records = [r for r in read_jsonl(train_log) if "groups" in r]  # r0: no ttrl records
        labels = {r["id"]: r["answer"] for r in read_jsonl(TRAIN_LABELS)} if records else {}
        metrics |= round_label_accuracy(records, labels)  # analysis only
        steps = step_metrics(records, labels)
    # peak RSS, seconds, threads of the round's stages run here (round 0: also the one-off stages)
    metrics |= resources_metrics(args.round, first=params.round_index(args.round) == 0)
    datasets = [DatasetSpec(p, f"{args.round}-{p.stem}", ctx) for p, ctx in found]
    tables = {}
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
    if steps and run_id:
        from selfimprove.tracking.steps import log_step_metrics

        log_step_metrics(run_id, steps)  # train.<key> at each optimizer step
    write_json(out / "mlflow.json", {"run_id": run_id, "round": args.round})
    print(f"{args.round}: logged to MLflow run {run_id}")


if __name__ == "__main__":
    main()
