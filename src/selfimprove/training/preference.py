"""Preference training (method scpo): TRL's ``DPOTrainer`` on the filter's pairs (pairs.jsonl),
DPO plus an NLL term on the chosen path (IRPO: ``loss_type=["sigmoid", "sft"]`` with
``loss_weights=[1, nll_weight]``), each pair's loss weighted by its vote margin.

* **Weights.** TRL has no per-pair user weight (``use_weighting`` is WPO's), so
  :func:`weighted_dpo_trainer`'s subclass runs TRL's own loss on each pair of a batch and
  returns ``mean_i(w_i * loss_i)``: the paper's ScPO loss, ``w(x) * (DPO + alpha * NLL / |y+|)``
  (the NLL term of TRL's "sft" loss on a one-pair batch is the chosen path's per-token mean).
  The weight column rides through the collator (:func:`weighted_collator`).
* **Reference = the round's starting model.** LoRA: TRL wraps the start model with a fresh
  adapter (``peft_config``) and computes the reference with the adapter disabled; full: TRL loads
  the start model folder again as a frozen reference.
* **CPU.** ``bf16`` and ``gradient_checkpointing`` (TRL defaults them to True) are set as the
  SFT step sets them; ``report_to="none"`` (no stray MLflow run); TRL disables dropout (its
  ``disable_dropout`` default), so policy and reference log-probs match at the start.
* **Same layout as fine-tuning** (:func:`selfimprove.training.finetune.export`): merged float32
  weights, ``adapter/`` (LoRA), ``train_log.jsonl``, ``finetune_info.json``; a round with no pair
  saves the start model unchanged (skipped). Every downstream stage loads it unchanged.
* **Resumable** as the SFT step: checkpoints in ``ckpt_dir`` every ``save_steps`` optimizer
  steps, resumed only when the settings (config, scpo section, seed, start model, pairs, number
  of processes) match, marked complete once saved, the folder removed after success. The data
  order comes from accelerate's seedable sampler (seeded from (seed, epoch)); the Trainer's
  checkpoint restores the RNG states.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path

from selfimprove.config.training import FinetuneConfig
from selfimprove.core.io import InputError
from selfimprove.training.finetune import (
    RUN_KEYS,
    TrainRun,
    _log_last_step_callback,
    _release_heap_callback,
    _step_weighted_mean,
    export,
    export_unchanged,
    loss_records,
    new_run_info,
    train_attention,
    train_bf16,
)
from selfimprove.training.resume import (
    complete_marker_callback,
    is_main_process,
    prepare_resume,
    resume_settings,
    world_size,
)

log = logging.getLogger("selfimprove.training.finetune")

#: the pairs.jsonl keys the trainer reads
PAIR_KEYS = ("prompt", "chosen", "rejected", "weight")


def check_pairs(pairs: list[dict]) -> list[dict]:
    """The trainer's rows of pairs.jsonl records (``prompt``, ``chosen``, ``rejected`` strings, a
    finite ``weight`` >= 0); a bad record is one clear error.

    >>> check_pairs([{"prompt": "Q", "chosen": " a", "rejected": " b", "weight": 0.5, "x": 1}])
    [{'prompt': 'Q', 'chosen': ' a', 'rejected': ' b', 'weight': 0.5}]
    """
    import math

    rows = []
    for i, p in enumerate(pairs):
        bad = [k for k in PAIR_KEYS[:3] if not isinstance(p.get(k), str)]
        w = p.get("weight", 1.0)
        if bad or isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) \
                or w < 0:  # fmt: skip
            raise InputError(
                f"pairs.jsonl record {i + 1}: needs strings {', '.join(PAIR_KEYS[:3])} and a "
                f"finite weight >= 0 (bad: {', '.join(bad) or 'weight'}); rerun the filter stage"
            )
        rows.append({"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
                     "weight": float(w)})  # fmt: skip
    return rows


def weighted_collator(pad_token_id: int, max_length: int | None):
    """TRL's preference collator (chosen rows, then rejected rows, right-padded; sequences
    longer than ``max_length`` keep their start, TRL's default ``keep_start``: the
    completion's end is cut) plus a ``weight`` tensor [B] when the rows carry one."""
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    class WeightedPreferenceCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            out = super().torch_call(examples)
            if "weight" in examples[0]:
                out["weight"] = torch.tensor([float(e["weight"]) for e in examples])
            return out

    return WeightedPreferenceCollator(
        pad_token_id=pad_token_id, max_length=max_length, truncation_mode="keep_start"
    )


