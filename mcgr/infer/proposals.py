"""Seed proposals for TT-GPR from image evidence, not only from what the segmentor already found.

Seeds at maxima of the segmentor's probability cannot reach the calcifications it missed (they sit
at p < 0.01, docs/design.md "Where the limits are"). Here the image proposes:

* :func:`evidence_map` - a detection signal-to-noise ratio per pixel, independent of the segmentor:
  the maximum over filters of each filter's response divided by its *local* robust noise level
  (1.4826 x the median absolute deviation in ``block`` px blocks of the search region, interpolated
  between block centres), so a dense or grainy part of the breast does not outrank a quiet one.
  Filters: ``"dog"`` scale-normalised differences of Gaussians over blob diameters 0.1-0.7 mm (at a
  Gaussian blob in white noise the scale-matched DoG is close to the matched filter) and ``"tophat"``
  a white top-hat (the image minus the largest of its openings by 1 mm segments in 4 orientations,
  which removes long thin bright lines: vessels, ducts, ligaments), its noise read off the fine
  residual of the image.
* :func:`propose_seeds` - candidates are local maxima of the evidence and of the logits inside the
  search region; each gets a fused score from its *ranks* among all candidates (no threshold on p:
  a calcification at p = 0.001 with strong evidence is a candidate), and at most ``budget`` of them
  per ``cell`` x ``cell`` block (the tile stride) are kept, strongest first. A candidate must clear
  a floor on either ranking signal (evidence >= ``floor`` sigmas, or p >= ``tau``): a flat or pure
  noise image proposes nothing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcgr.ops._filters import gaussian_blur

MAD_SCALE = 1.4826
NOISE_FLOOR = 1e-5  # intensity units of the [0, 1] image: 1 / 65535 is 1.5e-5
FILTERS = ("matched", "dog", "tophat")
DEFAULT_FILTERS = ("matched",)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The proposers' Gaussian: ``x`` [H, W] in float32, edges replicated, the kernel cut at 4 sigma."""
    return gaussian_blur(x.float(), float(sigma), "replicate", truncate=4.0)


