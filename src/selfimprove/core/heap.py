"""Give freed memory back to the operating system between the phases of a stage."""

from __future__ import annotations


def release_heap() -> None:
    """Return the heap a finished phase freed (activations, a freed model) to the OS: glibc
    keeps freed memory mapped otherwise, and the next phase's peak stacks on it. A no-op
    without glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
