"""The self-improvement methods and what each one needs: the one table of them.

Everything that branches on ``method:`` asks this table (validation, the stages, the filter),
so adding a method means adding a row here and its code in the step modules.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    uses_labels: bool  #: reads the training questions' gold answers (a baseline, not label-free)
    needs_seed_set: bool  #: learns meta-skills from the labeled seed set (the meta_skill stage)
    filter: str  #: what keeps a path: "vote", "verdict", "vote+verdict", "gold" or "random"
    summary: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("lmsi", False, False, "vote", "majority vote, Huang et al. 2022"),
        Method("self", False, True, "verdict", "meta-skills + self-feedback, Lu et al. 2023"),
        Method("lmsi_self", False, True, "vote+verdict", "both filters"),
        Method("star", True, False, "gold", "STaR: correct paths + rationalization (labels)"),
        Method("rest_em", True, False, "gold", "ReST-EM: correct paths (labels)"),
        Method(
            "format_only",
            False,
            False,
            "random",
            "control: as many questions as lmsi keeps, at random, one own path each, no vote",
        ),
    )
}
#: every method name, the default first
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
#: methods whose rounds use the model's own feedback (need the meta-skill stage)
SELF_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.needs_seed_set)
#: methods that read the training questions' gold answers (baselines, not label-free)
LABEL_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.uses_labels)


def method_help() -> str:
    """One line per method, for error messages and ``--help``.

    >>> print(method_help().splitlines()[0])
    lmsi: majority vote, Huang et al. 2022
    """
    return "\n".join(f"{m.name}: {m.summary}" for m in METHODS.values())
