"""Measure a site from its own MC-free mammograms: noise against signal, system blur, bit depth and
presentation, and the injection parameters that follow from them.

Injected calcifications must look like the site's would. A calcification reaches the image through
the system's blur, while dust on a film scanner or a dead detector pixel does not: a segmentor
trained with calcifications blurred by the site's own point spread function learns that difference.
Everything here works on canonical images at the model spacing (what the segmentor and the injector
see), inside the breast.

* **Noise** (:func:`noise_model`): the high-pass residual ``r = y - G_1.5 * y`` in 16 px blocks; in
  each bin of block mean the 20th percentile of the block variances (the flattest blocks: the
  residual of structured tissue adds to the noise, so low quantiles estimate the noise alone); a
  least-squares line ``var = a + b * mean`` (electronic plus quantum noise).
* **Blur** (:func:`psf_from_nps`): the noise power spectrum of the flattest 64 px blocks (plane
  removed, Hann window), radially averaged, fitted for ``f`` in [0.06, 0.5] cycles/px by
  ``A f^-3 + W exp(-4 pi^2 sigma^2 f^2) + E`` (anatomy, blurred quantum noise, unblurred white
  noise; non-negative least squares for ``A, W, E`` at each ``sigma`` of a grid, the ``sigma`` of
  least squared log error). For a quantum-limited detector the noise passes through the same
  blur as the signal, so ``sigma`` is the Gaussian PSF of the system at the model spacing
  (MTF at Nyquist ``exp(-pi^2 sigma^2 / 2)``).
* **Bit depth and presentation**: BitsStored, PhotometricInterpretation and PresentationIntentType
  from DICOM headers, the sample type of other files.

:func:`inject_ranges` turns the estimate into the injector's per-batch ranges (``psf_sigma`` within
+-15 % of the measured sigma; the rest as training's defaults).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage
from scipy.optimize import nnls

NOISE_BLOCK = 16
NPS_BLOCK = 64
SIGMA_GRID = np.round(np.arange(0.20, 2.001, 0.02), 3)
PSF_LIMITS = (0.3, 1.6)  # px: the injector's valid, physically sensible band at 0.07 mm


@dataclass
class SiteEstimate:
    """What was measured (see the module doc); ``per_image`` holds each image's own figures."""

    images: int
    noise_a: float
    noise_b: float
    noise_std_at_median: float
    psf_sigma_px: float
    mtf_nyquist: float
    psf_spread_px: float
    presentation: dict
    per_image: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _blocks(a: np.ndarray, ok: np.ndarray, b: int):
    """Non-overlapping b x b blocks of ``a`` lying wholly where ``ok``: (blocks [N, b, b], means)."""
    H, W = a.shape
    h, w = H // b, W // b
    if h == 0 or w == 0:
        return np.zeros((0, b, b), a.dtype)
    A = a[:h * b, :w * b].reshape(h, b, w, b).transpose(0, 2, 1, 3)
    K = ok[:h * b, :w * b].reshape(h, b, w, b).all(axis=(1, 3))
    return A[K]


def noise_model(image: np.ndarray, breast: np.ndarray) -> dict:
    """``var = a + b * mean`` of the high-pass residual over 16 px blocks inside ``breast``."""
    img = np.asarray(image, np.float64)
    r = img - ndimage.gaussian_filter(img, 1.5)
    inside = ndimage.binary_erosion(breast, iterations=4) if breast.any() else breast
    rb = _blocks(r, inside, NOISE_BLOCK)
    mb = _blocks(img, inside, NOISE_BLOCK)
    if len(rb) < 8:
        raise ValueError(f"too little breast to measure noise ({len(rb)} blocks of {NOISE_BLOCK} px)")
    var = rb.reshape(len(rb), -1).var(axis=1)
    mean = mb.reshape(len(mb), -1).mean(axis=1)
    edges = np.quantile(mean, np.linspace(0, 1, 11))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (mean >= lo) & (mean <= hi)
        if sel.sum() >= 4:
            xs.append(float(np.median(mean[sel])))
            ys.append(float(np.quantile(var[sel], 0.2)))
    x, y = np.asarray(xs), np.asarray(ys)
    if len(x) >= 2 and np.ptp(x) > 0:
        b, a = np.polyfit(x, y, 1)
    else:
        a, b = float(y.mean()), 0.0
    med = float(np.median(mean))
    return {"a": float(a), "b": float(b), "std_at_median": float(np.sqrt(max(a + b * med, 0.0))),
            "median_level": med, "bins": [[round(u, 4), float(v)] for u, v in zip(xs, ys)]}


