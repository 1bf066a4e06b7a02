"""The content digest of a file, one definition for every file mcgr hashes: model weights (their
``weights_sha256``), archive inputs and results, ``mcgr adapt``'s inputs."""
from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's content (hex), streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
