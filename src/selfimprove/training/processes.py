"""``finetune.processes``: a fine-tuning run in several CPU processes that split each batch.

The finetune stage launches them itself (:func:`cpu_launch`: ``accelerate launch``, torchrun,
DDP over gloo); each takes ``batch_size / processes`` examples of every batch
(:func:`process_batch`), so the global batch, and the training up to the order floats are
summed in, is that of one process (tests/integration/test_distributed.py).
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from selfimprove.config.training import FinetuneConfig
from selfimprove.core.io import InputError
from selfimprove.training.resume import world_size

log = logging.getLogger("selfimprove.training.finetune")  # one logger for the whole step


def process_batch(cfg: FinetuneConfig) -> int:
    """Examples per micro-batch of this process: ``batch_size`` split over ``processes`` when
    this is one of them, else all of it (one process; a launcher of your own: per process).

    >>> process_batch(FinetuneConfig(batch_size=8, processes=2))  # WORLD_SIZE unset: 1 process
    8
    """
    n = world_size()
    if cfg.processes > 1 and n == cfg.processes:
        return cfg.batch_size // n
    if cfg.processes > 1 and n > 1:
        raise InputError(
            f"finetune.processes is {cfg.processes} but {n} processes were launched "
            "(SELFIMPROVE_LAUNCH or accelerate launch): set finetune.processes: 1 with a "
            "launcher of your own (batch_size is then per process), or launch "
            f"{cfg.processes} processes"
        )
    return cfg.batch_size


def cpu_launch(cfg: FinetuneConfig, threads: int, module_args: list[str]) -> list[str] | None:
    """The command that runs ``python -m <module_args>`` in ``cfg.processes`` CPU processes
    (``accelerate launch``: torchrun, DDP over gloo, ``threads`` threads each), or None where
    this process trains alone: ``processes`` 1, already one of launched processes, or a GPU
    (one process there; several GPUs: ``SELFIMPROVE_LAUNCH``)."""
    if cfg.processes == 1 or "LOCAL_RANK" in os.environ:
        return None
    import torch

    if torch.cuda.is_available():
        log.info("finetune.processes %d: CPU only; training on the GPU in one process "
                 "(several GPUs: SELFIMPROVE_LAUNCH)", cfg.processes)  # fmt: skip
        return None
    with socket.socket() as s:  # a free port for the processes' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # --multi_gpu without GPUs: torchrun processes on CPU, gloo (--cpu would start one)
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(cfg.processes), "--num_machines", "1",
            "--num_cpu_threads_per_process", str(threads), "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port), "-m", *module_args]  # fmt: skip
