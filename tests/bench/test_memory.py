import torch

from latentfuse.bench.memory import PeakMemory, rss_bytes


def test_cpu_peak_memory_sees_a_large_temporary():
    if rss_bytes() is None:
        import pytest

        pytest.skip("no /proc/self/statm on this platform")
    with PeakMemory("cpu") as mem:
        x = torch.ones(64 * 2**20 // 4)
        y = x * 2
        del x, y
    assert mem.peak_bytes >= 48 * 2**20
