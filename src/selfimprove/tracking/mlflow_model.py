"""selfimprove round model for MLflow: a LoRA adapter on its start model.

model_config: base_model_uri (a registered model version it was trained on, loaded
recursively) or base_path (a local model folder, checked against base_digest); base_hub_id;
max_new_tokens. base_path is relative to the project root the model was logged from (models
logged before that hold an absolute path): it is looked up under base_root when given, else
under $SELFIMPROVE_PROJECT_ROOT, else under the cwd and then each of its parents; the first
folder there whose digest is base_digest is the base. Load-time overrides
(mlflow.pyfunc.load_model(uri, model_config={...})), passed down the chain: base_root = the
project folder (a clone of the project, with `dvc pull` done); base_override = a model folder
used instead of the recorded base folder (no digest check); allow_hub_fallback = load
base_hub_id when the base folder is missing. The
adapter (if any) is the artifact "adapter". predict(prompts) returns greedy continuations;
unwrap_python_model().model / .tokenizer are the transformers model and tokenizer.

This file is MLflow "models from code": selfimprove's registry copies it into every model it
logs with ``log_model: adapter``, so loading needs no selfimprove install. It must therefore
import nothing from selfimprove (a test checks); ``folder_digest`` repeats
``selfimprove.core.digest.digest`` (a test checks that both agree).
"""

import hashlib
import os
import warnings
from pathlib import Path

import mlflow
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

PASS_DOWN = ("base_override", "base_root", "allow_hub_fallback")
#: environment variable naming the project folder relative base paths are resolved against
ROOT_ENV = "SELFIMPROVE_PROJECT_ROOT"


def folder_digest(path, length=36):
    """sha256 hex (first ``length`` chars) of a folder's sorted relative paths and file sha256s,
    ``*.tmp`` files and folders skipped."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root)
        if any(part.endswith(".tmp") for part in rel.parts):
            continue
        fh = hashlib.sha256()
        with open(f, "rb") as fd:
            while block := fd.read(1 << 20):
                fh.update(block)
        h.update(f"{rel.as_posix()}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest()[:length]


def base_candidates(path, root=None):
    """Where the recorded base folder ``path`` may be, in order: itself when absolute; else
    under ``root`` (model_config base_root), else under $SELFIMPROVE_PROJECT_ROOT, else under
    the cwd and each of its parents (the model may be loaded from inside the project)."""
    p = Path(path)
    if p.is_absolute():
        return [p]
    root = root or os.environ.get(ROOT_ENV)
    cwd = Path.cwd()
    roots = [Path(root).absolute()] if root else [cwd, *cwd.parents]
    out = []
    for d in roots:
        c = Path(os.path.normpath(d / p))
        if c not in out:
            out.append(c)
    return out


def resolve_base(cfg):
    """The folder (or hub id) to load the start model from, per the model_config ``cfg``."""
    path, digest, hub_id = cfg.get("base_path"), cfg.get("base_digest"), cfg.get("base_hub_id")
    if cfg.get("base_override"):
        return cfg["base_override"]
    if path:
        where = base_candidates(path, cfg.get("base_root"))
        found = [c for c in where if c.is_dir()]
        for folder in found:
            if not digest or folder_digest(folder) == digest:
                return str(folder)
        if found:
            raise RuntimeError(
                f"base model folder {found[0]} changed since this model was logged (digest "
                f"{digest}); restore it (`dvc checkout` / `dvc pull` in the project), or load "
                "with model_config={'base_override': <folder>} to use another folder"
            )
    if path and not (cfg.get("allow_hub_fallback") and hub_id):
        looked = ", ".join(str(c) for c in where[:3]) + (" ..." if len(where) > 3 else "")
        raise RuntimeError(
            f"base model folder {path} not found; restore it (`dvc pull` in the project) and "
            "load from the project folder or with model_config={'base_root': <project folder>}"
            ", or load with model_config={'base_override': <folder>} or "
            f"{{'allow_hub_fallback': True}} (hub id {hub_id!r}); looked in {looked}"
        )
    if not hub_id:
        raise RuntimeError("no base model recorded; pass model_config={'base_override': <folder>}")
    if path:
        warnings.warn(
            f"base model folder {path} not found; loading {hub_id} from the hub", stacklevel=2
        )
    return hub_id


class SelfImproveModel(PythonModel):
    def load_context(self, context):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = dict(context.model_config or {})
        if cfg.get("base_model_uri"):
            down = {k: cfg[k] for k in PASS_DOWN if cfg.get(k)}
            inner = mlflow.pyfunc.load_model(cfg["base_model_uri"], model_config=down or None)
            inner = inner.unwrap_python_model()
            model, tokenizer = inner.model, inner.tokenizer
        else:
            src = resolve_base(cfg)
            tokenizer = AutoTokenizer.from_pretrained(src)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        adapter = (context.artifacts or {}).get("adapter")
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        model.eval()
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens = int(cfg.get("max_new_tokens") or 64)

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        import torch

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = []
        for prompt in model_input:
            enc = tok(prompt, return_tensors="pt")
            with torch.no_grad():
                ids = self.model.generate(
                    **enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad
                )
            out.append(tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
        return out


# MLflow loads the copy in a logged model under a generated module name; imported as part of
# the package (tests, doctest collection) the file only defines names and registers nothing.
if __name__ != "selfimprove.tracking.mlflow_model":
    set_model(SelfImproveModel())
