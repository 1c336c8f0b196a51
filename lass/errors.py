"""Errors that reach the user as one clear line (the CLIs print them without a traceback)."""

from __future__ import annotations


class LassError(Exception):
    """Base class of every error caused by the user's input or environment."""


class DataError(LassError, ValueError):
    """A data set, audio file or data-layer argument is missing, unreadable or invalid."""
