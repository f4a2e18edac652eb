"""Teachers that write feedback on seed answers for SELF's meta-skill corpus.

Three kinds, one interface: ``teacher.feedback(items) -> list[Feedback | None]`` where an item is
``{"question", "answer", "gold"}`` and ``None`` means *no feedback* (the teacher gave nothing
usable: an error, an empty reply, no parsable verdict line). Callers count those; they never
become training examples and are never guessed.

* :class:`RuleTeacher` (default, offline): :func:`selfimprove.core.arith_check.check_solution`.
* :class:`LMTeacher`: any causal LM (a local model folder or a hub id), prompted with the
  few-shot feedback prompt in its teacher form (each block shows the gold as "Reference
  answer:"), greedy, through :class:`selfimprove.sampling.transformers_sampler.TransformersSampler`.
* :class:`OpenAITeacher`: any OpenAI-compatible server (vLLM, llama.cpp, ...): ``base_url``
  (e.g. ``http://localhost:8000/v1``) + ``model``; ``POST /chat/completions`` through the
  ``openai`` client, which retries connection errors, timeouts, 408/409/429 and 5xx replies
  (``max_retries`` times, exponential backoff, the server's ``Retry-After`` honored).
  :meth:`OpenAITeacher.check` (``GET /models``, short timeout) runs before any work and turns
  an unreachable server, a wrong URL or an unknown model into one
  :class:`~selfimprove.core.io.InputError` saying how to fix it. A request that still fails
  after the retries (or that the server rejects, or answers with something that is not a chat
  completion) stops the stage with one InputError naming the request, the server's status and
  the fix: a flaky server never silently shrinks the corpus.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import openai

from selfimprove.config.runtime import SamplerConfig
from selfimprove.core.answers import gold_answer
from selfimprove.core.arith_check import check_solution
from selfimprove.core.io import InputError
from selfimprove.core.prompts.feedback import build_feedback_prompt
from selfimprove.core.verdict import FEEDBACK_STOP, Feedback, split_feedback

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0
_LABEL_RE = re.compile(r"^\s*\**feedback\**\s*:\s*", re.IGNORECASE)

SYSTEM_PROMPT = (
    "You are a careful math teacher. You check a student's answer to a word problem. The "
    "reference answer is given. Write one line of feedback that names the first wrong step and "
    "its correct value (or says why the answer is wrong, without revealing the reference "
    "answer), or says that the answer is correct. Then write a last line that is exactly "
    "'Verdict: correct' or 'Verdict: incorrect'. Follow the format of the examples."
)


def _parse_generated(text: str | None) -> Feedback | None:
    """A teacher's raw reply as Feedback, or None when it has no usable feedback.

    >>> _parse_generated(" The step 2 + 2 = 5 is wrong.\\nVerdict: incorrect").verdict
    False
    >>> _parse_generated("Verdict: correct") is None  # a verdict without any feedback
    True
    >>> _parse_generated("Feedback: 3 + 2 = 5 is right.\\nVerdict: correct").text
    '3 + 2 = 5 is right.'
    >>> _parse_generated("no verdict here") is None, _parse_generated(None) is None
    (True, True)
    """
    if not text or not text.strip():
        return None
    body, verdict = split_feedback(text)
    body = _LABEL_RE.sub("", body).strip()  # chat models often repeat the "Feedback:" label
    if verdict is None or not body:
        return None
    return Feedback(verdict, body)


class RuleTeacher:
    """The offline rule-based checker (:func:`~selfimprove.core.arith_check.check_solution`)."""

    name = "rule"

    def check(self) -> None:
        """Nothing to check (no model, no network)."""

    def feedback(self, items: list[dict]) -> list[Feedback | None]:
        return [check_solution(it["question"], it["answer"], it["gold"]) for it in items]


def resolve_model(name_or_path: str) -> Path:
    """A local model folder for ``name_or_path``: the folder itself, or the hub snapshot.

    >>> resolve_model("/nonexistent/dir")
    Traceback (most recent call last):
    ...
    selfimprove.core.io.InputError: meta_skill.teacher_model='/nonexistent/dir': no such folder; ...
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise InputError(
                f"meta_skill.teacher_model={name_or_path!r}: folder has no config.json; give a "
                "Hugging Face model folder or a hub id"
            )
        return path
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") != 1:
        raise InputError(
            f"meta_skill.teacher_model={name_or_path!r}: no such folder; give an existing model "
            "folder or a hub id like 'Qwen/Qwen2.5-1.5B-Instruct'"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path))
    except Exception as e:  # offline, unknown repo, gated, ...
        raise InputError(
            f"meta_skill.teacher_model={name_or_path!r}: cannot get it from the hub ({e}); "
            "download it first (huggingface-cli download) and give the folder, or go online"
        ) from None


