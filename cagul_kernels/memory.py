"""Peak memory of a block of code, on CUDA or CPU (benchmarks and training reports)."""

from __future__ import annotations

import contextlib
import ctypes
import re
from pathlib import Path

import torch


def _rss_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))


def mib(nbytes: int | None) -> float | None:
    """``nbytes`` in MiB rounded to 0.1 (``None`` stays ``None``)."""
    return None if nbytes is None else round(nbytes / 2**20, 1)


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.bytes``: the peak extra memory of the
    block.

    CUDA: ``max_memory_allocated`` above the memory allocated on entry. CPU: the process's
    peak resident set (VmHWM, reset through /proc/self/clear_refs) above the resident set on
    entry, after returning freed heap memory to the OS; ``None`` where /proc is missing.
    Blocks nest: an inner block's reset of the peak first hands the peak so far to the
    enclosing blocks of the same device type.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.bytes: int | None = None
        self._before: int | None = None
        self._seen = 0  # the peak before an inner block reset it

    def _peak(self) -> int:
        """The high-water mark since the last reset, in bytes."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return _rss_kib("VmHWM") * 1024

    def __enter__(self) -> PeakMemory:
        for outer in _ACTIVE:
            if outer.device.type == self.device.type and outer._before is not None:
                outer._seen = max(outer._seen, outer._peak())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            with contextlib.suppress(OSError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self._before = _rss_kib("VmRSS") * 1024
            except OSError:
                self._before = None
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        if self._before is not None:
            self.bytes = max(0, max(self._peak(), self._seen) - self._before)


_ACTIVE: list[PeakMemory] = []  # the blocks entered and not yet left, outermost first
