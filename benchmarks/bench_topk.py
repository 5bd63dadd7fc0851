"""select_low_importance vs torch.topk(largest=False) + gather of the positions.

B in {1, 8}, Nv in {576, 2880, 16384, 65536}, ratio 0.25 (K = Nv / 4, every slot valid),
importance-like values (a softmax row). Providers, in one process and run:

- ``cagul``: the public op (CPU tensors: C++ kernel; CUDA tensors: Triton), all checks;
- ``cagul_op``: the same through the ``torch.ops.cagul`` dispatcher (what compiled graphs
  call);
- ``torch_topk``: ``torch.topk(importance, K, largest=False)`` and ``visual_index.gather``
  (no padding handling, no tie order guarantee);
- ``reference``: the stable-sort reference;
- on CUDA also ``cuda`` (the CUDA C++ kernel) when the extension was built with nvcc.

Writes ``results/bench_topk[_<T>t]_<device>.{csv,json,png}`` and prints a markdown table.
Usage: ``python benchmarks/bench_topk.py [--device cpu|cuda] [--threads T] [--repeats N]``
(``--threads``: CPU threads of every provider, default torch's).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    markdown_table,
    median_time,
    peak_memory,
    plot_lines,
    write_results,
)
from cagul_kernels import select_low_importance
from cagul_kernels.ops._backend import extension_has_cuda

BATCHES = (1, 8)
LENGTHS = (576, 2880, 16384, 65536)
RATIO = 0.25


def providers(device: torch.device, importance, visual_index, k):
    """name -> zero-argument callable."""
    backend = "cpu" if device.type == "cpu" else "triton"
    out = {
        "torch_topk": lambda: visual_index.gather(
            1, torch.topk(importance, k, dim=1, largest=False).indices
        ),
        "cagul": lambda: select_low_importance(importance, visual_index, ratio=RATIO),
        "cagul_op": lambda: torch.ops.cagul.select_low_importance(
            importance, visual_index, -1, RATIO, backend
        ),
        "reference": lambda: select_low_importance(
            importance, visual_index, ratio=RATIO, backend="reference"
        ),
    }
    if device.type == "cuda" and extension_has_cuda():
        out["cuda"] = lambda: select_low_importance(
            importance, visual_index, ratio=RATIO, backend="cuda"
        )
    return out


def run(device: torch.device, repeats: int) -> list[dict]:
    rows = []
    for b in BATCHES:
        for nv in LENGTHS:
            g = torch.Generator().manual_seed(nv + b)
            importance = (torch.randn(b, nv, generator=g) * 2).softmax(-1).to(device)
            visual_index = (torch.arange(nv) + 16).repeat(b, 1).to(device)
            k = math.ceil(RATIO * nv)
            fns = providers(device, importance, visual_index, k)
            # same selection (torch.topk may order exact ties differently: compare values)
            want = fns["reference"]()[0]
            assert torch.equal(fns["cagul"]()[0], want)
            picked = torch.topk(importance, k, dim=1, largest=False).indices
            assert torch.equal(importance.gather(1, picked), importance.gather(1, want))
            reps = max(5, repeats * 576 // nv) if device.type == "cpu" else repeats
            times = {}
            for name, fn in fns.items():
                times[name] = median_time(fn, device, repeats=reps, warmup=2)
                rows.append(
                    {
                        "B": b,
                        "Nv": nv,
                        "K": k,
                        "provider": name,
                        "ms": times[name] * 1e3,
                        "peak_mb": peak_memory(fn, device) / 2**20,
                    }
                )
            for row in rows[-len(fns) :]:
                row["speedup_vs_torch"] = times["torch_topk"] / (row["ms"] / 1e3)
            print(
                f"B={b} Nv={nv}: " + "  ".join(f"{n} {t * 1e3:.3f} ms" for n, t in times.items()),
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    names = list(dict.fromkeys(r["provider"] for r in rows))
    wide = []
    for b, nv in dict.fromkeys((r["B"], r["Nv"]) for r in rows):
        cell = {r["provider"]: r for r in rows if r["B"] == b and r["Nv"] == nv}
        line = {"B": b, "Nv": nv, "K": cell["cagul"]["K"]}
        line.update({f"{n} ms": cell[n]["ms"] for n in names})
        line["cagul speedup"] = cell["cagul"]["speedup_vs_torch"]
        wide.append(line)
    return markdown_table(wide, list(wide[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--repeats", type=int, default=200, help="CPU: repeats at Nv=576")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = "bench_topk"
    if args.threads:
        torch.set_num_threads(args.threads)
        name += f"_{args.threads}t"
    rows = run(device, args.repeats if device.type == "cpu" else 50)
    extra = {"ratio": RATIO, "values": "softmax(2 * randn) rows, every slot valid"}
    csv_path = write_results(name, rows, device, extra=extra)
    plot_lines(name, rows, device, x="Nv", y="ms", series="provider", panels="B")
    print(f"wrote {csv_path} (+ .json, .png)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