def pair_rows(inputs: dict, i: int, n: int) -> dict:
    """Pair ``i`` of a collated batch of ``n`` pairs (rows ``i`` and ``n + i``; per-pair
    tensors row ``i``), its trailing padding cut.

    >>> import torch
    >>> batch = {"input_ids": torch.tensor([[1, 2, 0], [3, 0, 0], [4, 5, 6], [7, 0, 0]]),
    ...          "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]),
    ...          "ref_chosen_logps": torch.tensor([0.5, 0.25])}
    >>> sub = pair_rows(batch, 1, 2)
    >>> sub["input_ids"].tolist(), sub["ref_chosen_logps"].tolist()
    ([[3], [7]], [0.25])
    """
    rows = [i, n + i]
    width = int(inputs["attention_mask"][rows].sum(1).max())
    out = {}
    for k, v in inputs.items():
        if v.shape[0] == 2 * n:
            v = v[rows]
            out[k] = v[:, :width] if v.dim() == 2 else v
        else:
            out[k] = v[i : i + 1]
    return out


def weighted_dpo_trainer(*args, **kwargs):
    """A TRL ``DPOTrainer`` (same arguments) whose loss is ``mean_i(weight_i * loss_i)`` over
    the batch's pairs (``loss_i``: TRL's loss of pair ``i`` alone) when the batch has a
    ``weight`` column; without one, TRL's loss unchanged."""
    from trl import DPOTrainer

    class VoteWeightedDPOTrainer(DPOTrainer):
        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "weight" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "weight"]

        def _compute_loss(self, model, inputs, return_outputs):
            weights = inputs.get("weight")
            if weights is None or return_outputs:
                rest = {k: v for k, v in inputs.items() if k != "weight"}
                return super()._compute_loss(model, rest, return_outputs)
            rest = {k: v for k, v in inputs.items() if k != "weight"}
            n = weights.shape[0]
            total = 0.0
            for i in range(n):
                loss = super()._compute_loss(model, pair_rows(rest, i, n), False)
                total = total + weights[i].to(loss.device, loss.dtype) * loss
            return total / n

    return VoteWeightedDPOTrainer(*args, **kwargs)


def dpo_args(cfg: FinetuneConfig, knobs, work: Path, seed: int, bf16: bool, save_steps):
    """TRL's ``DPOConfig``: the ``finetune`` section's optimizer settings, the scpo section's
    loss (``knobs``), CPU-safe defaults, checkpoints every ``save_steps`` (None: none)."""
    import torch
    from trl import DPOConfig

    losses = ["sigmoid", "sft"] if knobs.nll_weight > 0 else ["sigmoid"]
    return DPOConfig(
        output_dir=str(work),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        bf16=bf16 and cfg.method == "full",  # TRL's default is True; LoRA: the base is bf16
        activation_checkpointing=False,  # TRL: gradient_checkpointing (the old name) True
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if save_steps is not None else "no",
        save_steps=save_steps if save_steps is not None else 50,
        save_total_limit=1,
        eval_strategy="no",
        report_to="none",  # no stray MLflow run: the track stage logs the round
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        beta=knobs.beta,
        loss_type=losses,
        loss_weights=[1.0, knobs.nll_weight][: len(losses)],
        max_length=cfg.max_length,  # keep_start (TRL's default; keep_end is deprecated): a pair
        # whose prompt alone fills max_length is dropped
        precompute_ref_log_probs=False,
    )


def _peft_config(cfg: FinetuneConfig):
    from peft import LoraConfig

    lora = cfg.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), bias="none",
                      task_type="CAUSAL_LM")  # fmt: skip


def dpo_finetune(
    model_dir: Path,
    pairs: list[dict],
    out_dir: Path,
    cfg: FinetuneConfig,
    knobs,
    seed: int,
    ckpt_dir: Path | None = None,
    save_steps: int = 50,
    callbacks: list | None = None,
) -> dict:
    """Train the model in ``model_dir`` on preference ``pairs`` (pairs.jsonl records) with the
    scpo section ``knobs``; write ``out_dir`` as :func:`selfimprove.training.finetune.finetune`
    does and return the same info (``n_examples``: pairs; plus ``objective: dpo``)."""
    from selfimprove.training.finetune import _no_temp_leftovers

    with _no_temp_leftovers():
        return _dpo(model_dir, pairs, out_dir, cfg, knobs, seed, ckpt_dir, save_steps, callbacks)


