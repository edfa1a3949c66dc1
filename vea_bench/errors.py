"""Errors that carry a one-line, user-facing message.

The CLI catches `VeaError` and prints `str(err)` on one line with a non-zero exit code, so every
message must name the offending thing (file, label, source) and say what to do.
"""
from __future__ import annotations


class VeaError(Exception):
    """Base class: a user-facing problem (bad input, missing file), never a programming bug."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        # Collapse to one line: the CLI contract is one line per error.
        super().__init__(" ".join(str(message).split()))


class DatasetError(VeaError):
    """A dataset root, split file, image or label could not be understood."""


class UnknownLabelError(DatasetError):
    """A label spelling that maps to nothing in the dataset's label space."""


class CacheError(VeaError):
    """A cache file is missing, truncated, foreign, incomplete or mismatched."""


class ModelError(VeaError):
    """A model, adapter or checkpoint could not be loaded or does not fit the task."""


class ConfigError(VeaError):
    """An experiment file, option combination or record is invalid."""
