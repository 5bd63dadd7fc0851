"""transform_scatter: the fused op against the plain-torch way (gather -> MLP -> index_put
with autograd), B=1, R=64, K = 25% of S, fp32.

Providers, side by side in one run:
- ``torch_fwd``: reference forward, parameters requiring grad (builds the autograd graph);
- ``torch_fwd_nograd``: reference forward under ``torch.no_grad()``;
- ``torch_fwd_bwd``: reference forward + ``torch.autograd.grad`` for x, w1, b1, w2, b2;
- ``<backend>_inplace``: fused, ``inplace=True`` under ``no_grad`` (inference);
- ``<backend>_fwd``: fused out-of-place forward with grad-requiring parameters;
- ``<backend>_fwd_bwd``: fused forward + backward.

Writes ``results/transform_scatter_<device>.{csv,json,png}`` and prints a markdown table.
Usage: ``python benchmarks/bench_transform_scatter.py [--device cuda] [--quick] [--no-write]``.
Provider definitions: ``benchmarks/providers.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, median_time, peak_memory, plot_lines, write_results
from benchmarks.providers import SCATTER_RANK, transform_scatter_providers


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    backends = ["cpu"] if device.type == "cpu" else ["triton", "cuda"]
    seqs, dims = ([1024], [256]) if args.quick else ([4096, 16384], [1024, 4096])
    rows = []
    for d in dims:
        for s in seqs:
            providers = transform_scatter_providers(s, d, device, backends)
            # Round-robin over the providers, so that load changes on a shared machine hit
            # them alike; the median over the rounds per provider.
            times = {name: [] for name in providers}
            for round_ in range(args.repeats):
                for name, fn in providers.items():
                    times[name].append(median_time(fn, device, repeats=1, warmup=int(round_ == 0)))
            for name, fn in providers.items():
                seconds, extra = statistics.median(times[name]), peak_memory(fn, device)
                row = {"S": s, "D": d, "K": s // 4, "R": SCATTER_RANK, "provider": name}
                rows.append({**row, "time_ms": seconds * 1e3, "peak_extra_mb": extra / 2**20})
                print(f"S={s} D={d} {name}: {seconds * 1e3:.2f} ms, {extra / 2**20:.1f} MiB")
    summary = _summary(rows, backends)
    if not args.no_write:
        write_results("transform_scatter", rows, device, extra={"summary": summary})
        plot_lines(
            "transform_scatter",
            rows,
            device,
            x="S",
            y="time_ms",
            series="provider",
            panels="D",
            ylabel="median time (ms)",
        )
    print(markdown_table(rows, ["S", "D", "provider", "time_ms", "peak_extra_mb"]))
    print()
    print(markdown_table(summary, list(summary[0])))


def _summary(rows, backends):
    """Speed-ups and memory ratios against the issue's targets."""
    by_key = {(r["S"], r["D"], r["provider"]): r for r in rows}
    out = []
    for s, d in dict.fromkeys((r["S"], r["D"]) for r in rows):
        get = lambda p, s=s, d=d: by_key[(s, d, p)]
        for backend in backends:
            ref_fb, fused_fb = get("torch_fwd_bwd"), get(f"{backend}_fwd_bwd")
            inplace_ms = get(f"{backend}_inplace")["time_ms"]
            out.append(
                {
                    "S": s,
                    "D": d,
                    "backend": backend,
                    "inplace_vs_torch_fwd": get("torch_fwd")["time_ms"] / inplace_ms,
                    "inplace_vs_torch_fwd_nograd": get("torch_fwd_nograd")["time_ms"] / inplace_ms,
                    "fwd_vs_torch_fwd": get("torch_fwd")["time_ms"]
                    / get(f"{backend}_fwd")["time_ms"],
                    "fwd_bwd_speedup": ref_fb["time_ms"] / fused_fb["time_ms"],
                    "fwd_bwd_memory_ratio": fused_fb["peak_extra_mb"]
                    / max(ref_fb["peak_extra_mb"], 1e-9),
                }
            )
    return out


if __name__ == "__main__":
    main()
