"""group_norm_silu: the fused CPU kernel and the reference against a float64 computation of the
formula, on random shapes, both layouts and dtypes; the U-Net's fused blocks against PyTorch's."""
from __future__ import annotations

import pytest
import torch

from mcgr.ops.group_norm_silu import fused_available, group_norm_silu, unfused
from conftest import backend_or_skip


def exact(x, groups, w, b, eps, scale=None, shift=None, residual=None):
    """The formula in float64, written out (mean / biased variance per sample and group)."""
    xd = x.double()
    N, C, H, W = xd.shape
    g = xd.reshape(N, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    h = ((g - mean) / torch.sqrt(var + eps)).reshape(N, C, H, W)
    if w is not None:
        h = h * w.double()[None, :, None, None]
    if b is not None:
        h = h + b.double()[None, :, None, None]
    if scale is not None:
        h = h * (1 + scale.double()[:, :, None, None])
    if shift is not None:
        h = h + shift.double()[:, :, None, None]
    if residual is not None:
        h = h + residual.double()
    return h * torch.sigmoid(h)


def check_close(y, ref, dtype):
    if dtype == torch.float32:
        tol = 2e-5 * ref.abs() + 2e-5
    else:  # one rounding of the float32 result to bfloat16 (8 significant bits), and then some
        tol = 2.0 ** -7 * ref.abs() + 1e-3
    err = (y.double() - ref).abs()
    assert bool((err <= tol).all()), f"max error {err.max().item():.3g} (at ref {ref.flatten()[err.argmax()].item():.3g})"


CASES = [  # N, C, H, W, groups, modulated, residual
    (2, 16, 37, 29, 8, False, False),
    (3, 32, 16, 16, 8, True, True),
    (1, 64, 9, 70, 8, False, True),
    (2, 8, 33, 17, 4, True, False),     # C % 16 != 0: the portable loops
    (1, 48, 1, 1, 3, False, True),      # one pixel
    (4, 16, 1030, 3, 2, True, True),    # more than one block of pixels
]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_against_float64(backend, dtype, channels_last, case):
    backend_or_skip("group_norm_silu", backend, "cpu")
    N, C, H, W, G, mod, res = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    x = (torch.randn(N, C, H, W, generator=g) * 3 + 2).to(dtype)
    r = torch.randn(N, C, H, W, generator=g).to(dtype) if res else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        r = r.contiguous(memory_format=torch.channels_last) if r is not None else None
    w, b = torch.randn(C, generator=g), torch.randn(C, generator=g)
    s = torch.randn(N, C, generator=g) * 0.3 if mod else None
    sh = torch.randn(N, C, generator=g) if mod else None
    y = group_norm_silu(x, G, w, b, 1e-5, scale=s, shift=sh, residual=r, backend=backend)
    assert y.dtype == dtype and y.shape == x.shape
    if channels_last and backend == "cpu" and H * W > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    check_close(y, exact(x, G, w, b, 1e-5, s, sh, r), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_and_strided(dtype):
    backend_or_skip("group_norm_silu", "cpu", "cpu")
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 9, 16, 32, generator=g).to(dtype)
    x = base.transpose(2, 3)[:, :8]  # neither layout: copied, then written back
    w = torch.rand(8, generator=g) + 0.5
    ref = exact(x, 4, w, None, 1e-5)
    y = group_norm_silu(x, 4, w, None, inplace=True, backend="cpu")
    assert y is x
    check_close(x, ref, dtype)
    assert bool((base[:, 8] == base[:, 8]).all())  # the channel outside the view is untouched
    z = torch.randn(1, 16, 8, 8, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    expected = exact(z, 8, None, None, 1e-5)
    out = group_norm_silu(z, 8, inplace=True, backend="cpu")
    assert out.data_ptr() == z.data_ptr()
    check_close(z, expected, dtype)


def test_saturation_and_non_finite():
    backend_or_skip("group_norm_silu", "cpu", "cpu")
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    b = torch.full((16,), 120.0)
    b[::2] = -120.0  # silu(-120) = -1e-50: 0 in float32, silu(120) = 120
    y = group_norm_silu(x, 4, None, b, backend="cpu")
    check_close(y, exact(x, 4, None, b, 1e-5), torch.float32)
    x[0, 0, 3, 3] = float("nan")
    y = group_norm_silu(x, 4, backend="cpu")
    assert bool(torch.isnan(y[0, :4]).all()) and bool(torch.isfinite(y[0, 4:]).all())  # only the NaN's group


def test_empty_and_errors():
    backend_or_skip("group_norm_silu", "cpu", "cpu")
    assert group_norm_silu(torch.zeros(0, 8, 4, 4), 4, backend="cpu").shape == (0, 8, 4, 4)
    x = torch.randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match="groups"):
        group_norm_silu(x, 3)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        group_norm_silu(x.half(), 4)
    with pytest.raises(ValueError, match="weight"):
        group_norm_silu(x, 4, torch.ones(7))
    with pytest.raises(ValueError, match="scale"):
        group_norm_silu(x, 4, scale=torch.ones(8))
    with pytest.raises(ValueError, match="residual"):
        group_norm_silu(x, 4, residual=torch.ones(2, 8, 4, 5))
    with pytest.raises(ValueError, match="shares"):
        group_norm_silu(x, 4, residual=x, inplace=True)
    with pytest.raises(ValueError, match="eps"):
        group_norm_silu(x, 4, eps=0.0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        group_norm_silu(x[0], 4)


def test_fused_only_without_gradients(monkeypatch):
    backend_or_skip("group_norm_silu", "cpu", "cpu")
    x = torch.randn(1, 8, 4, 4)
    assert not fused_available(x)  # gradients are on outside no_grad
    with torch.no_grad():
        assert fused_available(x)
        assert not fused_available(x.half())
        with unfused():
            assert not fused_available(x)
        monkeypatch.setenv("MCGR_FUSED_NORM", "0")
        assert not fused_available(x)
        monkeypatch.setenv("MCGR_FUSED_NORM", "1")
        monkeypatch.setenv("MCGR_BACKEND", "reference")
        assert not fused_available(x)


@pytest.mark.parametrize("kind", ["seg", "rf"])
def test_unet_fused_blocks_match_pytorch(kind):
    """The shipped networks with and without the fused blocks: float32 logits equal to 1e-4; in
    bfloat16 the fused network is no further from the float32 answer than PyTorch's bf16 path."""
    backend_or_skip("group_norm_silu", "cpu", "cpu")
    from mcgr.models import load_pretrained

    net = load_pretrained(kind).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, net.cfg.in_channels, 96, 80, generator=g)
    t = torch.tensor([0.3, 0.8]) if net.cfg.time_embedding else None
    with torch.inference_mode():
        with unfused():
            ref = net(x, t)
        fused = net(x, t)
        assert (fused - ref).abs().max().item() <= 1e-4 * (1 + ref.abs().max().item())
        net_cl = net.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with unfused():
                stock = net_cl(xc, t).float()
            ours = net_cl(xc, t).float()
    err_stock = (stock - ref).abs().mean().item()
    err_ours = (ours - ref).abs().mean().item()
    assert err_ours <= 1.5 * err_stock + 1e-3, (err_ours, err_stock)
