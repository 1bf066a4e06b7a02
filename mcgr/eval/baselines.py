"""Classic microcalcification detectors, implemented here as baselines for ``mcgr eval``.

Both return a probability-like map [H, W] in [0, 1] on the full field, computed with vectorised
scipy.ndimage filters over the breast's bounding box (seconds on a 3328 x 2560 image). Each one turns
its filter response into a robust signal-to-noise ratio ``r`` (the response divided by a noise level
estimated inside the breast as 1.4826 x the median absolute deviation, on a subsampled grid) and maps
it through the same documented monotone function, a Hill curve

    p(r) = r^4 / (r^4 + c^4)  for r > 0,   p = 0 otherwise,

so that ``p = 0.5`` at ``r = c``. The FROC only ranks pixels and does not depend on ``c``; ``c`` only
sets the operating point that threshold-0.5 metrics see. Breast texture is far from Gaussian noise,
so ``c`` is well above the Rose criterion's 5: ``c = 10`` (DoG) and ``c = 16`` (top-hat) put
``p = 0.5`` at a few to a few tens of false positives on a 1536 x 1152 synthetic breast at 0.07 mm
(measured on ``breast_phantom`` seeds 3 and 4, regular and faint).

* :func:`dog_hessian` - HDoGReg's first stage (Marasinou et al., 2021): scale-normalised
  differences of Gaussians at scales covering blobs of 0.1 to 0.7 mm diameter; a pixel responds at
  a scale where the DoG is positive and its Hessian is negative definite (a bright blob, not an
  edge), and round enough (the ratio of the Hessian's eigenvalues, which rejects bright lines).
* :func:`tophat` - a morphological white top-hat of size 1 mm after a light pre-smoothing: the
  image minus its opening, so bright structures narrower than 1 mm stand out from the tissue.
  By default the opening is the supremum of openings by 1 mm line segments in 8 orientations (whose
  union is the 1 mm disk): like the disk top-hat it keeps structures smaller than 1 mm, but it also
  removes long thin bright lines (vessels, ducts, trabeculae) that fit one of the segments, which a
  disk top-hat keeps. ``lines=0`` gives the plain disk top-hat (an octagon, from a square and a
  diamond, the usual fast approximation of a digital disk).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

DOG_HILL_C = 10.0
TOPHAT_HILL_C = 16.0
_MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation
_NOISE_STRIDE = 4    # the noise estimate reads every 4th pixel in each direction


def _prepare(image, spacing_mm, breast, name: str) -> tuple[np.ndarray, float, np.ndarray | None]:
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"{name}: image must be [H, W], got shape {img.shape}")
    if img.dtype.kind not in "uif":
        raise ValueError(f"{name}: image must be numeric, got dtype {img.dtype}")
    img = img.astype(np.float32, copy=False)
    if not np.isfinite(img).all():
        raise ValueError(f"{name}: image holds NaN or inf")
    try:
        spacing = float(spacing_mm)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: spacing_mm must be a number of mm, got {spacing_mm!r}") from None
    if not spacing > 0 or not math.isfinite(spacing):
        raise ValueError(f"{name}: spacing_mm must be > 0, got {spacing_mm!r}")
    b = None
    if breast is not None:
        if hasattr(breast, "detach"):
            breast = breast.detach().cpu().numpy()
        b = np.asarray(breast).astype(bool)
        if b.shape != img.shape:
            raise ValueError(f"{name}: breast must have the image's shape {img.shape}, got {b.shape}")
    return img, spacing, b


def robust_noise(values: np.ndarray, region: np.ndarray | None = None) -> tuple[float, float]:
    """(median, 1.4826 * MAD) of ``values`` within ``region`` (all pixels when None or empty),
    read on a grid subsampled by 4 in each direction. The MAD floor is a tiny positive number."""
    v = values[::_NOISE_STRIDE, ::_NOISE_STRIDE]
    if region is not None:
        r = region[::_NOISE_STRIDE, ::_NOISE_STRIDE]
        if r.any():
            v = v[r]
    v = np.asarray(v, dtype=np.float64).ravel()
    if v.size == 0:
        return 0.0, 1e-12
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * _MAD_SCALE
    return med, max(mad, 1e-12)


def hill(r: np.ndarray, c: float) -> np.ndarray:
    """The monotone map from a signal-to-noise ratio to [0, 1]: r^4 / (r^4 + c^4) for r > 0, else 0."""
    r = np.asarray(r, dtype=np.float32)
    pos = r > 0
    q = np.divide(np.float32(c), r, out=np.ones_like(r), where=pos)  # c / r, written as 1 / (1 + (c/r)^4) to never overflow
    out = np.float32(1.0) / (np.float32(1.0) + q * q * q * q)
    out[~pos] = 0.0
    return out


def _hessian(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Central second differences of ``d`` (edges replicated): (d_yy, d_xx, d_yx)."""
    p = np.pad(d, 1, mode="edge")
    c = p[1:-1, 1:-1]
    dyy = p[2:, 1:-1] - 2 * c + p[:-2, 1:-1]
    dxx = p[1:-1, 2:] - 2 * c + p[1:-1, :-2]
    dyx = (p[2:, 2:] - p[2:, :-2] - p[:-2, 2:] + p[:-2, :-2]) * np.float32(0.25)
    return dyy, dxx, dyx


