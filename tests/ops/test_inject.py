"""inject: every backend against inject_ref, physics against closed forms and scipy, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mcgr.ops.inject import InjectParams, inject, inject_ref
from tests.conftest import backend_or_skip
from tests.helpers import assert_close
from tests.tolerances import TOLERANCES

BACKENDS = ("cpu", "triton", "cuda")


def random_calcs(g: torch.Generator, B: int, H: int, W: int, n: int) -> torch.Tensor:
    """Random primitives: ellipsoids and capsules, any angle, sub-pixel to a few px, some partly outside."""
    c = torch.zeros(n, 8)
    c[:, 0] = torch.randint(0, B, (n,), generator=g).float()
    c[:, 1] = torch.rand(n, generator=g) * (H + 8) - 4
    c[:, 2] = torch.rand(n, generator=g) * (W + 8) - 4
    size = torch.exp(torch.rand(n, 2, generator=g) * math.log(40.0)) * 0.1  # 0.1 .. 4 px, log-uniform
    c[:, 3:5] = size
    c[:, 5] = (torch.rand(n, generator=g) - 0.5) * 2 * math.pi
    c[:, 6] = torch.rand(n, generator=g) * 0.6
    c[:, 7] = (torch.rand(n, generator=g) < 0.35).float()
    return c


def assert_matches_ref(image, mask, ref_image, ref_mask, name: str) -> None:
    atol, rtol = TOLERANCES[("inject", "image")]
    assert image.dtype == torch.float32 and mask.dtype == torch.bool
    assert_close(image, ref_image, atol=atol, rtol=rtol, name=f"{name} image")
    differ = int((mask.cpu() != ref_mask.cpu()).sum())
    allowed = int(TOLERANCES[("inject", "mask_fraction")] * mask.numel())
    assert differ <= allowed, f"{name} mask: {differ} of {mask.numel()} pixels differ from inject_ref (allowed {allowed})"


# (B, H, W, primitives); the Triton interpreter runs ~25 ms per program, so it gets the small cases
CASES = [(1, 1, 1, 3), (1, 7, 129, 12), (3, 33, 47, 40), (2, 255, 257, 300)]
TRITON_CASES = {(1, 1, 1, 3), (1, 7, 129, 12), (3, 33, 47, 40)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_matches_reference(backend, case, noise, device):
    backend_or_skip("inject", backend, device)
    if backend == "triton" and device.type == "cpu" and case not in TRITON_CASES:
        pytest.skip("interpreted Triton: large case left to GPU runs")
    B, H, W, n = case
    g = torch.Generator().manual_seed(hash((case, noise)) % 2**31)
    bg = (0.15 + 0.7 * torch.rand(B, H, W, generator=g)).to(device)
    calcs = random_calcs(g, B, H, W, n).to(device)
    params = InjectParams(psf_sigma=0.7, local_sigma=3.0, contrast=0.9, gamma=1.5, noise=noise, seed=1234)
    ref_image, ref_mask = inject_ref(bg, calcs, params)
    image, mask = inject(bg, calcs, params, backend=backend)
    assert image.device == bg.device and mask.device == bg.device
    assert_matches_ref(image, mask, ref_image, ref_mask, f"{backend} {case} noise={noise}")
    if n > 3:
        assert bool((image != bg).any()), "no calcification reached the image: the case tests nothing"


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_extremes_match_reference(backend, device):
    """No blur, S=1 and S=8, gamma=0, a wide local mean (radius larger than the image), big primitives."""
    backend_or_skip("inject", backend, device)
    g = torch.Generator().manual_seed(7)
    bg = torch.rand(2, 19, 23, generator=g).to(device)
    calcs = random_calcs(g, 2, 19, 23, 10)
    calcs[:3, 3:5] = torch.tensor([[9.0, 30.0], [5.0, 2.0], [0.3, 12.0]])  # larger than the image
    calcs = calcs.to(device)
    for params in (InjectParams(psf_sigma=0.0, supersample=1, gamma=0.0, local_sigma=40.0),
                   InjectParams(psf_sigma=2.5, supersample=8, gamma=3.0, local_sigma=0.25, mu=3.0)):
        ref_image, ref_mask = inject_ref(bg, calcs, params)
        image, mask = inject(bg, calcs, params, backend=backend)
        assert_matches_ref(image, mask, ref_image, ref_mask, f"{backend} {params}")


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_non_contiguous_and_2d_inputs(backend, device):
    backend_or_skip("inject", backend, device)
    g = torch.Generator().manual_seed(3)
    base = torch.rand(2, 40, 34, generator=g).to(device)
    bg = base.transpose(1, 2)[:, ::2, 1:]  # [2, 17, 39], non-contiguous
    assert not bg.is_contiguous()
    calcs_full = random_calcs(g, 2, 17, 39, 16).to(device)
    calcs = calcs_full.t().contiguous().t()  # same values, column-major
    params = InjectParams(noise=0.01, seed=9)
    ref_image, ref_mask = inject_ref(bg.contiguous(), calcs_full, params)
    image, mask = inject(bg, calcs, params, backend=backend)
    assert_matches_ref(image, mask, ref_image, ref_mask, f"{backend} non-contiguous")
    one = calcs_full[calcs_full[:, 0] == 0]
    image2, mask2 = inject(bg[0], one, params, backend=backend)
    assert image2.shape == bg.shape[1:] and mask2.shape == bg.shape[1:]
    ref2, refm2 = inject_ref(bg[:1].contiguous(), one, params)
    assert_matches_ref(image2[None], mask2[None], ref2, refm2, f"{backend} 2-D")


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_empty_calcs_returns_background(backend, device):
    backend_or_skip("inject", backend, device)
    bg = torch.rand(2, 9, 13).to(device)
    image, mask = inject(bg, torch.zeros(0, 8, device=device), InjectParams(), backend=backend)
    assert torch.equal(image, bg)
    assert not bool(mask.any())


def test_numpy_in_numpy_out():
    bg = np.random.default_rng(0).random((2, 16, 16), dtype=np.float32)
    calcs = np.array([[1, 8.0, 8.0, 2.0, 3.0, 0.4, 0.3, 0]], dtype=np.float32)
    image, mask = inject(bg, calcs, InjectParams())
    assert isinstance(image, np.ndarray) and isinstance(mask, np.ndarray) and mask.dtype == np.bool_
    ref_image, ref_mask = inject_ref(torch.from_numpy(bg), torch.from_numpy(calcs), InjectParams())
    assert_matches_ref(torch.from_numpy(image), torch.from_numpy(mask), ref_image, ref_mask, "numpy")


# ---------------------------------------------------------------- physics, against closed forms

def analytic_volume(ry: float, rx: float, t: float, shape: int) -> float:
    """Volume (px^2 mm) of the solid whose chord is t sqrt(1 - rho^2): an ellipsoid of semi-axes
    (rx, ry, t/2), or a capsule = elliptic half-cylinder of length 2 rx plus the two end caps, which
    together make an ellipsoid of semi-axes (ry, ry, t/2)."""
    ellipsoid = 4.0 / 3.0 * math.pi * rx * ry * (t / 2)
    if shape == 0:
        return ellipsoid
    half_cylinder = 2 * rx * (math.pi * ry * t / 2)  # length x area of a half-ellipse of semi-axes ry, t
    return half_cylinder + 4.0 / 3.0 * math.pi * ry * ry * (t / 2)


def attenuation_from_image(image: torch.Tensor) -> np.ndarray:
    """Invert I = B + m (1 - B)(1 - exp(-A_b)) for B = 0, m = 1 (contrast 1, gamma 0): A_b = -log(1 - I)."""
    return -np.log1p(-image.detach().cpu().double().numpy())


PHYSICS_BACKENDS = ("reference",) + BACKENDS
TRANSPARENT = dict(contrast=1.0, gamma=0.0, noise=0.0)


@pytest.mark.parametrize("backend", PHYSICS_BACKENDS)
@pytest.mark.parametrize("prim", [
    (20.3, 21.7, 3.0, 5.5, 0.6, 0.4, 0),    # rotated ellipsoid
    (20.0, 20.0, 1.5, 6.0, -1.1, 0.3, 1),   # rotated capsule
    (19.9, 20.2, 0.3, 0.45, 0.2, 0.5, 0),   # sub-pixel, hit by a few samples
    (20.5, 20.5, 0.05, 0.08, 0.0, 0.8, 0),  # sub-pixel between all samples: deposited at the centre pixel
    (20.1, 19.8, 0.2, 0.7, 2.0, 0.6, 1),    # thin sub-pixel capsule
], ids=["ellipsoid", "capsule", "subpixel", "between-samples", "thin-capsule"])
def test_total_attenuation_equals_mu_times_volume(backend, prim, device):
    backend_or_skip("inject", backend, device)
    cy, cx, ry, rx, angle, t, shape = prim
    mu = 1.7
    calcs = torch.tensor([[0, cy, cx, ry, rx, angle, t, shape]], dtype=torch.float32, device=device)
    bg = torch.zeros(1, 41, 41, device=device)
    image, _ = inject(bg, calcs, InjectParams(mu=mu, psf_sigma=0.8, **TRANSPARENT), backend=backend)
    total = attenuation_from_image(image).sum()
    expected = mu * analytic_volume(ry, rx, t, shape)
    rel = TOLERANCES[("inject", "mass_rel")]
    assert abs(total - expected) <= rel * expected, f"{backend}: sum A_b = {total:.6g}, mu V = {expected:.6g}"


@pytest.mark.parametrize("backend", PHYSICS_BACKENDS)
@pytest.mark.parametrize("sigma", [0.5, 0.8, 1.7])
def test_point_source_profile_is_scipy_gaussian(backend, sigma, device):
    """A primitive between all samples is a delta of mass mu V at its centre pixel; its blurred
    attenuation must be scipy.ndimage.gaussian_filter of that delta (truncate=4)."""
    from scipy.ndimage import gaussian_filter

    backend_or_skip("inject", backend, device)
    mu, ry, rx, t = 50.0, 0.05, 0.05, 8.0  # peak A_b ~ 1: far from the float floor of 1 - exp(-A_b)
    calcs = torch.tensor([[0, 14.5, 16.5, ry, rx, 0.0, t, 0]], dtype=torch.float32, device=device)
    image, mask = inject(torch.zeros(1, 29, 33, device=device), calcs,
                         InjectParams(mu=mu, psf_sigma=sigma, **TRANSPARENT), backend=backend)
    delta = np.zeros((29, 33))
    delta[15, 17] = mu * analytic_volume(ry, rx, t, 0)  # centre pixel floor(c + 0.5)
    expected = gaussian_filter(delta, sigma, truncate=4.0, mode="constant")
    got = attenuation_from_image(image[0])
    atol = TOLERANCES[("inject", "profile_rel")] * expected.max()
    np.testing.assert_allclose(got, expected, atol=atol, rtol=0)
    assert mask[0, 15, 17] and int(mask.sum()) == 1, "a calcification smaller than its samples marks its centre pixel"


@pytest.mark.parametrize("backend", PHYSICS_BACKENDS)
def test_contrast_falls_with_local_density(backend, device):
    """On flat backgrounds L = B, so I - B = c (1 - B)^(gamma + 1) (1 - exp(-A_b)) with A_b taken
    from a transparent (B = 0, c = 1, gamma = 0) run."""
    backend_or_skip("inject", backend, device)
    calcs = torch.tensor([[0, 12.0, 12.0, 2.0, 2.5, 0.3, 0.4, 0]], dtype=torch.float32, device=device)
    base, _ = inject(torch.zeros(1, 25, 25, device=device), calcs, InjectParams(**TRANSPARENT), backend=backend)
    Ab = attenuation_from_image(base[0])[12, 12]
    c, gamma = 0.8, 1.5
    rises = []
    for level in (0.05, 0.25, 0.5, 0.75, 0.95):
        bg = torch.full((1, 25, 25), level, device=device)
        image, _ = inject(bg, calcs, InjectParams(contrast=c, gamma=gamma), backend=backend)
        rise = float(image[0, 12, 12]) - level
        expected = c * (1 - level) ** (gamma + 1) * (1 - math.exp(-Ab))
        assert abs(rise - expected) <= 1e-5 + 1e-4 * expected, f"{backend} B={level}: rise {rise}, expected {expected}"
        rises.append(rise)
    assert all(a > b for a, b in zip(rises, rises[1:])), f"contrast must fall as density rises: {rises}"


@pytest.mark.parametrize("backend", PHYSICS_BACKENDS)
@pytest.mark.parametrize("prim", [
    (30.2, 29.7, 6.0, 11.0, 0.5, 0),
    (30.0, 30.4, 3.5, 14.0, -0.9, 1),
    (29.6, 30.1, 9.0, 9.0, 0.0, 0),
], ids=["ellipse", "capsule", "disc"])
def test_mask_area_equals_analytic_area(backend, prim, device):
    backend_or_skip("inject", backend, device)
    cy, cx, ry, rx, angle, shape = prim
    calcs = torch.tensor([[0, cy, cx, ry, rx, angle, 0.3, shape]], dtype=torch.float32, device=device)
    _, mask = inject(torch.zeros(1, 61, 61, device=device), calcs, InjectParams(), backend=backend)
    if shape == 0:
        area = math.pi * rx * ry
        h = ((rx - ry) / (rx + ry)) ** 2
        perimeter = math.pi * (rx + ry) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))  # Ramanujan
    else:
        area = 4 * rx * ry + math.pi * ry * ry
        perimeter = 4 * rx + 2 * math.pi * ry
    got = int(mask.sum())
    assert abs(got - area) <= perimeter, f"{backend}: mask area {got} px, analytic {area:.1f} +- {perimeter:.1f}"


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_same_seed_same_output(backend, device):
    backend_or_skip("inject", backend, device)
    g = torch.Generator().manual_seed(11)
    bg = (0.2 + 0.6 * torch.rand(2, 21, 30, generator=g)).to(device)
    calcs = random_calcs(g, 2, 21, 30, 12).to(device)
    a, ma = inject(bg, calcs, InjectParams(noise=0.05, seed=77), backend=backend)
    b, mb = inject(bg, calcs, InjectParams(noise=0.05, seed=77), backend=backend)
    c, _ = inject(bg, calcs, InjectParams(noise=0.05, seed=78), backend=backend)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert float((a - c).abs().max()) > 1e-3, "a different seed must give different noise"


# ---------------------------------------------------------------- bad input

def _good():
    return torch.full((2, 8, 8), 0.5), torch.tensor([[1, 4.0, 4.0, 1.0, 1.5, 0.0, 0.3, 0]])


@pytest.mark.parametrize("mutate, exc, pattern", [
    (lambda b, c: (b[None], c), ValueError, r"background must be \[H, W\] or \[B, H, W\]"),
    (lambda b, c: (b[0, 0], c), ValueError, r"background must be"),
    (lambda b, c: (b.double(), c), TypeError, r"background must be float32"),
    (lambda b, c: (b.to(torch.float16), c), TypeError, r"background must be float32"),
    (lambda b, c: (b.index_put((torch.tensor([1]), torch.tensor([2]), torch.tensor([3])), torch.tensor(float("nan"))), c),
     ValueError, r"background holds NaN or inf"),
    (lambda b, c: (b.index_put((torch.tensor([0]),), torch.tensor(float("inf"))), c), ValueError, r"background holds NaN or inf"),
    (lambda b, c: (b + 0.6, c), ValueError, r"background must lie in \[0, 1\]"),
    (lambda b, c: (b - 0.6, c), ValueError, r"background must lie in \[0, 1\]"),
    (lambda b, c: (b[:, :0], c), ValueError, r"background must be non-empty"),
    (lambda b, c: (b, c[0]), ValueError, r"calcs must be \[N, 8\]"),
    (lambda b, c: (b, c[:, :7]), ValueError, r"calcs must be \[N, 8\]"),
    (lambda b, c: (b, c.double()), TypeError, r"calcs must be float32"),
    (lambda b, c: (b, c.to("meta")), ValueError, r"calcs is on meta but background is on cpu"),
    (lambda b, c: (b, c.index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor(2.0))), ValueError,
     r"calcs\[0, 0\] \(batch index\)"),
    (lambda b, c: (b, c.index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor(0.5))), ValueError,
     r"calcs\[0, 0\] \(batch index\)"),
    (lambda b, c: (b, c.index_put((torch.tensor([0]), torch.tensor([7])), torch.tensor(2.0))), ValueError,
     r"calcs\[0, 7\] \(shape\)"),
    (lambda b, c: (b, c.index_put((torch.tensor([0]), torch.tensor([3])), torch.tensor(0.0))), ValueError, r"calcs\[0, 3\] \(ry\)"),
    (lambda b, c: (b, c.index_put((torch.tensor([0]), torch.tensor([4])), torch.tensor(65.0))), ValueError, r"calcs\[0, 4\] \(rx\)"),
    (lambda b, c: (b, c.index_put((torch.tensor([0]), torch.tensor([6])), torch.tensor(-1.0))), ValueError,
     r"calcs\[0, 6\] \(thickness\)"),
    (lambda b, c: (b, c.index_put((torch.tensor([0]), torch.tensor([1])), torch.tensor(float("nan")))), ValueError,
     r"calcs holds NaN or inf"),
    (lambda b, c: ("not an array", c), TypeError, r"background"),
], ids=["rank4", "rank1", "float64", "float16", "nan", "inf", "above-1", "below-0", "empty", "calcs-rank", "calcs-cols",
        "calcs-dtype", "calcs-device", "batch-out-of-range", "batch-fractional", "shape-id", "ry-zero", "rx-too-big",
        "thickness-negative", "calcs-nan", "background-type"])
def test_bad_input_raises_naming_the_argument(mutate, exc, pattern):
    bg, calcs = mutate(*_good())
    with pytest.raises(exc, match=pattern):
        inject(bg, calcs, InjectParams(), backend="reference")


@pytest.mark.parametrize("field, value", [
    ("mu", 0.0), ("mu", float("nan")), ("psf_sigma", -0.1), ("psf_sigma", 9.0), ("local_sigma", 0.0),
    ("contrast", 1.5), ("gamma", -1.0), ("noise", 2.0), ("seed", -1), ("seed", 2**32), ("seed", 1.5),
    ("supersample", 0), ("supersample", 9), ("supersample", 2.0),
])
def test_out_of_range_params_raise(field, value):
    bg, calcs = _good()
    with pytest.raises((ValueError, TypeError), match=rf"params\.{field}"):
        inject(bg, calcs, InjectParams(**{field: value}))


def test_explicit_backend_that_cannot_run_raises():
    from mcgr._backends import BackendError

    bg, calcs = _good()  # CPU tensors: the cuda backend can never run them
    with pytest.raises(BackendError, match="cuda"):
        inject(bg, calcs, InjectParams(), backend="cuda")


def test_native_entry_point_rejects_bad_pointers_and_sizes():
    from mcgr._backends import native

    C = native()
    if C is None or not hasattr(C, "inject_cpu"):
        pytest.skip("mcgr._C with inject_cpu is not built")
    bg, calcs = _good()
    img, mask = torch.empty_like(bg), torch.empty(bg.shape, dtype=torch.bool)
    p = C.InjectParams()
    ptrs = [bg.data_ptr(), calcs.data_ptr(), img.data_ptr(), mask.data_ptr()]
    for k, name in enumerate(("background", "calcs", "image", "mask")):
        bad = list(ptrs)
        bad[k] = 0
        with pytest.raises(ValueError, match=name):
            C.inject_cpu(*bad, 2, 8, 8, 1, p)
    for sizes in ((-1, 8, 8, 1), (2, -8, 8, 1), (2, 8, 0, 1), (2, 8, 8, -1)):
        with pytest.raises(ValueError, match="must be >= "):
            C.inject_cpu(*ptrs, *sizes, p)
    p.supersample = 0
    with pytest.raises(ValueError, match="supersample"):
        C.inject_cpu(*ptrs, 2, 8, 8, 1, p)
    # a primitive whose batch index is out of range is refused, not written out of bounds
    with pytest.raises(ValueError, match=r"calcs\[0\]"):
        C.inject_cpu(*ptrs, 1, 8, 8, 1, C.InjectParams())
    C.inject_cpu(*ptrs, 2, 8, 8, 1, C.InjectParams())  # the same call with valid arguments runs
    ref, ref_mask = inject_ref(bg, calcs, InjectParams())
    assert_matches_ref(img, mask, ref, ref_mask, "direct call")
