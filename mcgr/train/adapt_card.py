"""The model cards ``mcgr adapt`` writes beside the adapted weights (``OUT/seg/card.md``, ``OUT/rf/card.md``)."""
from __future__ import annotations

import json
import platform
from pathlib import Path

TARGETS = (("visible", 2.0, 0.80), ("visible", 10.0, 0.90))


def _f(v) -> str:
    return "-" if v is None or v != v else f"{v:.2f}"


def froc_table(pooled: dict, injector: str) -> list[str]:
    t = pooled["table"][injector]
    rates = list(t["adapted"]["all"]["at_rates"])
    crates = list(t["adapted"]["clusters"]["at_rates"])
    head = ("| method | " + " | ".join(f"all @ {r}" for r in rates) + " | " + " | ".join(f"visible @ {r}" for r in rates)
            + " | " + " | ".join(f"clusters @ {r}" for r in crates) + " |")
    out = [head, "|---" * (1 + 2 * len(rates) + len(crates)) + "|"]
    for m, name in (("adapted", "adapted (fold models)"), ("start", "start (procedural only)"), ("dog", "DoG + Hessian")):
        f = t[m]
        out.append(f"| {name} | " + " | ".join(_f(f["all"]["at_rates"][r]) for r in rates) + " | "
                   + " | ".join(_f(f["visible"]["at_rates"][r]) for r in rates) + " | "
                   + " | ".join(_f(f["clusters"]["at_rates"][r]) for r in crates) + " |")
    a = t["adapted"]
    out.append("")
    out.append(f"{a['n_images']} injected images; {a['n_truth']['all']} calcifications ({a['n_truth']['visible']} visible), "
               f"{a['n_clusters']} clusters. Rates: false objects per image (calcifications), false clusters per image (clusters).")
    return out


def targets(pooled: dict) -> list[str]:
    t = pooled["table"]["independent"]
    out = []
    for kind, rate, goal in TARGETS:
        v = t["adapted"][kind]["at_rates"][str(rate)]
        out.append(f"- {kind} calcifications found at {rate:g} false objects per image: {_f(v)} (target {goal:.2f}"
                   f"{'' if v >= goal else f', short by {goal - v:.2f}'})")
    c = t["adapted"]["clusters"]["at_rates"]["0.2"]
    out.append(f"- clusters found at 0.2 false clusters per image: {_f(c)} (target 0.90{'' if c >= 0.9 else f', short by {0.9 - c:.2f}'})")
    worse = [r for r in t["adapted"]["all"]["at_rates"]
             if t["adapted"]["all"]["at_rates"][r] < t["start"]["all"]["at_rates"][r]]
    out.append("- adapted not below the start model at any listed rate (all calcifications): "
               + ("yes" if not worse else f"no, below it at {', '.join(worse)} false objects per image"))
    return out


