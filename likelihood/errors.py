"""Errors of the likelihood package (shown to users as one line by the command-line tools)."""

from __future__ import annotations


class LikelihoodError(ValueError):
    """A counts file is missing, corrupt, or does not fit the codec or the other tables."""
