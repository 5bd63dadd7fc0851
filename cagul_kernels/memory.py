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


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.bytes``: the peak extra memory of the
    block.

    CUDA: ``max_memory_allocated`` above the memory allocated on entry. CPU: the process's
    peak resident set (VmHWM, reset through /proc/self/clear_refs) above the resident set on
    entry, after returning freed heap memory to the OS; ``None`` where /proc is missing.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.bytes: int | None = None
        self._before: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
            return self
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._before = _rss_kib("VmRSS")
        except OSError:
            self._before = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._before
        elif self._before is not None:
            self.bytes = max(0, _rss_kib("VmHWM") - self._before) * 1024
