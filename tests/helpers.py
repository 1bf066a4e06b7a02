"""Comparison helpers whose failure messages name the worst index and both values, and a spy on the
seeds the pipeline hands to TT-GPR."""
from __future__ import annotations

import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0, name: str = "") -> None:
    actual = torch.as_tensor(actual).detach().cpu()
    expected = torch.as_tensor(expected).detach().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    if actual.dtype == torch.bool or expected.dtype == torch.bool:
        diff = actual != expected
        if bool(diff.any()):
            idx = tuple(diff.nonzero()[0].tolist())
            raise AssertionError(f"{name}: {int(diff.sum())} elements differ; first at {idx}: {bool(actual[idx])} vs expected {bool(expected[idx])}")
        return
    a = actual.double()
    e = expected.double()
    if bool(torch.isnan(a).any() != torch.isnan(e).any()) or bool((torch.isnan(a) != torch.isnan(e)).any()):
        idx = tuple((torch.isnan(a) != torch.isnan(e)).nonzero()[0].tolist())
        raise AssertionError(f"{name}: NaN mismatch at {idx}: {float(a[idx])} vs expected {float(e[idx])}")
    err = (a - e).abs() - (atol + rtol * e.abs())
    err = torch.nan_to_num(err, nan=-1.0)
    if a.numel() and float(err.max()) > 0:
        flat = int(err.argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
        raise AssertionError(
            f"{name}: {int((err > 0).sum())} of {a.numel()} elements outside atol={atol}, rtol={rtol}; "
            f"worst at {idx}: {float(a[idx])!r} vs expected {float(e[idx])!r} (|diff| = {abs(float(a[idx] - e[idx])):.3g})"
        )


def spy_run_field_seeds(monkeypatch) -> dict:
    """Record the ``seeds`` the pipeline passes to :func:`mcgr.infer.ttgpr.run_field` (canvas px):
    the returned dict's ``"seeds"`` after each call; the run itself goes on unchanged."""
    import mcgr.infer.pipeline as pl

    seen: dict = {}
    real = pl.run_field

    def spy(*a, **k):
        seen["seeds"] = k.get("seeds")
        return real(*a, **k)

    monkeypatch.setattr(pl, "run_field", spy)
    return seen
