"""The one exception the readers raise for a file they cannot turn into a mammogram, and the warning
they give for a file they read with a guess or a correction (the message says which)."""
from __future__ import annotations

import os


class MammogramReadError(Exception):
    """A file could not be read as a mammogram. ``str(err)`` holds the file name and the reason;
    ``err.path`` and ``err.reason`` hold them apart."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{os.path.basename(self.path) or self.path}: {reason}")


class MammogramWarning(UserWarning):
    """A file was read, but with a guess or a correction the user must know about (a missing pixel
    spacing, a BitsStored smaller than the bits the pixel values use). The reader also keeps the
    message in ``Mammogram.meta["warnings"]``."""
