"""SynthPairs and validation_set: shapes, mask/centre consistency, worker-count independence,
MC-free patches, real-background crops (found again in the source by brute-force search)."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mcgr.synth.dataset import SynthPairs, batch_seed, validation_set

QUIET = {"noise": (0.0, 0.0)}


def test_batch_shapes_ranges_and_index():
    ds = SynthPairs(patch_size=48, batch_size=3, seed=4, num_batches=2, inject_ranges=QUIET)
    b = ds.batch(1)
    for key in ("image", "mask", "background"):
        assert b[key].shape == (3, 1, 48, 48) and b[key].dtype == torch.float32, key
    assert float(b["image"].min()) >= 0 and float(b["image"].max()) <= 1
    assert set(torch.unique(b["mask"]).tolist()) <= {0.0, 1.0}
    assert torch.equal(b["index"], torch.tensor([3, 4, 5]))
    assert len(b["centres"]) == 3 and all(c.dtype == torch.float32 and c.shape[1] == 2 for c in b["centres"])
    # calcifications only add attenuation: without noise the image never falls below its background
    assert bool((b["image"] >= b["background"] - 1e-6).all())
    assert len(ds) == 2


def test_each_centre_pixel_is_in_the_mask_and_mask_is_near_centres():
    ds = SynthPairs(patch_size=64, batch_size=4, seed=9, mc_free_fraction=0.0)
    b = ds.batch(0)
    total = 0
    for i, c in enumerate(b["centres"]):
        m = b["mask"][i, 0]
        ij = torch.floor(c + 0.5).long()
        assert bool((ij >= 0).all()) and bool((ij < 64).all())
        assert bool((m[ij[:, 0], ij[:, 1]] == 1).all()), f"patch {i}: a centre's pixel is outside the mask"
        total += len(c)
        # every mask pixel lies within the largest calcification radius (0.35 mm = 5 px) of some centre
        yx = m.nonzero().float()
        if len(yx):
            d = torch.cdist(yx, c).amin(dim=1)
            assert float(d.max()) <= 0.35 / 0.07 + 1.0
        else:
            assert len(c) == 0
    assert total > 0


def test_mc_free_patches_have_empty_masks():
    ds = SynthPairs(patch_size=32, batch_size=4, seed=1, mc_free_fraction=1.0, inject_ranges=QUIET)
    b = ds.batch(0)
    assert float(b["mask"].sum()) == 0 and all(len(c) == 0 for c in b["centres"])
    assert torch.equal(b["image"], b["background"])
    ds = SynthPairs(patch_size=32, batch_size=16, seed=2, mc_free_fraction=0.5)
    b = ds.batch(0)
    empty = [i for i, c in enumerate(b["centres"]) if len(c) == 0]
    assert 0 < len(empty) < 16
    for i in empty:
        assert float(b["mask"][i].sum()) == 0


def _collect(loader):
    return [b for b in loader]


def test_worker_count_does_not_change_the_stream():
    ds = SynthPairs(patch_size=32, batch_size=2, seed=3, num_batches=3)
    a = _collect(DataLoader(ds, batch_size=None, num_workers=0))
    b = _collect(DataLoader(ds, batch_size=None, num_workers=2))
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for key in ("image", "mask", "background", "index"):
            assert torch.equal(x[key], y[key]), key
        assert all(torch.equal(p, q) for p, q in zip(x["centres"], y["centres"]))
    assert torch.equal(torch.cat([x["index"] for x in a]), torch.arange(6))


def test_same_seed_same_batches_different_seed_different():
    a = SynthPairs(patch_size=32, batch_size=2, seed=5).batch(0)
    b = SynthPairs(patch_size=32, batch_size=2, seed=5).batch(0)
    c = SynthPairs(patch_size=32, batch_size=2, seed=6).batch(0)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["background"], c["background"])
    assert batch_seed(5, 0) != batch_seed(5, 1) != batch_seed(6, 0)
    assert 0 <= batch_seed(2**70, 3) < 2**63


def test_validation_set_is_fixed_and_held_out():
    v1 = validation_set(2, patch_size=32)
    v2 = validation_set(2, patch_size=32)
    assert torch.equal(v1["image"], v2["image"]) and v1["image"].shape == (2, 1, 32, 32)
    train = SynthPairs(patch_size=32, batch_size=2, seed=12345).batch(0)
    assert not torch.equal(v1["background"], train["background"])
    with pytest.raises(TypeError, match="batch_size"):
        validation_set(2, batch_size=4)


def test_validation_set_spans_several_image_formation_draws():
    from mcgr.synth.dataset import _VALIDATION_SALT

    v = validation_set(6, patch_size=32, seed=3, draw_every=4)
    ds = SynthPairs(patch_size=32, batch_size=4, seed=3, _salt=_VALIDATION_SALT)
    b0, b1 = ds.batch(0), ds.batch(1)
    assert v["image"].shape == (6, 1, 32, 32) and len(v["centres"]) == 6
    assert torch.equal(v["image"][:4], b0["image"]) and torch.equal(v["image"][4:], b1["image"][:2])
    assert torch.equal(v["mask"][4:], b1["mask"][:2])
    assert all(torch.equal(a, b) for a, b in zip(v["centres"][4:], b1["centres"][:2]))
    for bad in (0, -1, True):
        with pytest.raises(ValueError):
            validation_set(2, patch_size=32, draw_every=bad)
    with pytest.raises(ValueError, match="n must be"):
        validation_set(0, patch_size=32)


def test_real_backgrounds_are_flipped_crops_of_the_source():
    src = torch.rand(3, 41, 50, generator=torch.Generator().manual_seed(0))
    ds = SynthPairs(patch_size=32, batch_size=4, seed=7, backgrounds=src, mc_free_fraction=0.0)
    b = ds.batch(0)
    s = src.numpy()
    for i in range(4):
        bg = b["background"][i, 0].numpy()
        found = False
        for flip in (bg, bg[::-1], bg[:, ::-1], bg[::-1, ::-1]):
            win = np.lib.stride_tricks.sliding_window_view(s, (32, 32), axis=(1, 2))  # [3, 10, 19, 32, 32]
            if np.any(np.all(win == flip, axis=(-1, -2))):
                found = True
                break
        assert found, f"background {i} is not a crop of the source"
    assert float(b["mask"].sum()) > 0


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"inject_ranges": {"sharpness": (0, 1)}}, ValueError, "unknown parameter"),
        ({"inject_ranges": {"contrast": (0.5, 2.0)}}, ValueError, "contrast"),
        ({"inject_ranges": {"mu": (3.0, 1.0)}}, ValueError, "min <= max"),
        ({"backgrounds": torch.rand(2, 16, 64)}, ValueError, "patch_size"),
        ({"backgrounds": torch.rand(2, 64, 64) + 1.0}, ValueError, r"\[0, 1\]"),
        ({"backgrounds": torch.rand(2, 64, 64).double()}, TypeError, "float32"),
        ({"mc_free_fraction": 1.5}, ValueError, "mc_free_fraction"),
        ({"patch_size": 4}, ValueError, "patch_size"),
        ({"pattern_options": {"size_mm": (0.2, 0.1)}}, ValueError, "size_mm"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"patch_size": 32, **kwargs}
    with pytest.raises(exc, match=match):
        SynthPairs(**args)
