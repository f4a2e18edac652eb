"""Fine-tuning step: LoRA (peft) or full fine-tuning of a causal LM on (prompt, completion) pairs.

Training runs through transformers' ``Trainer`` (accelerate underneath) with the collator of
:mod:`selfimprove.training.encode`: prompt and completion are tokenized separately and their ids
concatenated (as the sampler does), EOS is appended to the completion, only completion tokens
carry a loss (prompt and padding are labelled -100), and over-long examples lose tokens from the
*left of the prompt*, never from the completion. A run is four named steps: ``encode``
(:func:`selfimprove.training.encode.encode`), :func:`build_model`, :func:`train` and
:func:`export` (:func:`export_unchanged` when there is nothing to train on).

No redundant work (:mod:`selfimprove.training.shared_prefix`): the model's forward computes the
LM head and the loss only at completion tokens, and with ``shared_prefix`` (the default) a
prompt prefix that a batch's rows share (the few-shot exemplars) runs once per batch; examples
sharing one fill batches together. Same loss and gradients as the plain forward up to float
rounding. Attention while training: ``attn_implementation`` (auto: eager on CPU, where torch's
sdpa backward is slow; sdpa on a GPU).

The output folder is a complete Hugging Face model folder (merged float32 weights, config,
tokenizer, generation config) plus ``adapter/`` (the peft adapter, LoRA only),
``train_log.jsonl`` (one record per logging step) and ``finetune_info.json``. It is written
atomically, so a killed run leaves no half-written model behind, and it is a pure function of
the inputs (no timings; ``adapter_config.json`` with sorted module lists): the same inputs give
the same bytes, also after a resume (on the same machine type and thread count).

Resumable: with a ``ckpt_dir`` (the stage uses ``data/rounds/<r>/model.ckpt/``, not a DVC
output) the Trainer checkpoints every ``save_steps`` optimizer steps; a rerun whose settings
(config, seed, start model, tokenized examples, number of processes) match ``settings.json``
there resumes from the last complete checkpoint, and the folder is removed after success. The
data order is a pure function of (seed, epoch), so a resumed run sees the batches an
uninterrupted one would (:mod:`selfimprove.training.resume`).

Multi-process: run under ``accelerate launch`` (DDP; FSDP/DeepSpeed through an accelerate
config). Every process trains on its slice of each global batch; only the main process (global
rank 0, also across machines: ``--num_machines``) writes the model folder, the logs and removes
the checkpoints. Each machine reads the inputs from its own copy of the project; resuming a
multi-machine run needs ``ckpt_dir`` on a filesystem all machines share.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from selfimprove.config.training import FinetuneConfig, LoraSection
from selfimprove.core.heap import release_heap
from selfimprove.core.io import InputError, atomic_path, write_json, write_jsonl
from selfimprove.training.encode import CompletionCollator, encode
from selfimprove.training.processes import process_batch
from selfimprove.training.resume import (  # is_main_process: also used by the stage, CLI
    CKPT_SETTINGS,
    complete_marker_callback,
    epochs_planned,
    is_main_process,
    planned_pad_fraction,
    planned_tokens,
    prepare_resume,
    resume_settings,
    seeded_trainer,
    world_size,
)
from selfimprove.training.shared_prefix import use_completion_loss

log = logging.getLogger(__name__)


class DiskFullError(InputError):
    """The disk filled up while saving; nothing was replaced."""


# ----------------------------------------------------------------------------- model


def _load_model(model_dir: Path, dtype, attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM

    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **kw)


def train_attention(setting: str) -> str:
    """The attention kernel ``finetune.attn_implementation`` selects on this machine: ``auto``
    is sdpa on a GPU and eager on CPU (torch's CPU sdpa backward is the slower one there)."""
    import torch

    if setting != "auto":
        return setting
    return "sdpa" if torch.cuda.is_available() else "eager"


#: the attention kernel CPU training runs: the model's eager attention whose probabilities (its
#: largest activations: rows x heads x queries x keys, float32 and bf16) are not kept for the
#: backward but recomputed there (torch.utils.checkpoint): the same floats in less memory
EAGER_RECOMPUTED = "selfimprove_eager_recomputed"


def _eager_recomputed(module, query, key, value, attention_mask, *args, **kwargs):
    """The eager attention of ``module``'s model file; while training, through a checkpoint."""
    import sys

    import torch
    from torch.utils.checkpoint import checkpoint

    eager = sys.modules[type(module).__module__].eager_attention_forward
    if not (module.training and torch.is_grad_enabled()):
        return eager(module, query, key, value, attention_mask, *args, **kwargs)

    def attend(q, k, v, mask):
        return eager(module, q, k, v, mask, *args, **kwargs)[0]

    return checkpoint(attend, query, key, value, attention_mask, use_reentrant=False), None


def recompute_attention(model) -> None:
    """Switch an eager-attention model to :data:`EAGER_RECOMPUTED` (same masks and floats as
    eager; dropout masks are replayed): the attention probabilities of all layers are the bulk
    of CPU training's memory otherwise. A model whose file has no ``eager_attention_forward``
    keeps eager."""
    import sys

    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    attn = next((m for n, m in lm.named_modules() if n.endswith("self_attn")), None)
    module = sys.modules.get(type(attn).__module__) if attn is not None else None
    if not hasattr(module, "eager_attention_forward"):
        return
    AttentionInterface.register(EAGER_RECOMPUTED, _eager_recomputed)
    AttentionMaskInterface.register(EAGER_RECOMPUTED, eager_mask)
    lm.set_attn_implementation(EAGER_RECOMPUTED)


def _save_model_folder(model, tokenizer, out: Path) -> None:
    """Save float32 weights (safetensors), config, generation config and tokenizer."""
    import torch

    model = model.to(torch.float32)
    model.config.use_cache = True
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _wrap_lora(model, lora: LoraSection):
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_cfg, autocast_adapter_dtype=True)
    except ValueError as e:
        import torch

        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise InputError(
            f"finetune.lora.target_modules={lora.target_modules}: {e}. "
            f"Linear layers in this model: {', '.join(linear)}"
        ) from None


