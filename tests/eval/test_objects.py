import itertools

from scipy import ndimage

import numpy as np
import pytest

from mcgr.eval.objects import froc, match_objects


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_distance_and_iou_criteria():
    truth = disk((40, 40), 10, 10, 2) | disk((40, 40), 30, 30, 3)
    # pred 1: shifted 3 px (0.21 mm at 0.07) -> found by distance; pred 2: far off -> FP
    pred = disk((40, 40), 10, 13, 2) | disk((40, 40), 30, 5, 1)
    r = match_objects(truth, pred, spacing_mm=0.07)
    assert (r["tp"], r["fn"], r["fp"]) == (1, 1, 1)
    # an elongated prediction whose centroid is far but overlaps well (IoU >= 0.3)
    truth2 = np.zeros((40, 40), bool)
    truth2[10, 5:35] = True
    pred2 = np.zeros((40, 40), bool)
    pred2[10, 5:30] = True
    r = match_objects(truth2, pred2, spacing_mm=0.07)
    assert r["tp"] == 1


def test_matching_is_one_to_one_and_order_independent():
    # two truths near one prediction: only one can be matched
    truth_pts = np.array([[10.0, 10.0], [10.0, 13.0], [30.0, 30.0]])
    pred = disk((40, 40), 10, 11.5, 1) | disk((40, 40), 30, 31, 1)
    counts = set()
    for perm in itertools.permutations(range(3)):
        r = match_objects(None, pred, 0.07, truth_points=truth_pts[list(perm)])
        counts.add((r["tp"], r["fn"], r["fp"]))
    assert counts == {(2, 1, 0)}


def test_maximum_matching_beats_greedy():
    # truth A admits preds 1 and 2; truth B admits only pred 1. Greedy A->1 leaves B unmatched.
    truth_pts = np.array([[10.0, 10.0], [10.0, 16.0]])
    pred = disk((30, 40), 10, 13, 0.5) | disk((30, 40), 10, 7, 0.5)
    r = match_objects(None, pred, 0.1, dist_mm=0.35, truth_points=truth_pts)
    assert r["tp"] == 2


def test_froc_on_hand_built_case():
    # image 1: truths at (10,10), (30,30); detections with peak 0.9 on the first, 0.4 FP elsewhere
    # image 2: truth at (20,20) detected with peak 0.6
    shape = (40, 40)
    t1 = disk(shape, 10, 10, 1.5) | disk(shape, 30, 30, 1.5)
    p1 = 0.9 * disk(shape, 10, 10, 1.5) + 0.4 * disk(shape, 5, 30, 1.5)
    t2 = disk(shape, 20, 20, 1.5)
    p2 = 0.6 * disk(shape, 20, 20, 1.5)
    f = froc([p1, p2], [t1, t2], 0.07, thresholds=[0.95, 0.8, 0.5, 0.3])
    # hand-computed: thr .95 -> 0/3, 0 FP; .8 -> 1/3, 0; .5 -> 2/3, 0; .3 -> 2/3, 0.5 FP/image
    assert f["sensitivity"] == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3])
    assert f["fp_per_image"] == pytest.approx([0, 0, 0, 0.5])
    assert f["at_rates"]["0.5"] == pytest.approx(2 / 3)
    assert f["at_rates"]["4.0"] == pytest.approx(2 / 3)


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        match_objects(np.zeros((4, 4), bool), np.zeros((4, 5), bool), 0.07)
    with pytest.raises(ValueError, match="spacing_mm"):
        match_objects(np.zeros((4, 4), bool), np.zeros((4, 4), bool), 0.0)


def test_clusters_of_equals_the_pipeline_rule():
    from mcgr.eval.objects import clusters_of
    from mcgr.infer.detect import clusters_from_detections

    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(0, 40))
        c = rng.random((n, 2)) * rng.integers(50, 500)
        link = float(rng.choice([1.0, 2.0, 5.0]))
        dets = [{"id": i, "y": float(y), "x": float(x)} for i, (y, x) in enumerate(c)]
        assert clusters_of(c, 0.07, link_mm=link) == clusters_from_detections(dets, 0.07, link_mm=link)


def test_cluster_matching_on_a_hand_built_case():
    from mcgr.eval.objects import match_clusters

    s = 0.1  # mm per px: 10 px = 1 mm
    # truth: cluster A (4 calcifications within 2 mm at (100, 100)), cluster B (3 at (400, 400)), one isolated
    truth = np.array([[100, 100], [110, 105], [95, 115], [105, 90], [400, 400], [410, 410], [395, 415], [250, 250]], float)
    # prediction: 3 hits in A, a 3-calcification false cluster at (100, 400), nothing at B
    pred = np.array([[101, 100], [110, 104], [96, 114], [100, 400], [108, 405], [95, 410]], float)
    pairs = [(0, 0), (1, 1), (2, 2)]
    r = match_clusters(truth, pred, s, pairs)
    assert (r["n_truth"], r["n_pred"]) == (2, 2)
    assert (r["tp"], r["fn"], r["fp"]) == (1, 1, 1)
    assert r["pairs"] == [(0, 0)]
    # without matched members and with the centroids 6 mm apart, the same clusters do not match
    far = pred[:3] + np.array([60.0, 0.0])
    assert match_clusters(truth, far, s, [])["tp"] == 0
    # ... 4 mm apart they do (centroid criterion), and two predicted clusters near one true one: one match
    near = np.vstack([pred[:3] + np.array([40.0, 0.0]), pred[:3] - np.array([40.0, 0.0])])
    r = match_clusters(truth, near, s, [], link_mm=3.0)
    assert (r["n_pred"], r["tp"], r["fp"]) == (2, 1, 1)
    # the shared-member criterion alone: centroids 6 mm apart but two matched members
    r = match_clusters(truth, far, s, [(0, 0), (1, 1)], dist_mm=5.0, min_shared=2)
    assert r["tp"] == 1
    with pytest.raises(ValueError, match="min_shared"):
        match_clusters(truth, pred, s, pairs, min_shared=0)


