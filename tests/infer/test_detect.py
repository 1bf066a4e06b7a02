import numpy as np
import pytest

from mcgr.infer.detect import clusters_from_detections, detections_from_prob


def test_detections_centroid_area_peak_in_mm():
    p = np.zeros((50, 60), np.float32)
    p[10:13, 20:22] = 0.8  # 6 px, centroid (11, 20.5)
    p[11, 21] = 0.95
    p[40, 50] = 0.6  # single pixel
    p[30, 5] = 0.4  # below threshold
    d = detections_from_prob(p, spacing_mm=0.1, threshold=0.5)
    assert len(d) == 2
    assert d[0]["peak_prob"] == pytest.approx(0.95) and d[0]["area_px"] == 6
    assert (d[0]["y"], d[0]["x"]) == (pytest.approx(11.0), pytest.approx(20.5))
    assert d[0]["y_mm"] == pytest.approx(1.1) and d[0]["area_mm2"] == pytest.approx(0.06)
    assert d[1]["area_px"] == 1 and d[1]["x_mm"] == pytest.approx(5.0)


def test_diagonal_pixels_are_one_component():
    p = np.zeros((5, 5), np.float32)
    p[1, 1] = p[2, 2] = p[3, 3] = 1.0
    assert len(detections_from_prob(p, 0.07)) == 1


def test_confidence_from_uncertainty():
    p = np.zeros((8, 8), np.float32)
    p[2:4, 2:4] = 0.9
    u = np.full_like(p, 0.25)
    d = detections_from_prob(p, 0.07, uncertainty=u)
    assert d[0]["confidence"] == pytest.approx(0.75)


def test_clusters_need_three_close_calcifications():
    sp = 0.1
    pts = [(100, 100), (110, 105), (120, 100), (500, 500), (505, 510)]  # 3 within 2 mm; 2 far away
    dets = [{"id": i, "y": y, "x": x} for i, (y, x) in enumerate(pts)]
    cl = clusters_from_detections(dets, sp, link_mm=5.0)
    assert len(cl) == 1 and sorted(cl[0]["members"]) == [0, 1, 2]
    assert [d["cluster"] for d in dets] == [0, 0, 0, -1, -1]
    assert cl[0]["compact"] is True
    assert cl[0]["y_mm"] == pytest.approx(11.0)


def test_chain_linkage_is_transitive():
    sp = 1.0
    dets = [{"id": i, "y": 0.0, "x": 4.0 * i} for i in range(4)]  # neighbours 4 mm apart
    cl = clusters_from_detections(dets, sp, link_mm=5.0)
    assert len(cl) == 1 and len(cl[0]["members"]) == 4


def test_detections_match_scipy_labelled_reductions_on_random_maps():
    import numpy as np
    from scipy import ndimage

    from mcgr.infer.detect import detections_from_prob

    rng = np.random.default_rng(7)
    for trial in range(5):
        p = ndimage.gaussian_filter(rng.random((90, 70)), 1.5).astype(np.float32)
        p = (p - p.min()) / (p.max() - p.min())
        u = rng.random(p.shape).astype(np.float32) * 0.3
        lab, n = ndimage.label(p >= 0.6, structure=np.ones((3, 3)))
        assert n >= 2
        idx = np.arange(1, n + 1)
        area = ndimage.sum_labels(np.ones_like(p), lab, idx)
        cen = np.asarray(ndimage.center_of_mass(np.ones_like(p), lab, idx))
        peak = ndimage.maximum(p, lab, idx)
        conf = 1 - ndimage.mean(u, lab, idx)
        base = rng.random(p.shape).astype(np.float32)
        vote = rng.random(p.shape).astype(np.float32)
        base_max, vote_max = ndimage.maximum(base, lab, idx), ndimage.maximum(vote, lab, idx)
        dets = detections_from_prob(p, 0.1, 0.6, uncertainty=u, min_area_px=2,
                                    evidence={"base_prob": base, "generator_vote": vote})
        want = sorted((k for k in range(n) if area[k] >= 2), key=lambda k: -peak[k])
        assert len(dets) == len(want)
        for d, k in zip(dets, want):
            assert d["area_px"] == int(area[k]) and d["peak_prob"] == round(float(peak[k]), 4)
            assert abs(d["y"] - cen[k, 0]) <= 0.006 and abs(d["x"] - cen[k, 1]) <= 0.006
            assert abs(d["confidence"] - conf[k]) <= 6e-5
            assert abs(d["base_prob"] - base_max[k]) <= 5e-7 and abs(d["generator_vote"] - vote_max[k]) <= 5e-7
    with pytest.raises(ValueError, match="evidence"):
        detections_from_prob(p, 0.1, 0.6, evidence={"base_prob": base[:5]})


