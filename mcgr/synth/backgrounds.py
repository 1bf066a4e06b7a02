"""Procedural MC-free breast texture (docs/design.md, method M2), so that everything runs with no data.

A patch is ``sigmoid(level + a * N_beta + b * D + F)`` where

* ``N_beta`` is power-law noise, power spectrum ``P(f) ~ f^-beta`` (Burgess 2001: beta ~ 3 for
  mammographic anatomical noise; Chen 2012 measured 3.17 CC / 3.30 MLO), unit variance;
* ``D`` is a smooth density field (Gaussian spectrum, correlation length ``density_scale_mm``):
  fatty and dense regions within one patch;
* ``F`` is a few bright curvilinear structures (Cooper's ligaments, ducts, vessels): quadratic
  Bezier curves with a Gaussian cross-profile. They are MC-free bright texture, the decoys a
  segmentor must learn to ignore;
* ``level = logit(mean)`` with ``mean`` drawn in ``mean`` (fatty ~0.2 to dense ~0.7).

Two patches share one complex inverse FFT (real and imaginary parts); the curves are splatted as
points and blurred in the frequency domain of that same transform, so generation is a few
vectorised passes over the batch.
"""
from __future__ import annotations

import math

import torch

from mcgr._validate import check_range
from mcgr.synth.patterns import _float_range, _int_range

_CHUNK_ELEMS = 1 << 22  # patches per FFT chunk: 16 MiB float32 buffers (below glibc's mmap threshold)
_DENSITY_FEATURES = 8