class LMTeacher:
    """A causal LM prompted to give feedback (greedy), with the gold as reference."""

    name = "lm"

    def __init__(
        self,
        model: str,
        n_shots: int = 3,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        dtype: str = "auto",
        sampler=None,
    ) -> None:
        self.model = model
        self.n_shots = n_shots
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.dtype = dtype
        self._sampler = sampler

    def check(self) -> None:
        """Resolve the model now (a missing folder / hub id fails before any work)."""
        if self._sampler is None:
            self._path = resolve_model(self.model)

    def _get_sampler(self):
        if self._sampler is None:
            from selfimprove.sampling.transformers_sampler import TransformersSampler

            path = getattr(self, "_path", None) or resolve_model(self.model)
            self._sampler = TransformersSampler(path, dtype=self.dtype, batch_size=self.batch_size)
        return self._sampler

    def feedback(self, items: list[dict]) -> list[Feedback | None]:
        from selfimprove.sampling.base import SamplingParams

        if not items:
            return []
        sampler = self._get_sampler()
        prefix = build_feedback_prompt("", "", self.n_shots, reference="0")[0]
        suffixes = [
            build_feedback_prompt(
                it["question"], it["answer"], self.n_shots, reference=gold_answer(it["gold"])
            )[1]
            for it in items
        ]
        params = SamplingParams(
            n=1, temperature=0.0, max_new_tokens=self.max_new_tokens, stop=FEEDBACK_STOP
        )
        outs = sampler.sample(prefix, suffixes, params, desc="teacher feedback")
        return [_parse_generated(o[0].text) for o in outs]

    def close(self) -> None:
        self._sampler = None


