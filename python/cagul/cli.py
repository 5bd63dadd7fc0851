"""The ``cagul`` command: ``train``, ``generate``, ``eval``, ``demo``.

    cagul train --model PATH --data train.jsonl|DIR --output OUT [--config cfg.json]
                [--lr 1e-3 --layer 2 ...] [--set key=value ...]
                [--format auto] [--forget-split NAME] [--eval-data test.jsonl] [--resume]
                [--method cagul|ga|graddiff|kl|npo|idk|simnpo|idkdpo|rmu] [--lora-rank R]
    cagul generate --model PATH [--adapter OUT] --image IMG --question "..." [--gate auto]
    cagul eval --model PATH [--adapter OUT] --data test.jsonl|DIR [--data ...]
               [--format auto] [--forget-split NAME] [--gate_threshold 0.7 ...]
               [--reference PATH] [--set key=value ...] [--output metrics.json]
    cagul demo [--output runs/demo] [--cache runs/cache] [--set data.n_people=30 ...]
               [--no-retain-only] [--quick] [--threads 1] [--jobs 0]

``--model`` is a local transformers checkpoint directory (model + processor), loaded with
``AutoModelForImageTextToText`` / ``AutoProcessor``; nothing is downloaded. ``--data`` is
a JSONL file or a directory: the synthetic benchmark, or a local copy of MLLMU-Bench or
FIUBench (``--format``, detected by default; see ``cagul.data.load_dataset``).

Settings: every field of ``CagulConfig`` (the adapter) and of ``UnlearningArguments``
(the training) is a flag of ``train`` (``--lr 1e-3``, ``--encoder_rank 32`` or
``--encoder-rank 32``), every ``CagulConfig`` field one of ``eval``; transformers'
``HfArgumentParser`` makes them from the dataclasses (``cagul train --help`` lists them).
``--set key=value`` sets a field too (the value read as JSON: ``--set ratio=null``).
Precedence: the dataclass defaults, then the ``--config`` JSON file (``train``), then the
command line -- a flag or ``--set``; a field given both ways is an error.

``--method`` other than ``cagul`` runs a finetuning baseline (:mod:`cagul.methods`) with
the same data and schedule: ``--output`` then holds the finetuned VLM + processor (a model
for ``--model``), or with ``--lora-rank`` a peft adapter (``--adapter`` of ``eval`` /
``generate`` merges it). Training under ``torchrun --nproc_per_node N -m cagul.cli train
...`` runs DDP (one process per GPU, or gloo on CPU), or FSDP with ``--fsdp_config``.
``--strict-paths`` confines the images a data set names to its directory. Only the
commands that need them import transformers and the methods (``cagul --help`` is fast).

User errors (bad flags, paths, configs, data, model or adapter files) are found before
any training or evaluation step and exit with status 2 and one line,
``cagul: error: <message>``; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from .cli_checks import (
    check_adapter_files,
    check_device,
    check_output_dir,
    check_output_file,
    one_line,
    reading_inputs,
)
from .errors import UsageError
from .files import read_json, write_text_atomic
from .methods import method_names

# modules of the ``framework`` extra (pip install 'cagul-kernels[framework]')
FRAMEWORK_MODULES = ("transformers", "safetensors", "tqdm", "PIL", "tokenizers", "peft", "pyarrow")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``cagul train: error: ...``, no usage text)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def _existing(kind: str):
    def check(path: str) -> str:
        if not os.path.exists(path):
            raise argparse.ArgumentTypeError(f"{kind} path does not exist: {path}")
        return path

    return check


def _sweep(text: str) -> tuple[str, list[Any]]:
    key, _, values = text.partition("=")
    if not key or not values:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,..., got {text!r}")
    return key, [_assignment(f"{key}={v}")[1] for v in values.split(",")]


def _positive(flag: str):
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 1, got {value}")
        return value

    return check


def _settings(path: str | None, args: argparse.Namespace):
    """``(CagulConfig, UnlearningArguments)``: the ``--config`` JSON, overridden by the
    ``--set`` values and the settings flags."""
    from .training.arguments import parse_settings

    values: dict[str, Any] = {}
    if path:
        values = read_json(path)  # an InputError naming path:line
        if not isinstance(values, dict):
            raise UsageError(f"--config {path}: expected a JSON object")
    try:
        return parse_settings({**values, **_overrides(args)})
    except (ValueError, TypeError) as e:
        raise UsageError(f"settings: {e}") from None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line: ``--set key=value`` and the settings flags
    (``--lr 1e-3``); a field given both ways is a :class:`UsageError`."""
    fields = {f.name for c in _settings_classes(args.command) for f in dataclasses.fields(c)}
    sets = dict(args.overrides)
    flags = {k: v for k, v in vars(args).items() if k in fields}
    both = sorted(sets.keys() & flags.keys())
    if both:
        raise UsageError(f"{both[0]} is given both as --{both[0]} and by --set")
    return {**sets, **flags}


