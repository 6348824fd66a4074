"""The serving side's own error, apart from the modules that raise it (server, front)."""
from __future__ import annotations


class ServeError(RuntimeError):
    """The server could not be started (its log's tail is in the message)."""