def write_cards(out: Path, state: dict, site: dict, pooled: dict | None, plan, fp_per_image: float, init: str) -> None:
    st = state["stages"]
    items = state["identity"]["inputs"]
    cmd = state.get("command") or (f"mcgr adapt IMAGES --out {out.name}"
                                   + ("" if fp_per_image == 1.0 else f" --fp-per-image {fp_per_image:g}")
                                   + ("" if init == "start" else f" --init {init}"))
    walls = ", ".join(f"{k} {v['wall_s'] / 60:.1f} min" for k, v in st.items())
    hv = st.get("harvest", {}).get("summary", {})
    mine = st.get("mine", {}).get("summary", {})
    common = [
        f"- produced by: `{cmd}` ({len(items)} images: {', '.join(i['key'] for i in items[:12])}"
        f"{' ...' if len(items) > 12 else ''})",
        f"- start: `{init}` (mcgr/weights/start: the procedural-only pair)" if init == "start" else f"- start: `{init}`",
        f"- schedule: `{json.dumps(plan.__dict__ if hasattr(plan, '__dict__') else plan)}`",
        f"- wall time per stage: {walls}",
        f"- machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs",
        f"- harvest: {hv.get('windows', 0)} windows of 256 px; the spot guard refused {hv.get('spot_guard_rejected', 0)} "
        f"windows inside the breast ({100 * hv.get('spot_guard_rate', 0):.1f} %): a calcification-like spot in a "
        "window keeps it out of training",
        f"- site (mcgr.train.site): PSF sigma {site['psf_sigma_px']:.2f} px at 0.07 mm (MTF at Nyquist "
        f"{site['mtf_nyquist']:.2f}; spread over images {site['psf_spread_px']:.2f} px), noise var = "
        f"{site['noise_a']:.3g} + {site['noise_b']:.3g} x level (sd {site['noise_std_at_median']:.4f} at the median level), "
        f"presentation: {json.dumps(site['presentation'])}; injection PSF range {site['inject_ranges']['psf_sigma']}",
        f"- mining: {mine.get('patches', 0)} hard negatives from the start segmentor's false detections on "
        f"{len(mine.get('images', []))} images (" + ", ".join(
            f"{Path(i['source']).name}: {i['detections']} detections, kept {i['kept']}, {i['guarded_as_spots']} left out as spots"
            for i in mine.get("images", [])[:8]) + ")",
    ]
    val = ["## Validation: leave images out", ""]
    if pooled is None:
        val += ["Not validated: a single image cannot be held out. Give two or more images (eight or more for a "
                "validation worth its name). The operating threshold is the default 0.99.", ""]
    else:
        op = pooled["operating"]
        val += [f"Fold models: the segmentor fine-tuned without the held-out images for {plan.fold_schedule} steps "
                f"(the written model's: {plan.seg_steps}"
                + ("; a shorter fold schedule understates the model: on one measured fold 600 steps found "
                   "0.09 at 5 false objects per image where 2000 found 0.27" if plan.fold_schedule < plan.seg_steps else "")
                + "); calcifications injected with unseen seeds "
                f"({plan.injections} draws per image and injector); read off the pooled FROC of every fold "
                "(mcgr.train.adapt_validate). Visible: contrast-to-noise >= 3.", "",
                "### Independent injector (mcgr.eval.independent: other shapes, profile, blur and contrast laws)", ""]
        val += froc_table(pooled, "independent")
        val += ["", "### Training injector (the image formation model that trained the segmentor)", ""]
        val += froc_table(pooled, "training")
        val += ["", f"Operating threshold for {fp_per_image:g} false objects per image (independent injector): "
                f"**{op['threshold']:g}** (measured {op['fp_per_image']:.2f} false objects per image, "
                f"{op['sensitivity_all']:.2f} of all and {op['sensitivity_visible']:.2f} of visible calcifications). "
                "`mcgr infer --fp-per-image X` picks another point of this curve:", "",
                "| false objects / image | " + " | ".join(f"{p['fp_per_image']:g}" for p in pooled["operating_points"]["points"]) + " |",
                "|---" * (1 + len(pooled["operating_points"]["points"])) + "|",
                "| threshold | " + " | ".join(f"{p['threshold']:g}" for p in pooled["operating_points"]["points"]) + " |",
                "", "Targets (independent injector):", ""] + targets(pooled) + [""]
    mix = st.get("seg", {}).get("summary", {}).get("mix")
    if mix:
        common.append(f"- segmentor's training mix: {100 * mix['hard_fraction']:.0f} % of patches cut around mined false "
                      f"detections (each pixel weighing {mix['hard_weight']:g}x), of the rest {100 * mix['real_fraction']:.0f} % "
                      f"the site's windows (site augmentation: {bool(mix['augment'])}) and the others procedural texture; "
                      f"anatomy drawn into {100 * mix['anatomy']:.0f} %; {100 * mix['mc_free_fraction']:.0f} % with "
                      f"nothing injected; patch {mix['patch_size']} px, batch {mix['batch_size']}")
    seg = ["# mcgr seg weights (adapted by `mcgr adapt`)", ""] + common + [
        f"- segmentor: preset `real` from the start, {plan.seg_steps} steps (site augmentation, anatomy, hard negatives "
        "weighted 4x, injection with the site's PSF)", ""] + val
    rf = ["# mcgr rf weights (adapted by `mcgr adapt`)", ""] + common + [
        f"- generator: preset `adapt` from the start, {plan.rf_steps} steps: the site's windows (three quarters of "
        "the patches), a decoy seed at each mined false detection and on bright texture", "",
        "The generator is not fold-trained: its acceptance at true against decoy seeds is measured by "
        "`python -m experiments.seed_recall`.", ""]
    (out / "seg" / "card.md").write_text("\n".join(seg) + "\n")
    (out / "rf" / "card.md").write_text("\n".join(rf) + "\n")
