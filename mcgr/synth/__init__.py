"""Synthetic supervision (docs/design.md, method M2): MC patterns, procedural backgrounds, on-the-fly pairs."""
from mcgr.synth.backgrounds import procedural_backgrounds
from mcgr.synth.dataset import DEFAULT_INJECT_RANGES, SynthPairs, validation_set
from mcgr.synth.patterns import CalcSample, sample_calcifications

__all__ = [
    "CalcSample",
    "DEFAULT_INJECT_RANGES",
    "SynthPairs",
    "procedural_backgrounds",
    "sample_calcifications",
    "validation_set",
]
