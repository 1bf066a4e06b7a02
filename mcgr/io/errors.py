"""The one exception the readers raise for a file they cannot turn into a mammogram."""
from __future__ import annotations

import os


class MammogramReadError(Exception):
    """A file could not be read as a mammogram. ``str(err)`` holds the file name and the reason;
    ``err.path`` and ``err.reason`` hold them apart."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{os.path.basename(self.path) or self.path}: {reason}")