def nps(image: np.ndarray, breast: np.ndarray, block: int = NPS_BLOCK, keep: float = 0.5):
    """Radially averaged noise power spectrum of the flattest ``keep`` share of ``block`` px blocks
    inside ``breast``: (frequencies in cycles/px, power)."""
    img = np.asarray(image, np.float64)
    inside = ndimage.binary_erosion(breast, iterations=4) if breast.any() else breast
    bl = _blocks(img, inside, block)
    if len(bl) < 2:
        raise ValueError(f"too little breast for a noise power spectrum ({len(bl)} blocks of {block} px)")
    yy, xx = np.mgrid[:block, :block] / (block - 1) - 0.5
    design = np.stack([np.ones(block * block), yy.ravel(), xx.ravel()], 1)
    flat = bl.reshape(len(bl), -1)
    coef, *_ = np.linalg.lstsq(design, flat.T, rcond=None)
    res = (flat - (design @ coef).T).reshape(bl.shape)
    rough = ndimage.gaussian_filter(res, (0, 4, 4)).reshape(len(bl), -1).var(axis=1)  # low-f structure
    order = np.argsort(rough)[:max(2, int(len(bl) * keep))]
    win = np.outer(np.hanning(block), np.hanning(block))
    spec = np.mean(np.abs(np.fft.fft2(res[order] * win)) ** 2, axis=0) / (win ** 2).sum()
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(block), np.fft.fftfreq(block), indexing="ij"))
    bins = np.arange(0, 0.5 + 1e-9, 1.0 / block)
    idx = np.digitize(f.ravel(), bins) - 1
    ok = (idx >= 1) & (idx < len(bins) - 1)
    power = np.bincount(idx[ok], spec.ravel()[ok], minlength=len(bins)) / np.maximum(np.bincount(idx[ok], minlength=len(bins)), 1)
    centres = (bins[:-1] + 0.5 / block)
    sel = np.arange(1, len(bins) - 1)
    return centres[sel], power[sel]


def psf_from_nps(freqs: np.ndarray, power: np.ndarray, f_min: float = 0.06) -> tuple[float, float]:
    """Gaussian PSF sigma (px) from a noise power spectrum (module doc): (sigma, relative rms log error)."""
    sel = (freqs >= f_min) & (power > 0)
    f, p = freqs[sel], power[sel]
    if len(f) < 4:
        raise ValueError("the noise power spectrum has too few frequencies to fit")
    best = (np.inf, float(SIGMA_GRID[0]))
    w = 1.0 / p  # relative error: every frequency counts alike in the log domain
    for s in SIGMA_GRID:
        basis = np.stack([f ** -3.0, np.exp(-4 * np.pi ** 2 * s ** 2 * f ** 2), np.ones_like(f)], 1)
        coef, _ = nnls(basis * w[:, None], p * w)
        fit = basis @ coef
        if coef[1] <= 0 or np.any(fit <= 0):
            continue
        err = float(np.mean((np.log(fit) - np.log(p)) ** 2))
        if err < best[0]:
            best = (err, float(s))
    if not np.isfinite(best[0]):
        raise ValueError("no blurred noise component fits the noise power spectrum")
    return best[1], float(np.sqrt(best[0]))