def _log_last_step_callback():
    """A Trainer callback that also logs at the final optimizer step (for ``final_loss``)."""
    from transformers import TrainerCallback

    class LogLastStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return LogLastStep()


#: optimizer steps between two ``malloc_trim`` calls during training. glibc keeps the freed
#: activations of each step mapped, and the next steps' allocations land beside them instead of
#: in them: the default's round-2 fine-tuning grew to a 2,856 MB peak that way. Measured there
#: (1 thread, the same model bytes each time): never 2,856 MB peak / 7 s system time; every
#: 4 steps 2,683 MB / 26 s; every step 2,510 MB / 49 s (re-faulting the returned pages).
TRIM_EVERY_STEPS = 4


def _release_heap_callback(every: int = TRIM_EVERY_STEPS):
    """A Trainer callback that returns freed heap to the OS every ``every`` optimizer steps
    (:data:`TRIM_EVERY_STEPS`; it changes no float, only the peak resident memory)."""
    from transformers import TrainerCallback

    class ReleaseHeap(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0:
                release_heap()
            return control

    return ReleaseHeap()


def _step_weighted_mean(records: list[dict]) -> float:
    """Mean loss per optimizer step from logging-window means (windows weighted by length).

    >>> _step_weighted_mean([{"step": 2, "loss": 1.0}, {"step": 3, "loss": 4.0}])
    2.0
    """
    total, prev = 0.0, 0
    for r in records:
        total += r["loss"] * (r["step"] - prev)
        prev = r["step"]
    return total / prev


def _disk_full(e: OSError, out_dir: Path) -> DiskFullError:
    return DiskFullError(
        f"{out_dir}: disk full while saving the fine-tuned model ({e.strerror or e}); nothing was "
        f"replaced: {out_dir} still holds its previous contents (if any) and the partial copy "
        "was removed. Free disk space and rerun (training resumes from its last checkpoint)"
    )


#: keys of the returned info that describe this run rather than its result: left out of the
#: model folder's ``finetune_info.json`` (everything in the folder is a pure function of the
#: inputs, so reruns and resumed runs give the same bytes); the stage writes them to the untracked
#: data/resources/finetune@<round>.json (core.timings), not to the cached finetune.json
RUN_KEYS = ("runtime_s", "resumed_from_step")


def new_run_info(method: str, n_examples: int, n_truncated: int = 0, n_dropped: int = 0) -> dict:
    """A training run's record before it trains (finetune.json's keys, in their order)."""
    return {
        "method": method,
        "n_examples": n_examples,
        "n_truncated": n_truncated,
        "n_dropped": n_dropped,
        "steps": 0,
        "train_loss": None,
        "final_loss": None,
        "runtime_s": 0.0,
        "pad_fraction": None,
        "tokens_trained": 0,
        "trainable_params": 0,
        "skipped": False,
        "skipped_flag": 0,
        "skip_reason": None,
        "resumed_from_step": None,
    }


def skip_reason(n_examples: int, n_dropped: int, max_length: int) -> str:
    """Why a round trains nothing (``finetune.json``'s ``skip_reason``).

    >>> skip_reason(0, 0, 768)
    'no training examples: the filter kept nothing (the training set is empty)'
    >>> skip_reason(3, 3, 64)[:52]
    'all 3 training examples dropped: each completion + E'
    """
    if n_examples == 0:
        return "no training examples: the filter kept nothing (the training set is empty)"
    return (
        f"all {n_examples} training examples dropped: each completion + EOS is longer than "
        f"finetune.max_length={max_length}; raise finetune.max_length"
    )


def normalize_adapter_config(path: Path) -> None:
    """Rewrite peft's ``adapter_config.json`` with its module sets sorted: peft stores
    ``target_modules`` as a set, so the saved list order varies with the string hash seed and
    identical training would give files with different hashes.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "adapter_config.json"
    >>> _ = f.write_text('{"target_modules": ["v_proj", "q_proj"], "r": 8}')
    >>> normalize_adapter_config(f); json.loads(f.read_text())["target_modules"]
    ['q_proj', 'v_proj']
    >>> shutil.rmtree(f.parent)
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("target_modules", "exclude_modules"):
        value = data.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            data[key] = sorted(value)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _no_temp_leftovers():
    """Remove, on success and failure, the empty ``torchinductor_<user>`` folder that importing
    transformers' Trainer creates in the system temp dir, when it was not there before (the
    Trainer's own scratch folder is a ``TemporaryDirectory``; the stage needs none)."""
    tmp = Path(tempfile.gettempdir())
    before = {p.name for p in tmp.glob("torchinductor_*")}
    try:
        yield
    finally:
        for p in tmp.glob("torchinductor_*"):
            if p.name not in before:
                with contextlib.suppress(OSError):
                    p.rmdir()  # only if still empty


@contextlib.contextmanager
def _atomic_model_dir(out_dir: Path):
    """A temporary sibling of ``out_dir``, renamed onto it on success; disk full: a clear error."""
    try:
        with atomic_path(out_dir, is_dir=True) as tmp:
            yield tmp
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise _disk_full(e, out_dir) from e
        raise


def finetune(
    model_dir: Path,
    examples: list[dict],
    out_dir: Path,
    cfg: FinetuneConfig,
    seed: int,
    ckpt_dir: Path | None = None,
    save_steps: int = 50,
    callbacks: list | None = None,
) -> dict:
    """Fine-tune the model in ``model_dir`` on ``examples`` and write the result to ``out_dir``.

    ``examples`` are dicts with ``prompt`` and ``completion`` strings (other keys are ignored).
    Returns: n_examples, n_truncated, n_dropped, steps, train_loss (mean over all steps),
    final_loss (mean over the last logging window), pad_fraction (of the planned batches),
    trainable_params, method, skipped / skipped_flag (1 = nothing to train on: ``out_dir``
    gets the start model unchanged, so later rounds chain) and skip_reason, and the run's
    :data:`RUN_KEYS` (runtime_s: training only, resumed_from_step). ``out_dir/finetune_info.json``
    holds the same without the run keys.

    ``ckpt_dir``: checkpoint every ``save_steps`` optimizer steps there and resume from it (see
    the module docstring; the Trainer works there, nothing goes to the system temp dir); None =
    no checkpoints (a temporary scratch folder, removed). ``callbacks``: extra Trainer callbacks.
    Under a distributed launch only the main process writes ``out_dir``.
    """
    with _no_temp_leftovers():
        return _finetune(model_dir, examples, out_dir, cfg, seed, ckpt_dir, save_steps, callbacks)


def _finetune(model_dir, examples, out_dir, cfg, seed, ckpt_dir, save_steps, callbacks) -> dict:
    from transformers import set_seed

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    tokenizer, features, n_truncated, n_dropped = encode(model_dir, examples, cfg.max_length)
    info = new_run_info(cfg.method, len(examples), n_truncated, n_dropped)

    def folder_info() -> dict:
        return {k: v for k, v in info.items() if k not in RUN_KEYS}

    set_seed(seed)
    if not features:
        reason = skip_reason(len(examples), n_dropped, cfg.max_length)
        log.warning("finetune: skipped (%s); saving %s unchanged to %s", reason, model_dir, out_dir)
        info |= {"skipped": True, "skipped_flag": 1, "skip_reason": reason}
        if is_main_process():
            export_unchanged(model_dir, tokenizer, out_dir, folder_info())
        return info

    bf16 = train_bf16(cfg.dtype)
    model = build_model(model_dir, cfg, bf16)
    info["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    resume = None
    if ckpt_dir is not None:
        ckpt_dir = Path(ckpt_dir)
        resume = prepare_resume(ckpt_dir, resume_settings(model_dir, features, cfg, seed))
        info["resumed_from_step"] = int(resume.name.split("-")[1]) if resume else None
    with contextlib.ExitStack() as stack:
        if ckpt_dir is not None:
            work = ckpt_dir
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="selfimprove-")))
        # the weights of a distributed run, gathered by a collective save; rank 0 reads them
        # and removes them, on success and failure (the other ranks may finish first)
        final = work / "final" if world_size() > 1 else None
        if final is not None and is_main_process():
            stack.callback(shutil.rmtree, final, ignore_errors=True)
        args = training_args(cfg, work, seed, bf16, save_steps if ckpt_dir is not None else None)
        run = train(model, tokenizer, features, cfg, args, resume, final, callbacks)
        del model  # the run's trainer holds it; export frees it before merging
        info.update(run.stats)
        if not is_main_process():
            if ckpt_dir is not None and not (ckpt_dir / CKPT_SETTINGS).exists():
                # a machine that does not share rank 0's filesystem (rank 0 wrote the settings
                # before training): the Trainer left only this rank's RNG state here, which no
                # run resumes from (see prepare_resume); rank 0 removes its own folder
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            return info
        export(run, model_dir, tokenizer, out_dir, cfg.method, final, folder_info())
    if ckpt_dir is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info(
        "finetune: %s, %d examples, %d steps, loss %.4f -> %.4f in %.1fs",
        cfg.method,
        len(features),
        info["steps"],
        info["train_loss"],
        info["final_loss"],
        info["runtime_s"],
    )
    return info


