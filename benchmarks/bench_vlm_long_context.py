"""Long-context, high-resolution importance: eager ``output_attentions=True`` vs ``cagul``.

A LLaVA-architecture model (Llama decoder: hidden 2048, 16 heads of 128, MLP 5632; a few
layers; random weights from the config) gets a prompt
``[5 text][image][\\n]...[image][\\n][64-token question]`` with 576 (one 336 px image),
2880 (one anyres image, 5 x 576), 8192 (8 images x 1024) and 16384 (16 images x 1024)
visual tokens. The projected visual tokens are fed as ``inputs_embeds`` (the vision tower
is not what is measured). Providers, in one process and run, each producing the
question's importance of every visual token at layer ``--layer``:

- ``eager``: ``attn_implementation="eager"``, ``output_attentions=True``, then the mean of
  the layer's probabilities (what FastV-style code does). Keeps every layer's
  ``B x H x S x S`` probabilities: skipped, with the reason, when its predicted peak
  (``S*S*H*4`` bytes x (layers + 1): the kept layers plus two transient copies) does not
  fit the memory budget.
- ``cagul``: ``attn_implementation="cagul"`` + ``capture_importance`` (full prefill).
- ``cagul_stop``: the same with ``stop_after_last_layer=True``: only layers ``0..L`` run.
- ``sdpa``: a plain ``sdpa`` prefill without importance, for reference.

Median wall time and peak memory (RSS above the baseline on CPU, allocator peak on CUDA);
the first run measures memory and warms up, and above 2880 tokens (by default) it is also
the only timed run, as each run takes minutes on a small CPU.

    python benchmarks/bench_vlm_long_context.py                 # full sweep -> results/
    python benchmarks/bench_vlm_long_context.py --visual 576 2880 --repeats 1 --no-write
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cagul_demo.toy_vlm import ToyVLMConfig, llava_config
from transformers import LlavaForConditionalGeneration

from benchmarks.common import (
    add_device_arguments,
    device_and_dtype,
    markdown_table,
    median_time,
    peak_memory,
    plot_lines,
    write_results,
)
from cagul_kernels import reference
from cagul_kernels.integrations.transformers import (
    capture_importance,
    query_token_index,
    visual_token_index,
)

HIDDEN, HEADS, MLP, VOCAB = 2048, 16, 5632, 32064
# The model: that decoder (no GQA) and a small vision tower, which does not run (the visual
# tokens are fed as embeddings).
ARCH = ToyVLMConfig(
    hidden=HIDDEN,
    heads=HEADS,
    kv_heads=HEADS,
    intermediate=MLP,
    image_size=224,
    patch_size=32,
    vision_hidden=64,
    vision_layers=1,
    vision_heads=2,
)
PREFIX, QUESTION, IMG, NEWLINE = 5, 64, 32000, 13
GIB = 2**30
# visual tokens -> (layout, tokens per image)
LAYOUTS = {
    576: ("1 image 336px", [576]),
    2880: ("1 anyres image 5x576", [576] * 5),
    8192: ("8 images x 1024", [1024] * 8),
    16384: ("16 images x 1024", [1024] * 16),
}


def build_model(layers: int, device, dtype) -> LlavaForConditionalGeneration:
    arch = dataclasses.replace(ARCH, layers=layers)
    config = llava_config(arch, vocab_size=VOCAB, image_token_id=IMG, max_positions=32768)
    return LlavaForConditionalGeneration(config).to(device=device, dtype=dtype).eval()


def prompt(nv: int) -> torch.Tensor:
    """``[1, S]`` token ids of the layout (the ids only place the image tokens)."""
    ids = list(range(1, PREFIX + 1))
    for n in LAYOUTS[nv][1]:
        ids += [IMG] * n + [NEWLINE]
    return torch.tensor([ids + list(range(100, 100 + QUESTION))])


def eager_peak_bytes(s: int, layers: int) -> int:
    """Probabilities kept by ``output_attentions`` plus two transient ``S x S x H`` copies."""
    return s * s * HEADS * 4 * (layers + 1)


def memory_budget(device, nominal_gib: float) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    available = nominal_gib * GIB
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):  # other processes share this machine
            available = min(available, int(line.split()[1]) * 1024)
    return int(available)


PROVIDERS = {  # name -> (attn_implementation, capture_importance kwargs or None)
    "eager": ("eager", None),
    "cagul": ("cagul", {"stop_after_last_layer": False}),
    "cagul_stop": ("cagul", {"stop_after_last_layer": True}),
    "sdpa": ("sdpa", None),
}


def importance_fn(model, impl, capture, embeds, query_index, visual_index, layer):
    """One importance pass (or a plain prefill when ``capture`` is None and not eager)."""

    @torch.no_grad()
    def fn():
        if impl == "eager":
            out = model(inputs_embeds=embeds, output_attentions=True, logits_to_keep=1)
            return reference.importance_from_probs(out.attentions[layer], query_index, visual_index)
        if capture is None:
            return model(inputs_embeds=embeds, logits_to_keep=1).logits
        with capture_importance(model, [layer], query_index, visual_index, **capture) as cap:
            model(inputs_embeds=embeds, logits_to_keep=1, use_cache=False)
        return cap.importance[layer]

    return fn


def bench(args, device, dtype):
    model = build_model(args.layers, device, dtype)
    budget = memory_budget(device, args.budget_gib)
    providers = dict(PROVIDERS)
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        providers["flash_attention_2"] = ("flash_attention_2", None)
    rows = []
    for nv in args.visual:
        ids = prompt(nv).to(device)
        s = ids.shape[1]
        visual_index = visual_token_index(ids, IMG)
        query_index = query_token_index(ids, None, IMG, "question", special_token_ids=[NEWLINE])
        g = torch.Generator(device=device).manual_seed(nv)
        embeds = torch.randn(1, s, HIDDEN, device=device, generator=g).to(dtype)
        repeats = args.repeats if nv <= 2880 else args.long_repeats
        setting, results = [], {}
        for name, (impl, capture) in providers.items():
            row = {"visual_tokens": nv, "layout": LAYOUTS[nv][0], "seq_len": s, "provider": name}
            setting.append(row)
            predicted = eager_peak_bytes(s, args.layers)
            if impl == "eager" and predicted > budget:
                row.update(
                    time_s="",
                    peak_gib="",
                    status=(
                        f"skipped: predicted peak {predicted / GIB:.1f} GiB > budget "
                        f"{budget / GIB:.1f} GiB"
                    ),
                )
                print(f"  nv={nv:5d} {name:12s} {row['status']}", flush=True)
                continue
            model.set_attn_implementation(impl)
            fn = importance_fn(model, impl, capture, embeds, query_index, visual_index, args.layer)
            gc.collect()
            # The peak-memory run is the warm-up (and the only timed run when repeats == 0).
            start = time.perf_counter()
            mem = peak_memory(
                lambda fn=fn, name=name, out=results: out.update({name: fn()}), device
            )
            first = time.perf_counter() - start
            t = median_time(fn, device, repeats=repeats, warmup=0) if repeats else first
            row.update(time_s=t, peak_gib=mem / GIB, status="ok")
            print(f"  nv={nv:5d} {name:12s} {t:8.2f} s {mem / GIB:7.2f} GiB", flush=True)
        for row in setting:
            name = row["provider"]
            compare = "eager" in results and name in results and PROVIDERS.get(name, ("", None))[1]
            row["max_abs_err_vs_eager"] = (
                float((results[name] - results["eager"]).abs().max()) if compare else ""
            )
        rows += setting
    return rows


def summary(rows):
    """Per setting: cagul (full / early-stopped) vs eager, the ratios the targets use."""
    out = []
    for nv in dict.fromkeys(r["visual_tokens"] for r in rows):
        by = {r["provider"]: r for r in rows if r["visual_tokens"] == nv}
        eager = by["eager"]
        entry = {"visual_tokens": nv, "seq_len": eager["seq_len"]}
        entry["eager_s"] = eager["time_s"] if eager["status"] == "ok" else "OOM (predicted)"
        entry["eager_GiB"] = eager["peak_gib"] if eager["status"] == "ok" else "-"
        for name in ("cagul", "cagul_stop"):
            r = by[name]
            entry[f"{name}_s"], entry[f"{name}_GiB"] = r["time_s"], r["peak_gib"]
            ok = eager["status"] == "ok"
            entry[f"{name}_speedup"] = eager["time_s"] / r["time_s"] if ok else "-"
            entry[f"{name}_mem_frac"] = r["peak_gib"] / eager["peak_gib"] if ok else "-"
        entry["sdpa_s"] = by["sdpa"]["time_s"]
        out.append(entry)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_device_arguments(parser)
    parser.add_argument(
        "--visual", type=int, nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS)
    )
    parser.add_argument("--layers", type=int, default=2, help="decoder layers")
    parser.add_argument("--layer", type=int, default=0, help="importance layer L")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs after the warm-up, up to 2880 tokens"
    )
    parser.add_argument(
        "--long-repeats", type=int, default=0, help="above 2880 (0: time the one warm-up run)"
    )
    parser.add_argument("--budget-gib", type=float, default=24.0, help="CPU memory budget")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    device, dtype = device_and_dtype(args)
    print(
        f"VLM long context on {device} ({dtype}): hidden {HIDDEN}, {HEADS} heads, MLP {MLP}, "
        f"{args.layers} layers, importance at layer {args.layer}"
    )
    rows = bench(args, device, dtype)
    table = summary(rows)
    print()
    print(markdown_table(table, list(table[0])))
    if not args.no_write:
        extra = {
            "dtype": str(dtype),
            "model": {"hidden": HIDDEN, "heads": HEADS, "mlp": MLP, "layers": args.layers},
            "layer": args.layer,
            "summary": table,
        }
        print("wrote", write_results("vlm_long_context", rows, device, extra))
        long = [
            {**r, "metric": metric, "value": r[key]}
            for r in rows
            if r["status"] == "ok"
            for metric, key in (("time (s)", "time_s"), ("peak memory (GiB)", "peak_gib"))
        ]
        print(
            "wrote",
            plot_lines(
                "vlm_long_context",
                long,
                device,
                x="visual_tokens",
                y="value",
                series="provider",
                panels="metric",
            ),
        )
    return table


if __name__ == "__main__":
    main()
