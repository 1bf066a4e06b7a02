"""The Python API checks its inputs as the file path does, before any compute: types, dtypes, sizes,
grid and memory, spacing, seeds; and the backend asked for (argument or MCGR_BACKEND)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from archive_factory import make_models
from dicom_factory import breast_phantom

from mcgr._backends import BackendError
from mcgr.infer.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from mcgr.models import load_model

    root = make_models(tmp_path_factory.mktemp("models"))
    return Pipeline(load_model(root / "seg", kind="seg"), None)


def _image(seed=0):
    return torch.from_numpy(breast_phantom(64, 48, 12, np.random.default_rng(seed)).astype(np.float32) / 4095)


@pytest.mark.parametrize("spacing,exc,match", [
    (True, TypeError, "spacing must be a number"), (float("inf"), ValueError, "within"),
    (float("nan"), ValueError, "within"), (0.0, ValueError, "within"), ("0.07", TypeError, "spacing must be a number"),
    (2.0, ValueError, "model grid|available"),  # fine, but 64 x 48 px at 2 mm is no mammogram grid: see below
])
def test_bad_spacings_are_refused_before_compute(pipe, spacing, exc, match):
    img = _image()
    if spacing == 2.0:  # within range: refused only for its grid, as the file path refuses it
        img = torch.zeros(8000, 300)
        img[0, 0] = 1.0
    with pytest.raises(exc, match=match):
        pipe.prepare(img, spacing=spacing)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: torch.zeros(0, 0), ValueError, "each side"),
    (lambda: torch.zeros(64, 48, device="meta"), ValueError, "meta tensor"),
    (lambda: _image() > 0.5, TypeError, "boolean mask"),
    (lambda: _image().to(torch.complex64), TypeError, "real numbers"),
    (lambda: _image()[None], ValueError, r"\[H, W\]"),
    (lambda: 0.5, TypeError, "array or a path"),
])
def test_bad_images_are_refused_with_one_line(pipe, make, exc, match):
    with pytest.raises(exc, match=match):
        pipe.prepare(make(), spacing=0.07)


def test_an_image_that_requires_grad_runs_as_its_detached_copy(pipe):
    img = _image(1)
    want = pipe(img.clone(), spacing=0.07, refine=False)
    got = pipe(img.clone().requires_grad_(True), spacing=0.07, refine=False)
    assert not got.prob.requires_grad
    torch.testing.assert_close(got.prob, want.prob, rtol=0, atol=0)


@pytest.mark.parametrize("seeds", [np.zeros((2, 3)), np.zeros(5), np.array([["a", "b"]]), np.zeros((1, 2), complex)])
def test_seeds_must_be_k_by_2_numbers(pipe, seeds):
    prep = pipe.prepare(_image(2), spacing=0.07)
    with pytest.raises(ValueError, match=r"\[K, 2\]"):
        pipe.network(prep, refine=False, seeds=seeds)


@pytest.mark.parametrize("env", ["cuda", "bogus"])
def test_a_backend_that_cannot_run_is_refused_when_the_pipeline_is_made(pipe, monkeypatch, env):
    if env == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the cuda backend may run")
    monkeypatch.setenv("MCGR_BACKEND", env)
    with pytest.raises(BackendError, match="MCGR_BACKEND"):
        Pipeline(pipe.seg, None, device="cpu")
