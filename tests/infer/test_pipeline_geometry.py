"""The pipeline's grids go through one FieldGeometry and one resampler: the canvas, the seeds and the
projector's origins where the geometry puts them, the outputs mapped back by mcgr.io.resample, and
finish leaving the network's result as it was."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from archive_factory import make_models
from helpers import spy_run_field_seeds

from mcgr import MODEL_SPACING_MM
from mcgr.infer.pipeline import Pipeline
from mcgr.infer.ttgpr import TTGPRConfig
from mcgr.io import resample, resample_mask
from mcgr.models import load_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = make_models(tmp_path_factory.mktemp("models"))
    return load_model(root / "seg", kind="seg"), load_model(root / "rf", kind="rf")


def _image(shape=(129, 101), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(1, 1, *shape, generator=g), 5, 1, 2)[0, 0]


@pytest.mark.parametrize("mm", (0.05, 0.1))
def test_the_canvas_is_the_input_through_the_one_resampler_and_padded(models, mm):
    seg, gen = models
    img = _image()
    breast = torch.zeros(129, 101, dtype=torch.bool)
    breast[10:120, :80] = True
    pipe = Pipeline(seg, gen, autocast=False, border_pad=32)
    prep = pipe.prepare(img, spacing=mm, breast_mask=breast)
    geo = prep.geometry
    mode = "area" if mm < MODEL_SPACING_MM else "linear"
    model = resample(img, mm, MODEL_SPACING_MM, mode, out_shape=geo.model_shape)
    assert tuple(prep.x.shape) == geo.canvas_shape and geo.pad == prep.pad == 32
    assert torch.equal(prep.x[32:-32, 32:-32], model)
    np.testing.assert_array_equal(prep.x.numpy(), np.pad(model.numpy(), 32, mode="reflect"))
    assert torch.equal(prep.seed_region[32:-32, 32:-32], prep.keep) and not bool(prep.seed_region[:32].any())
    # the breast mask given on the input's grid reaches the model grid as resample_mask puts it
    want_bm = resample_mask(breast.numpy(), mm, MODEL_SPACING_MM, out_shape=geo.model_shape)
    assert np.array_equal(prep.bm.numpy(), want_bm)
    assert (prep.src_shape, prep.model_shape, prep.spacing) == (geo.source_shape, geo.model_shape, mm)


def test_given_seeds_land_on_the_canvas_at_the_closed_form(models, monkeypatch):
    """0.05 mm: not a whole ratio of the model's 0.07 mm. Source pixel c sits at (c + 0.5) 0.05 mm,
    so at (c + 0.5) * 0.05 / 0.07 - 0.5 model px, plus the 32 px border on the canvas."""

    seg, gen = models
    seen = spy_run_field_seeds(monkeypatch)
    cfg = TTGPRConfig(projections=1, steps=1, refine_steps=1, window=32)
    pipe = Pipeline(seg, gen, config=cfg, autocast=False, border_pad=32)
    pts = np.array([[10.0, 20.0], [128.0, 0.0], [64.0, 100.0], [0.0, 33.0]])
    pipe(_image(), spacing=0.05, seeds=pts, breast_mask=torch.ones(129, 101, dtype=torch.bool))
    want = (pts + 0.5) * 0.05 / 0.07 - 0.5
    mh, mw = round(129 * 0.05 / 0.07), round(101 * 0.05 / 0.07)
    want = np.clip(want, 0, [mh - 1, mw - 1]) + 32
    np.testing.assert_allclose(seen["seeds"].numpy(), want, atol=1e-5)


def _copy(fr):
    return {f.name: (getattr(fr, f.name).clone() if isinstance(getattr(fr, f.name), torch.Tensor)
                     else dict(getattr(fr, f.name)) if isinstance(getattr(fr, f.name), dict) else getattr(fr, f.name))
            for f in dataclasses.fields(fr)}


@pytest.mark.parametrize("mm", (0.05, 0.07))
def test_finish_returns_a_new_result_and_leaves_its_arguments_alone(models, mm):
    seg, gen = models
    cfg = TTGPRConfig(tau_seed=0.05, projections=2, steps=1, refine_steps=1, window=32)
    pipe = Pipeline(seg, gen, config=cfg, autocast=False, border_pad=32)
    prep = pipe.prepare(_image(), spacing=mm, breast_mask=torch.ones(129, 101, dtype=torch.bool))
    fr = pipe.network(prep, refine=True)
    assert fr.uncertainty is not None
    before, x_before, timings_before = _copy(fr), prep.x.clone(), dict(prep.timings)
    res = pipe.finish(prep, fr)
    for name, was in before.items():
        now = getattr(fr, name)
        if isinstance(was, torch.Tensor):
            assert now.shape == was.shape and torch.equal(now, was), f"finish changed fr.{name}"
        else:
            assert now == was or now is was, f"finish changed fr.{name}: {was!r} -> {now!r}"
    assert torch.equal(prep.x, x_before) and prep.timings == timings_before
    # and the same again: finish is a function of its arguments
    again = pipe.finish(prep, fr)
    assert again is not res and torch.equal(again.prob, res.prob) and torch.equal(again.mask, res.mask)
    # the maps come back on the input's grid through the one resampler
    geo = prep.geometry
    keep = prep.keep.float()
    crop = fr.logits[32:-32, 32:-32]
    want = resample(torch.sigmoid(crop) * keep, MODEL_SPACING_MM, mm, "linear", out_shape=(129, 101)).clamp(0, 1)
    assert tuple(res.prob.shape) == (129, 101) and torch.equal(res.prob, want)
    assert torch.equal(res.breast_mask, geo.mask_to_source(prep.bm))


def test_a_flipped_file_gives_seeds_and_outputs_in_its_own_orientation(models, tmp_path, monkeypatch):
    """A right breast is mirrored on reading: seeds given in the file's pixels are mirrored onto the
    canonical source grid, and the outputs mirrored back."""
    from dicom_factory import breast_phantom, write_dicom

    seg, gen = models
    img = breast_phantom(96, 80, 12, np.random.default_rng(0), chest_wall="right")
    path = write_dicom(tmp_path / "r.dcm", img, laterality="R", pixel_spacing=0.07)
    seen = spy_run_field_seeds(monkeypatch)
    pipe = Pipeline(seg, gen, config=TTGPRConfig(projections=1, steps=1, refine_steps=1, window=32), autocast=False,
                    border_pad=8)
    res = pipe(str(path), seeds=[[10.0, 70.0]])
    assert res.mammogram.flipped and res.orientation == "source"
    np.testing.assert_allclose(seen["seeds"].numpy(), [[10.0 + 8, (79 - 70.0) + 8]], atol=1e-5)
    canon = pipe(str(path), seeds=[[10.0, 70.0]], canonical=True)
    assert canon.orientation == "canonical"
    np.testing.assert_allclose(seen["seeds"].numpy(), [[10.0 + 8, 70.0 + 8]], atol=1e-5)
    assert torch.equal(res.breast_mask, canon.breast_mask.flip(-1))
