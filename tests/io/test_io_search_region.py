"""search_region: no-air images searched whole, pectoral only where the view can hold one."""
from __future__ import annotations

import numpy as np

from mcgr.io.breast_mask import breast_mask
from mcgr.io.search_region import search_region
from mcgr.synth.phantom import breast_phantom


def test_crop_inside_the_breast_is_searched_whole():
    ph = breast_phantom(1024, 768, seed=3)
    img, breast = ph.image.numpy(), ph.breast.numpy()
    ys, xs = np.nonzero(breast)
    crop = img[300:700, 20:420]
    assert breast[300:700, 20:420].all()
    r = search_region(crop, 0.07, view="CC")
    assert not r.has_air and r.breast.all() and r.keep.mean() >= 0.97
    full = search_region(img, 0.07, view="CC")
    assert full.has_air
    # the full view's breast is breast_mask's (independent: the breast mask module itself)
    assert np.array_equal(full.breast, breast_mask(img, 0.07))


def test_cc_view_is_not_searched_for_a_pectoral_muscle():
    ph = breast_phantom(1024, 768, seed=5, anatomy=True)
    img = ph.image.numpy()
    cc = search_region(img, 0.07, view="CC")
    assert cc.pectoral["found"] is False and cc.excluded["pectoral"] == 0 and "CC" in cc.pectoral["looked"]
    unknown = search_region(img, 0.07)
    assert unknown.pectoral["looked"] == "image"
    assert (cc.keep | ~unknown.keep).all()  # nothing the unknown view searches is dropped on CC


def test_saturated_marker_is_not_searched():
    ph = breast_phantom(512, 384, seed=2)
    img = ph.image.numpy().copy()
    img[200:230, 100:140] = 1.0
    r = search_region(img, 0.07, view="CC")
    assert not r.keep[195:235, 95:145].any() and r.excluded["markers"] > 0


def test_the_little_air_of_a_crop_is_not_searched():
    """A crop reaching just past the skin line: its breast is searched, its air (the phantom's own
    truth of where the breast ends) mostly not."""
    ph = breast_phantom(1024, 768, seed=4)
    img, breast = ph.image.numpy(), ph.breast.numpy().astype(bool)
    end = int(np.nonzero(breast[512])[0].max())  # the skin line on the middle row
    crop, b = img[312:712, end - 380:end + 20], breast[312:712, end - 380:end + 20]
    assert 0.02 < (~b).mean() < 0.2
    r = search_region(crop, 0.07)
    assert (r.keep & b).sum() / b.sum() >= 0.9
    assert (r.keep & ~b).sum() / (~b).sum() <= 0.35
