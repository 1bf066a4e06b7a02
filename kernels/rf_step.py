"""Triton kernel of the rf_step op (mcgr/ops/rf_step.py): noisy start, Euler and Heun updates.

One program handles BLOCK consecutive elements of the contiguous buffers. The noise integers are
those of ``rng_normal`` (mcgr/ops/_rng.py); its log and cos are the same Cephes polynomials as the
cpu backend's (exact quarter-turn reduction of ``cos(2 pi u)``), so the kernel does not depend on
how a Triton version lowers ``tl.log`` / ``tl.cos``. Launched with ``enable_fp_fusion=False``:
products and sums round as in the reference, so Euler and Heun are bitwise equal to it.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from mcgr.kernels._rng import _hash32

_GPU_BLOCK = 2048
_INTERPRET_BLOCK = 1 << 16  # the interpreter costs ~25 ms per program: few, large blocks


@triton.jit
def _log_poly(x):
    # Cephes logf for normal x > 0: x = m 2^e, m in [sqrt(1/2), sqrt(2)).
    ix = x.to(tl.uint32, bitcast=True)
    e = (ix >> 23).to(tl.int32) - 126
    m = ((ix & 0x007FFFFF) | 0x3F000000).to(tl.float32, bitcast=True)
    low = m < 0.707106781186547524
    e = tl.where(low, e - 1, e)
    f = tl.where(low, m + m, m) - 1.0
    z = f * f
    y = 7.0376836292e-2 * f - 1.1514610310e-1
    y = y * f + 1.1676998740e-1
    y = y * f - 1.2420140846e-1
    y = y * f + 1.4249322787e-1
    y = y * f - 1.6668057665e-1
    y = y * f + 2.0000714765e-1
    y = y * f - 2.4999993993e-1
    y = y * f + 3.3333331174e-1
    y = y * f * z
    fe = e.to(tl.float32)
    y = y + -2.12194440e-4 * fe
    y = y + -0.5 * z
    return (f + y) + 0.693359375 * fe


@triton.jit
def _cos_2pi(u):
    # cos(2 pi u) for u = k / 2^24 in [0, 1): nearest quarter turn j, remainder t in [-pi/4, pi/4].
    q = 4.0 * u
    j = (q + 0.5).to(tl.int32)
    t = (q - j.to(tl.float32)) * 1.57079632679489662
    z = t * t
    s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * t + t
    c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0
    quad = j & 3
    r = tl.where((quad & 1) == 1, s, c)
    return tl.where((quad == 1) | (quad == 2), -r, r)


@triton.jit
def _rf_step_kernel(out_ptr, x_ptr, v_ptr, w_ptr, n, a, b, key, offset, MODE: tl.constexpr, BLOCK: tl.constexpr):
    # MODE 0 (start): out = x a + eps b, eps = rng_normal(seed, offset + i), key = hash32(seed ^ 0x9E3779B9)
    # MODE 1 (euler): out = x + v a;  MODE 2 (heun): out = x + (w + v) a.
    # Must equal rf_start_ref / rf_step_ref (mcgr/ops/rf_step.py).
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    x = tl.load(x_ptr + idx, mask=mask, other=0.0)
    if MODE == 0:
        k = key.to(tl.uint32)
        c = ((idx + offset) & 0xFFFFFFFF).to(tl.uint32)
        ha = _hash32((c * 2) ^ k)
        hb = _hash32((c * 2 + 1) ^ k)
        u1 = (ha >> 8).to(tl.int32).to(tl.float32) * 5.9604644775390625e-08 + 2.98023223876953125e-08
        u2 = (hb >> 8).to(tl.int32).to(tl.float32) * 5.9604644775390625e-08
        eps = tl.sqrt_rn(-2.0 * _log_poly(u1)) * _cos_2pi(u2)
        r = x * a + eps * b
    elif MODE == 1:
        v = tl.load(v_ptr + idx, mask=mask, other=0.0)
        r = x + v * a
    else:
        v = tl.load(v_ptr + idx, mask=mask, other=0.0)
        w = tl.load(w_ptr + idx, mask=mask, other=0.0)
        r = x + (w + v) * a
    tl.store(out_ptr + idx, r, mask=mask)


def _seed_key(seed: int) -> int:
    x = (int(seed) ^ 0x9E3779B9) & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def rf_step_triton(params, mode: int, x: torch.Tensor, v: torch.Tensor | None, w: torch.Tensor | None,
                   out: torch.Tensor | None) -> torch.Tensor:
    """Launcher (the signature of the reference launcher in mcgr/ops/rf_step.py, with ``mode`` the
    code of ``params.mode`` in its ``MODES``): returns ``out`` or a new tensor."""
    x = x.contiguous()
    v = x if v is None else v.contiguous()
    w = x if w is None else w.contiguous()
    res = out if out is not None and out.is_contiguous() else torch.empty(x.shape, dtype=torch.float32, device=x.device)
    n = x.numel()
    if n:
        interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
        block = _INTERPRET_BLOCK if interp else _GPU_BLOCK
        block = min(block, triton.next_power_of_2(n))
        grid = (triton.cdiv(n, block),)
        _rf_step_kernel[grid](res, x, v, w, n, float(params.a), float(params.b), _seed_key(params.seed),
                              int(params.offset), MODE=mode, BLOCK=block,
                              num_warps=4 if block <= 2048 else 8, enable_fp_fusion=False)
    if out is not None and res is not out:
        out.copy_(res)
        return out
    return res