def dog_scales(spacing_mm: float, diameters_mm=(0.1, 0.7), n_scales: int = 5) -> np.ndarray:
    """The DoG scales in px: a blob of radius rho answers most at sigma = rho / sqrt(2), so the
    diameters d_min..d_max map to sigma = d / (2 sqrt 2) mm, spaced geometrically."""
    lo, hi = (d / (2.0 * math.sqrt(2.0)) / spacing_mm for d in diameters_mm)
    return np.geomspace(lo, hi, n_scales)


def dog_hessian_response(image, spacing_mm: float, breast=None, *, diameters_mm=(0.1, 0.7), n_scales: int = 5,
                         k: float = 1.6, min_roundness: float = 0.25) -> np.ndarray:
    """The blob signal-to-noise ratio behind :func:`dog_hessian` (float32 [H, W], >= 0)."""
    img, spacing, b = _prepare(image, spacing_mm, breast, "dog_hessian")
    if not (isinstance(n_scales, int) and n_scales >= 1):
        raise ValueError(f"dog_hessian: n_scales must be an integer >= 1, got {n_scales!r}")
    if not k > 1:
        raise ValueError(f"dog_hessian: k must be > 1, got {k!r}")
    if not 0.0 <= min_roundness <= 1.0:
        raise ValueError(f"dog_hessian: min_roundness must be in [0, 1], got {min_roundness!r}")
    lo, hi = diameters_mm
    if not 0 < lo <= hi:
        raise ValueError(f"dog_hessian: diameters_mm must be (min, max) with 0 < min <= max, got {diameters_mm!r}")
    full_shape = img.shape
    box = _breast_box(b, int(math.ceil(4 * k * dog_scales(spacing, diameters_mm, n_scales)[-1])))
    if box is not None:  # filters run on the breast's bounding box (plus the kernels' reach) only
        img, b = img[box], b[box]
    best = np.zeros(img.shape, np.float32)
    norm = np.float32(1.0 / (k - 1.0))  # G(s) - G(k s) ~ -(k - 1) s^2 lap G: scale-normalised
    for s in dog_scales(spacing, diameters_mm, n_scales):
        d = ndimage.gaussian_filter(img, float(s))
        d -= ndimage.gaussian_filter(img, float(k * s))
        d *= norm
        # Hessian at the blob's own scale (D smoothed by sigma, then central differences): at the finest
        # scales the raw second differences are noise, and a bright line's flat direction would pass
        dyy, dxx, dyx = _hessian(ndimage.gaussian_filter(d, float(s)))
        half_tr = (dyy + dxx) * np.float32(0.5)
        disc = np.sqrt(((dyy - dxx) * np.float32(0.5)) ** 2 + dyx * dyx)
        l_hi, l_lo = half_tr + disc, half_tr - disc  # l_lo <= l_hi; negative definite <=> l_hi < 0
        ok = (l_hi < 0) & (l_hi <= np.float32(min_roundness) * l_lo)  # |l_hi| >= roundness * |l_lo|
        _, noise = robust_noise(d, b)
        np.maximum(best, np.where(ok, d, np.float32(0)) / np.float32(noise), out=best)
    if b is not None:
        best[~b] = 0.0
    if box is not None:
        out = np.zeros(full_shape, np.float32)
        out[box] = best
        best = out
    return best


