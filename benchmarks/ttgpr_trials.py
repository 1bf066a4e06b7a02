"""TT-GPR settings against the base segmentor on held-out faint phantoms (the table in docs/design.md).

    python -m benchmarks.ttgpr_trials '[{"surrogate": "raise", "tau_seed": 0.3}]' [--seg DIR] [--rf DIR] [--n 2] [--size 768x640] [--oracle-seeds]

Each JSON object is a set of TTGPRConfig overrides (``refine`` may be a dict of RefineParams). The
phantoms are ``breast_phantom(H, W, seed=1000 + i, faint=True)``, seeds never used for training or
the evaluation report. Prints the mean over phantoms of Dice, Recall (within the breast, threshold
0.5), object sensitivity and false-positive objects for base and TT-GPR.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from mcgr.infer.demo import score
from mcgr.infer.pipeline import Pipeline
from mcgr.infer.ttgpr import TTGPRConfig
from mcgr.models import load_model, load_pretrained
from mcgr.synth.phantom import breast_phantom


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", help="JSON list of TTGPRConfig overrides")
    ap.add_argument("--seg", default=None, help="segmentor directory (default: the shipped one)")
    ap.add_argument("--rf", default=None, help="generator directory (default: the shipped one)")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--size", default="768x640")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--oracle-seeds", action="store_true",
                    help="seed TT-GPR at the true calcification centres: what it does given perfect seeds")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    phantoms = [breast_phantom(h, w, seed=1000 + i, faint=True) for i in range(args.n)]
    seg = load_model(args.seg, device="cpu", kind="seg") if args.seg else load_pretrained("seg")
    gen = load_model(args.rf, device="cpu", kind="rf") if args.rf else load_pretrained("rf")
    for overrides in json.loads(args.configs):
        pipe = Pipeline(seg, gen, config=TTGPRConfig.from_dict(overrides))
        sums: dict = {}
        t = time.perf_counter()
        for ph in phantoms:
            r = pipe(ph.image, spacing=ph.spacing_mm, breast_mask=ph.breast,
                     seeds=ph.centres if args.oracle_seeds else None)
            for name, prob in (("base", r.base_prob), ("ttgpr", r.prob)):
                s = score(prob, ph.truth, ph.breast, ph.spacing_mm, pipe.config.threshold)
                for k in ("dice", "recall", "object_sensitivity", "fp_objects"):
                    sums.setdefault(f"{name}_{k}", []).append(s[k])
        means = {k: round(sum(v) / len(v), 3) for k, v in sums.items()}
        print(json.dumps({"config": overrides, **means, "refined_fraction": round(r.refined_fraction, 2),
                          "seeds_last_image": r.seeds, "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
