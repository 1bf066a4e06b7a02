"""The pectoral muscle finder against images whose muscle edge is known exactly."""
import numpy as np
import pytest
import torch

from mcgr.io.pectoral import find_pectoral
from mcgr.synth.backgrounds import procedural_backgrounds

SP = 0.07


def _mlo(xt, yl, H=1400, W=1000, seed=0, muscle=0.85):
    tissue = procedural_backgrounds(1, H, W, torch.Generator().manual_seed(seed), mean=(0.35, 0.45))[0].numpy()
    yy, xx = np.mgrid[0:H, 0:W]
    tri = yy / yl + xx / xt < 1
    img = np.where(tri, muscle + 0.02 * (tissue - 0.4), tissue).astype(np.float32)
    return img, np.ones((H, W), bool), tri


@pytest.mark.parametrize("xt,yl,seed", [(400, 900, 0), (550, 700, 1), (300, 1100, 2)])
def test_finds_a_known_muscle_edge_within_two_mm(xt, yl, seed):
    img, breast, tri = _mlo(xt, yl, seed=seed)
    pec = find_pectoral(img, breast, SP)
    assert pec.found
    # every boundary point lies within 2 mm of the true edge line x / xt + y / yl = 1
    y, x = pec.boundary[:, 0], pec.boundary[:, 1]
    dist_px = np.abs(y / yl + x / xt - 1) / np.hypot(1 / yl, 1 / xt)
    assert float(np.max(dist_px)) * SP < 2.0
    inter = (pec.mask & tri).sum()
    assert inter / tri.sum() > 0.9 and inter / pec.mask.sum() > 0.9


@pytest.mark.parametrize("seed", range(3))
def test_tissue_alone_has_no_muscle(seed):
    tissue = procedural_backgrounds(1, 1200, 900, torch.Generator().manual_seed(10 + seed))[0].numpy()
    pec = find_pectoral(tissue, np.ones(tissue.shape, bool), SP)
    assert not pec.found and not pec.mask.any() and len(pec.boundary) == 0


def test_mask_stays_in_the_breast_and_bad_input_is_refused():
    img, breast, _ = _mlo(400, 900)
    breast[:, 700:] = False
    pec = find_pectoral(img, breast, SP)
    assert not (pec.mask & ~breast).any()
    with pytest.raises(ValueError, match="one shape"):
        find_pectoral(img, breast[:10], SP)
    with pytest.raises(ValueError, match="spacing"):
        find_pectoral(img, breast, 0.0)
    tiny = find_pectoral(np.zeros((5, 5), np.float32), np.ones((5, 5), bool), SP)
    assert not tiny.found
