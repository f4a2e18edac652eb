"""The self-improvement methods, one recipe each (:class:`~selfimprove.recipes.base.Recipe`): the
one list of them. ``config`` validates ``method:`` and each method's own params section from it;
the refine, filter and finetune stages ask the chosen recipe. A new method is one module here and
one entry in :data:`RECIPES`.
"""

from __future__ import annotations

from selfimprove.core.io import InputError
from selfimprove.recipes import (
    format_only,
    lmsi,
    lmsi_self,
    rest_em,
    scpo,
    self_refine,
    star,
    ttrl,
)
from selfimprove.recipes.base import Recipe

#: every method, the default first
RECIPES: tuple[Recipe, ...] = (
    lmsi.RECIPE,
    self_refine.RECIPE,
    lmsi_self.RECIPE,
    star.RECIPE,
    rest_em.RECIPE,
    format_only.RECIPE,
    scpo.RECIPE,
    ttrl.RECIPE,
)


def by_name() -> dict[str, Recipe]:
    """``{name: recipe}`` in list order."""
    return {r.name: r for r in RECIPES}


def get_recipe(name: str) -> Recipe:
    """The recipe of method ``name``.

    >>> get_recipe("star").uses_labels, get_recipe("lmsi").refine
    (True, 'none')
    """
    recipe = by_name().get(name)
    if recipe is None:
        raise InputError(f"method {name!r} is not one of {', '.join(by_name())}")
    return recipe


def method_help() -> str:
    """One line per method, for error messages and ``--help``.

    >>> print(method_help().splitlines()[0])
    lmsi: majority vote, Huang et al. 2022
    """
    return "\n".join(f"{r.name}: {r.summary}" for r in RECIPES)
