"""TT-GPR settings against the base segmentor on held-out faint phantoms (the table in docs/design.md).

    python -m experiments.ttgpr_trials '[{"surrogate": "raise", "tau_seed": 0.3}]' [--seg DIR] [--rf DIR] [--n 2] [--size 768x640]
        [--first-seed 1000] [--oracle-seeds] [--oracle-generator [--oracle-cnr 10] [--oracle-gain 4]]

Each JSON object is a set of TTGPRConfig overrides (``refine`` may be a dict of RefineParams). The
phantoms are ``breast_phantom(H, W, seed=1000 + i, faint=True)``, seeds never used for training or
the evaluation report. Prints the mean over phantoms of Dice, Recall (within the breast, threshold
0.5), object sensitivity and false-positive objects for base and TT-GPR.

Ceilings: ``--oracle-seeds`` seeds TT-GPR at the true centres; ``--oracle-generator`` replaces the
RF projections by the target the enhancing generator is trained towards, computed from the
phantom's exact signal (mcgr.synth.enhance.enhanced_target in each 64 px window, with the window's
seeds): what TT-GPR does with a perfect generator. Both together bound what better seeds and a
better generator could give.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from mcgr.demo import score
from mcgr.infer.pipeline import Pipeline
from mcgr.infer.ttgpr import TTGPRConfig
from mcgr.models import WEIGHTS_DIR, load_model, load_pretrained
from mcgr.models.checkpoint import read_model_config
from mcgr.synth.enhance import enhanced_target
from mcgr.synth.phantom import Phantom, breast_phantom


def oracle_projector(ph: Phantom, target_cnr: float, max_gain: float, pad: int = 32):
    """A projector (mcgr.infer.ttgpr.run_field) rendering each window as the enhancing generator's
    training target: the window with its seeded calcifications' exact signal raised to
    ``target_cnr`` texture sigmas of the window (gain <= ``max_gain``). ``pad``: the pipeline's
    reflect padding (windows may reach into it)."""
    arrays = [F.pad(a.float()[None, None], (pad,) * 4, mode="reflect")[0, 0]
              for a in (ph.image, ph.signal(), ph.background, ph.truth)]

    def project(windows, origins, seeds):
        out = []
        for w, (y0, x0), sd in zip(windows, origins, seeds):
            h, wd = w.shape[-2:]
            img, sig, bg, truth = (a[y0 + pad : y0 + pad + h, x0 + pad : x0 + pad + wd][None, None] for a in arrays)
            if not torch.allclose(img[0], w, atol=1e-6):
                raise RuntimeError("oracle window does not match the pipeline's (resampled input or another padding?)")
            out.append(enhanced_target(img, sig, bg, truth, [sd.cpu()], target_cnr, max_gain)[0])
        return torch.stack(out)

    return project


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", help="JSON list of TTGPRConfig overrides")
    ap.add_argument("--seg", default=None, help="segmentor directory (default: the shipped one)")
    ap.add_argument("--rf", default=None, help="generator directory (default: the shipped one)")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--size", default="768x640")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=1000, help="phantom seeds first, first + 1, ... (default 1000)")
    ap.add_argument("--oracle-seeds", action="store_true",
                    help="seed TT-GPR at the true calcification centres: what it does given perfect seeds")
    ap.add_argument("--oracle-generator", action="store_true",
                    help="replace the RF projections by the enhancing generator's exact training target")
    ap.add_argument("--oracle-cnr", type=float, default=None, help="oracle target CNR (default: the generator's rf.enhance_cnr)")
    ap.add_argument("--oracle-gain", type=float, default=None, help="oracle gain cap (default: the generator's rf.enhance_max_gain)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    phantoms = [breast_phantom(h, w, seed=args.first_seed + i, faint=True) for i in range(args.n)]
    seg = load_model(args.seg, device="cpu", kind="seg") if args.seg else load_pretrained("seg")
    gen = load_model(args.rf, device="cpu", kind="rf") if args.rf else load_pretrained("rf")
    rf_cfg = read_model_config(args.rf or WEIGHTS_DIR / "rf")[2].get("train", {}).get("rf", {})
    cnr = args.oracle_cnr if args.oracle_cnr is not None else float(rf_cfg.get("enhance_cnr", 10.0))
    gain = args.oracle_gain if args.oracle_gain is not None else float(rf_cfg.get("enhance_max_gain", 4.0))
    for overrides in json.loads(args.configs):
        pipe = Pipeline(seg, gen, config=TTGPRConfig.from_dict(overrides))
        sums: dict = {}
        t = time.perf_counter()
        for ph in phantoms:
            r = pipe(ph.image, spacing=ph.spacing_mm, breast_mask=ph.breast, refine=True,
                     seeds=ph.centres if args.oracle_seeds else None,
                     projector=oracle_projector(ph, cnr, gain, pipe.border_pad) if args.oracle_generator else None)
            for name, prob in (("base", r.base_prob), ("ttgpr", r.prob)):
                s = score(prob, ph.truth, ph.breast, ph.spacing_mm, pipe.config.threshold)
                for k in ("dice", "recall", "object_sensitivity", "fp_objects"):
                    sums.setdefault(f"{name}_{k}", []).append(s[k])
        means = {k: round(sum(v) / len(v), 3) for k, v in sums.items()}
        oracle = {"seeds": args.oracle_seeds, "generator": {"cnr": cnr, "gain": gain} if args.oracle_generator else False}
        print(json.dumps({"config": overrides, "oracle": oracle, **means, "refined_fraction": round(r.refined_fraction, 2),
                          "seeds_last_image": r.seeds, "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
