"""The adapter's own exceptions (``SessionEndedError`` lives with the session
watch that raises it)."""

from __future__ import annotations


class RetireConnection(Exception):
    """Raised by reset: this connection must be closed, not lent again."""
