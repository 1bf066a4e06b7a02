"""Triton-only checks of the fused inject kernel: the launch geometries that the public op's default
does not reach under the interpreter (the GPU's sub-block culling, small and large blocks)."""
import pytest
import torch

from helpers import assert_close
from tolerances import TOLERANCES
from conftest import backend_or_skip
from mcgr.ops.inject import InjectParams, inject_ref


def _calcs(gen, Bn, H, W, n, rmin, rmax, margin):
    c = torch.zeros(n, 8)
    c[:, 0] = torch.randint(0, Bn, (n,), generator=gen).float()
    c[:, 1] = torch.rand(n, generator=gen) * (H + 2 * margin) - margin - 0.5
    c[:, 2] = torch.rand(n, generator=gen) * (W + 2 * margin) - margin - 0.5
    c[:, 3] = rmin + (rmax - rmin) * torch.rand(n, generator=gen)
    c[:, 4] = rmin + (rmax - rmin) * torch.rand(n, generator=gen)
    c[:, 5] = torch.rand(n, generator=gen) * 6.3 - 3.15
    c[:, 6] = 0.05 + 0.5 * torch.rand(n, generator=gen)
    c[:, 7] = (torch.rand(n, generator=gen) < 0.5).float()
    return c


def _compare(image, mask, bg, calcs, params):
    ref_image, ref_mask = inject_ref(bg, calcs, params)
    atol, rtol = TOLERANCES[("inject", "image")]
    assert_close(image, ref_image, atol=atol, rtol=rtol, name="image")
    differ = int((mask != ref_mask).sum())
    assert differ <= max(1, TOLERANCES[("inject", "mask_fraction")] * mask.numel()), f"{differ} mask pixels differ"


@pytest.mark.parametrize(
    "shape, n, radii, params, block, sub_block",
    [
        # GPU default geometry: 32-px blocks culled per 16-px sub-block; noise seed above 2**31
        ((2, 7, 61), 10, (0.3, 5.0), InjectParams(noise=0.05, seed=3_000_000_000), 32, 16),
        # sub-pixel primitives (centre deposits), odd supersampling, primitives past every edge
        ((1, 33, 40), 20, (0.05, 0.35), InjectParams(supersample=3, psf_sigma=1.3, gamma=2.0), 64, 32),
        # a wide PSF (radius 16) needs the 128-px block; no blur and gamma 0 in the other case
        ((1, 30, 37), 8, (0.5, 6.0), InjectParams(supersample=2, psf_sigma=4.0, local_sigma=2.0), 128, 64),
        ((3, 20, 21), 15, (0.3, 4.0), InjectParams(supersample=1, psf_sigma=0.0, gamma=0.0), 32, 32),
    ],
)
def test_triton_geometries_equal_reference(device, shape, n, radii, params, block, sub_block):
    backend_or_skip("inject", "triton", device)
    from mcgr.kernels.inject import inject_triton

    gen = torch.Generator().manual_seed(hash((shape, n)) % 2**31)
    bg = (torch.rand(*shape, generator=gen) * 0.8 + 0.1).to(device)
    calcs = _calcs(gen, shape[0], shape[1], shape[2], n, *radii, margin=6).to(device)
    image, mask = inject_triton(bg, calcs, params, block=block, sub_block=sub_block)
    _compare(image, mask, bg, calcs, params)


def test_triton_empty_calcs_is_background_plus_noise(device):
    backend_or_skip("inject", "triton", device)
    from mcgr.kernels.inject import inject_triton

    bg = torch.rand(2, 5, 9, generator=torch.Generator().manual_seed(3)).to(device)
    params = InjectParams(noise=0.1, seed=12345)
    image, mask = inject_triton(bg, torch.zeros(0, 8, device=device), params)
    _compare(image, mask, bg, torch.zeros(0, 8, device=device), params)
    assert not bool(mask.any())


def test_triton_rejects_bad_block(device):
    backend_or_skip("inject", "triton", device)
    from mcgr.kernels.inject import inject_triton

    bg = torch.rand(1, 8, 8).to(device)
    with pytest.raises(ValueError, match="block"):
        inject_triton(bg, torch.zeros(0, 8, device=device), InjectParams(), block=48)
    with pytest.raises(ValueError, match="block"):
        inject_triton(bg, torch.zeros(0, 8, device=device), InjectParams(psf_sigma=8.0), block=64)
