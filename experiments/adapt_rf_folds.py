"""Leave-one-view-out generators of an adaptation, for the acceptance ROC of TT-GPR's generator.

    python -m experiments.adapt_rf_folds --adapt runs/adapt-benign --hold-out 1-132 [--steps 1500]

trains the generator of ``mcgr adapt``'s stage ``rf`` (preset ``rf_adapt``, the site's PSF, decoys at
the mined detections) without the held-out image's windows and mined patches, into
``ADAPT/work/rf-folds/<key>``. ``mcgr adapt`` does not fold-train the generator (its validation scores
the segmentor); this is the held-out generator that ``python -m experiments.seed_recall --stages accept
--rf ADAPT/work/rf-folds/<key>/model`` measures on the held-out view.
"""
from __future__ import annotations

import argparse

from mcgr.train.adapt import Adaptation


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapt", required=True, help="an mcgr adapt --out folder")
    ap.add_argument("--hold-out", required=True, action="append", help="image key(s) to leave out (see its state.json)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    ad = Adaptation.reopen(a.adapt, threads=a.threads)
    keys = {i["key"] for i in ad.items}
    bad = [k for k in a.hold_out if k not in keys]
    if bad:
        ap.error(f"unknown image keys {bad}; the adaptation has {sorted(keys)}")
    cfg = ad.rf_config(a.steps, exclude=a.hold_out)
    run = ad.work / "rf-folds" / "+".join(sorted(a.hold_out))
    print(ad._train(cfg, run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