# ----------------------------------------------------------------------------- steps


def train_bf16(dtype: str) -> bool:
    """Whether training runs in bfloat16: ``finetune.dtype``, ``auto`` = where the sampler's
    ``auto`` picks bfloat16 on this machine (:func:`selfimprove.sampling.base.resolve_dtype`).

    >>> train_bf16("bfloat16"), train_bf16("float32")
    (True, False)
    """
    if dtype != "auto":
        return dtype == "bfloat16"
    import torch

    from selfimprove.sampling.base import resolve_dtype

    return resolve_dtype("auto", "cuda" if torch.cuda.is_available() else "cpu") == torch.bfloat16


def build_model(model_dir: Path, cfg: FinetuneConfig, bf16: bool):
    """Step 2: the model to train. LoRA: the start model (bfloat16 when ``bf16``) with a fresh
    adapter (its init draws from the global RNG: seed it first); full: float32 weights. No KV
    cache; the LM head and loss at completion tokens only, a shared prompt prefix run once."""
    import torch

    attn = train_attention(cfg.attn_implementation)
    if cfg.method == "lora":
        model = _load_model(model_dir, torch.bfloat16 if bf16 else torch.float32, attn)
        model = _wrap_lora(model, cfg.lora)
    else:
        model = _load_model(model_dir, torch.float32, attn)
    if attn == "eager":
        recompute_attention(model)
    model.config.use_cache = False
    use_completion_loss(model)  # LM head at completion tokens only, shared prefix once
    return model


