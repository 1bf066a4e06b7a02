"""The evaluator's per-image rows against independent computations, and `mcgr eval` end to end
(synthetic set with tiny random models; a folder dataset with a missing and a mismatched truth)."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix

from mcgr.cli import main
from mcgr.eval.report import EvalSettings, Evaluator


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_evaluator_rows_match_independent_counts():
    rng = np.random.default_rng(0)
    shape = (64, 72)
    truth = disk(shape, 10, 10, 2) | disk(shape, 40, 50, 3) | disk(shape, 55, 12, 2)
    prob = np.zeros(shape, np.float32)
    prob[disk(shape, 10, 11, 2)] = 0.9       # hits the first
    prob[disk(shape, 40, 50, 2)] = 0.6       # hits the second
    prob[disk(shape, 25, 60, 2)] = 0.7       # a false positive
    prob += (rng.random(shape) * 0.3).astype(np.float32)
    prob = np.clip(prob, 0, 1)
    breast = np.zeros(shape, bool)
    breast[:, :60] = True
    ev = Evaluator(["m"], EvalSettings(threshold=0.5, n_boot=200))
    row = ev.add("c0", "s", "m", prob, truth, 0.1, breast=breast, image=prob)
    pred = prob >= 0.5
    tn, fp, fn, tp = confusion_matrix(truth.ravel(), pred.ravel(), labels=[False, True]).ravel()
    assert row["dice_image"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    tn, fp, fn, tp = confusion_matrix(truth[breast], pred[breast], labels=[False, True]).ravel()
    assert row["dice_breast"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert row["specificity_breast"] == pytest.approx(tn / (tn + fp))
    assert (row["n_truth"], row["tp"], row["fn"], row["fp"]) == (3, 2, 1, 1)
    assert row["breast_cm2"] == pytest.approx(breast.sum() * 0.01 / 100)
    assert row["fp_per_cm2"] == pytest.approx(1 / row["breast_cm2"])
    g = ev.group_summary("m")
    assert g["objects"]["sensitivity"] == pytest.approx(2 / 3)
    assert g["froc"]["thresholds"] == list(EvalSettings().froc_thresholds)
    # gallery: the missed calcification and the false positive, centred in their crops
    (miss,) = ev.gallery("m", "miss")
    assert miss.yx == pytest.approx((55, 12)) and miss.truth[24, 24]
    fps = ev.gallery("m", "fp")
    assert fps[0].score == pytest.approx(float(prob[disk(shape, 25, 60, 2)].max()))
    with pytest.raises(ValueError, match="differ"):
        ev.add("c1", "s", "m", prob[:, :-1], truth, 0.1)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ev.add("c1", "s", "m", prob * 2, truth, 0.1)


def test_duplicates_are_counted_beside_the_strict_false_positives():
    shape = (64, 64)
    truth = np.zeros(shape, bool)
    truth[10:13, 10:30] = True                 # a linear calcification, 20 px long
    prob = np.zeros(shape, np.float32)
    prob[10:13, 18:22] = 0.9                   # its centre: matched
    prob[10:13, 10:14] = 0.9                   # two fragments: not admissible, but on it
    prob[10:13, 26:30] = 0.9
    prob[50, 50] = 0.9                         # a false positive anywhere
    ev = Evaluator(["m"], EvalSettings(threshold=0.5, n_boot=50))
    row = ev.add("c0", "s", "m", prob, truth, 0.07)
    assert (row["tp"], row["fp"]) == (1, 3)
    o = ev.group_summary("m")["objects"]
    assert o["fp_per_image"] == 3 and o["duplicates_per_image"] == 2
    from mcgr.eval.report import _markdown_group

    md = "\n".join(_markdown_group([("m", ev.group_summary("m"))], "All"))
    assert "duplicates not counted" in md and "| 3.00 | 1.00 |" in md


def _tiny_models(root):
    from mcgr.models import UNet, save_model
    from mcgr.models.rf import generator_config
    from mcgr.models.segmentor import segmentor_config

    torch.manual_seed(0)
    seg = UNet(segmentor_config(width=4, depth=2, groups=4))
    gen = UNet(generator_config(width=4, depth=2, groups=4, time_dim=16))
    with torch.no_grad():
        seg.head.bias -= 2.0  # a random net answers ~0.3 everywhere; fewer components keep the test quick
    save_model(seg, root / "seg", "seg")
    save_model(gen, root / "rf", "rf")


def test_eval_synthetic_writes_the_report(tmp_path, capsys):
    _tiny_models(tmp_path / "models")
    out = tmp_path / "report"
    rc = main(["eval", "--synthetic", "2", "--size", "384x320", "--models", str(tmp_path / "models"), "--out", str(out),
               "--ttgpr", "iterations=1,projections=1,steps=1", "--quiet"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    for name in ("report.json", "report.md", "per_image.csv", "froc.png", "gallery.png"):
        assert (out / name).is_file(), name
    rep = json.loads((out / "report.json").read_text())
    assert rep["methods"] == ["base", "ttgpr", "dog", "tophat"]
    assert rep["subsets"] == ["faint", "regular"] and rep["evaluated"] == 2 and rep["failures"] == []
    assert rep["command"].startswith("mcgr eval --synthetic 2 --seed 0 --size 384x320")
    for m in rep["methods"]:
        g = rep["results"][m]["all"]
        assert g["images"] == 2
        assert set(g["pixel"]) == {"breast", "image"}
        for region in ("breast", "image"):
            assert set(g["pixel"][region]["micro"]) >= {"dice", "iou", "precision", "recall", "fnr", "specificity",
                                                        "balanced_accuracy", "g_mean"}
            assert set(g["pixel"][region]["macro"]["dice"]) == {"mean", "std", "ci95", "n"}
        assert set(g["objects"]) >= {"sensitivity", "fp_per_image", "fp_per_cm2"}
        assert set(g["froc"]["at_rates"]) == {"0.25", "0.5", "1.0", "2.0", "4.0"}
        assert "mean_sensitivity" in g["froc"] and set(g["clusters"]) >= {"sensitivity", "fp_per_image"}
        assert [rep["results"][m]["subsets"][s]["images"] for s in ("regular", "faint")] == [1, 1]
    with open(out / "per_image.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and {r["method"] for r in rows} == set(rep["methods"])
    assert {r["subset"] for r in rows} == {"regular", "faint"}
    # a case's truth count does not depend on the method
    assert len({(r["case"], r["n_truth"]) for r in rows}) == 2
    md = (out / "report.md").read_text()
    assert "## All cases" in md and "## Subset: faint" in md and "## Subset: regular" in md and "FROC@0.25" in md
    for name in ("froc.png", "gallery.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    # a second run into the same folder needs --force
    rc = main(["eval", "--synthetic", "1", "--size", "128x128", "--methods", "dog", "--out", str(out), "--quiet"])
    assert rc == 1 and "--force" in capsys.readouterr().err


def test_eval_folder_counts_missing_and_mismatched_truths(tmp_path, capsys):
    from mcgr.synth.phantom import breast_phantom

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        ph = breast_phantom(160, 144, seed=i)
        Image.fromarray((ph.image.numpy() * 65535).astype(np.uint16)).save(data / f"case{i}.png")
        truth = ph.truth.numpy()
        if i == 1:
            truth = truth[:, :-4]  # wrong size: counted as a failed case
        if i != 2:                 # case2 has no truth file: skipped and counted
            Image.fromarray(truth.astype(np.uint8) * 255).save(data / f"case{i}.mask.png")
    out = tmp_path / "report"
    rc = main(["eval", "--dataset", "folder", str(data), "--spacing", "0.07", "--methods", "dog,tophat", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["evaluated"] == 1
    assert [f["case"] for f in rep["failures"]] == ["case1"] and "does not match" in rep["failures"][0]["error"]
    assert rep["dataset"]["skipped"] == [{"id": "case2", "reason": "missing truth file case2.mask.png"}]
    md = (out / "report.md").read_text()
    assert "case1" in md and "case2: missing truth file" in md
    rc = main(["eval", "--dataset", "folder", str(data), "--spacing", "0.07", "--methods", "dog", "--strict",
               "--out", str(tmp_path / "r2"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "case2.mask.png" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, msg", [
    (["--synthetic", "1", "--methods", "dog,magic"], "methods must be"),
    (["--dataset", "folder", "x", "--size", "256x256"], "--size applies to --synthetic only"),
    (["--dataset", "mias", "x"], "KIND must be one of"),
    (["--synthetic", "1", "--size", "64x64"], "both sides >= 128"),
    (["--synthetic", "1", "--ttgpr", "nonsense=1"], "--ttgpr"),
])
def test_eval_bad_arguments(tmp_path, capsys, argv, msg):
    rc = main(["eval", *argv, "--out", str(tmp_path / "o"), "--models", str(tmp_path / "none"), "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and msg in err and "Traceback" not in err


def test_eval_without_matplotlib_does_not_claim_froc_png(tmp_path, capsys, monkeypatch):
    """matplotlib is optional for a user: without it the report says froc.png was not written, and so does the CLI."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "report"
    rc = main(["eval", "--synthetic", "1", "--size", "192x160", "--methods", "dog", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert not (out / "froc.png").exists()
    wrote = next(line for line in printed.splitlines() if line.startswith("wrote "))
    assert "froc.png" not in wrote and "gallery.png" in wrote and "report.json" in wrote
    assert "froc.png not written: matplotlib is not installed" in printed
    assert "(froc.png not written: matplotlib is not installed)" in (out / "report.md").read_text()
