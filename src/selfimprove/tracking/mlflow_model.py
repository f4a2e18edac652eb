"""selfimprove round model for MLflow: a LoRA adapter on its start model.

model_config: base_model_uri (a registered model version it was trained on, loaded
recursively) or base_path (a local model folder, checked against base_digest); base_hub_id;
max_new_tokens. Load-time overrides (mlflow.pyfunc.load_model(uri, model_config={...})), passed
down the chain: base_override = a model folder used instead of the recorded base folder (no
digest check); allow_hub_fallback = load base_hub_id when the base folder is missing. The
adapter (if any) is the artifact "adapter". predict(prompts) returns greedy continuations;
unwrap_python_model().model / .tokenizer are the transformers model and tokenizer.

This file is MLflow "models from code": selfimprove's registry copies it into every model it
logs with ``log_model: adapter``, so loading needs no selfimprove install. It must therefore
import nothing from selfimprove (a test checks); ``folder_digest`` repeats
``selfimprove.core.digest.digest`` (a test checks that both agree).
"""

import hashlib
import warnings
from pathlib import Path

import mlflow
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

PASS_DOWN = ("base_override", "allow_hub_fallback")


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


def resolve_base(cfg):
    """The folder (or hub id) to load the start model from, per the model_config ``cfg``."""
    path, digest, hub_id = cfg.get("base_path"), cfg.get("base_digest"), cfg.get("base_hub_id")
    if cfg.get("base_override"):
        return cfg["base_override"]
    if path and Path(path).is_dir():
        if digest and folder_digest(path) != digest:
            raise RuntimeError(
                f"base model folder {path} changed since this model was logged (digest "
                f"{digest}); restore it (`dvc checkout` / `dvc pull` in the project), or load "
                "with model_config={'base_override': <folder>} to use another folder"
            )
        return path
    if path and not (cfg.get("allow_hub_fallback") and hub_id):
        raise RuntimeError(
            f"base model folder {path} not found; restore it (`dvc pull` in the project), or "
            "load with model_config={'base_override': <folder>} or "
            f"{{'allow_hub_fallback': True}} (hub id {hub_id!r})"
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
