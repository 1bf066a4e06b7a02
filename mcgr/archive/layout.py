"""The names of an archive run's own files in its output folder (the layout is in
:mod:`mcgr.archive`), and the error of a run as a whole."""
from __future__ import annotations

MANIFEST = "manifest.jsonl"
RUN_FILE = "run.json"
STAGING = ".mcgr-staging"
DONE = ".done"
LOCK = ".mcgr.lock"  # the lock file of earlier versions: the folder itself is flock'ed now
RESERVED = {MANIFEST, RUN_FILE}
# Files mcgr writes (write_outputs, mcgr demo): never inputs of a folder scan.
OUTPUT_SUFFIXES = (".seg.dcm", ".prob.png", ".uncertainty.png", ".prob.npy", ".uncertainty.npy", ".mask.png",
                   ".overlay.png", ".truth.png", ".compare.png")
# The files of write_outputs in a result folder (with .done and hidden temporaries: nothing else).
RESULT_SUFFIXES = (".mask.png", ".prob.png", ".uncertainty.png", ".prob.npy", ".uncertainty.npy", ".overlay.png",
                   ".json", ".seg.dcm")


class ArchiveError(ValueError):
    """A problem with the run as a whole (output folder, manifest file, resume settings): the CLI
    prints it as one line and exits non-zero."""
