"""Shared benchmark utilities: timing, peak memory, machine description, CSV + plot output.

Every benchmark compares providers in one process and run, and writes
``benchmarks/results/<name>_<cpu|gpu>.csv`` / ``.png`` next to a ``.json`` that describes
the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from cagul_kernels.memory import PeakMemory

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the numbers were measured on."""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


DTYPES = ("float32", "bfloat16", "float16")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default: CUDA when available) and ``--dtype`` (one of :data:`DTYPES`;
    default: :func:`default_dtype`), read back by :func:`device_and_dtype`."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default=None, choices=DTYPES, help="default: float32 on CPU, bfloat16 on GPU"
    )


def default_dtype(device: torch.device) -> torch.dtype:
    """What the kernels are measured in on ``device``: bf16 on CUDA, fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """``(device, dtype)`` of the arguments of :func:`add_device_arguments`."""
    device = torch.device(args.device)
    return device, getattr(torch, args.dtype) if args.dtype else default_dtype(device)


def device_tag(device: torch.device) -> str:
    """File-name tag: ``cpu`` or ``gpu`` (the GPU's name is in every row, the JSON and the
    plot title)."""
    return "gpu" if device.type == "cuda" else "cpu"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1
) -> float:
    """Median wall time of ``fn()`` in seconds (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak extra memory of one ``fn()`` call, in bytes (:class:`PeakMemory`)."""
    with PeakMemory(device) as peak:
        fn()
    return peak.bytes


def matmul_rate(device: torch.device, n: int = 2048) -> float:
    """fp32 matmul rate (FLOP/s) of this machine, as a yardstick for kernel efficiency."""
    a = torch.randn(n, n, device=device)
    return 2 * n**3 / median_time(lambda: a @ a, device, repeats=5)


def write_results(
    name: str, rows: Sequence[dict], device: torch.device, extra: dict | None = None
) -> Path:
    """Writes ``results/<name>_<tag>.csv`` and a ``.json`` with rows + machine; returns csv path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{name}_{device_tag(device)}"
    if device.type == "cuda":
        rows = [{"gpu": torch.cuda.get_device_name(device), **row} for row in rows]
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {"machine": machine(), **(extra or {}), "rows": list(rows)}
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return stem.with_suffix(".csv")


def plot_lines(
    name: str,
    rows: Sequence[dict],
    device: torch.device,
    *,
    x: str,
    y: str,
    series: str,
    panels: str | None = None,
    ylabel: str | None = None,
    logy: bool = True,
) -> Path:
    """One line per ``series`` value of ``y`` against ``x``, one panel per ``panels`` value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel_values = sorted({r[panels] for r in rows}, key=str) if panels else [None]
    fig, axes = plt.subplots(
        1, len(panel_values), figsize=(5 * len(panel_values), 4), squeeze=False
    )
    for ax, pv in zip(axes[0], panel_values, strict=True):
        subset = [r for r in rows if panels is None or r[panels] == pv]
        for sv in dict.fromkeys(r[series] for r in subset):
            pts = [(r[x], r[y]) for r in subset if r[series] == sv and r[y] not in (None, "")]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=str(sv))
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel or y)
        if logy:
            ax.set_yscale("log")
        ax.set_title(f"{panels}={pv}" if panels else name)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{name} ({machine().get('gpu', machine()['cpu'])})")
    fig.tight_layout()
    path = RESULTS / f"{name}_{device_tag(device)}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``columns`` (floats to 3 significant digits)."""

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
