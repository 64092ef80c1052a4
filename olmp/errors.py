"""One exception type for every user-facing failure.

The CLI prints ``str(err)`` as a single line and exits nonzero, so messages
must name the file and the problem, e.g. ``models/x.prototxt: missing layer 'ip1'``.
"""

from __future__ import annotations

from pathlib import Path


class OlmpError(Exception):
    """A problem with the user's input or environment, reported in one line."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        message = " ".join(str(message).split())  # one line, always
        super().__init__(f"{path}: {message}" if path is not None else message)
