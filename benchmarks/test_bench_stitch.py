"""pytest-benchmark cases of stitch (the quick sizes of benchmarks/bench_stitch.py), every provider."""
import pytest

from benchmarks._pytest_cases import bench, params


@pytest.mark.parametrize("index,provider", params("stitch"))
def test_stitch(benchmark, bench_device, index, provider):
    bench(benchmark, "stitch", index, provider, bench_device)
