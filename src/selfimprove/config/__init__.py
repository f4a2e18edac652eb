"""params.yaml, validated: one pydantic model per section, every problem reported at once.

The section models live in this package (``config.methods.GenerateConfig``,
``config.evaluation.EvaluateConfig``, …), importable without the step modules;
:class:`Params` assembles them. Their defaults are the values params.yaml sets (one source of
truth; ``tests/unit/test_defaults.py`` compares every key). :func:`load_params` reads
``params.yaml`` and raises :class:`ConfigError` listing *every* unknown key, wrong type or
inconsistency with the key, the value and how to fix it — before any heavy work starts.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from selfimprove.config.base import Section, clip, short
from selfimprove.config.data import DataConfig
from selfimprove.config.evaluation import EvaluateConfig, ReportConfig, StatsConfig
from selfimprove.config.methods import FilterConfig, GenerateConfig, MetaSkillConfig, RefineConfig
from selfimprove.config.runtime import SAMPLER_MOVED_KEYS, ComputeConfig, SamplerConfig
from selfimprove.config.tracking import TrackingConfig
from selfimprove.config.training import BaseModelConfig, FinetuneConfig, WarmstartConfig
from selfimprove.core.io import InputError
from selfimprove.core.paths import is_round, round_index
from selfimprove.recipes import RECIPES, get_recipe, method_help

#: numpy's seeds are 0..2**32-1 and round k adds k to the seed
MAX_SEED = 2**31 - 1
#: every method name, the default first (selfimprove.recipes)
METHOD_NAMES: tuple[str, ...] = tuple(r.name for r in RECIPES)
#: keys that moved: old dotted key -> new dotted key (an old key is an error naming the new one)
MOVED_KEYS = {
    "refine.require_consistency": "lmsi_self.require_consistency",
    "refine.star_rationalization": "star.rationalization",
    "refine.rest_em_max_per_question": "rest_em.max_per_question",
    **{".".join(old): new for old, new in SAMPLER_MOVED_KEYS.items()},
}


class ConfigError(InputError):
    """params.yaml is invalid; the message lists every problem."""


class RoundConfig(Section):
    model_config = ConfigDict(extra="forbid")
    prev: str = Field(description="Round whose model this round starts from: r0 (base) or rK.")


class _Params(Section):
    """The whole params.yaml (:class:`Params` adds each method's own section)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description=f"Global seed: data (unless data.seed is set), sampling, training (round k "
        f"adds k); 0..{MAX_SEED}.",
    )
    method: Literal[METHOD_NAMES] = Field(  # type: ignore[valid-type]
        METHOD_NAMES[0],
        description="Self-improvement method (selfimprove.recipes): "
        + "; ".join(method_help().splitlines()),
    )
    base_model: BaseModelConfig = Field(
        default_factory=BaseModelConfig, description="The starting model (round 0)."
    )
    data: DataConfig = Field(
        default_factory=DataConfig,
        description="Training pool, held-out eval sets and optional labeled seed set.",
    )
    warmstart: WarmstartConfig = Field(
        default_factory=WarmstartConfig,
        description="Supervised warm start on data.seed_set before round 1.",
    )
    meta_skill: MetaSkillConfig = Field(
        default_factory=MetaSkillConfig,
        description="Meta-skill learning on data.seed_set (methods self, lmsi_self).",
    )
    sampler: SamplerConfig = Field(
        default_factory=SamplerConfig,
        description="The sampler of every sampling stage (backend, engine, dtype, batch size).",
    )
    generate: GenerateConfig = Field(
        default_factory=GenerateConfig, description="Sampling the paths of each round."
    )
    refine: RefineConfig = Field(
        default_factory=RefineConfig,
        description="Self-feedback/refinement (or the baselines' labels) between generate and "
        "filter.",
    )
    filter: FilterConfig = Field(
        default_factory=FilterConfig, description="Which paths become training data."
    )
    finetune: FinetuneConfig = Field(
        default_factory=FinetuneConfig, description="Fine-tuning on each round's training set."
    )
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig, description="Held-out evaluation of every round."
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="MLflow logging and model registry."
    )
    report: ReportConfig = Field(
        default_factory=ReportConfig, description="The report stage's tables and plots."
    )
    stats: StatsConfig = Field(
        default_factory=StatsConfig,
        description="Confidence intervals (bootstrap over questions) in scores.json and the "
        "report.",
    )
    compute: ComputeConfig = Field(
        default_factory=ComputeConfig,
        description="Float-moving settings (threads, matmul precision) every stage applies.",
    )
    rounds: dict[str, RoundConfig] = Field(
        default_factory=lambda: {"r1": RoundConfig(prev="r0"), "r2": RoundConfig(prev="r1")},
        description="Rounds r1..rN, each naming its predecessor (r0 = the starting model).",
    )

    @model_validator(mode="after")
    def _check_cross_section(self) -> _Params:
        problems = []
        for name, rnd in self.rounds.items():
            if not is_round(name) or name == "r0":
                problems.append(f"rounds.{name}: round names are r1, r2, …")
            elif rnd.prev != "r0" and rnd.prev not in self.rounds:
                problems.append(
                    f"rounds.{name}.prev: {rnd.prev!r} is not a round; use r0 or one of "
                    f"{', '.join(self.rounds)}"
                )
            elif rnd.prev != "r0" and round_index(rnd.prev) >= round_index(name):
                problems.append(f"rounds.{name}.prev: {rnd.prev!r} must be an earlier round")
        if get_recipe(self.method).needs_seed_set and self.data.seed_set is None:
            problems.append(
                f"method: {self.method} learns its feedback/refinement meta-skills from labeled "
                "seed questions; set data.seed_set (e.g. {source: arith, n: 64}) or use "
                "method: lmsi"
            )
        if self.warmstart.enabled and self.data.seed_set is None:
            problems.append(
                "warmstart.enabled: true needs labeled seed examples; set data.seed_set "
                "(e.g. {source: arith, n: 64}) or set warmstart.enabled: false"
            )
        if self.tracking.best_by == "label_free" and self.evaluate.sc_paths < 2:
            problems.append(
                f"tracking.best_by: label_free ranks rounds by the agreement of "
                f"evaluate.sc_paths sampled answers, but sc_paths is {self.evaluate.sc_paths}; "
                "set evaluate.sc_paths >= 2 (e.g. 8) or tracking.best_by: metric"
            )
        if self.filter.order == "easy_to_hard" and self.finetune.order != "as_written":
            problems.append(
                "filter.order: easy_to_hard orders train.jsonl for a curriculum, but "
                f"finetune.order is {self.finetune.order!r} (it shuffles); set finetune.order: "
                "as_written, or filter.order: input"
            )
        unknown = [s for s in self.evaluate.sets or [] if s not in self.data.eval]
        if unknown:
            have = ", ".join(self.data.eval)
            problems.append(f"evaluate.sets: {unknown} not defined in data.eval (have: {have})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def round_index(self, name: str) -> int:
        return round_index(name)

    @property
    def data_seed(self) -> int:
        """The seed of the questions: ``data.seed``, or the global ``seed`` when it is null.

        >>> Params(seed=3).data_seed, Params(seed=3, data={"seed": 7}).data_seed
        (3, 7)
        """
        return self.seed if self.data.seed is None else self.data.seed


#: the whole params.yaml: the shared sections, then each method's own section (named after the
#: method, e.g. ``star:``), from the recipe list
Params = create_model(
    "Params",
    __base__=_Params,
    __module__=__name__,
    **{
        r.name: (
            r.params,
            Field(
                default_factory=r.params,
                description=f"Method {r.name}'s own settings (read only when method: {r.name}).",
            ),
        )
        for r in RECIPES
        if r.params is not None
    },
)
Params.__doc__ = _Params.__doc__


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at ``loc`` (for 'did you mean' hints)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nxt = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if nxt is None:
            return []
        model = nxt
    return list(model.model_fields)


def _non_ascii(text: str) -> str:
    """The non-ASCII characters of a key, named (look-alikes of Latin letters print the same).

    >>> _non_ascii("s\u0435ed"), _non_ascii("seed")
    ('U+0435 CYRILLIC SMALL LETTER IE at position 2', '')
    """
    import unicodedata

    odd = [
        f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed character')} at position {i + 1}"
        for i, c in enumerate(text)
        if not c.isascii()
    ]
    return ", ".join(odd[:3]) + (f" and {len(odd) - 3} more" if len(odd) > 3 else "")


def format_errors(exc: ValidationError, source: str = "params.yaml") -> str:
    """One line per problem: key, value (shortened), what is wrong and how to fix it (a single
    problem is a single line)."""
    lines = [f"{source}: {exc.error_count()} problem(s):"]
    for err in exc.errors():
        key = ".".join(clip(str(p)) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = short(value) if not isinstance(value, dict) else "{…}"
        moved = MOVED_KEYS.get(".".join(map(str, err["loc"])))
        if err["type"] == "extra_forbidden" and moved:
            lines.append(f"  - {key}: moved to {moved} (value {short(value)}); write it there")
        elif err["type"] == "extra_forbidden":
            known = _known_keys(Params, err["loc"])
            name = str(err["loc"][-1])
            hint = difflib.get_close_matches(name, known, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"valid keys: {', '.join(known)}"
            odd = _non_ascii(name)
            if odd:  # a look-alike letter: the key and the hint would print the same
                key = ".".join(
                    [*key.split(".")[:-1], clip(name.encode("ascii", "backslashreplace").decode())]
                )
                fix = f"{fix} (the key has {odd}; retype it)"
            lines.append(f"  - {key}: unknown key (value {short(value)}); {fix}")
        elif err["type"] == "missing":
            lines.append(f"  - {key}: required key is missing; add it")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "finite_number":
                msg += " (nan and inf are not allowed)"
            lines.append(f"  - {key}: {' '.join(msg.split())} (got {shown})")
    if len(lines) == 2:  # one problem: one line
        return f"{source}: {lines[1].removeprefix('  - ')}"
    return "\n".join(lines)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-loaded params mapping.

    A key left out takes its default, which is the value params.yaml sets
    (tests/unit/test_defaults.py), so ``parse_params({})`` is the shipped params.yaml:

    >>> parse_params({}).evaluate.max_new_tokens
    128
    >>> parse_params({"genrate": {}})
    Traceback (most recent call last):
    ...
    selfimprove.config.ConfigError: params.yaml: genrate: unknown key (value {}); did you mean ...
    """
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sections, got {type(raw).__name__} "
            f"{short(raw)}; write `key: value` lines (see the shipped params.yaml)"
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml (all problems reported at once).

    The file is read by :func:`selfimprove.config.yaml_file.read_yaml_file`: a directory,
    non-UTF-8 bytes, YAML anchors/aliases, merge keys and duplicate keys are refused with one
    line naming the file and line.
    """
    from selfimprove.config.yaml_file import read_yaml_file

    path = Path(path)
    if not path.exists() and not path.is_symlink():  # a symlink loop: read_yaml_file names it
        raise ConfigError(f"{path}: not found; run from the project root (where dvc.yaml is)")
    try:
        raw = read_yaml_file(path)
    except ConfigError:
        raise
    except InputError as e:
        raise ConfigError(str(e)) from None
    return parse_params({} if raw is None else raw, str(path))
