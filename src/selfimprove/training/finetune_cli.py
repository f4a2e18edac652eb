"""Fine-tune outside the pipeline, on one process or many (``accelerate launch``).

    python -m selfimprove.training.finetune_cli --model M --train train.jsonl --out OUT \\
        --set epochs=1 --set lora.r=8
    accelerate launch --num_processes 2 -m selfimprove.training.finetune_cli --model M ...

``train.jsonl`` holds ``prompt``/``completion`` records (a round's ``train.jsonl``). Settings
are ``finetune`` keys of params.yaml (defaults from :class:`FinetuneConfig`), overridden with
``--set key=value`` (dotted keys for nested ones, values parsed as YAML). Only the main process
writes ``OUT`` (the model folder with ``train_log.jsonl`` and ``finetune_info.json``).
"""

from __future__ import annotations

import argparse
import logging
import sys


def parse_sets(items: list[str]) -> dict:
    """``["epochs=1", "lora.r=8"]`` -> ``{"epochs": 1, "lora": {"r": 8}}`` (values as YAML).

    >>> parse_sets(["epochs=1", "lora.r=8", "lora.target_modules=[q_proj]", "learning_rate=1e-4"])
    {'epochs': 1, 'lora': {'r': 8, 'target_modules': ['q_proj']}, 'learning_rate': 0.0001}
    """
    from selfimprove.config.yaml_file import as_dvc_reads
    from selfimprove.core.io import InputError

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected key=value, e.g. --set epochs=1")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = as_dvc_reads(value, None, f"--set {key}")  # YAML 1.2: 1e-4 is a number
    return out


def _refuse_out_over_an_input(out: str, *inputs: str | None) -> None:
    """``--out`` replaces its folder whole: it must not be (or hold) an input.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _refuse_out_over_an_input(d, d + "/model")
    Traceback (most recent call last):
    ...
    selfimprove.core.io.InputError: --out ...: is or holds the input ...; write the model elsewhere
    """
    from pathlib import Path

    from selfimprove.core.io import InputError

    target = Path(out).resolve()
    for inp in inputs:
        if inp and (Path(inp).resolve() == target or target in Path(inp).resolve().parents):
            raise InputError(f"--out {out}: is or holds the input {inp}; write the model elsewhere")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="model folder to start from")
    p.add_argument("--train", required=True, help="jsonl with prompt/completion records")
    p.add_argument("--out", required=True, help="output model folder (written atomically)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a finetune setting"
    )
    p.add_argument("--ckpt", default=None, help="checkpoint/resume folder (default: none)")
    p.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from pydantic import ValidationError

    from selfimprove.config.training import FinetuneConfig
    from selfimprove.core.io import InputError, read_jsonl
    from selfimprove.training.finetune import finetune, is_main_process

    try:
        try:
            cfg = FinetuneConfig(**parse_sets(args.set))
        except ValidationError as e:
            raise InputError(f"--set: {e}") from None
        _refuse_out_over_an_input(args.out, args.model, args.train, args.ckpt)
        examples = read_jsonl(args.train, required=["prompt", "completion"])
        info = finetune(
            args.model,
            examples,
            args.out,
            cfg,
            args.seed,
            ckpt_dir=args.ckpt,
            save_steps=args.save_steps,
        )
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if is_main_process():
        print(info)


if __name__ == "__main__":
    main()