def training_args(cfg: FinetuneConfig, work: Path, seed: int, bf16: bool, save_steps: int | None):
    """The Trainer's arguments: scratch and checkpoints in ``work``, a checkpoint every
    ``save_steps`` optimizer steps (None: no checkpoints)."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=process_batch(cfg),
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        # full fine-tuning: bf16 autocast over float32 weights; LoRA: the base is bf16 already
        bf16=bf16 and cfg.method == "full",
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if save_steps is not None else "no",
        save_steps=save_steps if save_steps is not None else 50,
        save_total_limit=1,
        eval_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        train_sampling_strategy=(
            "sequential"  # finetune.order: as_written (a curriculum)
            if cfg.order == "as_written"
            else "group_by_length" if cfg.group_by_length else "random"
        ),
    )


@dataclass
class TrainRun:
    """What :func:`train` leaves: the trainer (the trained model is ``trainer.model``; None
    once :func:`export` freed it), the loss log and the result's keys of the info."""

    trainer: object | None
    records: list[dict]
    stats: dict


def loss_records(history: list[dict]) -> list[dict]:
    """``train_log.jsonl``'s records: the Trainer's log entries that have a loss.

    >>> loss_records([{"step": 1, "loss": 2.0, "learning_rate": 0.1}, {"step": 1, "x": 0}])
    [{'step': 1, 'epoch': None, 'loss': 2.0, 'lr': 0.1, 'grad_norm': None}]
    """
    return [
        {
            "step": h["step"],
            "epoch": h.get("epoch"),
            "loss": h["loss"],
            "lr": h.get("learning_rate"),
            "grad_norm": h.get("grad_norm"),
        }
        for h in history
        if "loss" in h
    ]


