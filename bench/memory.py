"""Peak memory of one timed call.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated
before the call (the call's own tensors; caching-allocator reserve is not counted).

CPU: tracemalloc does not see torch's allocations, and ``getrusage`` max-RSS only ever grows within a
process, so a background thread samples the resident set size (``/proc/self/statm``) every
``interval`` seconds while the call runs; the result is the peak RSS above the RSS at entry. Freed
heap that glibc keeps would be reused without raising RSS, so entry first calls glibc's
``malloc_trim(0)`` to hand it back: the call then has to fault in its working set again, and the
delta measures it (pages the allocator still holds make it a lower bound; the sweep reports the
maximum over all calls). Without ``/proc`` (not Linux) it falls back to the max-RSS delta, which
is 0 once a larger call ran.
"""

from __future__ import annotations

import ctypes
import os
import resource
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _malloc_trim() -> None:
    """Return free heap pages to the OS (glibc only; a no-op elsewhere)."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def reset_process_peak() -> bool:
    """Reset the process's peak resident set (Linux: VmHWM, via /proc/self/clear_refs); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def process_peak_rss() -> int | None:
    """The process's peak resident set since start or :func:`reset_process_peak` (VmHWM), bytes; None off Linux.
    Unlike :class:`PeakMemory` it counts everything the process holds, not the growth during one call."""
    return _proc_kb("/proc/self/status", "VmHWM:")


def cuda_peak(reset: bool = False) -> int | None:
    """torch's CUDA allocator peak in bytes (``reset``: start a new peak and return None); None without a GPU."""
    if not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return int(torch.cuda.max_memory_allocated())


def available_bytes(device: torch.device) -> int | None:
    """Memory still free for activations: free GPU memory, or MemAvailable on the host (None if unknown)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return _proc_kb("/proc/meminfo", "MemAvailable:")


def _proc_kb(path: str, key: str) -> int | None:
    """Bytes of the ``key: N kB`` line of a /proc file; None where there is none."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """``with PeakMemory(device) as m: call()`` then ``m.peak_bytes``."""

    def __init__(self, device: torch.device | str, interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = rss_bytes()
            if rss is not None:
                self._peak = max(self._peak, rss)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _malloc_trim()
        base = rss_bytes()
        if base is None:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return self
        self._base = self._peak = base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
            return
        if self._thread is None:
            self.peak_bytes = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._base)
            return
        self._stop.set()
        self._thread.join()
        rss = rss_bytes()
        self.peak_bytes = max(0, max(self._peak, rss or 0) - self._base)
