"""Enhanced generator targets (mcgr.synth.enhance) against hand-built signals and scipy."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from mcgr.synth.enhance import enhanced_target


def _scipy_sigma(b: np.ndarray) -> float:
    hp = b - ndimage.gaussian_filter(b, 2.0, mode="nearest", truncate=3.0)
    return 1.4826 * float(np.median(np.abs(hp - np.median(hp))))


def _blob(h, w, cy, cx, amp, s=0.8):
    yy, xx = np.mgrid[:h, :w]
    return amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))


def _scene(seed=0):
    """Two blurred calcifications on random texture: A (strong at (12, 12)) and B (faint at (30, 40))."""
    rng = np.random.default_rng(seed)
    h, w = 48, 56
    bg = (0.45 + 0.02 * ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.0)
          + 0.004 * rng.standard_normal((h, w))).astype(np.float32)
    sig = _scipy_sigma(bg)
    a = _blob(h, w, 12, 12, 12 * sig)
    b = _blob(h, w, 30, 40, 3 * sig)
    signal = (a + b).astype(np.float32)
    mask = np.zeros((h, w), np.float32)
    mask[11:14, 11:14] = 1
    mask[29:32, 39:42] = 1
    noise = (0.002 * rng.standard_normal((h, w))).astype(np.float32)
    image = bg + signal + noise
    t = lambda x: torch.from_numpy(x)[None, None]  # noqa: E731
    return t(image), t(signal), t(bg), t(mask), sig, a, b


def test_a_seeded_calcification_is_raised_to_the_target_cnr_and_nothing_else_moves():
    image, signal, bg, mask, sig, a, b = _scene()
    peak_b = float(signal[0, 0][29:32, 39:42].max())  # B's peak over its mask pixels
    out = enhanced_target(image, signal, bg, mask, [torch.tensor([[30.4, 39.6]])], target_cnr=10.0, max_gain=6.0)
    k = 10.0 / (peak_b / sig)
    assert 2.5 < k < 6.0  # not capped
    # within 3 px of B's mask: image + (k - 1) * signal; elsewhere (A included) untouched
    dist = ndimage.distance_transform_edt(mask[0, 0].numpy() == 0)
    near_b = (dist <= 3) & (np.hypot(*np.mgrid[:48, :56] - np.array([30, 40])[:, None, None]) < 10)
    want = image[0, 0].numpy() + np.where(near_b, (k - 1) * signal[0, 0].numpy(), 0.0)
    np.testing.assert_allclose(out[0, 0].numpy(), want, rtol=0, atol=2e-2 * (k - 1) * peak_b)  # sigma to ~1 %
    np.testing.assert_array_equal(out[0, 0].numpy()[~near_b], image[0, 0].numpy()[~near_b])
    # B's peak now stands target_cnr texture sigmas above the background (noise aside)
    got = float((out - image + signal)[0, 0][29:32, 39:42].max()) / sig
    assert got == pytest.approx(10.0, rel=3e-2)


def test_gain_is_capped_never_below_one_and_only_seeded_calcifications_change():
    image, signal, bg, mask, sig, a, b = _scene(1)
    seeds = [torch.tensor([[12.0, 12.0], [30.0, 40.0]])]
    capped = enhanced_target(image, signal, bg, mask, seeds, target_cnr=10.0, max_gain=2.0)
    d = (capped - image)[0, 0].numpy()
    # B (CNR ~3) hits the cap 2: its added signal is exactly 1 x its signal; A (CNR ~12) gets k = 1
    np.testing.assert_allclose(d[29:32, 39:42], signal[0, 0].numpy()[29:32, 39:42], rtol=1e-5, atol=1e-7)
    assert np.abs(d[8:17, 8:17]).max() == 0.0
    # a decoy seed far from every calcification, or no seed at all: the target is the image
    for s in ([torch.tensor([[40.0, 8.0]])], [torch.zeros(0, 2)]):
        assert torch.equal(enhanced_target(image, signal, bg, mask, s), image)
    # a seed more than `halo` px from the mask selects nothing
    assert torch.equal(enhanced_target(image, signal, bg, mask, [torch.tensor([[30.0, 47.0]])], halo=3.0), image)


def test_enhanced_target_rejects_bad_input():
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="one \\[B, 1, H, W\\] shape"):
        enhanced_target(x, x, x, torch.zeros(2, 1, 8, 9), [torch.zeros(0, 2)] * 2)
    with pytest.raises(ValueError, match="one seed list per patch"):
        enhanced_target(x, x, x, x, [torch.zeros(0, 2)])
    with pytest.raises(ValueError, match="max_gain >= 1"):
        enhanced_target(x, x, x, x, [torch.zeros(0, 2)] * 2, max_gain=0.5)


def test_dataset_signal_is_the_noise_free_calcification_signal():
    from mcgr.synth.dataset import SynthPairs, validation_set

    noisy = SynthPairs(patch_size=48, batch_size=3, seed=5, with_signal=True,
                       inject_ranges={"noise": (0.02, 0.02)}, backend="reference")
    clean = SynthPairs(patch_size=48, batch_size=3, seed=5, inject_ranges={"noise": (0.0, 0.0)}, backend="reference")
    bn, bc = noisy.batch(2), clean.batch(2)
    assert torch.equal(bn["background"], bc["background"]) and torch.equal(bn["mask"], bc["mask"])
    assert float(bn["signal"].abs().max()) > 0.01
    torch.testing.assert_close(bn["signal"], bc["image"] - bc["background"], rtol=0, atol=1e-6)
    assert float((bn["image"] - bc["image"]).abs().max()) > 1e-3  # the noisy image really is noisy
    assert "signal" not in clean.batch(0)
    v = validation_set(5, patch_size=32, seed=1, with_signal=True)
    assert v["signal"].shape == v["image"].shape
