"""breast_mask on drawn phantoms whose true outline is known: fatty and dense, CC and MLO, with
burnt-in labels, markers, scanner lines and film borders that must stay out."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from mcgr.io import breast_mask

SPACING = 0.25  # mm: a 200 x 120 mm film in 800 x 480 px keeps the test fast


def _label(shape, text, at, size_px):
    img = Image.new("L", (shape[1], shape[0]), 0)
    font = ImageFont.load_default(size=size_px)
    ImageDraw.Draw(img).text(at, text, fill=255, font=font)
    return np.asarray(img) > 0


def phantom(kind: str, rng, view: str = "CC"):
    """``(image, truth, artefacts)``: image in [0, 1], the true breast, and pixels that must be excluded."""
    h, w = 800, 480
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rx = {"fatty": 0.55, "dense": 0.85}[kind] * w
    d = np.sqrt(((y - h / 2) / (0.40 * h)) ** 2 + (x / rx) ** 2)
    truth = d <= 1.0
    air = 0.04 + 0.01 * rng.standard_normal((h, w))
    # Thickness falls off toward the skin: the periphery is faint, fatty tissue faintest.
    edge = np.clip((1.0 - d) / 0.15, 0.0, 1.0)
    if kind == "fatty":
        tissue = 0.07 + 0.10 * edge + 0.03 * rng.standard_normal((h, w))
    else:
        tissue = 0.10 + 0.70 * edge ** 0.5 + 0.05 * rng.standard_normal((h, w))
    img = np.where(truth, tissue + 0.04, air)
    if view == "MLO":
        pect = (x < 0.35 * w * (1 - y / (0.6 * h))) & (y < 0.6 * h)
        truth = truth | pect
        img = np.where(pect, 0.6 + 0.03 * rng.standard_normal((h, w)), img)
    artefacts = np.zeros((h, w), bool)
    lab = _label((h, w), "LCC", (int(0.62 * w), 40), 60)
    marker = (y - 0.15 * h) ** 2 + (x - 0.9 * w) ** 2 <= 6**2
    line = (np.abs(x - (w - 6)) < 1.5)
    border = y < 10
    for a in (lab, marker, line, border):
        artefacts |= a & ~truth
    img = np.where(lab | marker, 0.95, img)
    img = np.where(line, 0.9, img)
    img = np.where(border, 0.85, img)
    return np.clip(img, 0, 1).astype(np.float32), truth & ~border, artefacts


@pytest.mark.parametrize("kind", ["fatty", "dense"])
@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_phantom_outline_and_artefacts(kind, view):
    rng = np.random.default_rng(hash((kind, view)) % 2**32)
    img, truth, artefacts = phantom(kind, rng, view)
    m = breast_mask(img, SPACING)
    assert m.dtype == bool and m.shape == img.shape
    iou = (m & truth).sum() / (m | truth).sum()
    assert iou > 0.95, f"IoU {iou:.3f}"
    leaked = m & artefacts
    assert not leaked.any(), f"{leaked.sum()} artefact pixels in the mask, first at {np.argwhere(leaked)[0]}"
    # The outline is within ~1 mm of the truth everywhere along the skin.
    from scipy import ndimage

    dist_out = ndimage.distance_transform_edt(~truth)
    assert dist_out[m].max(initial=0) * SPACING <= 1.5
    dist_in = ndimage.distance_transform_edt(truth)
    assert dist_in[truth & ~m].max(initial=0) * SPACING <= 1.5


def test_accepts_torch_and_validates():
    import torch

    img, truth, _ = phantom("dense", np.random.default_rng(0))
    np.testing.assert_array_equal(breast_mask(torch.from_numpy(img), SPACING), breast_mask(img, SPACING))
    with pytest.raises(ValueError, match="spacing_mm"):
        breast_mask(img, 0)
    with pytest.raises(ValueError, match="image"):
        breast_mask(img[None], SPACING)
    bad = img.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        breast_mask(bad, SPACING)


def test_blank_image_has_no_breast():
    assert not breast_mask(np.zeros((100, 80), np.float32), 0.1).any()
