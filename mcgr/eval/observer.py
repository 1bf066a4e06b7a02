"""How well any detector could do: an ideal linear observer for each synthetic calcification.

A detector's sensitivity at a false-positive budget is only meaningful beside what the images
allow. For a synthetic calcification we know its exact noise-free signal ``S`` (``I_clean - B``,
:class:`mcgr.synth.dataset.SynthPairs` with ``with_signal=True``) and the statistics of what it
sits in (the MC-free background plus the image noise, ``I - S``). Treating that clutter as a
locally stationary Gaussian field with noise power spectrum ``W`` (Welch's estimate over the
calcification's own patch), the best linear observer that knows ``S`` exactly is the prewhitening
matched filter ``h = F^-1[conj(F S) / W]``; its detectability is

    d'^2 = sum_f |F S(f)|^2 / W(f)      (W(f) = E |F n(f)|^2 on the same grid).

A detector does not know where the calcification is, so it must also beat the filter's own
response to clutter everywhere else: the observer here searches, i.e. declares a detection at
every local maximum (``2 r + 1`` square) of the normalised filter output ``z`` above a threshold
``t`` chosen so that the clutter fields alone give ``fp_per_field`` maxima per field, and finds the
calcification with probability ``Phi(d' - t)``. This observer knows each calcification's exact
shape and contrast (signal known exactly, location unknown), so it is optimistic: a real detector
must also search over shapes and sizes, which costs more false positives. Within the linear
Gaussian model it bounds what a detector could reach at that budget; the texture is not exactly
Gaussian, so a nonlinear detector is not strictly bound by it. Used by the segmentor's model card
(``python -m mcgr.train.evaluate seg``) beside the segmentor's own figures.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.special import ndtr


def noise_power_spectrum(fields) -> np.ndarray:
    """``W(f) = E |F n(f)|^2`` ``[H, W]`` of zero-mean stationary fields ``[N, H, W]``: the mean
    Hann-windowed periodogram (each field's mean removed, window power normalised to 1)."""
    f = np.asarray(fields, dtype=np.float64)
    if f.ndim != 3 or f.shape[0] < 1 or min(f.shape[1:]) < 4:
        raise ValueError(f"fields must be [N, H, W] with N >= 1 and H, W >= 4, got {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("fields must be finite")
    h, w = f.shape[1:]
    win = np.outer(np.hanning(h), np.hanning(w))
    win /= math.sqrt(float(np.mean(win ** 2)))
    f = f - f.mean(axis=(1, 2), keepdims=True)
    return np.mean(np.abs(np.fft.fft2(f * win)) ** 2, axis=0)


def prewhitened_dprime(signal, nps) -> float:
    """``d' = sqrt(sum_f |F S|^2 / W)`` of a signal ``[H, W]`` in clutter of power spectrum ``nps``
    ``[H, W]`` (same grid, :func:`noise_power_spectrum`; entries > 0)."""
    s = np.asarray(signal, dtype=np.float64)
    w = np.asarray(nps, dtype=np.float64)
    if s.shape != w.shape or s.ndim != 2:
        raise ValueError(f"signal and nps must be [H, W] of one shape, got {s.shape} and {w.shape}")
    if not (w > 0).all():
        raise ValueError("nps must be > 0 everywhere (a field with a zero in its spectrum is not a noise model)")
    return float(math.sqrt(float(np.sum(np.abs(np.fft.fft2(s)) ** 2 / w))))


def search_threshold(z, fp_per_field: float, radius: int = 2, margin: int = 0) -> float:
    """The threshold ``t`` at which normalised clutter-only filter outputs ``z`` ``[N, H, W]`` hold
    ``fp_per_field`` local maxima (``2 radius + 1`` square, ``margin`` px border ignored) above
    ``t`` per field on average: the (round(fp N) + 1)-th highest maximum (+inf when there are fewer)."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 3:
        raise ValueError(f"z must be [N, H, W], got {z.shape}")
    if not fp_per_field > 0:
        raise ValueError(f"fp_per_field must be > 0, got {fp_per_field!r}")
    peak = z == ndimage.maximum_filter(z, size=(1, 2 * radius + 1, 2 * radius + 1), mode="wrap")
    if margin > 0:
        peak[:, :margin] = peak[:, -margin:] = False
        peak[:, :, :margin] = peak[:, :, -margin:] = False
    vals = np.sort(z[peak])[::-1]
    k = int(round(fp_per_field * z.shape[0]))
    return float(vals[k]) if k < vals.size else float("inf")


def gaussian_fields(nps, n: int, seed: int = 0) -> np.ndarray:
    """``n`` real stationary (circular) Gaussian fields ``[n, H, W]`` with power spectrum ``nps``
    ``[H, W]`` (``E |F x|^2 = nps``; ``nps`` symmetric, as a real field's spectrum is): random
    phases from the FFT of white noise, so the result is real."""
    w = np.asarray(nps, dtype=np.float64)
    rng = np.random.default_rng(seed)
    phase = np.fft.fft2(rng.normal(size=(n,) + w.shape))
    phase /= np.maximum(np.abs(phase), 1e-300)
    return np.real(np.fft.ifft2(np.sqrt(w) * phase))


def welch_blocks(field, block: int) -> np.ndarray:
    """The ``block`` x ``block`` windows of ``field`` [H, W] at half-block steps ``[n, block, block]``
    (the last ones flush with the far borders), each with its mean removed."""
    f = np.asarray(field, dtype=np.float64)
    h, w = f.shape
    if not 4 <= block <= min(h, w):
        raise ValueError(f"block must be in [4, min(H, W)] = [4, {min(h, w)}], got {block}")
    step = max(1, block // 2)
    ys = sorted({*range(0, h - block + 1, step), h - block})
    xs = sorted({*range(0, w - block + 1, step), w - block})
    b = np.stack([f[y:y + block, x:x + block] for y in ys for x in xs])
    return b - b.mean(axis=(1, 2), keepdims=True)


def calcification_detectability(signal, clutter, mask, fp_per_field: float = 0.5, block: int = 64,
                                halo: int = 5, radius: int = 2, clutter_model: str = "gaussian",
                                seed: int = 0) -> list[dict]:
    """The searching observer of the module doc, per calcification (8-connected component of
    ``mask``), with the clutter statistics of its own patch.

    signal, clutter, mask: ``[B, H, W]`` (noise-free calcification signal, MC-free background plus
        noise, exact mask). Per patch, the noise power spectrum is Welch's estimate over the
        patch's ``block`` px windows (half-block steps, Hann), each calcification's template is its
        signal within ``halo`` px of its mask in a ``block`` px window centred on it, and the search
        threshold is set on the patch's windows at ``fp_per_field * block^2 / (H W)`` false maxima
        (``2 radius + 1`` square) per window, i.e. ``fp_per_field`` per patch;
    clutter_model: "gaussian" searches as many Gaussian fields with that spectrum as the patch has
        windows (:func:`gaussian_fields`, ``seed``): the model in which the filter is the ideal
        observer; "measured" searches the patch's windows themselves, ``block // 8`` px from their
        edges (their heavy tails, e.g. bright fibres, raise the threshold a linear filter needs).
    Returns per patch a dict of NumPy arrays over its calcifications (``scipy.ndimage.label`` order):
    ``dprime``, ``threshold`` and ``p_detect = Phi(dprime - threshold)``.
    """
    s = np.asarray(signal, dtype=np.float64)
    c = np.asarray(clutter, dtype=np.float64)
    m = np.asarray(mask) > 0.5
    if not (s.shape == c.shape == m.shape) or s.ndim != 3:
        raise ValueError(f"signal, clutter and mask must be [B, H, W] of one shape, got {s.shape}, {c.shape}, {m.shape}")
    if clutter_model not in ("gaussian", "measured"):
        raise ValueError(f"clutter_model must be 'gaussian' or 'measured', got {clutter_model!r}")
    _, h, w = s.shape
    eight = np.ones((3, 3), dtype=bool)
    half = block // 2
    gauss = clutter_model == "gaussian"
    m0 = 0 if gauss else block // 8  # measured windows are not periodic: keep off their wrapped edges
    fp_per_window = fp_per_field * (block - 2 * m0) ** 2 / (h * w)
    out: list[dict] = []
    for i in range(s.shape[0]):
        blocks = welch_blocks(c[i], block)
        nps = noise_power_spectrum(blocks)
        fields = gaussian_fields(nps, blocks.shape[0], seed + i) if gauss else blocks
        fc = np.fft.fft2(fields)
        lab, n = ndimage.label(m[i], structure=eight)
        sp = np.pad(s[i], half)
        lp = np.pad(lab, half)
        centres = ndimage.center_of_mass(np.ones_like(lab), lab, np.arange(1, n + 1)) if n else []
        dp, thr = np.zeros(n), np.zeros(n)
        for k, (cy, cx) in enumerate(centres, 1):
            y0, x0 = int(round(cy)), int(round(cx))  # window [y0 - half, y0 + half) in the padded frame
            own = ndimage.binary_dilation(lp[y0:y0 + block, x0:x0 + block] == k, structure=eight, iterations=halo)
            fs = np.fft.fft2(np.where(own, sp[y0:y0 + block, x0:x0 + block], 0.0))
            resp = np.real(np.fft.ifft2(fc * (np.conj(fs) / nps)))  # clutter-only outputs, circular
            sd = float(resp.std())
            if not sd > 0:
                dp[k - 1], thr[k - 1] = 0.0, float("inf")
                continue
            dp[k - 1] = float(np.sum(np.abs(fs) ** 2 / nps)) / block ** 2 / sd
            thr[k - 1] = search_threshold(resp / sd, fp_per_window, radius, margin=m0)
        out.append({"dprime": dp, "threshold": thr, "p_detect": ndtr(dp - thr)})
    return out