def _settings_classes(command: str) -> tuple[type, ...]:
    """The settings dataclasses of ``command`` (``train``: the adapter and the training;
    ``eval``: the adapter)."""
    from .config import CagulConfig
    from .training.arguments import UnlearningArguments

    return (CagulConfig, UnlearningArguments) if command == "train" else (CagulConfig,)


def _assignment(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``cagul`` parser; for ``command`` ``train`` / ``eval``, with one flag per field
    of the settings dataclasses (built by transformers' ``HfArgumentParser``: imported
    only then, so ``cagul --help`` stays fast)."""
    parser = _Parser(prog="cagul", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def settings(name: str) -> list[argparse.ArgumentParser]:
        """The parents of subcommand ``name``: its settings flags when it is ``command``."""
        if name != command:
            return []
        from .training.arguments import settings_flags

        return [settings_flags(*_settings_classes(name))]

    def assignments(p: argparse.ArgumentParser, help: str) -> None:
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            type=_assignment,
            metavar="KEY=VALUE",
            help=help,
        )

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=_existing("--model"), help="VLM directory")
        p.add_argument(
            "--dtype",
            default="float32",
            choices=("float32", "bfloat16", "float16"),
            help="dtype of the VLM's weights",
        )
        p.add_argument("--device", default=None, help="cpu / cuda / cuda:1 (default: auto)")

    def data_format(p: argparse.ArgumentParser) -> None:
        # checked by cagul.data.load_dataset (no choices here: --help stays light)
        p.add_argument(
            "--format",
            default="auto",
            help="--data's format: auto (default), jsonl, synthetic, mllmu or fiubench",
        )
        p.add_argument(
            "--forget-split",
            help="the forget set: forget_5 / forget_10 / forget_15 (mllmu), a split.json key "
            "such as forget5 (fiubench)",
        )
        p.add_argument(
            "--strict-paths",
            action="store_true",
            help="image paths in the data must stay inside its directory (no ../, absolute "
            "paths or symlinks leading out): for data sets from untrusted sources",
        )

    train = sub.add_parser(
        "train", help="train the discriminator and the encoder", parents=settings("train")
    )
    common(train)
    train.add_argument(
        "--data",
        required=True,
        type=_existing("--data"),
        help="JSONL samples, or a benchmark directory (its forget + retain splits)",
    )
    data_format(train)
    train.add_argument("--output", required=True, help="output directory (adapter, checkpoints)")
    train.add_argument(
        "--config",
        type=_existing("--config"),
        help="JSON of CagulConfig and UnlearningArguments fields (the flags and --set override it)",
    )
    assignments(train, "a field as its flag would set it (VALUE in JSON: --set ratio=null)")
    train.add_argument("--eval-data", type=_existing("--eval-data"), help="JSONL for eval_every")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument(
        "--method",
        default="cagul",
        choices=method_names(),
        help="cagul (default) or a finetuning baseline (changes the VLM's weights)",
    )
    train.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        help="baselines: train LoRA adapters of this rank on the language model (0 = all "
        "language-model weights)",
    )
    train.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (2 x rank)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    gen = sub.add_parser("generate", help="answer a question about an image")
    common(gen)
    gen.add_argument(
        "--adapter", type=_existing("--adapter"), help="CAGUL or baseline LoRA adapter"
    )
    gen.add_argument("--image", required=True, type=_existing("--image"))
    gen.add_argument("--question", required=True)
    gen.add_argument("--max-new-tokens", type=_positive("--max-new-tokens"), default=32)
    gen.add_argument(
        "--gate", default="auto", choices=("auto", "on", "off"), help="override the discriminator"
    )

    ev = sub.add_parser(
        "eval",
        help="benchmark metrics per split of a VLM (with a CAGUL adapter or not)",
        parents=settings("eval"),
    )
    common(ev)
    ev.add_argument("--adapter", type=_existing("--adapter"), help="CAGUL or baseline LoRA adapter")
    ev.add_argument(
        "--data",
        required=True,
        action="append",
        type=_existing("--data"),
        help="JSONL samples (split = their 'split' field, else forget / retain) or a "
        "benchmark directory (its forget, forget_test, retain, retain_test, ... splits)",
    )
    data_format(ev)
    ev.add_argument(
        "--reference",
        type=_existing("--reference"),
        help="VLM for retain_kl; with --protocol the retain-only model (forget quality, privleak)",
    )
    ev.add_argument(
        "--protocol",
        choices=("mllmu", "fiubench", "synthetic"),
        help="run a benchmark's official evaluation (one --data directory); writes --output "
        "JSON and a markdown table next to it (docs/evaluation.md)",
    )
    ev.add_argument("--seed", type=int, default=0, help="--protocol mllmu: few-shot + test images")
    assignments(ev, "a CagulConfig field as its flag would set it (VALUE in JSON)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--max-new-tokens", type=_positive("--max-new-tokens"), default=32)
    ev.add_argument("--output", help="write the metrics JSON here too")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")

    demo = sub.add_parser("demo", help="CAGUL end to end on the synthetic benchmark (offline)")
    demo.add_argument("--output", default="runs/demo", help="results directory")
    demo.add_argument("--cache", default="runs/cache", help="benchmark + trained model cache")
    demo.add_argument("--config", type=_existing("--config"), help="demo config JSON")
    demo.add_argument("--set", dest="overrides", action="append", default=[], type=_assignment)
    demo.add_argument(
        "--no-retain-only",
        action="store_true",
        help="skip the retain-only model (the gold standard, trained without the forget set)",
    )
    demo.add_argument("--quick", action="store_true", help="a tiny configuration (seconds)")
    demo.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train CAGUL and the baselines N times (seeds seed..seed+N-1); seeds.json has "
        "the mean and std of every metric",
    )
    demo.add_argument(
        "--sweep",
        type=_sweep,
        help="KEY=V1,V2,...: CAGUL once per value of a CagulConfig field (e.g. "
        "ratio=0.1,0.25,0.5,0.75 or layer=1,2); sweep.json + sweep.png",
    )
    demo.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the toy model's matrices are small, and one "
        "thread keeps its speed on a busy machine; 0 = torch's default, all cores)",
    )
    demo.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="processes training CAGUL and the baselines side by side (0 = the CPUs this "
        "process may use divided by --threads; 1 = all in this process)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _load_vlm(
    args: argparse.Namespace, path: str | None = None, flag: str = "--model", device=None
):
    """``(vlm, processor)`` from ``path`` (default ``--model``) on ``device`` (default
    ``--device``, else this process's device)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .training import distributed_context

    path = path or args.model
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageError(f"{flag} {path} has no config.json")
    device = device or args.device or distributed_context()[2]  # torch.device (_check_flags)
    vlm = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, args.dtype))
    processor = AutoProcessor.from_pretrained(path)
    return vlm.to(device).eval(), processor


