"""TTRL's train step: online GRPO (TRL's ``GRPOTrainer``) with the majority-vote reward of
:mod:`selfimprove.recipes.ttrl`, on the round's unlabeled questions.

Each optimizer step takes ``ttrl.questions_per_step`` questions (few-shot CoT prompts of the
project's prompt module), samples ``ttrl.num_generations`` completions of each (one generation
per step: ``steps_per_generation`` = gradient accumulation = the step's completions /
``ttrl.micro_batch_size``), rewards each completion 1 when its answer equals its group's majority
(masked groups: ``None``, zero advantage) and takes one GRPO step. Rollouts
(``ttrl.rollout``): ``sampler`` = the project's :class:`~selfimprove.sampling.
transformers_sampler.TransformersSampler` through TRL's ``rollout_func`` (shared prefix once,
stops at the next ``Q:``, per-row seeds from (seed, step)), the current weights copied into it
before each step; ``trl`` = TRL's own ``model.generate`` (runs to ``max_new_tokens``).

Model settings are ``finetune``'s (lora/full, LoRA shape, dtype, attention, scheduler, weight
decay); CPU-safe settings: no gradient checkpointing, bf16 autocast only where ``finetune``
would use it, ``beta`` 0 (no reference model) unless ``ttrl.beta`` says otherwise,
``report_to: none`` (no MLflow run of TRL's; the track stage logs the per-step records).

Output: the same model folder as :func:`selfimprove.training.finetune.finetune` writes (merged
float32 weights, tokenizer, ``adapter/`` for LoRA, ``finetune_info.json``), whose
``train_log.jsonl`` has one record per optimizer step: loss, reward, majority_ratio (mean top
share), masked_fraction, entropy, completion_length, ... and ``groups`` (each question's
``id``, ``majority``, ``share``: the track stage scores the majorities against the labels,
analysis only). Resumable like fine-tuning: checkpoints every ``save_steps`` steps in
``ckpt_dir`` (with the groups so far), resumed when the settings match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

from selfimprove.config.training import FinetuneConfig
from selfimprove.core.io import write_json
from selfimprove.recipes.ttrl import TtrlParams, majority_rewards
from selfimprove.training.finetune import (
    TrainRun,
    _load_model,
    _no_temp_leftovers,
    _release_heap_callback,
    _wrap_lora,
    export,
    export_unchanged,
    train_attention,
    train_bf16,
)
from selfimprove.training.resume import (
    complete_marker_callback,
    is_main_process,
    prepare_resume,
    world_size,
)

log = logging.getLogger("selfimprove.training.finetune")
#: the groups of the steps so far, saved with each checkpoint
GROUPS_FILE = "ttrl_groups.json"
#: TRL's log keys -> train_log.jsonl keys (per optimizer step)
LOG_KEYS = {
    "loss": "loss",
    "reward": "reward",
    "reward_std": "reward_std",
    "majority_ratio": "majority_ratio",
    "masked_fraction": "masked_fraction",
    "parsed_fraction": "parsed_fraction",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "entropy": "entropy",
    "completions/mean_length": "completion_length",
    "completions/clipped_ratio": "clipped_ratio",
    "kl": "kl",
    "learning_rate": "lr",
    "grad_norm": "grad_norm",
    "skipped_fraction": "skipped_fraction",
}


def prompt_parts(n_shots: int) -> str:
    """The shared few-shot CoT prefix of every rollout prompt."""
    from selfimprove.core.prompts import build_prompt

    return build_prompt("", "fewshot_cot", n_shots)[0]


def rollout_dataset(questions: list[dict], n_shots: int):
    """TRL's dataset: ``prompt`` (prefix + the question's suffix) and ``id`` (the group key)."""
    from datasets import Dataset

    from selfimprove.core.prompts import build_prompt

    rows = []
    for q in questions:
        prefix, suffix = build_prompt(q["question"], "fewshot_cot", n_shots)
        rows.append({"prompt": prefix + suffix, "id": str(q["id"])})
    return Dataset.from_list(rows)


def step_records(history: list[dict], groups: dict[int, list[dict]]) -> list[dict]:
    """``train_log.jsonl``: one record per optimizer step of TRL's log (``LOG_KEYS``) with that
    step's ``groups``.

    >>> step_records([{"step": 1, "loss": 0.1, "reward": 0.5, "completions/mean_length": 9.0},
    ...               {"step": 1, "train_runtime": 3.0}], {1: [{"id": "a"}]})
    [{'step': 1, 'loss': 0.1, 'reward': 0.5, 'completion_length': 9.0, 'groups': [{'id': 'a'}]}]
    """
    out = []
    for h in history:
        if "loss" not in h:
            continue
        rec = {"step": h["step"]} | {new: h[old] for old, new in LOG_KEYS.items() if old in h}
        out.append(rec | {"groups": groups.get(h["step"], [])})
    return out


class _DropMaskedWarning(logging.Filter):
    """TRL warns once per batch, with the whole prompt, when a row's rewards are all None: a
    masked group, on purpose here (counted in ``masked_fraction``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "All reward functions returned None" not in record.getMessage()


class Groups:
    """The reward function TRL calls, and the per-step group records it leaves."""

    __name__ = "majority_vote"  # TRL names the reward in its logs after it

    def __init__(self, min_share: float) -> None:
        self.min_share = min_share
        self.by_step: dict[int, list[dict]] = {}
        #: prompt + completion tokens of the micro-batches skipped (zero advantage), per step
        self.skipped_tokens: dict[int, int] = {}

    def __call__(self, prompts, completions, id, trainer_state=None, log_metric=None,  # noqa: A002
                 completion_ids=None, **kw):  # fmt: skip
        rewards, groups = majority_rewards(list(completions), list(id), self.min_share)
        step = (trainer_state.global_step if trainer_state is not None else 0) + 1
        tokens: dict[str, int] = {}  # sampled tokens per question (compute, not the reward)
        for qid, ids in zip(id, completion_ids or [], strict=False):
            tokens[qid] = tokens.get(qid, 0) + len(ids)
        self.by_step.setdefault(step, []).extend(
            {k: g[k] for k in ("id", "majority", "share", "n_parsed")}
            | ({"tokens": tokens.get(g["id"], 0)} if completion_ids is not None else {})
            for g in groups
        )
        if log_metric is not None:
            n = sum(g["n"] for g in groups)
            log_metric("majority_ratio", sum(g["share"] for g in groups) / len(groups))
            log_metric("masked_fraction", sum(g["majority"] is None for g in groups) / len(groups))
            log_metric("parsed_fraction", sum(g["n_parsed"] for g in groups) / n)
        return rewards

    def callback(self):
        """Saves the groups so far into each checkpoint (before it is marked complete)."""
        from transformers import TrainerCallback

        groups = self

        class SaveGroups(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if state.is_world_process_zero and folder.is_dir():
                    kept = {str(s): g for s, g in groups.by_step.items()
                            if s <= state.global_step}
                    skipped = {str(s): n for s, n in groups.skipped_tokens.items()
                               if s <= state.global_step}
                    write_json(folder / GROUPS_FILE, {"steps": kept, "skipped_tokens": skipped})
                return control

        return SaveGroups()

    def restore(self, checkpoint: Path) -> None:
        path = checkpoint / GROUPS_FILE
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            self.by_step = {int(s): g for s, g in saved["steps"].items()}
            self.skipped_tokens = {int(s): n for s, n in saved["skipped_tokens"].items()}


class SamplerRollout:
    """TRL's ``rollout_func`` through the project's sampler: the prompts of a step arrive as
    runs of ``num_generations`` equal prompts; each distinct one is sampled ``num_generations``
    times behind the shared prefix, with the training model's current weights."""

    def __init__(self, start: Path, prefix: str, knobs: TtrlParams, seed: int, bf16: bool):
        from selfimprove.sampling.transformers_sampler import TransformersSampler

        self.sampler = TransformersSampler(
            start, dtype="bfloat16" if bf16 else "float32", batch_size=256
        )
        self.prefix, self.knobs, self.seed = prefix, knobs, seed
        self.sample_s = 0.0

    def sync(self, model) -> None:
        """Copy the training weights (LoRA: base + delta, merged) into the sampler's model."""
        import torch

        target = dict(self.sampler.model.named_parameters())
        with torch.no_grad():
            if hasattr(model, "peft_config"):
                from peft.tuners.lora import LoraLayer

                for name, module in model.named_modules():
                    if isinstance(module, LoraLayer):
                        key = name.removeprefix("base_model.model.") + ".weight"
                        w = module.get_base_layer().weight.float()
                        w = w + module.get_delta_weight(module.active_adapters[0]).float()
                        target[key].copy_(w.to(target[key].dtype))
            else:
                for name, p in model.named_parameters():
                    target[name].copy_(p.to(target[name].dtype))

    def __call__(self, prompts: list[str], trainer) -> dict:
        from selfimprove.sampling.base import SamplingParams

        g = self.knobs.num_generations
        distinct = prompts[::g]
        if [p for p in distinct for _ in range(g)] != list(prompts):
            raise RuntimeError("rollout_func: prompts do not come in runs of num_generations")
        self.sync(trainer.model)
        suffixes = [p[len(self.prefix) :] for p in distinct]
        step_key = f"ttrl:{self.seed}:{trainer.state.global_step}".encode()
        params = SamplingParams(
            n=g,
            temperature=self.knobs.temperature,
            max_new_tokens=self.knobs.max_new_tokens,
            seed=int(hashlib.sha256(step_key).hexdigest()[:8], 16),  # per step: resumes alike
        )
        t0 = time.perf_counter()
        out = self.sampler.sample(self.prefix, suffixes, params, desc="ttrl rollouts")
        self.sample_s += time.perf_counter() - t0
        tok, eos = self.sampler.tokenizer, self.sampler.tokenizer.eos_token_id
        prompt_ids, completion_ids = [], []
        for suffix, comps in zip(suffixes, out, strict=True):
            ids = self.sampler.input_ids(self.prefix, suffix)
            for c in comps:
                prompt_ids.append(ids)
                # the sampled text's tokens (a re-tokenization: the sampler returns text; BPE
                # may split it otherwise than sampled, so it is capped at the sampled count)
                cids = tok(c.text, add_special_tokens=False).input_ids if c.text else []
                cids = cids[: max(c.n_tokens, 1)]
                # a finished completion ends in EOS (as fine-tuning's examples do)
                completion_ids.append(cids + ([eos] if c.finish_reason != "length" else []))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def ttrl(
    start: Path,
    questions: list[dict],
    out_dir: Path,
    cfg: FinetuneConfig,
    seed: int,
    ckpt_dir: Path | None = None,
    save_steps: int = 50,
    *,
    knobs: TtrlParams,
    callbacks: list | None = None,
) -> dict:
    """Train ``start`` on ``questions`` (``id``, ``question``) with TTRL and write the model
    folder ``out_dir`` (see the module docstring). Returns the info fine-tuning returns (steps,
    train_loss, final_loss, ...) plus ``n_questions``, ``mean_reward``, ``mean_majority_ratio``,
    ``mean_masked_fraction``, ``rollout``; ``runtime_s``, ``rollout_s`` and
    ``resumed_from_step`` are run keys (not in ``finetune_info.json``). ``callbacks``: extra
    Trainer callbacks."""
    with _no_temp_leftovers():
        return _ttrl(Path(start), questions, Path(out_dir), cfg, knobs, seed, ckpt_dir, save_steps,
                     callbacks)  # fmt: skip


RUN_KEYS = ("runtime_s", "rollout_s", "resumed_from_step")


def _ttrl(start, questions, out_dir, cfg, knobs, seed, ckpt_dir, save_steps, callbacks) -> dict:
    import torch
    from transformers import AutoTokenizer, set_seed

    tokenizer = AutoTokenizer.from_pretrained(start)
    info: dict = {
        "method": cfg.method,
        "objective": "grpo",
        "rollout": knobs.rollout,
        "n_questions": len(questions),
        "n_examples": len(questions) * knobs.num_generations,
        "steps": 0,
        "train_loss": None,
        "final_loss": None,
        "mean_reward": None,
        "mean_majority_ratio": None,
        "mean_masked_fraction": None,
        "trainable_params": 0,
        "skipped": False,
        "skipped_flag": 0,
        "skip_reason": None,
        "runtime_s": 0.0,
        "rollout_s": None,
        "resumed_from_step": None,
    }

    def folder_info() -> dict:
        return {k: v for k, v in info.items() if k not in RUN_KEYS}

    set_seed(seed)
    if not questions:
        info |= {"skipped": True, "skipped_flag": 1, "skip_reason": "no questions"}
        if is_main_process():
            export_unchanged(start, tokenizer, out_dir, folder_info())
        return info
    bf16 = train_bf16(cfg.dtype)
    attn = train_attention(cfg.attn_implementation)
    if cfg.method == "lora":
        model = _wrap_lora(_load_model(start, torch.bfloat16 if bf16 else torch.float32, attn),
                           cfg.lora)  # fmt: skip
    else:
        model = _load_model(start, torch.float32, attn)
    info["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    groups = Groups(knobs.min_share)
    resume = None
    if ckpt_dir is not None:
        ckpt_dir = Path(ckpt_dir)
        qsha = hashlib.sha256(json.dumps(questions, sort_keys=True).encode()).hexdigest()
        from selfimprove.core.digest import digest

        settings = {
            "config": cfg.model_dump(mode="json"),
            "ttrl": knobs.model_dump(mode="json"),
            "seed": seed,
            "model": digest(start),
            "questions_sha256": qsha,
            "world_size": world_size(),
        }
        resume = prepare_resume(ckpt_dir, settings)
        if resume is not None:
            info["resumed_from_step"] = int(resume.name.split("-")[1])
            groups.restore(resume)
    with contextlib.ExitStack() as stack:
        if ckpt_dir is not None:
            work = ckpt_dir
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="selfimprove-")))
        trainer, rollout = _trainer(model, tokenizer, questions, cfg, knobs, seed, bf16, work,
                                    save_steps if ckpt_dir is not None else None, groups,
                                    start, callbacks)  # fmt: skip
        del model
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        records = step_records(list(trainer.state.log_history), groups.by_step)
        del rollout  # the sampler's copy of the model
        info |= _summary(records, result) | {"runtime_s": round(time.perf_counter() - t0, 3)}
        # compute, for studies at equal compute: prompt + completion tokens of the rollouts the
        # steps trained on (TRL's num_tokens, kept in the checkpoint, less the micro-batches
        # skipped for a zero advantage, kept with the groups: the same after a resume)
        info["tokens_skipped"] = sum(groups.skipped_tokens.values())
        info["tokens_trained"] = int(trainer.state.num_input_tokens_seen) - info["tokens_skipped"]
        # the completions sampled online (the groups' tokens, kept in each checkpoint)
        info["tokens_sampled"] = sum(g.get("tokens", 0) for step in groups.by_step.values()
                                     for g in step)
        info["rollout_s"] = None if trainer.rollout_func is None else round(
            trainer.rollout_func.sample_s, 3)  # fmt: skip
        if not is_main_process():
            return info
        run = TrainRun(trainer, records, {})
        export(run, start, tokenizer, out_dir, cfg.method, None, folder_info())
    if ckpt_dir is not None:
        import shutil

        shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info("ttrl: %d questions, %d steps, mean reward %s, masked %s, in %.1fs",
             len(questions), info["steps"], info["mean_reward"], info["mean_masked_fraction"],
             info["runtime_s"])  # fmt: skip
    return info


