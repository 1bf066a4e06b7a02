"""Compact probability / uncertainty maps: quantisation within scale / 2, the crop put back exactly,
read_prob_map on every written form (the 16-bit PNG and the full float32 .npy of earlier versions)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mcgr.io import read_prob_map
from mcgr.io.maps import encode_map


def _boxed(rng, shape, box):
    """A random map in [0, 1) that is 0 outside ``box`` (r0, r1, c0, c1) and > 0 on its four edges."""
    a = np.zeros(shape, np.float32)
    r0, r1, c0, c1 = box
    a[r0:r1, c0:c1] = rng.uniform(0.01, 1.0, (r1 - r0, c1 - c0))
    return a


@pytest.mark.parametrize("shape", [(1, 1), (7, 129), (255, 3), (64, 96)])
@pytest.mark.parametrize("kind,hi", [("prob", 1.0), ("uncertainty", None)])
def test_quantisation_error_is_at_most_half_the_scale(tmp_path, shape, kind, hi):
    rng = np.random.default_rng(sum(shape))
    a = rng.uniform(0, 1.0 if hi else 0.37, shape).astype(np.float32)
    a.flat[rng.integers(0, a.size)] = 0.0
    data, rec = encode_map(a, kind, hi=hi)
    scale = (1.0 if hi or not a.max() > 0 else float(a.max())) / 65535  # an all-zero map keeps 1/65535
    assert rec["scale"] == pytest.approx(scale, rel=1e-12) and rec["offset"] == 0.0
    p = tmp_path / f"m.{kind}.png"
    p.write_bytes(data)
    got = read_prob_map(p)
    assert got.dtype == np.float32 and got.shape == shape
    err = np.abs(got.astype(np.float64) - a.astype(np.float64))
    bound = scale / 2 + np.finfo(np.float32).eps * np.abs(a)  # + the float32 rounding of the value read
    worst = np.unravel_index(np.argmax(err - bound), shape)
    assert (err <= bound).all(), f"at {worst}: wrote {a[worst]}, read {got[worst]}, bound {bound[worst]}"
    if a.size > 1000:  # the step really is the recorded scale: the error spans most of [0, scale / 2]
        assert err.max() > 0.4 * scale


@pytest.mark.parametrize("box", [(0, 1, 0, 1), (3, 40, 5, 6), (10, 64, 0, 96), (63, 64, 95, 96)])
def test_crop_is_put_back_exactly(tmp_path, box):
    rng = np.random.default_rng(box[0] * 7 + box[3])
    a = _boxed(rng, (64, 96), box)
    data, rec = encode_map(a, "prob", hi=1.0)
    assert rec["box"] == list(box) and rec["shape"] == [64, 96]
    p = tmp_path / "c.prob.png"
    p.write_bytes(data)
    # the stored pixels, read by PIL on its own: round(a / scale) over the box only
    q = np.asarray(Image.open(p))
    r0, r1, c0, c1 = box
    np.testing.assert_array_equal(q.astype(np.int64), np.rint(a[r0:r1, c0:c1].astype(np.float64) * 65535).astype(np.int64))
    want = (np.rint(a.astype(np.float64) * 65535) / 65535).astype(np.float32)
    got = read_prob_map(p)
    np.testing.assert_array_equal(got, want)
    outside = np.ones(a.shape, bool)
    outside[r0:r1, c0:c1] = False
    assert not got[outside].any()


def test_all_zero_map_and_values_below_half_a_step(tmp_path):
    a = np.zeros((33, 17), np.float32)
    a[5, 5] = 0.4 / 65535  # rounds to 0: the map is all zero once quantised
    data, rec = encode_map(a, "prob", hi=1.0)
    assert rec["box"] == [0, 1, 0, 1]
    p = tmp_path / "z.prob.png"
    p.write_bytes(data)
    got = read_prob_map(p)
    assert got.shape == (33, 17) and not got.any()


def test_old_float32_npy_is_read_as_is(tmp_path):
    a = np.random.default_rng(0).uniform(0, 1, (19, 23)).astype(np.float32)
    np.save(tmp_path / "old.prob.npy", a)
    got = read_prob_map(tmp_path / "old.prob.npy")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a)


def test_bad_maps_are_refused_with_the_file_named(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="plain.png: not an mcgr map PNG"):
        read_prob_map(tmp_path / "plain.png")
    np.save(tmp_path / "ints.npy", np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="ints.npy: expected a float"):
        read_prob_map(tmp_path / "ints.npy")
    (tmp_path / "m.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="m.tif: expected an mcgr map"):
        read_prob_map(tmp_path / "m.tif")
    with pytest.raises(ValueError, match="values must be >= 0"):
        encode_map(np.full((2, 2), -0.1, np.float32), "prob", hi=1.0)
    with pytest.raises(ValueError, match="NaN"):
        encode_map(np.full((2, 2), np.nan, np.float32), "prob", hi=1.0)
    with pytest.raises(ValueError, match="hold the map's maximum"):
        encode_map(np.full((2, 2), 2.0, np.float32), "prob", hi=1.0)
    with pytest.raises(ValueError, match="kind must be"):
        encode_map(np.zeros((2, 2), np.float32), "logits")
