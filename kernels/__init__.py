"""Triton kernels of mcgr, shipped in the wheel as ``mcgr.kernels`` (one module per op)."""
