"""Triton kernels of the fused ``inject`` op (docs/design.md, method M2); the specification is ``mcgr.ops.inject_ref``.

Three steps, none of which materialises T, A or A_b over the image:

1. ``_inject_disc_kernel`` (per primitive): the discrete volume ``disc`` of each primitive over its
   whole pixel window, and from it the mass-normalising ``scale = V / disc`` or, for a primitive
   that no sample hits, the centre-pixel deposit ``mu V`` (a Triton kernel rather than torch: the
   window loop needs no [P, h, w, S, S] temporaries and evaluates rho^2 with the main kernel's code).
2. Binning (torch on the tensors' device): every primitive is listed under each output tile whose
   tile + PSF halo block meets its window; a CSR offset per tile.
3. ``_inject_kernel`` (one program per output tile of one patch): A on the tile + halo block from the
   tile's primitives, the PSF blur and the local mean L as banded matrix products ``G A G``
   (``tl.dot`` in IEEE float32), the Beer-Lambert signal, the counter-based noise and the mask.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from mcgr.kernels._rng import _hash32
from mcgr.ops._inject_params import (
    SHAPE_CAPSULE,
    InjectParams,
    gaussian_taps,
    primitive_volume,
    primitive_window,
)
from mcgr.ops._rng import hash32

# geometry table columns (float32) and window table columns (int32), one row per primitive
_G_CY, _G_CX, _G_RY, _G_RX, _G_COS, _G_SIN, _G_T, _G_CAP, _G_SCALE, _G_DEP = range(10)
_NG = 10
_W_I0, _W_I1, _W_J0, _W_J1, _W_CI, _W_CJ = range(6)
_NW = 6


@triton.jit
def _rho2(y, x, cy, cx, ry, rx, ca, sa, cap):
    # rho^2 exactly as mcgr.ops.inject._rho2 (same operations, same order)
    dy = y - cy
    dx = x - cx
    u = dx * ca + dy * sa
    v = dy * ca - dx * sa
    eu = u / rx
    ev = v / ry
    ell = eu * eu + ev * ev
    ue = tl.maximum(tl.abs(u) - rx, 0.0)
    capr = (ue * ue + v * v) / (ry * ry)
    return tl.where(cap, capr, ell)


@triton.jit
def _inject_disc_kernel(geom_ptr, win_ptr, sub_ptr, vol_ptr, N, mu,
                        S: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr):
    # disc_p = sum over the pixels q of p's window of mean_k chord_p(sample k of q), with
    # chord = t sqrt(1 - rho^2) where rho^2 < 1: inject_ref's `chord.sum(dim=(1, 2))`.
    p = tl.program_id(0) * BP + tl.arange(0, BP)
    pm = p < N
    g = geom_ptr + p * 10
    cy = tl.load(g + 0, mask=pm, other=0.0)
    cx = tl.load(g + 1, mask=pm, other=0.0)
    ry = tl.load(g + 2, mask=pm, other=1.0)
    rx = tl.load(g + 3, mask=pm, other=1.0)
    ca = tl.load(g + 4, mask=pm, other=1.0)
    sa = tl.load(g + 5, mask=pm, other=0.0)
    th = tl.load(g + 6, mask=pm, other=0.0)
    cap = tl.load(g + 7, mask=pm, other=0.0) != 0.0
    w = win_ptr + p * 6
    i0 = tl.load(w + 0, mask=pm, other=0)
    i1 = tl.load(w + 1, mask=pm, other=0)
    j0 = tl.load(w + 2, mask=pm, other=0)
    j1 = tl.load(w + 3, mask=pm, other=1)
    nw = tl.maximum(j1 - j0, 1)
    area = (i1 - i0) * (j1 - j0)
    disc = tl.zeros([BP], dtype=tl.float32)
    for q0 in range(0, tl.max(area, axis=0), BQ):
        q = q0 + tl.arange(0, BQ)
        valid = pm[:, None] & (q[None, :] < area[:, None])
        yr = (i0[:, None] + q[None, :] // nw[:, None]).to(tl.float32)
        xr = (j0[:, None] + q[None, :] % nw[:, None]).to(tl.float32)
        csum = tl.zeros([BP, BQ], dtype=tl.float32)
        for ky in tl.static_range(S):
            y = yr + tl.load(sub_ptr + ky)
            for kx in tl.static_range(S):
                x = xr + tl.load(sub_ptr + kx)
                r2 = _rho2(y, x, cy[:, None], cx[:, None], ry[:, None], rx[:, None],
                           ca[:, None], sa[:, None], cap[:, None])
                csum += tl.where(r2 < 1.0, th[:, None] * tl.sqrt(tl.maximum(1.0 - r2, 0.0)), 0.0)
        disc += tl.sum(tl.where(valid, csum / (S * S), 0.0), axis=1)
    vol = tl.load(vol_ptr + p, mask=pm, other=0.0)
    hit = disc > 0.0
    tl.store(g + 8, tl.where(hit, vol / tl.where(hit, disc, 1.0), 0.0), mask=pm)
    tl.store(g + 9, tl.where(hit, 0.0, mu * vol), mask=pm)


@triton.jit
def _inject_kernel(bg_ptr, out_ptr, mask_ptr, geom_ptr, win_ptr, sub_ptr, psf_ptr, loc_ptr,
                   tile_start_ptr, tile_prim_ptr,
                   H, W, NTX, NTILES, TO, RP, RL, NLC,
                   mu, contrast, gamma, noise, key,
                   S: tl.constexpr, BLOCK: tl.constexpr, KB: tl.constexpr, NOISE: tl.constexpr):
    # One output tile (TO x TO pixels at (oy, ox)) of patch b, held as a BLOCK x BLOCK block whose
    # element (r, c) is pixel (oy - RP + r, ox - RP + c), i.e. the tile plus its PSF halo RP.
    # Equals inject_ref:
    #   A(x)  = sum_p [x in win_p] mu scale_p mean_k chord_p(x_k) + sum_{p missed} [x = centre_p] mu V_p
    #   A_b   = G A G^T with G[r, r'] = g_psf[r' - r + RP] (separable blur as two banded products)
    #   L     = (G_l B G_l^T) / (den_y den_x), B zero outside the image (normalised convolution)
    #   I     = clamp(B + c (1 - L)^gamma (1 - B)(1 - exp(-A_b)) + noise sqrt(I) n(b H W + i W + j), 0, 1)
    #   mask  = [#samples inside the union of primitives >= S^2 / 2] | [x is some primitive's centre]
    # A is evaluated per KB x KB sub-block, only from the primitives whose window meets it, and
    # enters A_b as sum_{sr, sc} G[:, sr] (A[sr, sc] G[sc, :]): no product operand exceeds BLOCK x KB.
    pid = tl.program_id(0)
    b = pid // NTILES
    t = pid % NTILES
    oy = (t // NTX) * TO
    ox = (t % NTX) * TO
    r = tl.arange(0, BLOCK)
    k = tl.arange(0, KB)
    rows = oy - RP + r
    cols = ox - RP + r
    out_r = (r >= RP) & (r < RP + TO) & (rows < H)
    out_c = (r >= RP) & (r < RP + TO) & (cols < W)
    out2 = out_r[:, None] & out_c[None, :]
    plane = b.to(tl.int64) * H * W
    offs = rows[:, None] * W + cols[None, :]
    bgv = tl.load(bg_ptr + plane + offs, mask=out2, other=0.0)
    img = bgv
    e0 = tl.load(tile_start_ptr + pid)
    e1 = tl.load(tile_start_ptr + pid + 1)
    if e1 > e0:
        ab = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
        for sr in range(0, BLOCK // KB):
            r_lo = oy - RP + sr * KB
            rs = r_lo + k
            bo_r = sr * KB + k
            yr = rs.to(tl.float32)[:, None]
            trow = tl.zeros([KB, BLOCK], dtype=tl.float32)
            for sc in range(0, BLOCK // KB):
                c_lo = ox - RP + sc * KB
                cs = c_lo + k
                xr = cs.to(tl.float32)[None, :]
                acc = tl.zeros([KB, KB], dtype=tl.float32)
                cen = tl.zeros([KB, KB], dtype=tl.int1)
                if S * S > 32:
                    bits = tl.zeros([KB, KB], dtype=tl.int64)
                else:
                    bits = tl.zeros([KB, KB], dtype=tl.int32)
                for e in range(e0, e1):
                    p = tl.load(tile_prim_ptr + e).to(tl.int64)
                    w = win_ptr + p * 6
                    i0 = tl.load(w + 0)
                    i1 = tl.load(w + 1)
                    j0 = tl.load(w + 2)
                    j1 = tl.load(w + 3)
                    if (i0 < r_lo + KB) & (i1 > r_lo) & (j0 < c_lo + KB) & (j1 > c_lo):
                        ci = tl.load(w + 4)
                        cj = tl.load(w + 5)
                        g = geom_ptr + p * 10
                        cy = tl.load(g + 0)
                        cx = tl.load(g + 1)
                        ry = tl.load(g + 2)
                        rx = tl.load(g + 3)
                        ca = tl.load(g + 4)
                        sa = tl.load(g + 5)
                        th = tl.load(g + 6)
                        cap = tl.load(g + 7) != 0.0
                        scale = tl.load(g + 8)
                        dep = tl.load(g + 9)
                        inwin = ((rs >= i0) & (rs < i1))[:, None] & ((cs >= j0) & (cs < j1))[None, :]
                        csum = tl.zeros([KB, KB], dtype=tl.float32)
                        for ky in tl.static_range(S):
                            y = yr + tl.load(sub_ptr + ky)
                            for kx in tl.static_range(S):
                                x = xr + tl.load(sub_ptr + kx)
                                r2 = _rho2(y, x, cy, cx, ry, rx, ca, sa, cap)
                                inside = r2 < 1.0
                                csum += tl.where(inside, th * tl.sqrt(tl.maximum(1.0 - r2, 0.0)), 0.0)
                                bits = bits | ((inside & inwin).to(bits.dtype) << (ky * S + kx))
                        acc += tl.where(inwin, (mu * (csum / (S * S))) * scale, 0.0)
                        centre = (rs == ci)[:, None] & (cs == cj)[None, :]
                        acc += tl.where(centre, dep, 0.0)
                        cen = cen | centre
                cnt = tl.zeros([KB, KB], dtype=tl.int32)
                for kb in tl.static_range(S * S):
                    cnt += ((bits >> kb) & 1).to(tl.int32)
                mval = (cnt * 2 >= S * S) | cen
                bo_c = sc * KB + k
                so = ((bo_r >= RP) & (bo_r < RP + TO) & (rs < H))[:, None] & \
                    ((bo_c >= RP) & (bo_c < RP + TO) & (cs < W))[None, :]
                tl.store(mask_ptr + plane + rs[:, None] * W + cs[None, :], mval.to(tl.uint8), mask=so)
                dx = r[None, :] - bo_c[:, None] + RP
                gx = tl.load(psf_ptr + dx, mask=(dx >= 0) & (dx <= 2 * RP), other=0.0)
                trow += tl.dot(acc, gx, input_precision="ieee")
            dy = bo_r[None, :] - r[:, None] + RP
            gy = tl.load(psf_ptr + dy, mask=(dy >= 0) & (dy <= 2 * RP), other=0.0)
            ab += tl.dot(gy, trow, input_precision="ieee")
        # local mean over KB-wide source chunks starting RL before the block
        num = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
        deny = tl.zeros([BLOCK], dtype=tl.float32)
        denx = tl.zeros([BLOCK], dtype=tl.float32)
        for lr in range(0, NLC):
            srow = oy - RP - RL + lr * KB + k
            ly = lr * KB + k[None, :] - r[:, None]
            gy = tl.load(loc_ptr + ly, mask=(ly >= 0) & (ly <= 2 * RL), other=0.0)
            deny += tl.sum(tl.where(((srow >= 0) & (srow < H))[None, :], gy, 0.0), axis=1)
        for lc in range(0, NLC):
            scol = ox - RP - RL + lc * KB + k
            cin = (scol >= 0) & (scol < W)
            lx = lc * KB + k[:, None] - r[None, :]
            gx = tl.load(loc_ptr + lx, mask=(lx >= 0) & (lx <= 2 * RL), other=0.0)
            denx += tl.sum(tl.where(cin[:, None], gx, 0.0), axis=0)
            part = tl.zeros([BLOCK, KB], dtype=tl.float32)
            if (ox - RP - RL + lc * KB < W) & (ox - RP - RL + lc * KB + KB > 0):
                for lr in range(0, NLC):
                    srow = oy - RP - RL + lr * KB + k
                    rin = (srow >= 0) & (srow < H)
                    ly = lr * KB + k[None, :] - r[:, None]
                    gy = tl.load(loc_ptr + ly, mask=(ly >= 0) & (ly <= 2 * RL), other=0.0)
                    if (oy - RP - RL + lr * KB < H) & (oy - RP - RL + lr * KB + KB > 0):
                        src = tl.load(bg_ptr + plane + srow[:, None] * W + scol[None, :],
                                      mask=rin[:, None] & cin[None, :], other=0.0)
                        part += tl.dot(gy, src, input_precision="ieee")
            num += tl.dot(part, gx, input_precision="ieee")
        den = deny[:, None] * denx[None, :]
        lm = num / tl.where(den > 0.0, den, 1.0)  # den is 0 only on block cells past the image
        base = tl.maximum(1.0 - lm, 0.0)
        pw = tl.where(base > 0.0, tl.exp2(gamma * tl.log2(tl.maximum(base, 1e-30))), 0.0)
        pw = tl.where(gamma == 1.0, base, pw)
        pw = tl.where(gamma == 0.0, 1.0, pw)
        m = contrast * pw
        img = bgv + m * (1.0 - bgv) * (1.0 - tl.exp(-ab))
    else:
        tl.store(mask_ptr + plane + offs, tl.zeros([BLOCK, BLOCK], dtype=tl.uint8), mask=out2)
    if NOISE:
        c = ((plane + offs.to(tl.int64)) & 0xFFFFFFFF).to(tl.uint32)
        kk = key.to(tl.uint32, bitcast=True)
        ha = _hash32((c * 2) ^ kk)
        hb = _hash32((c * 2 + 1) ^ kk)
        u1 = (ha >> 8).to(tl.float32) * 5.9604644775390625e-08 + 2.98023223876953125e-08
        u2 = (hb >> 8).to(tl.float32) * 5.9604644775390625e-08
        n = tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)
        img = img + noise * tl.sqrt(tl.maximum(img, 0.0)) * n
    img = tl.minimum(tl.maximum(img, 0.0), 1.0)
    tl.store(out_ptr + plane + offs, img, mask=out2)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=64)
def _constants(params: InjectParams, dev: torch.device):
    """Sample offsets, PSF and local-mean taps (as inject_ref makes them) and the noise key, per params."""
    S = params.supersample
    sub = ((torch.arange(S, dtype=torch.float32) + 0.5) / S - 0.5).to(dev)
    psf = gaussian_taps(params.psf_sigma, params.psf_radius, dev)
    loc = gaussian_taps(params.local_sigma, params.local_radius, dev)
    key = int(hash32(torch.tensor((params.seed & 0xFFFFFFFF) ^ 0x9E3779B9, dtype=torch.int64)))
    return sub, psf, loc, key - 2**32 if key >= 2**31 else key


def _block_for(radius_psf: int, H: int, W: int) -> int:
    """Tile + halo block side (a power of two, >= 32 for tl.dot).

    On a GPU the smallest whose tile keeps 3/4 of it (measured on an H100: 32 beats 64 for the PSF
    radius 2 of the default sigma); the interpreter pays per program, so there the largest useful.
    """
    if _interpreting():
        for blk in (32, 64):
            to = blk - 2 * radius_psf
            if to >= blk // 2 and (blk == 64 or max(H, W) <= to):
                return blk
        return 128
    for blk in (32, 64):
        if blk - 2 * radius_psf >= (3 * blk) // 4:
            return blk
    return 128


def _bin_primitives(bidx, i0, i1, j0, j1, Bn, nty, ntx, TO, RP):
    """CSR lists of the primitives whose window meets each tile's halo block (tile-major, ids int32)."""
    dev = i0.device
    ntiles = Bn * nty * ntx
    ty0 = torch.clamp(torch.div(i0 - RP, TO, rounding_mode="floor"), min=0)
    ty1 = torch.clamp(torch.div(i1 - 1 + RP, TO, rounding_mode="floor"), max=nty - 1)
    tx0 = torch.clamp(torch.div(j0 - RP, TO, rounding_mode="floor"), min=0)
    tx1 = torch.clamp(torch.div(j1 - 1 + RP, TO, rounding_mode="floor"), max=ntx - 1)
    ny = torch.clamp(ty1 - ty0 + 1, min=0)
    nx = torch.clamp(tx1 - tx0 + 1, min=0)
    count = ny * nx
    total = int(count.sum())
    start = torch.zeros(ntiles + 1, dtype=torch.int32, device=dev)
    if total == 0:
        return start, torch.zeros(1, dtype=torch.int32, device=dev)
    prim = torch.repeat_interleave(torch.arange(count.shape[0], device=dev), count, output_size=total)
    first = torch.cumsum(count, 0) - count
    k = torch.arange(total, device=dev) - first[prim]
    nxp = nx[prim]
    tile = (bidx[prim] * nty + ty0[prim] + k // nxp) * ntx + tx0[prim] + k % nxp
    order = torch.argsort(tile, stable=True)
    start[1:] = torch.cumsum(torch.bincount(tile, minlength=ntiles), 0).to(torch.int32)
    return start, prim[order].to(torch.int32)


def _prepare(background: torch.Tensor, calcs: torch.Tensor, params: InjectParams, block: int | None,
             sub_block: int | None = None):
    """Per-primitive tables (prepass kernel included), per-tile CSR lists and launch geometry."""
    Bn, H, W = background.shape
    if H * W >= 2**31:
        raise ValueError(f"background patches must hold fewer than 2**31 pixels, got {H}x{W}")
    dev = background.device
    S = params.supersample
    RP, RL = params.psf_radius, params.local_radius
    BLOCK = block or _block_for(RP, H, W)
    if BLOCK not in (32, 64, 128):
        raise ValueError(f"block must be 32, 64 or 128, got {block!r}")
    # culling pays on a GPU; the interpreter pays per operation, so it takes the whole block at once
    kb = min(sub_block or (BLOCK if _interpreting() else 16), BLOCK)
    if kb not in (16, 32, 64, 128):
        raise ValueError(f"sub_block must be 16, 32, 64 or 128, got {sub_block!r}")
    TO = BLOCK - 2 * RP
    if TO < 1:
        raise ValueError(f"block={BLOCK} leaves no tile inside a PSF halo of {RP} px; use a larger block")
    nty, ntx = triton.cdiv(H, TO), triton.cdiv(W, TO)
    sub, psf, loc, key = _constants(params, dev)
    N = calcs.shape[0]
    if N:
        c = calcs.contiguous()
        i0, j0, nh, nw = primitive_window(c)
        vol = primitive_volume(c)
        ci = torch.floor(c[:, 1] + 0.5).to(torch.int64)
        cj = torch.floor(c[:, 2] + 0.5).to(torch.int64)
        win = torch.stack([i0, i0 + nh, j0, j0 + nw, ci, cj], 1).to(torch.int32).contiguous()
        geom = torch.empty(N, _NG, dtype=torch.float32, device=dev)
        geom[:, _G_CY:_G_RX + 1] = c[:, 1:5]
        geom[:, _G_COS] = torch.cos(c[:, 5])
        geom[:, _G_SIN] = torch.sin(c[:, 5])
        geom[:, _G_T] = c[:, 6]
        geom[:, _G_CAP] = (c[:, 7] == SHAPE_CAPSULE).to(torch.float32)
        BP, BQ = 16, 128
        _inject_disc_kernel[(triton.cdiv(N, BP),)](geom, win, sub, vol, N, float(params.mu),
                                                   S=S, BP=BP, BQ=BQ, num_warps=4)
        tile_start, tile_prim = _bin_primitives(c[:, 0].to(torch.int64), i0, i0 + nh, j0, j0 + nw,
                                                Bn, nty, ntx, TO, RP)
    else:
        geom = torch.zeros(1, _NG, dtype=torch.float32, device=dev)
        win = torch.zeros(1, _NW, dtype=torch.int32, device=dev)
        tile_start = torch.zeros(Bn * nty * ntx + 1, dtype=torch.int32, device=dev)
        tile_prim = torch.zeros(1, dtype=torch.int32, device=dev)
    return dict(geom=geom, win=win, sub=sub, psf=psf, loc=loc, tile_start=tile_start, tile_prim=tile_prim,
                H=H, W=W, ntx=ntx, ntiles=nty * ntx, TO=TO, RP=RP, RL=RL,
                nlc=triton.cdiv(BLOCK + 2 * RL, kb), key=key, S=S, BLOCK=BLOCK, KB=kb, grid=(Bn * nty * ntx,))


def _launch(bg: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, params: InjectParams, a: dict) -> None:
    _inject_kernel[a["grid"]](bg, image, mask, a["geom"], a["win"], a["sub"], a["psf"], a["loc"],
                              a["tile_start"], a["tile_prim"],
                              a["H"], a["W"], a["ntx"], a["ntiles"], a["TO"], a["RP"], a["RL"], a["nlc"],
                              float(params.mu), float(params.contrast), float(params.gamma), float(params.noise),
                              a["key"], S=a["S"], BLOCK=a["BLOCK"], KB=a["KB"], NOISE=params.noise > 0,
                              num_warps=4 if a["BLOCK"] <= 64 else 8)


def inject_triton(background: torch.Tensor, calcs: torch.Tensor, params: InjectParams, *,
                  block: int | None = None, sub_block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused Triton image formation; equals ``inject_ref``.

    background: [B, H, W] float32 in [0, 1] (CUDA, or CPU under TRITON_INTERPRET=1);
    calcs: [N, 8] float32 primitives on the same device (validated by ``mcgr.ops.inject``).
    block: tile + PSF halo block side (32, 64 or 128; default chosen from the PSF radius and image
    size); each program writes a (block - 2 psf_radius)^2 tile. sub_block: side of the sub-blocks
    over which primitives are culled and evaluated (16 default, at most block).
    Returns (image [B, H, W] float32, mask [B, H, W] bool).
    """
    params = params.validated()
    bg = background.contiguous()
    a = _prepare(bg, calcs, params, block, sub_block)
    image = torch.empty_like(bg)
    mask = torch.empty(bg.shape, dtype=torch.uint8, device=bg.device)
    _launch(bg, image, mask, params, a)
    return image, mask.view(torch.bool)
