"""The independent validation injector: its truth, its contrast law, and its independence from training."""
import ast
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import mcgr.eval.independent as ind
from mcgr.eval.independent import independent_inject


def _field(seed=0, n=384):
    rng = np.random.default_rng(seed)
    img = 0.4 + 0.05 * ndimage.gaussian_filter(rng.normal(size=(n, n)), 6) * 6 + rng.normal(0, 0.006, (n, n))
    region = np.zeros((n, n), bool)
    region[40:-40, 40:-40] = True
    return img.astype(np.float32), region


def test_shares_no_code_with_the_training_injector():
    tree = ast.parse(Path(ind.__file__).read_text())
    mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.startswith(("mcgr.ops", "mcgr.synth", "mcgr.train", "torch")) for m in mods), mods


def test_truth_centres_region_and_unchanged_background():
    img, region = _field(1)
    r = independent_inject(img, region, 0.07, seed=7)
    assert r.image.dtype == np.float32 and r.truth.shape == img.shape
    k = len(r.centres)
    assert k >= 10
    cy, cx = np.round(r.centres).astype(int).T
    assert region[cy, cx].all()
    # every calcification marks its centre pixel's neighbourhood in the truth
    grown = ndimage.binary_dilation(r.truth, iterations=1)
    assert grown[cy, cx].all()
    # the image changes only near calcifications (within the blur kernel of the truth), never darker
    diff = r.image - img
    assert (diff >= -1e-7).all()
    far = ~ndimage.binary_dilation(r.truth, iterations=6)
    assert np.abs(diff[far]).max() < 0.02 * np.abs(diff).max() + 1e-6
    np.testing.assert_array_equal(r.background, img)


def test_clusters_have_three_or_more_members_and_seed_is_the_stream():
    img, region = _field(2)
    a = independent_inject(img, region, 0.07, seed=11)
    b = independent_inject(img, region, 0.07, seed=11)
    c = independent_inject(img, region, 0.07, seed=12)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    ids, counts = np.unique(a.cluster[a.cluster >= 0], return_counts=True)
    assert len(ids) >= 1 and (counts >= 3).all()


def test_contrast_is_set_by_the_target_cnr():
    img, region = _field(3)
    lo, hi = 4.0, 4.0001
    r = independent_inject(img, region, 0.07, seed=5, clusters=(0, 0), isolated=(12, 12), cnr=(lo, hi))
    resid = img - ndimage.uniform_filter(img.astype(np.float64), 3)
    noise_sd = 1.4826 * np.median(np.abs(resid)) * 1.22
    peaks = [float((r.image - img)[int(round(y)) - 3:int(round(y)) + 4, int(round(x)) - 3:int(round(x)) + 4].max())
             for y, x in r.centres]
    # each calcification's peak rise is the target CNR times the local noise (here stationary)
    assert np.median(peaks) / noise_sd == pytest.approx(4.0, rel=0.3)


def test_empty_region_is_an_error():
    img, _ = _field(4, 64)
    with pytest.raises(ValueError, match="search region is empty"):
        independent_inject(img, np.zeros(img.shape, bool), 0.07, seed=1)
