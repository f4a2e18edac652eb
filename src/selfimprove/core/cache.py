"""The keyword a transformers model takes its KV cache under (renamed in transformers 5.2x)."""

from __future__ import annotations


def cache_kwarg(model) -> str:
    """The name ``model.forward`` takes the KV cache under: ``cache`` (transformers >= 5.2x;
    ``past_key_values`` is deprecated there and goes in 5.40) or ``past_key_values`` (older).

    >>> class New:
    ...     def forward(self, input_ids, cache=None): ...
    >>> class Old:
    ...     def forward(self, input_ids, past_key_values=None): ...
    >>> cache_kwarg(New()), cache_kwarg(Old())
    ('cache', 'past_key_values')
    """
    import inspect

    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"