def test_skin_band_equals_the_full_distance_transform():
    import numpy as np
    from scipy import ndimage

    from mcgr.infer.pipeline import deeper_than

    rng = np.random.default_rng(0)
    for trial in range(25):
        h, w = rng.integers(3, 160, 2)
        m = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(1, 6)) > 0.5
        r = float(rng.uniform(0.5, 20))
        want = ndimage.distance_transform_edt(np.pad(m, 1, mode="edge"))[1:-1, 1:-1] > r
        assert np.array_equal(deeper_than(m, r, block=int(rng.integers(4, 70))), want), (trial, h, w, r)
    m = np.ones((20, 30), bool)
    assert deeper_than(m, 5.0).all()  # the image border is not a skin line
    assert np.array_equal(deeper_than(m, 0.0), m) and not deeper_than(np.zeros((4, 4), bool), 2.0).any()


def test_fragments_of_one_calcification_are_one_detection_and_no_cluster():
    """A 1.6 x 2.4 mm oval whose peak breaks into 4 pieces (joined by p >= 0.5) is one coarse
    detection, not a cluster; scipy's labelling of the >= threshold pixels sees 4 components."""
    from scipy import ndimage

    from mcgr.infer.detect import HYSTERESIS_LOW

    sp = 0.07
    y, x = np.mgrid[0:120, 0:120]
    oval = ((y - 60) / 17.0) ** 2 + ((x - 60) / 11.5) ** 2 <= 1
    p = np.where(oval, 0.7, 0.0).astype(np.float32)
    for cy, cx in [(50, 55), (50, 66), (70, 55), (70, 66)]:
        p[(y - cy) ** 2 + (x - cx) ** 2 <= 9] = 0.995
    assert ndimage.label(p >= 0.99, structure=np.ones((3, 3)))[1] == 4
    d = detections_from_prob(p, sp, 0.99, low=HYSTERESIS_LOW)
    assert len(d) == 1 and d[0]["morphology"] == "coarse"
    # its size is the oval's (the extent joined at p >= 0.5): 4 sigma of a filled ellipse = its axes
    assert d[0]["length_mm"] == pytest.approx(2 * 17 * sp, rel=0.05)
    assert d[0]["width_mm"] == pytest.approx(2 * 11.5 * sp, rel=0.05)
    assert clusters_from_detections(d, sp) == [] and d[0]["cluster"] == -1
    # three distinct punctate calcifications 2 mm apart still make a cluster
    q = np.zeros((200, 200), np.float32)
    for cx in (50, 80, 110):
        q[100:103, cx:cx + 3] = 0.995
    dq = detections_from_prob(q, sp, 0.99, low=HYSTERESIS_LOW)
    assert [e["morphology"] for e in dq] == ["punctate"] * 3
    cl = clusters_from_detections(dq, sp)
    assert len(cl) == 1 and cl[0]["n"] == 3 and cl[0]["extent_mm"][1] == pytest.approx(60 * sp)


def test_linear_shape_is_tagged():
    p = np.zeros((40, 40), np.float32)
    p[20, 5:17] = 0.999  # a 12 px (0.84 mm) segment one pixel wide
    d = detections_from_prob(p, 0.07, 0.99)
    # 4 sigma of a uniform segment of length L: 4 L / sqrt(12) (+ the pixel's own 1/12 variance)
    want = 4 * np.sqrt(12 ** 2 / 12 + 1 / 12 - 1 / 12) * 0.07
    assert d[0]["morphology"] == "linear" and d[0]["length_mm"] == pytest.approx(want, rel=0.02)


def test_branching_and_round_shapes():
    from mcgr.infer.detect import morphology

    p = np.zeros((60, 60), np.float32)
    for i in range(14):  # a V: two 1 px wide arms 14 px long from one corner
        p[10 + i, 30 - i] = p[10 + i, 30 + i] = 0.999
    d = detections_from_prob(p, 0.07, 0.99)
    assert len(d) == 1 and d[0]["morphology"] == "branching"
    disc = np.zeros((60, 60), np.float32)
    y, x = np.mgrid[0:60, 0:60]
    disc[(y - 30) ** 2 + (x - 30) ** 2 <= 100] = 0.999  # 1.4 mm across
    d = detections_from_prob(disc, 0.07, 0.99)
    assert d[0]["morphology"] == "coarse" and d[0]["length_mm"] == pytest.approx(20 * 0.07, rel=0.05)
    assert morphology(0.3, 0.3) == "punctate" and morphology(2.0, 0.3) == "linear"
    assert morphology(1.5, 1.0, solidity=0.4) == "branching"  # long casts stay in clusters
