"""Errors that carry a message meant for the user. The CLI prints them as one line, exit 2."""

from __future__ import annotations


class TrustgenError(Exception):
    """Base of every error trustgen reports to a user without a traceback."""


class UsageError(TrustgenError):
    """A bad parameter or argument."""


class ModelError(TrustgenError):
    """A model that cannot be found, or whose content does not match its digest."""
