"""Triton side of the counter-based RNG (the specification is mcgr/ops/_rng.py)."""
import triton
import triton.language as tl  # noqa: F401  (the interpreter needs tl in the jit function's globals)


@triton.jit
def _hash32(x):
    # lowbias32 on uint32 (mcgr.ops._rng.hash32)
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    x = x ^ (x >> 16)
    return x
