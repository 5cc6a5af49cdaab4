"""Errors a node can fail with, and how any error is turned into a message safe to store."""

from __future__ import annotations

import re
from collections.abc import Iterable

from app.engine.problems import join_path

MAX_ERROR_CHARS = 2_000
MIN_SECRET_CHARS = 4  # masking shorter strings would mangle messages without hiding anything

_OBJECT_ADDRESS = re.compile(r"\s+(?:object\s+)?at\s+0x[0-9a-fA-F]+(?=>)")
_BARE_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")
_POSIX_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+-]+/)+[\w.@+-]*")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\(?:[^\\\s'\"<>|]+\\)*[^\\\s'\"<>|]*")


class NodeError(Exception):
    """A failure whose message is meant for the user as it is (no exception type prefix)."""


class ExpressionError(NodeError):
    """A template or expression that cannot be compiled or rendered, or broke the sandbox's
    rules or budget. ``path`` locates it inside the node's params once known."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def at(self, part: str | int) -> ExpressionError:
        """The same error, one level further down a params path."""
        return ExpressionError(self.message, (part, *self.path))

    def __str__(self) -> str:
        if not self.path:
            return self.message
        return f"{join_path(*self.path)}: {self.message}"


def sanitize_error(exc: BaseException, secrets: Iterable[str] = (),
                   max_chars: int = MAX_ERROR_CHARS) -> str:
    """The message of ``exc`` as it may be stored and shown: no traceback, no absolute paths,
    no object addresses, no known secret values, and at most ``max_chars`` long."""
    text = str(exc).strip()
    if not isinstance(exc, NodeError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS},
                         key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _OBJECT_ADDRESS.sub("", text)
    text = _BARE_ADDRESS.sub("0x…", text)
    text = _POSIX_PATH.sub(_path_tail, text)
    text = _WINDOWS_PATH.sub(_path_tail, text)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text


def _path_tail(match: re.Match) -> str:
    """Keep a path's file name (useful) and drop where it lives (not the user's business)."""
    name = re.split(r"[\\/]", match.group(0).rstrip("/\\"))[-1]
    return f"…/{name}" if name else "…"
