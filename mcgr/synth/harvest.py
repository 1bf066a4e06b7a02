"""Real MC-free backgrounds: square patches of breast tissue cut from negative mammograms.

The paper's source of backgrounds (docs/design.md, method M2): each mammogram in a folder is read into the
canonical domain, resampled to the model spacing, masked to the breast (labels, markers, air and
film borders excluded), and cut into windows that lie entirely inside the breast. The folder is
trusted to hold negatives; as a second guard a window holding a bright spot that stands out of the
tissue like a calcification (a white top-hat over ~0.5 mm more than ``spot_sigmas`` robust sigmas
above the image's top-hat level, on two or more pixels) is rejected. The result feeds
``mcgr.synth.SynthPairs(backgrounds=...)``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from mcgr import MODEL_SPACING_MM
from mcgr._validate import check_range
from mcgr.io import MammogramReadError, read_mammogram, to_model_spacing
from mcgr.io.search_region import search_region

SUFFIXES = (".dcm", ".dicom", ".png", ".tif", ".tiff", ".npy")
TOPHAT_MM = 0.5


def _window_sums(a: np.ndarray, p: int) -> np.ndarray:
    """Sum of ``a`` over every p x p window, indexed by the window's top-left corner."""
    c = np.pad(a.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return c[p:, p:] - c[:-p, p:] - c[p:, :-p] + c[:-p, :-p]


def spot_map(image: np.ndarray, breast: np.ndarray, spacing_mm: float, spot_sigmas: float) -> np.ndarray:
    """Pixels of calcification-like bright spots: white top-hat above the breast's robust level,
    kept only where two or more such pixels touch (single-pixel film grain is not a spot)."""
    size = max(3, int(round(TOPHAT_MM / spacing_mm)) | 1)
    tophat = image - ndimage.grey_opening(image, size=(size, size))
    vals = tophat[breast]
    if vals.size == 0:
        return np.zeros_like(breast)
    med = float(np.median(vals))
    sigma = 1.4826 * float(np.median(np.abs(vals - med))) + 1e-6
    hot = (tophat > med + spot_sigmas * sigma) & breast
    labels, n = ndimage.label(hot, structure=np.ones((3, 3), bool))
    if n == 0:
        return hot
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return sizes[labels] >= 2


def harvest_backgrounds(folder, patch_size: int = 256, *, per_image: int = 64, max_patches: int | None = None,
                        stride: int | None = None, model_mm: float = MODEL_SPACING_MM, spacing: float | None = None,
                        seed: int = 0, reject_spots: bool = True, spot_sigmas: float = 12.0,
                        margin_mm: float = 1.0, stats: dict | None = None) -> torch.Tensor:
    """MC-free background patches from the negative mammograms in ``folder``.

    ``folder``: a directory (files ending in .dcm/.dicom/.png/.tif/.tiff/.npy, sorted by name, not
    recursive) or a list of files. ``patch_size``: side P of the patches in px at ``model_mm``
    (0.07 mm). ``per_image``: at most this many patches per mammogram, drawn at random (``seed``)
    among the windows on a ``stride`` grid (default P // 2) that lie wholly inside the breast, at
    least ``margin_mm`` from its outline, and hold no calcification-like spot (``reject_spots``). ``max_patches``: cap on the total.
    ``spacing``: pixel spacing of the files in mm (needed for PNG/TIFF/NPY; wins over DICOM tags).
    Files that cannot be read are skipped with a warning naming them. ``stats``: a dict that receives
    ``candidates`` (windows on the grid inside the breast) and ``rejected_spots`` (those of them the
    spot guard refused), summed over the files.

    Returns a float32 CPU tensor [M, P, P] in [0, 1] (canonical domain: bright = attenuating,
    chest wall on the left), ready for ``SynthPairs(backgrounds=...)``. Raises ValueError if no
    window qualifies.
    """
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 8:
        raise ValueError(f"patch_size must be an integer >= 8, got {patch_size!r}")
    if isinstance(per_image, bool) or not isinstance(per_image, int) or per_image < 1:
        raise ValueError(f"per_image must be a positive integer, got {per_image!r}")
    if max_patches is not None and (isinstance(max_patches, bool) or not isinstance(max_patches, int) or max_patches < 1):
        raise ValueError(f"max_patches must be None or a positive integer, got {max_patches!r}")
    stride = patch_size // 2 if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    model_mm = check_range("model_mm", model_mm, 0.0, lo_open=True)
    spot_sigmas = check_range("spot_sigmas", spot_sigmas, 0.0, lo_open=True)
    margin_mm = check_range("margin_mm", margin_mm, 0.0)
    files = _list_files(folder)
    rng = np.random.default_rng(seed)
    p = patch_size
    patches: list[np.ndarray] = []
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # missing spacing on film is expected; spacing= overrides
                m = read_mammogram(f, spacing=spacing)
        except MammogramReadError as exc:
            warnings.warn(f"harvest_backgrounds: skipping {exc}", stacklevel=2)
            continue
        img, _ = to_model_spacing(m, model_mm)
        if min(img.shape) < p:
            continue
        # the breast as inference sees it (mcgr.io.search_region): the whole image when it holds no air
        breast = search_region(img, model_mm, view=m.view, skin_mm=0.0, border_mm=0.0, scan_lines=False,
                               pectoral=False).breast
        # The breast outline is accurate to ~0.5 mm: keep windows a margin away from air and skin.
        k = int(np.ceil(margin_mm / model_mm))
        air = np.pad(~breast, k, mode="constant", constant_values=False)
        ok = _window_sums(air, p + 2 * k) == 0
        n_inside = int(ok[::stride, ::stride].sum())
        if reject_spots:
            ok &= _window_sums(spot_map(img, breast, model_mm, spot_sigmas), p) == 0
        if stats is not None:
            stats["candidates"] = stats.get("candidates", 0) + n_inside
            stats["rejected_spots"] = stats.get("rejected_spots", 0) + n_inside - int(ok[::stride, ::stride].sum())
        ys, xs = np.nonzero(ok[::stride, ::stride])
        if ys.size == 0:
            continue
        pick = rng.permutation(ys.size)[:per_image]
        for i in np.sort(pick):
            y, x = ys[i] * stride, xs[i] * stride
            patches.append(img[y:y + p, x:x + p].copy())
        if max_patches is not None and len(patches) >= max_patches:
            patches = patches[:max_patches]
            break
    if not patches:
        raise ValueError(f"no {p} x {p} px window lies wholly inside a breast without bright spots in {len(files)} "
                         f"file(s) of {folder!r}")
    return torch.from_numpy(np.clip(np.stack(patches), 0.0, 1.0).astype(np.float32))


def _list_files(folder) -> list[str]:
    if isinstance(folder, (list, tuple)):
        files = [os.fspath(f) for f in folder]
    else:
        d = Path(folder)
        if not d.is_dir():
            raise ValueError(f"folder must be a directory or a list of files, got {folder!r}")
        files = sorted(str(f) for f in d.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
    if not files:
        raise ValueError(f"folder {folder!r} holds no mammograms ({', '.join(SUFFIXES)})")
    return files