def train(
    model, tokenizer, features, cfg: FinetuneConfig, args, resume=None, final=None, callbacks=None
):
    """Step 3: train ``model`` on the encoded ``features`` (resuming from the checkpoint folder
    ``resume`` when given); ``final``: a folder for a distributed run's collective save.
    Returns a :class:`TrainRun` whose ``stats`` are steps, train_loss, final_loss, runtime_s
    and pad_fraction (of the planned batches: the same after a resume)."""
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    trainer = seeded_trainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=CompletionCollator(pad_id, share_prefix=cfg.shared_prefix),
        share_prefix=cfg.shared_prefix,
        callbacks=[_log_last_step_callback(), complete_marker_callback(),
                   _release_heap_callback(), *(callbacks or [])],
    )
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.perf_counter() - t0
    history = list(trainer.state.log_history)
    if final is not None:
        # A collective save: under FSDP / DeepSpeed ZeRO-3 the ranks gather the full
        # weights for rank 0 (plain DDP: rank 0 holds them anyway). Only rank 0 writes.
        trainer.save_model(str(final))
    records = loss_records(history)
    train_loss = float(result.training_loss)
    if resume is not None and records:
        # the Trainer averages only the steps run after resuming; the log covers all of them
        train_loss = _step_weighted_mean(records)
    # padding of the planned batches (the same after a resume, unlike counting what the
    # collator saw): every epoch's order, cut into the per-step batches
    sampler = trainer.order_sampler
    orders = [sampler.order(e) for e in range(epochs_planned(cfg.epochs))]
    batch = trainer.args.train_batch_size
    stats = dict(
        steps=int(result.global_step),
        train_loss=train_loss,
        final_loss=records[-1]["loss"] if records else float(result.training_loss),
        runtime_s=round(runtime, 3),
        pad_fraction=round(planned_pad_fraction(sampler.lengths, orders, batch), 4),
        # compute, for studies at equal compute: the batches the optimizer steps covered (each
        # step: grad_accum batches on every process of a distributed run)
        tokens_trained=planned_tokens(
            sampler.lengths,
            orders,
            batch,
            int(result.global_step) * cfg.grad_accum * trainer.args.world_size,
        ),
    )
    if any(not math.isfinite(r["loss"]) for r in records):
        log.warning("finetune: non-finite loss logged; check learning_rate and dtype")
    return TrainRun(trainer, records, stats)


