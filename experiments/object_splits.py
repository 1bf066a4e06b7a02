"""How often one true calcification becomes several detections, and two become one, by object rule.

``python -m experiments.object_splits [--seeds 4]``

On regular phantoms (:func:`mcgr.synth.phantom.breast_phantom`, 1536 x 1152 px at 0.07 mm, seeds 1000
up: not training seeds), the shipped segmentor (base, at its operating threshold) gives a probability
map; for each rule (hysteresis low threshold, merge gap in px) :func:`mcgr.infer.detect.object_labels`
makes the objects, and each is matched to the 8-connected components of the exact truth it overlaps.
Printed per rule: true calcifications found, those split into >= 2 detections, detections that join
>= 2 true ones. The shipped rule (``HYSTERESIS_LOW``, ``MERGE_MM``) was chosen from this table.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from scipy import ndimage


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from mcgr.infer.detect import object_labels
    from mcgr.infer.pipeline import Pipeline
    from mcgr.synth.phantom import breast_phantom

    pipe = Pipeline.from_pretrained()
    t = pipe.config.threshold
    rules = [(low, gap) for low in (None, 0.5, 0.2) for gap in (0, 2, 3)]
    rows = {r: [0, 0, 0, 0, 0] for r in rules}
    for seed in range(a.seeds):
        ph = breast_phantom(1536, 1152, seed=1000 + seed)
        p = pipe(ph.image, spacing=0.07, refine=False, breast_mask=ph.breast).prob.numpy()
        tl, tn = ndimage.label(ph.truth.numpy() > 0, structure=np.ones((3, 3)))
        for low, gap in rules:
            lab, n, _, _ = object_labels(p, t, low, gap)
            hit = (lab > 0) & (tl > 0)
            pairs = np.unique(np.stack([tl[hit], lab[hit]], 1), axis=0).reshape(-1, 2)
            per_truth = np.bincount(pairs[:, 0], minlength=tn + 1)[1:]
            per_det = np.bincount(pairs[:, 1], minlength=n + 1)[1:]
            r = rows[(low, gap)]
            r[0] += int((per_truth >= 1).sum())
            r[1] += int((per_truth >= 2).sum())
            r[2] += int((per_det >= 2).sum())
            r[3] += int((per_det >= 1).sum())
            r[4] += n
    for (low, gap), (found, split, merged, on_truth, n) in rows.items():
        print(f"low={low} merge_px={gap}: found {found}, split {split} ({100 * split / max(found, 1):.1f} %), "
              f"joining >= 2 true {merged} ({100 * merged / max(on_truth, 1):.1f} %), detections {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
