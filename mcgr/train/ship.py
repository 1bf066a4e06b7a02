"""Install a finished training run as the package's shipped weights, with its model card.

``python -m mcgr.train.ship seg runs/seg-default [--command "..."] [--machine "..."]``

copies ``<run>/model/{model.safetensors, config.json}`` into ``mcgr/weights/<kind>/``, runs the
evaluation of :mod:`mcgr.train.evaluate` on them (for ``rf`` through the shipped segmentor, so ship
``seg`` first) and writes ``card.md``: the command that produced the weights, data source, steps,
wall time, machine, the validation figures and the command that recomputes them.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from mcgr.models import WEIGHTS_DIR
from mcgr.models.checkpoint import write_model_config


def _wall_s(run: Path) -> float | None:
    last = None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "elapsed_s" in r:
            last = r
    return None if last is None else last["elapsed_s"]


def real_reading(val: dict, before: dict | None = None, mining: dict | None = None) -> list[str]:
    """The card's real-mammogram section: the leave-one-view-out table of
    :mod:`mcgr.train.validate_real` (``val``), the start model's figures on the same images
    (``before``) and the hard-negative mining round (``mining``, :mod:`mcgr.train.mine`'s report)."""
    prior = {r["view"]: r for r in (before or {}).get("folds", [])}

    def row(name, r, b):
        sv, sa = r["sensitivity_visible"], r["sensitivity_all"]
        was = f" ({b['dice']:.3f} / {b['raw_clusters']})" if b else ""
        clusters = r["raw_clusters"] if not isinstance(r["raw_clusters"], list) else "/".join(map(str, r["raw_clusters"]))
        op = r.get("operating")
        at = (f"{op['threshold']:g}: {op['dice']:.3f} / {op['sensitivity_visible']:.2f} / {op['false_objects_per_image']:.1f} / "
              f"{op['raw_clusters']}" if op else "-")
        return (f"| {name} | {r['dice']:.3f} | {r['dog']['best_dice']:.3f} | {sv['1.0']:.2f} / {sv['2.0']:.2f} / "
                f"{sv['5.0']:.2f} | {sa['2.0']:.2f} | {r['false_objects_per_image_at_threshold']:.1f} | {clusters}{was} | "
                f"{at} | {r['n_visible']} of {r['n_calcifications']} |")

    out = ["## Real mammograms: leave one view out", "",
           "recompute with: `python -m mcgr.train.validate_real --fold VIEW=runs/lovo/VIEW/run/model ... --variant "
           "mcgr/weights/seg --out F.json` (fold models: `python -m mcgr.train.real --out runs/lovo/VIEW --hold-out VIEW "
           "--init START --steps 1200`)", "",
           "Each fold's model was fine-tuned without that view (neither its negatives nor its mined false detections); "
           "synthetic calcifications were injected into the held-out view with seeds never used in training. "
           "Sensitivity is read off the FROC over the visible calcifications (CNR >= 3) at 1 / 2 / 5 false objects per "
           "image; DoG: `mcgr.eval.baselines.dog_hessian` at its best threshold. In brackets: the texture-only start "
           "model on the same images (Dice / clusters on the view with nothing injected).", "",
           "Columns 2-7 at p >= 0.5; 'operating threshold' (chosen on the fold's three training views, nothing injected, "
           "by `operating_threshold`): Dice / visible sensitivity / false objects per image / clusters on the view with "
           "nothing injected.", "",
           "| held-out view | Dice | DoG best Dice | visible sens. @ 1 / 2 / 5 FP | all @ 2 FP | false objects / image "
           "| clusters, nothing injected | operating threshold | visible of injected |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in val.get("folds", []):
        out.append(row(f"{r['view']} ({r['file']})", r, prior.get(r["view"])))
    if val.get("variant"):
        b = (before or {}).get("variant")
        out.append(row("procedural variant (beta 3.6, coarse dense texture, anatomy)", val["variant"], b))
    if mining:
        out += ["", f"Hard-negative mining (`python -m mcgr.train.mine`, weights {mining['weights']}): "
                f"{mining['patches']} patches of {mining['patch']} px, at most {mining['per_image']} per image:", ""]
        out += [f"- {Path(i['source']).name}: {i['detections']} detections, {i['clusters']} clusters; kept "
                f"{i['kept']}, {i['guarded_as_spots']} left out as calcification-like spots" for i in mining["images"]]
    return out + [""]


def write_card(kind: str, run: Path, command: str, machine: str, figures: dict, eval_cmd: str) -> str:
    cfg = json.loads((run / "model" / "config.json").read_text())
    t = cfg["train"]
    bg = t["data"]["backgrounds"] or "procedural power-law texture (mcgr.synth, no real data)"
    wall = _wall_s(run)
    lines = [
        f"# mcgr {kind} weights", "",
        f"- produced by: `{command}`",
        f"- data: on-the-fly synthetic pairs (mcgr.synth.dataset.SynthPairs), backgrounds: {bg}; "
        f"patch {t['data']['patch_size']} px, batch {t['data']['batch_size']}, seed {t['seed']}",
        f"- steps: {t['optim']['steps']}; EMA: {cfg.get('ema')}; model: `{json.dumps(cfg['model'])}`",
        f"- wall time of the last segment (a resumed run restarts this clock): "
        f"{'n/a' if wall is None else f'{wall / 60:.1f} min'}",
        f"- machine: {machine}",
        "", "## Validation (held-out synthetic set, fixed seed)", "",
        f"recompute with: `{eval_cmd}`", "",
    ]
    if kind == "rf":
        lines += [
            "Rise of the frozen segmentor's probability at seeds, through projections at t0 0.5, N 4, "
            "M 4 (module doc of mcgr.train.evaluate). Headline figures: 64 px patches, the window in "
            "which TT-GPR runs the generator; `at_256px`: the same on 256 px patches. Issue 4 asks "
            "for a rise at faint true seeds and far less at decoys.", "",
        ]
    if kind == "seg":
        lines += seg_reading(figures)
    lines += ["```json", json.dumps(figures, indent=2), "```", ""]
    return "\n".join(lines)


def seg_reading(f: dict) -> list[str]:
    """The segmentor card's reading of its figures (issue 4's target beside the ideal observer)."""
    def sens(block: dict) -> str:
        if block.get("threshold_at_0.5fp") is None:
            return "no threshold up to 0.999 stays under 0.5 FP per patch"
        return (f"{block['sensitivity_at_0.5fp']:.3f} at p >= {block['threshold_at_0.5fp']:g} "
                f"({block['fp_per_patch_at_threshold']:.2f} FP per patch)")

    out = ["Reading (issue 4 asks for object sensitivity >= 0.90 at <= 0.5 false positives per 256 px patch):",
           f"strict rule (every unmatched component a false positive): {sens(f)}; LUNA16 rule (a second "
           f"component on a found calcification is not a false positive): {sens(f['duplicates_ignored'])} "
           "over all calcifications"]
    if "visible" in f:
        out[-1] += f", {sens(f['visible']['duplicates_ignored'])} over the visible ones (CNR >= 3)"
    out[-1] += "."
    if "found_at_0.5_by_cnr" in f:
        out.append("Found at p >= 0.5 by contrast-to-noise ratio: " + ", ".join(
            f"CNR {k} {v['found']:.2f} (n {v['n']})" for k, v in f["found_at_0.5_by_cnr"].items() if v["n"]) + ".")
    io = f.get("ideal_observer")
    if io:
        out += ["", "Yardstick (`ideal_observer`, mcgr.eval.observer): a prewhitening matched filter that knows each "
                "calcification's exact noise-free signal and searches its patch (clutter modelled as a Gaussian "
                "field with the patch's own spectrum) finds, at the same 0.5 false maxima per patch, "
                f"**{io['sensitivity_at_0.5fp']:.3f}** of all calcifications and "
                f"**{io['visible_sensitivity_at_0.5fp']:.3f}** of the visible ones (by CNR bin: " + ", ".join(
                    f"{k} {v['p_detect']:.2f}" for k, v in io["by_cnr"].items() if v["n"]) + "). It knows each "
                "calcification's shape, so it is optimistic for a detector; a target above its figure is "
                "beyond what the validation images hold."]
    return out + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcgr.train.ship", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("seg", "rf"))
    p.add_argument("run", type=Path, help="the training run's --out directory")
    p.add_argument("--command", default=None, help="the exact training command (default: mcgr train KIND --config default --out RUN)")
    p.add_argument("--machine", default=f"{platform.processor() or platform.machine()}, 2-core CPU dev box, torch threads 1")
    p.add_argument("--real", type=Path, default=None, help="mcgr.train.validate_real report for the card")
    p.add_argument("--before", type=Path, default=None, help="the same report for the start model")
    p.add_argument("--mining", type=Path, default=None, help="mcgr.train.mine report (hard.json) of the run")
    p.add_argument("--notes", type=Path, default=None, help="a Markdown file appended to the card (data mix, rounds)")
    p.add_argument("--operating-threshold", type=float, default=None,
                   help="seg: the probability threshold the pipeline uses with these weights (written to config.json)")
    a = p.parse_args(argv)
    src = a.run / "model"
    for f in ("model.safetensors", "config.json"):
        if not (src / f).is_file():
            print(f"{src / f}: missing (has the run finished?)", file=sys.stderr)
            return 2
    dst = WEIGHTS_DIR / a.kind
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("model.safetensors", "config.json"):
        shutil.copyfile(src / f, dst / f)
    if a.operating_threshold is not None:
        if not 0 < a.operating_threshold < 1:
            print(f"--operating-threshold must lie in (0, 1), got {a.operating_threshold}", file=sys.stderr)
            return 2
        cfg = json.loads((dst / "config.json").read_text())
        cfg["operating_threshold"] = a.operating_threshold
        write_model_config(cfg, dst)
    else:  # a run's config from before the hash was recorded gets it here
        write_model_config(json.loads((dst / "config.json").read_text()), dst)
    eval_cmd = f"python -m mcgr.train.evaluate {a.kind}"
    res = subprocess.run([sys.executable, "-m", "mcgr.train.evaluate", a.kind], capture_output=True, text=True)
    if res.returncode:
        print(res.stderr, file=sys.stderr)
        return res.returncode
    figures = json.loads(res.stdout)
    command = a.command or f"mcgr train {a.kind} --config default --out {a.run} --threads 1"
    card = write_card(a.kind, a.run, command, a.machine, figures, eval_cmd)
    if a.notes:
        card += "\n" + a.notes.read_text()
    if a.real:
        load = lambda f: json.loads(f.read_text()) if f else None  # noqa: E731
        card += "\n" + "\n".join(real_reading(load(a.real), load(a.before), load(a.mining)))
    (dst / "card.md").write_text(card)
    print(f"shipped {dst}: {json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