def _train(args: argparse.Namespace) -> None:
    from cagul_kernels.memory import mib

    from .data import load_dataset, load_jsonl
    from .evaluation.diagnostics import evaluate
    from .methods import get_method
    from .methods.finetune import lora_config
    from .model import CagulModel
    from .training import CagulTrainer, seed_everything

    if args.lora_rank < 0:
        raise UsageError(f"--lora-rank must be >= 0, got {args.lora_rank}")
    if args.method == "cagul" and (args.lora_rank or args.lora_alpha is not None):
        raise UsageError("--lora-rank / --lora-alpha apply to the baselines, not --method cagul")
    with reading_inputs():
        config, training = _settings(args.config, args)
        if training.fsdp_config and args.method != "cagul" and not args.lora_rank:
            raise UsageError(
                f"--fsdp_config with --method {args.method} needs --lora-rank: FSDP shards "
                "the frozen weights only, and full finetuning trains (and saves) the whole "
                "language model"
            )
        strict = args.strict_paths
        if os.path.isfile(args.data) and args.format in ("auto", "jsonl") and not args.forget_split:
            samples = load_jsonl(args.data, strict_paths=strict)  # every sample, in file order
        else:
            bench = load_dataset(
                args.data, args.format, forget_split=args.forget_split, strict_paths=strict
            )
            samples = bench.train_samples()
        eval_samples = load_jsonl(args.eval_data, strict_paths=strict) if args.eval_data else None
        seed_everything(training.seed)  # the modules' initialisation
        # Under FSDP the VLM stays on the CPU: the trainer moves each rank's shards over.
        vlm, processor = _load_vlm(args, device="cpu" if training.fsdp_config else None)
        eval_fn = None
        if args.method == "cagul":
            method = get_method("cagul")(CagulModel(vlm, config), training)
            if eval_samples is not None:
                eval_fn = lambda method, step: evaluate(
                    method.model, eval_samples, processor, refusal=training.refusal
                )
        else:
            lora = lora_config(args.lora_rank, args.lora_alpha) if args.lora_rank else None
            method = get_method(args.method)(
                vlm, training, lora, prompt_template=config.prompt_template
            )
            if eval_samples is not None:
                eval_fn = lambda method, step: _baseline_eval(method, eval_samples, processor)
        trainer = CagulTrainer(
            method,
            samples,
            method.collator(processor),
            training,
            output_dir=args.output,
            eval_fn=eval_fn,
            progress=not args.no_progress,
        )
    trainer.train(resume=args.resume)
    if trainer.rank == 0:
        summary = {
            "output": args.output,
            "method": args.method,
            "trainable_params": sum(p.numel() for p in method.parameters() if p.requires_grad),
            "peak_memory_mb": mib(trainer.peak_memory_bytes),
            **(trainer.history[-1] if trainer.history else {}),  # empty: already done
        }
        print(json.dumps(summary), flush=True)
        if args.method != "cagul" and not args.lora_rank:
            processor.save_pretrained(args.output)  # the output is a loadable VLM


