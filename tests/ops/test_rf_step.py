"""rf_step: every backend against the reference; the noise against rng_normal and its statistics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from mcgr import _backends
from mcgr.ops._rng import rng_normal
from mcgr.ops.rf_step import RfStepParams, rf_start, rf_start_ref, rf_step, rf_step_ref
from conftest import backend_or_skip
from helpers import assert_close
from tolerances import TOLERANCES

BACKENDS = ("cpu", "triton", "cuda")
SHAPES = [(1, 1), (7, 129), (2, 1, 255, 7), (3, 1, 33, 65)]
START_TOL = TOLERANCES[("rf_step", "start")]
STEP_TOL = TOLERANCES[("rf_step", "step")]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, g, device):
    return torch.randn(shape, generator=g).to(device)


# ---------------------------------------------------------------- backends against the reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_start_matches_reference(backend, shape, device):
    backend_or_skip("rf_step", backend, device)
    g = _gen(hash(shape) % 1000)
    y = torch.rand(shape, generator=g).to(device) * 2 - 1
    t0 = float(torch.rand((), generator=g))
    seed = int(torch.randint(0, 2**32, (), generator=g, dtype=torch.int64))
    offset = int(torch.randint(0, 2**20, (), generator=g))
    got = rf_start(y, t0, seed, offset, backend=backend)
    assert_close(got, rf_start_ref(y, t0, seed, offset), *START_TOL, name=f"rf_start {backend} {shape}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_noise_is_rng_normal(backend, device):
    """t0 = 0 and y = 0 expose eps itself: the counters (seed, offset + i) must be the spec's."""
    backend_or_skip("rf_step", backend, device)
    shape = (2, 3, 17, 19)
    n = math.prod(shape)
    for seed, offset in ((0, 0), (123456789, 5), (2**32 - 1, 2**32 - n)):  # the last ends at the counter limit
        got = rf_start(torch.zeros(shape, device=device), 0.0, seed, offset, backend=backend)
        want = rng_normal(seed, offset + torch.arange(n, dtype=torch.int64)).view(shape)
        assert_close(got, want, *START_TOL, name=f"eps seed={seed} offset={offset}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_offset_shifts_the_stream(backend, device):
    backend_or_skip("rf_step", backend, device)
    z = torch.zeros(4, 1, 8, 8, device=device)
    whole = rf_start(z, 0.0, 7, 0, backend=backend).flatten()
    part = rf_start(z[:3], 0.0, 7, 64, backend=backend).flatten()
    # same backend, same counters: bitwise
    assert torch.equal(part, whole[64:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_endpoints(backend, device):
    backend_or_skip("rf_step", backend, device)
    y = _randn((3, 1, 9, 11), _gen(1), device)
    assert torch.equal(rf_start(y, 1.0, 5, backend=backend), y)  # t0 = 1: the image itself
    assert_close(rf_start(y, 0.0, 5, backend=backend), rng_normal(5, torch.arange(y.numel())).view(y.shape),
                 *START_TOL, name="t0 = 0 is pure noise")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ("euler", "heun"))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_step_matches_reference(backend, method, shape, device):
    backend_or_skip("rf_step", backend, device)
    g = _gen(sum(shape))
    x, v, w = (_randn(shape, g, device) for _ in range(3))
    dt = float(torch.rand((), generator=g)) * 0.5
    v_prev = w if method == "heun" else None
    got = rf_step(x, v, dt, method=method, v_prev=v_prev, backend=backend)
    assert_close(got, rf_step_ref(x, v, dt, method, v_prev), *STEP_TOL, name=f"{method} {backend} {shape}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_and_out(backend, device):
    backend_or_skip("rf_step", backend, device)
    g = _gen(3)
    base = _randn((3, 1, 40, 66), g, device)
    x = base[..., ::2]                        # strided view
    v = _randn((3, 1, 33, 40), g, device).transpose(-1, -2)  # transposed
    w = _randn((3, 1, 40, 33), g, device)
    ref = rf_step_ref(x, v, 0.25, "heun", w)
    assert_close(rf_step(x, v, 0.25, method="heun", v_prev=w, backend=backend), ref, *STEP_TOL, name="strided")
    out = torch.full((3, 1, 33, 40), float("nan"), device=device).transpose(-1, -2)  # non-contiguous out
    res = rf_step(x, v, 0.25, method="heun", v_prev=w, out=out, backend=backend)
    assert res is out
    assert_close(out, ref, *STEP_TOL, name="non-contiguous out")
    # the start on a strided view numbers the elements in the view's logical order
    assert_close(rf_start(x, 0.4, 11, 3, backend=backend), rf_start_ref(x.contiguous(), 0.4, 11, 3), *START_TOL,
                 name="start strided")


@pytest.mark.parametrize("backend", BACKENDS)
def test_misaligned_contiguous_buffers(backend, device):
    """Contiguous views starting 4 bytes into a buffer (the kernels' vector loads must not assume 16)."""
    backend_or_skip("rf_step", backend, device)
    shape = (2, 1, 13, 29)
    n = math.prod(shape)
    g = _gen(6)
    x, v, w, out = (_randn((n + 4,), g, device)[k + 1 : k + 1 + n].view(shape) for k in range(4))
    assert_close(rf_step(x, v, 0.3, method="heun", v_prev=w, out=out, backend=backend),
                 rf_step_ref(x, v, 0.3, "heun", w), *STEP_TOL, name="misaligned heun")
    assert_close(rf_start(x, 0.6, 21, 5, out=out, backend=backend), rf_start_ref(x, 0.6, 21, 5), *START_TOL,
                 name="misaligned start")


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_updates(backend, device):
    backend_or_skip("rf_step", backend, device)
    g = _gen(4)
    x0, v1, v2 = (_randn((2, 1, 31, 37), g, device) for _ in range(3))
    want_pred = rf_step_ref(x0, v1, 0.125)
    want_heun = rf_step_ref(x0, v2, 0.125, "heun", v1)
    x = x0.clone()
    assert rf_step(x, v1, 0.125, out=x, backend=backend) is x
    assert_close(x, want_pred, *STEP_TOL, name="euler out=x")
    x = x0.clone()
    vv = v2.clone()
    rf_step(x, vv, 0.125, method="heun", v_prev=v1, out=vv, backend=backend)  # out aliases v
    assert_close(vv, want_heun, *STEP_TOL, name="heun out=v")
    y = x0.clone()
    rf_start(y, 0.3, 9, out=y, backend=backend)  # the start in place over y
    assert_close(y, rf_start_ref(x0, 0.3, 9), *START_TOL, name="start out=y")


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_empty_and_numpy(backend, device):
    backend_or_skip("rf_step", backend, device)
    e = torch.empty(0, 1, 4, 4, device=device)
    assert rf_start(e, 0.5, 1, backend=backend).shape == e.shape
    assert rf_step(e, e, 0.1, backend=backend).shape == e.shape
    if device.type != "cpu":
        return
    x = np.random.default_rng(0).standard_normal((5, 9)).astype(np.float32)
    v = np.random.default_rng(1).standard_normal((5, 9)).astype(np.float32)
    got = rf_step(x, v, 0.5, backend=backend)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, x + v * np.float32(0.5))


def test_auto_picks_a_native_backend_when_built():
    choice = _backends.choose("rf_step", torch.device("cpu"), "auto")
    ok, _ = _backends.backend_status("rf_step", "cpu", torch.device("cpu"))
    assert choice.backend == ("cpu" if ok else "reference")


# ---------------------------------------------------------------- the noise (on the reference)


def test_noise_statistics():
    n = 1 << 20
    eps = rf_start_ref(torch.zeros(16, 1, 256, 256), 0.0, seed=2024).flatten().double()
    assert abs(float(eps.mean())) < 5 / math.sqrt(n)
    assert abs(float(eps.std()) - 1.0) < 5 / math.sqrt(2 * n)
    assert scipy.stats.kstest(eps[:200_000].numpy(), "norm").pvalue > 1e-3
    assert abs(float(scipy.stats.kurtosis(eps.numpy(), fisher=False)) - 3.0) < 0.05
    # neighbouring counters: along a row (lag 1, 2) and down a column (lag 256) uncorrelated
    for lag in (1, 2, 256):
        r = float(torch.corrcoef(torch.stack([eps[:-lag], eps[lag:]]))[0, 1])
        assert abs(r) < 5 / math.sqrt(n), f"lag {lag}: correlation {r}"
    # the two uniforms of one number come from counters 2c and 2c+1: |eps| and its sign independent
    r = float(torch.corrcoef(torch.stack([eps.abs(), torch.sign(eps)]))[0, 1])
    assert abs(r) < 5 / math.sqrt(n)


def test_noise_seeds_independent():
    n = 1 << 18
    z = torch.zeros(4, 256, 256)
    a, b, c = (rf_start_ref(z, 0.0, seed=s).flatten().double() for s in (0, 1, 0x9E3779B9))
    for u, w, what in ((a, b, "seeds 0/1"), (a, c, "seed 0 vs the key constant"), (b, c, "seeds 1/key")):
        r = float(torch.corrcoef(torch.stack([u, w]))[0, 1])
        assert abs(r) < 5 / math.sqrt(n), f"{what}: correlation {r}"
        assert float((u == w).double().mean()) < 1e-3
    # a seed's stream at offset k is not another seed's stream: no shifted copies
    r = float(torch.corrcoef(torch.stack([a[1:], b[:-1]]))[0, 1])
    assert abs(r) < 5 / math.sqrt(n)


def test_reference_is_deterministic_and_mixes_y():
    y = torch.linspace(-1, 1, 64 * 64).view(1, 1, 64, 64)
    a = rf_start_ref(y, 0.7, 3, 10)
    assert torch.equal(a, rf_start_ref(y, 0.7, 3, 10))
    eps = (a.double() - 0.7 * y.double()) / 0.3
    assert_close(eps, rng_normal(3, 10 + torch.arange(64 * 64)).view(1, 1, 64, 64).double(), 1e-5, 1e-5, name="eps")


def test_params_rounding():
    p = RfStepParams.start(0.1, 1, 2)
    assert p.a == float(np.float32(0.1)) and p.b == float(np.float32(0.9))
    assert RfStepParams.heun(0.1).a == float(np.float32(0.1)) / 2


# ---------------------------------------------------------------- bad input


def test_bad_input_names_the_argument():
    x = torch.zeros(2, 1, 8, 8)
    v = torch.zeros_like(x)
    with pytest.raises(ValueError, match="t0"):
        rf_start(x, 1.5, 0)
    with pytest.raises(ValueError, match="t0"):
        rf_start(x, -0.01, 0)
    with pytest.raises(ValueError, match="t0"):
        rf_start(x, float("nan"), 0)
    with pytest.raises(TypeError, match="y must be float32"):
        rf_start(x.double(), 0.5, 0)
    with pytest.raises(ValueError, match="y must be"):
        rf_start(torch.zeros(8), 0.5, 0)
    with pytest.raises(ValueError, match="seed"):
        rf_start(x, 0.5, 2**32)
    with pytest.raises(TypeError, match="seed"):
        rf_start(x, 0.5, 1.5)
    with pytest.raises(ValueError, match="offset"):
        rf_start(x, 0.5, 0, offset=2**32 - 10)  # would wrap the counter space
    with pytest.raises(ValueError, match="offset"):
        rf_start(x, 0.5, 0, offset=-1)
    with pytest.raises(ValueError, match="v is on meta"):
        rf_step(x, torch.zeros(2, 1, 8, 8, device="meta"), 0.1)
    with pytest.raises(ValueError, match="v must have the shape"):
        rf_step(x, torch.zeros(2, 1, 8, 9), 0.1)
    with pytest.raises(TypeError, match="v must be float32"):
        rf_step(x, v.half(), 0.1)
    with pytest.raises(TypeError, match="x must be float32"):
        rf_step(x.to(torch.bfloat16), v, 0.1)
    with pytest.raises(ValueError, match="method"):
        rf_step(x, v, 0.1, method="rk4")
    with pytest.raises(ValueError, match="v_prev"):
        rf_step(x, v, 0.1, method="heun")
    with pytest.raises(ValueError, match="v_prev"):
        rf_step(x, v, 0.1, v_prev=v)
    with pytest.raises(ValueError, match="dt"):
        rf_step(x, v, float("inf"))
    with pytest.raises(ValueError, match="out must have the shape"):
        rf_step(x, v, 0.1, out=torch.zeros(2, 1, 8, 7))
    buf = torch.zeros(3, 1, 8, 8)
    with pytest.raises(ValueError, match="out partially overlaps x"):
        rf_step(buf[:2], v, 0.1, out=buf[1:])
    rf_step(buf[:1], v[:1], 0.1, out=buf[1:2])  # disjoint parts of one buffer are fine
    with pytest.raises(ValueError, match="expanded"):
        rf_step(x, v, 0.1, out=torch.zeros(1, 1, 8, 8).expand(2, 1, 8, 8))
    if not torch.cuda.is_available():
        with pytest.raises(_backends.BackendError, match="cuda"):
            rf_step(x, v, 0.1, backend="cuda")


def test_native_kernel_checks_its_preconditions():
    ok, why = _backends.backend_status("rf_step", "cpu", torch.device("cpu"))
    if not ok:
        pytest.skip(why)
    C = _backends.native()
    x = torch.zeros(16)
    p = RfStepParams.euler(0.1).native(C)
    with pytest.raises(ValueError, match="non-null"):
        C.rf_step_cpu(x.data_ptr(), x.data_ptr(), 0, 0, 16, p)
    with pytest.raises(ValueError, match="n must be"):
        C.rf_step_cpu(x.data_ptr(), x.data_ptr(), x.data_ptr(), 0, -1, p)
    p.mode = 7
    with pytest.raises(ValueError, match="mode"):
        C.rf_step_cpu(x.data_ptr(), x.data_ptr(), x.data_ptr(), 0, 16, p)
    p.mode = 2
    with pytest.raises(ValueError, match="v_prev"):
        C.rf_step_cpu(x.data_ptr(), x.data_ptr(), x.data_ptr(), 0, 16, p)
