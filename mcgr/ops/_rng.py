"""Counter-based RNG shared by every backend (the specification of ``csrc/common.h``).

A normal number is a pure function of ``(seed, counter)``: ``lowbias32`` hashes of the counter
mixed with the seed give two 24-bit uniforms, and Box-Muller turns them into N(0, 1). No noise
tensor ever needs to be stored; kernels draw the number for element ``offset + i`` in place.
Integers are identical on every backend; the float transcendental functions agree to a few ulp.
"""
from __future__ import annotations

import math

import torch

_MASK = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding uint32 values (products wrap in 64 bits, then mask)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    x = x ^ (x >> 16)
    return x


def rng_mix(seed: int, counter: torch.Tensor) -> torch.Tensor:
    key = hash32(torch.tensor((int(seed) & _MASK) ^ 0x9E3779B9, dtype=torch.int64, device=counter.device))
    return hash32((counter & _MASK) ^ key)


def rng_normal(seed: int, counter: torch.Tensor) -> torch.Tensor:
    """float32 N(0, 1) numbers for int64 ``counter`` values (taken modulo 2**32) of stream ``seed``."""
    c = counter.to(torch.int64) & _MASK
    a = rng_mix(seed, (c * 2) & _MASK)
    b = rng_mix(seed, (c * 2 + 1) & _MASK)
    u1 = (a >> 8).to(torch.float32) * 5.9604644775390625e-08 + 2.98023223876953125e-08
    u2 = (b >> 8).to(torch.float32) * 5.9604644775390625e-08
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