def _summary(records: list[dict], result) -> dict:
    def mean(key):
        vals = [r[key] for r in records if r.get(key) is not None]
        return round(sum(vals) / len(vals), 6) if vals else None

    return {
        "steps": int(result.global_step),
        "train_loss": mean("loss"),
        "final_loss": records[-1]["loss"] if records else None,
        "mean_reward": mean("reward"),
        "mean_majority_ratio": mean("majority_ratio"),
        "mean_masked_fraction": mean("masked_fraction"),
    }


def _grpo_trainer(skip_zero_advantage: bool, groups: Groups):
    """TRL's ``GRPOTrainer``, or (``ttrl.skip_zero_advantage``) one that skips the forward and
    backward pass of a micro-batch whose advantages are all 0 when nothing else has a gradient
    (``beta`` 0, no entropy bonus, no auxiliary loss). The policy loss of such a micro-batch is
    0 with a gradient of exactly 0 (every term is multiplied by an advantage of 0), so a zero
    gradient on the trainable weights, without the pass, leaves the accumulated gradients and
    the optimizer's step as they were. Each micro-batch logs ``skipped_fraction`` (1 skipped);
    ``groups.skipped_tokens`` counts the prompt and completion tokens not trained on, per step."""
    from trl import GRPOTrainer

    if not skip_zero_advantage:
        return GRPOTrainer

    class ZeroAdvantageSkippingGRPOTrainer(GRPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            skip = (self.beta == 0.0 and not getattr(self, "_entropy_bonus_enabled", False)
                    and not self.aux_loss_enabled and not bool(inputs["advantages"].any()))
            self._metrics["train"]["skipped_fraction"].append(float(skip))
            if not skip:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            step = self.state.global_step + 1
            n = int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
            groups.skipped_tokens[step] = groups.skipped_tokens.get(step, 0) + n
            trainable = [p for p in model.parameters() if p.requires_grad]
            return sum((p * 0.0).sum() for p in trainable)  # zero gradients, no pass

    return ZeroAdvantageSkippingGRPOTrainer


def _trainer(model, tokenizer, questions, cfg, knobs, seed, bf16, work, save_steps, groups, start,
             callbacks):  # fmt: skip
    import torch
    from trl import GRPOConfig

    g, q, micro = knobs.num_generations, knobs.questions_per_step, knobs.micro_batch_size
    accum = q * g // micro
    args = GRPOConfig(
        output_dir=str(work),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        steps_per_generation=accum,  # one generation of q groups per optimizer step
        num_generations=g,
        num_iterations=1,
        num_train_epochs=knobs.epochs,
        learning_rate=knobs.learning_rate,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        beta=knobs.beta,
        loss_type=knobs.loss_type,
        scale_rewards=knobs.scale_rewards,
        temperature=knobs.temperature,
        top_p=1.0,
        top_k=0,
        max_completion_length=knobs.max_new_tokens,
        bf16=bf16 and cfg.method == "full",
        activation_checkpointing=False,  # (gradient checkpointing) off on CPU
        logging_steps=1,
        save_strategy="steps" if save_steps is not None else "no",
        save_steps=save_steps if save_steps is not None else 50,
        save_total_limit=1,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    rollout = None
    if knobs.rollout == "sampler":
        rollout = SamplerRollout(start, prompt_parts(knobs.n_shots), knobs, seed, bf16)
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func's notice
    trl_log = logging.getLogger("trl.trainer.grpo_trainer")
    if not any(isinstance(f, _DropMaskedWarning) for f in trl_log.filters):
        trl_log.addFilter(_DropMaskedWarning())
    trainer = _grpo_trainer(knobs.skip_zero_advantage, groups)(
        model=model,
        reward_funcs=[groups],
        args=args,
        train_dataset=rollout_dataset(questions, knobs.n_shots),
        processing_class=tokenizer,
        rollout_func=rollout,
        callbacks=[
            groups.callback(),
            _release_heap_callback(),  # peak RSS only, no float changes
            complete_marker_callback(),
            *(callbacks or []),
        ],
    )
    return trainer, rollout
