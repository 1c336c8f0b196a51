"""Errors of the codec package (shown to users as one line by the command-line tools)."""

from __future__ import annotations


class CodecError(ValueError):
    """A checkpoint or codec directory is missing, corrupt or does not fit the model."""
