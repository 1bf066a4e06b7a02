"""MC injection: the image formation model of docs/design.md, method M2.

``inject_ref`` is the specification; ``inject`` dispatches to the fused kernels (C++/OpenMP,
CUDA, Triton) which must equal it. Conventions (every backend):

* Pixel ``(i, j)`` covers ``[i - 0.5, i + 0.5) x [j - 0.5, j + 0.5)``; its centre is ``(i, j)``.
* A primitive is a row of ``calcs`` ``[N, 8]`` float32:
  ``(batch, cy, cx, ry, rx, angle, thickness, shape)``: centre in px, semi-axes in px (``rx``
  along the rotated u axis, ``ry`` along v), ``angle`` in radians (u = x cos a + y sin a), peak
  chord ``thickness`` in mm, ``shape`` 0 = ellipsoid (punctate), 1 = capsule (a segment of half
  length ``rx`` swept by a ball of radius ``ry``: linear / branching pieces). Pleomorphic shapes
  are unions of several primitives, made by the sampler.
* Normalised distance rho: ellipsoid ``rho^2 = (u/rx)^2 + (v/ry)^2``; capsule
  ``rho^2 = (max(|u| - rx, 0)^2 + v^2) / ry^2``. Inside is ``rho^2 < 1``; the chord through a
  point is ``thickness * sqrt(1 - rho^2)``.
* Each pixel is sampled on an ``S x S`` grid (``S = supersample``) at
  ``i - 0.5 + (k + 0.5) / S``. A pixel's chord is the mean of its samples (area average).
* Mass conservation: each primitive's area-averaged chords over its whole window are scaled so
  they sum to its analytic volume ``V`` (ellipsoid ``2/3 pi rx ry t``; capsule
  ``pi rx ry t + 2/3 pi ry^2 t``, px^2 mm). A primitive that no sample hits deposits ``V`` in the
  pixel holding its centre ``(floor(cy + 0.5), floor(cx + 0.5))``.
* ``A = mu * T``; ``A_b = G_psf * A`` with the sampled, normalised Gaussian of radius
  ``int(4 sigma + 0.5)`` (scipy.ndimage's ``truncate=4``). ``A`` is analytic, so the blur sees the
  primitives outside the image too (no padding convention is involved).
* ``L`` = normalised Gaussian mean of the background within the image (zero-padded sum over
  zero-padded weights), sigma ``local_sigma``, radius ``int(3 s + 0.5)``.
* ``I = B + contrast * (1 - L)^gamma * (1 - B) * (1 - exp(-A_b))``; with ``noise > 0``,
  ``I += noise * sqrt(I) * n`` where ``n`` is ``rng_normal(seed, b*H*W + i*W + j)``; then
  ``I`` is clamped to [0, 1].
* Mask: a pixel is set when at least half of its samples lie inside the union of primitives, or
  when it holds some primitive's centre pixel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcgr import _backends
from mcgr._interop import as_tensor, to_kind
from mcgr._validate import check_float_image, check_same_device
from mcgr.ops._inject_params import (  # noqa: F401  (the op's public names live here too)
    CALC_FIELDS,
    LOCAL_TRUNCATE,
    MAX_RADIUS_PX,
    PSF_TRUNCATE,
    SHAPE_CAPSULE,
    SHAPE_ELLIPSOID,
    InjectParams,
    gaussian_taps,
    primitive_half_extent,
    primitive_volume,
    primitive_window,
)
from mcgr.ops._rng import rng_normal


def _rho2(calcs: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """rho^2 of sample points; calcs [P, 8] broadcast against y, x [P, ...]."""
    shp = (-1,) + (1,) * (y.dim() - 1)
    cy, cx = calcs[:, 1].view(shp), calcs[:, 2].view(shp)
    ry, rx = calcs[:, 3].view(shp), calcs[:, 4].view(shp)
    a, shape = calcs[:, 5].view(shp), calcs[:, 7].view(shp)
    dy, dx = y - cy, x - cx
    ca, sa = torch.cos(a), torch.sin(a)
    u = dx * ca + dy * sa
    v = dy * ca - dx * sa
    ell = (u / rx) ** 2 + (v / ry) ** 2
    ue = torch.clamp(u.abs() - rx, min=0.0)
    cap = (ue * ue + v * v) / (ry * ry)
    return torch.where(shape == SHAPE_CAPSULE, cap, ell)


def _rasterise(calcs: torch.Tensor, S: int, chunk: int = 256):
    """Yield per-chunk primitive windows: (index, rows, cols, chord [P,h,w] area-averaged, inside [P,h,w,S*S]).

    Primitives are sorted by window size and rasterised in chunks sharing a padded window, each
    in its own small window (never over the image).
    """
    i0, j0, nh, nw = primitive_window(calcs)
    order = torch.argsort(torch.maximum(nh, nw))
    dev = calcs.device
    k = torch.arange(S, device=dev, dtype=torch.float32)
    sub = (k + 0.5) / S - 0.5  # sample offsets from the pixel centre
    for start in range(0, calcs.shape[0], chunk):
        idx = order[start : start + chunk]
        c = calcs[idx]
        h, w = int(nh[idx].max()), int(nw[idx].max())
        rows = i0[idx, None] + torch.arange(h, device=dev)  # [P, h]
        cols = j0[idx, None] + torch.arange(w, device=dev)  # [P, w]
        y = rows.to(torch.float32)[:, :, None, None, None] + sub[None, None, None, :, None]
        x = cols.to(torch.float32)[:, None, :, None, None] + sub[None, None, None, None, :]
        r2 = _rho2(c, y, x)  # [P, h, w, S, S]
        inside = r2 < 1.0
        t = c[:, 6].view(-1, 1, 1, 1, 1)
        chord = torch.where(inside, t * torch.sqrt(torch.clamp(1.0 - r2, min=0.0)), torch.zeros_like(r2))
        # pixels past a primitive's own window (padding to the chunk's size) must not count
        valid = (torch.arange(h, device=dev)[None, :] < nh[idx, None])[:, :, None] & (
            torch.arange(w, device=dev)[None, :] < nw[idx, None]
        )[:, None, :]
        chord = chord.mean(dim=(3, 4)) * valid
        inside = inside.reshape(inside.shape[0], h, w, S * S) & valid[..., None]
        yield idx, rows, cols, chord, inside


def inject_ref(background: torch.Tensor, calcs: torch.Tensor, params: InjectParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference image formation. background [B, H, W] float32 in [0, 1]; calcs [N, 8].

    Returns (image [B, H, W] float32, mask [B, H, W] bool). Materialises T, A and A_b: it is the
    specification, written for clarity; the kernels never do.
    """
    Bn, H, W = background.shape
    dev = background.device
    S = params.supersample
    Rp = params.psf_radius
    img_b = background
    # 1. attenuation A = mu * T on the image plus a PSF halo (analytic primitives exist beyond the edge)
    Hp, Wp = H + 2 * Rp, W + 2 * Rp
    A = torch.zeros(Bn * Hp * Wp, dtype=torch.float32, device=dev)
    samples = torch.zeros(Bn * H * S * W * S, dtype=torch.bool, device=dev)
    mask = torch.zeros(Bn, H, W, dtype=torch.bool, device=dev)
    if calcs.shape[0]:
        vol = primitive_volume(calcs)
        bidx = calcs[:, 0].to(torch.int64)
        for idx, rows, cols, chord, inside in _rasterise(calcs, S):
            P, h, w = chord.shape
            disc = chord.sum(dim=(1, 2))  # discrete volume of each primitive over its whole window
            hit = disc > 0
            scale = torch.where(hit, vol[idx] / torch.where(hit, disc, torch.ones_like(disc)), torch.zeros_like(disc))
            val = params.mu * chord * scale[:, None, None]
            rr = (rows + Rp)[:, :, None].expand(P, h, w)
            cc = (cols + Rp)[:, None, :].expand(P, h, w)
            bb = bidx[idx][:, None, None].expand(P, h, w)
            ok = (rr >= 0) & (rr < Hp) & (cc >= 0) & (cc < Wp) & (val != 0)
            A.index_add_(0, ((bb * Hp + rr) * Wp + cc)[ok], val[ok])
            # coverage samples inside the image
            sk = torch.arange(S * S, device=dev)
            sy = (rows[:, :, None, None] * S + (sk // S)[None, None, None, :]).expand(P, h, w, S * S)
            sx = (cols[:, None, :, None] * S + (sk % S)[None, None, None, :]).expand(P, h, w, S * S)
            sb = bidx[idx][:, None, None, None].expand(P, h, w, S * S)
            ok = inside & (sy >= 0) & (sy < H * S) & (sx >= 0) & (sx < W * S)
            samples[((sb * (H * S) + sy) * (W * S) + sx)[ok]] = True
            # primitives that no sample hits deposit their whole volume at their centre pixel
            miss = ~hit
            if bool(miss.any()):
                c = calcs[idx][miss]
                ci = torch.floor(c[:, 1] + 0.5).to(torch.int64) + Rp
                cj = torch.floor(c[:, 2] + 0.5).to(torch.int64) + Rp
                ok = (ci >= 0) & (ci < Hp) & (cj >= 0) & (cj < Wp)
                A.index_add_(0, ((bidx[idx][miss] * Hp + ci) * Wp + cj)[ok], (params.mu * vol[idx][miss])[ok])
        # every primitive marks the pixel holding its centre
        ci = torch.floor(calcs[:, 1] + 0.5).to(torch.int64)
        cj = torch.floor(calcs[:, 2] + 0.5).to(torch.int64)
        ok = (ci >= 0) & (ci < H) & (cj >= 0) & (cj < W)
        mask.view(-1)[((bidx * H + ci) * W + cj)[ok]] = True
    A = A.view(Bn, 1, Hp, Wp)
    coverage = samples.view(Bn, H, S, W, S).sum(dim=(2, 4))
    mask |= coverage * 2 >= S * S
    # 2. PSF blur (separable, valid part of the haloed canvas)
    g = gaussian_taps(params.psf_sigma, Rp, dev)
    Ab = F.conv2d(F.conv2d(A, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1)).view(Bn, H, W)
    # 3. local background mean within the image (normalised convolution)
    Rl = params.local_radius
    gl = gaussian_taps(params.local_sigma, Rl, dev)
    num = F.conv2d(F.conv2d(img_b.view(Bn, 1, H, W), gl.view(1, 1, -1, 1), padding=(Rl, 0)), gl.view(1, 1, 1, -1), padding=(0, Rl))
    ones = torch.ones(1, 1, H, W, dtype=torch.float32, device=dev)
    den = F.conv2d(F.conv2d(ones, gl.view(1, 1, -1, 1), padding=(Rl, 0)), gl.view(1, 1, 1, -1), padding=(0, Rl))
    L = (num / den).view(Bn, H, W)
    # 4. local contrast modulation and the Beer-Lambert signal
    m = params.contrast * torch.pow(torch.clamp(1.0 - L, min=0.0), params.gamma)
    image = img_b + m * (1.0 - img_b) * (1.0 - torch.exp(-Ab))
    if params.noise > 0:
        counter = torch.arange(Bn * H * W, device=dev, dtype=torch.int64).view(Bn, H, W)
        image = image + params.noise * torch.sqrt(torch.clamp(image, min=0.0)) * rng_normal(params.seed, counter)
    image = torch.clamp(image, 0.0, 1.0)
    return image, mask


def validate_calcs(calcs: torch.Tensor, background: torch.Tensor) -> None:
    if not isinstance(calcs, torch.Tensor):
        raise TypeError(f"calcs must be a tensor, got {type(calcs).__name__}")
    if calcs.dim() != 2 or calcs.shape[1] != len(CALC_FIELDS):
        raise ValueError(f"calcs must be [N, 8] with columns {CALC_FIELDS}, got shape {tuple(calcs.shape)}")
    if calcs.dtype != torch.float32:
        raise TypeError(f"calcs must be float32, got {calcs.dtype}")
    check_same_device("background", background, "calcs", calcs)
    if calcs.shape[0] == 0:
        return
    if not bool(torch.isfinite(calcs).all()):
        raise ValueError("calcs holds NaN or inf")
    Bn = background.shape[0]
    b = calcs[:, 0]
    if bool(((b != torch.round(b)) | (b < 0) | (b >= Bn)).any()):
        bad = int(((b != torch.round(b)) | (b < 0) | (b >= Bn)).nonzero()[0])
        raise ValueError(f"calcs[{bad}, 0] (batch index) = {float(b[bad])} is not an integer in [0, {Bn})")
    for col, name in ((3, "ry"), (4, "rx")):
        v = calcs[:, col]
        badm = (v <= 0) | (v > MAX_RADIUS_PX)
        if bool(badm.any()):
            bad = int(badm.nonzero()[0])
            raise ValueError(f"calcs[{bad}, {col}] ({name}) = {float(v[bad])} must be in (0, {MAX_RADIUS_PX}] px")
    if bool((calcs[:, 6] < 0).any()):
        bad = int((calcs[:, 6] < 0).nonzero()[0])
        raise ValueError(f"calcs[{bad}, 6] (thickness) = {float(calcs[bad, 6])} must be >= 0 mm")
    sh = calcs[:, 7]
    badm = (sh != SHAPE_ELLIPSOID) & (sh != SHAPE_CAPSULE)
    if bool(badm.any()):
        bad = int(badm.nonzero()[0])
        raise ValueError(f"calcs[{bad}, 7] (shape) = {float(sh[bad])} must be 0 (ellipsoid) or 1 (capsule)")
    if bool((calcs[:, 1:3].abs() > 1e6).any()):
        raise ValueError("calcs centres (cy, cx) must lie within 1e6 px of the image")


def inject(background, calcs, params: InjectParams | None = None, backend: str = "auto"):
    """Inject microcalcifications into MC-free backgrounds (docs/design.md, method M2).

    background: [B, H, W] or [H, W] float32 in [0, 1] (torch, NumPy or CuPy).
    calcs: [N, 8] float32 primitives ``(batch, cy, cx, ry, rx, angle, thickness_mm, shape)``;
        an empty [0, 8] tensor returns the background unchanged (with noise, if any).
    params: :class:`InjectParams`. backend: "auto", "reference", "cpu", "triton" or "cuda".

    Returns (image, mask) shaped like ``background``: float32 image, bool exact coverage mask.
    """
    bg, kind = as_tensor(background, "background")
    cl, _ = as_tensor(calcs, "calcs")
    params = (params or InjectParams()).validated()
    # one aminmax pass checks finiteness and range together (NaN propagates, inf is out of range):
    # a separate isfinite pass costs more than the fused kernel on a training batch
    check_float_image(bg, "background", finite=False)
    if bg.numel():
        lo, hi = (float(v) for v in torch.aminmax(bg))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = (~torch.isfinite(bg)).nonzero()[0].tolist()
            raise ValueError(f"background holds NaN or inf (first at index {bad})")
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"background must lie in [0, 1], got range [{lo}, {hi}]")
    squeeze = bg.dim() == 2
    b3 = bg.unsqueeze(0) if squeeze else bg
    if b3.shape[1] == 0 or b3.shape[2] == 0 or b3.shape[0] == 0:
        raise ValueError(f"background must be non-empty, got shape {tuple(bg.shape)}")
    validate_calcs(cl, b3)
    choice = _backends.choose("inject", b3.device, backend)
    image, mask = choice.fn(b3, cl, params)
    if squeeze:
        image, mask = image[0], mask[0]
    return to_kind(image, kind), to_kind(mask, kind)


_backends.register("inject", "reference")(inject_ref)


def native_params(C, params: InjectParams):
    """``params`` as the extension's ``InjectParams`` struct (``C`` is ``mcgr._C``)."""
    p = C.InjectParams()
    p.mu, p.psf_sigma, p.local_sigma = float(params.mu), float(params.psf_sigma), float(params.local_sigma)
    p.contrast, p.gamma, p.noise = float(params.contrast), float(params.gamma), float(params.noise)
    p.seed, p.supersample = int(params.seed), int(params.supersample)
    return p


def _native_call(entry: str, background: torch.Tensor, calcs: torch.Tensor, params: InjectParams, *extra):
    C = _backends.native()
    bg = background.contiguous()
    cl = calcs.contiguous()
    Bn, H, W = bg.shape
    image = torch.empty((Bn, H, W), dtype=torch.float32, device=bg.device)
    mask = torch.empty((Bn, H, W), dtype=torch.bool, device=bg.device)
    getattr(C, entry)(bg.data_ptr(), cl.data_ptr(), image.data_ptr(), mask.data_ptr(), Bn, H, W, cl.shape[0],
                      native_params(C, params), *extra)
    return image, mask


@_backends.register("inject", "cpu")
def inject_cpu(background: torch.Tensor, calcs: torch.Tensor, params: InjectParams):
    """C++/OpenMP fused kernel (csrc/inject/inject_cpu.cpp); same contract as :func:`inject_ref`."""
    return _native_call("inject_cpu", background, calcs, params)


@_backends.register("inject", "cuda")
def inject_cuda(background: torch.Tensor, calcs: torch.Tensor, params: InjectParams):
    """CUDA fused kernel (csrc/inject/inject_cuda.cu) on the current stream; same contract as :func:`inject_ref`."""
    stream = torch.cuda.current_stream(background.device).cuda_stream
    with torch.cuda.device(background.device):
        return _native_call("inject_cuda", background, calcs, params, int(stream))


@_backends.register("inject", "triton")
def inject_triton(background: torch.Tensor, calcs: torch.Tensor, params: InjectParams):
    """Triton fused kernel (kernels/inject.py); same contract as :func:`inject_ref`."""
    from mcgr.kernels.inject import inject_triton as _launch

    return _launch(background, calcs, params)
