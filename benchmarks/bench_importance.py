"""Cross-modal importance: eager softmax vs FlashAttention-style LSE recompute.

Providers, in one process and run, for a prompt ``[32 text][Nv image][128 question]``:

- ``eager``: transformers' ``eager_attention_forward`` (what ``output_attentions=True`` /
  FastV / SparseVLM run today): scores and softmax probabilities materialised
  (``B x H x S x S``), attention output ``P @ V``, then the question rows' mean over heads
  on the image columns.
- ``attention_with_lse``: the fused attention alone (output + LSE).
- ``attention_with_lse+importance``: the fused attention plus ``cross_modal_importance``.
- ``importance`` (alone, per backend) and ``importance_torch_recompute`` (the plain-torch
  reference recompute from q, k, LSE) for the op's own cost.
- ``pyramiddrop_recompute``: what a FlashAttention user would otherwise write (PyramidDrop):
  the query rows' full-row softmax over all keys, image columns sliced, no LSE.
- on CUDA: ``sdpa_flash`` (PyTorch's flash attention) and ``flash_attn2`` when importable.

Provider definitions: ``benchmarks/providers.py``.

Also reports the machine's fp32 matmul rate (measured at every setting), and the
importance op's effective rate
``2 * Hq * Nq * Nv * D / time`` as a fraction of it.

    python benchmarks/bench_importance.py            # full sweep, writes benchmarks/results/
    python benchmarks/bench_importance.py --quick    # two small sizes, prints the table only
    python benchmarks/bench_importance.py --nvs 16384 --hkvs 8   # chosen sizes
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    add_device_arguments,
    device_and_dtype,
    markdown_table,
    matmul_rate,
    median_time,
    peak_memory,
    plot_lines,
    write_results,
)
from benchmarks.providers import (
    IMPORTANCE_D,
    IMPORTANCE_HQ,
    QUESTION,
    importance_inputs,
    importance_providers,
)


def run(nvs, hkvs, device, dtype, backends, repeats):
    rows = []
    for hkv in hkvs:
        for nv in nvs:
            q, k, v, lse, query_index, visual_index = importance_inputs(nv, hkv, device, dtype)
            s = q.shape[2]
            providers = importance_providers(q, k, v, lse, query_index, visual_index, backends)
            flops = 2 * IMPORTANCE_HQ * QUESTION * nv * IMPORTANCE_D
            # Measured next to the providers, so that a load change on a shared machine
            # moves both alike.
            rate = matmul_rate(device)
            print(f"  hkv={hkv:2d} nv={nv:5d} fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s")
            for name, fn in providers.items():
                gc.collect()
                t = median_time(fn, device, repeats=repeats)
                mem = peak_memory(fn, device)
                row = {
                    "hkv": hkv,
                    "nv": nv,
                    "seq": s,
                    "provider": name,
                    "ms": t * 1e3,
                    "peak_mib": mem / 2**20,
                    "matmul_gflops": rate / 1e9,
                }
                row["importance_rate_frac"] = (
                    flops / t / rate if name.startswith("importance") else ""
                )
                rows.append(row)
                print(
                    f"  hkv={hkv:2d} nv={nv:5d} {name:42s} {t * 1e3:9.2f} ms {mem / 2**20:9.1f} MiB"
                )
    return rows


def summary(rows, backend):
    """Per setting: the ratios that the targets are stated in."""
    out = []
    for key in dict.fromkeys((r["hkv"], r["nv"]) for r in rows):
        by = {r["provider"]: r for r in rows if (r["hkv"], r["nv"]) == key}
        eager, attn = by["eager"], by["attention_with_lse"]
        fused, imp = by[f"attention_with_lse+importance[{backend}]"], by[f"importance[{backend}]"]
        out.append(
            {
                "hkv": key[0],
                "nv": key[1],
                "eager_ms": eager["ms"],
                "fused_ms": fused["ms"],
                "speedup": eager["ms"] / fused["ms"],
                "importance_ms": imp["ms"],
                "imp/attn": imp["ms"] / attn["ms"],
                "torch_recompute/attn": by["importance_torch_recompute"]["ms"] / attn["ms"],
                "imp/pyramiddrop": imp["ms"] / by["pyramiddrop_recompute"]["ms"],
                "eager_peak_mib": eager["peak_mib"],
                "fused_peak_mib": fused["peak_mib"],
                "mem_ratio": fused["peak_mib"] / max(eager["peak_mib"], 1e-9),
                "rate_frac": imp["importance_rate_frac"],
            }
        )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_device_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="two small sizes, no files written")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nvs", type=int, nargs="+", help="visual token counts (sweep)")
    parser.add_argument("--hkvs", type=int, nargs="+", help="kv head counts (sweep)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    device, dtype = device_and_dtype(args)
    backends = ["triton", "cuda"] if device.type == "cuda" else ["cpu"]
    if args.quick:
        nvs, hkvs, repeats = [576, 2304], [16], 3
    else:
        nvs, hkvs, repeats = [576, 2304, 4096, 8192], [16, 4], args.repeats
    nvs, hkvs = args.nvs or nvs, args.hkvs or hkvs
    print(
        f"cross_modal_importance vs eager on {device} ({dtype}), Hq={IMPORTANCE_HQ} "
        f"D={IMPORTANCE_D} question={QUESTION}"
    )
    rows = run(nvs, hkvs, device, dtype, backends, repeats)
    table = summary(rows, backends[0])
    print()
    print(markdown_table(table, list(table[0])))
    if not (args.quick or args.no_write):
        extra = {"dtype": str(dtype), "summary": table}
        print("wrote", write_results("importance", rows, device, extra))
        print(
            "wrote",
            plot_lines("importance", rows, device, x="nv", y="ms", series="provider", panels="hkv"),
        )
    return table


if __name__ == "__main__":
    main()