def _baseline_eval(method, samples: list[dict], processor) -> dict[str, float]:
    """Mean answer NLL (true answers) of a baseline's VLM on the forget / retain samples."""
    from .data import VLMCollator
    from .evaluation.diagnostics import mean_answer_nll

    collator = VLMCollator(processor, method.prompt, target="answer")
    return {
        f"{split}_answer_nll": mean_answer_nll(method.vlm, group, collator)
        for split, group in (
            ("forget", [s for s in samples if s["is_forget"]]),
            ("retain", [s for s in samples if not s["is_forget"]]),
        )
        if group
    }


def _generate(args: argparse.Namespace) -> None:
    import torch

    from .config import CagulConfig
    from .data import VLMCollator, load_image
    from .methods.finetune import is_lora_adapter, load_finetuned
    from .model import CagulModel
    from .training import to_device

    with reading_inputs():
        image = load_image(args.image)  # a bad image file fails before the model loads
        vlm, processor = _load_vlm(args)
        if args.adapter and is_lora_adapter(args.adapter):  # a baseline: a plain VLM
            model, config = load_finetuned(vlm, args.adapter)
        else:
            model = (
                CagulModel.from_pretrained(vlm, args.adapter)
                if args.adapter
                else CagulModel(vlm, CagulConfig())
            )
            config = model.config
    sample = {"image": image, "question": args.question, "answer": "-", "is_forget": False}
    inputs = to_device(VLMCollator(processor, config).prompts([sample]), vlm.device)
    prob, transformed, extra = None, None, {}
    if isinstance(model, CagulModel):
        prob = float(model.forget_probability(**inputs)[0])
        gate = None if args.gate == "auto" else torch.tensor([args.gate == "on"])
        transformed = prob >= config.gate_threshold if gate is None else bool(gate[0])
        extra = {"forget_gate": gate}
    out = model.generate(**inputs, **extra, max_new_tokens=args.max_new_tokens, do_sample=False)
    answer = processor.tokenizer.decode(
        out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    print(json.dumps({"answer": answer.strip(), "forget_probability": prob, "gated": transformed}))


def _eval_splits(
    paths: list[str],
    format: str = "auto",
    forget_split: str | None = None,
    strict_paths: bool = False,
    context: bool = False,
) -> dict[str, list[dict]]:
    """Samples per split (the benchmarks' ``eval_splits``, and with ``context`` their
    ``context`` sets, which a protocol runner reads) from JSONL files and / or benchmark
    directories."""
    from .data import load_dataset

    splits: dict[str, list[dict]] = {}
    for path in paths:
        bench = load_dataset(path, format, forget_split=forget_split, strict_paths=strict_paths)
        for split in bench.eval_splits:
            splits.setdefault(split, []).extend(bench.splits[split])
        for name, samples in bench.context.items() if context else ():
            splits.setdefault(name, []).extend(samples)
    return splits


def _eval(args: argparse.Namespace) -> None:
    from .config import CagulConfig
    from .evaluation.diagnostics import evaluate, evaluate_splits
    from .methods.finetune import is_lora_adapter, load_finetuned
    from .model import CagulModel

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.protocol and (len(args.data) != 1 or not args.output):
        raise UsageError("--protocol needs exactly one --data directory and --output")
    with reading_inputs():
        splits = _eval_splits(
            args.data, args.format, args.forget_split, args.strict_paths, bool(args.protocol)
        )
        vlm, processor = _load_vlm(args)
        overrides = _overrides(args)
        if args.adapter and is_lora_adapter(args.adapter):  # a baseline: evaluated as a VLM
            model, config = load_finetuned(vlm, args.adapter)
            config, reference = config.replace(**overrides), None
        elif args.adapter:
            model = CagulModel.from_pretrained(vlm, args.adapter, **overrides)
            config, reference = model.config, vlm
        else:
            model, config, reference = vlm, CagulConfig().replace(**overrides), None
        if args.reference:
            reference, _ = _load_vlm(args, args.reference, "--reference")
    if args.protocol:
        _run_protocol(args, model, splits, processor, config, reference)
        return
    metrics: dict[str, Any] = {}
    if isinstance(model, CagulModel):
        samples = [s for group in splits.values() for s in group]
        metrics.update(evaluate(model, samples, processor, batch_size=args.batch_size))
    found = evaluate_splits(
        model,
        splits,
        processor,
        config,
        reference=reference,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    metrics["splits"] = {k: v for k, v in found.items() if k in splits}
    if "retain_kl" in found:
        metrics["retain_kl"] = found["retain_kl"]
    text = json.dumps(metrics, indent=2)
    print(text, flush=True)  # printed first: the metrics survive a failing write
    if args.output:
        write_text_atomic(args.output, text + "\n")


def _run_protocol(args, model, splits, processor, config, reference) -> None:
    from .evaluation import common, fiubench, mllmu, synthetic

    options: dict[str, Any] = {"batch_size": args.batch_size}
    if args.max_new_tokens:
        options["max_new_tokens"] = args.max_new_tokens
    if args.protocol == "mllmu":
        result = mllmu.evaluate_mllmu(model, splits, processor, config, seed=args.seed, **options)
        table = mllmu.mllmu_table(result)
    elif args.protocol == "fiubench":
        retain = next((s for s in splits if s.startswith("retain")), "retain")
        result = fiubench.evaluate_fiubench(
            model, splits, processor, config, retain_split=retain, reference=reference, **options
        )
        table = fiubench.fiubench_table(result)
    else:
        result = synthetic.evaluate_synthetic(
            model, splits, processor, config, reference=reference, **options
        )
        table = synthetic.synthetic_table(result)
    result["options"]["data"] = args.data[0]
    print(table, flush=True)  # printed first: the table survives a failing write
    common.write_results(result, table, args.output)


def _demo(args: argparse.Namespace) -> None:
    import torch

    # the library's only edge to the demo package
    from cagul_demo.runner import DemoConfig, run_demo, run_seeds, run_sweep

    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    if args.jobs < 0:
        raise UsageError(f"--jobs must be >= 0, got {args.jobs}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = DemoConfig.tiny() if args.quick else DemoConfig()
    with reading_inputs():
        if args.config:
            for key, value in _flatten(read_json(args.config)):
                config.set(key, value)
        for key, value in args.overrides:
            config.set(key, value)
    if args.no_retain_only:
        config.retain_only = False
    affinity = getattr(os, "sched_getaffinity", None)  # the CPUs this process may use
    cpus = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    jobs = args.jobs or max(1, cpus // torch.get_num_threads())
    options = {"progress": not args.no_progress, "jobs": jobs}
    if args.sweep and args.seeds != 1:
        raise UsageError("--sweep and --seeds cannot be combined")
    if args.sweep:
        run_sweep(config, *args.sweep, args.output, args.cache, **options)
    elif args.seeds != 1:
        run_seeds(config, args.seeds, args.output, args.cache, **options)
    else:
        run_demo(config, args.output, args.cache, **options)


def _flatten(obj: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"data": {"n_people": 30}}`` -> ``[("data.n_people", 30)]`` (``cagul`` is kept
    as one level: its values are ``CagulConfig`` fields)."""
    if not isinstance(obj, dict):
        raise UsageError("--config: expected a JSON object")
    items = []
    for key, value in obj.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _check_flags(args: argparse.Namespace) -> None:
    """The checks that need no data or model, before any work: ``--device`` (replaced by
    its ``torch.device``), the adapter's files and the output paths."""
    if getattr(args, "device", None) is not None:
        args.device = check_device("--device", args.device)
    if getattr(args, "adapter", None) is not None:
        check_adapter_files("--adapter", args.adapter)
    if args.command == "train":
        check_output_dir("--output", args.output)
    elif args.command == "eval" and args.output:
        check_output_file("--output", args.output)
    elif args.command == "demo":
        check_output_dir("--output", args.output)
        check_output_dir("--cache", args.cache)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)  # train / eval: transformers' parser
        if getattr(args, "no_progress", False):
            from transformers.utils import logging

            logging.disable_progress_bar()  # transformers' bars too (loading weights)
        _check_flags(args)
        {"train": _train, "generate": _generate, "eval": _eval, "demo": _demo}[args.command](args)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in FRAMEWORK_MODULES:
            raise
        print(
            f"cagul {command}: error: {e.name} is missing; install the framework extra: "
            "pip install 'cagul-kernels[framework]'",
            file=sys.stderr,
        )
        return 2
    except UsageError as e:
        print(f"cagul: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