def export(run: TrainRun, model_dir, tokenizer, out_dir: Path, method: str, final, info) -> None:
    """Step 4: write the model folder ``out_dir`` atomically: merged float32 weights (LoRA: the
    adapter in ``adapter/``, merged into the float32 start model), tokenizer, the loss log and
    ``finetune_info.json`` (``info``). ``final``: a distributed run's collective save, read
    instead of the trainer's model. Frees ``run.trainer`` before loading another model."""
    import torch

    with _atomic_model_dir(out_dir) as tmp:
        if method == "lora":
            (tmp / "adapter").mkdir()
            if final is not None:
                for name in ("adapter_config.json", "adapter_model.safetensors"):
                    shutil.copy2(final / name, tmp / "adapter" / name)
            else:
                run.trainer.model.save_pretrained(tmp / "adapter")
            normalize_adapter_config(tmp / "adapter" / "adapter_config.json")
            run.trainer = None
            gc.collect()
            release_heap()  # the training's freed activations: not under the merge's peak
            # Merge on float32 weights so small deltas are not lost to bf16 rounding.
            from peft import PeftModel

            base = _load_model(model_dir, torch.float32)
            merged = PeftModel.from_pretrained(base, tmp / "adapter").merge_and_unload()
            _save_model_folder(merged, tokenizer, tmp)
        elif final is not None:
            run.trainer = None
            gc.collect()
            release_heap()  # the training's freed activations: not under the merge's peak
            _save_model_folder(_load_model(final, torch.float32), tokenizer, tmp)
        else:
            _save_model_folder(run.trainer.model, tokenizer, tmp)
        write_jsonl(tmp / "train_log.jsonl", run.records)
        write_json(tmp / "finetune_info.json", info)


def export_unchanged(model_dir: Path, tokenizer, out_dir: Path, info: dict) -> None:
    """Step 4 of a run with nothing to train on: the start model saved as the output (float32),
    an empty loss log and ``finetune_info.json``, so later rounds chain."""
    import torch

    start = _load_model(model_dir, torch.float32)
    with _atomic_model_dir(out_dir) as tmp:
        _save_model_folder(start, tokenizer, tmp)
        write_jsonl(tmp / "train_log.jsonl", [])
        write_json(tmp / "finetune_info.json", info)
