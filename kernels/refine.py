"""Triton kernel of ``refine`` (TT-GPR logit refinement, docs/design.md, method M4): one launch per step.

A program owns a ``BH x BW`` block of one plane and reads its 4-neighbours straight from global
memory (L1/L2 serve the overlap between blocks), so a launch cannot chain steps without a grid-wide
barrier: several steps take several launches that ping-pong between ``out`` and one scratch buffer.
Fusing steps in one launch would need the shrinking shared-memory halo of the CUDA kernel, which
Triton's block model does not express without recomputing every step's halo from global memory.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl


@triton.jit
def _refine_kernel(src, q, z0, y, zb, dst, flags,
                   s_n, s_h, s_w, q_n, q_h, q_w, a_n, a_h, a_w, y_n, y_h, y_w, b_n, b_h, b_w, d_n, d_h, d_w,
                   H, W, eta, lambda_a, lambda_e, lambda_o, inv_two_sigma2,
                   HAS_ZBAR: tl.constexpr, CHECK: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    # One gradient step of the energy; must equal refine_ref (mcgr/ops/refine.py):
    #   w_ij = exp(-(y_i - y_j)^2 / (2 sigma_e^2)) over the 4-neighbours j inside the plane,
    #   z_i <- z_i - eta [sigmoid(z_i) - q_i + lambda_a (z_i - z0_i)
    #                     + lambda_e sum_j w_ij (z_i - z_j) + lambda_o (z_i - zbar_i)].
    n = tl.program_id(2).to(tl.int64)
    rows = (tl.program_id(1) * BH + tl.arange(0, BH))[:, None].to(tl.int64)
    cols = (tl.program_id(0) * BW + tl.arange(0, BW))[None, :].to(tl.int64)
    m = (rows < H) & (cols < W)
    up = m & (rows > 0)
    dn = m & (rows + 1 < H)
    lf = m & (cols > 0)
    rt = m & (cols + 1 < W)
    zp = src + n * s_n + rows * s_h + cols * s_w
    yp = y + n * y_n + rows * y_h + cols * y_w
    zc = tl.load(zp, mask=m, other=0.0)
    zu = tl.load(zp - s_h, mask=up, other=0.0)
    zd = tl.load(zp + s_h, mask=dn, other=0.0)
    zl = tl.load(zp - s_w, mask=lf, other=0.0)
    zr = tl.load(zp + s_w, mask=rt, other=0.0)
    yc = tl.load(yp, mask=m, other=0.0)
    du = tl.load(yp - y_h, mask=up, other=0.0) - yc
    dd = tl.load(yp + y_h, mask=dn, other=0.0) - yc
    dl = tl.load(yp - y_w, mask=lf, other=0.0) - yc
    dr = tl.load(yp + y_w, mask=rt, other=0.0) - yc
    wu = tl.where(up, tl.exp(-(du * du) * inv_two_sigma2), 0.0)
    wd = tl.where(dn, tl.exp(-(dd * dd) * inv_two_sigma2), 0.0)
    wl = tl.where(lf, tl.exp(-(dl * dl) * inv_two_sigma2), 0.0)
    wr = tl.where(rt, tl.exp(-(dr * dr) * inv_two_sigma2), 0.0)
    lap = ((wd * (zc - zd) - wu * (zu - zc)) + wr * (zc - zr)) - wl * (zl - zc)
    qc = tl.load(q + n * q_n + rows * q_h + cols * q_w, mask=m, other=0.0)
    ac = tl.load(z0 + n * a_n + rows * a_h + cols * a_w, mask=m, other=0.0)
    sg = 1.0 / (1.0 + tl.exp(-zc))
    g = (sg - qc) + lambda_a * (zc - ac)
    g = g + lambda_e * lap
    if HAS_ZBAR:
        bc = tl.load(zb + n * b_n + rows * b_h + cols * b_w, mask=m, other=0.0)
        g = g + lambda_o * (zc - bc)
    tl.store(dst + n * d_n + rows * d_h + cols * d_w, zc - eta * g, mask=m)
    if CHECK:
        # bits of the inputs holding NaN or inf (NaN fails every compare)
        big = 3.4028234663852886e38
        bits = tl.max(tl.where(m & ~(tl.abs(zc) <= big), 1, 0))
        bits = bits | tl.max(tl.where(m & ~(tl.abs(qc) <= big), 2, 0))
        bits = bits | tl.max(tl.where(m & ~(tl.abs(ac) <= big), 4, 0))
        bits = bits | tl.max(tl.where(m & ~(tl.abs(yc) <= big), 8, 0))
        if HAS_ZBAR:
            bits = bits | tl.max(tl.where(m & ~(tl.abs(bc) <= big), 16, 0))
        tl.atomic_or(flags, bits)


def _blocks(device: torch.device) -> tuple[int, int, int]:
    """(BH, BW, num_warps): small blocks on a GPU, few large ones in the CPU interpreter."""
    if device.type == "cpu" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return 64, 256, 4
    return 16, 64, 4


def refine_triton(z, q, z0, y, zbar, params, steps: int = 1, out=None):
    """``steps`` gradient steps (one launch each) on planes ``[N, H, W]`` float32 (any strides);
    same contract as ``refine_ref``. Returns ``(result, flags)``: bit i of the int ``flags`` is set
    when input i (z, q, z0, y, zbar) holds NaN or inf, for the launcher in mcgr/ops/refine.py to raise."""
    N, H, W = z.shape
    final = out if out is not None else torch.empty((N, H, W), dtype=z.dtype, device=z.device)
    in_place = final.data_ptr() == z.data_ptr()
    scratch = torch.empty((N, H, W), dtype=z.dtype, device=z.device) if steps > 1 or in_place else None
    # the last launch writes `final`; targets alternate before it so that no launch writes what it reads
    targets = [final if (steps - 1 - i) % 2 == 0 else scratch for i in range(steps)]
    copy_back = in_place and targets[0] is final
    if copy_back:
        targets = [scratch if t is final else final for t in targets]
    flags = torch.zeros(1, dtype=torch.int32, device=z.device)
    BH, BW, warps = _blocks(z.device)
    grid = (triton.cdiv(W, BW), triton.cdiv(H, BH), N)
    zb = zbar if zbar is not None else z
    inv = 1.0 / (2.0 * params.sigma_e * params.sigma_e)
    src = z
    with torch.cuda.device(z.device) if z.device.type == "cuda" else contextlib.nullcontext():
        for i, dst in enumerate(targets):
            _refine_kernel[grid](
                src, q, z0, y, zb, dst, flags, *src.stride(), *q.stride(), *z0.stride(), *y.stride(), *zb.stride(),
                *dst.stride(), H, W, float(params.eta), float(params.lambda_a), float(params.lambda_e),
                float(params.lambda_o), inv, HAS_ZBAR=zbar is not None, CHECK=i == 0, BH=BH, BW=BW, num_warps=warps)
            src = dst
    if copy_back:
        final.copy_(scratch)
    return final, int(flags.item())
