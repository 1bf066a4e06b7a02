"""Parametrisation shared by ``benchmarks/test_bench_<op>.py``: each op's quick cases x providers."""
from __future__ import annotations

import pytest
import torch

from benchmarks._harness import PROVIDERS, _compiled, sync
from benchmarks.run_all import op_cases


def params(op: str) -> list:
    _, _, cases = op_cases(op, quick=True)
    return [pytest.param(i, prov, id=f"{prov}-{c.shape.replace(' ', '_')}") for i, c in enumerate(cases) for prov in PROVIDERS]


def bench(benchmark, op: str, index: int, provider: str, device: torch.device) -> None:
    """Time provider ``provider`` of ``op`` on its quick case ``index`` with pytest-benchmark."""
    from mcgr._backends import backend_status

    ref_fn, public_fn, cases = op_cases(op, quick=True)
    case = cases[index]
    if provider not in ("ref", "compiled"):
        ok, why = backend_status(op, provider, device)
        if not ok:
            pytest.skip(why)
    args = case.make(device)
    if provider == "ref":
        fn = lambda: ref_fn(*args, **case.ref_kwargs)  # noqa: E731
    elif provider == "compiled":
        try:
            fn, secs = _compiled(ref_fn, args, case.ref_kwargs, device)  # compile time stays out of the timing
        except Exception as exc:
            pytest.skip(f"torch.compile of {op}'s reference failed: {type(exc).__name__}: {str(exc)[:200]}")
        benchmark.extra_info["compile_s"] = round(secs, 2)
    else:
        fn = lambda: public_fn(*args, backend=provider, **case.kwargs)  # noqa: E731

    def call():
        fn()
        sync(device)

    call()
    benchmark.extra_info.update(op=op, backend=provider, shape=case.shape, bytes=case.bytes)
    benchmark(call)