def test_difficult_truths_are_neither_found_nor_missed_and_hits_on_them_are_not_false_positives():
    t = np.zeros((60, 60), bool)
    t[5:8, 5:8] = True       # A, counted
    t[20:23, 20:23] = True   # B, ignored
    t[40:43, 40:43] = True   # C, counted
    p = np.zeros_like(t)
    p[5:8, 5:8] = True       # hits A
    p[20:23, 20:22] = True   # hits B only
    p[40:43, 40:43] = True   # hits C
    p[45, 41] = True         # fragment near C (centroid 3.6 px = 0.25 mm away): C is taken -> FP
    p[55, 5] = True          # far -> FP
    lab = ndimage.label(t, structure=np.ones((3, 3)))[0]
    assert lab[6, 6] == 1 and lab[21, 21] == 2 and lab[41, 41] == 3  # label order A, B, C
    r = match_objects(t, p, 0.07, truth_ignore=[False, True, False])
    assert (r["tp"], r["fn"], r["n_truth"], r["fp"], r["ignored_pred"]) == (2, 0, 2, 2, 1)
    r0 = match_objects(t, p, 0.07)
    assert (r0["tp"], r0["n_truth"], r0["fp"], r0["ignored_pred"]) == (3, 3, 2, 0)
    # a miss on a counted one stays a miss; a miss on an ignored one is not counted
    r1 = match_objects(t, np.zeros_like(t), 0.07, truth_ignore=[True, False, True])
    assert (r1["tp"], r1["fn"], r1["n_truth"], r1["fp"]) == (0, 1, 1, 0)
    with pytest.raises(ValueError, match="one flag per true calcification"):
        match_objects(t, p, 0.07, truth_ignore=[True])
    fr = froc([p.astype(float)], [t], 0.07, thresholds=[0.5], truth_ignore=[[False, True, False]])
    assert fr["sensitivity"] == [1.0] and fr["fp_per_image"] == [2.0]


def test_duplicate_rule_on_a_hand_built_case():
    # truth: a 3 x 20 px linear calcification A (rows 10-12, cols 10-29) and a dot B at (40, 40);
    # prediction: two fragments of A (cols 10-13 and 26-29: each IoU 12/60 < 0.3, centroids
    # 0.6 mm from A's), one admissible piece of A at its centre, a second blob on B, and one far away.
    t = np.zeros((64, 64), dtype=bool)
    t[10:13, 10:30] = True
    t[39:42, 39:42] = True
    p = np.zeros_like(t)
    p[10:13, 10:14] = True   # fragment, left end of A
    p[10:13, 26:30] = True   # fragment, right end of A
    p[10:13, 18:22] = True   # centre of A: centroid within 0.35 mm -> matched
    p[39:42, 39:42] = True   # B, matched
    p[44, 44] = True         # 0.4 mm from B's centroid (not admissible), not touching B -> FP either way
    p[60, 5] = True          # far -> FP
    strict = match_objects(t, p, 0.07)
    assert (strict["tp"], strict["fp"], strict["duplicate_pred"]) == (2, 4, 0)
    luna = match_objects(t, p, 0.07, duplicates="ignore")
    assert (luna["tp"], luna["fn"], luna["fp"], luna["duplicate_pred"]) == (2, 0, 2, 2)
    # a fragment of a calcification that nothing found is not a duplicate: it failed the criterion
    p2 = np.zeros_like(t)
    p2[10:13, 10:14] = True
    r = match_objects(t, p2, 0.07, duplicates="ignore")
    assert (r["tp"], r["fn"], r["fp"], r["duplicate_pred"]) == (0, 2, 1, 0)
    # A difficult: its admissible piece is 'ignored' (VOC rule), its fragments (not admissible,
    # and A counts for nothing, so no duplicates of it) stay false positives with the two others
    r = match_objects(t, p, 0.07, truth_ignore=[True, False], duplicates="ignore")
    assert (r["tp"], r["n_truth"], r["fp"], r["ignored_pred"], r["duplicate_pred"]) == (1, 1, 4, 1, 0)
    fr = froc([p.astype(float)], [t], 0.07, thresholds=[0.5], duplicates="ignore")
    assert fr["sensitivity"] == [1.0] and fr["fp_per_image"] == [2.0]
    with pytest.raises(ValueError, match="duplicates must be one of"):
        match_objects(t, p, 0.07, duplicates="merge")
