"""The RF ODE sampler against closed forms: the discrete Euler recursion of a linear field, the ODE
solutions of a linear and a nonlinear field (orders of convergence), and its boundary cases."""
from __future__ import annotations

import math

import pytest
import torch

from mcgr.models.sampling import sample, time_grid
from mcgr.ops.rf_step import rf_start_ref
from conftest import backend_or_skip
from helpers import assert_close
from tolerances import TOLERANCES

BACKENDS = ("reference", "cpu", "triton", "cuda")
SHAPE = (3, 1, 17, 23)


def _y(shape=SHAPE, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _linear(a: float, b: float):
    return lambda x, t, s: x * a + b


def _sine(x, t, s):
    """v = -t sin(x): nonlinear and time dependent; tan(x/2) = tan(x0/2) exp(-(t^2 - t0^2) / 2)."""
    return -t.view(-1, *([1] * (x.dim() - 1))) * torch.sin(x)


def _sine_exact(x0: torch.Tensor, t0: float) -> torch.Tensor:
    k = torch.round(x0 / (2 * math.pi))  # sin is 2 pi periodic: solve from the nearest branch
    r = x0 - 2 * math.pi * k
    return 2 * math.pi * k + 2 * torch.atan(torch.tan(r / 2) * math.exp(-(1.0 - t0 * t0) / 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_euler_linear_field_reaches_the_discrete_closed_form(backend, device):
    backend_or_skip("rf_step", backend, device)
    a, b, t0, n, seed = -0.7, 0.3, 0.3, 5, 17
    y = _y()
    got = sample(_linear(a, b), y.to(device), None, t0=t0, steps=n, seed=seed, offset=11, backend=backend)
    assert got.device == device
    x0 = rf_start_ref(y, t0, seed, 11).double()
    h = (1 - t0) / n
    # x_{k+1} = (1 + a h) x_k + b h  =>  x_n = (1 + a h)^n (x_0 + b / a) - b / a
    want = (1 + a * h) ** n * (x0 + b / a) - b / a
    atol, rtol = TOLERANCES[("rf_step", "start")]
    assert_close(got, want, atol + 1e-6, rtol + 1e-6, name="Euler endpoint")


def test_euler_converges_to_the_linear_ode_solution_first_order():
    a, b, t0 = -1.3, 0.4, 0.2
    y = _y(seed=1)
    x0 = rf_start_ref(y, t0, 3).double()
    exact = (x0 + b / a) * math.exp(a * (1 - t0)) - b / a
    errs = [float((sample(_linear(a, b), y, None, t0=t0, steps=n, seed=3).double() - exact).abs().max())
            for n in (8, 16, 32)]
    assert errs[0] > errs[1] > errs[2]
    for coarse, fine in zip(errs, errs[1:]):
        assert 1.7 < coarse / fine < 2.3, errs


@pytest.mark.parametrize("backend", BACKENDS)
def test_heun_is_second_order_and_euler_first_on_a_nonlinear_field(backend, device):
    backend_or_skip("rf_step", backend, device)
    t0, seed = 0.1, 5
    y = _y(seed=2)
    exact = _sine_exact(rf_start_ref(y, t0, seed).double(), t0)

    def err(method, n):
        x = sample(_sine, y.to(device), None, t0=t0, steps=n, method=method, seed=seed, backend=backend)
        # the max over elements: the leading error term changes sign across elements, so a mean
        # would mix cancellations into the ratios
        return float((x.cpu().double() - exact).abs().max())

    heun = [err("heun", n) for n in (4, 8, 16)]
    euler = [err("euler", n) for n in (4, 8, 16)]
    for coarse, fine in zip(heun, heun[1:]):
        assert 3.5 < coarse / fine < 5.0, heun
    for coarse, fine in zip(euler, euler[1:]):
        assert 1.8 < coarse / fine < 2.2, euler
    assert heun[0] < euler[0] / 5


def test_velocity_sees_the_time_grid_and_reused_buffers():
    calls = []

    def vf(x, t, s):
        calls.append((x.data_ptr(), t.clone(), s))
        return torch.zeros_like(x)

    y = _y()
    smap = torch.zeros(SHAPE)
    sample(vf, y, smap, t0=0.25, steps=3, method="euler")
    assert [float(c[1][0]) for c in calls] == pytest.approx([0.25, 0.5, 0.75])
    assert all(c[1].shape == (SHAPE[0],) and c[1].dtype == torch.float32 for c in calls)
    assert all(c[2] is smap for c in calls)
    assert len({c[0] for c in calls}) == 1  # Euler updates one state buffer in place
    calls.clear()
    out = torch.empty(SHAPE)
    res = sample(vf, y, smap, t0=0.25, steps=3, method="heun", out=out)
    assert res.data_ptr() == out.data_ptr()
    assert [float(c[1][0]) for c in calls] == pytest.approx([0.25, 0.5, 0.5, 0.75, 0.75, 1.0])
    assert len({c[0] for c in calls}) == 2  # state and predictor, nothing else
    assert time_grid(0.3, 7)[-1] == 1.0


def test_t0_one_returns_y_without_evaluating():
    y = _y()

    def vf(x, t, s):
        raise AssertionError("velocity evaluated at t0 = 1")

    got = sample(vf, y, None, t0=1.0, steps=4)
    assert torch.equal(got, y) and got.data_ptr() != y.data_ptr()


def test_zero_field_returns_the_noisy_start_and_low_precision_velocity_is_widened():
    y = _y()
    got = sample(lambda x, t, s: torch.zeros_like(x, dtype=torch.bfloat16), y, None, t0=0.6, steps=2, seed=8)
    assert got.dtype == torch.float32
    assert_close(got, rf_start_ref(y, 0.6, 8), *TOLERANCES[("rf_step", "start")], name="zero field")


def test_backends_agree():
    y = _y()
    ref = sample(_sine, y, None, t0=0.4, steps=3, method="heun", seed=9, backend="reference")
    for backend in ("cpu", "triton"):
        from mcgr._backends import backend_status

        if backend_status("rf_step", backend, "cpu")[0]:
            got = sample(_sine, y, None, t0=0.4, steps=3, method="heun", seed=9, backend=backend)
            assert_close(got, ref, 2e-5, 2e-5, name=backend)


def test_bad_input_names_the_argument():
    y = _y()
    vf = _linear(-1.0, 0.0)
    for t0 in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="t0"):
            sample(vf, y, None, t0=t0)
    with pytest.raises(ValueError, match="steps"):
        sample(vf, y, None, steps=0)
    with pytest.raises(TypeError, match="steps"):
        sample(vf, y, None, steps=2.0)
    with pytest.raises(TypeError, match="y must be float32"):
        sample(vf, y.double(), None)
    with pytest.raises(ValueError, match="y holds NaN"):
        sample(vf, torch.full(SHAPE, float("nan")), None)
    with pytest.raises(ValueError, match="seed_map is on meta"):
        sample(vf, y, torch.zeros(SHAPE, device="meta"))
    with pytest.raises(ValueError, match="method"):
        sample(vf, y, None, method="rk4")
    with pytest.raises(TypeError, match="velocity_fn must be callable"):
        sample(None, y, None)
    with pytest.raises(ValueError, match="velocity_fn must return the shape"):
        sample(lambda x, t, s: x[:1], y, None)
    with pytest.raises(ValueError, match="seed"):
        sample(vf, y, None, seed=-1)
    buf = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="same buffer"):
        sample(lambda x, t, s: buf, y, None, method="heun")
