"""Triton kernels of the fused ``stitch`` op and its inverse gather (docs/design.md, method M5); the specification is
``mcgr.ops.stitch_ref`` / ``mcgr.ops.gather_tiles_ref``.

``_stitch_kernel``: one program per ``BH x BW`` block of one canvas. The tiles are sorted by ``y0``
on the device (no host synchronisation) and each block row gets the range of tiles whose rows
meet it (``searchsorted``); the program walks that range, skips tiles that miss its columns, and
keeps numerator and denominator in registers, writing each pixel once.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _stitch_kernel(tiles_ptr, origins_ptr, order_ptr, lo_ptr, hi_ptr, weights_ptr, out_ptr,
                   P, T, H, W, BH: tl.constexpr, BW: tl.constexpr):
    # canvas[b, y, x] = sum_p w[y - y0_p, x - x0_p] tiles[b, p, y - y0_p, x - x0_p] / sum_p w[...]
    # over the tiles covering (y, x), 0 where none does; must equal mcgr.ops.stitch_ref.
    pid_x = tl.program_id(0)
    pid_y = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = pid_y * BH + tl.arange(0, BH)
    cols = pid_x * BW + tl.arange(0, BW)
    in_canvas = (rows < H)[:, None] & (cols < W)[None, :]
    num = tl.zeros([BH, BW], dtype=tl.float32)
    den = tl.zeros([BH, BW], dtype=tl.float32)
    lo = tl.load(lo_ptr + pid_y)
    hi = tl.load(hi_ptr + pid_y)
    xb = pid_x * BW
    for k in range(lo, hi):
        p = tl.load(order_ptr + k)
        y0 = tl.load(origins_ptr + 2 * p)
        x0 = tl.load(origins_ptr + 2 * p + 1)
        if (x0 < xb + BW) & (x0 + T > xb):
            i = rows - y0
            j = cols - x0
            m = in_canvas & ((i >= 0) & (i < T))[:, None] & ((j >= 0) & (j < T))[None, :]
            off = i[:, None] * T + j[None, :]
            w = tl.load(weights_ptr + off, mask=m, other=0.0)
            t = tl.load(tiles_ptr + (b * P + p) * T * T + off, mask=m, other=0.0)
            num += w * t
            den += w
    res = tl.where(den > 0.0, num / tl.where(den > 0.0, den, 1.0), 0.0)
    tl.store(out_ptr + b * H * W + rows[:, None] * W + cols[None, :], res, mask=in_canvas)


@triton.jit
def _gather_tiles_kernel(canvas_ptr, origins_ptr, tiles_ptr, P, T, H, W, NR, BR: tl.constexpr, BT: tl.constexpr):
    # tiles[b, p, i, j] = canvas[b, y0_p + i, x0_p + j], 0 outside the canvas; must equal
    # mcgr.ops.gather_tiles_ref. Program (p * NR + r, b) copies rows [r BR, r BR + BR) of tile p.
    pid = tl.program_id(0).to(tl.int64)
    p = pid // NR
    pid_r = pid % NR
    b = tl.program_id(1).to(tl.int64)
    i = pid_r * BR + tl.arange(0, BR)
    j = tl.arange(0, BT)
    y0 = tl.load(origins_ptr + 2 * p)
    x0 = tl.load(origins_ptr + 2 * p + 1)
    y = y0 + i
    x = x0 + j
    in_tile = (i < T)[:, None] & (j < T)[None, :]
    inside = in_tile & (y < H)[:, None] & (x < W)[None, :]
    v = tl.load(canvas_ptr + b * H * W + y[:, None] * W + x[None, :], mask=inside, other=0.0)
    tl.store(tiles_ptr + ((b * P + p) * T + i[:, None]) * T + j[None, :], v, mask=in_tile)


def _interpreted(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def stitch_triton(tiles: torch.Tensor, origins: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Launcher: tiles [B, P, T, T], origins int64 [P, 2], weights [T, T], out [B, H, W] (contiguous)."""
    B, P, T, _ = tiles.shape
    H, W = out.shape[-2:]
    # the interpreter pays per program: few large blocks there; on a GPU, blocks of 32 x 64 px
    BH, BW = (64, 128) if _interpreted(tiles) else (32, 64)
    order = torch.argsort(origins[:, 0], stable=True)
    ys = origins[order, 0].contiguous()
    start = torch.arange(0, H, BH, device=tiles.device, dtype=torch.int64)
    lo = torch.searchsorted(ys, start - T + 1, side="left")
    hi = torch.searchsorted(ys, start + BH - 1, side="right")
    grid = (triton.cdiv(W, BW), triton.cdiv(H, BH), B)
    _stitch_kernel[grid](tiles, origins, order, lo, hi, weights, out, P, T, H, W, BH=BH, BW=BW, num_warps=4)
    return out


def gather_tiles_triton(canvas: torch.Tensor, origins: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Launcher: canvas [B, H, W], origins int64 [P, 2], out [B, P, T, T] (contiguous)."""
    B, H, W = canvas.shape
    _, P, T, _ = out.shape
    BT = triton.next_power_of_2(T)
    BR = max(1, min(triton.next_power_of_2(T), 8192 // BT))
    NR = triton.cdiv(T, BR)
    _gather_tiles_kernel[(P * NR, B)](canvas, origins, out, P, T, H, W, NR, BR=BR, BT=BT, num_warps=4)
    return out
