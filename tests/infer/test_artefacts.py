"""Scanner line artefacts: found where a hand-made streak lies, not on texture, fibres or calcifications."""
import copy

import numpy as np
import pytest
import torch
from archive_factory import make_models
from scipy import ndimage

from mcgr.io.artefacts import scan_lines


def _texture(h, w, seed):
    rng = np.random.default_rng(seed)
    t = ndimage.gaussian_filter(rng.standard_normal((h, w)), 4) * 0.4 + ndimage.gaussian_filter(rng.standard_normal((h, w)), 1) * 0.05
    return np.clip(0.45 + t + 0.004 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)


def test_a_streak_is_found_and_texture_fibres_and_calcifications_are_not():
    h, w = 1100, 700
    img = _texture(h, w, 0)
    img[100:1100, 300] += 0.03            # a 1 px vertical streak over rows 100..1099
    img[600, 50:650] += 0.02              # a 1 px horizontal streak over columns 50..649
    img[:, 500:506] += 0.03               # a straight band 6 px wide (a vessel): no side lobes at d = 3
    yy, xx = np.mgrid[0:h, 0:w]
    img[np.abs(xx - 150 - 40 * np.sin(yy / 150.0)) < 0.7] += 0.03  # a curved 1 px fibre
    for cy, cx in ((200, 100), (800, 420), (400, 620)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 4] += 0.1  # calcifications
    img = np.clip(img, 0, 1)
    m = scan_lines(img, block=256, min_blocks=2, pad=2)
    # the vertical streak: blocks 1..3 (rows 256..1023) lie inside it whole, block 0 only partly
    # (its median still clears the bar: 156 of 256 rows), and the last, partial block joins the run
    cols = np.flatnonzero(m[300:1000].any(0))
    assert set(range(298, 303)) <= set(cols)
    assert m[256:1100, 298:303].all()
    # the horizontal one: columns 50..649 hold most of blocks 0 and 1 (0..511), and the run reaching
    # the last whole block covers the remainder (to 699)
    assert m[598:603, :].all()
    band = m[:590, 495:512]
    assert not band.any()  # the 6 px band
    fibre = np.abs(xx - 150 - 40 * np.sin(yy / 150.0)) < 3
    assert not (m & fibre)[:590].any()
    away = np.ones_like(m)
    away[:, 296:305] = False
    away[596:605, :] = False
    assert not m[away].any()  # nothing else: texture, fibre, band and calcifications stay


def test_breast_region_and_bad_input():
    img = _texture(600, 400, 1)
    img[:, 200] += 0.03
    breast = np.zeros((600, 400), bool)
    breast[:, :150] = True  # the streak lies outside the breast: not looked at
    assert not scan_lines(img, breast).any()
    assert scan_lines(img).any()
    assert not scan_lines(_texture(600, 400, 2)).any()
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        scan_lines(img[None])
    with pytest.raises(ValueError, match="breast must match"):
        scan_lines(img, breast[:10])


def test_pipeline_drops_detections_on_a_streak(tmp_path):
    from mcgr.infer.pipeline import Pipeline
    from mcgr.models import load_model

    root = make_models(tmp_path / "m")
    seg = load_model(root / "seg", kind="seg")
    with torch.no_grad():
        seg.head.bias.fill_(8.0)  # fires everywhere: only the exclusions clear pixels
    img = torch.from_numpy(_texture(800, 500, 3))
    img[:, 250] += 0.03
    img = img.clamp(0, 1)
    out = {}
    for drop in (True, False):
        pipe = Pipeline(copy.deepcopy(seg), None, drop_scan_lines=drop, skin_margin_mm=0.0, border_margin_mm=0.0,
                        autocast=False)
        out[drop] = pipe(img, spacing=0.07, breast_mask=torch.ones(800, 500, dtype=torch.bool), refine=False).prob
    assert float(out[True][300, 250]) == 0.0 and float(out[False][300, 250]) > 0.9
    assert float(out[True][300, 100]) > 0.9  # away from the streak nothing changes
