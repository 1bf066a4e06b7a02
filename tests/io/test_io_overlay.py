"""The overlay a reader looks at: a legend, a crop for every cluster and isolated detection (up to
MAX_CROPS), labels kept inside the image."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image, ImageDraw

from mcgr.infer.detect import clusters_from_detections, detections_from_prob
from mcgr.io import write_outputs
from mcgr.io.reader import Mammogram
from mcgr.io.writers import CROP_PX, CYAN, MAX_CROPS, RED, YELLOW, _crop_items, _text_inside


def _mammo(h=400, w=300):
    rng = np.random.default_rng(0)
    img = (0.3 + 0.2 * rng.random((h, w))).astype(np.float32)
    return Mammogram(image=img, spacing_mm=0.07, laterality="L", view="CC", source="x", source_shape=(h, w),
                     flipped=False, spacing_source="argument")


def _prob(h, w, spots):
    p = np.zeros((h, w), np.float32)
    for y, x in spots:
        p[y:y + 3, x:x + 3] = 0.999
    return p


def test_every_cluster_and_isolated_detection_gets_a_crop_and_a_legend(tmp_path):
    m = _mammo()
    spots = [(100, 100), (100, 130), (120, 115), (300, 60), (50, 250)]  # a cluster of 3 and two isolated
    p = _prob(400, 300, spots)
    dets = detections_from_prob(p, 0.07, 0.99)
    cls = clusters_from_detections(dets, 0.07)
    assert len(cls) == 1 and sum(d["cluster"] < 0 for d in dets) == 2
    paths = write_outputs(tmp_path, "x", m, p, p >= 0.99, dets, cls)
    ov = np.asarray(Image.open(paths["overlay"]).convert("RGB"))
    # 400 px hold one crop per column: three columns of crops to the right of the overview
    assert ov.shape[1] == 300 + 3 * CROP_PX and ov.shape[0] == 400
    crops = [ov[:CROP_PX, 300 + i * CROP_PX:300 + (i + 1) * CROP_PX] for i in range(3)]
    assert all(c.std() > 0 for c in crops)
    # the cluster's crop first (yellow label), then the two isolated ones (cyan labels)
    def has(a, c):  # a pixel near colour c (text is antialiased on a grey crop)
        return bool((np.abs(a.reshape(-1, 3).astype(int) - np.array(c)).max(1) < 40).any())

    assert has(crops[0][:20], YELLOW) and has(crops[1][:20], CYAN) and has(crops[2][:20], CYAN)
    legend = ov[400 - 60:400, :150]
    assert has(legend, RED) and has(legend, YELLOW) and has(legend, CYAN)
    doc = json.loads(open(paths["json"]).read())
    assert doc["clusters"][0]["extent_mm"] == cls[0]["extent_mm"] and doc["clusters"][0]["n"] == 3


def test_crops_are_capped_clusters_first_then_by_probability():
    dets = [{"id": i, "cluster": -1, "peak_prob": 0.5 + 0.01 * i} for i in range(20)]
    cls = [{"id": 0, "members": [], "n": 3}]
    items = _crop_items(dets, cls)
    assert len(items) == MAX_CROPS and items[0] == ("cluster", cls[0])
    probs = [o["peak_prob"] for k, o in items[1:]]
    assert probs == sorted(probs, reverse=True) and probs[0] == dets[-1]["peak_prob"]


def test_labels_stay_inside_the_image():
    text = "pectoral (not searched)"
    ref = Image.new("RGB", (300, 100))
    ImageDraw.Draw(ref).text((20, 40), text, fill=(255, 255, 255))
    n_ref = int((np.asarray(ref) > 0).any(2).sum())
    for xy in [(290, 40), (-50, -20), (280, 95)]:
        im = Image.new("RGB", (300, 100))
        _text_inside(ImageDraw.Draw(im), xy, text, im.size, (255, 255, 255))
        assert int((np.asarray(im) > 0).any(2).sum()) == n_ref, xy  # every pixel of the text drawn
