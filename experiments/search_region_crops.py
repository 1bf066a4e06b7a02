"""How much of an image without air is searched: crops of the sfm-benign-0 views.

``python -m experiments.search_region_crops``

Each ``sfm-benign-0`` view (the only real case used to choose anything) is read at 0.05 mm, resampled
to 0.07 mm, and three 1024 px crops at fixed places are cut from it; for the whole view and each
crop: the share of the crop inside the view's breast mask, whether :func:`mcgr.io.search_region.has_air`
finds air, the share of the crop's breast searched (``keep``) against what :func:`mcgr.io.breast_mask`
alone keeps of it, and the share of the crop's air that is searched.
"""
from __future__ import annotations

import sys
import warnings

import numpy as np


def main() -> int:
    from mcgr.io import breast_mask, read_mammogram, to_model_spacing
    from mcgr.io.search_region import search_region
    from mcgr.train.real import benign_views

    for v, p in benign_views().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = read_mammogram(p, spacing=0.05)
        img = np.asarray(to_model_spacing(m, 0.07)[0])
        r = search_region(img, 0.07, view=m.view)
        print(f"{v} ({m.view}): air {r.has_air}, breast searched {r.searched_fraction:.3f}, excluded {r.excluded}, "
              f"pectoral {r.pectoral and r.pectoral['found']}")
        bm = breast_mask(img, 0.07)
        H = img.shape[0]
        for y0, x0 in [(H // 2 - 512, 30), (H // 2 - 700, 200), (H // 2 - 200, 400)]:
            c = img[y0:y0 + 1024, x0:x0 + 1024]
            b = bm[y0:y0 + 1024, x0:x0 + 1024]  # the crop's breast, as the whole view's mask has it
            rc = search_region(c, 0.07)
            alone = breast_mask(c, 0.07)
            air = f"{(rc.keep & ~b).sum() / max(1, (~b).sum()):.3f}" if (~b).any() else "-"
            print(f"   crop ({y0}, {x0}): breast {b.mean():.2f}, air {rc.has_air}, breast searched "
                  f"{(rc.keep & b).sum() / b.sum():.3f} (breast_mask alone {(alone & b).sum() / b.sum():.3f}), "
                  f"air searched {air}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
