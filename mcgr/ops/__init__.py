"""The fused ops: each ``<op>_ref`` (PyTorch, the specification) beside ``<op>()`` (the dispatcher)."""
from mcgr.ops.inject import InjectParams, inject, inject_ref
from mcgr.ops.stitch import gather_tiles, gather_tiles_ref, stitch, stitch_ref
from mcgr.ops.rf_step import RfStepParams, rf_start, rf_start_ref, rf_step, rf_step_ref
from mcgr.ops.refine import RefineParams, refine, refine_ref

__all__ = ["InjectParams", "inject", "inject_ref", "stitch", "stitch_ref", "gather_tiles", "gather_tiles_ref", "RfStepParams", "rf_start", "rf_start_ref", "rf_step", "rf_step_ref", "RefineParams", "refine", "refine_ref"]
