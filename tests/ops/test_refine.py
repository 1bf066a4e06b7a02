"""refine: the reference is the exact gradient step of the TT-GPR energy, and every backend equals it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcgr.ops import RefineParams, refine, refine_ref
from tests.conftest import backend_or_skip
from tests.helpers import assert_close
from tests.tolerances import TOLERANCES

ATOL, RTOL = TOLERANCES[("refine", "z")]
BACKENDS = ("cpu", "triton", "cuda")
PARAMS = RefineParams(eta=0.4, lambda_a=0.3, lambda_e=0.4, lambda_o=0.6, sigma_e=0.2)


def energy(z, q, z0, y, zbar, p: RefineParams) -> torch.Tensor:
    """docs/design.md, method M4 written pair by pair: every unordered 4-neighbour pair of a plane listed once."""
    N, H, W = z.shape
    idx = torch.arange(H * W).view(H, W)
    pairs = torch.cat([
        torch.stack([idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)], 1),  # (r, c) - (r, c + 1)
        torch.stack([idx[:-1, :].reshape(-1), idx[1:, :].reshape(-1)], 1),  # (r, c) - (r + 1, c)
    ])
    zf, yf = z.reshape(N, -1), y.reshape(N, -1)
    i, j = pairs[:, 0], pairs[:, 1]
    w = torch.exp(-(yf[:, i] - yf[:, j]) ** 2 / (2 * p.sigma_e ** 2))
    e = F.binary_cross_entropy_with_logits(z, q, reduction="sum")  # sum_i BCE(sigmoid(z_i), q_i)
    e = e + p.lambda_a / 2 * ((z - z0) ** 2).sum()
    e = e + p.lambda_e / 2 * (w * (zf[:, i] - zf[:, j]) ** 2).sum()
    if zbar is not None:
        e = e + p.lambda_o / 2 * ((z - zbar) ** 2).sum()
    return e


def inputs(shape, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64) * 4
    q = torch.rand(shape, generator=g, dtype=torch.float64)
    z0 = z + torch.randn(shape, generator=g, dtype=torch.float64)
    # piecewise-constant image plus noise: strong and weak edges both occur
    y = (torch.rand(shape, generator=g, dtype=torch.float64) > 0.7).double() * 0.5 + 0.1 * torch.rand(shape, generator=g, dtype=torch.float64)
    zbar = z + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (z, q, z0, y, zbar)]


@pytest.mark.parametrize("with_zbar", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 5, 7), (1, 9, 1), (3, 6, 6)])
def test_reference_is_one_gradient_step_of_the_energy(shape, with_zbar):
    z, q, z0, y, zbar = inputs(shape, dtype=torch.float64)
    zbar = zbar if with_zbar else None
    zg = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(zg, q, z0, y, zbar, PARAMS), zg)
    expected = z - PARAMS.eta * grad
    assert_close(refine_ref(z, q, z0, y, zbar, PARAMS, steps=1), expected, atol=1e-12, rtol=1e-12, name="refine_ref")


def test_reference_pair_factor_on_two_pixels():
    # two pixels, one pair: dE/dz_0 = sigmoid(z_0) - q_0 + lambda_e w (z_0 - z_1) (no factor 2)
    p = RefineParams(eta=0.1, lambda_a=0.0, lambda_e=1.0, lambda_o=0.0, sigma_e=1.0)
    z = torch.tensor([[[0.0, 2.0]]], dtype=torch.float64)
    q = torch.tensor([[[0.5, 0.5]]], dtype=torch.float64)
    y = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    w = float(np.exp(-0.5))
    s1 = 1 / (1 + np.exp(-2.0))
    expected = torch.tensor([[[0.0 - 0.1 * (0.0 + w * -2.0), 2.0 - 0.1 * (s1 - 0.5 + w * 2.0)]]], dtype=torch.float64)
    assert_close(refine_ref(z, q, z, y, None, p), expected, atol=1e-12, name="two pixels")


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_energy_falls_over_steps(backend):
    backend_or_skip("refine", backend, "cpu")
    z, q, z0, y, zbar = inputs((2, 24, 31), seed=3)
    p = RefineParams(eta=0.2, lambda_a=0.1, lambda_e=0.5, lambda_o=0.3, sigma_e=0.1)
    es = [float(energy(z.double(), q.double(), z0.double(), y.double(), zbar.double(), p))]
    for _ in range(6):
        z = refine(z, q, z0, y, zbar, p, steps=1, backend=backend)
        es.append(float(energy(z.double(), q.double(), z0.double(), y.double(), zbar.double(), p)))
    assert all(b < a for a, b in zip(es, es[1:])), es
    assert es[-1] < 0.9 * es[0], es


# (shape, steps): steps cross the CPU pass (8 steps) and CUDA launch (4 steps) boundaries
CASES = [((1, 1), 1), ((1, 1), 5), ((7, 129), 1), ((7, 129), 3), ((255, 257), 1), ((255, 257), 9),
         ((3, 40, 33), 2), ((2, 70, 45), 10)]
TRITON_CASES = [((1, 1), 1), ((7, 129), 1), ((7, 129), 3), ((255, 257), 1), ((3, 40, 33), 2)]


def _device_inputs(shape, device, seed):
    return inputs(shape, seed=seed, device=device)


@pytest.mark.parametrize("with_zbar", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,steps", CASES)
def test_backend_equals_reference(backend, shape, steps, with_zbar, device):
    if backend == "triton" and (shape, steps) not in TRITON_CASES:
        pytest.skip("the Triton interpreter is slow: a subset of the cases")
    backend_or_skip("refine", backend, device)
    z, q, z0, y, zbar = _device_inputs(shape, device, seed=hash((shape, steps)) % 1000)
    zbar = zbar if with_zbar else None
    expected = refine_ref(z, q, z0, y, zbar, PARAMS, steps=steps)
    got = refine(z, q, z0, y, zbar, PARAMS, steps=steps, backend=backend)
    assert got.shape == z.shape and got.dtype == torch.float32 and got.device == z.device
    assert_close(got, expected, ATOL, RTOL, name=f"{backend} {shape} steps={steps}")
    # in place: the previous step's neighbours must survive the update
    zi = z.clone()
    res = refine(zi, q, z0, y, zbar, PARAMS, steps=steps, out=zi, backend=backend)
    assert res is zi
    assert_close(zi, expected, ATOL, RTOL, name=f"{backend} {shape} steps={steps} in place")


@pytest.mark.parametrize("steps", [1, 3, 9])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_non_contiguous(backend, steps, device):
    backend_or_skip("refine", backend, device)
    if backend == "triton" and steps == 9:
        pytest.skip("the Triton interpreter is slow: a subset of the cases")
    big = inputs((3, 50, 90), seed=11, device=device)
    crop = [t[:, 3:40, 5:77] for t in big]                # rows strided (a crop of a canvas)
    trans = [t.transpose(1, 2) for t in inputs((2, 45, 38), seed=12, device=device)]  # columns strided
    for z, q, z0, y, zbar in (crop, trans, [crop[0].contiguous()] + crop[1:]):
        expected = refine_ref(z.contiguous(), q.contiguous(), z0.contiguous(), y.contiguous(), zbar.contiguous(),
                              PARAMS, steps=steps)
        assert_close(refine(z, q, z0, y, zbar, PARAMS, steps=steps, backend=backend), expected, ATOL, RTOL,
                     name=f"{backend} strided {tuple(z.stride())}")
    # out a strided view into a larger buffer: the memory around it stays untouched
    z, q, z0, y, zbar = crop
    buf = torch.full((3, 50, 90), 7.0, device=device)
    view = buf[:, 3:40, 5:77]
    refine(z, q, z0, y, zbar, PARAMS, steps=steps, out=view, backend=backend)
    expected = refine_ref(z, q, z0, y, zbar, PARAMS, steps=steps)
    assert_close(view, expected, ATOL, RTOL, name=f"{backend} out view")
    view.fill_(7.0)
    assert bool((buf == 7.0).all()), "refine wrote outside out"
    # in place on a crop of a canvas: rows outside the crop stay untouched
    canvas = big[0].clone()
    zc = canvas[:, 3:40, 5:77]
    refine(zc, q, z0, y, zbar, PARAMS, steps=steps, out=zc, backend=backend)
    assert_close(zc, expected, ATOL, RTOL, name=f"{backend} in place crop")
    zc.copy_(big[0][:, 3:40, 5:77])
    assert bool((canvas == big[0]).all()), "in-place refine wrote outside z"


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_two_dim_numpy_and_zero_steps(backend):
    backend_or_skip("refine", backend, "cpu")
    z, q, z0, y, zbar = inputs((1, 13, 17), seed=5)
    expected = refine_ref(z, q, z0, y, zbar, PARAMS, steps=2)[0]
    got = refine(*(t[0].numpy() for t in (z, q, z0, y, zbar)), PARAMS, steps=2, backend=backend)
    assert isinstance(got, np.ndarray) and got.shape == (13, 17)
    assert_close(torch.from_numpy(got), expected, ATOL, RTOL, name="numpy [H, W]")
    same = refine(z, q, z0, y, zbar, PARAMS, steps=0, backend=backend)
    assert same is not z and bool((same == z).all())


@pytest.mark.parametrize("backend", ("reference", "cpu"))
def test_overlapping_tiles_agree_with_a_strong_overlap_term(backend):
    backend_or_skip("refine", backend, "cpu")
    # two 24 x 40 tiles of a 24 x 64 canvas overlapping on columns 24..39; each tile has its own
    # surrogate target q there (different RF projections); zbar is the stitched average
    g = torch.Generator().manual_seed(7)
    H, Wc, T, x1 = 24, 64, 40, 24
    y_canvas = torch.rand(H, Wc, generator=g) * 0.2
    z0_canvas = torch.randn(H, Wc, generator=g) * 2
    Y = torch.stack([y_canvas[:, :T], y_canvas[:, x1:x1 + T]])
    Z0 = torch.stack([z0_canvas[:, :T], z0_canvas[:, x1:x1 + T]])
    Q = torch.rand(2, H, T, generator=g)

    def stitched(Z):
        num = torch.zeros(H, Wc)
        den = torch.zeros(H, Wc)
        for k, x0 in enumerate((0, x1)):
            num[:, x0:x0 + T] += Z[k]
            den[:, x0:x0 + T] += 1
        avg = num / den
        return torch.stack([avg[:, :T], avg[:, x1:x1 + T]])

    def overlap_gap(lambda_o):
        p = RefineParams(eta=0.04, lambda_a=0.05, lambda_e=0.1, lambda_o=lambda_o, sigma_e=0.1)
        Z = Z0.clone()
        for _ in range(25):
            Z = refine(Z, Q, Z0, Y, stitched(Z), p, steps=2, backend=backend)
        return float((Z[0, :, x1:] - Z[1, :, : T - x1]).abs().max())

    loose, tight = overlap_gap(0.0), overlap_gap(40.0)
    assert loose > 0.5, loose  # without the term the tiles follow their own targets apart
    # at equilibrium the gap is about |q_a - q_b| / (lambda_o / 2) <= 0.05; both tiles end nearly equal
    assert tight < 0.05 and tight < 0.03 * loose, (tight, loose)


def test_bad_input_raises():
    z, q, z0, y, zbar = inputs((2, 8, 9))
    with pytest.raises(ValueError, match="q must have z's shape"):
        refine(z, q[:, :7], z0, y, zbar)
    with pytest.raises(ValueError, match="zbar must have z's shape"):
        refine(z, q, z0, y, zbar[:1])
    with pytest.raises(ValueError, match=r"z must be \[H, W\] or \[N, H, W\]"):
        refine(z[0, 0], q[0, 0], z0[0, 0], y[0, 0], None)
    with pytest.raises(TypeError, match="y must be float32"):
        refine(z, q, z0, y.double(), zbar)
    with pytest.raises(TypeError, match="z0: expected a torch.Tensor"):
        refine(z, q, [1.0], y, zbar)
    with pytest.raises(ValueError, match="params.eta must be > 0"):
        refine(z, q, z0, y, zbar, RefineParams(eta=0.0))
    with pytest.raises(ValueError, match="params.eta must be > 0"):
        refine(z, q, z0, y, zbar, RefineParams(eta=-1.0))
    with pytest.raises(ValueError, match="params.sigma_e must be > 0"):
        refine(z, q, z0, y, zbar, RefineParams(sigma_e=0.0))
    with pytest.raises(ValueError, match="stability bound"):
        refine(z, q, z0, y, zbar, RefineParams(eta=2.0, lambda_e=1.0))
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        refine(z, q, z0, y, zbar, steps=-1)
    with pytest.raises(ValueError, match="out overlaps q"):
        refine(z, q, z0, y, zbar, out=q)
    with pytest.raises(ValueError, match="out overlaps z without being z"):
        buf = torch.randn(2, 8, 10)
        refine(buf[:, :, :9], q, z0, y, zbar, out=buf[:, :, 1:])
    with pytest.raises(ValueError, match="out must have z's shape"):
        refine(z, q, z0, y, zbar, out=torch.empty(2, 8, 8))


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("bad", ["z", "q", "z0", "y", "zbar"])
def test_non_finite_input_names_the_argument(backend, bad, device):
    backend_or_skip("refine", backend, device)
    args = dict(zip(("z", "q", "z0", "y", "zbar"), inputs((2, 9, 11), device=device)))
    args[bad] = args[bad].clone()
    args[bad][1, 4, 10] = float("nan") if bad != "y" else float("inf")
    with pytest.raises(ValueError, match=rf"^{bad} holds NaN or inf"):
        refine(args["z"], args["q"], args["z0"], args["y"], args["zbar"], PARAMS, steps=3, backend=backend)