def api_root(base_url: str) -> str:
    """The API root ending in ``/v1`` (added when missing), without a trailing slash.

    >>> api_root("http://localhost:8000"), api_root("http://h:8080/v1/")
    ('http://localhost:8000/v1', 'http://h:8080/v1')
    >>> api_root("https://openrouter.ai/api/v1")
    'https://openrouter.ai/api/v1'
    """
    url = base_url.strip().rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class OpenAITeacher:
    """An OpenAI-compatible chat endpoint (``/v1/chat/completions``), greedy."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        n_shots: int = 3,
        max_new_tokens: int = 64,
        timeout_s: float = 60.0,
        max_retries: int = 5,
    ) -> None:
        self.root = api_root(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.n_shots = n_shots
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._client: openai.OpenAI | None = None
        # no key: send no Authorization header at all (the client insists on a key otherwise)
        self._headers = {"Authorization": openai.Omit()} if not api_key_env else None

    def _get_client(self) -> openai.OpenAI:
        if self._client is None:
            key = "unused"
            if self.api_key_env:
                key = os.environ.get(self.api_key_env, "").strip()
                if not key:
                    raise InputError(
                        f"meta_skill.api_key_env={self.api_key_env!r}: the environment variable "
                        "is not set; export it with the API key, or set api_key_env: null for a "
                        "server without keys"
                    )
            self._client = openai.OpenAI(
                base_url=self.root,
                api_key=key,
                timeout=self.timeout_s,
                max_retries=self.max_retries,
            )
        return self._client

    def check(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        """``GET /models``: the server answers and serves ``model``; else InputError."""
        url = self.root + "/models"
        fix = (
            "start the server (e.g. `vllm serve MODEL` or `llama-server -m FILE`), or fix "
            f"meta_skill.base_url; test with: curl {url}"
        )
        client = self._get_client().with_options(timeout=timeout, max_retries=0)
        try:
            page = client.models.list(extra_headers=self._headers)
            models = [m.id for m in page.data]
        except openai.APIStatusError as e:
            raise InputError(
                f"meta_skill.base_url={self.root!r}: GET {url} returned HTTP {e.status_code} "
                f"({e.response.reason_phrase}); {fix}"
            ) from None
        except openai.APIConnectionError as e:
            reason = e.__cause__ or e
            raise InputError(
                f"meta_skill.base_url={self.root!r}: cannot reach {url} within {timeout:g}s "
                f"({reason}); {fix}"
            ) from None
        except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError) as e:
            raise InputError(
                f"meta_skill.base_url={self.root!r}: GET {url} did not return the JSON of an "
                f"OpenAI-compatible server ({e}); {fix}"
            ) from None
        if models and self.model not in models:
            raise InputError(
                f"meta_skill.model={self.model!r}: not served by {self.root} (it serves: "
                f"{', '.join(str(m) for m in models[:10])}); set meta_skill.model to one of them"
            )

    def messages(self, item: dict) -> list[dict]:
        """The chat messages for one item: the system prompt, then the few-shot prompt."""
        prefix, suffix = build_feedback_prompt(
            item["question"], item["answer"], self.n_shots, reference=gold_answer(item["gold"])
        )
        user = (
            f"{prefix}{suffix}\n\n(Complete the last block: one line of feedback after "
            "'Feedback:', then the verdict line.)"
        )
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def _failed(self, which: str, e: Exception) -> InputError:
        """One error for a request that failed for good: which one, the server's answer, the fix."""
        where = f"meta_skill.base_url={self.root!r}: POST {self.root}/chat/completions ({which})"
        retried = f"after {self.max_retries} retries"
        if isinstance(e, openai.APIStatusError):
            status = f"HTTP {e.status_code} {e.response.reason_phrase}".rstrip()
            if e.status_code in (401, 403):
                fix = f"check the API key (meta_skill.api_key_env={self.api_key_env!r})"
            elif e.status_code in (408, 409, 429) or e.status_code >= 500:
                fix = (
                    f"{status} {retried}; check the server (log, load), raise "
                    "meta_skill.max_retries or request_timeout_s, and rerun the stage"
                )
                return InputError(f"{where} failed: {fix}")
            else:
                fix = (
                    "the server rejected the request (a prompt longer than the model's "
                    "context? lower meta_skill.teacher_n_shots, or raise the server's max "
                    "model length); see the server log"
                )
            return InputError(f"{where} failed: {status} ({e.message}); {fix}")
        if isinstance(e, openai.APIConnectionError):  # timeouts included
            return InputError(
                f"{where} failed {retried}: {type(e).__name__} ({e.__cause__ or e}); is the "
                "server still up? raise meta_skill.request_timeout_s for a slow one, and rerun"
            )
        return InputError(
            f"{where}: the reply is not an OpenAI chat completion ({type(e).__name__}: {e}); "
            "check that the server is OpenAI-compatible (curl the URL)"
        )

    def _one(self, item: dict, which: str) -> Feedback | None:
        try:
            reply = self._get_client().chat.completions.create(
                model=self.model,
                messages=self.messages(item),
                max_tokens=self.max_new_tokens,
                temperature=0.0,
                extra_headers=self._headers,
            )
            text = reply.choices[0].message.content
        except InputError:
            raise
        except (openai.OpenAIError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise self._failed(which, e) from None
        fb = _parse_generated(text if isinstance(text, str) else None)
        if fb is None:
            log.info("teacher reply without usable feedback: %.120r", text)
        return fb

    def feedback(self, items: list[dict]) -> list[Feedback | None]:
        return [
            self._one(item, f"request {i + 1}/{len(items)}, question {item['question'][:60]!r}")
            for i, item in enumerate(items)
        ]


def make_teacher(cfg, n_shots: int = 3, max_new_tokens: int = 64, sampler_cfg=None):
    """The teacher ``cfg`` (a :class:`selfimprove.config.methods.MetaSkillConfig`) names, checked
    (health check of an endpoint, model folder of an LM) before it is returned. An lm teacher
    samples with ``sampler_cfg``'s dtype and batch size (the ``sampler`` section; None =
    its defaults)."""
    if cfg.teacher == "rule":
        teacher = RuleTeacher()
    elif cfg.teacher == "lm":
        teacher = LMTeacher(
            cfg.teacher_model,
            n_shots=n_shots,
            max_new_tokens=max_new_tokens,
            batch_size=(sampler_cfg or SamplerConfig()).batch_size,
            dtype=(sampler_cfg or SamplerConfig()).dtype,
        )
    elif cfg.teacher == "openai":
        teacher = OpenAITeacher(
            cfg.base_url,
            cfg.model,
            cfg.api_key_env,
            n_shots=n_shots,
            max_new_tokens=max_new_tokens,
            timeout_s=cfg.request_timeout_s,
            max_retries=cfg.max_retries,
        )
    else:  # pragma: no cover - the config's Literal rules it out
        raise InputError(f"meta_skill.teacher={cfg.teacher!r}: use rule, lm or openai")
    teacher.check()
    return teacher
