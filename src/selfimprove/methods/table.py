"""Views of the recipe list (:mod:`selfimprove.recipes`) under their former names."""

from __future__ import annotations

from selfimprove.recipes import RECIPES, by_name, method_help

METHODS = by_name()
#: every method name, the default first
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
#: methods whose rounds use the model's own feedback (need the meta-skill stage)
SELF_METHODS: tuple[str, ...] = tuple(r.name for r in RECIPES if r.needs_seed_set)
#: methods that read the training questions' gold answers (baselines, not label-free)
LABEL_METHODS: tuple[str, ...] = tuple(r.name for r in RECIPES if r.uses_labels)

__all__ = ["LABEL_METHODS", "METHODS", "METHOD_NAMES", "SELF_METHODS", "method_help"]
