"""What makes a killed fine-tuning run resume to the same weights as an uninterrupted one.

- **Checkpoints** are marked complete once fully saved (a ``kill -9`` while one is written
  leaves it unmarked and it is not resumed from), and they are resumed only when the run's
  settings (config, seed, start model, tokenized examples, number of processes) match the
  ``settings.json`` written next to them.
- **The data order is a pure function of (seed, epoch)**: transformers' ``LengthGroupedSampler``
  draws its permutation from the *global* torch RNG, whose state at the start of epoch 2
  differs between a process that trained epoch 1 and one that resumed into epoch 2 (dropout,
  LoRA init and the sampler itself consume it). :class:`EpochSeededSampler` draws it from its
  own generator, re-seeded from (seed, epoch) on every pass, for both ``group_by_length``
  (mega-batches sorted by length) and uniformly random order; every rank of a distributed run
  computes the same order (accelerate hands each rank its slice of every global batch).

The epoch reaches the sampler through ``set_epoch`` (transformers and accelerate call it at
the start of every epoch) and, as a fallback for wrappers that do not forward it (accelerate's
``SkipBatchSampler`` around a ``BatchSamplerShard`` when a distributed run resumes mid-epoch),
through :func:`seeded_trainer`'s callback, which derives it from the optimizer step exactly as
the Trainer does (``global_step // update steps per epoch``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path

from selfimprove.config.training import FinetuneConfig
from selfimprove.core.io import write_json

log = logging.getLogger("selfimprove.training.finetune")  # one logger for the whole step

CKPT_SETTINGS = "settings.json"
CKPT_COMPLETE = "selfimprove_complete.json"


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed launch (``RANK`` set by it)."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes of the launch (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# ----------------------------------------------------------------------------- data order


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch's order: a hash of (seed, epoch), so that neighbouring
    seeds do not share orders shifted by one epoch (as ``seed + epoch`` would).

    >>> epoch_seed(1, 0) == epoch_seed(1, 0), epoch_seed(1, 1) == epoch_seed(2, 0)
    (True, False)
    >>> 0 <= epoch_seed(0, 3) < 2**63
    True
    """
    h = hashlib.sha256(f"selfimprove-order:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def epoch_order(
    lengths: list[int],
    group_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
    groups: list[int] | None = None,
) -> list[int]:
    """The example indices of one epoch, a pure function of the arguments.

    ``group_by_length``: transformers' length grouping (a random permutation cut into
    mega-batches of ``group_size``-sized batches, each sorted by length, the longest batch
    first); else a uniformly random permutation. ``groups`` (with ``group_by_length``): the
    examples of a shared-prefix group fill batches together, length-grouped inside the group
    (:func:`selfimprove.training.shared_prefix.grouped_order`).

    >>> lengths = [5, 1, 4, 2, 3, 6, 1, 2]
    >>> epoch_order(lengths, 2, seed=0, epoch=1, group_by_length=True) == epoch_order(
    ...     lengths, 2, seed=0, epoch=1, group_by_length=True)
    True
    >>> sorted(epoch_order(lengths, 2, 0, 0, False)) == list(range(8))
    True
    >>> epoch_order(lengths, 2, 0, 0, False) != epoch_order(lengths, 2, 0, 1, False)
    True
    """
    import torch

    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    if group_by_length:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        if groups is not None and max(groups, default=-1) >= 0:  # no group: as before
            from selfimprove.training.shared_prefix import grouped_order

            return grouped_order(lengths, groups, group_size, generator)
        order = get_length_grouped_indices(lengths, group_size, generator=generator)
        return [int(i) for i in order]
    return torch.randperm(len(lengths), generator=generator).tolist()


def planned_batches(lengths: list[int], orders: list[list[int]], batch_size: int):
    """The examples' lengths of every batch of the plan, in order: each order cut into batches
    of ``batch_size`` (what the Trainer's dataloader does with each epoch's order)."""
    for order in orders:
        for i in range(0, len(order), batch_size):
            yield [lengths[j] for j in order[i : i + batch_size]]


def planned_pad_fraction(lengths: list[int], orders: list[list[int]], batch_size: int) -> float:
    """Share of padding slots when every order is cut into batches of ``batch_size`` and each
    batch is padded to its longest example (what the collator pads, computed from the plan so
    that a resumed run reports the same figure as an uninterrupted one).

    >>> round(planned_pad_fraction([3, 1, 2, 2], [[0, 1, 2, 3]], 2), 3)  # 2 of 10 slots
    0.2
    """
    real = slots = 0
    for chunk in planned_batches(lengths, orders, batch_size):
        real += sum(chunk)
        slots += len(chunk) * max(chunk)
    return 1.0 - real / slots if slots else 0.0


def planned_tokens(lengths: list[int], orders: list[list[int]], batch_size: int,
                   n_batches: int | None = None) -> int:
    """Tokens (not padding) of the first ``n_batches`` batches of the plan (default: all),
    every order cut into batches of ``batch_size``: the tokens a training run computed on,
    from the plan, so a resumed run reports what an uninterrupted one does.

    >>> plan = [[0, 1, 2, 3], [3, 2, 1, 0]]
    >>> planned_tokens([3, 1, 2, 2], plan, 2), planned_tokens([3, 1, 2, 2], plan, 2, 3)
    (16, 12)
    """
    batches = [sum(chunk) for chunk in planned_batches(lengths, orders, batch_size)]
    return sum(batches if n_batches is None else batches[:n_batches])


def _sampler_base():
    from torch.utils.data import Sampler

    return Sampler