def local_noise(resp: torch.Tensor, region: torch.Tensor | None, block: int = 64,
                min_fraction: float = 0.25, floor: float = NOISE_FLOOR) -> torch.Tensor:
    """Local robust noise level of ``resp`` [H, W]: 1.4826 x MAD of the region's pixels in each
    ``block`` px block, bilinearly interpolated between block centres. Blocks with under
    ``min_fraction`` region pixels take the region-wide value, and no block goes under a quarter
    of that value nor under ``floor`` (intensity units: below a 16-bit grey level, so that a flat
    image, whose filter responses are float rounding, has ratios near 0, not near infinity)."""
    H, W = resp.shape
    by, bx = -(-H // block), -(-W // block)
    v = resp.float()
    ok = torch.ones_like(v, dtype=torch.bool) if region is None else region.to(v.device, torch.bool)
    if not bool(ok.any()):
        ok = torch.ones_like(ok)
    vals = torch.where(ok, v, torch.full_like(v, float("nan")))
    vals = F.pad(vals, (0, bx * block - W, 0, by * block - H), value=float("nan"))
    # every second pixel of each block each way (a quarter of the sort; 1024 samples at 64 px)
    blocks = vals.view(by, block, bx, block)[:, ::2, :, ::2].permute(0, 2, 1, 3).reshape(by, bx, -1)
    med = blocks.nanmedian(dim=2, keepdim=True).values
    mad = (blocks - med).abs().nanmedian(dim=2).values * MAD_SCALE
    frac = (~torch.isnan(blocks)).float().mean(2)
    step = max(1, int(math.sqrt(H * W / 200000)))  # the region-wide value from ~200k pixels
    g = v[::step, ::step][ok[::step, ::step]]
    if g.numel() == 0:
        g = v[ok]
    gmed = g.median()
    gmad = (g - gmed).abs().median() * MAD_SCALE
    mad = torch.where((frac >= min_fraction) & torch.isfinite(mad), mad, gmad).clamp(min=max(float(gmad) * 0.25, floor))
    if by * bx == 1:
        return mad.expand(H, W).clone()
    # block centres -> pixels: align_corners=False maps block i's centre to pixel (i + 0.5) block - 0.5
    up = F.interpolate(mad[None, None], size=(by * block, bx * block), mode="bilinear", align_corners=False)
    return up[0, 0, :H, :W].contiguous()


def dog_sigmas(spacing_mm: float, diameters_mm=(0.1, 0.7), n: int = 4) -> list[float]:
    """DoG scales in px: a blob of radius rho answers most at sigma = rho / sqrt(2) (as the DoG baseline)."""
    lo, hi = (d / (2.0 * math.sqrt(2.0)) / spacing_mm for d in diameters_mm)
    if n == 1:
        return [math.sqrt(lo * hi)]
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def dog_evidence(image: torch.Tensor, region: torch.Tensor | None, sigmas, k: float = 1.6,
                 block: int = 64) -> torch.Tensor:
    """max over ``sigmas`` of (G_s - G_ks) * I / (k - 1) divided by its local robust noise, >= 0."""
    best = torch.zeros_like(image, dtype=torch.float32)
    for s in sigmas:
        d = (_blur(image, s) - _blur(image, k * s)) / (k - 1.0)
        torch.maximum(best, d / local_noise(d, region, block), out=best)
    return best


def _summed_area(x: torch.Tensor, reach: int) -> torch.Tensor:
    """Summed-area table (float64) of ``x`` [H, W] edge-replicated by ``reach`` px, with a zero first
    row and column: the sum over rows [i0, i1) and columns [j0, j1) of the padded image is
    c[i1, j1] - c[i0, j1] - c[i1, j0] + c[i0, j0]."""
    p = F.pad(x[None, None].double(), (reach, reach, reach, reach), mode="replicate")[0, 0]
    return F.pad(p.cumsum(0).cumsum(1)[None, None], (1, 0, 1, 0))[0, 0]


def _box_from(c: torch.Tensor, shape, reach: int, half: int) -> torch.Tensor:
    H, W = shape
    n = 2 * half + 1
    o = reach - half  # padded row/column where pixel 0's box starts
    s = c[o + n:o + n + H, o + n:o + n + W] - c[o:o + H, o + n:o + n + W] - c[o + n:o + n + H, o:o + W] + c[o:o + H, o:o + W]
    return (s / (n * n)).float()


def _binomial3(x: torch.Tensor) -> torch.Tensor:
    """[1, 2, 1] / 4 along both axes (edges replicated), as shifted sums: a 1-channel conv2d is
    ~30x slower on a CPU."""
    p = F.pad(x[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    r = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    return 0.25 * r[:-2] + 0.5 * r[1:-1] + 0.25 * r[2:]


def matched_evidence(image: torch.Tensor, region: torch.Tensor | None, halves=(0, 1, 2, 3),
                     block: int = 64) -> torch.Tensor:
    """Centre-surround matched filters: after a 3 x 3 binomial smoothing (the pixel noise), the mean
    over a (2a + 1)^2 centre box less the mean over the ring between it and the (4a + 5)^2 box (a
    zero-mean template: the matched filter of a flat spot on a locally flat background), for centre
    half-widths ``halves`` (a = 0..3: 0.07 to 0.49 mm at 0.07 mm), each divided by its local robust
    noise; the maximum over the widths, >= 0. One summed-area table serves every width."""
    x = _binomial3(image.float())
    reach = 2 * max(int(a) for a in halves) + 2
    c = _summed_area(x, reach)
    best = torch.zeros_like(x)
    for a in halves:
        a, b = int(a), 2 * int(a) + 2
        nc, nb = (2 * a + 1) ** 2, (2 * b + 1) ** 2
        centre, outer = _box_from(c, x.shape, reach, a), _box_from(c, x.shape, reach, b)
        d = centre - (outer * nb - centre * nc) / (nb - nc)
        torch.maximum(best, d / local_noise(d, region, block), out=best)
    return best


def _line_extreme(x: torch.Tensor, length: int, dy: int, dx: int, fn) -> torch.Tensor:
    """Min or max (``fn``) of ``x`` over a centred digital segment of ``length`` px along (dy, dx)."""
    r = length // 2
    p = F.pad(x[None, None], (r, r, r, r), mode="replicate")[0, 0]
    H, W = x.shape
    out = None
    for i in range(-r, r + 1):
        s = p[r + i * dy : r + i * dy + H, r + i * dx : r + i * dx + W]
        out = s.clone() if out is None else fn(out, s, out=out)
    return out


def tophat_evidence(image: torch.Tensor, region: torch.Tensor | None, spacing_mm: float, size_mm: float = 1.0,
                    smooth_px: float = 0.5, block: int = 64) -> torch.Tensor:
    """White top-hat of the lightly smoothed image against the largest opening by ``size_mm``
    segments in 4 orientations (lines longer than ``size_mm`` are removed), divided by the local
    robust noise of the fine residual ``x - G_1 x``; >= 0."""
    x = _blur(image, smooth_px)
    L = max(3, int(round(size_mm / spacing_mm)) | 1)
    opened = None
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        o = _line_extreme(_line_extreme(x, L, dy, dx, torch.minimum), L, dy, dx, torch.maximum)
        opened = o if opened is None else torch.maximum(opened, o, out=opened)
    th = x - opened
    return (th / local_noise(x - _blur(x, 1.0), region, block)).clamp(min=0)


def evidence_map(image: torch.Tensor, region: torch.Tensor | None = None, spacing_mm: float = 0.07,
                 filters=DEFAULT_FILTERS, sigmas=None, block: int = 64) -> torch.Tensor:
    """Image evidence for a calcification at each pixel: the maximum over ``filters`` of the
    filter's local signal-to-noise ratio (float32 [H, W], >= 0, 0 outside ``region``).

    image: [H, W] in [0, 1], bright = attenuating. region: optional bool [H, W], where the noise is
    estimated and the map is kept (the search region). spacing_mm: pixel size. filters: subset of
    ``("matched", "dog", "tophat")`` (default: "matched", the cheapest; measured in
    docs/ttgpr_shift.md). sigmas: DoG scales in px (default :func:`dog_sigmas` of the spacing).
    block: side in px of the blocks over which the noise level is local.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 2:
        raise ValueError(f"image must be a [H, W] tensor, got {getattr(image, 'shape', type(image).__name__)}")
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm!r}")
    bad = [f for f in filters if f not in FILTERS]
    if bad or not filters:
        raise ValueError(f"filters must be a non-empty subset of {FILTERS}, got {tuple(filters)!r}")
    if not (isinstance(block, int) and block >= 8):
        raise ValueError(f"block must be an integer >= 8 px, got {block!r}")
    if region is not None and tuple(region.shape) != tuple(image.shape):
        raise ValueError(f"region must be [{image.shape[0]}, {image.shape[1]}], got {tuple(region.shape)}")
    full = image.float()
    reg_full = None if region is None else region.to(full.device, torch.bool)
    box = None
    if reg_full is not None and bool(reg_full.any()):
        # the filters run on the region's bounding box plus their reach (most of a film is air)
        ys = reg_full.any(1).nonzero().flatten()
        xs = reg_full.any(0).nonzero().flatten()
        m = 2 * block
        box = (slice(max(0, int(ys[0]) - m), min(full.shape[0], int(ys[-1]) + m + 1)),
               slice(max(0, int(xs[0]) - m), min(full.shape[1], int(xs[-1]) + m + 1)))
    x = full if box is None else full[box]
    reg = None if reg_full is None else (reg_full if box is None else reg_full[box])
    out = torch.zeros_like(x)
    if "matched" in filters:
        out = torch.maximum(out, matched_evidence(x, reg, block=block))
    if "dog" in filters:
        out = torch.maximum(out, dog_evidence(x, reg, sigmas or dog_sigmas(spacing_mm), block=block))
    if "tophat" in filters:
        out = torch.maximum(out, tophat_evidence(x, reg, spacing_mm, block=block))
    if reg is not None:
        out = out * reg
    if box is not None:
        o = torch.zeros_like(full)
        o[box] = out
        out = o
    return out


def _max_filter(a: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(a[None, None], 2 * radius + 1, stride=1, padding=radius)[0, 0]


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Rank percentiles of ``v`` [K] in (0, 1]: the largest is 1, ties share the lower rank."""
    order = torch.argsort(v, stable=True)
    r = torch.empty_like(v)
    r[order] = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    # ties: every member of a run of equal values takes the run's first rank
    sv = v[order]
    first = torch.ones_like(sv, dtype=torch.bool)
    first[1:] = sv[1:] != sv[:-1]
    run_start = torch.cummax(torch.where(first, torch.arange(v.numel(), device=v.device), torch.zeros_like(order)), 0).values
    r[order] = (run_start + 1).to(v.dtype)
    return r / v.numel()


def propose_seeds(logits: torch.Tensor, evidence: torch.Tensor, region: torch.Tensor | None = None, *,
                  budget: int = 4, cell: int = 192, tau: float = 0.3, floor: float = 4.0, radius: int = 3,
                  weight: float = 0.5, exclude: torch.Tensor | None = None, max_total: int | None = None) -> torch.Tensor:
    """Seeds (float32 [K, 2] (y, x) px, strongest first) fused from the segmentor and the image.

    logits / evidence: [H, W] (the stitched logits; :func:`evidence_map`). region: bool [H, W],
    where seeds may lie. Candidates: local maxima (``(2 radius + 1)^2`` window) of the evidence
    with evidence >= ``floor``, and of the logits with p >= ``tau``, inside ``region`` and outside
    ``exclude`` (bool [H, W]: e.g. the base model's detections, where a seed changes nothing).
    A candidate's score is ``weight * rank(logit) + (1 - weight) * rank(evidence)``, each the rank
    percentile among all candidates of the field (the logit and evidence read as the maxima within
    ``radius`` px, so a seed off by a pixel from the logit's peak keeps its logit). At most
    ``budget`` candidates per ``cell`` x ``cell`` block (the tile stride) are kept, then at most
    ``max_total`` over the field, highest score first.
    """
    if logits.shape != evidence.shape or logits.dim() != 2:
        raise ValueError(f"logits and evidence must be [H, W] of one shape, got {tuple(logits.shape)} and {tuple(evidence.shape)}")
    if not (isinstance(budget, int) and budget >= 0):
        raise ValueError(f"budget must be an integer >= 0, got {budget!r}")
    if not (isinstance(cell, int) and cell >= 1):
        raise ValueError(f"cell must be an integer >= 1 px, got {cell!r}")
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be in (0, 1), got {tau!r}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    dev = logits.device
    z = logits.float()
    e = evidence.to(dev, torch.float32)
    ok = torch.ones_like(z, dtype=torch.bool) if region is None else region.to(dev, torch.bool)
    if exclude is not None:
        ok = ok & ~exclude.to(dev, torch.bool)
    ez = torch.where(ok, e, torch.zeros_like(e))
    zz = torch.where(ok, z, torch.full_like(z, -1e4))
    zmax, emax = _max_filter(zz, radius), _max_filter(ez, radius)
    z_tau = math.log(tau / (1.0 - tau))
    cand = ok & (((ez >= emax) & (ez >= floor) & (ez > 0)) | ((zz >= zmax) & (zz >= z_tau)))
    yy, xx = cand.nonzero(as_tuple=True)
    if yy.numel() == 0 or budget == 0:
        return torch.zeros(0, 2, device=dev)
    # one candidate per peak: a plateau of equal maxima keeps its first pixel in raster order
    zv, ev = zmax[yy, xx], emax[yy, xx]
    score = weight * _ranks(zv.double()) + (1.0 - weight) * _ranks(ev.double())
    # per cell, highest score first: sort by (cell, -score)
    W = z.shape[1]
    cid = (yy // cell) * (-(-W // cell)) + (xx // cell)
    order = torch.argsort(cid.double() * 4.0 - score, stable=True)
    cid_s = cid[order]
    first = torch.ones_like(cid_s, dtype=torch.bool)
    first[1:] = cid_s[1:] != cid_s[:-1]
    idx = torch.arange(cid_s.numel(), device=dev)
    start = torch.cummax(torch.where(first, idx, torch.zeros_like(idx)), 0).values
    keep = order[(idx - start) < budget]
    # suppress near-duplicates: a logit peak and an evidence peak of one calcification
    keep = keep[torch.argsort(-score[keep], stable=True)]
    pts = torch.stack([yy[keep], xx[keep]], 1).float()
    if pts.shape[0] > 1:
        d = torch.cdist(pts, pts)
        tri = torch.triu(torch.ones_like(d, dtype=torch.bool), 1)
        dup = ((d <= radius) & tri).any(0)  # a later (weaker) one within radius of an earlier one
        pts = pts[~dup]
    if max_total is not None:
        pts = pts[:max_total]
    return pts
