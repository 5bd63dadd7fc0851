"""select_low_importance vs torch.topk(largest=False) + gather of the positions.

B in {1, 8}, Nv in {576, 2880, 16384, 65536}, ratio 0.25 (K = Nv / 4, every slot valid),
importance-like values (a softmax row). Providers, in one process and run:

- ``cagul``: the public op (CPU tensors: C++ kernel; CUDA tensors: Triton), all checks;
- ``torch_topk``: ``torch.topk(importance, K, largest=False)`` and ``visual_index.gather``
  (no padding handling, no tie order guarantee);
- ``reference``: the stable-sort reference;
- on CUDA also ``cuda`` (the CUDA C++ kernel) when the extension was built with nvcc.

Writes ``results/bench_topk[_<T>t]_<device>.{csv,json,png}`` and prints a markdown table.
Usage: ``python benchmarks/bench_topk.py [--device cpu|cuda] [--threads T] [--repeats N]
[--batches B..] [--lengths Nv..] [--no-write]`` (``--threads``: CPU threads of every
provider, default torch's). Provider definitions: ``benchmarks/providers.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, median_time, peak_memory, plot_lines, write_results
from benchmarks.providers import TOPK_RATIO, topk_inputs, topk_providers

BATCHES = (1, 8)
LENGTHS = (576, 2880, 16384, 65536)


def run(device: torch.device, repeats: int, batches, lengths) -> list[dict]:
    rows = []
    for b in batches:
        for nv in lengths:
            importance, visual_index = topk_inputs(b, nv, device)
            k = math.ceil(TOPK_RATIO * nv)
            fns = topk_providers(importance, visual_index)
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--repeats", type=int, default=200, help="CPU: repeats at Nv=576")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = "bench_topk"
    if args.threads:
        torch.set_num_threads(args.threads)
        name += f"_{args.threads}t"
    repeats = args.repeats if device.type == "cpu" else 50
    rows = run(device, repeats, args.batches, args.lengths)
    if not args.no_write:
        extra = {"ratio": TOPK_RATIO, "values": "softmax(2 * randn) rows, every slot valid"}
        csv_path = write_results(name, rows, device, extra=extra)
        plot_lines(name, rows, device, x="Nv", y="ms", series="provider", panels="B")
        print(f"wrote {csv_path} (+ .json, .png)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
