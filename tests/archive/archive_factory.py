"""Small archives the `mcgr infer` tests write themselves: tiny random models, a folder of 300x250
mammograms in every format (NPY, PNG, DICOM with and without extension) plus one corrupted file,
and the expected outputs computed through the Python API (Pipeline + write_outputs), independently
of the CLI's archive machinery."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "io"))
from dicom_factory import breast_phantom, write_dicom  # noqa: E402

SPACING = 0.07
SHAPE = (300, 250)


def make_models(root: Path, seed: int = 0) -> Path:
    """``root/seg`` and ``root/rf``: random tiny U-Nets. The segmentor's output bias is lowered so
    a random net marks a few spots, not half the breast (a realistic detection count keeps the
    overlay and detection stages as cheap as on real data)."""
    from mcgr.models import UNet, save_model
    from mcgr.models.rf import generator_config
    from mcgr.models.segmentor import segmentor_config

    torch.manual_seed(seed)
    seg = UNet(segmentor_config(width=4, depth=2, groups=4))
    with torch.no_grad():
        seg.head.bias.fill_(-1.5)
    save_model(seg, root / "seg", "seg")
    save_model(UNet(generator_config(width=4, depth=2, groups=4)), root / "rf", "rf")
    return root


def make_folder(root: Path, n_extra: int = 0, seed: int = 0) -> dict:
    """Write the test archive into ``root``; returns ``{key: path}`` of the good inputs and
    ``{"bad": path}`` under the key ``"_bad"``.

    Layout: a.npy, sub/b.png, sub/c (DICOM, no extension), sub/deep/d.dcm (right breast, mirrored on
    reading), bad.dcm (a DICOM header whose pixel data is cut short), notes.txt (not an image),
    .hidden.npy (skipped), and ``n_extra`` more NPY files e0..en.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub" / "deep").mkdir(parents=True, exist_ok=True)
    good = {}
    np.save(root / "a.npy", breast_phantom(*SHAPE, 12, rng).astype(np.float32))
    good["a"] = root / "a.npy"
    Image.fromarray(breast_phantom(*SHAPE, 8, rng).astype(np.uint8)).save(root / "sub" / "b.png")
    good["sub/b"] = root / "sub" / "b.png"
    write_dicom(root / "sub" / "c", breast_phantom(*SHAPE, 12, rng), bits_stored=12)
    good["sub/c"] = root / "sub" / "c"
    write_dicom(root / "sub" / "deep" / "d.dcm", breast_phantom(*SHAPE, 12, rng, chest_wall="right"),
                bits_stored=12, laterality="R")
    good["sub/deep/d"] = root / "sub" / "deep" / "d.dcm"
    for i in range(n_extra):
        np.save(root / f"e{i}.npy", breast_phantom(*SHAPE, 12, rng).astype(np.float32))
        good[f"e{i}"] = root / f"e{i}.npy"
    write_dicom(root / "bad.dcm", breast_phantom(*SHAPE, 12, rng), bits_stored=12)
    data = (root / "bad.dcm").read_bytes()
    (root / "bad.dcm").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not a mammogram\n")
    np.save(root / ".hidden.npy", np.zeros((8, 8), np.float32))
    return {"good": good, "bad": root / "bad.dcm"}


def expected_outputs(models: Path, inputs: dict, out: Path, refine: bool = False, outputs=None) -> Path:
    """The outputs of each good input through the Python API: ``out/<key>/<stem>.*`` (``outputs``:
    the output set, default write_outputs' own)."""
    from mcgr.infer.pipeline import Pipeline
    from mcgr.io import write_outputs
    from mcgr.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = Pipeline(load_model(models / "seg", kind="seg"), load_model(models / "rf", kind="rf") if refine else None)
        for key, path in inputs.items():
            r = pipe(str(path), spacing=SPACING, refine=refine, canonical=True)  # write_outputs takes canonical arrays
            write_outputs(out / key, key.rsplit("/", 1)[-1], r.mammogram, r.prob, r.mask, r.detections, r.clusters,
                          uncertainty=r.uncertainty, excluded={"pectoral": r.pectoral},
                          **({} if outputs is None else {"outputs": outputs}))
    finally:
        torch.set_num_threads(threads)
    return out


def assert_same_result(got: Path, want: Path) -> None:
    """Every file of ``want`` exists in ``got`` with the same content (DICOM SEG: same pixels)."""
    names = sorted(p.name for p in want.iterdir() if not p.name.startswith("."))
    have = sorted(p.name for p in got.iterdir() if not p.name.startswith("."))
    assert have == names, (got, have, names)
    for n in names:
        if n.endswith(".seg.dcm"):
            import pydicom

            a, b = pydicom.dcmread(got / n), pydicom.dcmread(want / n)
            assert np.array_equal(a.pixel_array, b.pixel_array), f"{got / n}: segmentation pixels differ"
        elif n.endswith((".prob.png", ".uncertainty.png", ".npy")):
            from mcgr.io import read_prob_map

            a, b = read_prob_map(got / n), read_prob_map(want / n)
            assert a.shape == b.shape and np.array_equal(a, b), f"{got / n}: max |diff| {np.abs(a - b).max()}"
        elif n.endswith(".json"):
            g, w = json.loads((got / n).read_text()), json.loads((want / n).read_text())
            # the CLI also says which models and operating point produced the result; the API's writer
            # call here has no run to describe
            prov = g.pop("model", None)
            assert prov is None or set(prov) == {"models", "operating_point"}, prov
            assert g == w, f"{got / n} differs"
        else:
            assert (got / n).read_bytes() == (want / n).read_bytes(), f"{got / n} differs"


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


def leftovers(out: Path) -> list[str]:
    """Temporary files or staged folders anywhere under ``out`` (a finished run leaves none)."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(out):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if n.endswith(".tmp") or ".tmp" in n or (n == ".mcgr-staging" and os.listdir(p)):
                bad.append(os.path.relpath(p, out))
    return bad