def _breast_box(b: np.ndarray | None, margin: int) -> tuple[slice, slice] | None:
    """The breast's bounding box grown by ``margin`` px (None: no mask, an empty one, or the whole image)."""
    if b is None or not b.any():
        return None
    ys, xs = np.nonzero(b.any(axis=1))[0], np.nonzero(b.any(axis=0))[0]
    y0, y1 = max(0, ys[0] - margin), min(b.shape[0], ys[-1] + margin + 1)
    x0, x1 = max(0, xs[0] - margin), min(b.shape[1], xs[-1] + margin + 1)
    if (y0, x0, y1, x1) == (0, 0) + b.shape:
        return None
    return slice(y0, y1), slice(x0, x1)


def dog_hessian(image, spacing_mm: float, breast=None, *, diameters_mm=(0.1, 0.7), n_scales: int = 5, k: float = 1.6,
                min_roundness: float = 0.25, c: float = DOG_HILL_C) -> np.ndarray:
    """Multi-scale difference-of-Gaussians + Hessian blob map (HDoGReg's first stage).

    image: [H, W] in [0, 1] (bright = attenuating); spacing_mm: its pixel size; breast: optional
    bool [H, W] (noise is estimated inside it and the map is 0 outside it).
    For each of ``n_scales`` scales sigma (px, geometric over blob diameters ``diameters_mm``) the
    scale-normalised DoG D = (G_sigma - G_{k sigma}) * I / (k - 1) is kept where D > 0, its Hessian
    at that scale (central differences of G_sigma * D) is negative definite and its eigenvalues' ratio |l_small| / |l_large| is at
    least ``min_roundness`` (a line has ratio ~0); D is divided by its robust noise level at that
    scale and the maximum over scales is mapped to [0, 1] by the Hill curve of the module docstring.
    Returns float32 [H, W] in [0, 1].
    """
    r = dog_hessian_response(image, spacing_mm, breast, diameters_mm=diameters_mm, n_scales=n_scales, k=k,
                             min_roundness=min_roundness)
    return hill(r, c)


def _octagon_opening(img: np.ndarray, radius: int) -> np.ndarray:
    # square (side 2a + 1) dilated by a diamond (radius b), a + b = radius, b ~ 0.586 radius:
    # vertices on the axes at radius and on the diagonals at ~radius, i.e. a digital disk.
    b = int(round(0.586 * radius))
    a = radius - b
    cross = ndimage.generate_binary_structure(2, 1)
    e = ndimage.minimum_filter(img, size=2 * a + 1) if a > 0 else img.copy()
    for _ in range(b):
        e = ndimage.minimum_filter(e, footprint=cross)
    for _ in range(b):
        e = ndimage.maximum_filter(e, footprint=cross)
    return ndimage.maximum_filter(e, size=2 * a + 1) if a > 0 else e


