"""The API and the CLI give one answer for one file: same detections, arrays in the file's
orientation, x_mm with one meaning; a tensor and the same array saved as .npy give the same result."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from archive_factory import SPACING, make_folder, make_models

from mcgr.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    models = make_models(root / "models")
    inputs = make_folder(root / "in")["good"]
    out = root / "out"
    args = ["infer", *map(str, inputs.values()), "--out", str(out), "--spacing", str(SPACING), "--models",
            str(models), "--device", "cpu", "--no-refine", "--threads", "1", "--quiet", "--save-prob"]
    assert main(args) == 0
    from mcgr.infer.pipeline import Pipeline
    from mcgr.models import load_model

    pipe = Pipeline(load_model(models / "seg", kind="seg"), None)
    return {"inputs": inputs, "out": out, "pipe": pipe}


@pytest.mark.parametrize("key", ["a", "sub/b", "sub/c", "sub/deep/d"])  # NPY, PNG, DICOM left, DICOM right
def test_api_and_cli_agree(run, key):
    torch.set_num_threads(1)
    res = run["pipe"](str(run["inputs"][key]), spacing=SPACING, refine=False)
    stem = key.rsplit("/", 1)[-1]
    folder = run["out"] / stem  # files given one by one: one result folder per file name
    doc = json.loads((folder / f"{stem}.json").read_text())
    from mcgr.io import read_prob_map

    prob = read_prob_map(folder / f"{stem}.prob.png")  # 16-bit: every value within half a step
    assert res.orientation == "source" and doc["flipped"] == (key == "sub/deep/d")
    assert prob.shape == tuple(res.prob.shape)
    assert np.abs(prob - res.prob.numpy()).max() <= doc["maps"]["prob"]["scale"] / 2 + 1e-7
    assert doc["model_spacing_mm"] == 0.07
    api, cli = res.detections, doc["detections"]
    assert len(api) == len(cli) == doc["n_detections"]
    for d, r in zip(sorted(api, key=lambda d: (d["y"], d["x"])), sorted(cli, key=lambda r: (r["row"], r["col"]))):
        assert (d["y"], d["x"]) == pytest.approx((r["row"], r["col"]), abs=0.011)
        assert (d["y_mm"], d["x_mm"]) == pytest.approx((r["y_mm"], r["x_mm"]), abs=0.0011)
        assert d["peak_prob"] == r["peak_prob"] and d["area_mm2"] == pytest.approx(r["area_mm2"], abs=1e-4)
        assert d["morphology"] == r["morphology"] and d["length_mm"] == pytest.approx(r["length_mm"], abs=1e-3)
    assert len(res.clusters) == doc["n_clusters"]
    for c, r in zip(res.clusters, doc["clusters"]):
        assert c["extent_mm"] == r["extent_mm"] and c["compact"] == r["compact"] and c["n"] == r["n"]
    can = run["pipe"](str(run["inputs"][key]), spacing=SPACING, refine=False, canonical=True)
    want = res.prob.flip(-1) if doc["flipped"] else res.prob
    assert can.orientation == "canonical" and torch.equal(can.prob, want)


def test_tensor_and_npy_of_one_array_agree(run, tmp_path):
    from dicom_factory import breast_phantom

    a = breast_phantom(300, 250, 12, np.random.default_rng(3)).astype(np.float32) / 4095.0
    np.save(tmp_path / "x.npy", a)
    r1 = run["pipe"](torch.from_numpy(a), spacing=SPACING, refine=False)
    r2 = run["pipe"](str(tmp_path / "x.npy"), spacing=SPACING, refine=False)
    assert torch.equal(r1.prob, r2.prob) and r1.detections == r2.detections


def test_seeds_are_in_the_orientation_results_come_back_in(run):
    """On the right-breast DICOM (mirrored on reading), a seed at file column c and the canonical
    call's seed at W - 1 - c reach the projector at the same place of the canvas."""
    path = str(run["inputs"]["sub/deep/d"])
    w = 250  # the file's columns
    seen = {}

    def capture(name):
        def projector(windows, origins, seeds):
            seen.setdefault(name, []).extend(
                (float(y0 + s[0, 0]), float(x0 + s[0, 1])) for (y0, x0), s in zip(origins, seeds))
            return windows[None]
        return projector

    r, c = 150.0, 200.0  # in the file as stored: the breast is against the right edge
    run["pipe"](path, spacing=SPACING, seeds=[(r, c)], projector=capture("source"))
    run["pipe"](path, spacing=SPACING, seeds=[(r, w - 1 - c)], projector=capture("canonical"), canonical=True)
    assert seen["source"] and seen["source"] == seen["canonical"]
