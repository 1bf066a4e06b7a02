"""pytest-benchmark cases of refine (the quick sizes of benchmarks/bench_refine.py), every provider."""
import pytest

from benchmarks._pytest_cases import bench, params


@pytest.mark.parametrize("index,provider", params("refine"))
def test_refine(benchmark, bench_device, index, provider):
    bench(benchmark, "refine", index, provider, bench_device)
