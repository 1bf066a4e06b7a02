"""mcgr: label-free breast microcalcification segmentation (MC-GenRef) with fused kernels."""
__version__ = "0.1.0"

MODEL_SPACING_MM = 0.07
