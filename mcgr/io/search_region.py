"""Where calcifications are searched: one decision, made here, for inference, harvesting, mining and
validation alike.

:func:`search_region` takes a canonical image (chest wall on the left, bright = attenuating, in
[0, 1]) and returns a :class:`SearchRegion`:

* ``breast``: the breast (:func:`mcgr.io.breast_mask`), or, when the image holds (almost) no air (a
  crop inside the breast, a spot-magnification view), all of it but the flat dark patches at its
  border that air there is (``_air_patches``): air is dark AND flat, so the image has air
  only when the darker class of Otsu's threshold (on a 0.5 mm grid) has under ``AIR_TEXTURE`` times
  the brighter class's local texture (5 x 5 std). On the sfm-benign-0 views and 1024 px crops of
  them: 0.001 to 0.002 for the whole views, 0.000 to 0.080 for crops holding 30 % to 70 % air, 0.231
  for one with 19 % air, 0.435 to 1.0 for crops lying in the breast (14 % or less air), where Otsu's
  split is fatty against dense tissue and the breast mask kept only 28 % to 83 % of their breast;
* ``keep``: where calcifications are reported, the breast less
  - a ``skin_mm`` band inside the skin line: the segmentor was trained on patches inside the breast
    and fires along the tissue/air edge, and calcifications within ~1.5 mm of the skin are dermal
    and benign (the image border is not a skin line);
  - the outermost ``border_mm`` of the image (a scanned film's bright edge strip: on the four
    sfm-benign-0 views 1 mm removed 40 of the 63 detections within 2 mm of the border,
    experiments/border_rules.py), on images with air only (a crop has no film edge);
  - scanner lines (:func:`mcgr.io.artefacts.scan_lines`);
  - saturated markers: components of pixels at exactly 1 of at least ``MARKER_MM2`` mm^2 (what the
    reader makes of burnt-in markers and text at full white), grown by ``marker_margin_mm``;
  - the pectoral muscle (:func:`mcgr.io.pectoral.find_pectoral`) grown by ``pectoral_margin_mm``,
    looked for only where the view can hold one: a view known as CC (CC, XCCL, XCCM, FB) has none, a
    known MLO / ML / LM / LMO / SIO / AT view is searched for it, and only an unknown view lets the
    image decide (which it does with the same finder and threshold), on images with air only: the
    finder follows an edge from the top of a full view to its chest wall, which a crop has not got
    (on a crop of a regular phantom it took fatty tissue for a muscle).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mcgr._validate import check_range

NO_PECTORAL_VIEWS = ("CC", "XCCL", "XCCM", "FB")
PECTORAL_VIEWS = ("MLO", "ML", "LM", "LMO", "SIO", "AT")
AIR_TEXTURE = 0.3
MARKER_MM2 = 0.5


@dataclass
class SearchRegion:
    """breast / keep: bool [H, W]; has_air: whether the image holds air (else ``breast`` is all of it);
    pectoral: {"found", "contrast", "looked", "boundary": [[row, col], ...] px} or None when not looked
    for; excluded: pixels of ``breast`` each rule removed from ``keep`` (skin, border, scan_lines,
    markers, pectoral), counted in that order."""

    breast: np.ndarray
    keep: np.ndarray
    has_air: bool
    pectoral: dict | None = None
    excluded: dict = field(default_factory=dict)

    @property
    def searched_fraction(self) -> float:
        """Share of the breast that is searched (``keep`` over ``breast``)."""
        n = int(self.breast.sum())
        return float(self.keep.sum()) / n if n else 0.0


def deeper_than(mask: np.ndarray, r: float, block: int = 64) -> np.ndarray:
    """``mask`` pixels whose Euclidean distance to the nearest pixel outside ``mask`` exceeds ``r``
    px; the image border is not an outside (``edt(pad(mask, edge)) > r``, exactly).

    A full-field distance transform costs ~1.5 s on 3328 x 2560 px; only pixels within ``r`` of the
    outside can be dropped, so the transform runs on the ``block`` px tiles that have an outside
    pixel within ``r`` (each with an ``r`` px halo, which holds every outside pixel that can be
    nearer than ``r``) and every other tile is kept or dropped whole.
    """
    m = np.asarray(mask, dtype=bool)
    H, W = m.shape
    out = m.copy()
    if r <= 0 or not m.any():
        return out
    h = int(np.ceil(r)) + 1
    by, bx = -(-H // block), -(-W // block)
    pad = np.zeros((by * block, bx * block), dtype=bool)
    pad[:H, :W] = ~m
    has_out = pad.reshape(by, block, bx, block).any(axis=(1, 3))
    pad[:H, :W] = m
    has_in = pad.reshape(by, block, bx, block).any(axis=(1, 3))
    nb = -(-h // block)  # tiles within the halo: a tile needs the transform if any of them has an outside pixel
    near = ndimage.maximum_filter(has_out, size=2 * nb + 1, mode="constant", cval=False)
    for iy, ix in zip(*np.nonzero(has_in & near)):
        y0, x0 = int(iy) * block, int(ix) * block
        y1, x1 = min(y0 + block, H), min(x0 + block, W)
        a0, b0, a1, b1 = max(0, y0 - h), max(0, x0 - h), min(H, y1 + h), min(W, x1 + h)
        win = np.pad(m[a0:a1, b0:b1], 1, mode="edge")
        # beyond the image edge the window replicates it (the border is not an outside); a window
        # edge inside the image continues the image, which the edge padding keeps from reading as
        # outside too (every outside pixel nearer than r lies inside the window)
        d = ndimage.distance_transform_edt(win)[1:-1, 1:-1]
        out[y0:y1, x0:x1] = d[y0 - a0:y1 - a0, x0 - b0:x1 - b0] > r
    return out


def _texture_classes(image: np.ndarray, spacing_mm: float):
    """(block image s, dark class, local 5 x 5 std, brighter class's median std, block factor f) on
    a ~0.5 mm grid, or None when the grid is too small to judge."""
    from mcgr.io.breast_mask import WORK_MM, _block_mean, _otsu

    f = max(1, int(round(WORK_MM / spacing_mm)))
    s = _block_mean(np.asarray(image, dtype=np.float32), f)
    if min(s.shape) < 8:
        return None
    dark = s <= _otsu(s)
    mu = ndimage.uniform_filter(s, 5)
    sd = np.sqrt(np.maximum(ndimage.uniform_filter(s * s, 5) - mu * mu, 0.0))
    tex_bright = float(np.median(sd[~dark])) if (~dark).any() else 0.0
    return s, dark, sd, tex_bright, f


def has_air(image: np.ndarray, spacing_mm: float) -> bool:
    """Whether the canonical ``image`` holds air: the darker class of the breast mask's threshold is
    flat (its median 5 x 5 local std on a ~0.5 mm grid under ``AIR_TEXTURE`` times the brighter
    class's) and covers at least 2 % of the image."""
    tc = _texture_classes(image, spacing_mm)
    if tc is None:
        return True
    s, dark, sd, tex_bright, _ = tc
    if dark.mean() < 0.02 or dark.all():
        return bool(dark.all())
    return float(np.median(sd[dark])) < AIR_TEXTURE * max(tex_bright, 1e-9)


def _air_patches(image: np.ndarray, spacing_mm: float) -> np.ndarray:
    """On an image that mostly holds tissue: the air that is there, bool [H, W]: blocks of the dark
    class that are flat (local std under ``AIR_TEXTURE`` times the tissue's), opened, in pieces that
    touch the image border and cover >= 0.5 % of it (air lies outside the breast, at an edge)."""
    h, w = image.shape
    tc = _texture_classes(image, spacing_mm)
    if tc is None:
        return np.zeros((h, w), bool)
    s, dark, sd, tex_bright, f = tc
    flat = ndimage.binary_opening(dark & (sd < AIR_TEXTURE * max(tex_bright, 1e-9)), iterations=1)
    lab, n = ndimage.label(flat)
    if n == 0:
        return np.zeros((h, w), bool)
    area = np.bincount(lab.ravel(), minlength=n + 1)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    ok = np.zeros(n + 1, bool)
    ok[edge] = True
    ok &= area >= 0.005 * lab.size
    ok[0] = False
    small = ok[lab]
    iy = np.minimum(np.arange(h) // f, s.shape[0] - 1)
    ix = np.minimum(np.arange(w) // f, s.shape[1] - 1)
    return small[iy[:, None], ix[None, :]]


def _markers(image: np.ndarray, spacing_mm: float, margin_mm: float) -> np.ndarray:
    top = image >= 1.0
    if not top.any():
        return top
    lab, n = ndimage.label(top, structure=np.ones((3, 3), bool))
    area = np.bincount(lab.ravel(), minlength=n + 1)
    area[0] = 0
    big = area * spacing_mm ** 2 >= MARKER_MM2
    out = big[lab]
    r = margin_mm / spacing_mm
    if out.any() and r > 0:
        out = ndimage.distance_transform_edt(~out) <= r
    return out


def search_region(image, spacing_mm: float, view: str | None = None, *, breast=None, skin_mm: float = 1.5,
                  border_mm: float = 1.0, scan_lines: bool = True, pectoral: bool = True,
                  pectoral_margin_mm: float = 1.0, marker_margin_mm: float = 1.0) -> SearchRegion:
    """The search region of the canonical ``image`` [H, W] (NumPy or CPU torch, in [0, 1]) with pixel
    size ``spacing_mm``; see the module doc. ``view``: the view code the reader knows ("CC", "MLO",
    ...; None or "" when unknown). ``breast``: a breast mask to use instead of computing one (bool
    [H, W]; it counts as holding air). ``skin_mm`` / ``border_mm`` / ``pectoral_margin_mm`` /
    ``marker_margin_mm``: the bands left out (0 keeps them); ``scan_lines`` / ``pectoral``: whether
    those are left out at all."""
    from mcgr.io.breast_mask import breast_mask

    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"image must be a non-empty [H, W] array, got shape {a.shape}")
    a = a.astype(np.float32, copy=False)
    spacing_mm = check_range("spacing_mm", spacing_mm, 0.0, lo_open=True)
    for name, v in (("skin_mm", skin_mm), ("border_mm", border_mm), ("pectoral_margin_mm", pectoral_margin_mm),
                    ("marker_margin_mm", marker_margin_mm)):
        check_range(name, v, 0.0)
    if view is not None and not isinstance(view, str):
        raise TypeError(f"view must be a view code string (CC, MLO, ...) or None, got {type(view).__name__}")
    v = (view or "").strip().upper()
    if breast is not None:
        bm = np.asarray(breast.detach().cpu().numpy() if hasattr(breast, "detach") else breast, dtype=bool)
        if bm.shape != a.shape:
            raise ValueError(f"breast must match the image shape {a.shape}, got {bm.shape}")
        air = True
    else:
        air = has_air(a, spacing_mm)
        # without air, Otsu splits fatty from dense tissue: the breast is all but what air there is
        bm = breast_mask(a, spacing_mm) if air else ~_air_patches(a, spacing_mm)
    excluded = {}
    keep = deeper_than(bm, skin_mm / spacing_mm) if skin_mm > 0 else bm.copy()
    excluded["skin"] = int(bm.sum() - keep.sum())
    e = int(round(border_mm / spacing_mm))
    n = int(keep.sum())
    if air and e > 0 and min(keep.shape) > 4 * e:  # (not on crops too small to have a film edge)
        # scanned films carry a bright edge strip that the segmentor fires along; on the four
        # sfm-benign-0 views 1 mm removed 40 of the 63 detections within 2 mm of the border
        keep[:e], keep[-e:], keep[:, :e], keep[:, -e:] = False, False, False, False
    excluded["border"] = n - int(keep.sum())
    n = int(keep.sum())
    if scan_lines:  # a digitiser's straight bright streaks read as strings of calcifications
        from mcgr.io.artefacts import scan_lines as find_lines

        keep &= ~find_lines(a, bm)
    excluded["scan_lines"] = n - int(keep.sum())
    n = int(keep.sum())
    keep &= ~_markers(a, spacing_mm, marker_margin_mm)
    excluded["markers"] = n - int(keep.sum())
    pec = None
    n = int(keep.sum())
    # the finder looks for the muscle's edge from the top of the image to the chest wall, which a crop
    # or spot view has not got: without air only a view known to hold a muscle is searched for one
    look = v in PECTORAL_VIEWS or (v not in NO_PECTORAL_VIEWS and air)
    if pectoral and look:
        from mcgr.io.pectoral import find_pectoral

        p = find_pectoral(a, bm, spacing_mm)
        pec = {"found": bool(p.found), "contrast": round(float(p.contrast), 2), "looked": "view" if v else "image",
               "boundary": [[float(y), float(x)] for y, x in p.boundary]}
        if p.found:
            pm = p.mask
            r = pectoral_margin_mm / spacing_mm
            if r > 0:
                pm = ndimage.distance_transform_edt(~pm) <= r
            keep &= ~pm
    elif pectoral:
        why = f"a {v} view has no pectoral muscle" if v in NO_PECTORAL_VIEWS else "an image without air (a crop) of an unknown view"
        pec = {"found": False, "contrast": 0.0, "looked": f"no ({why})", "boundary": []}
    excluded["pectoral"] = n - int(keep.sum())
    return SearchRegion(breast=bm, keep=keep, has_air=air, pectoral=pec, excluded=excluded)
