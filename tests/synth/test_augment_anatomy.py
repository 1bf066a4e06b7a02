"""Site augmentation, procedural anatomy and the mixed background stream of SynthPairs."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from mcgr.ops._filters import gaussian_blur
from mcgr.synth.anatomy import KINDS, add_anatomy
from mcgr.synth.augment import DEFAULT_AUGMENT, resampled_crop, site_augment
from mcgr.synth.backgrounds import procedural_backgrounds
from mcgr.synth.dataset import SynthPairs


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3])
@pytest.mark.parametrize("shape", [(1, 33, 40), (3, 64, 64)])
def test_gaussian_blur_matches_scipy(sigma, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    got = gaussian_blur(x, sigma).numpy()
    r = int(np.ceil(3 * sigma))
    for b in range(shape[0]):
        # torch's 'reflect' padding is scipy's 'mirror'; the kernel is cut at ceil(3 sigma)
        want = ndimage.gaussian_filter(x[b].numpy().astype(np.float64), sigma, mode="mirror", truncate=r / sigma)
        np.testing.assert_allclose(got[b], want, atol=2e-6)


def test_resampled_crop_at_scale_one_is_a_window_of_the_source():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(2, 50, 60, generator=g)
    crop = resampled_crop(src, 1, 20, g, scale=(1.0, 1.0)).numpy()
    s = src[1].numpy()
    hits = [(y, x) for y in range(31) for x in range(41) if np.array_equal(s[y:y + 20, x:x + 20], crop)]
    assert len(hits) == 1


@pytest.mark.parametrize("seed", range(6))
def test_centred_crop_holds_the_centre_a_quarter_window_inside(seed):
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(1, 64, 64)
    src[0, 32, 32] = 1.0
    crop = resampled_crop(src, 0, 24, g, scale=(1.0, 1.0), centred=True)
    ys, xs = np.nonzero(crop.numpy())
    assert len(ys) == 1
    assert 6 <= ys[0] <= 17 and 6 <= xs[0] <= 17


def test_resampled_crop_shrinks_by_area_mean():
    src = torch.arange(16 * 16, dtype=torch.float32).view(1, 16, 16)
    g = torch.Generator().manual_seed(0)
    crop = resampled_crop(src, 0, 8, g, scale=(2.0, 2.0))
    want = src[0].view(8, 2, 8, 2).mean(dim=(1, 3))
    torch.testing.assert_close(crop, want)


def test_site_augment_range_shape_and_stored_integer_grid():
    g = torch.Generator().manual_seed(3)
    x = procedural_backgrounds(6, 48, 48, torch.Generator().manual_seed(0))
    y = site_augment(x, g)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    for b in range(6):
        # every patch went through a MONOCHROME1/2 store of some bit depth: it lies on a grid k / (2^bits - 1)
        on_grid = [np.allclose(np.round(y[b].double().numpy() * (2**n - 1)), y[b].double().numpy() * (2**n - 1), atol=2e-3)
                   for n in DEFAULT_AUGMENT["bits"]]
        assert any(on_grid)
    assert not torch.equal(y, x)


def test_site_augment_is_a_function_of_the_generator_and_rejects_unknown_options():
    x = procedural_backgrounds(2, 32, 32, torch.Generator().manual_seed(0))
    a = site_augment(x, torch.Generator().manual_seed(9))
    b = site_augment(x, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown options"):
        site_augment(x, torch.Generator(), {"colour": 1})
    with pytest.raises(ValueError, match="square"):
        site_augment(torch.rand(1, 8, 9), torch.Generator())


def test_add_anatomy_probability_zero_and_one():
    x = procedural_backgrounds(4, 64, 64, torch.Generator().manual_seed(0))
    same, drawn = add_anatomy(x, torch.Generator().manual_seed(1), 0.0)
    assert torch.equal(same, x) and drawn == [[]] * 4
    for kind in KINDS:
        y, drawn = add_anatomy(x, torch.Generator().manual_seed(2), 1.0, kinds=(kind,))
        assert all(d and set(d) == {kind} for d in drawn)
        assert float(y.min()) >= 0 and float(y.max()) <= 1
        changed = (y - x).abs().amax(dim=(1, 2))
        assert bool((changed > 0).all()), kind


def test_pectoral_and_film_edge_split_a_patch_into_two_levels():
    flat = torch.full((1, 96, 96), 0.3)
    y, _ = add_anatomy(flat, torch.Generator().manual_seed(4), 1.0, kinds=("film_edge",))
    # a straight edge to film: two plateaus, one of them the tissue left as it was
    vals = y[0].numpy().ravel()
    assert np.mean(np.abs(vals - 0.3) < 0.02) > 0.05 and np.mean(np.abs(vals - 0.3) > 0.3) > 0.05


def test_add_anatomy_rejects_bad_arguments():
    x = torch.rand(1, 16, 16)
    with pytest.raises(ValueError, match="probability"):
        add_anatomy(x, torch.Generator(), 1.5)
    with pytest.raises(ValueError, match="kinds"):
        add_anatomy(x, torch.Generator(), 0.5, kinds=("tumour",))


def test_hard_negatives_only_every_patch_holds_a_hard_centre():
    P = 32
    hard = torch.full((3, 64, 64), 0.2)
    hard[:, 32, 32] = 0.9  # each hard negative's centre pixel is a unique bright dot
    ds = SynthPairs(P, 8, hard_negatives=hard, hard_fraction=1.0, mc_free_fraction=1.0, seed=0)
    b = ds.batch(0)
    bg = b["background"][:, 0]
    assert b["mask"].sum() == 0
    # every crop holds the dot (resampling at 0.8-1.2x blurs it but keeps it the brightest pixel)
    for k in range(8):
        assert float(bg[k].max()) > 0.35, k


def test_real_fraction_one_without_augment_crops_flipped_windows():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(2, 40, 40, generator=g)
    ds = SynthPairs(16, 4, backgrounds=real, real_fraction=0.999999, anatomy=0.0, mc_free_fraction=1.0, seed=1)
    # real_fraction < 1 takes the mixed path: crops at scale 1, flipped, no augmentation
    bg = ds.batch(0)["background"][:, 0].numpy()
    srcs = real.numpy()
    for k in range(4):
        found = False
        for s in srcs:
            for v in (bg[k], bg[k][::-1], bg[k][:, ::-1], bg[k][::-1, ::-1]):
                for y in range(25):
                    for x in range(25):
                        if np.array_equal(s[y:y + 16, x:x + 16], v):
                            found = True
        assert found, k


def test_mixed_options_are_checked():
    with pytest.raises(ValueError, match="hard_negatives"):
        SynthPairs(16, 2, hard_fraction=0.5)
    with pytest.raises(ValueError, match="augment"):
        SynthPairs(16, 2, augment={"nope": 1})
    with pytest.raises(ValueError, match="anatomy"):
        SynthPairs(16, 2, anatomy=2.0)
