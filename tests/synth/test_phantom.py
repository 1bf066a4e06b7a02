"""Synthetic full-field phantoms: what they keep for oracle measurements."""
import torch


def test_phantom_keeps_its_background_and_noise_free_signal():
    from mcgr.synth.phantom import breast_phantom

    ph = breast_phantom(256, 192, seed=3, noise=0.0)
    torch.testing.assert_close(ph.signal(), ph.image - ph.background, atol=1e-6, rtol=0)
    assert float(ph.signal()[ph.truth].max()) > 0 and float(ph.signal()[~ph.breast].abs().max()) == 0.0
    noisy = breast_phantom(256, 192, seed=3, noise=0.01)
    torch.testing.assert_close(noisy.signal(), ph.signal())  # the signal leaves the noise out
    assert not torch.equal(noisy.image, ph.image)
