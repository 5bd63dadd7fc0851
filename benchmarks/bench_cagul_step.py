"""What CAGUL costs a user: one training step against LoRA and full finetuning, and the
inference overhead of the unlearned model, at real VLM geometry (random weights).

Geometries (``--geometry``; ``--width-div N`` divides every width, the head counts and the
vocabulary by N, keeping the head dimension, for machines where the full width is out of
reach):

- ``llava``: LLaVA-1.5-7B: Llama decoder, hidden 4096, 32 heads (MHA), MLP 11008, vocab
  32064, CLIP-L/336 tower config; 576 visual tokens per image.
- ``qwen2_vl``: Qwen2-VL-7B: hidden 3584, 28 query / 4 key-value heads (GQA), MLP 18944,
  vocab 152064, M-RoPE; one high-resolution image of 2,880 visual tokens.

Only ``--layers`` decoder layers are built (training: each count of ``--train-layers``,
the models interleaved; with two or more counts the step times are fitted per layer and
extrapolated to ``--extrapolate-layers``). The projected visual tokens are fed as
``mm_encoder_outputs`` (precomputed image features): the vision tower, the same for every
provider, is not in the timed region, which makes the ratios below conservative.

Training step (forward, backward, AdamW step) on one batch of 1 forget + 1 retain sample
(image + 64-token question and answer, the last 16 tokens being the answer):
``cagul_input`` / ``cagul_inline`` (:mod:`cagul.methods.cagul`, layer ``L = min(2, layers -
1)`` over every layer count built, ratio 0.25), the same with ``_cached`` (a step of the
second epoch on with ``reference_cache_mb``: the retain sample's reference pass skipped,
:mod:`cagul.training.reference_cache`), ``lora_graddiff`` (LoRA r=16 on every linear layer
of the language model) and ``full_graddiff`` (every language-model weight). Median time
per step (wall clock, and on CPU the process's CPU time), trainable parameters,
optimizer-state bytes. Peak memory: what building the provider adds plus the peak of its
first step (which creates the optimizer state; for ``_cached``, after the untimed pass
that fills the cache, whose entries count), above the frozen VLM; inference: the peak of
one call.

Inference (``generate``, greedy): prefill (1 new token) and prefill + 32 new tokens at the
given batch sizes and visual-token counts: ``vanilla`` (the VLM), ``gate_off`` (CagulModel,
the discriminator says no), ``gate_on_input`` and ``gate_on_inline`` (it says yes).

    python benchmarks/bench_cagul_step.py --width-div 8 --threads 1 --batches 1 8 \
        --max-prefill-visual 23040 --train-geometry     # this CPU, inference -> results/
    python benchmarks/bench_cagul_step.py --width-div 8 --threads 1 --batches 8 \
        --visual 8192 --max-prefill-visual 65536 --train-geometry --inference-geometry llava
    python benchmarks/bench_cagul_step.py --width-div 8 --threads 1 --repeats 5 \
        --train-geometry llava qwen2_vl --inference-geometry --train-layers 2 4  # training
    python benchmarks/bench_cagul_step.py --device cuda --dtype bf16 --layers 32
    python benchmarks/bench_cagul_step.py --quick --out /tmp/x  # tiny smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import itertools
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cagul import CagulConfig, CagulModel
from cagul.methods import get_method
from cagul.methods.finetune import lora_config
from cagul.model import check_transformers
from cagul.training import UnlearningArguments

from benchmarks import common
from cagul_kernels.memory import PeakMemory, mib

PREFIX, QUESTION, ANSWER = 5, 48, 16  # text tokens: before the image, question, answer
NEW_TOKENS = 32
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@dataclasses.dataclass(frozen=True)
class Geometry:
    family: str
    hidden: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    train_visual: int  # visual tokens per training sample
    visual: tuple[int, ...]  # inference sweep
    image_tokens: int  # visual tokens per image in the inference sweep (last may be short)

    def scaled(self, div: int) -> Geometry:
        heads = max(1, self.heads // div)
        head_dim = self.hidden // self.heads
        return dataclasses.replace(
            self,
            hidden=heads * head_dim,
            heads=heads,
            kv_heads=max(1, self.kv_heads // div),
            mlp=self.mlp // div,
            vocab=self.vocab // div,
        )


GEOMETRIES = {
    "llava": Geometry("llava", 4096, 32, 32, 11008, 32064, 576, (576, 2880, 8192), 576),
    "qwen2_vl": Geometry("qwen2_vl", 3584, 28, 4, 18944, 152064, 2880, (2880,), 2880),
}
QUICK = {
    "llava": Geometry("llava", 64, 4, 4, 128, 128, 16, (16, 48), 16),
    "qwen2_vl": Geometry("qwen2_vl", 64, 4, 2, 128, 128, 32, (32,), 32),
}


# ---------------------------------------------------------------------- model and inputs


def build_vlm(geo: Geometry, layers: int, device: torch.device, dtype: torch.dtype):
    """A VLM of ``geo`` with ``layers`` decoder layers and random weights (eval mode)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    div = 4096 // geo.hidden if geo.family == "llava" else 3584 // geo.hidden
    text = dict(
        vocab_size=geo.vocab,
        hidden_size=geo.hidden,
        intermediate_size=geo.mlp,
        num_hidden_layers=layers,
        num_attention_heads=geo.heads,
        num_key_value_heads=geo.kv_heads,
        max_position_embeddings=16384,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if geo.family == "llava":
        config = LlavaConfig(
            vision_config=CLIPVisionConfig(  # CLIP-L/336 (not run: features are fed)
                hidden_size=max(16, 1024 // div),
                intermediate_size=max(32, 4096 // div),
                num_hidden_layers=24,
                num_attention_heads=max(1, 16 // div),
                image_size=336,
                patch_size=14,
                projection_dim=768,
            ),
            text_config=LlamaConfig(**text),
            image_token_id=geo.vocab - 1,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        model_class = LlavaForConditionalGeneration
    else:
        config = Qwen2VLConfig(
            vision_config=dict(  # Qwen2-VL-7B's ViT (not run: features are fed)
                depth=32,
                embed_dim=max(16, 1280 // div),
                hidden_size=geo.hidden,
                num_heads=max(1, 16 // div),
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
            ),
            text_config=dict(
                **text,
                rope_parameters={
                    "rope_type": "default",
                    "mrope_section": _mrope_section(geo.hidden // geo.heads),
                    "rope_theta": 1e6,
                },
            ),
            image_token_id=geo.vocab - 1,
            video_token_id=geo.vocab - 2,
            vision_start_token_id=geo.vocab - 3,
            vision_end_token_id=geo.vocab - 4,
        )
        model_class = Qwen2VLForConditionalGeneration
    with torch.device(device):  # initialised where it runs (minutes for 7B on a CPU)
        model = model_class(config)
    return model.to(device=device, dtype=dtype).eval()


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's [16, 24, 24] for head dim 128, scaled to ``head_dim``."""
    half = head_dim // 2
    t = half // 4
    return [t, (half - t) // 2, half - t - (half - t) // 2]


def make_inputs(vlm, geo: Geometry, batch: int, visual: int, with_answer: bool) -> dict:
    """Model inputs: ``[prefix][image]...[question]([answer])`` with ``visual`` visual
    tokens in images of ``geo.image_tokens`` (LLaVA) or one image (Qwen2-VL), the images
    as precomputed projector outputs (``mm_encoder_outputs``). With ``with_answer``, also
    ``labels`` on the answer tokens."""
    cfg, device = vlm.config, vlm.device
    dtype = next(vlm.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    sizes = [geo.image_tokens] * (visual // geo.image_tokens)
    sizes += [visual % geo.image_tokens] if visual % geo.image_tokens else []
    if geo.family == "qwen2_vl":
        sizes = [visual]
    words = torch.randint(10, geo.vocab - 8, (PREFIX + QUESTION + ANSWER,), generator=g)
    ids = [1, *words[: PREFIX - 1].tolist()]
    for n in sizes:
        if geo.family == "qwen2_vl":
            ids += [cfg.vision_start_token_id, *[cfg.image_token_id] * n, cfg.vision_end_token_id]
        else:
            ids += [*[cfg.image_token_id] * n, 13]
    ids += words[PREFIX : PREFIX + QUESTION + (ANSWER if with_answer else 0)].tolist()
    input_ids = torch.tensor([ids] * batch, device=device)
    features = [
        (torch.randn(n, geo.hidden, generator=g) * 0.02).to(device, dtype)
        for _ in range(batch)
        for n in sizes
    ]
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=features)},
    }
    if geo.family == "qwen2_vl":
        inputs["image_grid_thw"] = torch.tensor([_grid(n) for n in sizes] * batch, device=device)
        inputs["mm_token_type_ids"] = (input_ids == cfg.image_token_id).int()
    if with_answer:
        labels = torch.full_like(input_ids, -100)
        labels[:, -ANSWER:] = input_ids[:, -ANSWER:]
        inputs["labels"] = labels
    return inputs


def _grid(tokens: int) -> list[int]:
    """Qwen2-VL ``(t, h, w)`` patch grid of an image with ``tokens`` merged visual tokens."""
    h = max(d for d in range(1, int(tokens**0.5) + 1) if tokens % d == 0)
    return [1, 2 * h, 2 * (tokens // h)]


def training_batch(vlm, geo: Geometry) -> dict:
    """One forget and one retain sample (``VLMCollator``'s batch format)."""
    return {
        "inputs": make_inputs(vlm, geo, 2, geo.train_visual, with_answer=True),
        "is_forget": torch.tensor([True, False]),
        "forget_loss": torch.zeros(2, dtype=torch.long),  # "idk"
    }


# ---------------------------------------------------------------------- providers


TRAINING = UnlearningArguments(lr=1e-5)
CACHED_REFERENCE = dataclasses.replace(TRAINING, reference_cache_mb=1024)


def cagul_config(mode: str, layer: int) -> CagulConfig:
    return CagulConfig(mode=mode, layer=layer, ratio=0.25)


def cagul_model(vlm, mode: str, layer: int, gate: bool | None = None) -> CagulModel:
    """A CagulModel whose discriminator says yes (``gate=True``) or no to every image."""
    model = CagulModel(vlm, cagul_config(mode, layer))
    if gate is not None:
        with torch.no_grad():
            model.discriminator.head[-1].bias.fill_(30.0 if gate else -30.0)
    return model


def training_providers(layer: int) -> dict:
    """``name -> build(vlm, warm) -> (method, vlm after the method is dropped)``, where
    ``warm(method)`` runs the method's forward once on the step's batch. The ``_cached``
    CAGUL providers use it to fill their reference cache: their measured step is one of a
    second epoch, where every sample's reference comes from the cache."""

    def lora(vlm, warm):
        baseline = get_method("graddiff")(vlm, TRAINING, lora_config(16))
        return baseline, lambda: baseline.vlm.unload()

    def full(vlm, warm):
        baseline = get_method("graddiff")(vlm, TRAINING)
        return baseline, lambda: vlm.requires_grad_(False)

    def cagul(mode, cached=False):
        def build(vlm, warm):
            method = get_method("cagul")(
                cagul_model(vlm, mode, layer), CACHED_REFERENCE if cached else TRAINING
            )
            if cached:
                warm(method)
            return method, lambda: vlm

        return build

    return {
        "cagul_input": cagul("input"),
        "cagul_input_cached": cagul("input", cached=True),
        "cagul_inline": cagul("inline"),
        "cagul_inline_cached": cagul("inline", cached=True),
        "lora_graddiff": lora,
        "full_graddiff": full,
    }


def train_step(method, optimizer, batch: dict, autocast) -> None:
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        loss, _ = method(batch)
    loss.backward()
    optimizer.step()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    )


# ---------------------------------------------------------------------- measurement


@contextlib.contextmanager
def exact_cpu_peak(device: torch.device):
    """On CPU, glibc maps every block of 1 MiB or more on its own and unmaps it on free, so
    the resident-set peak that :class:`PeakMemory` reads is the block's true peak rather
    than hidden by heap memory freed earlier (by another provider) and reused. Restores
    glibc's largest default threshold (32 MiB) afterwards, for the timed runs."""
    libc = None
    if device.type == "cpu":
        with contextlib.suppress(OSError):
            libc = ctypes.CDLL("libc.so.6")
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 2**20)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)


def interleaved(fns: dict, device: torch.device, repeats: int) -> dict:
    """``name -> (median seconds, peak extra bytes)`` of each ``fns[name]()``: a first,
    untimed round measures the peaks (and warms up), then ``repeats`` rounds call every
    function in turn, so that load from other jobs on a shared machine hits all alike."""
    peaks, times = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        with exact_cpu_peak(device), PeakMemory(device) as memory:
            fn()
        peaks[name] = memory.bytes
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            common.sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), peaks[name]) for name in fns}


def measure_training(vlms: dict, geo, layer, args, autocast) -> list[dict]:
    """Round robin over the VLMs (``layers -> vlm``) and the providers (so that machine
    load hits all alike): each round builds every provider on every VLM, runs one step
    with a fresh AdamW and removes it. The first round measures the peak memory of
    building plus the step (above the frozen VLM); the median of the next ``repeats``
    rounds is the step time (which includes creating the AdamW state, a few ms): wall
    clock (``step_s``) and, on CPU, the process's CPU time (``step_cpu_s``: the work
    done, which other jobs on a shared machine barely change). The VLMs are left as they
    came (``vlms`` is updated in place)."""
    providers = training_providers(layer)
    batches = {layers: training_batch(vlm, geo) for layers, vlm in vlms.items()}

    def warm(batch, method) -> None:
        with torch.no_grad(), autocast():
            method(batch)

    times, rows = {}, {}
    for round_ in range(args.repeats + 1):
        for layers, name in itertools.product(list(vlms), providers):
            vlm, key = vlms[layers], (layers, name)
            gc.collect()
            peak_block = exact_cpu_peak(vlm.device) if round_ == 0 else contextlib.nullcontext()
            with peak_block, PeakMemory(vlm.device) as memory:
                method, restore = providers[name](vlm, partial(warm, batches[layers]))
                method.train()
                optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-5)
                start, start_cpu = time.perf_counter(), time.process_time()
                train_step(method, optimizer, batches[layers], autocast)
                common.sync(vlm.device)
                seconds = (time.perf_counter() - start, time.process_time() - start_cpu)
            cache = getattr(method, "reference_cache", None)
            if cache is not None and cache.hits == 0:
                raise RuntimeError(f"{name}: the step did not take its reference from the cache")
            if round_ == 0:
                times[key] = []
                rows[key] = {
                    "geometry": geo.family,
                    "layers": layers,
                    "provider": name,
                    "visual_tokens": geo.train_visual,
                    "peak_mib": mib(memory.bytes),
                    "trainable_params": sum(
                        p.numel() for p in _parameters(method.trainable_parameters())
                    ),
                    "optimizer_state_bytes": optimizer_state_bytes(optimizer),
                }
            else:
                times[key].append(seconds)
            del method, optimizer
            vlms[layers] = restore()
    on_cpu = all(vlm.device.type == "cpu" for vlm in vlms.values())
    for key, row in rows.items():
        wall, cpu = zip(*times[key], strict=True)
        row["step_s"] = statistics.median(wall)
        row["step_cpu_s"] = statistics.median(cpu) if on_cpu else None
        print(row, flush=True)
    return list(rows.values())


def _parameters(groups) -> list[torch.nn.Parameter]:
    return [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]


def measure_inference(vlm, geo, layers, layer, args, autocast) -> list[dict]:
    variants = {
        "vanilla": vlm,
        "gate_off": cagul_model(vlm, "input", layer, gate=False),
        "gate_on_input": cagul_model(vlm, "input", layer, gate=True),
        "gate_on_inline": cagul_model(vlm, "inline", layer, gate=True),
    }

    def generate(model, inputs: dict, new: int) -> None:
        with torch.no_grad(), autocast():
            out = model.generate(
                **inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
            )
        assert out.shape[1] == inputs["input_ids"].shape[1] + new

    rows = []
    for batch in args.batches:
        for visual in args.visual or geo.visual:
            if batch * visual > args.max_prefill_visual:
                print(f"skip: batch {batch} x {visual} visual tokens > --max-prefill-visual")
                continue
            inputs = make_inputs(vlm, geo, batch, visual, with_answer=False)
            for phase, new in (("prefill", 1), ("prefill+32", args.new_tokens)):
                fns = {
                    name: partial(generate, model, inputs, new) for name, model in variants.items()
                }
                for name, (seconds, peak) in interleaved(fns, vlm.device, args.repeats).items():
                    rows.append(
                        {
                            "geometry": geo.family,
                            "layers": layers,
                            "variant": name,
                            "phase": phase,
                            "batch": batch,
                            "setting": f"{geo.family} {phase} batch {batch}",
                            "visual_tokens": visual,
                            "latency_s": seconds,
                            "peak_mib": mib(peak),
                        }
                    )
                    print(rows[-1], flush=True)
    return rows


def inference_ratios(infer: list[dict], layers: int, layer: int) -> dict:
    """The inference targets' ratios against vanilla, within one geometry, batch,
    visual-token count and phase, and the ``mode="input"`` bound."""
    out = {"input_bound": 1 + (layer + 1) / layers + 0.05}
    by = {
        (r["geometry"], r["variant"], r["phase"], r["batch"], r["visual_tokens"]): r for r in infer
    }
    for (geo, variant, phase, batch, visual), row in by.items():
        if variant == "vanilla":
            continue
        base = by[(geo, "vanilla", phase, batch, visual)]["latency_s"]
        out[f"{geo}/{variant}/{phase}/b{batch}/v{visual}"] = row["latency_s"] / base
    return out


def training_ratios(train: list[dict], extrapolate: int) -> dict:
    """The training targets' ratios against LoRA within one geometry and layer count,
    and the per-layer fit of the step times (:func:`per_layer_fit`)."""
    out = {}
    for geo, n in dict.fromkeys((r["geometry"], r["layers"]) for r in train):
        rows = {r["provider"]: r for r in train if (r["geometry"], r["layers"]) == (geo, n)}
        lora = rows["lora_graddiff"]
        for name in rows:
            if name == "lora_graddiff":
                continue
            key = f"{geo}/{n}_layers/{name}"
            out[f"{key}/time_vs_lora"] = rows[name]["step_s"] / lora["step_s"]
            if lora["step_cpu_s"]:
                out[f"{key}/cpu_time_vs_lora"] = rows[name]["step_cpu_s"] / lora["step_cpu_s"]
            if rows[name]["peak_mib"] and lora["peak_mib"]:
                out[f"{key}/peak_vs_lora"] = rows[name]["peak_mib"] / lora["peak_mib"]
            out[f"{key}/optimizer_state_vs_lora"] = (
                rows[name]["optimizer_state_bytes"] / lora["optimizer_state_bytes"]
            )
    out.update(per_layer_fit(train, extrapolate))
    return out


def per_layer_fit(train: list[dict], extrapolate: int) -> dict:
    """With step times at two or more layer counts: per geometry, provider and time
    column (``step_s``, ``step_cpu_s``), the least squares fit ``time = fixed + per_layer *
    layers``, and the time against LoRA's that the fits give at ``extrapolate`` layers (an
    extrapolation, not a measurement). Keys ``<geometry>/<provider>/<column>/...``."""
    out = {}
    for geo, column in itertools.product(
        dict.fromkeys(r["geometry"] for r in train), ("step_s", "step_cpu_s")
    ):
        rows = [r for r in train if r["geometry"] == geo and r[column] is not None]
        if len({r["layers"] for r in rows}) < 2:
            continue
        fits = {}
        for name in dict.fromkeys(r["provider"] for r in rows):
            points = [(r["layers"], r[column]) for r in rows if r["provider"] == name]
            slope, intercept = statistics.linear_regression(*zip(*points, strict=True))
            fits[name] = (intercept, slope)
            out[f"{geo}/{name}/{column}/per_layer"] = slope
            out[f"{geo}/{name}/{column}/fixed"] = intercept
        lora_fixed, lora_slope = fits["lora_graddiff"]
        for name, (fixed, slope) in fits.items():
            if name != "lora_graddiff":
                key = f"{geo}/{name}/{column}"
                out[f"{key}/per_layer_vs_lora"] = slope / lora_slope
                out[f"{key}/vs_lora_at_{extrapolate}_layers_extrapolated"] = (
                    fixed + slope * extrapolate
                ) / (lora_fixed + lora_slope * extrapolate)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", nargs="+", choices=list(GEOMETRIES), default=list(GEOMETRIES))
    parser.add_argument("--layers", type=int, default=2, help="decoder layers built")
    parser.add_argument(
        "--train-layers",
        type=int,
        nargs="+",
        help="decoder layer counts of the training part (default: --layers); with two or "
        "more, the step times are fitted per layer",
    )
    parser.add_argument(
        "--extrapolate-layers",
        type=int,
        default=32,
        help="layer count at which the per-layer fit gives the training ratios",
    )
    parser.add_argument("--width-div", type=int, default=1, help="divide widths/heads/vocab")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--max-prefill-visual",
        type=int,
        default=10**9,
        help="skip inference settings with batch x visual tokens above this",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (on a CPU shared with other jobs, 1 keeps small ops from "
        "stalling on descheduled OpenMP threads)",
    )
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument(
        "--visual",
        type=int,
        nargs="+",
        help="inference visual-token counts (default: the geometry's sweep)",
    )
    for part in ("train", "inference"):
        parser.add_argument(
            f"--{part}-geometry",
            nargs="*",
            choices=list(GEOMETRIES),
            help=f"geometries measured in the {part} part (default: --geometry)",
        )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    check_transformers()  # before minutes of model building
    if args.quick:
        args.batches, args.repeats, args.new_tokens = [1, 2], 1, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    args.train_layers = sorted(set(args.train_layers or [args.layers]))
    layer = min(2, args.layers - 1, args.train_layers[0] - 1)

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    train, infer, geometries = [], [], {}
    train_on = args.geometry if args.train_geometry is None else args.train_geometry
    infer_on = args.geometry if args.inference_geometry is None else args.inference_geometry
    for family in dict.fromkeys(train_on + infer_on):
        geo = (QUICK if args.quick else GEOMETRIES)[family]
        geo = geo if args.quick else geo.scaled(args.width_div)
        geometries[family] = dataclasses.asdict(geo)
        if family in infer_on:
            torch.manual_seed(0)
            vlm = build_vlm(geo, args.layers, device, dtype)
            infer += measure_inference(vlm, geo, args.layers, layer, args, autocast)
            del vlm
        if family in train_on:
            vlms = {}
            for n in args.train_layers:
                torch.manual_seed(0)
                vlms[n] = build_vlm(geo, n, device, dtype)
            train += measure_training(vlms, geo, layer, args, autocast)
            del vlms
        gc.collect()
    parts = {
        "train": (train, training_ratios(train, args.extrapolate_layers) if train else {}),
        "inference": (infer, inference_ratios(infer, args.layers, layer) if infer else {}),
    }
    write_outputs(args, device, parts, geometries, layer)
    return {**parts["inference"][1], **parts["train"][1]}


def write_outputs(args, device, parts: dict, geometries: dict, layer: int) -> None:
    """Per part that ran (``parts``: ``"train"`` / ``"inference"`` -> ``(rows, ratios)``):
    ``cagul_step_<part>_<machine>.csv`` and ``.png``, and a ``.json`` with the machine, the
    settings, the ratios and every row, in ``args.out`` (a part that did not run keeps its
    files)."""
    common.RESULTS = args.out  # the shared writers put their files there
    settings = {
        "layers": args.layers,
        "train_layers": args.train_layers,
        "extrapolate_layers": args.extrapolate_layers,
        "importance_layer": layer,
        "width_div": args.width_div,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "batches": args.batches,
        "max_prefill_visual": args.max_prefill_visual,
        "visual": args.visual,
        "new_tokens": args.new_tokens,
        "quick": args.quick,
        "geometries": geometries,
    }
    train_time = "step_cpu_s" if device.type == "cpu" else "step_s"
    plots = {
        "train": ("layers", train_time, "provider", "geometry"),
        "inference": ("visual_tokens", "latency_s", "variant", "setting"),
    }
    for part, (rows, ratios) in parts.items():
        if not rows:
            continue
        name = f"cagul_step_{part}"
        common.write_results(name, rows, device, {"settings": settings, "ratios": ratios})
        x, y, series, panels = plots[part]
        common.plot_lines(name, rows, device, x=x, y=y, series=series, panels=panels)
        print(common.markdown_table(rows, list(rows[0])))
        print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
