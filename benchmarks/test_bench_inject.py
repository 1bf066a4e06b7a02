"""pytest-benchmark cases of inject (the quick sizes of benchmarks/bench_inject.py), every provider."""
import pytest

from benchmarks._pytest_cases import bench, params


@pytest.mark.parametrize("index,provider", params("inject"))
def test_inject(benchmark, bench_device, index, provider):
    bench(benchmark, "inject", index, provider, bench_device)