def dpo_tokens(dataset, max_length: int | None) -> int:
    """Tokens one pass over the tokenized pairs computes on: prompt + chosen and prompt +
    rejected of every pair, each cut to ``max_length`` (TRL's ``num_tokens``, the policy side).

    >>> dpo_tokens([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5, 6]}], 4)
    7
    """
    cap = max_length or 10**9
    return sum(min(len(r["prompt_ids"]) + len(r["chosen_ids"]), cap)
               + min(len(r["prompt_ids"]) + len(r["rejected_ids"]), cap) for r in dataset)


def _dpo(model_dir, pairs, out_dir, cfg, knobs, seed, ckpt_dir, save_steps, callbacks) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if world_size() > 1:
        raise InputError("method scpo: preference training runs in one process; unset "
                         "SELFIMPROVE_LAUNCH")  # fmt: skip
    if not (model_dir / "config.json").exists():
        raise InputError(f"{model_dir}: not a model folder (no config.json); run the stage "
                         "that makes it")  # fmt: skip
    rows = check_pairs(pairs)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # saved as is; TRL gets its own copy
    # finetune's record with the objective after the method (the same keys, in the same order)
    info = {"method": cfg.method, "objective": "dpo"} | new_run_info(cfg.method, len(rows))

    def folder_info() -> dict:
        return {k: v for k, v in info.items() if k not in RUN_KEYS}

    set_seed(seed)
    if not rows:
        reason = "no preference pairs: the filter kept no question (see filter.json n_no_pair_*)"
        log.warning("finetune: skipped (%s); saving %s unchanged to %s", reason, model_dir, out_dir)
        info |= {"skipped": True, "skipped_flag": 1, "skip_reason": reason}
        if is_main_process():
            export_unchanged(model_dir, tokenizer, out_dir, folder_info())
        return info

    bf16 = train_bf16(cfg.dtype)
    lora = cfg.method == "lora"
    dtype = torch.bfloat16 if (bf16 and lora) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=train_attention(cfg.attn_implementation)
    )
    model.config.use_cache = False
    resume = None
    if ckpt_dir is not None:
        ckpt_dir = Path(ckpt_dir)
        settings = resume_settings(model_dir, rows, cfg, seed) | {"scpo": knobs.model_dump()}
        resume = prepare_resume(ckpt_dir, settings)
        info["resumed_from_step"] = int(resume.name.split("-")[1]) if resume else None
    pad_id = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    with contextlib.ExitStack() as stack:
        if ckpt_dir is not None:
            work = ckpt_dir
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="selfimprove-")))
        args = dpo_args(cfg, knobs, work, seed, bf16, save_steps if ckpt_dir is not None else None)
        trainer = weighted_dpo_trainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            data_collator=weighted_collator(pad_id, cfg.max_length),
            peft_config=_peft_config(cfg) if lora else None,
            callbacks=[
                _log_last_step_callback(),
                _release_heap_callback(),  # peak RSS only, no float changes
                complete_marker_callback(),
                *(callbacks or []),
            ],
        )
        del model
        info["trainable_params"] = sum(
            p.numel() for p in trainer.model.parameters() if p.requires_grad
        )
        tokens_per_epoch = dpo_tokens(trainer.train_dataset, cfg.max_length)
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        runtime = time.perf_counter() - t0
        records = loss_records(list(trainer.state.log_history))
        train_loss = float(result.training_loss)
        if resume is not None and records:
            train_loss = _step_weighted_mean(records)
        info.update(
            steps=int(result.global_step),
            train_loss=train_loss,
            final_loss=records[-1]["loss"] if records else train_loss,
            runtime_s=round(runtime, 3),
            # compute, for studies at equal compute (what TRL logs as num_tokens, from the data:
            # a resumed run reports what an uninterrupted one does)
            tokens_trained=round(tokens_per_epoch * cfg.epochs),
        )
        run = TrainRun(trainer, records, {})
        del trainer
        export(run, model_dir, tokenizer, out_dir, cfg.method, None, folder_info())
    if ckpt_dir is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info("finetune: dpo, %d pairs, %d steps, loss %.4f -> %.4f in %.1fs", len(rows),
             info["steps"], info["train_loss"], info["final_loss"], info["runtime_s"])  # fmt: skip
    return info
