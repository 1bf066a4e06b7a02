"""``mcgr adapt``: fit both networks to a site from its own MC-free mammograms, validate, calibrate.

Stages, in order, each resumable (its results are written under ``OUT/work/<stage>/`` and recorded
in ``OUT/work/state.json`` when it ends; a training stage resumes from its last checkpoint):

1. ``harvest``: MC-free windows inside each breast (:func:`mcgr.synth.harvest.harvest_backgrounds`,
   with its spot guard: a window holding a calcification-like spot is not used);
2. ``site``: the site measured from its images (:mod:`mcgr.train.site`: noise against signal, the
   PSF from the noise power spectrum, bit depth and presentation); injection uses the measured PSF;
3. ``mine``: the start segmentor's false detections on the site's images and on procedural MLO
   fields with anatomy (:func:`mcgr.train.mine.mine_image`), per image;
4. ``seg``: the segmentor fine-tuned from the start (the real-negative recipe, preset ``real``:
   site augmentation, anatomy, the mined hard negatives weighted up, the site's PSF);
5. ``rf``: the generator fine-tuned from the start on the same backgrounds, with decoy seeds on the
   site's bright texture and at every mined false detection (preset ``rf_adapt``);
6. ``validate``: by image (leave one out; ``k`` folds beyond :data:`MAX_FOLDS` images): for each fold a
   segmentor fine-tuned without the held-out images (the written model's schedule unless
   ``--fold-steps`` shortens it), then
   calcifications injected into the held-out images with unseen seeds by the training injector and
   by an independent one (:mod:`mcgr.eval.independent`), scored for the fold model, the start model
   and the DoG detector (:mod:`mcgr.train.adapt_validate`);
7. ``write``: ``OUT/seg`` and ``OUT/rf`` (drop-in ``--models OUT``) with the operating threshold for
   ``--fp-per-image`` chosen on the independent injector's pooled FROC, the operating points, and
   both cards.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mcgr import MODEL_SPACING_MM
from mcgr.train.adapt_validate import read_model_grid

STAGES = ("harvest", "site", "mine", "seg", "rf", "validate", "write")
MAX_FOLDS = 8
START_DIR = Path(__file__).resolve().parent.parent / "weights" / "start"


class AdaptError(ValueError):
    """A problem the user can fix (inputs, the output folder, a resume that does not match)."""


@dataclass(frozen=True)
class Plan:
    """The schedule of one adaptation (``--quick`` halves nothing: it is a different, tiny plan)."""

    windows_per_image: int = 300
    stride: int = 32
    phantoms: int = 4
    mine_per_image: int = 150
    seg_steps: int = 2000
    rf_steps: int = 3000
    # None: the fold models follow the written model's schedule (seg_steps). On a 600-step schedule
    # fold 2 of the sfm-benign-0 adaptation found 0.06 / 0.09 at 2 / 5 false objects per image where
    # its 2000-step model found 0.18 / 0.27 (docs/log/2026-12.md), and the threshold is read off them
    fold_steps: int | None = None
    injections: int = 2
    max_folds: int = MAX_FOLDS
    val_n: int = 32  # patches of each training run's synthetic validation (its log only: no weight depends on it)

    @classmethod
    def quick(cls) -> "Plan":
        return cls(windows_per_image=24, stride=64, phantoms=0, mine_per_image=20, seg_steps=12, rf_steps=12,
                   injections=1, max_folds=2, val_n=4)

    @property
    def fold_schedule(self) -> int:
        """Steps of each validation fold's segmentor: ``fold_steps``, else the written model's."""
        return int(self.fold_steps) if self.fold_steps is not None else int(self.seg_steps)

    def identity(self) -> dict:
        """The fields that change a result (``--resume`` compares them)."""
        d = asdict(self)
        d.pop("val_n")
        return d


def _key(path: str, used: set) -> str:
    """A unique, file-name-safe key for one input: its name without the image suffix."""
    from mcgr.archive.inputs import strip_image_suffix

    stem = strip_image_suffix(Path(path).name)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "image"
    k, i = stem, 1
    while k in used:
        i += 1
        k = f"{stem}-{i}"
    used.add(k)
    return k


def list_inputs(specs, spacing: float | None) -> list[dict]:
    """The adaptation's images from ``mcgr infer``'s input forms (files, folders, globs, manifests)."""
    from mcgr.archive.inputs import iter_inputs

    out, used, bad = [], set(), []
    for it in iter_inputs(specs):  # a spec that names nothing is an item with its error, never an exception
        if it.error:
            bad.append(f"{it.origin or it.path}: {it.error}")
            continue
        out.append({"path": it.path, "key": _key(it.path, used),
                    "spacing": it.spacing if it.spacing is not None else spacing})
    if bad:
        raise AdaptError("unusable inputs: " + "; ".join(bad[:5]) + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""))
    if not out:
        raise AdaptError(f"no mammograms found in {' '.join(map(str, specs))}")
    return out


class Adaptation:
    """One ``mcgr adapt`` run in ``out`` (see the module doc); :meth:`run` does what is left."""

    def __init__(self, out, items: list[dict], plan: Plan, fp_per_image: float = 1.0, init: str = "start",
                 device: str = "cpu", threads: int = 0, progress: bool = True, log=print, command: str | None = None):
        self.out = Path(out)
        self.work = self.out / "work"
        self.items, self.plan, self.fp_per_image = items, plan, float(fp_per_image)
        self.init, self.device, self.threads, self.progress, self.log = init, device, threads, progress, log
        self.state_path = self.work / "state.json"
        self.command = command

    # ------------------------------------------------------------ state
    def identity(self) -> dict:
        return {"inputs": [{"key": i["key"], "sha256": i["sha256"], "spacing": i["spacing"]} for i in self.items],
                "plan": self.plan.identity(), "fp_per_image": self.fp_per_image, "init": self.init}

    def open(self, resume: bool) -> dict:
        from mcgr._digest import file_sha256

        for it in self.items:
            it.setdefault("sha256", file_sha256(it["path"]))
        if self.state_path.is_file():
            if not resume:
                raise AdaptError(f"{self.out} holds an adaptation already; pass --resume to continue it "
                                 f"or choose another --out")
            state = json.loads(self.state_path.read_text())
            if state["identity"] != self.identity():
                old, new = state["identity"], self.identity()
                diff = [k for k in new if old.get(k) != new[k]]
                raise AdaptError(f"--resume: {self.out} was started with other {', '.join(diff)}; "
                                 f"start a new --out or give the same inputs and options")
            return state
        if self.out.exists() and any(self.out.iterdir()):
            raise AdaptError(f"--out {self.out} is not empty and holds no adaptation")
        self.work.mkdir(parents=True, exist_ok=True)
        state = {"identity": self.identity(), "stages": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "command": self.command, "paths": {i["key"]: i["path"] for i in self.items}}
        self._save(state)
        return state

    def _save(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, self.state_path)

    def run(self, resume: bool = False, stop_after: str | None = None) -> dict:
        """Run every stage not yet done (up to ``stop_after`` included); returns the state."""
        state = self.open(resume)
        if self.threads:
            torch.set_num_threads(self.threads)
        for n, name in enumerate(STAGES, 1):
            if state["stages"].get(name, {}).get("done"):
                self.log(f"[{n}/{len(STAGES)}] {name}: done earlier ({state['stages'][name]['wall_s']:.0f} s)")
            else:
                self.log(f"[{n}/{len(STAGES)}] {name}: {STAGE_HELP[name]}")
                t0 = time.perf_counter()
                summary = getattr(self, f"stage_{name}")(state)
                state["stages"][name] = {"done": True, "wall_s": round(time.perf_counter() - t0, 1), "summary": summary}
                self._save(state)
                self.log(f"[{n}/{len(STAGES)}] {name}: {state['stages'][name]['wall_s']:.0f} s")
            if stop_after == name:
                break
        return state

    def _bar(self, it, desc: str, total: int | None = None):
        from tqdm import tqdm

        return tqdm(it, desc=desc, total=total, disable=not self.progress, dynamic_ncols=True)

    # ------------------------------------------------------------ stages
    def stage_harvest(self, state: dict) -> dict:
        from mcgr.synth.harvest import harvest_backgrounds

        d = self.work / "harvest"
        d.mkdir(exist_ok=True)
        per = {}
        for it in self._bar(self.items, "harvest"):
            f = d / f"{it['key']}.npy"
            stats: dict = {}
            try:
                bg = harvest_backgrounds([it["path"]], 256, per_image=self.plan.windows_per_image, stride=self.plan.stride,
                                         spacing=it["spacing"], seed=1, stats=stats)
            except ValueError as exc:
                per[it["key"]] = {"windows": 0, "note": str(exc)[:200], **stats}
                continue
            np.save(f, bg.numpy())
            per[it["key"]] = {"windows": int(bg.shape[0]), **stats}
        if not any(v["windows"] for v in per.values()):
            raise AdaptError("no image gave a 256 px window inside the breast (are these mammograms at the "
                             "spacing given?)")
        cand = sum(v.get("candidates", 0) for v in per.values())
        guarded = sum(v.get("rejected_spots", 0) for v in per.values())
        return {"per_image": per, "windows": sum(v["windows"] for v in per.values()),
                "spot_guard_rejected": guarded, "spot_guard_rate": round(guarded / cand, 4) if cand else 0.0}

    def stage_site(self, state: dict) -> dict:
        from mcgr.io import breast_mask
        from mcgr.train.site import DEFAULT_PSF, combine, inject_ranges, measure_image, presentation_of, psf_measured

        per, pres = [], []
        for it in self._bar(self.items, "site"):
            img = read_model_grid(it)
            try:
                r = measure_image(img, breast_mask(img, MODEL_SPACING_MM))
            except ValueError as exc:
                self.log(f"  site: {it['key']}: not measured ({exc})")
                continue
            per.append({"key": it["key"], **r})
            pres.append(presentation_of(it["path"]))
        est = combine(per, pres)
        out = est.to_dict()
        out["inject_ranges"] = {k: list(v) for k, v in inject_ranges(est).items()}
        out["psf_measured"] = psf_measured(est.psf_sigma_px)
        if not out["psf_measured"]:
            self.log(f"  site: the noise power spectrum holds no measurable blur (fit at {est.psf_sigma_px:.2f} px); "
                     f"injection keeps the default PSF range {list(DEFAULT_PSF)}")
        (self.work / "site.json").write_text(json.dumps(out, indent=1) + "\n")
        return {k: v for k, v in out.items() if k != "per_image"}

    def start_dir(self, kind: str) -> Path:
        if self.init == "start":
            return START_DIR / kind
        if self.init == "shipped":
            from mcgr.models import WEIGHTS_DIR

            return WEIGHTS_DIR / kind
        return Path(self.init) / kind

    def stage_mine(self, state: dict) -> dict:
        from mcgr.infer.pipeline import Pipeline
        from mcgr.io import breast_mask
        from mcgr.models import load_model
        from mcgr.synth.harvest import spot_map
        from mcgr.synth.phantom import breast_phantom
        from mcgr.train.mine import mine_image

        d = self.work / "mine"
        d.mkdir(exist_ok=True)
        seg = load_model(self.start_dir("seg"), kind="seg", device=self.device)
        pipe = Pipeline(seg, None, exclude_pectoral=False, device=self.device)
        jobs = [("image", it) for it in self.items] + [("phantom", k) for k in range(self.plan.phantoms)]
        summary = []
        for kind, src in self._bar(jobs, "mine"):
            if kind == "image":
                img = read_model_grid(src)
                guard = spot_map(img, breast_mask(img, MODEL_SPACING_MM), MODEL_SPACING_MM, 12.0)
                name, key = src["key"], src["key"]
            else:
                ph = breast_phantom(2048, 1536, seed=7919 + src, clusters=(0, 0), isolated=(0, 0), anatomy=True)
                img, guard, name, key = ph.image.numpy(), None, f"phantom:{7919 + src}", f"_phantom{src}"
            patches, recs, s = mine_image(pipe, img, name, 256, self.plan.mine_per_image, guard)
            arr = np.clip(np.stack(patches), 0, 1).astype(np.float32) if patches else np.zeros((0, 256, 256), np.float32)
            np.save(d / f"{key}.npy", arr)
            (d / f"{key}.json").write_text(json.dumps({"summary": s, "records": recs}) + "\n")
            summary.append(s)
        return {"images": summary, "patches": int(sum(s["kept"] for s in summary))}

    def hard_files(self, exclude=()) -> list[str]:
        d = self.work / "mine"
        keys = [it["key"] for it in self.items if it["key"] not in exclude] + [f"_phantom{k}" for k in range(self.plan.phantoms)]
        return [str(d / f"{k}.npy") for k in keys if (d / f"{k}.npy").is_file() and np.load(d / f"{k}.npy", mmap_mode="r").shape[0]]

    def background_files(self, exclude=()) -> list[str]:
        d = self.work / "harvest"
        return [str(d / f"{it['key']}.npy") for it in self.items if it["key"] not in exclude and (d / f"{it['key']}.npy").is_file()]

    def site_psf(self) -> tuple:
        site = json.loads((self.work / "site.json").read_text())
        return tuple(site["inject_ranges"]["psf_sigma"])

    def seg_config(self, steps: int, exclude=()):
        from mcgr.models.checkpoint import read_model_config
        from mcgr.train.config import load_config

        cfg = load_config("seg", "real")
        cfg.init = str(self.start_dir("seg"))
        # fine-tune the architecture of the start (--init shipped: the width-8 segmentor, not the preset's 16)
        cfg.model = read_model_config(cfg.init)[1]
        cfg.threads = self.threads
        cfg.optim.steps = steps
        cfg.data.psf_sigma = self.site_psf()
        bgs, hard = self.background_files(exclude), self.hard_files(exclude)
        if not bgs:
            raise AdaptError("no harvested windows to train on")
        cfg.data.backgrounds = ",".join(bgs)
        if hard:
            cfg.data.hard_negatives = ",".join(hard)
        else:
            cfg.data.hard_fraction = 0.0
        cfg.log.progress = self.progress
        cfg.log.val_every = max(cfg.log.val_every, steps)
        cfg.log.ckpt_every = min(cfg.log.ckpt_every, max(1, steps))
        cfg.data.val_n = min(cfg.data.val_n, self.plan.val_n)
        return cfg

    def _train(self, cfg, run: Path) -> dict:
        from mcgr.train.trainer import train

        return train(cfg, run, resume=(run / "ckpt" / "state.json").is_file(), device=self.device)

    def stage_seg(self, state: dict) -> dict:
        cfg = self.seg_config(self.plan.seg_steps)
        s = self._train(cfg, self.work / "seg")
        d = cfg.data
        mix = {"real_fraction": d.real_fraction, "hard_fraction": d.hard_fraction, "anatomy": d.anatomy,
               "augment": d.augment, "mc_free_fraction": d.mc_free_fraction, "hard_weight": cfg.loss.hard_weight,
               "patch_size": d.patch_size, "batch_size": d.batch_size}
        return {"steps": cfg.optim.steps, "psf_sigma": list(cfg.data.psf_sigma), "mix": mix, "summary": s}

    def rf_config(self, steps: int, exclude=()):
        """The generator's fine-tuning (preset ``rf_adapt``) on the windows and mined detections of every
        image but ``exclude``."""
        from mcgr.train.config import load_config

        cfg = load_config("rf", "adapt")
        cfg.init = str(self.start_dir("rf"))
        cfg.threads = self.threads
        cfg.optim.steps = steps
        cfg.data.psf_sigma = self.site_psf()
        cfg.data.backgrounds = ",".join(self.background_files(exclude))
        hard = self.hard_files(exclude)
        if hard:
            cfg.data.hard_negatives = ",".join(hard)
        else:
            cfg.data.hard_fraction = 0.0
        cfg.log.progress = self.progress
        cfg.log.val_every = max(cfg.log.val_every, cfg.optim.steps)
        cfg.log.ckpt_every = min(cfg.log.ckpt_every, max(1, cfg.optim.steps))
        cfg.data.val_n = min(cfg.data.val_n, self.plan.val_n)
        return cfg

    def stage_rf(self, state: dict) -> dict:
        cfg = self.rf_config(self.plan.rf_steps)
        s = self._train(cfg, self.work / "rf")
        return {"steps": cfg.optim.steps, "summary": s}

    @classmethod
    def reopen(cls, out, **kw) -> "Adaptation":
        """The adaptation recorded in ``out`` (its inputs and schedule), e.g. to train fold models for a study."""
        state = json.loads((Path(out) / "work" / "state.json").read_text())
        ident = state["identity"]
        paths = state.get("paths", {})
        items = [{"key": i["key"], "sha256": i["sha256"], "spacing": i["spacing"], "path": paths.get(i["key"])}
                 for i in ident["inputs"]]
        return cls(out, items, Plan(**ident["plan"]), fp_per_image=ident["fp_per_image"], init=ident["init"], **kw)

    def folds(self) -> list[list[str]]:
        keys = [it["key"] for it in self.items]
        if len(keys) < 2:
            return []
        k = min(len(keys), self.plan.max_folds)
        return [keys[i::k] for i in range(k)]

    def stage_validate(self, state: dict) -> dict:
        from mcgr.train.adapt_validate import validate_fold

        folds = self.folds()
        if not folds:
            self.log("  validate: one image only: no image can be held out; the card says so")
            return {"folds": [], "note": "a single image cannot be validated by holding it out"}
        d = self.work / "validate"
        d.mkdir(exist_ok=True)
        reports = []
        for n, held in enumerate(folds):
            f = d / f"fold{n}.json"
            if f.is_file():
                reports.append(json.loads(f.read_text()))
                continue
            self.log(f"  validate: fold {n + 1}/{len(folds)}: holding out {', '.join(held)}")
            run = d / f"fold{n}"
            cfg = self.seg_config(self.plan.fold_schedule, exclude=held)
            self._train(cfg, run)
            items = [it for it in self.items if it["key"] in held]
            rep = validate_fold(n, items, run / "model", self.start_dir("seg"), self.plan.injections,
                                progress=self.progress, device=self.device)
            f.write_text(json.dumps(rep) + "\n")
            reports.append(rep)
        return {"folds": len(reports)}

    def stage_write(self, state: dict) -> dict:
        from mcgr.models.checkpoint import write_model_config
        from mcgr.train.adapt_card import write_cards
        from mcgr.train.adapt_validate import pooled_report

        reports = [json.loads(f.read_text()) for f in sorted((self.work / "validate").glob("fold*.json"))] \
            if (self.work / "validate").is_dir() else []
        pooled = pooled_report(reports, self.fp_per_image) if reports else None
        for kind in ("seg", "rf"):
            dst = self.out / kind
            dst.mkdir(parents=True, exist_ok=True)
            src = self.work / kind / "model"
            for f in ("model.safetensors", "config.json"):
                shutil.copyfile(src / f, dst / f)
        cfg = json.loads((self.out / "seg" / "config.json").read_text())
        if pooled is not None:
            cfg["operating_threshold"] = pooled["operating"]["threshold"]
            cfg["operating_points"] = pooled["operating_points"]
        else:
            cfg["operating_threshold"] = 0.99
            cfg["operating_points"] = None
        cfg["adapted"] = {"fp_per_image": self.fp_per_image, "images": len(self.items), "init": self.init}
        write_model_config(cfg, self.out / "seg")
        write_model_config(json.loads((self.out / "rf" / "config.json").read_text()), self.out / "rf")
        site = json.loads((self.work / "site.json").read_text())
        (self.out / "validation.json").write_text(json.dumps({"pooled": pooled, "folds": reports}, indent=1) + "\n")
        write_cards(self.out, state, site, pooled, self.plan, self.fp_per_image, self.init)
        return {"operating_threshold": cfg["operating_threshold"]}


STAGE_HELP = {
    "harvest": "MC-free windows inside each breast (spot guard on)",
    "site": "noise, blur (PSF from the noise power spectrum), bit depth and presentation",
    "mine": "the start segmentor's false detections on the site's images",
    "seg": "fine-tune the segmentor on the site's negatives",
    "rf": "fine-tune the generator on the same backgrounds, decoys at the mined detections",
    "validate": "leave images out: fold models, two injectors, the DoG beside them",
    "write": "the adapted models, their operating threshold and cards",
}


def command_line(args) -> str:
    """The ``mcgr adapt`` command that ``args`` came from (for the cards)."""
    import shlex

    parts = ["mcgr", "adapt", *args.inputs, "--out", str(args.out)]
    for flag, val, default in (("--spacing", args.spacing, None), ("--fp-per-image", args.fp_per_image, 1.0),
                               ("--init", args.init, "start"), ("--seg-steps", args.seg_steps, None),
                               ("--rf-steps", args.rf_steps, None), ("--fold-steps", args.fold_steps, None),
                               ("--device", args.device, "cpu"), ("--threads", args.threads, 0)):
        if val != default:
            parts += [flag, f"{val:g}" if isinstance(val, float) else str(val)]
    if args.quick:
        parts.append("--quick")
    return shlex.join(parts)


def main(args) -> int:
    """The ``mcgr adapt`` handler (arguments: :func:`add_arguments`)."""
    from mcgr._arguments import CLIError

    plan = Plan.quick() if args.quick else Plan()
    over = {k: getattr(args, k) for k in ("seg_steps", "rf_steps", "fold_steps") if getattr(args, k) is not None}
    plan = replace(plan, **over)
    try:
        items = list_inputs(args.inputs, args.spacing)
        ad = Adaptation(args.out, items, plan, fp_per_image=args.fp_per_image, init=args.init, device=args.device,
                        threads=args.threads, progress=not args.quiet, command=command_line(args))
        t0 = time.perf_counter()
        ad.run(resume=args.resume)
    except AdaptError as exc:
        raise CLIError(str(exc)) from None
    print(f"adapted to {len(items)} images in {time.perf_counter() - t0:.0f} s: {args.out}/seg, {args.out}/rf, "
          f"cards in {args.out}/*/card.md; use: mcgr infer SCANS --models {args.out}", file=sys.stderr)
    return 0
