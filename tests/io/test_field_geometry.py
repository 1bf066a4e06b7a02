"""FieldGeometry against independent expectations: points round-trip within the resampling's half
pixel, the canvas is the model grid shifted by the pad, a point lands where the resampler moves
what lay under it, and its arrays are the one resampler's (mcgr.io.resample)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mcgr import MODEL_SPACING_MM
from mcgr.io import resample, resample_mask
from mcgr.io.field_geometry import FieldGeometry

SIDES = (1, 7, 129, 255)
# source spacings finer and coarser than the model's 0.07 mm, equal, and one not a simple ratio
SPACINGS = (0.05, 0.0425, 0.07, 0.1, 0.14)


def _random_points(rng, shape, n=64):
    return np.stack([rng.uniform(0, shape[0] - 1, n), rng.uniform(0, shape[1] - 1, n)], 1)


@pytest.mark.parametrize("rows", SIDES)
@pytest.mark.parametrize("cols", SIDES)
@pytest.mark.parametrize("mm", SPACINGS)
def test_source_model_source_round_trip(rows, cols, mm):
    rng = np.random.default_rng(rows * 1000 + cols)
    g = FieldGeometry.for_image((rows, cols), mm, border_pad=32)
    p = _random_points(rng, (rows, cols))
    assert np.abs(g.model_to_source(g.source_to_model(p)) - p).max() < 1e-9
    # through a model pixel (the resampled map holds values only at integer model pixels): back
    # within half a model pixel, in source px
    q = np.floor(g.source_to_model(p) + 0.5)
    assert np.abs(g.model_to_source(q) - p).max() <= 0.5 * MODEL_SPACING_MM / mm + 1e-9
    # the canvas on the way adds nothing
    assert np.abs(g.canvas_to_source(g.source_to_canvas(p)) - p).max() < 1e-9


@pytest.mark.parametrize("mm", SPACINGS)
def test_model_shape_is_the_rounded_extent_in_model_pixels(mm):
    for rows, cols in [(1, 7), (129, 255), (4560, 2864), (3, 2)]:
        g = FieldGeometry.for_image((rows, cols), mm)
        assert g.model_shape == (max(1, round(rows * mm / 0.07)), max(1, round(cols * mm / 0.07)))


@pytest.mark.parametrize("mm", SPACINGS)
def test_a_seed_lands_on_the_model_pixel_holding_its_centre(mm):
    """Closed form: source pixel c is centred (c + 0.5) * mm from the field's edge; the model pixel
    holding that position is floor((c + 0.5) * mm / 0.07), and the point maps inside it."""
    g = FieldGeometry.for_image((255, 129), mm, border_pad=32)
    rows, cols = np.meshgrid(np.arange(255), np.arange(129), indexing="ij")
    c = np.stack([rows.ravel(), cols.ravel()], 1)
    y = g.source_to_model(c)
    pos = (c + 0.5) * mm / MODEL_SPACING_MM  # in model pixel widths
    off_edge = np.abs(pos - np.round(pos)) > 1e-9  # a centre on a model pixel's edge belongs to neither
    want = np.floor(pos)
    assert np.abs(y - (pos - 0.5)).max() < 1e-9
    assert np.array_equal(np.floor(y + 0.5)[off_edge], want[off_edge])
    # on the canvas: the same pixel, ``pad`` further in
    assert np.array_equal(np.floor(g.source_to_canvas(c) + 0.5)[off_edge], want[off_edge] + g.pad)


def _centroid(a: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    return np.array([(a * yy).sum(), (a * xx).sum()]) / a.sum()


@pytest.mark.parametrize("mm", (0.05, 0.0425, 0.1, 0.14))
def test_points_move_with_the_resampled_arrays(mm):
    """A smooth spot at a source point, resampled by the geometry, has its centroid where the point maps
    (and back): the points and the arrays share one convention."""
    g = FieldGeometry.for_image((129, 255), mm)
    yy, xx = np.mgrid[0:129, 0:255]
    rng = np.random.default_rng(int(mm * 1e4))
    for cy, cx in _random_points(rng, (80, 200), 4) + 24:
        sigma = 4.0 * MODEL_SPACING_MM / mm  # 4 model px wide, so the coarser grid resolves it
        spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)).astype(np.float32)
        on_model = g.to_model(spot)
        assert np.abs(_centroid(on_model) - g.source_to_model([cy, cx])).max() < 0.02
    my, mx = np.mgrid[0:g.model_shape[0], 0:g.model_shape[1]]
    cy, cx = g.model_shape[0] / 2 + 0.3, g.model_shape[1] / 2 - 0.4
    spot = np.exp(-((my - cy) ** 2 + (mx - cx) ** 2) / (2 * 4.0 ** 2)).astype(np.float32)
    on_source = g.to_source(spot)
    assert np.abs(_centroid(on_source) - g.model_to_source([cy, cx])).max() < 0.02 * MODEL_SPACING_MM / mm + 0.02


@pytest.mark.parametrize("rows,cols", [(1, 7), (7, 1), (7, 7), (129, 255), (255, 129)])
@pytest.mark.parametrize("border_pad", (0, 3, 32))
def test_canvas_is_the_model_grid_shifted_by_the_pad(rows, cols, border_pad):
    g = FieldGeometry.for_image((rows, cols), 0.05, border_pad=border_pad)
    mh, mw = g.model_shape
    assert g.pad == max(0, min(border_pad, mh - 1, mw - 1))  # reflection needs pad < each side
    assert g.canvas_shape == (mh + 2 * g.pad, mw + 2 * g.pad)
    rng = np.random.default_rng(rows + cols)
    p = np.round(_random_points(rng, (mh, mw)) * 4) / 4  # quarter pixels: the sums are exact
    assert np.array_equal(g.model_to_canvas(p) - p, np.full_like(p, g.pad))
    assert np.array_equal(g.canvas_to_model(g.model_to_canvas(p)), p)
    o = np.array([[0, 0], [5, 9]])
    assert g.canvas_to_model(o).dtype == o.dtype  # integer origins stay integers
    a = torch.rand(mh, mw, generator=torch.Generator().manual_seed(rows))
    c = g.to_canvas(a)
    assert tuple(c.shape) == g.canvas_shape
    assert torch.equal(g.crop_canvas(c), a)
    np.testing.assert_array_equal(c.numpy(), np.pad(a.numpy(), g.pad, mode="reflect"))
    np.testing.assert_array_equal(g.to_canvas(a, "replicate").numpy(), np.pad(a.numpy(), g.pad, mode="edge"))
    m = a > 0.5
    assert g.to_canvas(m, "constant").dtype == torch.bool
    np.testing.assert_array_equal(g.to_canvas(m, "constant").numpy(), np.pad(m.numpy(), g.pad))
    np.testing.assert_array_equal(g.to_canvas(m, "replicate").numpy(), np.pad(m.numpy(), g.pad, mode="edge"))
    # a value at model pixel p sits at canvas pixel p + pad
    i, j = rng.integers(0, mh), rng.integers(0, mw)
    ci, cj = g.model_to_canvas(np.array([i, j]))
    assert c[ci, cj] == a[i, j]


@pytest.mark.parametrize("mm", SPACINGS)
def test_arrays_go_through_the_one_resampler(mm):
    g = FieldGeometry.for_image((129, 255), mm)
    rng = np.random.default_rng(3)
    img = rng.random((129, 255)).astype(np.float32)
    mode = "area" if mm < MODEL_SPACING_MM else "linear"
    np.testing.assert_array_equal(g.to_model(img), resample(img, mm, MODEL_SPACING_MM, mode, out_shape=g.model_shape))
    m = rng.random(g.model_shape).astype(np.float32)
    np.testing.assert_array_equal(g.to_source(m), resample(m, MODEL_SPACING_MM, mm, "linear", out_shape=(129, 255)))
    mask = img > 0.7
    np.testing.assert_array_equal(g.mask_to_model(mask), resample_mask(mask, mm, MODEL_SPACING_MM, out_shape=g.model_shape))
    t = torch.from_numpy(m > 0.5)
    out = g.mask_to_source(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool and tuple(out.shape) == (129, 255)
    assert torch.is_tensor(g.to_model(torch.from_numpy(img)))  # the caller's kind comes back


def test_stored_orientation_is_the_source_mirrored_when_flipped():
    g = FieldGeometry.for_image((7, 129), 0.05, flipped=True)
    p = np.array([[0.0, 0.0], [3.5, 128.0], [6.0, 40.25]])
    assert np.array_equal(g.source_to_stored(p), np.array([[0.0, 128.0], [3.5, 0.0], [6.0, 87.75]]))
    assert np.array_equal(g.stored_to_source(g.source_to_stored(p)), p)
    a = torch.arange(7 * 129.0).reshape(7, 129)
    assert torch.equal(g.to_stored(a), a.flip(-1))
    np.testing.assert_array_equal(g.to_stored(a.numpy()), a.numpy()[:, ::-1])
    plain = FieldGeometry.for_image((7, 129), 0.05)
    assert np.array_equal(plain.stored_to_source(p), p) and plain.to_stored(a) is a


def test_points_keep_the_callers_kind_and_clamp_to_the_model_grid():
    g = FieldGeometry.for_image((129, 255), 0.05, border_pad=32)
    t = torch.tensor([[-0.4, 0.0], [128.0, 254.0]])
    out = g.source_to_model(t, clamp=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    mh, mw = g.model_shape
    assert float(out[:, 0].min()) >= 0 and float(out[:, 0].max()) <= mh - 1 and float(out[:, 1].max()) <= mw - 1
    assert g.source_to_model(np.zeros((0, 2))).shape == (0, 2)
    assert g.source_to_model([[1.0, 2.0]]).shape == (1, 2)


def test_geometry_validates():
    with pytest.raises(ValueError, match="pad"):
        FieldGeometry((7, 7), 0.07, (7, 7), pad=7)
    with pytest.raises(ValueError, match="source_shape"):
        FieldGeometry((0, 7), 0.07, (7, 7))
    with pytest.raises(ValueError, match="source_mm"):
        FieldGeometry((7, 7), 0.0, (7, 7))
    g = FieldGeometry.for_image((7, 9), 0.07, border_pad=2)
    with pytest.raises(ValueError, match="points"):
        g.source_to_model(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="canvas"):
        g.crop_canvas(torch.zeros(7, 9))
    with pytest.raises(ValueError, match="model grid"):
        g.to_canvas(torch.zeros(9, 7))
    with pytest.raises(ValueError, match="grid"):
        g.to_model(np.zeros((9, 7), np.float32))
