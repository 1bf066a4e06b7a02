"""Mammogram I/O: read any mammogram into the canonical domain, resample to the model spacing and
back, find the breast, and write results on the input's own grid (docs/design.md, method M1 and M5)."""
from mcgr.io.breast_mask import breast_mask
from mcgr.io.errors import MammogramReadError
from mcgr.io.reader import DEFAULT_FILM_SPACING_MM, DicomRef, Mammogram, read_mammogram
from mcgr.io.resample import ModelTransform, resample, resample_mask, to_model_spacing
from mcgr.io.maps import read_prob_map
from mcgr.io.writers import DEFAULT_OUTPUTS, OUTPUT_KINDS, write_outputs

__all__ = [
    "DEFAULT_FILM_SPACING_MM", "DEFAULT_OUTPUTS", "DicomRef", "OUTPUT_KINDS", "Mammogram", "MammogramReadError", "ModelTransform",
    "breast_mask", "read_mammogram", "read_prob_map", "resample", "resample_mask", "to_model_spacing", "write_outputs",
]