class EpochSeededSampler(_sampler_base()):
    """A training sampler whose order is :func:`epoch_order` of the current epoch.

    Not a ``RandomSampler`` subclass, so accelerate does not swap it for its own
    ``SeedableRandomSampler``; ``set_epoch`` selects the epoch (default 0). ``groups``: see
    :func:`epoch_order`.
    """

    def __init__(
        self,
        lengths: list[int],
        group_size: int,
        seed: int,
        group_by_length: bool,
        groups: list[int] | None = None,
        sequential: bool = False,
    ) -> None:
        self.sequential = bool(sequential)
        self.lengths = [int(n) for n in lengths]
        self.group_size = int(group_size)
        self.seed = int(seed)
        self.group_by_length = bool(group_by_length)
        self.groups = None if groups is None else [int(g) for g in groups]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        if self.sequential:  # finetune.order: as_written
            return list(range(len(self.lengths)))
        return epoch_order(
            self.lengths, self.group_size, self.seed, epoch, self.group_by_length, self.groups
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(self.order(self.epoch))


def seeded_trainer(*args, share_prefix: bool = False, **kwargs):
    """A ``transformers.Trainer`` (same arguments) whose training order is an
    :class:`EpochSeededSampler` seeded with ``data_seed`` (else ``seed``), grouping by length
    when ``train_sampling_strategy`` is ``group_by_length``, with mega-batches of global batches
    (per-device batch x accumulation x processes: the same global batch gives the same order
    on any number of processes). ``share_prefix`` (with length grouping): examples sharing a
    prompt prefix with a global batch's worth of others fill batches together
    (:func:`selfimprove.training.shared_prefix.prefix_groups`). The sampler is the trainer's
    ``order_sampler`` once training has started."""
    from transformers import Trainer, TrainerCallback

    class EpochSync(TrainerCallback):
        sampler: EpochSeededSampler | None = None

        def on_epoch_begin(self, args, state, control, train_dataloader=None, **kw):
            if self.sampler is not None and train_dataloader is not None:
                accum = args.gradient_accumulation_steps
                n = len(train_dataloader)
                per_epoch = max(n // accum + int(n % accum > 0), 1)  # as the Trainer counts
                # set directly: this must work where set_epoch is not forwarded to the sampler
                self.sampler.epoch = state.global_step // per_epoch
            return control

    class SeededOrderTrainer(Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._epoch_sync = EpochSync()
            self.add_callback(self._epoch_sync)
            self.order_sampler: EpochSeededSampler | None = None

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            a = self.args
            global_batch = a.train_batch_size * a.gradient_accumulation_steps * max(a.world_size, 1)
            by_length = getattr(a, "train_sampling_strategy", None) == "group_by_length" or bool(
                getattr(a, "group_by_length", False)
            )
            groups = None
            if share_prefix and by_length:
                from selfimprove.training.shared_prefix import prefix_groups

                groups = prefix_groups(list(dataset), min_rows=global_batch)
            sampler = EpochSeededSampler(
                [len(f["input_ids"]) for f in dataset],
                global_batch,
                a.data_seed if a.data_seed is not None else a.seed,
                by_length,
                groups,
                sequential=getattr(a, "train_sampling_strategy", None) == "sequential",
            )
            self._epoch_sync.sampler = self.order_sampler = sampler
            return sampler

    return SeededOrderTrainer(*args, **kwargs)


# ----------------------------------------------------------------------------- checkpoints


def complete_marker_callback():
    """A Trainer callback marking each checkpoint folder complete once it is fully saved."""
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    write_json(folder / CKPT_COMPLETE, {"step": state.global_step})
            return control

    return MarkComplete()


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step that was saved completely.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for step in (2, 4):
    ...     (d / f"checkpoint-{step}").mkdir()
    >>> _ = (d / "checkpoint-2" / CKPT_COMPLETE).write_text("{}")
    >>> last_complete_checkpoint(d).name  # checkpoint-4 was being written when killed
    'checkpoint-2'
    >>> shutil.rmtree(d)
    """
    found = []
    for p in Path(ckpt_dir).glob("checkpoint-*"):
        step = p.name.removeprefix("checkpoint-")
        if step.isdigit() and (p / CKPT_COMPLETE).is_file():
            found.append((int(step), p))
    return max(found)[1] if found else None


def resume_settings(model_dir: Path, features: list, cfg: FinetuneConfig, seed: int) -> dict:
    """What must match for a checkpoint to be resumed."""
    from selfimprove.core.digest import digest

    features_sha = hashlib.sha256(json.dumps(features, separators=(",", ":")).encode()).hexdigest()
    return {
        "config": cfg.model_dump(mode="json"),
        "seed": seed,
        "model": digest(model_dir),
        "features_sha256": features_sha,
        "world_size": world_size(),
    }


def prepare_resume(ckpt_dir: Path, settings: dict) -> Path | None:
    """The checkpoint to resume from (or None), after clearing stale state (main process)."""
    path = ckpt_dir / CKPT_SETTINGS
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    if found == settings:
        resume = last_complete_checkpoint(ckpt_dir)
        if resume is not None:
            log.info("finetune: resuming from %s", resume)
            return resume
    elif found is not None and is_main_process():
        differ = (
            [k for k in settings if found.get(k) != settings[k]] if isinstance(found, dict) else []
        )
        log.warning(
            "finetune: %s is from other settings (%s); starting over",
            ckpt_dir,
            ", ".join(differ) or "unreadable",
        )
    if is_main_process():
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)
    return None


def epochs_planned(epochs: float) -> int:
    """Passes the Trainer starts for ``epochs`` (a fractional last one counts).

    >>> epochs_planned(2), epochs_planned(1.5)
    (2, 2)
    """
    return max(math.ceil(epochs), 1)