def presentation_of(path: str) -> dict:
    """Bit depth and presentation of a file, from its header (nothing decoded)."""
    p = str(path)
    low = p.lower()
    if low.endswith(".npy"):
        a = np.load(p, mmap_mode="r", allow_pickle=False)
        return {"format": "npy", "dtype": str(a.dtype)}
    if low.endswith((".png", ".tif", ".tiff")):
        from PIL import Image

        with Image.open(p) as im:
            return {"format": im.format, "mode": im.mode}
    try:
        import pydicom

        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - a header we cannot read is reported, not fatal
        return {"format": "unknown", "error": str(exc)[:200]}
    return {"format": "dicom", "bits_stored": int(getattr(ds, "BitsStored", 0) or 0),
            "photometric": str(getattr(ds, "PhotometricInterpretation", "")),
            "presentation_intent": str(getattr(ds, "PresentationIntentType", "")),
            "manufacturer": str(getattr(ds, "Manufacturer", ""))}


def measure_image(image: np.ndarray, breast: np.ndarray) -> dict:
    """One canonical image at model spacing: its noise model and PSF sigma."""
    nm = noise_model(image, breast)
    f, p = nps(image, breast)
    sigma, err = psf_from_nps(f, p)
    return {"noise": nm, "psf_sigma_px": sigma, "nps_fit_rms_log": round(err, 4)}


def combine(per_image: list[dict], presentations: list[dict]) -> SiteEstimate:
    """The site's estimate from its images' figures: medians (robust to one odd view)."""
    if not per_image:
        raise ValueError("no image could be measured")
    sig = np.array([r["psf_sigma_px"] for r in per_image])
    a = float(np.median([r["noise"]["a"] for r in per_image]))
    b = float(np.median([r["noise"]["b"] for r in per_image]))
    med = float(np.median([r["noise"]["median_level"] for r in per_image]))
    s = float(np.median(sig))
    pres: dict = {}
    for d in presentations:
        key = ", ".join(f"{k} {v}" for k, v in sorted(d.items()) if k != "error")
        pres[key] = pres.get(key, 0) + 1
    return SiteEstimate(images=len(per_image), noise_a=a, noise_b=b,
                        noise_std_at_median=float(np.sqrt(max(a + b * med, 0.0))), psf_sigma_px=s,
                        mtf_nyquist=float(np.exp(-np.pi ** 2 * s ** 2 / 2)),
                        psf_spread_px=float(np.ptp(sig)), presentation=pres, per_image=per_image)


DEFAULT_PSF = (0.4, 0.8)


PLAUSIBLE_SIGMA = 1.5  # px at 0.07 mm: MTF at Nyquist 0.004; no mammography system blurs this much


def psf_measured(sigma: float) -> bool:
    """False when the fit ran to the low edge of :data:`SIGMA_GRID` or beyond a plausible system blur
    (:data:`PLAUSIBLE_SIGMA`): a spectrum without blurred quantum noise (noise-free or procedural images,
    whose 1/f^beta fall-off a wide Gaussian imitates) measures no PSF."""
    return float(SIGMA_GRID[0]) < sigma <= PLAUSIBLE_SIGMA


def inject_ranges(est: SiteEstimate | dict, spread: float = 0.15) -> dict:
    """Per-batch injection ranges for the site: the measured PSF sigma +-``spread`` (clipped to
    :data:`PSF_LIMITS`), or training's default :data:`DEFAULT_PSF` when the PSF could not be
    measured (:func:`psf_measured`); other parameters keep training's defaults."""
    s = est.psf_sigma_px if isinstance(est, SiteEstimate) else float(est["psf_sigma_px"])
    if not psf_measured(s):
        return {"psf_sigma": DEFAULT_PSF}
    lo, hi = PSF_LIMITS
    s = min(max(s, lo), hi)
    return {"psf_sigma": (round(max(lo, s * (1 - spread)), 3), round(min(hi, s * (1 + spread)), 3))}
