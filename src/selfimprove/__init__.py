"""selfimprove: label-free self-improvement (LMSI, SELF) of language models."""

__version__ = "0.1.0"