def line_footprint(length: int, angle: float) -> np.ndarray:
    """A thin (8-connected) digital segment of Euclidean length ``length`` px (odd) through the centre
    of a ``length`` x ``length`` footprint, at ``angle`` radians from the x axis (rows grow downwards):
    one pixel per step along its major axis."""
    r = length // 2
    c, s = math.cos(angle), -math.sin(angle)  # (dx, dy) per unit length, y pointing down
    fp = np.zeros((2 * r + 1, 2 * r + 1), dtype=bool)
    if abs(c) >= abs(s):
        n = int(round(r * abs(c)))
        u = np.arange(-n, n + 1)
        fp[r + np.rint(u * s / c).astype(int), r + u] = True
    else:
        n = int(round(r * abs(s)))
        u = np.arange(-n, n + 1)
        fp[r + u, r + np.rint(u * c / s).astype(int)] = True
    return fp


def _line_opening(img: np.ndarray, length: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    if abs(s) < 1e-9:  # separable 1-D filters for the axis-aligned segments
        size = (1, length)
    elif abs(c) < 1e-9:
        size = (length, 1)
    else:
        fp = line_footprint(length, angle)
        return ndimage.maximum_filter(ndimage.minimum_filter(img, footprint=fp), footprint=fp)
    return ndimage.maximum_filter(ndimage.minimum_filter(img, size=size), size=size)


def tophat_response(image, spacing_mm: float, breast=None, *, size_mm: float = 1.0, lines: int = 8,
                    smooth_mm: float = 0.035) -> np.ndarray:
    """The robust signal-to-noise ratio behind :func:`tophat` (float32 [H, W], >= 0)."""
    img, spacing, b = _prepare(image, spacing_mm, breast, "tophat")
    if not size_mm > 0:
        raise ValueError(f"tophat: size_mm must be > 0, got {size_mm!r}")
    if not (isinstance(lines, int) and lines >= 0):
        raise ValueError(f"tophat: lines must be an integer >= 0 (0: disk), got {lines!r}")
    if not smooth_mm >= 0:
        raise ValueError(f"tophat: smooth_mm must be >= 0, got {smooth_mm!r}")
    x = ndimage.gaussian_filter(img, smooth_mm / spacing) if smooth_mm > 0 else img
    radius = max(1, int(round(size_mm / spacing / 2)))
    # the opening only needs the breast's bounding box plus one structuring element of margin
    box = _breast_box(b, 2 * radius)
    work = x if box is None else x[box]
    if lines == 0:
        opened = _octagon_opening(work, radius)
    else:
        opened = None
        for i in range(lines):
            o = _line_opening(work, 2 * radius + 1, math.pi * i / lines)
            opened = o if opened is None else np.maximum(opened, o, out=opened)
    th = work - opened
    if box is not None:
        full = np.zeros(img.shape, np.float32)
        full[box] = th
        th = full
    # the top-hat is exactly 0 on most pixels (its MAD is 0): the noise is read off the fine-scale
    # residual of the smoothed image instead, which the few calcifications barely move
    _, noise = robust_noise(x - ndimage.gaussian_filter(x, 1.0), b)
    r = th / np.float32(noise)
    if b is not None:
        r[~b] = 0.0
    return r.astype(np.float32, copy=False)


def tophat(image, spacing_mm: float, breast=None, *, size_mm: float = 1.0, lines: int = 8, smooth_mm: float = 0.035,
           c: float = TOPHAT_HILL_C) -> np.ndarray:
    """Morphological white top-hat map.

    image: [H, W] in [0, 1]; spacing_mm: its pixel size; breast: optional bool [H, W] (noise is
    estimated inside it, the map is 0 outside it). The image is smoothed by a Gaussian of
    ``smooth_mm`` (the smallest calcification's scale, so single-pixel noise does not respond),
    opened by segments of ``size_mm`` in ``lines`` orientations (0: by a ``size_mm`` disk), the
    top-hat (image - opening) turned into a robust z-score (median and MAD within the breast) and
    mapped to [0, 1] by the Hill curve of the module docstring. Returns float32 [H, W] in [0, 1].
    """
    return hill(tophat_response(image, spacing_mm, breast, size_mm=size_mm, lines=lines, smooth_mm=smooth_mm), c)


BASELINES = {"dog": dog_hessian, "tophat": tophat}
