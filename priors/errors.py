"""Errors of the priors package (shown to users as one line by the command-line tools)."""

from __future__ import annotations


class PriorError(ValueError):
    """A prior directory is missing or corrupt, or a call does not fit the prior."""
