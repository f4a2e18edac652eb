"""What every sampling backend shares: the request (:class:`SamplingParams`), the result
(:class:`Completion`), the :class:`Sampler` protocol, and small pure helpers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from selfimprove.core.io import InputError


@dataclass
class SamplingParams:
    """How to sample: ``n`` completions per prompt; ``temperature`` 0 means greedy (then n = 1)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ("\n\nQ:", "\nQ:")
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        problems = []
        if self.n < 1:
            problems.append(f"n={self.n} must be >= 1")
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.temperature == 0 and self.n != 1:
            problems.append(
                f"n={self.n} with temperature=0: greedy decoding gives one completion; "
                "set n: 1 or a temperature > 0"
            )
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop={self.stop!r} must be non-empty strings")
        if problems:
            raise InputError("SamplingParams: " + "; ".join(problems))


@dataclass
class Completion:
    """One sampled continuation."""

    text: str  # decoded continuation, cut before the first stop string
    n_tokens: int  # tokens generated up to and including the stop (or to EOS / the limit)
    finish_reason: str  # "stop" | "eos" | "length"


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Return the index where the earliest stop string starts in ``text``, or None.

    >>> find_stop("x = 3.\\n\\nQ: next", ("\\n\\nQ:", "\\nQ:"))
    6
    >>> find_stop("The answer is 6.\\nQ: more", ("\\n\\nQ:", "\\nQ:"))
    16
    >>> find_stop("no stop here", ("\\nQ:",)) is None
    True
    """
    best = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def seed_indices(index_offset: int | Sequence[int], n_prompts: int) -> list[int]:
    """The global index of each prompt, whose seeds its rows use: ``index_offset + i``, or one
    index per prompt (a caller pooling several sets keeps each question's index in its set).

    >>> seed_indices(3, 2), seed_indices([0, 1, 0], 3)
    ([3, 4], [0, 1, 0])
    >>> seed_indices([0], 2)
    Traceback (most recent call last):
    ...
    selfimprove.core.io.InputError: index_offset: 1 indices for 2 prompts; give one per prompt
    """
    from selfimprove.core.io import InputError

    if isinstance(index_offset, int):
        if index_offset < 0:
            raise InputError(f"index_offset={index_offset} must be >= 0")
        return [index_offset + i for i in range(n_prompts)]
    out = [int(i) for i in index_offset]
    if len(out) != n_prompts:
        raise InputError(
            f"index_offset: {len(out)} indices for {n_prompts} prompts; give one per prompt"
        )
    if any(i < 0 for i in out):
        raise InputError("index_offset: indices must be >= 0")
    return out


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """Seed of the random stream of one row: a hash of (seed, prompt index, sample index).

    >>> row_seed(0, 0, 0) == row_seed(0, 0, 0) != row_seed(0, 0, 1)
    True
    >>> 0 <= row_seed(7, 3, 2) < 2**63
    True
    """
    digest = hashlib.blake2b(f"{seed}:{prompt_index}:{sample_index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def bos_ids(tokenizer) -> list[int]:
    """``[bos]`` if the tokenizer puts a BOS token in front by default (e.g. Llama-2), else [].

    >>> from types import SimpleNamespace as NS
    >>> class Tok:
    ...     bos_token_id = 1
    ...     def __call__(self, text, add_special_tokens):
    ...         return NS(input_ids=[1, 9] if add_special_tokens else [9])
    >>> bos_ids(Tok())
    [1]
    >>> Tok.bos_token_id = None
    >>> bos_ids(Tok())
    []
    """
    bos = tokenizer.bos_token_id
    with_special = tokenizer("1", add_special_tokens=True).input_ids
    without = tokenizer("1", add_special_tokens=False).input_ids
    return [bos] if bos is not None and with_special[:1] == [bos] and without[:1] != [bos] else []


def resolve_dtype(dtype: str, device: str):
    """Map "auto"/"float32"/"bfloat16"/"float16" to a torch dtype for ``device``.

    "auto" is bfloat16 on CUDA (float16 if the GPU lacks bf16) and, on CPU, bfloat16 only when
    the CPU has native bf16 instructions (AVX512-BF16 or AMX), else float32.

    >>> import torch
    >>> resolve_dtype("float32", "cpu") is torch.float32
    True
    """
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise InputError(f"dtype={dtype!r} is not supported; use one of: auto, {', '.join(names)}")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu":
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        if caps.get("avx512_bf16") or caps.get("amx_tile"):
            return torch.bfloat16
    return torch.float32


class Sampler(Protocol):
    """A sampling backend (``sampling.factory.make_sampler`` picks one): the transformers sampler
    or vLLM. ``sample`` returns, per prompt, ``params.n`` completions of ``prefix + prompt``."""

    model_dir: Path
    last_stats: dict

    def sample(
        self,
        prefix: str,
        prompts: list[str],
        params: SamplingParams,
        desc: str = "sampling",
        index_offset: int | Sequence[int] = 0,
    ) -> list[list[Completion]]: ...
