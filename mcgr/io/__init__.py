"""Mammogram I/O: read any mammogram into the canonical domain, resample to the model spacing and
back, find the breast, and write results on the input's own grid (DESIGN.md 1 and 5)."""
from mcgr.io.breast_mask import breast_mask
from mcgr.io.errors import MammogramReadError
from mcgr.io.reader import DEFAULT_FILM_SPACING_MM, DicomRef, Mammogram, read_mammogram
from mcgr.io.resample import ModelTransform, resample, resample_mask, to_model_spacing
from mcgr.io.writers import write_outputs

__all__ = [
    "DEFAULT_FILM_SPACING_MM", "DicomRef", "Mammogram", "MammogramReadError", "ModelTransform",
    "breast_mask", "read_mammogram", "resample", "resample_mask", "to_model_spacing", "write_outputs",
]
