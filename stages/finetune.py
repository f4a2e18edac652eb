"""finetune stage: LoRA (or full) fine-tuning on the round's training set; adapter + merged.
The method's recipe (selfimprove.recipes) names the objective: sft (default: the filter's
train.jsonl; a recipe may read refined.jsonl itself), dpo (scpo's preference pairs, pairs.jsonl,
with TRL's DPOTrainer, selfimprove.training.preference) or grpo (TTRL's online RL on the round's
questions, selfimprove.training.ttrl).

A round with nothing to train on (the filter kept nothing, or every example is too long) is
recorded as skipped: finetune.json gets `skipped: true`, `skipped_flag: 1` (an MLflow metric) and
`skip_reason`, a warning goes to stderr, and data/rounds/<r>/model is still written (the start
model unchanged) so later rounds chain on it.

finetune.json = the model folder's finetune_info.json + `start`; this run's timing and resume
point (`runtime_s`, `resumed_from_step`) go to data/resources/finetune@<r>.json
(selfimprove.core.timings), so both outputs are byte-identical across reruns of the same inputs.

Checkpoints go to data/rounds/<r>/model.ckpt/ (every $SELFIMPROVE_SAVE_STEPS optimizer steps,
default 50; not a DVC output): a killed run resumes there on the next `dvc repro`.
Several CPU processes: `finetune.processes` (the stage launches them with accelerate: DDP over
gloo, the same global batch). Several GPUs/machines: set SELFIMPROVE_LAUNCH, e.g.
"accelerate launch --num_processes 8" or "accelerate launch --config_file
configs/accelerate/fsdp.yaml"; the stage then reruns itself under that launcher (only rank 0
writes outputs).
"""

import os
import shlex
import subprocess
import sys

from selfimprove.core.paths import round_dir, round_seed
from selfimprove.pipeline import add_round_arg, stage_main


def _args(p):
    add_round_arg(p)
    p.add_argument("--prev", required=True, help="previous round (its model is the default start)")


def _relaunch() -> None:
    """Rerun this stage under $SELFIMPROVE_LAUNCH (once: not inside a launched process)."""
    launch = os.environ.get("SELFIMPROVE_LAUNCH", "").strip()
    if not launch or "LOCAL_RANK" in os.environ:
        return
    sys.exit(_launched([*shlex.split(launch), "-m", "stages.finetune", *sys.argv[1:]]))


def _launched(cmd: list[str]) -> int:
    """Run this stage under the launcher command ``cmd``; its exit code."""
    print(f"finetune: launching {shlex.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.call(cmd)


@stage_main(__doc__, _args)
def main(args, params):
    from selfimprove.core.io import InputError
    from selfimprove.core.timings import write_stage_json
    from selfimprove.recipes import get_recipe
    from selfimprove.training.finetune import finetune

    cfg, recipe = params.finetune, get_recipe(params.method)
    start = round_dir("r0" if cfg.init == "base" else args.prev) / "model"
    out = round_dir(args.round)
    if recipe.objective not in ("sft", "dpo", "grpo"):
        raise InputError(
            f"method {recipe.name}: training objective {recipe.objective!r} is not implemented "
            "(finetune runs sft, dpo and grpo)"
        )
    save_steps = os.environ.get("SELFIMPROVE_SAVE_STEPS", "50")
    if not save_steps.isdigit() or int(save_steps) < 1:
        raise InputError(f"SELFIMPROVE_SAVE_STEPS={save_steps!r}: expected a positive integer")
    if recipe.objective != "sft" and cfg.processes > 1:
        print(f"finetune: {recipe.objective} trains in one process (finetune.processes "
              f"{cfg.processes} is for sft)", file=sys.stderr, flush=True)  # fmt: skip
    if recipe.objective == "dpo":  # preference pairs (scpo): DPO + NLL on the filter's pairs
        from selfimprove.core.io import read_jsonl
        from selfimprove.training.preference import dpo_finetune

        info = dpo_finetune(start, read_jsonl(out / "pairs.jsonl"), out / "model", cfg,
                            recipe.knobs(params), round_seed(params.seed, args.round),
                            ckpt_dir=out / "model.ckpt", save_steps=int(save_steps))  # fmt: skip
        _record(args, out, start, info, write_stage_json)
        return
    examples = recipe.train_inputs(out)  # default: the filter's train.jsonl
    if recipe.objective == "sft" and examples:  # finetune.processes > 1 on CPU: launch them
        from selfimprove.training.processes import cpu_launch

        argv = ["stages.finetune", "--round", args.round, "--prev", args.prev]
        launch = cpu_launch(cfg, params.compute.threads, argv)
        if launch:
            code = _launched(launch)
            if code:
                sys.exit(code)  # the processes said why
            return  # rank 0 wrote the outputs
    # examples may carry a "weight" (filter.weighting): scaled to mean 1, it scales their loss
    train_step = finetune
    if recipe.objective == "grpo":  # online RL on the round's questions (method ttrl)
        from functools import partial

        from selfimprove.training.ttrl import ttrl

        train_step = partial(ttrl, knobs=recipe.knobs(params))
    info = train_step(
        start,
        examples,
        out / "model",
        cfg,
        round_seed(params.seed, args.round),
        ckpt_dir=out / "model.ckpt",  # resume state of a killed run; not a DVC output
        save_steps=int(save_steps),
    )
    _record(args, out, start, info, write_stage_json)


def _record(args, out, start, info, write_stage_json) -> None:
    """finetune.json (main process), the info printed, a skipped round warned about."""
    from selfimprove.training.resume import is_main_process

    if is_main_process():
        record = info | {"start": start.as_posix()}
        write_stage_json(out / "finetune.json", record, f"finetune@{args.round}")
        print(f"{args.round}: {info}")
        if info["skipped"]:
            print(
                f"warning: {args.round}: not fine-tuned ({info['skip_reason']}); "
                f"{out / 'model'} is {start} unchanged, so later rounds chain on it",
                file=sys.stderr,
                flush=True,
            )


if __name__ == "__main__":
    _relaunch()
    main()