def _spectral_grid(H: int, W: int, device) -> torch.Tensor:
    """Radial frequency |f| (cycles/px) on the fft2 grid [H, W]."""
    fy = torch.fft.fftfreq(H, device=device)
    fx = torch.fft.fftfreq(W, device=device)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def _splat_fibres(g, n, H, W, spacing, count_rng, width_rng, strength_rng, device, scale, pair_out=None):
    """Bright curves as weighted points (times ``scale`` [n]), bilinearly splatted into pairs of
    patches: line density [n/2, H, W, 2] (n even), and the Gaussian sigma (px) to blur each with."""
    F = count_rng[1]
    diag = math.hypot(H, W)
    T = int(math.ceil(diag)) + 1
    count = torch.randint(count_rng[0], count_rng[1] + 1, (n,), generator=g, device=device)
    u = torch.rand(n, F, 7, generator=g, device=device)
    sigma = (width_rng[0] + (width_rng[1] - width_rng[0]) * torch.rand(n // 2, generator=g, device=device)) / (2.3548 * spacing)
    sigma = sigma.repeat_interleave(2)  # the two patches of a pair share one blur
    on = torch.arange(F, device=device)[None, :] < count[:, None]
    strength = strength_rng[0] + (strength_rng[1] - strength_rng[0]) * u[..., 0]
    p0y = (u[..., 1] * 1.2 - 0.1) * (H - 1)
    p0x = (u[..., 2] * 1.2 - 0.1) * (W - 1)
    th = u[..., 3] * (2 * math.pi)
    L = (0.3 + 0.7 * u[..., 4]) * diag
    p2y, p2x = p0y + L * torch.sin(th), p0x + L * torch.cos(th)
    bow = (u[..., 5] - 0.5) * 0.6 * L
    p1y = (p0y + p2y) / 2 + bow * torch.cos(th)
    p1x = (p0x + p2x) / 2 - bow * torch.sin(th)
    t = torch.linspace(0.0, 1.0, T, device=device)
    a, b, c = ((1 - t) ** 2), 2 * (1 - t) * t, t**2
    y = a * p0y[..., None] + b * p1y[..., None] + c * p2y[..., None]  # [n, F, T]
    x = a * p0x[..., None] + b * p1x[..., None] + c * p2x[..., None]
    dy = 2 * (1 - t) * (p1y - p0y)[..., None] + 2 * t * (p2y - p1y)[..., None]
    dx = 2 * (1 - t) * (p1x - p0x)[..., None] + 2 * t * (p2x - p1x)[..., None]
    ds = torch.hypot(dy, dx) / (T - 1)
    fade = torch.sin(math.pi * t).clamp(min=0.0) ** 0.5 * (0.6 + 0.4 * torch.cos(2 * math.pi * (t * (1 + 2 * u[..., 6:7]))))
    # peak of the blurred line = strength: line density strength * sqrt(2 pi) sigma
    w = (strength * on)[..., None] * fade * ds * (math.sqrt(2 * math.pi) * sigma * scale)[:, None, None]
    # patch 2j goes to the real part, 2j+1 to the imaginary part of pair j (interleaved float pairs)
    out = torch.zeros(n * H * W, device=device) if pair_out is None else pair_out.view(-1).zero_()
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = y - y0, x - x0
    pid = torch.arange(n, device=device)
    base = ((pid // 2) * (H * W * 2) + pid % 2)[:, None, None]
    for oy, ox, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0.long() + oy, x0.long() + ox
        ok = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W) & (w != 0)
        out.index_add_(0, (base + (yy * W + xx) * 2)[ok], (w * wt)[ok])
    return out, sigma


def procedural_backgrounds(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    beta: float = 3.0,
    *,
    spacing_mm: float = 0.07,
    mean=(0.2, 0.7),
    texture_std=(0.35, 0.8),
    density_std=(0.0, 0.8),
    density_scale_mm: float = 6.0,
    fibres=(0, 5),
    fibre_width_mm=(0.2, 1.0),
    fibre_strength=(0.5, 1.5),
    device=None,
) -> torch.Tensor:
    """MC-free breast-like patches: [n, height, width] float32 in [0, 1] (bright = dense).

    generator: ``torch.Generator`` (its device is where the patches are made unless ``device`` is
        given, which must then match); the result is a pure function of its state and the arguments.
    beta: power-law exponent of the anatomical texture (power ~ f^-beta); 2 < beta < 4 is realistic.
    spacing_mm: pixel size (mm), for the physical scales below.
    mean: (min, max) of the patch's mean level (fatty ~0.2 .. dense ~0.7).
    texture_std: (min, max) amplitude of the power-law texture, in logit units.
    density_std, density_scale_mm: amplitude (logit units) and correlation length of the smooth
        fatty-to-dense variation within a patch.
    fibres: inclusive (min, max) bright curvilinear structures per patch; fibre_width_mm: (min, max)
        FWHM of their cross-profile; fibre_strength: (min, max) peak brightness in logit units.
    """
    for name, v in (("n", n), ("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "n" else 2):
            raise ValueError(f"{name} must be an integer >= {0 if name == 'n' else 2}, got {v!r}")
    beta = check_range("beta", beta, 0.0, 8.0)
    spacing = check_range("spacing_mm", spacing_mm, 0.0, 10.0, lo_open=True)
    m_lo, m_hi = _float_range("mean", mean, 0.0, 1.0)
    if m_hi >= 1.0:
        raise ValueError(f"mean must lie in (0, 1), got {mean!r}")
    ts = _float_range("texture_std", texture_std, 0.0, 10.0, lo_open=False)
    ds = _float_range("density_std", density_std, 0.0, 10.0, lo_open=False)
    dscale = check_range("density_scale_mm", density_scale_mm, 0.0, 1e4, lo_open=True)
    f_rng = _int_range("fibres", fibres, 0)
    fw = _float_range("fibre_width_mm", fibre_width_mm, 0.0, 100.0)
    fs = _float_range("fibre_strength", fibre_strength, 0.0, 10.0, lo_open=False)
    if generator is None:
        generator = torch.Generator(device=device or "cpu").manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    dev = torch.device(device) if device is not None else generator.device
    if dev.type != generator.device.type:
        raise ValueError(f"generator is on {generator.device} but device is {dev}")
    g = generator
    H, W = height, width
    out = torch.empty(n, H, W, dtype=torch.float32, device=dev)
    if n == 0:
        return out

    # One complex inverse FFT makes two independent textures (its real and imaginary parts), and
    # the fibres of both ride in the same transform; the density field is a few random Fourier
    # features (Gaussian spectrum of correlation length ell), a rank-2K product, no FFT needed.
    f = _spectral_grid(H, W, dev)
    amp = torch.where(f > 0, f.clamp(min=1e-12) ** (-beta / 2), torch.zeros_like(f))
    amp *= H * W / math.sqrt(float((amp.double() ** 2).sum()))  # Re/Im of ifft2(Z amp) have unit variance
    fy = torch.fft.fftfreq(H, device=dev) ** 2
    fx = torch.fft.fftfreq(W, device=dev) ** 2
    ell = dscale / spacing  # px
    K = _DENSITY_FEATURES
    yy = torch.arange(H, dtype=torch.float32, device=dev)
    xx = torch.arange(W, dtype=torch.float32, device=dev)

    chunk = 2 * max(1, _CHUNK_ELEMS // (2 * H * W))
    pairs = chunk // 2
    z = torch.empty(pairs, H, W, 2, device=dev)
    lines = torch.empty(pairs, H, W, 2, device=dev) if f_rng[1] > 0 else None
    field = torch.empty(pairs, H, W, dtype=torch.complex64, device=dev)
    for s in range(0, n, chunk):
        k = min(chunk, n - s)
        kp = (k + 1) // 2
        r = torch.rand(2 * kp, 3, generator=g, device=dev)
        mu = m_lo + (m_hi - m_lo) * r[:, 0]
        level = torch.log(mu / (1 - mu))
        a_tex = ts[0] + (ts[1] - ts[0]) * r[:, 1]
        a_den = ds[0] + (ds[1] - ds[0]) * r[:, 2]
        zk = z[:kp].normal_(generator=g)
        zk *= amp[:, :, None]  # real view: a complex-by-real product would promote amp to complex
        spec = torch.view_as_complex(zk)
        if lines is not None:
            # fibres are added before the a_tex scaling below, so they are divided by it here
            a_tex = a_tex.clamp(min=1e-3)  # so that the division is undone exactly (a texture of 1e-3 logit at least)
            lc, sigma = _splat_fibres(g, 2 * kp, H, W, spacing, f_rng, fw, fs, dev, 1.0 / a_tex, lines[:kp])
            c = -2 * math.pi**2 * sigma[0::2, None] ** 2
            blur = torch.exp(c * fy)[:, :, None] * torch.exp(c * fx)[:, None, :]  # separable Gaussian MTF
            fl = torch.fft.fft2(torch.view_as_complex(lc.view(kp, H, W, 2)))
            torch.view_as_real(fl).mul_(blur[..., None])
            spec += fl
        torch.fft.ifft2(spec, out=field[:kp])
        tex = torch.view_as_real(field[:kp]).permute(0, 3, 1, 2)  # [kp, 2, H, W]: patches 2j, 2j+1
        o = out[s : s + k].view(kp, 2, H, W) if k % 2 == 0 else torch.empty(kp, 2, H, W, device=dev)
        torch.mul(tex, a_tex.view(kp, 2, 1, 1), out=o)
        o = o.view(2 * kp, H, W)
        # density: sqrt(2/K) sum_j cos(ky_j y + kx_j x + phi_j), k_j ~ N(0, I / ell^2)
        kv = torch.randn(2 * kp, K, 2, generator=g, device=dev) / ell
        phi = torch.rand(2 * kp, K, generator=g, device=dev) * (2 * math.pi)
        ay = kv[..., 0:1] * yy + phi[..., None]  # [2kp, K, H]
        ax = kv[..., 1:2] * xx  # [2kp, K, W]
        left = torch.cat((torch.cos(ay), -torch.sin(ay)), 1).transpose(1, 2)  # [2kp, H, 2K]
        right = torch.cat((torch.cos(ax), torch.sin(ax)), 1)  # [2kp, 2K, W]
        left *= (a_den * math.sqrt(2.0 / K))[:, None, None]
        o.baddbmm_(left, right)
        # the mean is set by level alone: centre each patch's field before adding it
        o += (level - o.mean(dim=(1, 2)))[:, None, None]
        torch.sigmoid(o, out=o)
        if k % 2:
            out[s : s + k] = o[:k]
    return out
