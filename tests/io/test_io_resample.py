"""Resampling against independent constructions, and the model-grid <-> source-grid round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from dicom_factory import breast_phantom, write_dicom
from scipy import ndimage

from mcgr.io import read_mammogram, resample, resample_mask, to_model_spacing


def test_area_equals_fine_grid_block_mean():
    """0.05 -> 0.07 mm: repeat each source pixel 5x onto a 0.01 mm grid, then average blocks of 7."""
    rng = np.random.default_rng(0)
    img = rng.random((35, 49)).astype(np.float32)
    fine = np.repeat(np.repeat(img.astype(np.float64), 5, 0), 5, 1)
    exp = fine.reshape(25, 7, 35, 7).mean(axis=(1, 3))
    out = resample(img, 0.05, 0.07, "area")
    assert out.shape == (25, 35)
    assert np.abs(out - exp).max() < 1e-6


@pytest.mark.parametrize("shape", [(1, 7), (7, 1), (129, 255), (31, 17)])
@pytest.mark.parametrize("spacings", [(0.05, 0.07), (0.1, 0.07), (0.07, 0.5), (0.0425, 0.07)])
def test_linear_equals_map_coordinates(shape, spacings):
    src, dst = spacings
    rng = np.random.default_rng(shape[0] * 31 + shape[1])
    img = rng.random(shape).astype(np.float32)
    out = resample(img, src, dst, "linear")
    oh, ow = max(1, round(shape[0] * src / dst)), max(1, round(shape[1] * src / dst))
    assert out.shape == (oh, ow)
    r = dst / src
    yy = np.clip((np.arange(oh) + 0.5) * r - 0.5, 0, shape[0] - 1)
    xx = np.clip((np.arange(ow) + 0.5) * r - 0.5, 0, shape[1] - 1)
    gy, gx = np.meshgrid(yy, xx, indexing="ij")
    exp = ndimage.map_coordinates(img.astype(np.float64), [gy, gx], order=1, mode="nearest")
    assert np.abs(out - exp).max() < 1e-5


def test_constant_and_mean_preserved():
    img = np.full((77, 53), 0.375, np.float32)
    for mode in ("area", "linear"):
        assert np.abs(resample(img, 0.05, 0.07, mode) - 0.375).max() < 1e-6
    rng = np.random.default_rng(1)
    img = rng.random((140, 98)).astype(np.float32)  # 0.05 mm * 140 = 7 mm = 100 px at 0.07: exact cover
    assert abs(float(resample(img, 0.05, 0.07).mean()) - float(img.mean())) < 1e-5


def test_torch_in_torch_out_batch():
    t = torch.rand(3, 20, 28)
    out = resample(t, 0.1, 0.05, "linear")
    assert isinstance(out, torch.Tensor) and out.shape == (3, 40, 56)
    for b in range(3):
        assert torch.allclose(out[b], torch.from_numpy(resample(t[b].numpy(), 0.1, 0.05, "linear")))


def test_resample_validates():
    with pytest.raises(ValueError, match="mode"):
        resample(np.zeros((4, 4), np.float32), 0.1, 0.2, "cubic")
    with pytest.raises(ValueError, match="from_mm"):
        resample(np.zeros((4, 4), np.float32), 0.0, 0.2)
    with pytest.raises(ValueError, match="image"):
        resample(np.zeros((0, 4), np.float32), 0.1, 0.2)


def _blobs(shape, n, rng, rmax=6):
    m = np.zeros(shape, bool)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    for _ in range(n):
        cy, cx = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
        r = rng.uniform(0.3, rmax)
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    m[rng.integers(0, shape[0], 5), rng.integers(0, shape[1], 5)] = True  # single-pixel objects
    return m


@pytest.mark.parametrize("spacings", [(0.05, 0.07), (0.07, 0.05), (0.0425, 0.07), (0.05, 0.1)])
def test_mask_area_kept_and_no_object_lost(spacings):
    src, dst = spacings
    rng = np.random.default_rng(int(src * 1e4 + dst * 1e3))
    m = _blobs((201, 157), 25, rng)
    out = resample_mask(m, src, dst)
    assert out.dtype == bool
    area_in, area_out = m.sum() * src**2, out.sum() * dst**2
    assert abs(area_out - area_in) <= 0.08 * area_in + 12 * dst**2, (area_in, area_out)
    lab, n = ndimage.label(m, structure=np.ones((3, 3)))
    # Every input object has an output pixel within one output pixel of its centroid.
    hits = ndimage.binary_dilation(out, structure=np.ones((3, 3)))
    for cy, cx in ndimage.center_of_mass(m, lab, range(1, n + 1)):
        oy, ox = int((cy + 0.5) * src / dst), int((cx + 0.5) * src / dst)
        assert hits[min(oy, out.shape[0] - 1), min(ox, out.shape[1] - 1)], (cy, cx)


def test_mask_up_then_down_is_identity():
    m = _blobs((64, 48), 8, np.random.default_rng(2), rmax=4)
    up = resample_mask(m, 0.1, 0.05)
    assert up.shape == (128, 96)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(m, 2, 0), 2, 1))
    np.testing.assert_array_equal(resample_mask(up, 0.05, 0.1), m)


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_source_pixel_round_trip(tmp_path, laterality):
    """read -> canonical -> 0.07 mm -> to_source puts a mask pixel back on the source pixel it came from."""
    wall = "left" if laterality == "L" else "right"
    stored = breast_phantom(181, 133, 12, np.random.default_rng(3), chest_wall=wall)
    path = write_dicom(tmp_path / "rt.dcm", stored, bits_stored=12, laterality=laterality, pixel_spacing=0.05)
    m = read_mammogram(path)
    img, t = to_model_spacing(m)
    assert img.shape == (round(181 * 0.05 / 0.07), round(133 * 0.05 / 0.07)) == t.model_shape
    rng = np.random.default_rng(4)
    h, w = m.source_shape
    for r, c in zip(rng.integers(0, h, 40), rng.integers(0, w, 40)):
        # The definition, written out: corner-aligned grids, canonical = mirrored for a right breast.
        cc = w - 1 - c if m.flipped else c
        y, x = int((r + 0.5) * 0.05 / 0.07), int((cc + 0.5) * 0.05 / 0.07)
        y, x = min(y, img.shape[0] - 1), min(x, img.shape[1] - 1)
        mask = np.zeros(img.shape, bool)
        mask[y, x] = True
        back = t.to_source(mask)
        assert back.shape == (h, w) and back[r, c], (r, c, y, x)
        rows, cols = np.nonzero(back)
        assert rows.min() >= r - 1 and rows.max() <= r + 1 and cols.min() >= c - 1 and cols.max() <= c + 1
        np.testing.assert_array_equal(m.to_source(mask), back)
        yr, xr = t.source_to_model_px(r, c)
        assert (int(np.floor(yr + 0.5)), int(np.floor(xr + 0.5))) == (y, x)
        rr, cr = t.model_to_source_px(yr, xr)
        assert abs(rr - r) < 1e-9 and abs(cr - c) < 1e-9


def test_image_round_trip_is_close(tmp_path):
    """A smooth image to the model grid and back is close to itself (interpolation error only)."""
    yy, xx = np.mgrid[0:150, 0:110]
    stored = (2000 + 1500 * np.sin(yy / 13.0) * np.cos(xx / 9.0)).astype(np.uint16)
    m = read_mammogram(write_dicom(tmp_path / "s.dcm", stored, bits_stored=12, pixel_spacing=0.05))
    img, t = to_model_spacing(m)
    back = t.to_source(img)
    ref = read_mammogram(m.source, canonical=False).image
    assert np.abs(back - ref)[2:-2, 2:-2].max() < 0.03
